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
        let (front, starttls, auth_allowed) = (self.front, self.starttls, self.auth_allowed);
        let mut kept: Vec<&[u8]> = reply
            .lines()
            .enumerate()
            .filter(|(i, l)| {
                let k = keyword(l);
                *i == 0
                    || !(k.eq_ignore_ascii_case(b"STARTTLS")
                        || (starttls || !auth_allowed) && k.eq_ignore_ascii_case(b"AUTH")
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
    /// A 235 tells the policy, with the user the exchange named if it can be read.
    pub(super) async fn auth(&mut self, line: &mut Vec<u8>) -> Result<(), SmtpError> {
        let (mechanism, mut first) = auth_command(line);
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
            if first.is_none() {
                first = Some(line.trim_ascii_end().to_vec());
            }
            reply = self.exchange(line, "waiting for the reply to AUTH").await?;
        }
        if reply.code == 235 {
            let user = first.as_deref().and_then(|f| sasl_user(&mechanism, f));
            self.policy.authenticated(user.as_deref());
        }
        self.reply_client(&reply).await
    }
}

/// The keyword of an EHLO line (`SIZE 1000` -> `SIZE`).
fn keyword(line: &[u8]) -> &[u8] {
    let end = line.iter().position(|&b| b == b' ' || b == b'=').unwrap_or(line.len());
    &line[..end]
}

/// `AUTH mechanism [initial-response]`: the mechanism (upper case) and the response.
fn auth_command(line: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    let mut words = line.trim_ascii().split(|&b| b == b' ').filter(|w| !w.is_empty()).skip(1);
    let mechanism = words.next().unwrap_or_default().to_ascii_uppercase();
    (mechanism, words.next().map(<[u8]>::to_vec))
}

/// The user a SASL exchange names in its first client response, for the trace (the
/// downstream has checked it): PLAIN's authentication identity (RFC 4616), LOGIN's user
/// name, CRAM-MD5's user (RFC 2195). None for other mechanisms, or what does not decode.
fn sasl_user(mechanism: &[u8], response: &[u8]) -> Option<String> {
    let data = data_encoding::BASE64.decode(response).ok()?;
    let user = match mechanism {
        b"PLAIN" => data.split(|&b| b == 0).nth(1)?.to_vec(),
        b"LOGIN" => data,
        // `user SP digest`; the user may hold spaces.
        b"CRAM-MD5" => data[..data.iter().rposition(|&b| b == b' ')?].to_vec(),
        _ => return None,
    };
    let user = String::from_utf8(user).ok()?;
    (!user.is_empty()).then_some(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sasl_users() {
        let b64 = |s: &[u8]| data_encoding::BASE64.encode(s).into_bytes();
        assert_eq!(sasl_user(b"PLAIN", &b64(b"\0alice\0secret")).as_deref(), Some("alice"));
        assert_eq!(sasl_user(b"PLAIN", &b64(b"admin\0alice\0secret")).as_deref(), Some("alice"));
        assert_eq!(
            sasl_user(b"LOGIN", &b64(b"alice@example.com")).as_deref(),
            Some("alice@example.com")
        );
        assert_eq!(
            sasl_user(b"CRAM-MD5", &b64(b"tim b913a602c7eda7a495b4e6e7334d3890")).as_deref(),
            Some("tim")
        );
        assert_eq!(sasl_user(b"PLAIN", b"not base64!"), None);
        assert_eq!(sasl_user(b"PLAIN", &b64(b"no nul")), None);
        assert_eq!(sasl_user(b"XOAUTH2", &b64(b"user=a")), None);
        assert_eq!(sasl_user(b"LOGIN", &b64(b"")), None);
        assert_eq!(
            auth_command(b"AUTH plain AGFsaWNlAHM=\r\n"),
            (b"PLAIN".to_vec(), Some(b"AGFsaWNlAHM=".to_vec()))
        );
        assert_eq!(auth_command(b"AUTH LOGIN\r\n"), (b"LOGIN".to_vec(), None));
    }
}
