//! Reading a command line: which command it is (the verbs the session treats apart, and
//! the lines it refuses), BDAT's strict arguments, and a bare CR inside a line.

pub(super) enum Verb {
    Mail,
    Rcpt,
    Data,
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Quit,
    Ehlo,
    Helo,
    Auth,
    StartTls,
    /// XCLIENT or XFORWARD: attributes only a trusted hop may set.
    Xclient,
    /// Not a command line (leading white space, empty).
    Unrecognized,
    /// A malformed DATA, BDAT or STARTTLS.
    BadSyntax,
    Other,
}

pub(super) fn verb(line: &[u8]) -> Verb {
    use smtp_proto::Request;
    // A command starts with its verb. Servers differ in whether they skip leading white
    // space, and a command the downstream runs but we did not recognise would bypass
    // every check, so such lines (and empty ones) are refused here.
    if !line.first().is_some_and(u8::is_ascii_alphabetic) {
        return Verb::Unrecognized;
    }
    match Request::parse(&mut line.iter()) {
        Ok(Request::Mail { .. }) => Verb::Mail,
        Ok(Request::Rcpt { .. }) => Verb::Rcpt,
        Ok(Request::Data) => Verb::Data,
        // smtp-proto overlooks text after LAST; a downstream that refuses the line would
        // then read the chunk as commands. Only the strict form is relayed.
        Ok(Request::Bdat { .. }) => match bdat_args(line) {
            Some((size, last)) => Verb::Bdat { size, last },
            None => Verb::BadSyntax,
        },
        Ok(Request::Rset) => Verb::Rset,
        Ok(Request::Quit) => Verb::Quit,
        Ok(Request::Ehlo { .. }) => Verb::Ehlo,
        Ok(Request::Helo { .. }) => Verb::Helo,
        Ok(Request::Auth { .. }) => Verb::Auth,
        Ok(Request::StartTls) => Verb::StartTls,
        // smtp-proto refuses some valid-enough lines (unknown parameters, odd spacing) and
        // does not know XCLIENT/XFORWARD. The downstream judges the syntax of the ones we
        // can follow whatever their arguments; DATA, BDAT and STARTTLS change how the
        // following bytes are read, so an odd form of those is refused instead.
        _ => {
            let word: Vec<u8> = line
                .iter()
                .take(9)
                .take_while(|b| b.is_ascii_alphabetic())
                .map(u8::to_ascii_uppercase)
                .collect();
            match &word[..] {
                b"MAIL" => Verb::Mail,
                b"RCPT" => Verb::Rcpt,
                b"AUTH" => Verb::Auth,
                b"EHLO" => Verb::Ehlo,
                b"HELO" => Verb::Helo,
                b"RSET" => Verb::Rset,
                b"QUIT" => Verb::Quit,
                b"XCLIENT" | b"XFORWARD" => Verb::Xclient,
                b"DATA" | b"BDAT" | b"STARTTLS" => Verb::BadSyntax,
                _ => Verb::Other,
            }
        }
    }
}

/// `BDAT SP chunk-size [SP LAST]` (RFC 3030 §2), nothing else.
fn bdat_args(line: &[u8]) -> Option<(u64, bool)> {
    let line = line.strip_suffix(b"\n")?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|&b| b == b' ');
    if !parts.next()?.eq_ignore_ascii_case(b"BDAT") {
        return None;
    }
    let size = parts
        .next()
        .filter(|d| !d.is_empty() && d.len() <= 18 && d.iter().all(u8::is_ascii_digit))?;
    let size = std::str::from_utf8(size).ok()?.parse().ok()?;
    let last = match parts.next() {
        None => false,
        Some(l) if l.eq_ignore_ascii_case(b"LAST") => true,
        Some(_) => return None,
    };
    parts.next().is_none().then_some((size, last))
}

/// A CR in a command line other than the CRs right before its final LF.
pub(super) fn bare_cr(line: &[u8]) -> bool {
    let content = line.strip_suffix(b"\n").unwrap_or(line);
    let end = content.len() - content.iter().rev().take_while(|&&b| b == b'\r').count();
    content[..end].contains(&b'\r')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdat_syntax_is_strict() {
        assert_eq!(bdat_args(b"BDAT 28 LAST\r\n"), Some((28, true)));
        assert_eq!(bdat_args(b"bdat 0\r\n"), Some((0, false)));
        assert_eq!(bdat_args(b"BDAT 28 LAST junk\r\n"), None);
        assert_eq!(bdat_args(b"BDAT \t0 LAST\r\n"), None);
        assert_eq!(bdat_args(b"BDAT  5\r\n"), None);
        assert_eq!(bdat_args(b"BDAT 99999999999999999999\r\n"), None);
    }

    #[test]
    fn bare_cr_in_a_command() {
        assert!(!bare_cr(b"MAIL FROM:<>\r\n"));
        assert!(!bare_cr(b"MAIL FROM:<>\r\r\n"));
        assert!(!bare_cr(b"NOOP\n"));
        assert!(bare_cr(b"MAIL FROM:<>\rRCPT TO:<bob@example.com>\r\n"));
        assert!(bare_cr(b"\rNOOP\r\n"));
        assert!(bare_cr(b"NOOP\r \r\n"));
    }
}
