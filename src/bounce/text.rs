//! Reading header values and addresses out of parsed parts and raw text, bounded and
//! char-boundary safe: the helpers `classify` and `sender` share.

use std::borrow::Cow;

use mail_parser::{MimeHeaders, PartType};

/// Octets of an unparsed part read as text.
pub(super) const TEXT_SCAN: usize = 64 * 1024;

/// A multipart part the parser could not split (its boundary missing, e.g. on an
/// unfolded line): its content, read as text.
pub(super) fn unparsed_multipart<'a>(part: &'a mail_parser::MessagePart<'_>) -> Option<Cow<'a, str>> {
    match &part.body {
        PartType::Binary(b) | PartType::InlineBinary(b)
            if part.content_type().is_some_and(|c| c.ctype().eq_ignore_ascii_case("multipart")) =>
        {
            Some(String::from_utf8_lossy(&b[..b.len().min(TEXT_SCAN)]))
        }
        _ => None,
    }
}

/// The largest char boundary at or below `n`.
pub(crate) fn floor(t: &str, n: usize) -> usize {
    let mut n = n.min(t.len());
    while !t.is_char_boundary(n) {
        n -= 1;
    }
    n
}

/// `s` starts with `prefix`, ASCII case ignored.
pub(super) fn starts_with_ci(s: &str, prefix: &str) -> bool {
    s.as_bytes()
        .get(..prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(prefix.as_bytes()))
}

pub(super) fn first_address(a: Option<&mail_parser::Address<'_>>) -> Option<String> {
    a?.first()?.address().map(str::to_string)
}

/// `<a@b>` or `a@b` or `rfc822; a@b` to `a@b`; `<>` stays `<>`.
pub(super) fn bare(v: &str) -> Option<String> {
    let v = v.trim();
    let (typed, v) = match v.split_once(';') {
        Some((t, rest)) if t.trim().eq_ignore_ascii_case("rfc822") => (true, rest.trim()),
        _ => (false, v),
    };
    if let (Some(s), Some(e)) = (v.find('<'), v.rfind('>')) {
        if s < e {
            let inner = v[s + 1..e].trim();
            return Some(if inner.is_empty() { "<>".into() } else { inner.to_string() });
        }
    }
    let word = v.split_whitespace().next()?;
    // A DSN field typed rfc822 holds an address even without a domain (a local sender).
    (typed || word.contains('@')).then(|| word.to_string())
}

/// A header's value in a block of header lines (unfolded, first occurrence).
pub(super) fn header_in(block: &str, name: &str) -> Option<String> {
    let [value] = headers_in(block, [name], usize::MAX);
    value
}

/// The values of the header fields `names` in a block of header lines (unfolded, first
/// occurrence of each), in one pass over at most `max_lines` lines.
pub(super) fn headers_in<const N: usize>(block: &str, names: [&str; N], max_lines: usize) -> [Option<String>; N] {
    let mut found: [Option<String>; N] = std::array::from_fn(|_| None);
    let mut lines = block.lines().take(max_lines).peekable();
    while let Some(line) = lines.next() {
        let l = line.trim_start_matches(['>', ' ', '\t']);
        let Some((n, v)) = l.split_once(':') else { continue };
        let n = n.trim();
        let Some(slot) = names.iter().position(|x| n.eq_ignore_ascii_case(x)).and_then(|k| found.get_mut(k)) else {
            continue;
        };
        if slot.is_some() {
            continue;
        }
        let mut value = v.to_string();
        while let Some(next) = lines.peek() {
            if next.starts_with([' ', '\t']) && !next.trim().is_empty() {
                value.push(' ');
                value.push_str(next.trim());
                lines.next();
            } else {
                break;
            }
        }
        *slot = Some(value);
        if found.iter().all(Option::is_some) {
            break;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_from_header_values() {
        assert_eq!(
            bare(" <prvs=0787ed3775=user@example.org>").as_deref(),
            Some("prvs=0787ed3775=user@example.org")
        );
        assert_eq!(bare("rfc822; bob@example.com").as_deref(), Some("bob@example.com"));
        assert_eq!(bare("<>").as_deref(), Some("<>"));
        assert_eq!(bare("Bob Smith <bob@x.org>").as_deref(), Some("bob@x.org"));
        assert_eq!(bare("nobody"), None);
    }

    #[test]
    fn typed_dsn_fields_keep_local_senders() {
        assert_eq!(bare("rfc822; mailadm+x.example").as_deref(), Some("mailadm+x.example"));
        assert_eq!(bare("rfc822;"), None);
        assert_eq!(bare("mailadm"), None);
    }
}
