//! One SMTP session relayed between a client and a downstream server, command by command.
//!
//! Transparent: every command goes downstream and every reply comes back from it, except
//! the decisions a [`Policy`] makes itself (a rewritten path, a refusal) and the session's
//! own limits. Commands are handled one at a time in order, so a pipelining client simply
//! finds its next commands waiting in our buffer and gets its replies in order. Used in the
//! signing direction by `batv sendmail -bs` and in the verifying direction by the proxy.

use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncWrite, AsyncWriteExt};

use crate::smtp::{self, DataEnd, DataScan, Line, Reply, SmtpError};

/// What to do with a MAIL or RCPT command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Relay, with the path replaced if `Some`.
    Relay(Option<String>),
    /// Answer the client ourselves; the downstream never sees the command.
    Refuse(Reply),
    /// Answer the client (a 421) and end the session.
    Close(Reply),
}

/// The decisions a session delegates.
pub trait Policy {
    /// A MAIL FROM path (no brackets; empty for the null sender).
    fn mail(&mut self, path: &str) -> Decision;
    /// The downstream answered a MAIL we relayed; a positive reply starts a transaction
    /// (a refused MAIL leaves any transaction in progress as it was).
    fn mail_reply(&mut self, _path: &str, _reply: &Reply) {}
    /// An RCPT TO path.
    fn rcpt(&mut self, path: &str) -> Decision;
    /// The downstream answered an RCPT we relayed.
    fn rcpt_reply(&mut self, _reply: &Reply) {}
    /// DATA or the first BDAT: `Some` refuses the transaction.
    fn data(&mut self) -> Option<Reply> {
        None
    }
    /// Header lines (each ending in CRLF) to put in front of the message being relayed.
    fn header(&mut self) -> Option<Vec<u8>> {
        None
    }
    /// DATA or the first BDAT, not refused by [`Policy::data`]: `Some(n)` holds back the
    /// message's first `n` octets for [`Policy::content`] before the downstream sees any.
    fn inspect(&mut self) -> Option<usize> {
        None
    }
    /// The message's first octets, as asked for by [`Policy::inspect`], in wire form (CRLF
    /// lines, still dot-stuffed after DATA); all of it, without DATA's terminating line, if
    /// `complete`. The policy may rewrite whole lines of it (drop a forged header field).
    /// `Err` refuses the transaction; `Ok(Some(h))` puts header lines in front.
    fn content(&mut self, _head: &mut Vec<u8>, _complete: bool) -> Result<Option<Vec<u8>>, Reply> {
        Ok(None)
    }
    /// The downstream's final reply to a message (end of DATA, BDAT LAST).
    fn finished(&mut self, _reply: &Reply) {}
    /// An XFORWARD line relayed in before-queue mode (the real client's attributes).
    fn xforward(&mut self, _line: &[u8]) {}
    /// The transaction ended (final reply relayed, or refused, or RSET).
    fn reset(&mut self);
}

/// The longest a message's first octets are held for the policy before it decides on
/// what has arrived.
const HOLD: Duration = Duration::from_secs(5);

/// Time and count limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Waiting for a client command, or for a downstream reply to one.
    pub command: Duration,
    /// Waiting for the downstream's reply to the end of DATA, and for client data.
    pub data: Duration,
    /// Recipients the downstream accepted in one transaction; more get 452 4.5.3.
    pub recipients: usize,
    /// Error replies (4xx/5xx) in one session before it is closed with 421.
    pub errors: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            command: Duration::from_secs(300),
            data: Duration::from_secs(600),
            recipients: 1000,
            errors: 20,
        }
    }
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// QUIT, a closed connection, or a limit.
    Closed,
    /// The client asked for STARTTLS and got 220: the caller runs the TLS handshake on
    /// the client connection, discarding anything the client pipelined after the command
    /// (RFC 3207 §4.2), then calls [`Session::resume`].
    StartTls,
}

enum Verb {
    Mail,
    Rcpt,
    Data,
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Quit,
    Ehlo,
    Helo,
    Auth,
    StartTls,
    /// XCLIENT or XFORWARD: attributes only a trusted hop may set.
    Xclient,
    /// Not a command line (leading white space, empty).
    Unrecognized,
    /// A malformed DATA, BDAT or STARTTLS.
    BadSyntax,
    Other,
}

fn verb(line: &[u8]) -> Verb {
    use smtp_proto::Request;
    // A command starts with its verb. Servers differ in whether they skip leading white
    // space, and a command the downstream runs but we did not recognise would bypass
    // every check, so such lines (and empty ones) are refused here.
    if !line.first().is_some_and(u8::is_ascii_alphabetic) {
        return Verb::Unrecognized;
    }
    match Request::parse(&mut line.iter()) {
        Ok(Request::Mail { .. }) => Verb::Mail,
        Ok(Request::Rcpt { .. }) => Verb::Rcpt,
        Ok(Request::Data) => Verb::Data,
        // smtp-proto overlooks text after LAST; a downstream that refuses the line would
        // then read the chunk as commands. Only the strict form is relayed.
        Ok(Request::Bdat { .. }) => match bdat_args(line) {
            Some((size, last)) => Verb::Bdat { size, last },
            None => Verb::BadSyntax,
        },
        Ok(Request::Rset) => Verb::Rset,
        Ok(Request::Quit) => Verb::Quit,
        Ok(Request::Ehlo { .. }) => Verb::Ehlo,
        Ok(Request::Helo { .. }) => Verb::Helo,
        Ok(Request::Auth { .. }) => Verb::Auth,
        Ok(Request::StartTls) => Verb::StartTls,
        // smtp-proto refuses some valid-enough lines (unknown parameters, odd spacing) and
        // does not know XCLIENT/XFORWARD. The downstream judges the syntax of the ones we
        // can follow whatever their arguments; DATA, BDAT and STARTTLS change how the
        // following bytes are read, so an odd form of those is refused instead.
        _ => {
            let word: Vec<u8> = line
                .iter()
                .take(9)
                .take_while(|b| b.is_ascii_alphabetic())
                .map(u8::to_ascii_uppercase)
                .collect();
            match &word[..] {
                b"MAIL" => Verb::Mail,
                b"RCPT" => Verb::Rcpt,
                b"AUTH" => Verb::Auth,
                b"EHLO" => Verb::Ehlo,
                b"HELO" => Verb::Helo,
                b"RSET" => Verb::Rset,
                b"QUIT" => Verb::Quit,
                b"XCLIENT" | b"XFORWARD" => Verb::Xclient,
                b"DATA" | b"BDAT" | b"STARTTLS" => Verb::BadSyntax,
                _ => Verb::Other,
            }
        }
    }
}

/// `BDAT SP chunk-size [SP LAST]` (RFC 3030 §2), nothing else.
fn bdat_args(line: &[u8]) -> Option<(u64, bool)> {
    let line = line.strip_suffix(b"\n")?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|&b| b == b' ');
    if !parts.next()?.eq_ignore_ascii_case(b"BDAT") {
        return None;
    }
    let size = parts
        .next()
        .filter(|d| !d.is_empty() && d.len() <= 18 && d.iter().all(u8::is_ascii_digit))?;
    let size = std::str::from_utf8(size).ok()?.parse().ok()?;
    let last = match parts.next() {
        None => false,
        Some(l) if l.eq_ignore_ascii_case(b"LAST") => true,
        Some(_) => return None,
    };
    parts.next().is_none().then_some((size, last))
}

/// A CR in a command line other than the CRs right before its final LF.
fn bare_cr(line: &[u8]) -> bool {
    let content = line.strip_suffix(b"\n").unwrap_or(line);
    let end = content.len() - content.iter().rev().take_while(|&&b| b == b'\r').count();
    content[..end].contains(&b'\r')
}

/// The relay. `C*` is the client side, `D*` the downstream.
pub struct Session<'p, CR, CW, DR, DW, P: Policy> {
    pub client_r: CR,
    pub client_w: CW,
    pub down_r: DR,
    pub down_w: DW,
    pub policy: &'p mut P,
    pub limits: Limits,
    /// Front mode: XCLIENT and XFORWARD belong to the proxy alone, so clients may neither
    /// see nor send them (a client could otherwise claim a trusted address).
    pub front: bool,
    /// Offer STARTTLS; when a client takes it, `run`/`resume` return [`End::StartTls`].
    pub starttls: bool,
    /// The downstream's last EHLO reply offered DSN (RFC 3461).
    dsn: bool,
    /// The downstream's last EHLO reply offered CHUNKING (RFC 3030).
    chunking_offered: bool,
    /// Error replies sent to the client.
    errors: usize,
    /// Recipients the downstream accepted in this transaction.
    recipients: usize,
    /// A BDAT transaction has started (its header, if any, was sent).
    chunking: bool,
    /// The downstream said 221 or 421: it is closing.
    down_closing: bool,
    /// BDAT octets held for [`Policy::content`], how many it asked for, and since when.
    held: Option<(Vec<u8>, usize, std::time::Instant)>,
}

impl<'p, CR, CW, DR, DW, P> Session<'p, CR, CW, DR, DW, P>
where
    CR: AsyncBufRead + Unpin,
    CW: AsyncWrite + Unpin,
    DR: AsyncBufRead + Unpin,
    DW: AsyncWrite + Unpin,
    P: Policy,
{
    pub fn new(client_r: CR, client_w: CW, down_r: DR, down_w: DW, policy: &'p mut P, limits: Limits) -> Self {
        Session {
            client_r,
            client_w,
            down_r,
            down_w,
            policy,
            limits,
            front: false,
            starttls: false,
            dsn: false,
            chunking_offered: false,
            errors: 0,
            recipients: 0,
            chunking: false,
            down_closing: false,
            held: None,
        }
    }

    /// The streams back (for a TLS handshake after [`End::StartTls`]).
    pub fn into_parts(self) -> (CR, CW, DR, DW) {
        (self.client_r, self.client_w, self.down_r, self.down_w)
    }

    /// Send a reply of ours or the downstream's; 4xx and 5xx count towards the error limit.
    async fn reply_client(&mut self, reply: &Reply) -> Result<(), SmtpError> {
        if reply.code >= 400 {
            self.errors += 1;
        }
        smtp::send(&mut self.client_w, &reply.raw).await?;
        Ok(())
    }

    /// A 452 asking for the rest of the recipients in a new transaction: flow control,
    /// not an error by the client.
    async fn defer_recipient(&mut self, reply: &Reply) -> Result<(), SmtpError> {
        smtp::send(&mut self.client_w, &reply.raw).await?;
        Ok(())
    }

    async fn down_reply(&mut self, what: &'static str) -> Result<Reply, SmtpError> {
        let reply = smtp::read_reply_within(&mut self.down_r, self.limits.command, what).await?;
        // 221 or 421 to anything: the downstream is closing (Postfix answers a header line
        // sent as a command with 221 and hangs up). The client hears it, then the session
        // ends, rather than its next command meeting a closed connection.
        self.down_closing |= matches!(reply.code, 221 | 421);
        Ok(reply)
    }

    /// Send a command downstream and return its reply.
    async fn exchange(&mut self, line: &[u8], what: &'static str) -> Result<Reply, SmtpError> {
        smtp::send(&mut self.down_w, line).await.map_err(SmtpError::Downstream)?;
        self.down_reply(what).await
    }

    /// Relay the downstream's greeting, then commands until QUIT or either side leaves.
    pub async fn run(&mut self) -> Result<End, SmtpError> {
        let greeting = match self.down_reply("waiting for the downstream's greeting").await {
            Ok(g) => g,
            Err(e) => {
                let _ = self
                    .reply_client(&Reply::new(421, "4.4.2", "Service not available, try again later"))
                    .await;
                return Err(e);
            }
        };
        self.greeted(&greeting).await
    }

    /// Send `greeting` (already read from the downstream, e.g. its answer to XCLIENT),
    /// then relay commands.
    pub async fn greeted(&mut self, greeting: &Reply) -> Result<End, SmtpError> {
        self.reply_client(greeting).await?;
        if greeting.code != 220 {
            // 554 (or 421): the server does not want this client; it closes, so do we.
            return Ok(End::Closed);
        }
        self.resume().await
    }

    /// Relay commands (after a greeting, or after a TLS handshake).
    pub async fn resume(&mut self) -> Result<End, SmtpError> {
        let result = self.commands().await;
        if result.as_ref().is_err_and(SmtpError::is_downstream) {
            // The downstream failed us: tell the client to come back later.
            let _ = self
                .reply_client(&Reply::new(421, "4.4.2", "Lost the next hop, try again later"))
                .await;
        }
        result
    }

    async fn commands(&mut self) -> Result<End, SmtpError> {
        let mut line = Vec::with_capacity(smtp::MAX_COMMAND_LINE);
        loop {
            if self.down_closing {
                return Ok(End::Closed);
            }
            if self.errors >= self.limits.errors {
                self.reply_client(&Reply::new(421, "4.7.0", "Too many errors, closing")).await?;
                return Ok(End::Closed);
            }
            let read = tokio::time::timeout(
                self.limits.command,
                smtp::read_line(&mut self.client_r, &mut line, smtp::MAX_AUTH_LINE),
            )
            .await;
            match read {
                Err(_) => {
                    self.reply_client(&Reply::new(421, "4.4.2", "Timeout waiting for a command, closing"))
                        .await?;
                    return Ok(End::Closed);
                }
                Ok(r) => match r? {
                    Line::Eof => return Ok(End::Closed),
                    Line::TooLong => {
                        self.reply_client(&Reply::new(500, "5.5.2", "Line too long")).await?;
                        continue;
                    }
                    Line::Complete => {}
                },
            }
            // Servers differ in whether a bare CR ends a command or goes on with it: the
            // downstream could run two commands where we judged one, so it runs none.
            if bare_cr(&line) {
                self.reply_client(&Reply::new(500, "5.5.2", "Syntax error (bare CR in command)"))
                    .await?;
                continue;
            }
            let v = verb(&line);
            if !matches!(v, Verb::Auth) && line.len() > smtp::MAX_COMMAND_LINE {
                self.reply_client(&Reply::new(500, "5.5.2", "Line too long")).await?;
                continue;
            }
            match v {
                Verb::Unrecognized => {
                    self.reply_client(&Reply::new(500, "5.5.2", "Syntax error, command unrecognized"))
                        .await?;
                }
                Verb::BadSyntax => {
                    self.reply_client(&Reply::new(501, "5.5.4", "Syntax error in parameters")).await?;
                }
                Verb::Mail => {
                    if self.envelope(&line, true).await? {
                        return Ok(End::Closed);
                    }
                }
                Verb::Rcpt => {
                    if self.recipients >= self.limits.recipients {
                        self.defer_recipient(&Reply::new(452, "4.5.3", "Too many recipients, send the rest separately"))
                            .await?;
                        continue;
                    }
                    if self.envelope(&line, false).await? {
                        return Ok(End::Closed);
                    }
                }
                Verb::Data => self.data(&line).await?,
                Verb::Bdat { size, last } => self.bdat(&line, size, last).await?,
                // Transaction state follows the downstream's: only a command it accepted
                // ends a transaction.
                Verb::Rset => {
                    let reply = self.exchange(&line, "waiting for the reply to RSET").await?;
                    if reply.is_positive() {
                        self.end_transaction();
                    }
                    self.reply_client(&reply).await?;
                }
                Verb::Quit => {
                    let reply = self.exchange(&line, "waiting for the reply to QUIT").await?;
                    self.reply_client(&reply).await?;
                    return Ok(End::Closed);
                }
                Verb::Ehlo => {
                    let mut reply = self.exchange(&line, "waiting for the reply to EHLO").await?;
                    if reply.code == 250 {
                        reply = self.ehlo_reply(&reply);
                        self.end_transaction();
                    }
                    self.reply_client(&reply).await?;
                }
                Verb::Helo => {
                    let reply = self.exchange(&line, "waiting for the reply to HELO").await?;
                    if reply.is_positive() {
                        self.dsn = false;
                        self.chunking_offered = false;
                        self.end_transaction();
                    }
                    self.reply_client(&reply).await?;
                }
                Verb::StartTls if self.starttls => {
                    // The TLS session starts from scratch (RFC 3207 §4.2): so does the
                    // downstream's transaction state.
                    let reply = self.exchange(b"RSET\r\n", "waiting for the reply to RSET").await?;
                    if !reply.is_positive() {
                        self.reply_client(&Reply::new(454, "4.7.0", "TLS not available now")).await?;
                        continue;
                    }
                    self.end_transaction();
                    self.dsn = false;
                    self.chunking_offered = false;
                    smtp::send(&mut self.client_w, &Reply::new(220, "2.0.0", "Ready to start TLS").raw).await?;
                    return Ok(End::StartTls);
                }
                Verb::StartTls => {
                    // Not offered: TLS the proxy does not end would hide the envelope from it.
                    self.reply_client(&Reply::new(502, "5.5.1", "STARTTLS not available here")).await?;
                }
                Verb::Xclient if self.front => {
                    self.reply_client(&Reply::new(502, "5.5.1", "Command not implemented")).await?;
                }
                // While TLS is on offer here, AUTH waits for it: the downstream cannot tell
                // a TLS client from a plain one (as Postfix smtpd_tls_auth_only).
                Verb::Auth if self.starttls => {
                    self.reply_client(&Reply::new(530, "5.7.0", "Must issue a STARTTLS command first"))
                        .await?;
                }
                Verb::Auth => self.auth(&mut line).await?,
                Verb::Xclient => {
                    let reply = self.exchange(&line, "waiting for a reply").await?;
                    if reply.is_positive() {
                        self.policy.xforward(&line);
                    }
                    self.reply_client(&reply).await?;
                }
                Verb::Other => {
                    let reply = self.exchange(&line, "waiting for a reply").await?;
                    self.reply_client(&reply).await?;
                }
            }
        }
    }

    fn end_transaction(&mut self) {
        self.recipients = 0;
        self.chunking = false;
        self.held = None;
        self.policy.reset();
    }

    /// The EHLO reply as the client may see it: STARTTLS is ours to offer or not (and AUTH
    /// waits for it while offered); in front mode XCLIENT and XFORWARD are ours too. Notes
    /// whether the downstream offers DSN and CHUNKING.
    fn ehlo_reply(&mut self, reply: &Reply) -> Reply {
        let offers = |k: &[u8]| reply.lines().skip(1).any(|l| keyword(l).eq_ignore_ascii_case(k));
        self.dsn = offers(b"DSN");
        self.chunking_offered = offers(b"CHUNKING");
        let (front, starttls) = (self.front, self.starttls);
        let mut kept: Vec<&[u8]> = reply
            .lines()
            .enumerate()
            .filter(|(i, l)| {
                let k = keyword(l);
                *i == 0
                    || !(k.eq_ignore_ascii_case(b"STARTTLS")
                        || starttls && k.eq_ignore_ascii_case(b"AUTH")
                        || front && (k.eq_ignore_ascii_case(b"XCLIENT") || k.eq_ignore_ascii_case(b"XFORWARD")))
            })
            .map(|(_, l)| l)
            .collect();
        if self.starttls {
            kept.push(b"STARTTLS");
        }
        Reply::from_lines(250, kept)
    }

    /// DATA: refused by the policy, or relayed with the downstream's final reply.
    async fn data(&mut self, line: &[u8]) -> Result<(), SmtpError> {
        if self.chunking {
            // RFC 3030 §3: not within a BDAT message (whose first chunks may be held here,
            // unseen by the downstream, which could not say so itself).
            return self.reply_client(&Reply::new(503, "5.5.1", "DATA within a BDAT message")).await;
        }
        if let Some(refusal) = self.policy.data() {
            return self.refuse_transaction(&refusal).await;
        }
        if let Some(limit) = self.policy.inspect() {
            return self.data_held(line, limit).await;
        }
        let reply = self.exchange(line, "waiting for the reply to DATA").await?;
        self.reply_client(&reply).await?;
        if reply.code != 354 {
            return Ok(());
        }
        if let Some(h) = self.policy.header() {
            self.down_w.write_all(&h).await.map_err(SmtpError::Downstream)?;
        }
        let idle = self.limits.data;
        match smtp::relay_data(&mut self.client_r, &mut self.down_w, idle).await? {
            DataEnd::Complete { .. } => {}
            // The terminator never went downstream: dropping the connection makes the
            // downstream discard the partial message.
            DataEnd::Incomplete | DataEnd::Paused => return Err(SmtpError::ClientClosed("during DATA")),
        }
        self.finish_message().await
    }

    /// DATA with the message's first octets held for the policy: the client gets our 354,
    /// and the downstream gets DATA only once the policy has let the message through, so a
    /// refusal never leaves a message half-sent (only a closed connection aborts DATA).
    /// The hold lasts at most [`HOLD`]: the downstream sits idle meanwhile, and its own
    /// timeout may be short under load (Postfix smtpd_timeout 10 s under stress).
    async fn data_held(&mut self, line: &[u8], limit: usize) -> Result<(), SmtpError> {
        self.reply_client(&Reply::new(354, "", "End data with <CR><LF>.<CR><LF>")).await?;
        let idle = self.limits.data;
        let mut scan = DataScan::default();
        let mut head = Vec::with_capacity(limit.min(64 * 1024));
        // Cancel-safe: `relay` changes its state only after a read, and writes to a Vec.
        let held = tokio::time::timeout(HOLD.min(idle), scan.relay(&mut self.client_r, &mut head, idle, limit as u64)).await;
        let complete = match held {
            Ok(Ok(DataEnd::Complete { .. })) => {
                // The terminator (".\r\n" at a line start) is ours to write.
                head.truncate(head.len().saturating_sub(3));
                true
            }
            Ok(Ok(DataEnd::Paused)) | Err(_) => false,
            Ok(Ok(DataEnd::Incomplete)) => return Err(SmtpError::ClientClosed("during DATA")),
            Ok(Err(e)) => return Err(e),
        };
        let (reply, added) = match self.policy.content(&mut head, complete) {
            Err(refusal) => (refusal, None),
            Ok(added) => {
                let reply = self.exchange(line, "waiting for the reply to DATA").await?;
                if reply.code == 354 {
                    (reply, added)
                } else if reply.code >= 400 {
                    (reply, None)
                } else {
                    (
                        Reply::new(451, "4.3.0", "The next hop did not take the data, try again later"),
                        None,
                    )
                }
            }
        };
        if reply.code != 354 {
            // Refused (by the policy or the downstream) while the client is still sending:
            // the downstream is set straight first, then the rest of the message is read
            // and dropped, and the refusal is the final reply.
            self.exchange(b"RSET\r\n", "waiting for the reply to RSET").await?;
            self.end_transaction();
            if !complete
                && !matches!(
                    scan.relay(&mut self.client_r, &mut tokio::io::sink(), idle, u64::MAX).await?,
                    DataEnd::Complete { .. }
                )
            {
                return Err(SmtpError::ClientClosed("during DATA"));
            }
            return self.reply_client(&reply).await;
        }
        for piece in [self.policy.header(), added, Some(head)].into_iter().flatten() {
            self.down_w.write_all(&piece).await.map_err(SmtpError::Downstream)?;
        }
        if complete {
            self.down_w.write_all(b".\r\n").await.map_err(SmtpError::Downstream)?;
            self.down_w.flush().await.map_err(SmtpError::Downstream)?;
        } else if !matches!(
            scan.relay(&mut self.client_r, &mut self.down_w, idle, u64::MAX).await?,
            DataEnd::Complete { .. }
        ) {
            // No terminator went downstream: closing makes it discard the partial message.
            return Err(SmtpError::ClientClosed("during DATA"));
        }
        self.finish_message().await
    }

    /// One BDAT chunk (RFC 3030): relayed as counted octets; the policy's header goes
    /// first as a chunk of its own.
    async fn bdat(&mut self, line: &[u8], size: u64, last: bool) -> Result<(), SmtpError> {
        if !self.chunking_offered {
            // A server without CHUNKING would read the chunk as commands, unchecked by us
            // (command smuggling): the chunk goes nowhere.
            if !smtp::discard_exact(&mut self.client_r, size, self.limits.data).await? {
                return Err(SmtpError::ClientClosed("during BDAT"));
            }
            return self
                .reply_client(&Reply::new(502, "5.5.1", "BDAT not available (no CHUNKING)"))
                .await;
        }
        // The policy decides once per message, at its first chunk.
        let refusal = if self.chunking { None } else { self.policy.data() };
        if let Some(refusal) = refusal {
            // Consume the chunk so the session stays in step.
            if !smtp::discard_exact(&mut self.client_r, size, self.limits.data).await? {
                return Err(SmtpError::ClientClosed("during BDAT"));
            }
            return self.refuse_transaction(&refusal).await;
        }
        if !self.chunking {
            self.chunking = true;
            if let Some(limit) = self.policy.inspect() {
                self.held = Some((Vec::with_capacity(limit.min(64 * 1024)), limit, std::time::Instant::now()));
            } else if let Some(h) = self.policy.header() {
                let mut chunk = format!("BDAT {}\r\n", h.len()).into_bytes();
                chunk.extend_from_slice(&h);
                let reply = self.exchange(&chunk, "waiting for the reply to BDAT").await?;
                if !reply.is_positive() {
                    if !smtp::discard_exact(&mut self.client_r, size, self.limits.data).await? {
                        return Err(SmtpError::ClientClosed("during BDAT"));
                    }
                    self.end_transaction();
                    return self.reply_client(&reply).await;
                }
            }
        }
        if let Some((head, limit, since)) = self.held.take() {
            return self.bdat_held(size, last, head, limit, since).await;
        }
        self.relay_chunk(line, size, last).await
    }

    /// Send a BDAT command and relay its `size` octets from the client; the downstream's
    /// reply is the client's.
    async fn relay_chunk(&mut self, line: &[u8], size: u64, last: bool) -> Result<(), SmtpError> {
        smtp::send(&mut self.down_w, line).await.map_err(SmtpError::Downstream)?;
        if !smtp::relay_exact(&mut self.client_r, &mut self.down_w, size, self.limits.data).await? {
            return Err(SmtpError::ClientClosed("during BDAT"));
        }
        if last {
            return self.finish_message().await;
        }
        let reply = self.down_reply("waiting for the reply to BDAT").await?;
        if !reply.is_positive() {
            self.end_transaction();
        }
        self.reply_client(&reply).await
    }

    /// A BDAT chunk while the message's first octets are held for the policy: chunks are
    /// gathered (each acknowledged by us; only the last one's reply accepts a message) until
    /// the policy has what it asked for, then go downstream as one chunk behind its header.
    async fn bdat_held(
        &mut self,
        size: u64,
        last: bool,
        mut head: Vec<u8>,
        limit: usize,
        since: std::time::Instant,
    ) -> Result<(), SmtpError> {
        let idle = self.limits.data;
        let take = size.min(limit.saturating_sub(head.len()) as u64);
        if !smtp::relay_exact(&mut self.client_r, &mut head, take, idle).await? {
            return Err(SmtpError::ClientClosed("during BDAT"));
        }
        let rest = size - take;
        let complete = last && rest == 0;
        if !last && rest == 0 && head.len() < limit && since.elapsed() < HOLD {
            self.held = Some((head, limit, since));
            return self
                .reply_client(&Reply::new(250, "2.0.0", &format!("{size} octets received")))
                .await;
        }
        let added = match self.policy.content(&mut head, complete) {
            Ok(h) => h,
            Err(refusal) => {
                // The downstream first (it has seen no chunk), then the rest of the chunk.
                self.exchange(b"RSET\r\n", "waiting for the reply to RSET").await?;
                self.end_transaction();
                if !smtp::discard_exact(&mut self.client_r, rest, idle).await? {
                    return Err(SmtpError::ClientClosed("during BDAT"));
                }
                return self.reply_client(&refusal).await;
            }
        };
        let pieces: Vec<Vec<u8>> = [self.policy.header(), added, Some(head)].into_iter().flatten().collect();
        let len: usize = pieces.iter().map(Vec::len).sum();
        let cmd = format!("BDAT {len}{}\r\n", if complete { " LAST" } else { "" });
        self.down_w.write_all(cmd.as_bytes()).await.map_err(SmtpError::Downstream)?;
        for piece in &pieces {
            self.down_w.write_all(piece).await.map_err(SmtpError::Downstream)?;
        }
        self.down_w.flush().await.map_err(SmtpError::Downstream)?;
        if complete {
            return self.finish_message().await;
        }
        let reply = self.down_reply("waiting for the reply to BDAT").await?;
        if !reply.is_positive() || rest == 0 {
            if !reply.is_positive() {
                if !smtp::discard_exact(&mut self.client_r, rest, idle).await? {
                    return Err(SmtpError::ClientClosed("during BDAT"));
                }
                self.end_transaction();
            }
            return self.reply_client(&reply).await;
        }
        let line = format!("BDAT {rest}{}\r\n", if last { " LAST" } else { "" });
        self.relay_chunk(line.as_bytes(), rest, last).await
    }

    /// AUTH with its SASL continuation: client lines are relayed while the server says 334.
    async fn auth(&mut self, line: &mut Vec<u8>) -> Result<(), SmtpError> {
        let mut reply = self.exchange(line, "waiting for the reply to AUTH").await?;
        while reply.code == 334 {
            self.reply_client(&reply).await?;
            let r = tokio::time::timeout(self.limits.command, smtp::read_line(&mut self.client_r, line, smtp::MAX_AUTH_LINE)).await;
            match r.map_err(|_| SmtpError::ClientClosed("(timed out) during AUTH"))?? {
                // Servers differ in whether a bare CR ends a line: such a line could be
                // a command to one and SASL data to another.
                Line::Complete if bare_cr(line) => {
                    self.exchange(b"*\r\n", "waiting for the reply to an AUTH cancel").await?;
                    return self
                        .reply_client(&Reply::new(500, "5.5.2", "Syntax error (bare CR in command)"))
                        .await;
                }
                Line::Complete => {}
                Line::TooLong => {
                    // Cancel the exchange downstream (RFC 4954 §4) and tell the client why.
                    self.exchange(b"*\r\n", "waiting for the reply to an AUTH cancel").await?;
                    return self.reply_client(&Reply::new(500, "5.5.2", "Line too long")).await;
                }
                Line::Eof => return Err(SmtpError::ClientClosed("during AUTH")),
            }
            reply = self.exchange(line, "waiting for the reply to AUTH").await?;
        }
        self.reply_client(&reply).await
    }

    /// MAIL or RCPT: ask the policy, relay (maybe rewritten) or refuse. True if the policy
    /// closed the session.
    async fn envelope(&mut self, line: &[u8], mail: bool) -> Result<bool, SmtpError> {
        let span = smtp::path_span(line);
        let path = span.clone().and_then(|s| smtp::path_address(&line[s]));
        let (Some(span), Some(path)) = (span, path) else {
            // A path we cannot read is one the policy cannot judge: it does not go on
            // (RFC 5321 §4.1.2 requires the angle brackets).
            let reply = Reply::new(501, "5.5.4", "Syntax error in the address (expected <address>)");
            self.reply_client(&reply).await?;
            return Ok(false);
        };
        let mut decision = if mail { self.policy.mail(path) } else { self.policy.rcpt(path) };
        if decision == Decision::Relay(None) && line[span.clone()] != *path.as_bytes() {
            // A source route was dropped to judge the path: the downstream gets the path as
            // judged, not one it might route its own way.
            decision = Decision::Relay(Some(path.to_string()));
        }
        let rewritten;
        let out: &[u8] = match &decision {
            Decision::Refuse(reply) if reply.code == 452 => {
                self.defer_recipient(reply).await?;
                return Ok(false);
            }
            Decision::Refuse(reply) => {
                self.reply_client(reply).await?;
                return Ok(false);
            }
            Decision::Close(reply) => {
                self.reply_client(reply).await?;
                return Ok(true);
            }
            Decision::Relay(Some(new)) => {
                let orcpt = (!mail && self.dsn).then_some(path);
                rewritten = Some(rewrite(line, span.clone(), new, orcpt))
                    .filter(|r| r.len() <= smtp::MAX_COMMAND_LINE)
                    .or_else(|| Some(rewrite(line, span, new, None)).filter(|r| r.len() <= smtp::MAX_COMMAND_LINE));
                // Too long once rewritten (a judged path is never longer than the client's,
                // so this does not happen): never relay the path unjudged.
                match rewritten.as_deref() {
                    Some(r) => r,
                    None => {
                        self.reply_client(&Reply::new(500, "5.5.2", "Line too long")).await?;
                        return Ok(false);
                    }
                }
            }
            Decision::Relay(None) => line,
        };
        let what = if mail {
            "waiting for the reply to MAIL"
        } else {
            "waiting for the reply to RCPT"
        };
        let reply = self.exchange(out, what).await?;
        if mail {
            if reply.is_positive() {
                self.recipients = 0;
                self.chunking = false;
                self.held = None;
            }
            self.policy.mail_reply(path, &reply);
        } else {
            if reply.is_positive() {
                self.recipients += 1;
            }
            self.policy.rcpt_reply(&reply);
        }
        self.reply_client(&reply).await?;
        Ok(false)
    }

    /// After the last octet of a message: the downstream's final reply is the client's.
    async fn finish_message(&mut self) -> Result<(), SmtpError> {
        let reply = smtp::read_reply_within(&mut self.down_r, self.limits.data, "waiting for the reply to the end of data").await?;
        self.down_closing |= matches!(reply.code, 221 | 421);
        self.policy.finished(&reply);
        self.end_transaction();
        self.reply_client(&reply).await
    }

    /// Refuse a transaction at DATA/BDAT; the downstream gets RSET so its state matches.
    async fn refuse_transaction(&mut self, refusal: &Reply) -> Result<(), SmtpError> {
        self.exchange(b"RSET\r\n", "waiting for the reply to RSET").await?;
        self.end_transaction();
        self.reply_client(refusal).await
    }
}

/// The keyword of an EHLO line (`SIZE 1000` -> `SIZE`).
fn keyword(line: &[u8]) -> &[u8] {
    let end = line.iter().position(|&b| b == b' ' || b == b'=').unwrap_or(line.len());
    &line[..end]
}

/// An RCPT line with its path replaced. With `orcpt` (the downstream offers DSN) and no
/// ORCPT of the client's, the address as the client sent it becomes the ORCPT, so a DSN
/// names the address the sender knows (RFC 3461 §4.2).
fn rewrite(line: &[u8], span: std::ops::Range<usize>, path: &str, orcpt: Option<&str>) -> Vec<u8> {
    let mut out = smtp::with_path(line, span.clone(), path);
    let params = &line[span.end..];
    let has_orcpt = params.windows(7).any(|w| w.eq_ignore_ascii_case(b" ORCPT="));
    // An ORCPT for a UTF-8 address needs the utf-8 address type (RFC 6533): leave it out.
    if let Some(o) = orcpt.filter(|o| !has_orcpt && !o.is_empty() && o.is_ascii()) {
        let end = out.len() - out.iter().rev().take_while(|&&b| b == b'\r' || b == b'\n').count();
        let mut param = b" ORCPT=rfc822;".to_vec();
        xtext(o.as_bytes(), &mut param);
        out.splice(end..end, param);
    }
    out
}

/// RFC 3461 §4 xtext: `+`, `=`, controls and non-ASCII as `+XX`.
fn xtext(s: &[u8], out: &mut Vec<u8>) {
    for &b in s {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b);
        } else {
            out.extend_from_slice(format!("+{b:02X}").as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdat_syntax_is_strict() {
        assert_eq!(bdat_args(b"BDAT 28 LAST\r\n"), Some((28, true)));
        assert_eq!(bdat_args(b"bdat 0\r\n"), Some((0, false)));
        assert_eq!(bdat_args(b"BDAT 28 LAST junk\r\n"), None);
        assert_eq!(bdat_args(b"BDAT \t0 LAST\r\n"), None);
        assert_eq!(bdat_args(b"BDAT  5\r\n"), None);
        assert_eq!(bdat_args(b"BDAT 99999999999999999999\r\n"), None);
    }

    struct Pass;
    impl Policy for Pass {
        fn mail(&mut self, _: &str) -> Decision {
            Decision::Relay(None)
        }
        fn rcpt(&mut self, _: &str) -> Decision {
            Decision::Relay(None)
        }
        fn reset(&mut self) {}
    }

    /// A downstream that answers anything but QUIT with 221 or 421 is closing: the client
    /// hears that reply, and the session ends there.
    #[tokio::test]
    async fn a_closing_downstream_ends_the_session() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
        for code in ["221 2.7.0 Error: I can break rules, too. Goodbye.", "421 4.7.0 closing"] {
            let (mut down_peer, down) = tokio::io::duplex(4096);
            let server = tokio::spawn(async move {
                down_peer.write_all(b"220 mx\r\n").await.unwrap();
                let mut buf = [0u8; 256];
                let _ = down_peer.read(&mut buf).await.unwrap();
                down_peer.write_all(b"250 mx\r\n").await.unwrap();
                let _ = down_peer.read(&mut buf).await.unwrap();
                down_peer.write_all(format!("{code}\r\n").as_bytes()).await.unwrap();
                // Anything more the proxy sent, until it lets go.
                let mut rest = Vec::new();
                let _ = down_peer.read_to_end(&mut rest).await;
                rest
            });
            let input: &[u8] = b"EHLO x\r\nSubject: hi\r\nNOOP\r\nQUIT\r\n";
            // Short, so a session that went on would fail here rather than hang.
            let limits = Limits {
                command: Duration::from_secs(2),
                ..Limits::default()
            };
            let (dr, dw) = tokio::io::split(down);
            let mut out = Vec::new();
            let mut policy = Pass;
            let mut s = Session::new(BufReader::new(input), &mut out, BufReader::new(dr), dw, &mut policy, limits);
            let _ = s.run().await;
            drop(s);
            let text = String::from_utf8(out).unwrap();
            assert_eq!(text, format!("220 mx\r\n250 mx\r\n{code}\r\n"), "{code}");
            assert!(server.await.unwrap().is_empty(), "nothing after the {code}");
        }
    }

    #[test]
    fn bare_cr_in_a_command() {
        assert!(!bare_cr(b"MAIL FROM:<>\r\n"));
        assert!(!bare_cr(b"MAIL FROM:<>\r\r\n"));
        assert!(!bare_cr(b"NOOP\n"));
        assert!(bare_cr(b"MAIL FROM:<>\rRCPT TO:<bob@example.com>\r\n"));
        assert!(bare_cr(b"\rNOOP\r\n"));
        assert!(bare_cr(b"NOOP\r \r\n"));
    }

    #[test]
    fn orcpt_is_added_once() {
        let l = b"RCPT TO:<prvs=1234abcdef=bob@example.com> NOTIFY=FAILURE\r\n";
        let span = smtp::path_span(l).unwrap();
        assert_eq!(
            rewrite(l, span.clone(), "bob@example.com", Some("prvs=1234abcdef=bob@example.com")),
            b"RCPT TO:<bob@example.com> NOTIFY=FAILURE ORCPT=rfc822;prvs+3D1234abcdef+3Dbob@example.com\r\n"
        );
        assert_eq!(
            rewrite(l, span, "bob@example.com", None),
            b"RCPT TO:<bob@example.com> NOTIFY=FAILURE\r\n"
        );
        let l = b"RCPT TO:<t@x.org> orcpt=rfc822;t@x.org\r\n";
        let span = smtp::path_span(l).unwrap();
        assert_eq!(
            rewrite(l, span, "u@x.org", Some("t@x.org")),
            b"RCPT TO:<u@x.org> orcpt=rfc822;t@x.org\r\n"
        );
    }
}
