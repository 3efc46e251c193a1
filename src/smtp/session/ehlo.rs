//! EHLO and AUTH: the downstream's EHLO reply as the client may see it (STARTTLS is ours,
//! AUTH waits for it, XCLIENT and XFORWARD are ours in front mode), and AUTH's SASL
//! exchange relayed line by line.

use tokio::io::{AsyncBufRead, AsyncWrite};

use super::verb::bare_cr;
use super::{Policy, Session};
use crate::smtp::{self, Line, Reply, SmtpError};

impl<'p, CR, CW, DR, DW, P> Session<'p, CR, CW, DR, DW, P>
where
    CR: AsyncBufRead + Unpin,
    CW: AsyncWrite + Unpin,
    DR: AsyncBufRead + Unpin,
    DW: AsyncWrite + Unpin,
    P: Policy,
{
    /// The EHLO reply as the client may see it: STARTTLS is ours to offer or not (and AUTH
    /// waits for it while offered); in front mode XCLIENT and XFORWARD are ours too. Notes
    /// whether the downstream offers DSN and CHUNKING.
    pub(super) fn ehlo_reply(&mut self, reply: &Reply) -> Reply {
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

    /// AUTH with its SASL continuation: client lines are relayed while the server says 334.
    pub(super) async fn auth(&mut self, line: &mut Vec<u8>) -> Result<(), SmtpError> {
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
}

/// The keyword of an EHLO line (`SIZE 1000` -> `SIZE`).
fn keyword(line: &[u8]) -> &[u8] {
    let end = line.iter().position(|&b| b == b' ' || b == b'=').unwrap_or(line.len());
    &line[..end]
}
