//! Command lines and replies: reading a line within a length limit, the limits themselves,
//! reading a (multi-line) reply from the downstream, and writing with a flush.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

use super::SmtpError;

/// RFC 5321 §4.5.3.1.4: a command line is at most 512 octets with CRLF.
pub const MAX_COMMAND_LINE: usize = 512;
/// RFC 4954 §4: AUTH lines may carry 12 288 octets of initial response.
pub const MAX_AUTH_LINE: usize = 12_288;
/// Replies: generous, but bounded (RFC 5321 allows 512 per line).
const MAX_REPLY_LINE: usize = 4096;
const MAX_REPLY_LINES: usize = 200;

/// A line read, or why there is none.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line, including its line ending, in the caller's buffer.
    Complete,
    /// Longer than the limit: the rest up to the newline was discarded.
    TooLong,
    /// End of stream (a partial line without newline counts as end).
    Eof,
}

/// Read one line (up to and including `\n`) into `buf`, at most `max` octets.
pub async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R, buf: &mut Vec<u8>, max: usize) -> io::Result<Line> {
    buf.clear();
    let mut too_long = false;
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            return Ok(Line::Eof);
        }
        let (take, done) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (avail.len(), false),
        };
        if !too_long {
            if buf.len() + take > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(&avail[..take]);
            }
        }
        r.consume(take);
        if done {
            return Ok(if too_long { Line::TooLong } else { Line::Complete });
        }
    }
}

/// A complete (possibly multi-line) reply, kept byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub raw: Vec<u8>,
}

impl Reply {
    /// A reply of our own: `code` with an enhanced status code and text. Multi-line if
    /// `text` has several lines.
    pub fn new(code: u16, enhanced: &str, text: &str) -> Self {
        let lines: Vec<&str> = text.lines().collect();
        let mut raw = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            if enhanced.is_empty() {
                raw.extend_from_slice(format!("{code}{sep}{l}\r\n").as_bytes());
            } else {
                raw.extend_from_slice(format!("{code}{sep}{enhanced} {l}\r\n").as_bytes());
            }
        }
        Reply { code, raw }
    }

    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// The reply's lines without code and separator (e.g. EHLO keywords).
    pub fn lines(&self) -> impl Iterator<Item = &[u8]> {
        self.raw.split_inclusive(|&b| b == b'\n').map(|l| {
            let l = l.strip_suffix(b"\n").unwrap_or(l);
            let l = l.strip_suffix(b"\r").unwrap_or(l);
            l.get(4..).unwrap_or(b"")
        })
    }

    /// Rebuild a multi-line reply from kept lines (same code), e.g. a filtered EHLO reply.
    pub fn from_lines<'a>(code: u16, lines: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let lines: Vec<&[u8]> = lines.into_iter().collect();
        let mut raw = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            raw.extend_from_slice(code.to_string().as_bytes());
            raw.push(if i + 1 == lines.len() { b' ' } else { b'-' });
            raw.extend_from_slice(l);
            raw.extend_from_slice(b"\r\n");
        }
        Reply { code, raw }
    }
}

/// Read a reply: lines `ddd-text` ending with `ddd text` (or a bare `ddd`).
pub async fn read_reply<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<Reply, SmtpError> {
    let mut raw = Vec::new();
    let mut line = Vec::new();
    let mut code = None;
    for _ in 0..MAX_REPLY_LINES {
        match read_line(r, &mut line, MAX_REPLY_LINE).await.map_err(SmtpError::Downstream)? {
            Line::Eof => return Err(SmtpError::DownstreamClosed),
            Line::TooLong => return Err(SmtpError::BadReply("line too long".into())),
            Line::Complete => {}
        }
        let digits = line
            .get(..3)
            .filter(|d| d.iter().all(u8::is_ascii_digit) && d[0] >= b'2' && d[0] <= b'5');
        let Some(d) = digits else {
            return Err(SmtpError::BadReply(String::from_utf8_lossy(&line).trim_end().to_string()));
        };
        let c = (d[0] - b'0') as u16 * 100 + (d[1] - b'0') as u16 * 10 + (d[2] - b'0') as u16;
        if *code.get_or_insert(c) != c {
            return Err(SmtpError::BadReply("reply code changed between lines".into()));
        }
        // Normalise line endings to CRLF so what we pass on is valid SMTP.
        let body = line.strip_suffix(b"\n").unwrap_or(&line);
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        raw.extend_from_slice(body);
        raw.extend_from_slice(b"\r\n");
        match line.get(3) {
            Some(b'-') => continue,
            _ => return Ok(Reply { code: c, raw }),
        }
    }
    Err(SmtpError::BadReply("too many lines".into()))
}

/// `read_reply` with a deadline.
pub async fn read_reply_within<R: AsyncBufRead + Unpin>(r: &mut R, limit: Duration, what: &'static str) -> Result<Reply, SmtpError> {
    tokio::time::timeout(limit, read_reply(r))
        .await
        .map_err(|_| SmtpError::Timeout(what))?
}

/// Write all and flush.
pub async fn send<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replies() {
        let mut r = &b"250-mx.example\r\n250-PIPELINING\n250 SIZE 1000\r\n354 go\r\n"[..];
        let rep = read_reply(&mut r).await.unwrap();
        assert_eq!(rep.code, 250);
        assert_eq!(rep.lines().collect::<Vec<_>>(), [&b"mx.example"[..], b"PIPELINING", b"SIZE 1000"]);
        assert_eq!(read_reply(&mut r).await.unwrap().code, 354);
        assert!(read_reply(&mut r).await.is_err());
        assert!(read_reply(&mut &b"hello\r\n"[..]).await.is_err());
        assert_eq!(Reply::new(550, "5.7.1", "no\nreally").raw, b"550-5.7.1 no\r\n550 5.7.1 really\r\n");
    }

    #[tokio::test]
    async fn lines_are_bounded() {
        let mut r = tokio::io::BufReader::with_capacity(4, &b"0123456789\r\nok\r\n"[..]);
        let mut buf = Vec::new();
        assert_eq!(read_line(&mut r, &mut buf, 8).await.unwrap(), Line::TooLong);
        assert_eq!(read_line(&mut r, &mut buf, 8).await.unwrap(), Line::Complete);
        assert_eq!(buf, b"ok\r\n");
        assert_eq!(read_line(&mut r, &mut buf, 8).await.unwrap(), Line::Eof);
    }
}
