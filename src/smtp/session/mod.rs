//! One SMTP session relayed between a client and a downstream server, command by command.
//!
//! Transparent: every command goes downstream and every reply comes back from it, except
//! the decisions a [`Policy`] makes itself (a rewritten path, a refusal) and the session's
//! own limits. Commands are handled one at a time in order, so a pipelining client simply
//! finds its next commands waiting in our buffer and gets its replies in order. Used in the
//! signing direction by `batv sendmail -bs` and in the verifying direction by the proxy.
//!
//! One file per stage (the stages are `impl Session` blocks of their own):
//!
//! ```text
//! mod.rs        the types a caller uses, the session and its command loop
//! verb.rs       reading a command line: its verb, BDAT's arguments, bare CRs
//! ehlo.rs       the EHLO reply as the client sees it, and AUTH's SASL exchange
//! envelope.rs   MAIL and RCPT: the policy's decision, a rewritten path, ORCPT
//! data.rs       the message: DATA and BDAT, held for the policy or relayed
//! tests.rs      tests of the whole session
//! ```

mod data;
mod ehlo;
mod envelope;
#[cfg(test)]
mod tests;
mod verb;

use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncWrite};

use crate::smtp::{self, Line, Reply, SmtpError};
use verb::{bare_cr, verb, Verb};

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
    /// An RCPT TO path as the client wrote it, source route and all, before
    /// [`Policy::rcpt`] judges it without the route: `Some` refuses it.
    fn rcpt_written(&mut self, _path: &str) -> Option<Reply> {
        None
    }
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
    /// The downstream accepted EHLO or HELO with this argument.
    fn helo(&mut self, _name: &[u8]) {}
    /// The downstream accepted an AUTH (235), as this user when the exchange named one.
    fn authenticated(&mut self, _user: Option<&str>) {}
    /// The transaction ended (final reply relayed, or refused, or RSET).
    fn reset(&mut self);
}

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
    /// AUTH may go to the downstream in this session. Gateway mode says no until TLS:
    /// the MTA would take a password in the clear from the proxy, never knowing.
    pub auth_allowed: bool,
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
            auth_allowed: true,
            dsn: false,
            chunking_offered: false,
            errors: 0,
            recipients: 0,
            chunking: false,
            down_closing: false,
            held: None,
        }
    }

    /// The streams and the policy back (for a TLS handshake after [`End::StartTls`]).
    pub fn into_parts(self) -> (CR, CW, DR, DW, &'p mut P) {
        (self.client_r, self.client_w, self.down_r, self.down_w, self.policy)
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
                        self.policy.helo(helo_arg(&line));
                    }
                    self.reply_client(&reply).await?;
                }
                Verb::Helo => {
                    let reply = self.exchange(&line, "waiting for the reply to HELO").await?;
                    if reply.is_positive() {
                        self.dsn = false;
                        self.chunking_offered = false;
                        self.end_transaction();
                        self.policy.helo(helo_arg(&line));
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
                Verb::Auth if !self.auth_allowed => {
                    // RFC 4954 §6: no TLS here to protect the exchange.
                    self.reply_client(&Reply::new(538, "5.7.11", "Encryption required for authentication"))
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
}

/// The argument of an EHLO or HELO line (the client's name for itself), without the
/// line end.
fn helo_arg(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let rest = line.get(4..).unwrap_or_default();
    rest.trim_ascii()
}
