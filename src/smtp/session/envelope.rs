//! MAIL and RCPT: the policy judges the path; the command is relayed (its path maybe
//! rewritten, with an ORCPT for the client's address) or answered here.

use tokio::io::{AsyncBufRead, AsyncWrite};

use super::{Decision, Policy, Session};
use crate::smtp::{self, Reply, SmtpError};

impl<'p, CR, CW, DR, DW, P> Session<'p, CR, CW, DR, DW, P>
where
    CR: AsyncBufRead + Unpin,
    CW: AsyncWrite + Unpin,
    DR: AsyncBufRead + Unpin,
    DW: AsyncWrite + Unpin,
    P: Policy,
{
    /// MAIL or RCPT: ask the policy, relay (maybe rewritten) or refuse. True if the policy
    /// closed the session.
    pub(super) async fn envelope(&mut self, line: &[u8], mail: bool) -> Result<bool, SmtpError> {
        let span = smtp::path_span(line);
        let path = span.clone().and_then(|s| smtp::path_address(&line[s]));
        let (Some(span), Some(path)) = (span, path) else {
            // A path we cannot read is one the policy cannot judge: it does not go on
            // (RFC 5321 §4.1.2 requires the angle brackets).
            let reply = Reply::new(501, "5.5.4", "Syntax error in the address (expected <address>)");
            self.reply_client(&reply).await?;
            return Ok(false);
        };
        let written = std::str::from_utf8(&line[span.clone()]).unwrap_or(path);
        let refused = if mail { None } else { self.policy.rcpt_written(written) };
        let mut decision = match refused {
            Some(reply) => Decision::Refuse(reply),
            None if mail => self.policy.mail(path),
            None => self.policy.rcpt(path),
        };
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
