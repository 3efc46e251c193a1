//! The gateway's `valid_recipients` table: the addresses a gateway accepts mail for, so
//! that mail for an unknown user is refused at RCPT (550 5.1.1) rather than accepted and
//! bounced later, to a sender who is often forged (backscatter).
//!
//! # File format
//!
//! One entry per line. The entry is the first word of the line, up to ASCII white space,
//! and the rest of the line is ignored, so a Postfix `relay_recipient_maps` source file
//! (`alice@example.com  OK`) is read as it is. White space inside a quoted local part
//! does not end the word (`"john doe"@example.com` is one entry). Blank lines and lines
//! whose first non-blank character is `#` are comments; a `#` anywhere else belongs to the
//! entry, since it is valid in a local part. A UTF-8 byte order mark at the start is
//! skipped. An entry is one of
//!
//! - `local@domain`: that address. The local part may be quoted; the table holds its
//!   unquoted form, which is what lookups are given.
//! - `@domain`: a catch-all, every local part at that domain.
//!
//! Anything else is an error naming the line, and one bad line loads nothing: a table
//! that silently lost an entry would refuse that user's mail.
//!
//! Domains are compared case-insensitively (IDNA names by their A-label). Local parts
//! are compared exactly or in Unicode lower case, as [`LocalCase`] says.
//!
//! # Lookups
//!
//! In Postfix's order for `relay_recipient_maps`: the whole address; then, when the local
//! part has an extension (`alice+list`: a delimiter that is not its first character), the
//! address without it (`alice`, cut at the first delimiter); then the catch-all `@domain`.
//!
//! # Layout
//!
//! A table may hold millions of entries and is looked up on every RCPT, so the keys are
//! not one allocation each: they sit end to end in one arena, and an open-addressing hash
//! table holds their offsets. A lookup hashes and compares the address in place, without
//! allocating when it is ASCII.

use std::borrow::Cow;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::core::address::{self, DomainSet};

/// Between a key's local part and its domain: never a byte of UTF-8 text, so a local part
/// (a quoted one may hold `@`) cannot run into its domain.
const SEP: u8 = 0xff;

/// Lookups fold an ASCII local part up to this long on the stack (RFC 5321 allows 64).
const FOLD_BUF: usize = 256;

/// How local parts compare (`proxy.valid_recipients_case`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LocalCase {
    /// Byte for byte: RFC 5321 §2.4 leaves a local part's case to the host it names.
    #[default]
    Exact,
    /// In Unicode lower case, for hosts that deliver `Alice` and `alice` alike.
    Insensitive,
}

#[derive(Debug, thiserror::Error)]
pub enum RecipientsError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    /// A line that is not an entry, comment or blank; `path` is set when read from a file.
    #[error("{}line {line}: {detail}", path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
    Line {
        path: Option<PathBuf>,
        line: usize,
        detail: String,
    },
}

/// One place of the hash table: a key's offset and length in the arena (length 0: empty,
/// as every key holds at least the separator and a domain), and 16 more bits of its hash
/// so that most other keys are passed over without reading the arena.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    off: u32,
    len: u16,
    tag: u16,
}

/// The valid recipients (see the module documentation).
#[derive(Clone)]
pub struct Recipients {
    /// Every key, local part (folded as `case` says), [`SEP`], canonical domain, end to
    /// end. A catch-all's local part is empty.
    keys: Vec<u8>,
    /// A power of two long (or empty), never more than half full, so probes stay short.
    slots: Vec<Slot>,
    count: usize,
    case: LocalCase,
    /// std's SipHash, keyed at random as its maps are. (A faster hash was tried: it saved
    /// a few percent of a load and under 10 ns a lookup, not worth a hash of our own.)
    hasher: RandomState,
}

impl Default for Recipients {
    fn default() -> Self {
        Recipients::empty(LocalCase::default())
    }
}

impl std::fmt::Debug for Recipients {
    // The entries themselves would be a million lines in a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recipients")
            .field("entries", &self.count)
            .field("case", &self.case)
            .finish_non_exhaustive()
    }
}

impl Recipients {
    /// Read a table from its text (see the module documentation for the format).
    pub fn parse(text: &str, case: LocalCase) -> Result<Recipients, RecipientsError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut table = Recipients::empty(case);
        // Keys are never longer than their lines, give or take lower-casing and IDNA,
        // which rarely lengthen them.
        table.keys.reserve(text.len());
        let mut pending = Vec::new();
        for (i, line) in text.split('\n').enumerate() {
            let Some(word) = entry_word(line) else {
                continue;
            };
            let entry = table.push_key(word).map_err(|detail| RecipientsError::Line {
                path: None,
                line: i + 1,
                detail: format!("{}: {detail}", shown(word)),
            })?;
            pending.push(entry);
        }
        table.place(pending);
        table.keys.shrink_to_fit();
        Ok(table)
    }

    /// Read a table from a file, all of it at once.
    pub fn load(path: &Path, case: LocalCase) -> Result<Recipients, RecipientsError> {
        let bytes = std::fs::read(path).map_err(|source| RecipientsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let in_file = |e| match e {
            RecipientsError::Line { line, detail, .. } => RecipientsError::Line {
                path: Some(path.to_path_buf()),
                line,
                detail,
            },
            e => e,
        };
        let text = std::str::from_utf8(&bytes).map_err(|e| {
            in_file(RecipientsError::Line {
                path: None,
                line: bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1,
                detail: "invalid UTF-8".to_string(),
            })
        })?;
        Recipients::parse(text, case).map_err(in_file)
    }

    /// Entries: addresses and catch-alls, each counted once however often it is listed.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Entries whose domain `inside` does not contain (so the caller can warn they are
    /// unused).
    pub fn outside(&self, inside: &DomainSet) -> usize {
        // A table holds few domains and many users: each domain is judged once.
        let mut judged: std::collections::HashMap<&[u8], bool> = std::collections::HashMap::new();
        self.slots
            .iter()
            .filter(|s| s.len != 0)
            .filter(|s| {
                let key = self.keys.get(s.off as usize..s.off as usize + s.len as usize).unwrap_or_default();
                let domain = key.iter().position(|&b| b == SEP).map_or(&key[..0], |i| &key[i + 1..]);
                !*judged
                    .entry(domain)
                    .or_insert_with(|| std::str::from_utf8(domain).is_ok_and(|d| inside.contains(d)))
            })
            .count()
    }

    /// Is local@domain a valid recipient? `local` is the unquoted local part, `domain` as
    /// written. Lookup order (Postfix's): the whole address; then, if `local` contains one
    /// of the `delimiters` characters and the first one is not at index 0, the part before
    /// it (`alice+list` -> `alice`); then the catch-all `@domain`.
    pub fn knows(&self, local: &str, domain: &str, delimiters: &str) -> bool {
        if self.count == 0 {
            return false;
        }
        // Filled only when there is upper case to fold (zeroing costs more than the rest).
        let mut domain_buf = None::<[u8; address::MAX_DOMAIN_LEN]>;
        let domain = if domain.is_ascii() {
            // What canonical_domain does to an ASCII name, without allocating.
            ascii_lower(domain, &mut domain_buf)
        } else {
            match address::canonical_domain(domain) {
                Ok(d) => Cow::Owned(d.into_owned().into_bytes()),
                // Not a name any entry can have.
                Err(_) => return false,
            }
        };
        let mut local_buf = None::<[u8; FOLD_BUF]>;
        let local = match self.case {
            LocalCase::Exact => Cow::Borrowed(local.as_bytes()),
            LocalCase::Insensitive if local.is_ascii() => ascii_lower(local, &mut local_buf),
            LocalCase::Insensitive => Cow::Owned(local.to_lowercase().into_bytes()),
        };
        self.contains(&local, &domain)
            || extension_at(&local, delimiters).is_some_and(|at| self.contains(&local[..at], &domain))
            || self.contains(b"", &domain)
    }

    fn empty(case: LocalCase) -> Recipients {
        Recipients {
            keys: Vec::new(),
            slots: Vec::new(),
            count: 0,
            case,
            hasher: RandomState::new(),
        }
    }

    /// Append one entry's key (from the first word of its line) to the arena.
    fn push_key(&mut self, word: &str) -> Result<Pending, String> {
        let (local, domain) = read_entry(word)?;
        let off = self.keys.len();
        match self.case {
            LocalCase::Exact => self.keys.extend_from_slice(local.as_bytes()),
            LocalCase::Insensitive if local.is_ascii() => self.keys.extend(local.bytes().map(|b| b.to_ascii_lowercase())),
            LocalCase::Insensitive => self.keys.extend_from_slice(local.to_lowercase().as_bytes()),
        }
        let local_len = self.keys.len() - off;
        self.keys.push(SEP);
        self.keys.extend_from_slice(domain.as_bytes());
        let (Ok(off32), Ok(len), Ok(local_len16)) = (u32::try_from(off), u16::try_from(self.keys.len() - off), u16::try_from(local_len))
        else {
            return Err("the table is too large (4 GiB of entries at most)".to_string());
        };
        let key = &self.keys[off..];
        Ok(Pending {
            hash: self.hash(&key[..local_len], &key[local_len + 1..]),
            off: off32,
            len,
            local_len: local_len16,
        })
    }

    /// Build the hash table over the arena's keys, once all are read (so that it is sized
    /// once and no key is hashed twice). Duplicates are counted once; their copies stay
    /// in the arena, unused.
    fn place(&mut self, mut pending: Vec<Pending>) {
        if pending.is_empty() {
            return;
        }
        // At most half full. (An overflow would need more entries than memory holds.)
        let n = pending
            .len()
            .saturating_mul(2)
            .checked_next_power_of_two()
            .unwrap_or(usize::MAX / 2 + 1);
        self.slots = vec![Slot::default(); n.max(8)];
        let mask = self.slots.len() - 1;
        // In the order of their places: then each entry's probe touches the slots the one
        // before it did, where in random order a large table misses the cache (and the
        // TLB) at every entry: a million entries load in a third of the time.
        pending.sort_unstable_by_key(|p| p.hash as usize & mask);
        for p in pending {
            let key = self.keys.get(p.off as usize..p.off as usize + p.len as usize).unwrap_or_default();
            let (local, domain) = key.split_at(p.local_len as usize);
            let domain = domain.get(1..).unwrap_or_default();
            // (Never full: there are twice as many slots as entries.)
            if let Probe::Vacant(i) = self.probe(p.hash, local, domain) {
                self.slots[i] = Slot {
                    off: p.off,
                    len: p.len,
                    tag: tag(p.hash),
                };
                self.count += 1;
            }
        }
    }

    /// Is the key local SEP domain (both already folded) in the table?
    fn contains(&self, local: &[u8], domain: &[u8]) -> bool {
        matches!(self.probe(self.hash(local, domain), local, domain), Probe::Found)
    }

    /// The key's hash, fed in pieces so that no lookup has to assemble the key.
    fn hash(&self, local: &[u8], domain: &[u8]) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write(local);
        h.write_u8(SEP);
        h.write(domain);
        h.finish()
    }

    /// Linear probing from the hash's place to the key or to the first empty place.
    fn probe(&self, hash: u64, local: &[u8], domain: &[u8]) -> Probe {
        let len = local.len() + 1 + domain.len();
        let mask = self.slots.len().wrapping_sub(1);
        let mut i = hash as usize & mask;
        for _ in 0..self.slots.len() {
            let s = self.slots[i];
            if s.len == 0 {
                return Probe::Vacant(i);
            }
            if s.len as usize == len && s.tag == tag(hash) {
                let key = self.keys.get(s.off as usize..s.off as usize + len).unwrap_or_default();
                if key.starts_with(local) && key.get(local.len()) == Some(&SEP) && key.ends_with(domain) {
                    return Probe::Found;
                }
            }
            i = (i + 1) & mask;
        }
        Probe::Full
    }
}

/// An entry read, its key in the arena, not yet in the hash table.
#[derive(Debug, Clone, Copy)]
struct Pending {
    hash: u64,
    off: u32,
    len: u16,
    local_len: u16,
}

enum Probe {
    Found,
    Vacant(usize),
    Full,
}

/// The bits of a hash a slot keeps (the place comes from the low ones).
fn tag(hash: u64) -> u16 {
    (hash >> 48) as u16
}

/// A line's entry: its first word, unless the line is blank or a comment.
fn entry_word(line: &str) -> Option<&str> {
    let start = line.bytes().position(|b| !b.is_ascii_whitespace())?;
    let word = &line[start..];
    if word.starts_with('#') {
        return None;
    }
    match word.bytes().position(|b| b.is_ascii_whitespace() || b == b'"') {
        None => Some(word),
        Some(end) if word.as_bytes()[end] != b'"' => Some(&word[..end]),
        Some(_) => Some(quoted_word(word)),
    }
}

/// The first word of `text`, where white space inside a quoted string does not end it.
fn quoted_word(text: &str) -> &str {
    let (mut quoted, mut escaped) = (false, false);
    let end = text
        .bytes()
        .position(|b| {
            match b {
                _ if escaped => escaped = false,
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                _ => return !quoted && b.is_ascii_whitespace(),
            }
            false
        })
        .unwrap_or(text.len());
    &text[..end]
}

/// An entry's unquoted local part (empty for a catch-all) and canonical domain, or why it
/// is not an entry.
fn read_entry(word: &str) -> Result<(Cow<'_, str>, Cow<'_, str>), String> {
    if let Some(domain) = word.strip_prefix('@') {
        // As DomainSet::new checks a configured domain.
        address::check_domain(domain).map_err(|e| e.to_string())?;
        let domain = address::canonical_domain(domain).map_err(|e| e.to_string())?;
        return Ok((Cow::Borrowed(""), domain));
    }
    if !word.contains('@') {
        // Before parse, whose length check would word this as a long address.
        return Err("expected an address or @domain".to_string());
    }
    let a = address::parse(word).map_err(|e| e.to_string())?;
    let domain = address::canonical_domain(a.domain).map_err(|e| e.to_string())?;
    Ok((a.local, domain))
}

/// An ASCII `s` in lower case: itself if it has no upper case, else lowered into `buf`
/// where it fits.
fn ascii_lower<'a, const N: usize>(s: &'a str, buf: &'a mut Option<[u8; N]>) -> Cow<'a, [u8]> {
    if !s.bytes().any(|b| b.is_ascii_uppercase()) {
        return Cow::Borrowed(s.as_bytes());
    }
    if s.len() > N {
        return Cow::Owned(s.to_ascii_lowercase().into_bytes());
    }
    let out = &mut buf.insert([0; N])[..s.len()];
    for (o, b) in out.iter_mut().zip(s.bytes()) {
        *o = b.to_ascii_lowercase();
    }
    Cow::Borrowed(out)
}

/// Where `local`'s extension starts: at the first of the `delimiters`, unless that is the
/// first character (Postfix does not split `+alice` nor `+alice+x`, whose user part would
/// be empty).
fn extension_at(local: &[u8], delimiters: &str) -> Option<usize> {
    let at = if delimiters.is_ascii() {
        local.iter().position(|b| delimiters.as_bytes().contains(b))?
    } else {
        // UTF-8 is self-synchronising: a character's encoding only matches where that
        // character starts.
        let mut enc = [0u8; 4];
        (0..local.len()).find(|&i| {
            delimiters
                .chars()
                .any(|c| local[i..].starts_with(c.encode_utf8(&mut enc).as_bytes()))
        })?
    };
    (at > 0).then_some(at)
}

/// An entry as an error message shows it: quoted, and cut short if it is long.
fn shown(word: &str) -> String {
    const MAX: usize = 80;
    if word.len() <= MAX {
        return format!("{word:?}");
    }
    let end = (0..=MAX).rev().find(|&i| word.is_char_boundary(i)).unwrap_or(0);
    format!("{:?}...", &word[..end])
}

/// (modified time, length, inode) of a file, to notice a change (None if unreadable). The
/// inode catches a file replaced by rename within the clock's resolution.
pub fn stamp(path: &Path) -> Option<(SystemTime, u64, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Recipients {
        Recipients::parse(text, LocalCase::Exact).unwrap()
    }

    fn line_error(text: &str) -> (usize, String) {
        match Recipients::parse(text, LocalCase::Exact) {
            Err(e @ RecipientsError::Line { path: None, line, .. }) => (line, e.to_string()),
            other => panic!("{text:?} gave {other:?}"),
        }
    }

    #[test]
    fn comments_and_blank_lines() {
        let t = table("# a comment\n\n   \n\t# indented comment\r\nalice@example.com\r\n  \t \nbob@example.com # not a comment, ignored\n");
        assert_eq!(t.len(), 2);
        assert!(t.knows("alice", "example.com", ""));
        assert!(t.knows("bob", "example.com", ""));
        // `#` inside an entry is part of it.
        let t = table("a#b@example.com\n#c@example.com\n");
        assert_eq!(t.len(), 1);
        assert!(t.knows("a#b", "example.com", ""));
        assert!(!t.knows("#c", "example.com", ""));
        assert!(table("# only comments\n\n").is_empty());
        assert!(table("").is_empty());
    }

    #[test]
    fn first_word_only() {
        let t = table("alice@example.com  OK\nbob@example.com\tREJECT no such user\n   carol@example.com\nOK@example.com OK\n");
        assert_eq!(t.len(), 4);
        for user in ["alice", "bob", "carol", "OK"] {
            assert!(t.knows(user, "example.com", ""), "{user}");
        }
        // The rest of the line is not read at all, even when it is not an address.
        assert!(!t.knows("REJECT", "example.com", ""));
        // A UTF-8 byte order mark does not become part of the first entry.
        assert!(table("\u{feff}alice@example.com\n").knows("alice", "example.com", ""));
    }

    #[test]
    fn catch_alls() {
        let t = table("@example.org\nalice@example.com\n");
        assert_eq!(t.len(), 2);
        assert!(t.knows("anyone", "example.org", "+"));
        assert!(t.knows("x+y", "EXAMPLE.ORG", "+"));
        assert!(!t.knows("anyone", "sub.example.org", ""));
        assert!(!t.knows("bob", "example.com", ""));
        for bad in ["@", "@foo..bar", "@.example.org", "@a@b", "@exa\"mple.org"] {
            let (line, msg) = line_error(&format!("alice@example.com\n{bad}\n"));
            assert_eq!(line, 2, "{bad}: {msg}");
        }
        assert_eq!(line_error("@foo..bar").1, r#"line 1: "@foo..bar": invalid domain "foo..bar""#);
    }

    #[test]
    fn quoted_local_parts() {
        let t = table("\"john doe\"@example.com OK\n\"a@b\"@example.com\n\"q\\\"x\"@example.com\n");
        assert_eq!(t.len(), 3);
        assert!(t.knows("john doe", "example.com", ""));
        assert!(t.knows("a@b", "example.com", ""));
        assert!(t.knows("q\"x", "example.com", ""));
        // The local part does not run into the domain.
        assert!(!t.knows("a", "b@example.com", ""));
        assert!(!t.knows("john", "example.com", ""));
        assert!(!t.knows("\"john doe\"", "example.com", ""));
        assert_eq!(line_error("\"john@example.com\n").0, 1);
    }

    #[test]
    fn exact_local_parts() {
        let t = table("Alice@EXAMPLE.COM\nÉlodie@example.com\nbob@Bücher.example\n");
        assert!(t.knows("Alice", "example.com", ""));
        assert!(t.knows("Alice", "Example.Com", ""));
        assert!(t.knows("Alice", "EXAMPLE.COM", ""));
        assert!(!t.knows("alice", "example.com", ""));
        assert!(!t.knows("ALICE", "EXAMPLE.COM", ""));
        assert!(t.knows("Élodie", "example.com", ""));
        assert!(!t.knows("élodie", "example.com", ""));
        // IDNA names match by their A-label, however they are written.
        assert!(t.knows("bob", "xn--bcher-kva.example", ""));
        assert!(t.knows("bob", "BÜCHER.example", ""));
        assert!(!t.knows("bob", "bucher.example", ""));
    }

    #[test]
    fn insensitive_local_parts() {
        let t = Recipients::parse("Alice@EXAMPLE.COM\nÉLODIE@example.com\nbob@example.com\n", LocalCase::Insensitive).unwrap();
        for (local, domain) in [
            ("alice", "example.com"),
            ("ALICE", "EXAMPLE.COM"),
            ("aLiCe", "Example.com"),
            ("élodie", "example.com"),
            ("Élodie", "EXAMPLE.COM"),
            ("BOB", "example.com"),
        ] {
            assert!(t.knows(local, domain, ""), "{local}@{domain}");
        }
        assert!(!t.knows("carol", "example.com", ""));
        assert!(!t.knows("alice", "example.org", ""));
        // A local part too long for the stack buffer is still folded.
        let t = Recipients::parse(&format!("{}@example.com", "x".repeat(300)), LocalCase::Insensitive).unwrap();
        assert!(t.knows(&"X".repeat(300), "example.com", ""));
        assert!(!t.knows(&"X".repeat(299), "example.com", ""));
    }

    #[test]
    fn delimiters() {
        let t = table("alice@example.com\nbob+list@example.com\n+carol@example.com\n");
        assert!(t.knows("alice+list", "example.com", "+"));
        assert!(t.knows("alice+", "example.com", "+"));
        assert!(!t.knows("alice+list", "example.com", ""));
        assert!(!t.knows("alice-list", "example.com", "+"));
        // Several delimiters: whichever comes first.
        assert!(t.knows("alice-list", "example.com", "+-"));
        assert!(t.knows("alice+list", "example.com", "+-"));
        assert!(t.knows("alice-a+b", "example.com", "+-"));
        // Two delimiters: cut at the first, not the last.
        assert!(t.knows("alice+a+b", "example.com", "+"));
        assert!(!t.knows("bob+list+x", "example.com", "+"));
        // The whole address is looked up first.
        assert!(t.knows("bob+list", "example.com", "+"));
        assert!(!t.knows("bob", "example.com", "+"));
        // A delimiter at index 0 is not split, nor is the rest of that local part.
        assert!(t.knows("+carol", "example.com", "+"));
        assert!(!t.knows("+alice", "example.com", "+"));
        assert!(!t.knows("+carol+x", "example.com", "+"));
        // A non-ASCII delimiter.
        assert!(t.knows("alice§x", "example.com", "§"));
        assert!(!t.knows("alice§x", "example.com", "+"));
        // Case-insensitive tables split the folded local part.
        let t = Recipients::parse("alice@example.com", LocalCase::Insensitive).unwrap();
        assert!(t.knows("Alice+Tag", "EXAMPLE.com", "+"));
    }

    #[test]
    fn bad_lines_name_their_line() {
        assert_eq!(
            line_error("alice@example.com\n\n# c\n\n\n\nfoo\nbob@example.com\n"),
            (7, r#"line 7: "foo": expected an address or @domain"#.to_string())
        );
        // The first word of `john doe@x` is `john`.
        assert_eq!(
            line_error("john doe@example.com").1,
            r#"line 1: "john": expected an address or @domain"#
        );
        let (line, msg) = line_error("alice@example.com\nbob@example..com\n");
        assert_eq!(line, 2);
        assert_eq!(msg, r#"line 2: "bob@example..com": invalid domain "example..com""#);
        let (line, msg) = line_error("a\u{1}b@example.com\n");
        assert_eq!(
            (line, msg.as_str()),
            (1, r#"line 1: "a\u{1}b@example.com": control character in address"#)
        );
        assert_eq!(line_error("x@").1, r#"line 1: "x@": empty domain"#);
        assert_eq!(line_error("@").1, r#"line 1: "@": empty domain"#);
        // A long entry is cut short in the message.
        let (_, msg) = line_error(&"y".repeat(5000));
        assert!(msg.len() < 200 && msg.ends_with("...: expected an address or @domain"), "{msg}");
    }

    #[test]
    fn duplicates_count_once() {
        let text = "alice@example.com\nalice@EXAMPLE.com\nAlice@example.com\n@example.org\n@Example.ORG\nalice@example.com OK\n";
        let t = table(text);
        assert_eq!(t.len(), 3);
        assert!(t.knows("Alice", "example.com", ""));
        assert_eq!(Recipients::parse(text, LocalCase::Insensitive).unwrap().len(), 2);
    }

    #[test]
    fn files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("recipients");
        std::fs::write(&path, "alice@example.com OK\n@example.org\n").unwrap();
        let t = Recipients::load(&path, LocalCase::Exact).unwrap();
        assert_eq!(t.len(), 2);
        assert!(t.knows("alice", "example.com", ""));

        std::fs::write(&path, "alice@example.com\nfoo\n").unwrap();
        let e = Recipients::load(&path, LocalCase::Exact).unwrap_err();
        assert!(
            matches!(e, RecipientsError::Line { line: 2, path: Some(ref p), .. } if *p == path),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            format!("{}: line 2: \"foo\": expected an address or @domain", path.display())
        );

        let missing = dir.path().join("missing");
        let e = Recipients::load(&missing, LocalCase::Exact).unwrap_err();
        assert!(matches!(e, RecipientsError::Read { .. }), "{e:?}");
        assert!(e.to_string().starts_with(&format!("{}: ", missing.display())), "{e}");
    }

    #[test]
    fn invalid_utf8_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("recipients");
        std::fs::write(&path, b"alice@example.com\n# fine\nb\xffob@example.com\ncarol@example.com\n").unwrap();
        let e = Recipients::load(&path, LocalCase::Exact).unwrap_err();
        assert!(matches!(e, RecipientsError::Line { line: 3, .. }), "{e:?}");
        assert_eq!(e.to_string(), format!("{}: line 3: invalid UTF-8", path.display()));
        // In a comment too: the file is not what its writer meant.
        std::fs::write(&path, b"# caf\xe9\nalice@example.com\n").unwrap();
        assert!(matches!(
            Recipients::load(&path, LocalCase::Exact),
            Err(RecipientsError::Line { line: 1, .. })
        ));
    }

    #[test]
    fn entries_outside_the_domains() {
        let t = table("alice@example.com\nbob@Sub.Example.org\ncarol@other.net\n@example.com\n@other.net\nd@example.org\n");
        let inside = DomainSet::new(["example.com", ".example.org"]).unwrap();
        // carol@other.net, @other.net, and d@example.org (`.example.org` is its subdomains).
        assert_eq!(t.outside(&inside), 3);
        assert_eq!(
            t.outside(&DomainSet::new(["example.com", "example.org", ".example.org", "other.net"]).unwrap()),
            0
        );
        assert_eq!(t.outside(&DomainSet::default()), 6);
    }

    #[test]
    fn empty_tables_know_nobody() {
        let t = Recipients::default();
        assert!(t.is_empty());
        assert_eq!(t.len(), 0);
        assert!(!t.knows("alice", "example.com", "+"));
        assert!(!table("# nothing\n").knows("", "example.com", ""));
    }

    #[test]
    fn many_entries() {
        let text: String = (0..20_000).map(|i| format!("user{i}@domain{}.example\n", i % 7)).collect();
        let t = table(&text);
        assert_eq!(t.len(), 20_000);
        for i in (0..20_000).step_by(97) {
            let domain = format!("domain{}.example", i % 7);
            assert!(t.knows(&format!("user{i}"), &domain, "+"));
            assert!(t.knows(&format!("user{i}+x"), &domain, "+"));
            assert!(!t.knows(&format!("user{i}"), &format!("domain{}.example", (i + 1) % 7), "+"));
        }
        assert!(!t.knows("user20000", "domain0.example", ""));
    }

    #[test]
    fn stamps_change_when_the_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("recipients");
        assert_eq!(stamp(&path), None);
        std::fs::write(&path, "alice@example.com\n").unwrap();
        let first = stamp(&path).unwrap();
        assert_eq!(stamp(&path), Some(first));
        // Same length, and maybe the same modification time: the inode tells them apart.
        let new = dir.path().join("recipients.new");
        std::fs::write(&new, "carol@example.com\n").unwrap();
        std::fs::rename(&new, &path).unwrap();
        let second = stamp(&path).unwrap();
        assert_eq!(second.1, first.1);
        assert_ne!(second.2, first.2);
        assert_ne!(second, first);
        // Rewritten in place with another length.
        std::fs::write(&path, "carol@example.com\ndave@example.com\n").unwrap();
        assert_ne!(stamp(&path), Some(second));
    }
}
