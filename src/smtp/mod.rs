//! SMTP framing: command lines with length limits, multi-line replies, and the raw DATA and
//! BDAT streams. Reads are bounded; nothing here buffers a message.

pub mod front;
pub mod session;

use std::io;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

/// RFC 5321 §4.5.3.1.4: a command line is at most 512 octets with CRLF.
pub const MAX_COMMAND_LINE: usize = 512;
/// RFC 4954 §4: AUTH lines may carry 12 288 octets of initial response.
pub const MAX_AUTH_LINE: usize = 12_288;
/// Replies: generous, but bounded (RFC 5321 allows 512 per line).
const MAX_REPLY_LINE: usize = 4096;
const MAX_REPLY_LINES: usize = 200;

/// A session's failure, by side: the downstream's failures get the client a 421.
#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    /// Reading from or writing to the client.
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("connection closed by the client {0}")]
    ClientClosed(&'static str),
    /// Reading from or writing to the downstream.
    #[error("downstream: {0}")]
    Downstream(io::Error),
    #[error("connection closed by the downstream")]
    DownstreamClosed,
    /// The downstream did not answer in time.
    #[error("timed out {0}")]
    Timeout(&'static str),
    #[error("malformed reply from the downstream: {0}")]
    BadReply(String),
}

impl SmtpError {
    /// The downstream failed us (not the client).
    pub fn is_downstream(&self) -> bool {
        matches!(
            self,
            SmtpError::Downstream(_) | SmtpError::DownstreamClosed | SmtpError::Timeout(_) | SmtpError::BadReply(_)
        )
    }
}

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

/// Where the DATA scanner is, and what it holds back until the next octet decides how it
/// reads. A `.` at the start of a wire line and a run of CRs are never written at once: the
/// octet after them says whether they are the end of the message, a line ending, a line
/// break inside the data, or plain data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// At the start of a wire line (the first octet of DATA, or after a line ending).
    LineStart,
    /// Inside a line; nothing held back.
    InLine,
    /// A run of CRs held back (inside a line, or the whole of it so far).
    Cr,
    /// A `.` at the start of a wire line, held back.
    Dot,
    /// A `.` at the start of a wire line, then a run of CRs, held back.
    DotCr,
}

impl Scan {
    /// One client octet: what goes downstream, and the next state (`None`: that octet ended
    /// the message, and `out` ends with the terminator `.` CRLF at a line start).
    ///
    /// Every line ending comes out as CRLF, and the message ends where that output has its
    /// first lone `.` line, so no MTA reading it can find an end (or a line) we did not:
    /// - CRs then LF are one line ending, as Postfix reads them (it drops CRs before LF):
    ///   `.` CR CR LF ends the message here too, and goes on as `.` CRLF;
    /// - a bare LF is a line ending;
    /// - CRs before anything else are one line break inside the data: the text after them
    ///   starts a line of its own, dot-stuffed if it starts with `.`, so that it can neither
    ///   end the message nor lose its dot downstream. A wire line `.` CR X loses only its
    ///   stuffing dot, as un-stuffing would: the CRs end an empty line, X starts the next;
    /// - every other octet passes unchanged.
    fn step(self, b: u8, out: &mut Vec<u8>) -> Option<Scan> {
        Some(match (self, b) {
            (Scan::Dot | Scan::DotCr, b'\n') => {
                out.extend_from_slice(b".\r\n");
                return None;
            }
            (Scan::Dot | Scan::DotCr, b'\r') => Scan::DotCr,
            (Scan::Dot, x) => {
                out.extend_from_slice(&[b'.', x]);
                Scan::InLine
            }
            (Scan::LineStart, b'.') => Scan::Dot,
            (_, b'\r') => Scan::Cr,
            (_, b'\n') => {
                out.extend_from_slice(b"\r\n");
                Scan::LineStart
            }
            // The held CRs were a line break inside the data. A held `.` before them was
            // only the stuffing of an empty wire line, and goes; a `.` after them starts the
            // new line and is stuffed.
            (Scan::Cr | Scan::DotCr, b'.') => {
                out.extend_from_slice(b"\r\n..");
                Scan::InLine
            }
            (Scan::Cr | Scan::DotCr, x) => {
                out.extend_from_slice(&[b'\r', b'\n', x]);
                Scan::InLine
            }
            (Scan::LineStart | Scan::InLine, x) => {
                out.push(x);
                Scan::InLine
            }
        })
    }
}

/// How a DATA stream ended.
#[derive(Debug, PartialEq, Eq)]
pub enum DataEnd {
    /// The terminating `.` line was relayed: the downstream has the whole message.
    Complete { bytes: u64 },
    /// The client closed or timed out first; the terminator was NOT sent.
    Incomplete,
    /// The octet budget was reached before the end: call [`DataScan::relay`] again to go on.
    Paused,
}

/// A DATA stream being relayed, possibly in stages (a first part held for inspection,
/// then the rest). What the downstream gets is canonical: CRLF line endings only, no bare
/// CR or LF (see [`Scan::step`] for the rules), and the proxy finds the end of the message
/// in that same output, so the proxy and any MTA agree on where lines and the message end
/// (no SMTP smuggling). The octets a stage holds back (a leading `.`, a run of CRs) are
/// kept here and written by the next stage, so the stages' output joined is the one-shot
/// output. Memory use is the reader's buffer.
pub struct DataScan {
    state: Scan,
    total: u64,
}

impl Default for DataScan {
    fn default() -> Self {
        DataScan {
            state: Scan::LineStart,
            total: 0,
        }
    }
}

impl DataScan {
    /// Relay from `client` to `down` until the lone `.` line, which is relayed too (as `.`
    /// CRLF), or until `budget` more client octets have been read ([`DataEnd::Paused`]).
    /// Octets after the terminator stay in `client`.
    pub async fn relay<R, W>(&mut self, client: &mut R, down: &mut W, idle: Duration, budget: u64) -> Result<DataEnd, SmtpError>
    where
        R: AsyncBufRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut out: Vec<u8> = Vec::with_capacity(16 * 1024);
        let mut left = budget;
        loop {
            if left == 0 {
                return Ok(DataEnd::Paused);
            }
            let avail = match tokio::time::timeout(idle, client.fill_buf()).await {
                Ok(r) => r?,
                Err(_) => return Ok(DataEnd::Incomplete),
            };
            if avail.is_empty() {
                return Ok(DataEnd::Incomplete);
            }
            let avail = &avail[..avail.len().min(usize::try_from(left).unwrap_or(usize::MAX))];
            out.clear();
            let mut consumed = avail.len();
            let mut finished = false;
            let mut state = self.state;
            let mut i = 0;
            while i < avail.len() {
                if state == Scan::InLine {
                    // Most octets are ordinary ones inside a line: copied as a run.
                    let run = avail[i..].iter().position(|&b| b == b'\r' || b == b'\n').unwrap_or(avail.len() - i);
                    out.extend_from_slice(&avail[i..i + run]);
                    i += run;
                    if i == avail.len() {
                        break;
                    }
                }
                match state.step(avail[i], &mut out) {
                    Some(next) => state = next,
                    None => {
                        finished = true;
                        consumed = i + 1;
                        state = Scan::LineStart;
                        break;
                    }
                }
                i += 1;
            }
            // State, consumption and output change together after a read, so a caller may
            // cancel `relay` while it waits for the client (session.rs's hold).
            self.state = state;
            client.consume(consumed);
            left -= consumed as u64;
            self.total += out.len() as u64;
            down.write_all(&out).await.map_err(SmtpError::Downstream)?;
            if finished {
                down.flush().await.map_err(SmtpError::Downstream)?;
                return Ok(DataEnd::Complete { bytes: self.total });
            }
        }
    }
}

/// Relay a whole DATA stream (see [`DataScan`]).
pub async fn relay_data<R, W>(client: &mut R, down: &mut W, idle: Duration) -> Result<DataEnd, SmtpError>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    DataScan::default().relay(client, down, idle, u64::MAX).await
}

/// Relay exactly `n` octets (a BDAT chunk) from `client` to `down`. Returns false if the
/// client went away first.
pub async fn relay_exact<R, W>(client: &mut R, down: &mut W, mut n: u64, idle: Duration) -> Result<bool, SmtpError>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    while n > 0 {
        let avail = match tokio::time::timeout(idle, client.fill_buf()).await {
            Ok(r) => r?,
            Err(_) => return Ok(false),
        };
        if avail.is_empty() {
            return Ok(false);
        }
        let take = avail.len().min(n as usize);
        down.write_all(&avail[..take]).await.map_err(SmtpError::Downstream)?;
        client.consume(take);
        n -= take as u64;
    }
    Ok(true)
}

/// Discard exactly `n` octets (a BDAT chunk we refuse). Returns false on early end.
pub async fn discard_exact<R: AsyncBufRead + Unpin>(client: &mut R, n: u64, idle: Duration) -> Result<bool, SmtpError> {
    relay_exact(client, &mut tokio::io::sink(), n, idle).await
}

/// Locate the path inside `MAIL FROM:<...>` / `RCPT TO:<...>`: the byte range between the
/// angle brackets (quoted strings may hold `>`).
pub fn path_span(line: &[u8]) -> Option<std::ops::Range<usize>> {
    let colon = line.iter().position(|&b| b == b':')?;
    let mut i = colon + 1;
    while line.get(i) == Some(&b' ') {
        i += 1;
    }
    if line.get(i) != Some(&b'<') {
        return None;
    }
    let start = i + 1;
    let mut quoted = false;
    let mut j = start;
    while j < line.len() {
        match line[j] {
            b'\\' if quoted => j += 1,
            b'"' => quoted = !quoted,
            b'>' if !quoted => return Some(start..j),
            b'\r' | b'\n' => return None,
            _ => {}
        }
        j += 1;
    }
    None
}

/// Replace the path of a MAIL/RCPT line, keeping everything else byte for byte.
pub fn with_path(line: &[u8], span: std::ops::Range<usize>, path: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(line.len() + path.len());
    out.extend_from_slice(&line[..span.start]);
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(&line[span.end..]);
    out
}

/// The SMTP path (no source route, no brackets) as a string, as our address code reads it.
pub fn path_address(path: &[u8]) -> Option<&str> {
    let p = std::str::from_utf8(path).ok()?;
    // A source route (`@a,@b:user@host`) is obsolete; ignore it (RFC 5321 §4.1.2).
    Some(match p.strip_prefix('@').and_then(|_| p.find(':')) {
        Some(i) => &p[i + 1..],
        None => p,
    })
}

/// Write all and flush.
pub async fn send<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn scan(input: &[u8]) -> (DataEnd, Vec<u8>, Vec<u8>) {
        let mut r = tokio::io::BufReader::with_capacity(7, input);
        let mut out = Vec::new();
        let end = relay_data(&mut r, &mut out, Duration::from_secs(1)).await.unwrap();
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).await.unwrap();
        (end, out, rest)
    }

    #[tokio::test]
    async fn data_ends_only_at_a_lone_dot() {
        let (end, out, rest) = scan(b"a\r\n..b\r\n.x\r\n.\r\nQUIT\r\n").await;
        assert_eq!(end, DataEnd::Complete { bytes: 15 });
        assert_eq!(out, b"a\r\n..b\r\n.x\r\n.\r\n");
        assert_eq!(rest, b"QUIT\r\n");
        // Empty message.
        let (end, out, _) = scan(b".\r\n").await;
        assert_eq!((end, out), (DataEnd::Complete { bytes: 3 }, b".\r\n".to_vec()));
        // Bare LFs become CRLF, so "\n.\n" ends the message for everyone.
        let (end, out, rest) = scan(b"a\nb\n.\nMAIL FROM:<x>\r\n").await;
        assert_eq!(end, DataEnd::Complete { bytes: 9 });
        assert_eq!(out, b"a\r\nb\r\n.\r\n");
        assert_eq!(rest, b"MAIL FROM:<x>\r\n");
        // A bare CR is a line break, and the line after it is dot-stuffed: "\r.\r\n" is
        // not the end.
        let (end, out, _) = scan(b"a\r.\r\n\r\n.\r\n").await;
        assert_eq!(end, DataEnd::Complete { bytes: 12 });
        assert_eq!(out, b"a\r\n..\r\n\r\n.\r\n");
        // Cut off: incomplete, and the terminator was never written.
        let (end, out, _) = scan(b"a\r\nb\r\n.").await;
        assert_eq!(end, DataEnd::Incomplete);
        assert!(!out.ends_with(b".\r\n"));
    }

    #[tokio::test]
    async fn every_line_ending_is_canonical() {
        // (input, what goes downstream, what stays for the command reader)
        let cases: [(&[u8], &[u8], &[u8]); 12] = [
            // CRs then LF end a line as Postfix reads them: here the message ends.
            (b"a\r\n.\r\r\nMAIL FROM:<>\r\n", b"a\r\n.\r\n", b"MAIL FROM:<>\r\n"),
            (b".\r\r\r\nX", b".\r\n", b"X"),
            (b"a\r\r\nb\r\n.\n", b"a\r\nb\r\n.\r\n", b""),
            // A bare CR starts a new line; a dot there is stuffed, never an end.
            (b"\r.\r\n.\r\n", b"\r\n..\r\n.\r\n", b""),
            (b"\r\r.\r\n.\r\n", b"\r\n..\r\n.\r\n", b""),
            (b"a\rb\r\r\rc\r\n.\r\n", b"a\r\nb\r\nc\r\n.\r\n", b""),
            // ".\rX": the wire line's dot was stuffing; the CR ends that (empty) line.
            (b".\rMAIL FROM:<>\r\n.\r\n", b"\r\nMAIL FROM:<>\r\n.\r\n", b""),
            (b".\r\r.\r\n.\r\n", b"\r\n..\r\n.\r\n", b""),
            (b"..\rx\r\n.\r\n", b"..\r\nx\r\n.\r\n", b""),
            // Bare LFs, as before.
            (b"\n.\n", b"\r\n.\r\n", b""),
            // NUL, 8-bit and dots inside lines pass as they are.
            (b"a\0\xff.\r\n..\r\n.x\r\n.\r\n", b"a\0\xff.\r\n..\r\n.x\r\n.\r\n", b""),
            (b"x.\r\r\n.\r\n", b"x.\r\n.\r\n", b""),
        ];
        for (input, want, rest_want) in cases {
            let (end, out, rest) = scan(input).await;
            let show = String::from_utf8_lossy(input);
            assert_eq!(end, DataEnd::Complete { bytes: want.len() as u64 }, "{show:?}");
            assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(want), "{show:?}");
            assert_eq!(rest, rest_want, "{show:?}");
        }
        // Cut off after held octets: they never go downstream, nor does a terminator.
        for (input, sent) in [
            (&b"a\r"[..], &b"a"[..]),
            (b"a\r\n.", b"a\r\n"),
            (b"a\r\n.\r\r", b"a\r\n"),
            (b"\r", b""),
        ] {
            let (end, out, _) = scan(input).await;
            assert_eq!((end, out), (DataEnd::Incomplete, sent.to_vec()));
        }
    }

    #[tokio::test]
    async fn held_octets_carry_over_a_pause() {
        // Paused right after a leading dot and after a CR: the next stage decides them.
        let input = b"x\r.\r\n.\r\r\nQUIT\r\n";
        for budget in 1..input.len() as u64 {
            let mut r = tokio::io::BufReader::with_capacity(3, &input[..]);
            let mut scan = DataScan::default();
            let mut out = Vec::new();
            let first = scan.relay(&mut r, &mut out, Duration::from_secs(1), budget).await.unwrap();
            if first == DataEnd::Paused {
                let end = scan.relay(&mut r, &mut out, Duration::from_secs(1), u64::MAX).await.unwrap();
                assert_eq!(end, DataEnd::Complete { bytes: 10 }, "budget {budget}");
            }
            assert_eq!(out, b"x\r\n..\r\n.\r\n", "budget {budget}");
            let mut rest = Vec::new();
            r.read_to_end(&mut rest).await.unwrap();
            assert_eq!(rest, b"QUIT\r\n", "budget {budget}");
        }
    }

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

    #[test]
    fn paths() {
        let l = b"MAIL FROM:<\"a>b\"@x.org> SIZE=10\r\n";
        let s = path_span(l).unwrap();
        assert_eq!(&l[s.clone()], b"\"a>b\"@x.org");
        assert_eq!(with_path(l, s, "new@x.org"), b"MAIL FROM:<new@x.org> SIZE=10\r\n");
        assert_eq!(path_span(b"MAIL FROM: <> BODY=8BITMIME\r\n"), Some(12..12));
        assert_eq!(path_span(b"MAIL FROM:alice@x\r\n"), None);
        assert_eq!(path_address(b"@relay.example:bob@x.org"), Some("bob@x.org"));
    }
}
