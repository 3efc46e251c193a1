//! The path of a MAIL FROM or RCPT TO line: where it is, replacing it, and reading it as
//! an address.

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

#[cfg(test)]
mod tests {
    use super::*;

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
