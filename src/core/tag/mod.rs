//! BATV tags: the `prvs` scheme (HMAC-SHA1, byte-compatible with Exim's `${prvs}`) and the
//! native scheme (HMAC-SHA256, base32). This is a wire format: it never changes.
//!
//! Address shape (draft-levine-smtp-batv-01 §3): `prvs=<tag-val>=<local-part>@<domain>`,
//! tag-val = K (key digit) + DDD (expiry day mod 1000) + hash; or, in the sub-address
//! syntax batv-tools writes, `<local-part>+prvs=<tag-val>@<domain>`. Both hash the same
//! `K ‖ DDD ‖ local@domain`, so one tag value means one original address in either form.

use std::borrow::Cow;

use subtle::ConstantTimeEq;

use crate::core::address::{self, Address, AddressError, MAX_LOCAL_LEN};

mod mac;
#[cfg(test)]
mod tests;

pub use mac::TagKey;
use mac::{base32_40, hex_3, kddd, unbase32_40, unhex_3};

/// `prvs=` prefix (always written lower-case: postgrey strips only that).
const PREFIX: &str = "prvs=";
/// Verifiers accept tags whose expiry day is at most this many days ahead.
pub const MAX_DAYS_AHEAD: u16 = 31;
pub const MIN_LIFETIME: u16 = 7;
pub const MAX_LIFETIME: u16 = 30;
pub const DEFAULT_LIFETIME: u16 = 7;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// HMAC-SHA256, 8 base32 characters over the canonical address (the default).
    Native,
    /// HMAC-SHA1, 6 hex digits over the address as written (Exim interop).
    Prvs,
}

impl Scheme {
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Native => "native",
            Scheme::Prvs => "prvs",
        }
    }
    /// Characters of hash in the tag value.
    fn hash_len(self) -> usize {
        match self {
            Scheme::Native => 8,
            Scheme::Prvs => 6,
        }
    }
    /// Octets the tag adds to the unquoted local part: `prvs=` + K + DDD + hash + `=`.
    pub fn overhead(self) -> usize {
        PREFIX.len() + 4 + self.hash_len() + 1
    }
}

/// The characters that may start a sub-address tag (`subaddress_delimiter`): the ones
/// MTAs use for address extensions (Postfix `recipient_delimiter`, Exim
/// `local_part_suffix`, qmail). Verifiers recognise a tag after any of them, whatever the
/// signer writes: the hash binds the tag to the local part before it, so the delimiter
/// adds nothing an attacker could use. `%` and `!` (routing) and `.` and `=` (ambiguous
/// in a dot-atom and a tag) are not among them.
pub const SUBADDRESS_DELIMITERS: &str = "+-_";

/// Where the signer puts the tag (`tag_syntax`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    /// `prvs=KDDDHASH=alice@example.com`, as in the BATV draft and Exim.
    Prefix,
    /// `alice+prvs=KDDDHASH@example.com` with this delimiter (one of
    /// [`SUBADDRESS_DELIMITERS`]): delivered to alice by MTAs that know nothing of BATV.
    Subaddress(char),
}

impl Syntax {
    /// The sub-address syntax with `delimiter`, if it is one of [`SUBADDRESS_DELIMITERS`].
    pub fn subaddress(delimiter: char) -> Result<Syntax, String> {
        if SUBADDRESS_DELIMITERS.contains(delimiter) {
            Ok(Syntax::Subaddress(delimiter))
        } else {
            Err(format!(
                "{delimiter:?} cannot start a sub-address tag (one of {})",
                SUBADDRESS_DELIMITERS
                    .chars()
                    .map(|c| format!("{c:?}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ))
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Syntax::Prefix => "prefix",
            Syntax::Subaddress(_) => "subaddress",
        }
    }
}

/// The schemes a verifier accepts (`verify_schemes`). A native-only site must not accept
/// prvs tags: 24 bits fall to online guessing, 40 do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schemes(u8);

impl Schemes {
    pub const ALL: Schemes = Schemes(0b11);

    fn bit(scheme: Scheme) -> u8 {
        match scheme {
            Scheme::Native => 0b01,
            Scheme::Prvs => 0b10,
        }
    }

    pub fn of<I: IntoIterator<Item = Scheme>>(schemes: I) -> Schemes {
        Schemes(schemes.into_iter().fold(0, |b, s| b | Schemes::bit(s)))
    }

    pub fn accepts(self, scheme: Scheme) -> bool {
        self.0 & Schemes::bit(scheme) != 0
    }

    /// The verdict on a well-formed tag of a scheme not accepted here: it counts as a
    /// failed tag, like any other that is not ours.
    fn refusal(scheme: Scheme) -> Verdict<'static> {
        match scheme {
            Scheme::Native => Verdict::Malformed("native tags are not accepted here (verify_schemes)"),
            Scheme::Prvs => Verdict::Malformed("prvs tags are not accepted here (verify_schemes)"),
        }
    }
}

impl std::fmt::Display for Scheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Scheme {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "native" => Ok(Scheme::Native),
            "prvs" => Ok(Scheme::Prvs),
            _ => Err(format!("unknown scheme {s:?} (expected native or prvs)")),
        }
    }
}

/// The Unix day number (days since 1970-01-01 UTC) of a Unix time.
pub fn unix_day(unix_seconds: i64) -> i64 {
    unix_seconds.div_euclid(86_400)
}

/// DDD for a tag signed on `today` that lives `lifetime` days.
pub fn day_stamp(today: i64, lifetime: u16) -> u16 {
    (today + lifetime as i64).rem_euclid(1000) as u16
}

/// Days from `today` until expiry day `ddd`, modulo 1000.
fn days_ahead(ddd: u16, today: i64) -> u16 {
    (ddd as i64 - today).rem_euclid(1000) as u16
}

/// The fixed acceptance window: 0..=31 days ahead, or one day of grace (999).
pub fn within_window(ddd: u16, today: i64) -> bool {
    let d = days_ahead(ddd, today);
    d <= MAX_DAYS_AHEAD || d == 999
}

/// Why the signer leaves an address untagged. The verifier exempts the same addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    NullSender,
    ForeignDomain,
    AlreadyTagged,
    Srs,
    TooLong,
}

impl Skip {
    pub fn name(self) -> &'static str {
        match self {
            Skip::NullSender => "null-sender",
            Skip::ForeignDomain => "foreign-domain",
            Skip::AlreadyTagged => "already-tagged",
            Skip::Srs => "srs",
            Skip::TooLong => "too-long",
        }
    }
}

fn starts_with_ci(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// Sender Rewriting Scheme addresses (`SRS0=`/`SRS1=`, also the `+` and `-` separators
/// PostSRSd and others allow).
pub fn is_srs(local: &str) -> bool {
    let b = local.as_bytes();
    b.len() > 5 && (starts_with_ci(local, "srs0") || starts_with_ci(local, "srs1")) && matches!(b[4], b'=' | b'+' | b'-')
}

/// True if the local part (unquoted) holds a BATV tag of any kind, valid or not: it
/// starts with `prvs=`, or has `prvs=` after a sub-address delimiter.
pub fn looks_tagged(local: &str) -> bool {
    starts_with_ci(local, PREFIX) || subaddress_tag_at(local).is_some()
}

/// The index of the delimiter that starts the last sub-address tag in `local`.
fn subaddress_tag_at(local: &str) -> Option<usize> {
    let b = local.as_bytes();
    // Most local parts hold no '=' at all: one pass rules them out.
    if !b.contains(&b'=') {
        return None;
    }
    (0..b.len().saturating_sub(PREFIX.len())).rev().find(|&i| {
        SUBADDRESS_DELIMITERS.as_bytes().contains(&b[i]) && b[i + 1..i + 1 + PREFIX.len()].eq_ignore_ascii_case(PREFIX.as_bytes())
    })
}

/// The structural skips (everything but the domain check): `None` means sign it.
pub fn structural_skip(addr: &Address<'_>, scheme: Scheme) -> Option<Skip> {
    if looks_tagged(&addr.local) {
        Some(Skip::AlreadyTagged)
    } else if is_srs(&addr.local) {
        Some(Skip::Srs)
    } else if too_long_to_sign(&addr.local, scheme) {
        Some(Skip::TooLong)
    } else {
        None
    }
}

/// Would the tagged local part exceed 64 octets as written?
pub fn too_long_to_sign(local: &str, scheme: Scheme) -> bool {
    // Quoting (if needed) is decided by the original local part; the tag adds only atext.
    address::written_local_len(local) + scheme.overhead() > MAX_LOCAL_LEN
}

/// Sign `addr` with `key`, the tag written in `syntax`. The caller has already decided
/// it should be signed.
pub fn sign(key: &TagKey, key_id: u8, scheme: Scheme, syntax: Syntax, addr: &Address<'_>, ddd: u16) -> Result<String, AddressError> {
    debug_assert!(key_id <= 9 && ddd <= 999);
    let kd = kddd(key_id, ddd);
    // [delimiter] prvs= K DDD hash(<= 8) [=]
    let mut tag = [0u8; 19];
    let mut n = 0;
    if let Syntax::Subaddress(d) = syntax {
        // A delimiter is one ASCII character (Syntax::subaddress checks it).
        tag[0] = u8::try_from(d).ok().filter(u8::is_ascii).unwrap_or(b'+');
        n = 1;
    }
    for part in [PREFIX.as_bytes(), &kd] {
        tag[n..n + part.len()].copy_from_slice(part);
        n += part.len();
    }
    match scheme {
        Scheme::Prvs => {
            tag[n..n + 6].copy_from_slice(&hex_3(&key.prvs_hash(&kd, &addr.local, addr.domain)));
            n += 6;
        }
        Scheme::Native => {
            let domain = address::canonical_domain(addr.domain)?;
            tag[n..n + 8].copy_from_slice(&base32_40(&key.native_hash(&kd, &addr.local, &domain)));
            n += 8;
        }
    }
    Ok(match syntax {
        Syntax::Prefix => {
            tag[n] = b'=';
            // All ASCII by construction.
            let tag = std::str::from_utf8(&tag[..n + 1]).unwrap_or_default();
            address::format_prefixed(tag, &addr.local, addr.domain)
        }
        Syntax::Subaddress(_) => {
            let tag = std::str::from_utf8(&tag[..n]).unwrap_or_default();
            // Quoting, if the local part needs it, takes in the tag (dot-atom characters).
            address::format(&format!("{}{tag}", addr.local), addr.domain)
        }
    })
}

/// A syntactically valid tag, not yet checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tagged<'a> {
    pub scheme: Scheme,
    pub key_id: u8,
    pub day: u16,
    hash: [u8; 8],
    /// Original local part, unquoted.
    pub local: Cow<'a, str>,
    pub domain: &'a str,
    /// The original address, written in valid SMTP form.
    pub original: Cow<'a, str>,
}

/// What an address is, before any key is consulted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<'a> {
    Untagged(Address<'a>),
    Malformed(&'static str),
    Tagged(Tagged<'a>),
}

/// Parse an address and its tag, if any.
pub fn parse(s: &str) -> Result<Parsed<'_>, AddressError> {
    Ok(classify(s, address::parse(s)?))
}

/// Find the tag in an address already parsed from `s` (for callers that need the address
/// too, so it is parsed once).
pub fn classify<'a>(s: &'a str, addr: Address<'a>) -> Parsed<'a> {
    let local = &*addr.local;
    // The tag value's span in `local`, and the original local part's.
    let (val, orig) = if starts_with_ci(local, PREFIX) {
        let after = &local[PREFIX.len()..];
        let Some(eq) = after.find('=') else {
            return Parsed::Malformed("no '=' after the tag value");
        };
        let rest = PREFIX.len() + eq + 1;
        (PREFIX.len()..PREFIX.len() + eq, rest..local.len())
    } else if let Some(i) = subaddress_tag_at(local) {
        (i + 1 + PREFIX.len()..local.len(), 0..i)
    } else {
        return Parsed::Untagged(addr);
    };
    let prefix = orig.end == local.len();
    let v = &local.as_bytes()[val];
    let scheme = match v.len() {
        10 => Scheme::Prvs,
        12 => Scheme::Native,
        0 => return Parsed::Malformed("empty tag value"),
        _ if !prefix && v.contains(&b'=') => return Parsed::Malformed("'=' in the tag value"),
        _ => return Parsed::Malformed("tag value has the wrong length"),
    };
    if !v[..4].iter().all(u8::is_ascii_digit) {
        return Parsed::Malformed("key digit and day must be digits");
    }
    let hash_ok = match scheme {
        Scheme::Prvs => v[4..].iter().all(u8::is_ascii_hexdigit),
        Scheme::Native => unbase32_40(&v[4..]).is_some(),
    };
    if !hash_ok {
        return Parsed::Malformed("bad character in the tag hash");
    }
    if orig.is_empty() {
        return Parsed::Malformed(if prefix {
            "nothing after the tag"
        } else {
            "nothing before the tag"
        });
    }
    let mut hash = [0u8; 8];
    hash[..v.len() - 4].copy_from_slice(&v[4..]);
    let day = (v[1] - b'0') as u16 * 100 + (v[2] - b'0') as u16 * 10 + (v[3] - b'0') as u16;
    let key_id = v[0] - b'0';
    let (local, original) = match &addr.local {
        // Unquoted prefix form: the original address is a suffix of the input.
        Cow::Borrowed(l) if !addr.quoted && prefix => (Cow::Borrowed(&l[orig.clone()]), Cow::Borrowed(&s[orig.start..])),
        Cow::Borrowed(l) => {
            let l = &l[orig];
            (Cow::Borrowed(l), Cow::Owned(address::format(l, addr.domain)))
        }
        Cow::Owned(l) => {
            let l = l[orig].to_string();
            let o = address::format(&l, addr.domain);
            (Cow::Owned(l), Cow::Owned(o))
        }
    };
    Parsed::Tagged(Tagged {
        scheme,
        key_id,
        day,
        hash,
        local,
        domain: addr.domain,
        original,
    })
}

/// The outcome of checking a tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<'a> {
    Valid(Checked<'a>),
    Untagged,
    Malformed(&'static str),
    UnknownKey(u8),
    BadSignature,
    /// Authentic, but outside the acceptance window.
    Expired(Checked<'a>),
}

/// An authentic tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked<'a> {
    pub original: Cow<'a, str>,
    pub key_id: u8,
    pub scheme: Scheme,
    /// Expiry day, mod 1000.
    pub day: u16,
    /// Days from today until expiry: 0..=31 while valid, -1 on the grace day; for an
    /// expired tag, minus the days since expiry.
    pub days_left: i32,
}

impl Verdict<'_> {
    /// Stable reason names (CLI, JSON, logs).
    pub fn reason(&self) -> &'static str {
        match self {
            Verdict::Valid(_) => "valid",
            Verdict::Untagged => "untagged",
            Verdict::Malformed(_) => "malformed",
            Verdict::UnknownKey(_) => "unknown-key",
            Verdict::BadSignature => "bad-signature",
            Verdict::Expired(_) => "expired",
        }
    }
    pub fn is_valid(&self) -> bool {
        matches!(self, Verdict::Valid(_))
    }
    /// The original address if the tag is authentic (valid or expired).
    pub fn authentic(&self) -> Option<&Checked<'_>> {
        match self {
            Verdict::Valid(c) | Verdict::Expired(c) => Some(c),
            _ => None,
        }
    }
}

impl Tagged<'_> {
    /// Check the hash with `key` in constant time.
    pub fn authentic(&self, key: &TagKey) -> bool {
        let kd = kddd(self.key_id, self.day);
        match self.scheme {
            Scheme::Prvs => {
                let Some(given) = unhex_3(&self.hash[..6]) else {
                    return false;
                };
                key.prvs_hash(&kd, &self.local, self.domain).ct_eq(&given).into()
            }
            Scheme::Native => {
                let (Some(given), Ok(domain)) = (unbase32_40(&self.hash), address::canonical_domain(self.domain)) else {
                    return false;
                };
                key.native_hash(&kd, &self.local, &domain).ct_eq(&given).into()
            }
        }
    }
}

/// Where a verifier finds the key of a tag: by the key digit, and for per-domain key
/// stores by the domain (as written) of the address. A closure of the digit alone serves
/// one key set.
pub trait KeyLookup<'k> {
    fn key(&self, domain: &str, id: u8) -> Option<&'k TagKey>;
}

impl<'k, F: Fn(u8) -> Option<&'k TagKey>> KeyLookup<'k> for F {
    fn key(&self, _domain: &str, id: u8) -> Option<&'k TagKey> {
        self(id)
    }
}

/// Check an address against a key lookup, as of Unix day `today`.
pub fn verify<'a, 'k>(s: &'a str, today: i64, schemes: Schemes, keys: impl KeyLookup<'k>) -> Result<Verdict<'a>, AddressError> {
    if let Some(v) = verify_plain(s, today, schemes, &keys) {
        return Ok(v);
    }
    verify_general(s, today, schemes, keys)
}

/// `verify` for any input, through the parser.
#[doc(hidden)]
pub fn verify_general<'a, 'k>(s: &'a str, today: i64, schemes: Schemes, keys: impl KeyLookup<'k>) -> Result<Verdict<'a>, AddressError> {
    let t = match parse(s)? {
        Parsed::Untagged(_) => return Ok(Verdict::Untagged),
        Parsed::Malformed(why) => return Ok(Verdict::Malformed(why)),
        Parsed::Tagged(t) => t,
    };
    Ok(check(t, today, schemes, keys))
}

/// `verify` of the common case, a well-formed tag on a plain ASCII dot-atom address, with
/// the HMAC block laid out straight from the input and nothing built but the verdict.
/// `None` sends anything else to [`verify_general`], which gives the same verdict on
/// every input (a property test checks this).
fn verify_plain<'a, 'k>(s: &'a str, today: i64, schemes: Schemes, keys: &impl KeyLookup<'k>) -> Option<Verdict<'a>> {
    let b = s.as_bytes();
    // The prefix form only (a sub-address tag goes to the parser).
    if !starts_with_ci(s, PREFIX) || b.len() > address::MAX_ADDRESS_LEN {
        return None;
    }
    let val = &b[PREFIX.len()..];
    // The first '=' ends the tag value; the value's own characters never include one.
    let scheme = match (val.get(10), val.get(12)) {
        (Some(b'='), _) => Scheme::Prvs,
        (_, Some(b'=')) => Scheme::Native,
        _ => return None,
    };
    let n = 4 + scheme.hash_len();
    let (kd, hash) = (&val[..4], &val[4..n]);
    if !kd.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // The hash, decoded (its characters checked): up to 5 octets, `len` of them used.
    let (given, len) = match scheme {
        Scheme::Prvs => {
            let g = unhex_3(hash)?;
            ([g[0], g[1], g[2], 0, 0], 3)
        }
        Scheme::Native => (unbase32_40(hash)?, 5),
    };
    // `prvs=`, K, DDD, the hash and '=' are dot-atom characters: scan from after them.
    let rest = PREFIX.len() + n + 1;
    let addr = address::plain_from(s, rest)?;
    if rest >= addr.local.len() {
        return None;
    }
    let (key_id, day) = (
        kd[0] - b'0',
        (kd[1] - b'0') as u16 * 100 + (kd[2] - b'0') as u16 * 10 + (kd[3] - b'0') as u16,
    );
    if !schemes.accepts(scheme) {
        return Some(Schemes::refusal(scheme));
    }
    let Some(key) = keys.key(addr.domain, key_id) else {
        return Some(Verdict::UnknownKey(key_id));
    };
    // K, DDD and '@' are the same lower-cased, so the native scheme's canonical address
    // (plain ASCII: lower case throughout) is the input lower-cased.
    let original = &b[rest..];
    let mac = match scheme {
        Scheme::Prvs => {
            let m: [u8; 3] = key.sha1.mac([kd, original, b"", b""], false);
            [m[0], m[1], m[2], 0, 0]
        }
        Scheme::Native => key.sha256.mac([kd, original, b"", b""], true),
    };
    if !bool::from(mac[..len].ct_eq(&given[..len])) {
        return Some(Verdict::BadSignature);
    }
    Some(judge_window(key_id, scheme, day, Cow::Borrowed(&s[rest..]), today))
}

/// Check a parsed tag.
pub fn check<'a, 'k>(t: Tagged<'a>, today: i64, schemes: Schemes, keys: impl KeyLookup<'k>) -> Verdict<'a> {
    if !schemes.accepts(t.scheme) {
        return Schemes::refusal(t.scheme);
    }
    let Some(key) = keys.key(t.domain, t.key_id) else {
        return Verdict::UnknownKey(t.key_id);
    };
    if !t.authentic(key) {
        return Verdict::BadSignature;
    }
    judge_window(t.key_id, t.scheme, t.day, t.original, today)
}

/// Valid or expired, for an authentic tag.
fn judge_window(key_id: u8, scheme: Scheme, day: u16, original: Cow<'_, str>, today: i64) -> Verdict<'_> {
    let ahead = days_ahead(day, today);
    let valid = ahead <= MAX_DAYS_AHEAD || ahead == 999;
    let days_left = match ahead {
        999 => -1,
        d if d <= MAX_DAYS_AHEAD => d as i32,
        // Expired: count the days since expiry.
        d => d as i32 - 1000,
    };
    let checked = Checked {
        key_id,
        scheme,
        day,
        days_left,
        original,
    };
    if valid {
        Verdict::Valid(checked)
    } else {
        Verdict::Expired(checked)
    }
}

/// Remove a syntactically valid tag without checking it. Untagged and malformed
/// addresses come back unchanged.
pub fn strip(s: &str) -> Result<Cow<'_, str>, AddressError> {
    Ok(match parse(s)? {
        Parsed::Tagged(t) => t.original,
        _ => Cow::Borrowed(s),
    })
}
