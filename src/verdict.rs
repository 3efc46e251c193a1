//! The verdict on one recipient of a bounce, shared by the verifying modes (the proxy and
//! the Postfix policy service): valid tags, exemptions, and what is backscatter.

use crate::address::DomainSet;
use crate::keys::KeySet;
use crate::tag::{self, Verdict};

/// A recipient's standing in a null-sender transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxVerdict {
    BounceOk,
    Backscatter,
}

impl TxVerdict {
    /// The name in logs and headers.
    pub fn name(self) -> &'static str {
        match self {
            TxVerdict::BounceOk => "bounce-ok",
            TxVerdict::Backscatter => "backscatter",
        }
    }
}

/// How one recipient was judged, and the path to relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgement {
    pub verdict: TxVerdict,
    /// Stable name for logs: valid, exempt-postmaster, untagged, expired, ...
    pub reason: &'static str,
    /// The address without its tag, if the tag is authentic (valid or expired).
    pub stripped: Option<String>,
    pub key: Option<u8>,
    pub days_left: Option<i32>,
}

/// Judge one recipient of a bounce (also used for non-bounces, for the stripping).
pub fn judge(path: &str, keys: &KeySet, protected: &DomainSet, today: i64) -> Judgement {
    let ok = |reason| Judgement {
        verdict: TxVerdict::BounceOk,
        reason,
        stripped: None,
        key: None,
        days_left: None,
    };
    // RFC 5321 §4.5.1: <Postmaster> without a domain is always accepted.
    if path.eq_ignore_ascii_case("postmaster") {
        return ok("exempt-postmaster");
    }
    // Parsed once: the tag check and the exemptions below share it.
    let Ok(addr) = crate::address::parse(path) else {
        // Not an address: the downstream will say so.
        return ok("not-an-address");
    };
    let domain = addr.domain;
    let verdict = match tag::classify(path, addr) {
        tag::Parsed::Untagged(a) => {
            if !protected.contains(domain) {
                return ok("not-protected");
            }
            if a.local.eq_ignore_ascii_case("postmaster") || a.local.eq_ignore_ascii_case("abuse") {
                return ok("exempt-role");
            }
            if tag::is_srs(&a.local) {
                return ok("exempt-srs");
            }
            // The signer leaves these untagged (either scheme), so bounces to them are real.
            if tag::too_long_to_sign(&a.local, tag::Scheme::Native) {
                return ok("exempt-too-long");
            }
            Verdict::Untagged
        }
        tag::Parsed::Malformed(why) => Verdict::Malformed(why),
        tag::Parsed::Tagged(t) => tag::check(t, today, |k| keys.get(k)),
    };
    if let Verdict::Valid(c) | Verdict::Expired(c) = &verdict {
        let valid = verdict.is_valid();
        return Judgement {
            verdict: if valid { TxVerdict::BounceOk } else { TxVerdict::Backscatter },
            reason: if valid { "valid" } else { "expired" },
            stripped: Some(c.original.to_string()),
            key: Some(c.key_id),
            days_left: Some(c.days_left),
        };
    }
    if !protected.contains(domain) {
        return ok("not-protected");
    }
    Judgement {
        verdict: TxVerdict::Backscatter,
        reason: verdict.reason(),
        stripped: None,
        key: match verdict {
            Verdict::UnknownKey(k) => Some(k),
            _ => None,
        },
        days_left: None,
    }
}
