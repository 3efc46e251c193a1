//! BATV tags: the `prvs` scheme (HMAC-SHA1, byte-compatible with Exim's `${prvs}`) and the
//! native scheme (HMAC-SHA256, base32). This is a wire format: it never changes.
//!
//! Address shape (draft-levine-smtp-batv-01 §3): `prvs=<tag-val>=<local-part>@<domain>`,
//! tag-val = K (key digit) + DDD (expiry day mod 1000) + hash.

use std::borrow::Cow;

use sha2::Digest;
use subtle::ConstantTimeEq;

use crate::core::address::{self, Address, AddressError, MAX_LOCAL_LEN};

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

/// HMAC (RFC 2104) on the hash's own compression function, with the key's pads
/// compressed once per key: a short tag then costs two compressions and no allocation.
/// (The `hmac` crate's generic wrappers cost as much again as the hashing; the tests
/// compare this with it.)
#[derive(Clone)]
struct Prekeyed<const N: usize> {
    inner: [u32; N],
    outer: [u32; N],
    compress: fn(&mut [u32; N], &[[u8; 64]]),
}

/// A message being hashed from a pre-keyed state.
struct Stream<const N: usize> {
    state: [u32; N],
    block: [u8; 64],
    fill: usize,
    /// Octets hashed, the key's pad block included.
    len: u64,
    compress: fn(&mut [u32; N], &[[u8; 64]]),
}

impl<const N: usize> Stream<N> {
    fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        while !data.is_empty() {
            let n = (64 - self.fill).min(data.len());
            self.block[self.fill..self.fill + n].copy_from_slice(&data[..n]);
            self.fill += n;
            data = &data[n..];
            if self.fill == 64 {
                (self.compress)(&mut self.state, &[self.block]);
                self.fill = 0;
            }
        }
    }

    /// Merkle-Damgard padding (SHA-1 and SHA-256 alike: 0x80, zeros, the length in bits
    /// as a big-endian u64), then the state.
    fn digest(mut self) -> [u32; N] {
        let bits = self.len.wrapping_mul(8);
        self.block[self.fill] = 0x80;
        self.block[self.fill + 1..].fill(0);
        if self.fill >= 56 {
            (self.compress)(&mut self.state, &[self.block]);
            self.block = [0; 64];
        }
        self.block[56..].copy_from_slice(&bits.to_be_bytes());
        (self.compress)(&mut self.state, &[self.block]);
        self.state
    }
}

impl<const N: usize> Prekeyed<N> {
    /// `digest` hashes a key longer than the block (RFC 2104 §2).
    fn new(secret: &[u8], iv: [u32; N], compress: fn(&mut [u32; N], &[[u8; 64]]), digest: impl Fn(&[u8]) -> Vec<u8>) -> Self {
        let mut key = [0u8; 64];
        if secret.len() > 64 {
            let h = digest(secret);
            key[..h.len()].copy_from_slice(&h);
        } else {
            key[..secret.len()].copy_from_slice(secret);
        }
        let pad = |x: u8| {
            let mut b = key;
            b.iter_mut().for_each(|k| *k ^= x);
            let mut st = iv;
            compress(&mut st, &[b]);
            st
        };
        Prekeyed {
            inner: pad(0x36),
            outer: pad(0x5c),
            compress,
        }
    }

    fn start(&self) -> Stream<N> {
        Stream {
            state: self.inner,
            block: [0; 64],
            fill: 0,
            len: 64,
            compress: self.compress,
        }
    }

    /// The MAC of what `inner` hashed, as big-endian words.
    fn finish(&self, inner: Stream<N>) -> [u32; N] {
        self.outer(inner.digest())
    }

    /// The outer hash of an inner one: always one block (at most 32 octets of hash).
    fn outer(&self, inner: [u32; N]) -> [u32; N] {
        let mut block = [0u8; 64];
        for (chunk, w) in block.chunks_exact_mut(4).zip(inner) {
            chunk.copy_from_slice(&w.to_be_bytes());
        }
        block[N * 4] = 0x80;
        block[56..].copy_from_slice(&((64 + N as u64 * 4) * 8).to_be_bytes());
        let mut st = self.outer;
        (self.compress)(&mut st, &[block]);
        st
    }

    /// The MAC of `parts` joined, ASCII-lower-cased if `lower`. A message that fits one
    /// block (the usual tag) is laid out in place: two compressions, no copies beyond
    /// the block.
    fn mac(&self, parts: [&[u8]; 4], lower: bool) -> [u32; N] {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if total <= 55 {
            let mut block = [0u8; 64];
            let mut at = 0;
            for p in parts {
                block[at..at + p.len()].copy_from_slice(p);
                at += p.len();
            }
            if lower {
                // The whole block at once (the zeros stay zeros): it vectorises.
                for b in &mut block {
                    *b |= (b.wrapping_sub(b'A') < 26) as u8 * 0x20;
                }
            }
            block[at] = 0x80;
            block[56..].copy_from_slice(&((64 + at as u64) * 8).to_be_bytes());
            let mut st = self.inner;
            (self.compress)(&mut st, &[block]);
            return self.outer(st);
        }
        let mut s = self.start();
        for p in parts {
            if lower {
                update_ascii_lower(&mut s, p);
            } else {
                s.update(p);
            }
        }
        self.finish(s)
    }
}

const SHA1_IV: [u32; 5] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476, 0xc3d2_e1f0];
const SHA256_IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// Key material for one key id, pre-keyed: the HMAC pads are compressed once here.
#[derive(Clone)]
pub struct TagKey {
    sha1: Prekeyed<5>,
    sha256: Prekeyed<8>,
}

impl std::fmt::Debug for TagKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TagKey(..)")
    }
}

impl TagKey {
    pub fn new(secret: &[u8]) -> Self {
        TagKey {
            sha1: Prekeyed::new(secret, SHA1_IV, sha1::block_api::compress, |k| sha1::Sha1::digest(k).to_vec()),
            sha256: Prekeyed::new(secret, SHA256_IV, sha2::block_api::compress256, |k| {
                sha2::Sha256::digest(k).to_vec()
            }),
        }
    }

    /// First 3 bytes of HMAC-SHA1(secret, K ‖ DDD ‖ local@domain), address as written.
    fn prvs_hash(&self, kddd: &[u8; 4], local: &str, domain: &str) -> [u8; 3] {
        prvs_3(self.sha1.mac([kddd, local.as_bytes(), b"@", domain.as_bytes()], false))
    }

    /// First 5 bytes of HMAC-SHA256(secret, K ‖ DDD ‖ canonical address). The canonical
    /// address is lower case throughout (an IDNA A-label is too), so the MAC lower-cases
    /// all it hashes.
    fn native_hash(&self, kddd: &[u8; 4], local: &str, canonical_domain: &str) -> [u8; 5] {
        native_5(self.sha256.mac([kddd, local.as_bytes(), b"@", canonical_domain.as_bytes()], true))
    }
}

fn prvs_3(mac: [u32; 5]) -> [u8; 3] {
    let out = mac[0].to_be_bytes();
    [out[0], out[1], out[2]]
}

fn native_5(mac: [u32; 8]) -> [u8; 5] {
    let (a, b) = (mac[0].to_be_bytes(), mac[1].to_be_bytes());
    [a[0], a[1], a[2], a[3], b[0]]
}

/// Feed `bytes` ASCII-lower-cased (bytes above 0x7F untouched) without allocating.
fn update_ascii_lower<const N: usize>(mac: &mut Stream<N>, bytes: &[u8]) {
    let mut buf = [0u8; 64];
    for chunk in bytes.chunks(buf.len()) {
        let out = &mut buf[..chunk.len()];
        out.copy_from_slice(chunk);
        out.make_ascii_lowercase();
        mac.update(out);
    }
}

fn kddd(key_id: u8, day: u16) -> [u8; 4] {
    [
        b'0' + key_id,
        b'0' + (day / 100) as u8,
        b'0' + (day / 10 % 10) as u8,
        b'0' + (day % 10) as u8,
    ]
}

const B32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

fn base32_40(bytes: &[u8; 5]) -> [u8; 8] {
    let v = bytes.iter().fold(0u64, |acc, &b| acc << 8 | b as u64);
    let mut out = [0u8; 8];
    for (i, o) in out.iter_mut().enumerate() {
        *o = B32[(v >> (35 - 5 * i) & 31) as usize];
    }
    out
}

fn unbase32_40(chars: &[u8]) -> Option<[u8; 5]> {
    let mut v = 0u64;
    for &c in chars {
        let d = match c {
            b'a'..=b'z' => c - b'a',
            b'A'..=b'Z' => c - b'A',
            b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        v = v << 5 | d as u64;
    }
    let b = v.to_be_bytes();
    Some([b[3], b[4], b[5], b[6], b[7]])
}

fn hex_3(bytes: &[u8; 3]) -> [u8; 6] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 6];
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[(b >> 4) as usize];
        out[2 * i + 1] = HEX[(b & 15) as usize];
    }
    out
}

fn unhex_3(chars: &[u8]) -> Option<[u8; 3]> {
    let nib = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 3];
    for (i, o) in out.iter_mut().enumerate() {
        *o = nib(chars[2 * i])? << 4 | nib(chars[2 * i + 1])?;
    }
    Some(out)
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

/// True if the local part (unquoted) starts a BATV tag of any kind, valid or not.
pub fn looks_tagged(local: &str) -> bool {
    starts_with_ci(local, PREFIX)
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

/// Sign `addr` with `key`. The caller has already decided it should be signed.
pub fn sign(key: &TagKey, key_id: u8, scheme: Scheme, addr: &Address<'_>, ddd: u16) -> Result<String, AddressError> {
    debug_assert!(key_id <= 9 && ddd <= 999);
    let kd = kddd(key_id, ddd);
    // prvs= K DDD hash(<= 8) =
    let mut tag = [0u8; 19];
    let mut n = 0;
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
    tag[n] = b'=';
    // All ASCII by construction.
    let tag = std::str::from_utf8(&tag[..n + 1]).unwrap_or_default();
    Ok(address::format_prefixed(tag, &addr.local, addr.domain))
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
    if !looks_tagged(&addr.local) {
        return Parsed::Untagged(addr);
    }
    let after = &addr.local[PREFIX.len()..];
    let Some(eq) = after.find('=') else {
        return Parsed::Malformed("no '=' after the tag value");
    };
    let val = &after.as_bytes()[..eq];
    let scheme = match val.len() {
        10 => Scheme::Prvs,
        12 => Scheme::Native,
        0 => return Parsed::Malformed("empty tag value"),
        _ => return Parsed::Malformed("tag value has the wrong length"),
    };
    if !val[..4].iter().all(u8::is_ascii_digit) {
        return Parsed::Malformed("key digit and day must be digits");
    }
    let hash_ok = match scheme {
        Scheme::Prvs => val[4..].iter().all(u8::is_ascii_hexdigit),
        Scheme::Native => unbase32_40(&val[4..]).is_some(),
    };
    if !hash_ok {
        return Parsed::Malformed("bad character in the tag hash");
    }
    let rest_start = PREFIX.len() + eq + 1;
    if rest_start >= addr.local.len() {
        return Parsed::Malformed("nothing after the tag");
    }
    let mut hash = [0u8; 8];
    hash[..val.len() - 4].copy_from_slice(&val[4..]);
    let day = (val[1] - b'0') as u16 * 100 + (val[2] - b'0') as u16 * 10 + (val[3] - b'0') as u16;
    let key_id = val[0] - b'0';
    let (local, original) = match &addr.local {
        // Unquoted: the original address is a suffix of the input.
        Cow::Borrowed(l) if !addr.quoted => (Cow::Borrowed(&l[rest_start..]), Cow::Borrowed(&s[rest_start..])),
        _ => {
            let l = addr.local[rest_start..].to_string();
            let orig = address::format(&l, addr.domain);
            (Cow::Owned(l), Cow::Owned(orig))
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

/// Check an address against a key lookup, as of Unix day `today`.
pub fn verify<'a, 'k>(
    s: &'a str,
    today: i64,
    schemes: Schemes,
    keys: impl Fn(u8) -> Option<&'k TagKey>,
) -> Result<Verdict<'a>, AddressError> {
    if let Some(v) = verify_plain(s, today, schemes, &keys) {
        return Ok(v);
    }
    verify_general(s, today, schemes, keys)
}

/// `verify` for any input, through the parser.
#[doc(hidden)]
pub fn verify_general<'a, 'k>(
    s: &'a str,
    today: i64,
    schemes: Schemes,
    keys: impl Fn(u8) -> Option<&'k TagKey>,
) -> Result<Verdict<'a>, AddressError> {
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
fn verify_plain<'a, 'k>(s: &'a str, today: i64, schemes: Schemes, keys: &impl Fn(u8) -> Option<&'k TagKey>) -> Option<Verdict<'a>> {
    let b = s.as_bytes();
    if !looks_tagged(s) || b.len() > address::MAX_ADDRESS_LEN {
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
    let Some(key) = keys(key_id) else {
        return Some(Verdict::UnknownKey(key_id));
    };
    // K, DDD and '@' are the same lower-cased, so the native scheme's canonical address
    // (plain ASCII: lower case throughout) is the input lower-cased.
    let original = &b[rest..];
    let mac = match scheme {
        Scheme::Prvs => {
            let m = prvs_3(key.sha1.mac([kd, original, b"", b""], false));
            [m[0], m[1], m[2], 0, 0]
        }
        Scheme::Native => native_5(key.sha256.mac([kd, original, b"", b""], true)),
    };
    if !bool::from(mac[..len].ct_eq(&given[..len])) {
        return Some(Verdict::BadSignature);
    }
    Some(judge_window(key_id, scheme, day, Cow::Borrowed(&s[rest..]), today))
}

/// Check a parsed tag.
pub fn check<'a, 'k>(t: Tagged<'a>, today: i64, schemes: Schemes, keys: impl Fn(u8) -> Option<&'k TagKey>) -> Verdict<'a> {
    if !schemes.accepts(t.scheme) {
        return Schemes::refusal(t.scheme);
    }
    let Some(key) = keys(t.key_id) else {
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

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{KeyInit, Mac};

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn words(w: &[u32]) -> Vec<u8> {
        w.iter().flat_map(|x| x.to_be_bytes()).collect()
    }

    fn ours256(key: &[u8], msg: &[u8]) -> Vec<u8> {
        let k = TagKey::new(key);
        let mut s = k.sha256.start();
        s.update(msg);
        words(&k.sha256.finish(s))
    }

    fn ours1(key: &[u8], msg: &[u8]) -> Vec<u8> {
        let k = TagKey::new(key);
        let mut s = k.sha1.start();
        s.update(msg);
        words(&k.sha1.finish(s))
    }

    #[test]
    fn hmac_known_answers() {
        // RFC 4231 test cases 1, 2 and 6 (a key longer than the block).
        assert_eq!(
            hex(&ours256(&[0x0b; 20], b"Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_eq!(
            hex(&ours256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex(&ours256(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First")),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
        // RFC 2202 test cases 1 and 6.
        assert_eq!(hex(&ours1(&[0x0b; 20], b"Hi There")), "b617318655057264e28bc0b6fb378c8ef146be00");
        assert_eq!(
            hex(&ours1(&[0xaa; 80], b"Test Using Larger Than Block-Size Key - Hash Key First")),
            "aa4ae5e15272d00e95705637ce8a3b55ed402112"
        );
    }

    #[test]
    fn native_hash_lower_cases_the_local_part() {
        let k = TagKey::new(b"secret");
        for local in ["Jane.Doe", "x", &"AbC".repeat(30), "Ärger.ÖL"] {
            let mut r = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"secret").unwrap();
            r.update(format!("3123{}@xn--bcher-kva.example", local.to_ascii_lowercase()).as_bytes());
            let want = r.finalize().into_bytes();
            assert_eq!(k.native_hash(b"3123", local, "xn--bcher-kva.example"), want[..5], "{local}");
        }
    }

    #[test]
    fn hmac_matches_the_reference_at_every_length_and_split() {
        // Message lengths across the one-, two- and three-block paddings, keys shorter,
        // equal to and longer than the block, and the message fed in two pieces.
        for key_len in [0usize, 1, 20, 63, 64, 65, 200] {
            let key: Vec<u8> = (0..key_len).map(|i| (i * 7 + 3) as u8).collect();
            let k = TagKey::new(&key);
            for len in 0..200usize {
                let msg: Vec<u8> = (0..len).map(|i| (i * 31 + key_len) as u8).collect();
                let split = len / 3;
                let mut s = k.sha256.start();
                s.update(&msg[..split]);
                s.update(&msg[split..]);
                let mut r = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
                r.update(&msg);
                let want = r.finalize().into_bytes().to_vec();
                assert_eq!(words(&k.sha256.finish(s)), want, "sha256 key {key_len} msg {len}");
                let parts = [&msg[..split.min(4)], &msg[split.min(4)..split], b"", &msg[split..]];
                assert_eq!(words(&k.sha256.mac(parts, false)), want, "sha256 mac() key {key_len} msg {len}");
                let mut s = k.sha1.start();
                s.update(&msg[..split]);
                s.update(&msg[split..]);
                let mut r = hmac::Hmac::<sha1::Sha1>::new_from_slice(&key).unwrap();
                r.update(&msg);
                let want = r.finalize().into_bytes().to_vec();
                assert_eq!(words(&k.sha1.finish(s)), want, "sha1 key {key_len} msg {len}");
                let parts = [&msg[..split.min(4)], &msg[split.min(4)..split], b"", &msg[split..]];
                assert_eq!(words(&k.sha1.mac(parts, false)), want, "sha1 mac() key {key_len} msg {len}");
                // Lower-casing: ASCII letters only, every other byte as it is.
                let text: Vec<u8> = (0..len).map(|i| b"aZ09.Q@x[`{\xc3\x84@AZ"[i % 16]).collect();
                let cut = [0, len / 4, len / 2, len * 3 / 4, len];
                let parts: [&[u8]; 4] = std::array::from_fn(|i| &text[cut[i]..cut[i + 1]]);
                let mut r = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
                r.update(&text.to_ascii_lowercase());
                assert_eq!(
                    words(&k.sha256.mac(parts, true)),
                    r.finalize().into_bytes().to_vec(),
                    "lower, msg {len}"
                );
            }
        }
    }

    #[test]
    fn plain_tags_take_the_fast_path() {
        let keys = [TagKey::new(b"k0"), TagKey::new(b"k1")];
        let lookup = |k: u8| keys.get(k as usize);
        for scheme in [Scheme::Native, Scheme::Prvs] {
            let a = address::parse("Jane.Doe@Example.org").unwrap();
            let signed = sign(&keys[1], 1, scheme, &a, day_stamp(20_000, 7)).unwrap();
            let fast = verify_plain(&signed, 20_000, Schemes::ALL, &lookup);
            assert!(
                matches!(&fast, Some(Verdict::Valid(c)) if c.original == "Jane.Doe@Example.org"),
                "{fast:?}"
            );
            assert_eq!(fast, Some(verify_general(&signed, 20_000, Schemes::ALL, lookup).unwrap()));
            // Quoted and UTF-8 addresses go the general way.
            let q = address::parse("\"j d\"@example.org").unwrap();
            assert_eq!(
                verify_plain(&sign(&keys[1], 1, scheme, &q, 7).unwrap(), 20_000, Schemes::ALL, &lookup),
                None
            );
        }
    }

    #[test]
    fn only_accepted_schemes_verify() {
        let keys = [TagKey::new(b"k0"), TagKey::new(b"k1")];
        let lookup = |k: u8| keys.get(k as usize);
        for (scheme, other) in [(Scheme::Native, Scheme::Prvs), (Scheme::Prvs, Scheme::Native)] {
            for a in ["jane@example.org", "\"j d\"@example.org"] {
                let a = address::parse(a).unwrap();
                let signed = sign(&keys[1], 1, scheme, &a, day_stamp(20_000, 7)).unwrap();
                assert!(verify(&signed, 20_000, Schemes::of([scheme]), lookup).unwrap().is_valid());
                let refused = verify(&signed, 20_000, Schemes::of([other]), lookup).unwrap();
                assert!(
                    matches!(refused, Verdict::Malformed(w) if w.contains("verify_schemes")),
                    "{refused:?}"
                );
                // The fast path and the general one agree on the refusal too.
                assert_eq!(verify_general(&signed, 20_000, Schemes::of([other]), lookup).unwrap(), refused);
            }
        }
    }

    #[test]
    fn base32_round_trip() {
        let b = [0xde, 0xad, 0xbe, 0xef, 0x01];
        let e = base32_40(&b);
        assert_eq!(&e, b"32w353yb");
        assert_eq!(unbase32_40(&e), Some(b));
        assert_eq!(unbase32_40(b"32W353YB"), Some(b));
        assert_eq!(unbase32_40(b"32w353y1"), None);
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(&hex_3(&[0x0a, 0xbc, 0xff]), b"0abcff");
        assert_eq!(unhex_3(b"0ABCff"), Some([0x0a, 0xbc, 0xff]));
        assert_eq!(unhex_3(b"0abcfg"), None);
    }

    #[test]
    fn window() {
        let today = 20_780; // DDD 780
        assert!(within_window(780, today));
        assert!(within_window(811, today));
        assert!(!within_window(812, today));
        assert!(within_window(779, today));
        assert!(!within_window(778, today));
        // Across the wrap: today 20_995, expiry 21_002 (DDD 002).
        assert!(within_window(2, 20_995));
        assert!(within_window(994, 20_995));
        assert!(!within_window(993, 20_995));
    }

    #[test]
    fn srs_and_tag_detection() {
        assert!(is_srs("SRS0=HHH=TT=example.org=alice"));
        assert!(is_srs("srs1+x"));
        assert!(!is_srs("srs"));
        assert!(!is_srs("srsly"));
        assert!(looks_tagged("PRVS=1234abcdef=x"));
    }

    #[test]
    fn quoted_round_trip() {
        let key = TagKey::new(b"k");
        let a = address::parse("\"john doe\"@example.com").unwrap();
        let s = sign(&key, 1, Scheme::Native, &a, 787).unwrap();
        assert!(s.starts_with("\"prvs=1787") && s.ends_with("=john doe\"@example.com"), "{s}");
        let v = verify(&s, 20_780, Schemes::ALL, |k| (k == 1).then_some(&key)).unwrap();
        match v {
            Verdict::Valid(c) => assert_eq!(c.original, "\"john doe\"@example.com"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_tags() {
        for s in [
            "prvs=@x.org",
            "prvs=x@x.org",
            "prvs==a@x.org",
            "prvs=123=a@x.org",
            "prvs=1787abcdef=@x.org",
            "prvs=a787abcdef=a@x.org",
            "prvs=1787abcdeg=a@x.org",
            "prvs=1787abcdefg1=a@x.org",
        ] {
            assert!(matches!(parse(s), Ok(Parsed::Malformed(_))), "{s}: {:?}", parse(s));
        }
    }
}
