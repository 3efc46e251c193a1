//! Envelope address syntax: just enough of RFC 5321/6531 to split an address into its
//! unquoted local part and its domain, and to write a local part back in valid SMTP form.
//!
//! Parsing is total: every input yields an [`Address`] or an [`AddressError`].

use std::borrow::Cow;

/// Longest address we accept at all (RFC 5321 allows 64 + 1 + 255; a little slack for
/// quoting). Anything longer is not a real envelope address.
pub const MAX_ADDRESS_LEN: usize = 512;
/// RFC 5321 §4.5.3.1.1: the local part, as written, may be 64 octets.
pub const MAX_LOCAL_LEN: usize = 64;
/// RFC 5321 §4.5.3.1.2.
pub const MAX_DOMAIN_LEN: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("empty address")]
    Empty,
    #[error("no @ in address")]
    NoAt,
    #[error("empty local part")]
    EmptyLocal,
    #[error("empty domain")]
    EmptyDomain,
    #[error("control character in address")]
    ControlChar,
    #[error("address longer than {MAX_ADDRESS_LEN} octets")]
    TooLong,
    #[error("domain longer than {MAX_DOMAIN_LEN} octets")]
    DomainTooLong,
    #[error("unterminated or misplaced quote in local part")]
    BadQuoting,
    #[error("character {0:?} not allowed in an unquoted local part")]
    BadLocalChar(char),
    #[error("invalid domain {0:?}")]
    BadDomain(String),
    #[error("unterminated comment or domain literal")]
    Unterminated,
    #[error("white space between the words of a local part")]
    SplitWord,
}

/// A parsed address. `local` is the unquoted form of the local part (what the hash covers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address<'a> {
    pub local: Cow<'a, str>,
    pub domain: &'a str,
    /// The local part was written as a quoted string.
    pub quoted: bool,
}

/// Bytes allowed in a dot-atom: RFC 5322 atext, `.`, and every byte of a non-ASCII UTF-8
/// character (RFC 6531). A table: this runs for every address the proxy sees.
const DOT_ATOM: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || c >= 0x80
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'/'
                    | b'='
                    | b'?'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'{'
                    | b'|'
                    | b'}'
                    | b'~'
                    | b'.'
            );
        b += 1;
    }
    t
};

/// Bytes allowed in a domain name (labels and the dots between them).
const DOMAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.' || c >= 0x80;
        b += 1;
    }
    t
};

/// The first character not allowed in an unquoted local part, if any.
fn first_bad_local_char(local: &str) -> Option<char> {
    let i = local.bytes().position(|b| !DOT_ATOM[b as usize])?;
    local[i..].chars().next()
}

/// True if `local` (unquoted form) must be written as a quoted string.
pub fn needs_quoting(local: &str) -> bool {
    !local.bytes().all(|b| DOT_ATOM[b as usize])
}

/// Append `local` to `out` in valid SMTP form: as is if it is a (possibly dotted) atom,
/// otherwise as one quoted string with `"` and `\` escaped.
pub fn write_local(out: &mut String, local: &str) {
    write_prefixed_local(out, "", local)
}

/// [`write_local`] of `prefix` + `local`, for a `prefix` of dot-atom characters only
/// (which therefore never decides the quoting).
fn write_prefixed_local(out: &mut String, prefix: &str, local: &str) {
    debug_assert!(!needs_quoting(prefix));
    if !needs_quoting(local) {
        out.push_str(prefix);
        out.push_str(local);
        return;
    }
    out.push('"');
    out.push_str(prefix);
    for c in local.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// Length in octets of `local` as [`write_local`] would write it.
pub fn written_local_len(local: &str) -> usize {
    if !needs_quoting(local) {
        return local.len();
    }
    2 + local.len() + local.bytes().filter(|&b| b == b'"' || b == b'\\').count()
}

/// Format `local@domain` with the local part written in valid SMTP form.
pub fn format(local: &str, domain: &str) -> String {
    format_prefixed("", local, domain)
}

/// Format `prefix` + `local` @ `domain` in one allocation; `prefix` holds dot-atom
/// characters only (a BATV tag).
pub fn format_prefixed(prefix: &str, local: &str, domain: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + local.len() + domain.len() + 3);
    write_prefixed_local(&mut s, prefix, local);
    s.push('@');
    s.push_str(domain);
    s
}

/// An SMTP path as the MTA behind us resolves it (see [`normalize_path`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Path<'a> {
    /// The null reverse-path, in any spelling an MTA takes as null.
    Null,
    /// A local part without a domain (`<Postmaster>`; Postfix appends `$myorigin`).
    Bare(Cow<'a, str>),
    /// `local@domain`, which [`parse`] accepts.
    Address(Cow<'a, str>),
}

/// The longest path text normalised at all (a command line is 512 octets).
const MAX_PATH_TEXT: usize = 2 * MAX_ADDRESS_LEN;

/// Normalise the text between an SMTP command's angle brackets the way MTAs read it
/// before they resolve it: RFC 5322 comments and white space around the words are
/// dropped (Postfix's address parser does), a source route is dropped (RFC 5321
/// §4.1.2), and trailing dots come off the domain (Postfix's trivial-rewrite). What is
/// left must be a valid address, a bare local part, or nothing (the null path: `< >`,
/// `<()>`, `<"">`). Anything else is an error, so a caller that judges addresses can
/// refuse what it cannot read rather than let the MTA read it some other way.
pub fn normalize_path(raw: &str) -> Result<Path<'_>, AddressError> {
    if raw.is_empty() {
        return Ok(Path::Null);
    }
    // The common case costs one pass: a plain address with nothing to remove.
    if plain(raw).is_some() {
        return Ok(Path::Address(Cow::Borrowed(raw)));
    }
    if raw.len() > MAX_PATH_TEXT {
        return Err(AddressError::TooLong);
    }
    let text = strip_cfws(raw)?;
    // A source route: `@a,@b:mailbox`, unquoted.
    let text = match text.strip_prefix('@').and_then(|r| r.find(':').map(|i| (r, i))) {
        Some((r, i)) if !r[..i].contains('"') => Cow::Owned(r[i + 1..].to_string()),
        _ => text,
    };
    if text.is_empty() || text == "\"\"" {
        return Ok(Path::Null);
    }
    let Some(at) = last_unquoted_at(&text) else {
        // A bare local part: a dot-atom or one quoted string.
        let ok = match text.strip_prefix('"') {
            Some(body) => unquote(body).is_ok_and(|(_, n)| n == body.len()),
            None => first_bad_local_char(&text).is_none(),
        };
        return if ok && !text.bytes().any(|b| b < 0x20 || b == 0x7f) {
            Ok(Path::Bare(text))
        } else {
            Err(AddressError::NoAt)
        };
    };
    let domain = &text[at + 1..];
    let text = if domain.ends_with('.') && !domain.starts_with('[') {
        let kept = at + 1 + domain.trim_end_matches('.').len();
        Cow::Owned(text[..kept].to_string())
    } else {
        text
    };
    parse(&text)?;
    Ok(Path::Address(text))
}

impl Path<'_> {
    /// The path as it is relayed (no brackets; empty for the null path).
    pub fn as_str(&self) -> &str {
        match self {
            Path::Null => "",
            Path::Bare(s) | Path::Address(s) => s,
        }
    }
}

/// An address in an MTA's internal form, as Postfix hands it to a policy service and Exim
/// has it in `$local_part@$domain`: the local part unquoted, so everything before the
/// last `@` is the local part, spaces and all. Written back in SMTP form (quoted where it
/// must be) for [`normalize_path`] and the verdict; a bare local part stays as it is.
pub fn from_internal(s: &str) -> Cow<'_, str> {
    match s.rfind('@') {
        Some(at) if needs_quoting(&s[..at]) && at > 0 => Cow::Owned(format(&s[..at], &s[at + 1..])),
        _ => Cow::Borrowed(s),
    }
}

/// The byte offset of the last `@` outside a quoted string.
fn last_unquoted_at(s: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    let mut at = None;
    for (i, b) in s.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b'@' if !quoted => at = Some(i),
            _ => {}
        }
    }
    at
}

/// Drop comments and the white space around words, outside quoted strings and domain
/// literals. White space (or a comment) between two words is refused: MTAs differ in
/// whether they join the words or take the first.
fn strip_cfws(raw: &str) -> Result<Cow<'_, str>, AddressError> {
    if !raw.bytes().any(|b| matches!(b, b' ' | b'\t' | b'(')) {
        return Ok(Cow::Borrowed(raw));
    }
    let mut out = String::with_capacity(raw.len());
    let mut gap = false;
    let mut chars = raw.chars().peekable();
    // A word ends with an atom character, a closing quote or a closing bracket.
    let word_end = |out: &str| out.chars().last().is_some_and(|c| c != '.' && c != '@' && c != ':' && c != ',');
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => gap = true,
            '(' => {
                let mut depth = 1;
                while depth > 0 {
                    match chars.next().ok_or(AddressError::Unterminated)? {
                        '\\' => {
                            chars.next().ok_or(AddressError::Unterminated)?;
                        }
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                }
                gap = true;
            }
            _ => {
                let starts_word = c != '.' && c != '@' && c != ':' && c != ',';
                if gap && starts_word && word_end(&out) {
                    return Err(AddressError::SplitWord);
                }
                gap = false;
                out.push(c);
                let close = match c {
                    '"' => Some('"'),
                    '[' => Some(']'),
                    _ => None,
                };
                if let Some(close) = close {
                    loop {
                        let d = chars.next().ok_or(AddressError::Unterminated)?;
                        out.push(d);
                        if d == '\\' {
                            out.push(chars.next().ok_or(AddressError::Unterminated)?);
                        } else if d == close {
                            break;
                        }
                    }
                }
            }
        }
    }
    Ok(Cow::Owned(out))
}

/// Parse `local@domain`. The local part is a dot-atom (leniently: dots anywhere) or a
/// quoted string; non-ASCII UTF-8 is allowed (SMTPUTF8).
pub fn parse(s: &str) -> Result<Address<'_>, AddressError> {
    if s.is_empty() {
        return Err(AddressError::Empty);
    }
    if s.len() > MAX_ADDRESS_LEN {
        return Err(AddressError::TooLong);
    }
    if let Some(a) = plain(s) {
        return Ok(a);
    }
    parse_full(s)
}

/// Everything `parse` accepts, and every error, byte by byte.
fn parse_full(s: &str) -> Result<Address<'_>, AddressError> {
    // C0 controls and DEL in bytes; C1 controls only exist in non-ASCII text. One pass
    // (it vectorises) for both questions: this is on every verify.
    let (control, high) = s
        .bytes()
        .fold((false, false), |(c, h), b| (c | (b < 0x20) | (b == 0x7f), h | (b >= 0x80)));
    if control || (high && s.chars().any(char::is_control)) {
        return Err(AddressError::ControlChar);
    }
    let (local, quoted, rest) = if let Some(body) = s.strip_prefix('"') {
        let (unquoted, consumed) = unquote(body)?;
        (unquoted, true, &body[consumed..])
    } else {
        let at = s.rfind('@').ok_or(AddressError::NoAt)?;
        let local = &s[..at];
        if let Some(c) = first_bad_local_char(local) {
            return Err(AddressError::BadLocalChar(c));
        }
        (Cow::Borrowed(local), false, &s[at..])
    };
    let domain = rest
        .strip_prefix('@')
        .ok_or(if quoted { AddressError::BadQuoting } else { AddressError::NoAt })?;
    if local.is_empty() {
        return Err(AddressError::EmptyLocal);
    }
    check_domain(domain)?;
    Ok(Address { local, domain, quoted })
}

/// The common case in one pass each over the local part and the domain: an ASCII
/// dot-atom at an ASCII domain name. `None` sends anything else (quoting, UTF-8, address
/// literals, every error) to the full parser, which also words the errors.
fn plain(s: &str) -> Option<Address<'_>> {
    plain_from(s, 0)
}

/// [`plain`], for an `s` whose first `start` octets are known to be dot-atom characters.
pub(crate) fn plain_from(s: &str, start: usize) -> Option<Address<'_>> {
    const fn ascii_only(t: [bool; 256]) -> [bool; 256] {
        let mut t = t;
        let mut b = 0x80;
        while b < 256 {
            t[b] = false;
            b += 1;
        }
        t
    }
    const LOCAL: [bool; 256] = ascii_only(DOT_ATOM);
    const NAME: [bool; 256] = ascii_only(DOMAIN);
    let b = s.as_bytes();
    debug_assert!(b[..start].iter().all(|&c| LOCAL[c as usize]));
    let at = start + b.get(start..)?.iter().position(|&c| !LOCAL[c as usize])?;
    if b[at] != b'@' || at == 0 {
        return None;
    }
    let d = &b[at + 1..];
    if d.len() > MAX_DOMAIN_LEN {
        return None;
    }
    // Labels never empty: no dot first, last or after a dot (and so no empty domain).
    let mut after_dot = true;
    for &c in d {
        let dot = c == b'.';
        if !NAME[c as usize] || (dot && after_dot) {
            return None;
        }
        after_dot = dot;
    }
    (!after_dot).then(|| Address {
        local: Cow::Borrowed(&s[..at]),
        domain: &s[at + 1..],
        quoted: false,
    })
}

/// Unquote the body of a quoted string (after the opening quote). Returns the unquoted
/// text and the number of bytes consumed, including the closing quote.
fn unquote(body: &str) -> Result<(Cow<'_, str>, usize), AddressError> {
    let mut out: Option<String> = None;
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => {
                let text = match out {
                    Some(s) => Cow::Owned(s),
                    None => Cow::Borrowed(&body[..i]),
                };
                return Ok((text, i + 1));
            }
            '\\' => {
                let (_, escaped) = chars.next().ok_or(AddressError::BadQuoting)?;
                out.get_or_insert_with(|| body[..i].to_string()).push(escaped);
            }
            _ => {
                if let Some(s) = out.as_mut() {
                    s.push(c)
                }
            }
        }
    }
    Err(AddressError::BadQuoting)
}

/// A domain as an address may hold it: a domain name (labels of letters, digits, `-`, `_`
/// or non-ASCII, none empty) or an address literal, at most [`MAX_DOMAIN_LEN`] octets.
pub(crate) fn check_domain(domain: &str) -> Result<(), AddressError> {
    if domain.is_empty() {
        return Err(AddressError::EmptyDomain);
    }
    if domain.len() > MAX_DOMAIN_LEN {
        return Err(AddressError::DomainTooLong);
    }
    if domain.starts_with('[') {
        // Address literal: accepted as written, never canonicalised.
        if domain.ends_with(']') && domain.len() > 2 && !domain[1..domain.len() - 1].contains(['[', ']', '\\', ' ']) {
            return Ok(());
        }
        return Err(AddressError::BadDomain(domain.to_string()));
    }
    // Labels of letters, digits, '-', '_' or non-ASCII, none empty.
    let d = domain.as_bytes();
    let ok =
        d.iter().all(|&b| DOMAIN[b as usize]) && d.first() != Some(&b'.') && d.last() != Some(&b'.') && !d.windows(2).any(|w| w == b"..");
    if ok {
        Ok(())
    } else {
        Err(AddressError::BadDomain(domain.to_string()))
    }
}

/// The canonical form of a domain for the native scheme: ASCII lower-case, and an IDNA
/// A-label when it holds non-ASCII characters. Borrowed when nothing changes.
pub fn canonical_domain(domain: &str) -> Result<Cow<'_, str>, AddressError> {
    let (upper, high) = domain
        .bytes()
        .fold((false, false), |(u, h), b| (u | b.is_ascii_uppercase(), h | (b >= 0x80)));
    if !high {
        if upper {
            Ok(Cow::Owned(domain.to_ascii_lowercase()))
        } else {
            Ok(Cow::Borrowed(domain))
        }
    } else {
        idna::domain_to_ascii(domain)
            .map(Cow::Owned)
            .map_err(|_| AddressError::BadDomain(domain.to_string()))
    }
}

/// Case-insensitive domain membership: `example.com` matches itself, `.example.com`
/// matches every subdomain (Postfix's convention). Entries must be canonical.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainSet {
    exact: Vec<String>,
    suffixes: Vec<String>,
}

impl DomainSet {
    /// Build from configured names (already validated). Names are canonicalised.
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(names: I) -> Result<Self, AddressError> {
        let mut set = DomainSet::default();
        for name in names {
            let name = name.as_ref();
            if let Some(suffix) = name.strip_prefix('.') {
                check_domain(suffix)?;
                set.suffixes.push(format!(".{}", canonical_domain(suffix)?));
            } else {
                check_domain(name)?;
                set.exact.push(canonical_domain(name)?.into_owned());
            }
        }
        Ok(set)
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.suffixes.is_empty()
    }

    pub fn contains(&self, domain: &str) -> bool {
        let Ok(d) = canonical_domain(domain) else {
            return false;
        };
        self.exact.iter().any(|e| *e == d) || self.suffixes.iter().any(|s| d.ends_with(s.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_path_agrees_with_the_full_parser() {
        // Random strings over an alphabet of the characters that matter, and fixed cases.
        let alphabet = b"ab.@-_+=\"[]\\ \x7f\x01Z9";
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut cases: Vec<String> = ["a@b", "a.b@c.d", ".a@b", "a@.b", "a@b.", "a@b..c", "@b", "a@", "a@@b", "a@b@c"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for i in 0..20_000 {
            let mut t = String::new();
            for _ in 0..(next() % 9 + 1) {
                t.push(alphabet[(next() % alphabet.len() as u64) as usize] as char);
            }
            if i % 2 == 0 {
                // Mostly well-formed: an '@' somewhere in the middle.
                let at = (next() as usize) % (t.len() + 1);
                t.insert(at, '@');
            }
            cases.push(t);
        }
        let mut fast = 0;
        for c in &cases {
            if let Some(a) = plain(c) {
                fast += 1;
                assert_eq!(parse_full(c).as_ref(), Ok(&a), "{c:?}");
            }
        }
        assert!(fast > 150, "the fast path was taken {fast} times");
    }

    #[test]
    fn parses_dot_atom() {
        let a = parse("alice@example.com").unwrap();
        assert_eq!(a.local, "alice");
        assert_eq!(a.domain, "example.com");
        assert!(!a.quoted);
    }

    #[test]
    fn parses_quoted_with_escapes() {
        let a = parse(r#""john \"j\" doe@x"@example.com"#).unwrap();
        assert_eq!(a.local, r#"john "j" doe@x"#);
        assert!(a.quoted);
        assert_eq!(format(&a.local, a.domain), r#""john \"j\" doe@x"@example.com"#);
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(parse(""), Err(AddressError::Empty));
        assert_eq!(parse("alice"), Err(AddressError::NoAt));
        assert_eq!(parse("@example.com"), Err(AddressError::EmptyLocal));
        assert_eq!(parse("alice@"), Err(AddressError::EmptyDomain));
        assert_eq!(parse("al\nice@x"), Err(AddressError::ControlChar));
        assert_eq!(parse("john doe@x"), Err(AddressError::BadLocalChar(' ')));
        assert_eq!(parse("\"john@x"), Err(AddressError::BadQuoting));
        assert_eq!(parse("\"john\"x@y"), Err(AddressError::BadQuoting));
        assert!(matches!(parse("a@b..c"), Err(AddressError::BadDomain(_))));
        assert_eq!(parse(&format!("a@{}", "b".repeat(600))), Err(AddressError::TooLong));
    }

    #[test]
    fn paths_normalise_as_mtas_read_them() {
        let addr = |s: &str| Ok(Path::Address(Cow::Owned(s.to_string())));
        for (raw, want) in [
            ("bob@example.com", addr("bob@example.com")),
            ("bob@example.com.", addr("bob@example.com")),
            ("bob@example.com..", addr("bob@example.com")),
            ("bob @example.com", addr("bob@example.com")),
            (" bob@example.com", addr("bob@example.com")),
            ("bob@example.com (Bob)", addr("bob@example.com")),
            ("(x)bob@ example . com", addr("bob@example.com")),
            ("bob(a (nested) comment)@example.com", addr("bob@example.com")),
            ("\"bob smith\"@example.com", addr("\"bob smith\"@example.com")),
            ("@relay.example:bob@example.com", addr("bob@example.com")),
            ("@a,@b:bob@example.com.", addr("bob@example.com")),
            ("bob@[192.0.2.1]", addr("bob@[192.0.2.1]")),
            ("", Ok(Path::Null)),
            (" ", Ok(Path::Null)),
            ("()", Ok(Path::Null)),
            ("\"\"", Ok(Path::Null)),
            (" (x) \"\" ", Ok(Path::Null)),
            ("Postmaster", Ok(Path::Bare(Cow::Borrowed("Postmaster")))),
            ("postmaster (x)", Ok(Path::Bare(Cow::Borrowed("postmaster")))),
            ("bob", Ok(Path::Bare(Cow::Borrowed("bob")))),
            // The whole address quoted is a local part without a domain.
            ("\"bob@example.com\"", Ok(Path::Bare(Cow::Borrowed("\"bob@example.com\"")))),
        ] {
            assert_eq!(normalize_path(raw), want, "{raw:?}");
        }
        for raw in [
            "bob smith@example.com",
            "bob@example.com,",
            ",bob@example.com",
            "bob@example.com(",
            "bob@exam ple.com",
            "bob@.",
            "bob@",
            "bob@@example.com",
            "bob@example.com@example.com",
            "\"a\" \"b\"@example.com",
            "bob@[192.0.2.1",
            "b\u{1}ob",
        ] {
            assert!(normalize_path(raw).is_err(), "{raw:?} gave {:?}", normalize_path(raw));
        }
    }

    #[test]
    fn internal_forms_are_quoted_back() {
        assert_eq!(from_internal("bob@example.com"), "bob@example.com");
        assert_eq!(from_internal("john doe@example.com"), "\"john doe\"@example.com");
        assert_eq!(from_internal("a@b@example.com"), "\"a@b\"@example.com");
        assert_eq!(from_internal("x \"y\"@example.com"), "\"x \\\"y\\\"\"@example.com");
        assert_eq!(from_internal("bob(x)@example.com."), "\"bob(x)\"@example.com.");
        assert_eq!(from_internal("postmaster"), "postmaster");
        assert_eq!(from_internal("@example.com"), "@example.com");
        // Quoted back, the local part is read as one word, not as a comment or two words.
        assert_eq!(
            normalize_path(&from_internal("bob(x)@example.com.")),
            Ok(Path::Address(Cow::Owned("\"bob(x)\"@example.com".into())))
        );
    }

    #[test]
    fn canonical_domains() {
        assert_eq!(canonical_domain("Example.COM").unwrap(), "example.com");
        assert_eq!(canonical_domain("Bücher.example").unwrap(), "xn--bcher-kva.example");
    }

    #[test]
    fn domain_sets() {
        let s = DomainSet::new(["Example.com", ".example.org"]).unwrap();
        assert!(s.contains("EXAMPLE.com"));
        assert!(!s.contains("sub.example.com"));
        assert!(s.contains("mail.example.org"));
        assert!(!s.contains("example.org"));
    }
}
