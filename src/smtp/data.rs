//! The message streams: the DATA scanner ([`DataScan`], [`relay_data`]), which relays a
//! message in canonical form and finds its end where any MTA would, and BDAT's counted
//! chunks ([`relay_exact`], [`discard_exact`]). Nothing here buffers a message.

use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

use super::SmtpError;

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
            // cancel `relay` while it waits for the client (session/data.rs's hold).
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
}
