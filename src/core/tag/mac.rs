//! The tags' MACs and encodings: HMAC-SHA1 and HMAC-SHA256 from the `hmac` crate,
//! pre-keyed once per key, and base32 (native) and hex (prvs) from `data-encoding`.

use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use sha2::Sha256;

/// A pre-keyed HMAC (the `hmac` crate's): the key's pads are hashed once, when the key is
/// loaded, and each tag starts from a copy of that state.
#[derive(Clone)]
pub(super) struct Prekeyed<H>(H);

/// Octets gathered on the stack before they are hashed: a whole tag input, in practice.
pub(super) const GATHER: usize = 128;

impl<H: Mac + KeyInit + Clone> Prekeyed<H> {
    pub(super) fn new(secret: &[u8]) -> Self {
        Prekeyed(<H as KeyInit>::new_from_slice(secret).expect("HMAC takes a key of any length"))
    }

    /// The first `M` octets of the MAC of `parts` joined, ASCII-lower-cased (bytes above
    /// 0x7F untouched) if `lower`. The parts are gathered on the stack and hashed in one
    /// piece when they fit (the usual tag), in `GATHER`-octet pieces when they do not.
    pub(super) fn mac<const M: usize>(&self, parts: [&[u8]; 4], lower: bool) -> [u8; M] {
        let mut mac = self.0.clone();
        let mut buf = [0u8; GATHER];
        let mut at = 0;
        for mut p in parts {
            while !p.is_empty() {
                let n = (GATHER - at).min(p.len());
                buf[at..at + n].copy_from_slice(&p[..n]);
                (at, p) = (at + n, &p[n..]);
                if at == GATHER {
                    mac.update(lowered(&mut buf, lower));
                    at = 0;
                }
            }
        }
        mac.update(&lowered(&mut buf, lower)[..at]);
        let tag = mac.finalize().into_bytes();
        let mut out = [0u8; M];
        out.copy_from_slice(&tag[..M]);
        out
    }
}

/// `buf` ASCII-lower-cased in place if `lower`: the whole buffer at once, so it vectorises.
pub(super) fn lowered(buf: &mut [u8; GATHER], lower: bool) -> &[u8] {
    if lower {
        for b in buf.iter_mut() {
            *b |= (b.wrapping_sub(b'A') < 26) as u8 * 0x20;
        }
    }
    buf
}

/// Key material for one key id, pre-keyed when the key set is loaded.
#[derive(Clone)]
pub struct TagKey {
    pub(super) sha1: Prekeyed<Hmac<Sha1>>,
    pub(super) sha256: Prekeyed<Hmac<Sha256>>,
}

impl std::fmt::Debug for TagKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TagKey(..)")
    }
}

impl TagKey {
    pub fn new(secret: &[u8]) -> Self {
        TagKey {
            sha1: Prekeyed::new(secret),
            sha256: Prekeyed::new(secret),
        }
    }

    /// First 3 bytes of HMAC-SHA1(secret, K ‖ DDD ‖ local@domain), address as written.
    pub(super) fn prvs_hash(&self, kddd: &[u8; 4], local: &str, domain: &str) -> [u8; 3] {
        self.sha1.mac([kddd, local.as_bytes(), b"@", domain.as_bytes()], false)
    }

    /// First 5 bytes of HMAC-SHA256(secret, K ‖ DDD ‖ canonical address). The canonical
    /// address is lower case throughout (an IDNA A-label is too), so the MAC lower-cases
    /// all it hashes.
    pub(super) fn native_hash(&self, kddd: &[u8; 4], local: &str, canonical_domain: &str) -> [u8; 5] {
        self.sha256.mac([kddd, local.as_bytes(), b"@", canonical_domain.as_bytes()], true)
    }
}

pub(super) fn kddd(key_id: u8, day: u16) -> [u8; 4] {
    [
        b'0' + key_id,
        b'0' + (day / 100) as u8,
        b'0' + (day / 10 % 10) as u8,
        b'0' + (day % 10) as u8,
    ]
}

/// The native hash's base32 (RFC 4648 §6, no padding): written in lower case, read in
/// either.
pub(super) static BASE32: std::sync::LazyLock<data_encoding::Encoding> = std::sync::LazyLock::new(|| {
    let mut spec = data_encoding::Specification::new();
    spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
    spec.translate.from.push_str("ABCDEFGHIJKLMNOPQRSTUVWXYZ");
    spec.translate.to.push_str("abcdefghijklmnopqrstuvwxyz");
    spec.encoding().expect("a valid base32 specification")
});

/// The prvs hash's hex: written in lower case (as Exim does), read in either.
pub(super) const HEX: data_encoding::Encoding = data_encoding::HEXLOWER_PERMISSIVE;

pub(super) fn base32_40(bytes: &[u8; 5]) -> [u8; 8] {
    let mut out = [0u8; 8];
    BASE32.encode_mut(bytes, &mut out);
    out
}

/// Exactly 8 base32 characters, either case.
pub(super) fn unbase32_40(chars: &[u8]) -> Option<[u8; 5]> {
    let mut out = [0u8; 5];
    (chars.len() == 8 && BASE32.decode_mut(chars, &mut out).is_ok()).then_some(out)
}

pub(super) fn hex_3(bytes: &[u8; 3]) -> [u8; 6] {
    let mut out = [0u8; 6];
    HEX.encode_mut(bytes, &mut out);
    out
}

/// Exactly 6 hex digits, either case.
pub(super) fn unhex_3(chars: &[u8]) -> Option<[u8; 3]> {
    let mut out = [0u8; 3];
    (chars.len() == 6 && HEX.decode_mut(chars, &mut out).is_ok()).then_some(out)
}
