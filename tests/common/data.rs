//! A model of DATA as batv relays it, written line by line (unlike the scanner's state
//! machine in src/smtp/data.rs), and of the message as MTAs read it. Standalone, so that a test
//! may include it alone with `#[path]`.
#![allow(dead_code)]

/// What batv should send downstream for a DATA stream: each wire line (up to an LF, its
/// CRs before the LF dropped) split at its runs of bare CRs into lines ending in CRLF; a
/// line after such a run is dot-stuffed if it starts with `.`, and a wire line `.` followed
/// by a run loses its (stuffing) dot. Stops after the terminator (a wire line `.`) and says
/// how many input octets it took; `None` if the input has no terminator (the output then
/// holds only what the scanner need not hold back: no partial line's trailing CRs or lone
/// leading dot).
pub fn canonical(input: &[u8]) -> (Vec<u8>, Option<usize>) {
    let mut out = Vec::with_capacity(input.len() + 16);
    let mut at = 0;
    for wire in input.split_inclusive(|&b| b == b'\n') {
        at += wire.len();
        let (content, ended) = match wire.strip_suffix(b"\n") {
            Some(c) => (c, true),
            None => (wire, false),
        };
        let content = &content[..content.len() - content.iter().rev().take_while(|&&b| b == b'\r').count()];
        let held_crs = !ended && content.len() < wire.len();
        if ended && content == b"." {
            out.extend_from_slice(b".\r\n");
            return (out, Some(at));
        }
        let mut pieces = content.split(|&b| b == b'\r');
        let first = pieces.next().unwrap_or_default();
        // Later empty pieces come from CRs that follow CRs: one run, one line break.
        let rest: Vec<&[u8]> = pieces.filter(|p| !p.is_empty()).collect();
        if !ended && rest.is_empty() && !held_crs && first == b"." {
            // A lone leading dot at the end of the input: still held back.
            return (out, None);
        }
        if !(first == b"." && (!rest.is_empty() || held_crs)) {
            out.extend_from_slice(first);
        }
        for p in &rest {
            out.extend_from_slice(b"\r\n");
            if p.starts_with(b".") {
                out.push(b'.');
            }
            out.extend_from_slice(p);
        }
        if ended {
            out.extend_from_slice(b"\r\n");
        }
    }
    (out, None)
}

/// Where a message ends as Postfix reads the raw stream (lines end at LF, CRs before it
/// are dropped, a line `.` ends the message): the octets up to and including that line.
pub fn postfix_end(input: &[u8]) -> Option<usize> {
    let mut at = 0;
    for wire in input.split_inclusive(|&b| b == b'\n') {
        at += wire.len();
        let content = wire.strip_suffix(b"\n")?;
        let content = &content[..content.len() - content.iter().rev().take_while(|&&b| b == b'\r').count()];
        if content == b"." {
            return Some(at);
        }
    }
    None
}

/// The message a canonical DATA stream carries: un-stuffed, without the terminator.
pub fn unstuffed(canonical: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(canonical.len());
    for line in canonical.split_inclusive(|&b| b == b'\n') {
        if line == b".\r\n" {
            break;
        }
        out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
    }
    out
}

/// Only CRLF line endings: no CR without LF after it, no LF without CR before it.
pub fn is_canonical(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().all(|(i, &b)| match b {
        b'\r' => bytes.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && bytes[i - 1] == b'\r',
        _ => true,
    })
}
