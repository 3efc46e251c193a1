//! One SMTP session relayed between a client and a downstream server, command by command.
//!
//! Transparent: every command goes downstream and every reply comes back from it, except
//! the decisions a [`Policy`] makes itself (a rewritten path, a refusal). Commands are
//! handled one at a time in order, so a pipelining client simply finds its next commands
//! waiting in our buffer and gets its replies in order. Used in the signing direction by
//! `batv sendmail -bs` and in the verifying direction by the proxy.

use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncWrite};

use crate::smtp::{self, DataEnd, Line, Reply, SmtpError};

/// What to do with a MAIL or RCPT command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Relay, with the path replaced if `Some`.
    Relay(Option<String>),
    /// Answer the client ourselves; the downstream never sees the command.
    Refuse(Reply),
}

/// The decisions a session delegates.
pub trait Policy {
    /// A MAIL FROM path (no brackets; empty for the null sender).
    fn mail(&mut self, path: &str) -> Decision;
    /// An RCPT TO path.
    fn rcpt(&mut self, path: &str) -> Decision;
    /// The downstream answered an RCPT we relayed.
    fn rcpt_reply(&mut self, _reply: &Reply) {}
    /// DATA or the first BDAT: `Some` refuses the transaction.
    fn data(&mut self) -> Option<Reply> {
        None
    }
    /// The transaction ended (final reply relayed, or refused, or RSET).
    fn reset(&mut self);
    /// Filter the EHLO reply's keywords (the first line is the greeting name).
    fn ehlo_keyword(&self, keyword: &[u8]) -> bool {
        !keyword.eq_ignore_ascii_case(b"STARTTLS")
    }
}

/// Time limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Waiting for a client command, or for a downstream reply to one.
    pub command: Duration,
    /// Waiting for the downstream's reply to the end of DATA, and for client data.
    pub data: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            command: Duration::from_secs(300),
            data: Duration::from_secs(600),
        }
    }
}

enum Verb {
    Mail,
    Rcpt,
    Data,
    Bdat { size: u64, last: bool },
    Rset,
    Quit,
    Ehlo,
    Auth,
    StartTls,
    Other,
}

fn verb(line: &[u8]) -> Verb {
    use smtp_proto::Request;
    match Request::parse(&mut line.iter()) {
        Ok(Request::Mail { .. }) => Verb::Mail,
        Ok(Request::Rcpt { .. }) => Verb::Rcpt,
        Ok(Request::Data) => Verb::Data,
        Ok(Request::Bdat { chunk_size, is_last }) => Verb::Bdat {
            size: chunk_size as u64,
            last: is_last,
        },
        Ok(Request::Rset) => Verb::Rset,
        Ok(Request::Quit) => Verb::Quit,
        Ok(Request::Ehlo { .. }) => Verb::Ehlo,
        Ok(Request::Auth { .. }) => Verb::Auth,
        Ok(Request::StartTls) => Verb::StartTls,
        // smtp-proto refuses some valid-enough lines (unknown parameters, odd spacing);
        // the downstream is the judge of those, so classify by the verb alone.
        _ => {
            let word: Vec<u8> = line
                .iter()
                .take_while(|b| b.is_ascii_alphabetic())
                .map(u8::to_ascii_uppercase)
                .collect();
            match &word[..] {
                b"MAIL" => Verb::Mail,
                b"RCPT" => Verb::Rcpt,
                b"AUTH" => Verb::Auth,
                _ => Verb::Other,
            }
        }
    }
}

/// The relay. `C*` is the client side, `D*` the downstream.
pub struct Session<'p, CR, CW, DR, DW, P: Policy> {
    pub client_r: CR,
    pub client_w: CW,
    pub down_r: DR,
    pub down_w: DW,
    pub policy: &'p mut P,
    pub limits: Limits,
}

impl<CR, CW, DR, DW, P> Session<'_, CR, CW, DR, DW, P>
where
    CR: AsyncBufRead + Unpin,
    CW: AsyncWrite + Unpin,
    DR: AsyncBufRead + Unpin,
    DW: AsyncWrite + Unpin,
    P: Policy,
{
    async fn reply_client(&mut self, reply: &Reply) -> Result<(), SmtpError> {
        smtp::send(&mut self.client_w, &reply.raw).await?;
        Ok(())
    }

    async fn down_reply(&mut self, what: &'static str) -> Result<Reply, SmtpError> {
        smtp::read_reply_within(&mut self.down_r, self.limits.command, what).await
    }

    /// Send a command downstream and return its reply.
    async fn exchange(&mut self, line: &[u8], what: &'static str) -> Result<Reply, SmtpError> {
        smtp::send(&mut self.down_w, line).await.map_err(SmtpError::Downstream)?;
        self.down_reply(what).await
    }

    /// Relay the greeting, then commands until QUIT or either side leaves.
    pub async fn run(mut self) -> Result<(), SmtpError> {
        let greeting = match self.down_reply("waiting for the downstream's greeting").await {
            Ok(g) => g,
            Err(e) => {
                let _ = self
                    .reply_client(&Reply::new(421, "4.4.2", "Service not available, try again later"))
                    .await;
                return Err(e);
            }
        };
        self.reply_client(&greeting).await?;
        let result = self.commands().await;
        if result.as_ref().is_err_and(SmtpError::is_downstream) {
            // The downstream failed us: tell the client to come back later.
            let _ = self
                .reply_client(&Reply::new(421, "4.4.2", "Lost the next hop, try again later"))
                .await;
        }
        result
    }

    async fn commands(&mut self) -> Result<(), SmtpError> {
        let mut line = Vec::with_capacity(smtp::MAX_COMMAND_LINE);
        loop {
            let read = tokio::time::timeout(
                self.limits.command,
                smtp::read_line(&mut self.client_r, &mut line, smtp::MAX_AUTH_LINE),
            )
            .await;
            match read {
                Err(_) => {
                    self.reply_client(&Reply::new(421, "4.4.2", "Timeout waiting for a command, closing"))
                        .await?;
                    return Ok(());
                }
                Ok(r) => match r? {
                    Line::Eof => return Ok(()),
                    Line::TooLong => {
                        self.reply_client(&Reply::new(500, "5.5.2", "Line too long")).await?;
                        continue;
                    }
                    Line::Complete => {}
                },
            }
            let v = verb(&line);
            if !matches!(v, Verb::Auth) && line.len() > smtp::MAX_COMMAND_LINE {
                self.reply_client(&Reply::new(500, "5.5.2", "Line too long")).await?;
                continue;
            }
            match v {
                Verb::Mail | Verb::Rcpt => self.envelope(&line, matches!(v, Verb::Mail)).await?,
                Verb::Data => {
                    if let Some(refusal) = self.policy.data() {
                        self.refuse_transaction(&refusal).await?;
                        continue;
                    }
                    let reply = self.exchange(&line, "waiting for the reply to DATA").await?;
                    self.reply_client(&reply).await?;
                    if reply.code != 354 {
                        continue;
                    }
                    let idle = self.limits.data;
                    match smtp::relay_data(&mut self.client_r, &mut self.down_w, idle).await? {
                        DataEnd::Complete { .. } => {}
                        // The terminator never went downstream: dropping the connection
                        // makes the downstream discard the partial message.
                        DataEnd::Incomplete => return Err(SmtpError::ClientClosed("during DATA")),
                    }
                    self.finish_message().await?;
                }
                Verb::Bdat { size, last } => {
                    if let Some(refusal) = self.policy.data() {
                        // Consume the chunk so the session stays in step.
                        if !smtp::discard_exact(&mut self.client_r, size, self.limits.data).await? {
                            return Err(SmtpError::ClientClosed("during BDAT"));
                        }
                        self.refuse_transaction(&refusal).await?;
                        continue;
                    }
                    smtp::send(&mut self.down_w, &line).await.map_err(SmtpError::Downstream)?;
                    if !smtp::relay_exact(&mut self.client_r, &mut self.down_w, size, self.limits.data).await? {
                        return Err(SmtpError::ClientClosed("during BDAT"));
                    }
                    if last {
                        self.finish_message().await?;
                    } else {
                        let reply = self.down_reply("waiting for the reply to BDAT").await?;
                        self.reply_client(&reply).await?;
                        if !reply.is_positive() {
                            self.policy.reset();
                        }
                    }
                }
                Verb::Rset => {
                    let reply = self.exchange(&line, "waiting for the reply to RSET").await?;
                    self.policy.reset();
                    self.reply_client(&reply).await?;
                }
                Verb::Quit => {
                    let reply = self.exchange(&line, "waiting for the reply to QUIT").await?;
                    self.reply_client(&reply).await?;
                    return Ok(());
                }
                Verb::Ehlo => {
                    let reply = self.exchange(&line, "waiting for the reply to EHLO").await?;
                    let reply = if reply.code == 250 {
                        let mut kept = reply
                            .lines()
                            .enumerate()
                            .filter(|(i, l)| *i == 0 || self.policy.ehlo_keyword(keyword(l)))
                            .map(|(_, l)| l);
                        Reply::from_lines(250, &mut kept)
                    } else {
                        reply
                    };
                    self.policy.reset();
                    self.reply_client(&reply).await?;
                }
                Verb::StartTls => {
                    // Not offered (see ehlo_keyword): TLS would hide the envelope from us.
                    self.reply_client(&Reply::new(502, "5.5.1", "STARTTLS not available here")).await?;
                }
                Verb::Auth => {
                    let mut reply = self.exchange(&line, "waiting for the reply to AUTH").await?;
                    // SASL continuation: relay client lines while the server says 334.
                    while reply.code == 334 {
                        self.reply_client(&reply).await?;
                        let r = tokio::time::timeout(
                            self.limits.command,
                            smtp::read_line(&mut self.client_r, &mut line, smtp::MAX_AUTH_LINE),
                        )
                        .await;
                        match r.map_err(|_| SmtpError::ClientClosed("(timed out) during AUTH"))?? {
                            Line::Complete => {}
                            _ => return Err(SmtpError::ClientClosed("during AUTH")),
                        }
                        reply = self.exchange(&line, "waiting for the reply to AUTH").await?;
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

    /// MAIL or RCPT: ask the policy, relay (maybe rewritten) or refuse.
    async fn envelope(&mut self, line: &[u8], mail: bool) -> Result<(), SmtpError> {
        let span = smtp::path_span(line);
        let path = span.clone().and_then(|s| smtp::path_address(&line[s]));
        let decision = match path {
            Some(p) if mail => self.policy.mail(p),
            Some(p) => self.policy.rcpt(p),
            // Unreadable: the downstream gives the syntax error.
            None => Decision::Relay(None),
        };
        let rewritten;
        let out: &[u8] = match (&decision, span) {
            (Decision::Refuse(reply), _) => return self.reply_client(reply).await,
            (Decision::Relay(Some(new)), Some(span)) => {
                rewritten = smtp::with_path(line, span, new);
                &rewritten
            }
            _ => line,
        };
        let what = if mail {
            "waiting for the reply to MAIL"
        } else {
            "waiting for the reply to RCPT"
        };
        let reply = self.exchange(out, what).await?;
        if mail && !reply.is_positive() {
            self.policy.reset();
        }
        if !mail {
            self.policy.rcpt_reply(&reply);
        }
        self.reply_client(&reply).await
    }

    /// After the last octet of a message: the downstream's final reply is the client's.
    async fn finish_message(&mut self) -> Result<(), SmtpError> {
        let reply = smtp::read_reply_within(&mut self.down_r, self.limits.data, "waiting for the reply to the end of data").await?;
        self.policy.reset();
        self.reply_client(&reply).await
    }

    /// Refuse a transaction at DATA/BDAT; the downstream gets RSET so its state matches.
    async fn refuse_transaction(&mut self, refusal: &Reply) -> Result<(), SmtpError> {
        self.exchange(b"RSET\r\n", "waiting for the reply to RSET").await?;
        self.policy.reset();
        self.reply_client(refusal).await
    }
}

/// The keyword of an EHLO line (`SIZE 1000` -> `SIZE`).
fn keyword(line: &[u8]) -> &[u8] {
    let end = line.iter().position(|&b| b == b' ' || b == b'=').unwrap_or(line.len());
    &line[..end]
}
