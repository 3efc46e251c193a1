//! The verdict on one recipient of a bounce, shared by the verifying modes (the proxy, the
//! Postfix policy service, `batv check`): valid tags, exemptions, and what is backscatter.
//!
//! Fail closed: the recipient is judged as the MTA will resolve it (comments, white space
//! and trailing dots gone, see [`address::normalize_path`]), and what cannot be read that
//! way is refused, never waved through for the MTA to read its own way.

use crate::core::address::{self, DomainSet, Path};
use crate::core::config::Config;
use crate::core::keys::Keyring;
use crate::core::tag::{self, Scheme, Schemes, Verdict};

/// A recipient's standing in a null-sender transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxVerdict {
    BounceOk,
    Backscatter,
    /// Not an address batv can read as the MTA would: refused on its own (501 5.1.3),
    /// it never sets a transaction's verdict.
    Unreadable,
}

impl TxVerdict {
    /// The name in logs and headers.
    pub fn name(self) -> &'static str {
        match self {
            TxVerdict::BounceOk => "bounce-ok",
            TxVerdict::Backscatter => "backscatter",
            TxVerdict::Unreadable => "unreadable",
        }
    }
}

/// What the configuration says about judging recipients: the same in every mode.
#[derive(Debug, Clone)]
pub struct Rules {
    pub protected: DomainSet,
    /// `verify_schemes`.
    pub schemes: Schemes,
    /// The signer's scheme, which decides what it leaves untagged as too long.
    pub sign_scheme: Scheme,
    /// `recipient_delimiter`: the characters that start an address extension.
    pub delimiters: String,
}

impl Rules {
    pub fn from_config(config: &Config) -> Rules {
        Rules {
            protected: config.protected_domain_set(),
            schemes: config.accepted_schemes(),
            sign_scheme: config.scheme,
            delimiters: config.recipient_delimiter.clone(),
        }
    }

    /// Is `local` exempt as one the signer leaves untagged for its length? Not if an
    /// address extension makes it long and the mailbox before the extension is one the
    /// signer tags: the MTA delivers `bob+<50 octets>` to bob (Postfix
    /// `recipient_delimiter`, Exim `local_part_suffix`), and bob's mail is tagged.
    pub fn too_long_exempt(&self, local: &str) -> bool {
        if !tag::too_long_to_sign(local, self.sign_scheme) {
            return false;
        }
        match local.find(|c| self.delimiters.contains(c)) {
            Some(i) if i > 0 => tag::too_long_to_sign(&local[..i], self.sign_scheme),
            _ => true,
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
    /// The path to relay instead of the client's, if it differs: the stripped address,
    /// or the address as normalised (so the MTA resolves what was judged).
    pub relay: Option<String>,
    pub key: Option<u8>,
    pub days_left: Option<i32>,
}

impl Judgement {
    fn new(verdict: TxVerdict, reason: &'static str) -> Judgement {
        Judgement {
            verdict,
            reason,
            stripped: None,
            relay: None,
            key: None,
            days_left: None,
        }
    }

    /// An invalid tag that is not ours: guessing, counted against `max_failed_tags`.
    /// (An expired tag was once ours.)
    pub fn failed_tag(&self) -> bool {
        matches!(self.reason, "bad-signature" | "unknown-key" | "malformed")
    }
}

/// Judge one recipient path (the text between the brackets) of a bounce; also used for
/// other senders, for the stripping.
pub fn judge(path: &str, rules: &Rules, keys: &Keyring, today: i64) -> Judgement {
    let normal = match address::normalize_path(path) {
        Ok(Path::Address(a)) => a,
        // RFC 5321 §4.5.1: <Postmaster> without a domain is always accepted.
        Ok(Path::Bare(local)) if local.trim_matches('"').eq_ignore_ascii_case("postmaster") => {
            let mut j = Judgement::new(TxVerdict::BounceOk, "exempt-postmaster");
            j.relay = (local != path).then(|| local.into_owned());
            return j;
        }
        // A local part alone is delivered at the MTA's own domain (Postfix appends
        // $myorigin), and an empty recipient is no address: neither can be judged.
        Ok(Path::Bare(_) | Path::Null) | Err(_) => return Judgement::new(TxVerdict::Unreadable, "unreadable-address"),
    };
    let mut j = judge_address(&normal, rules, keys, today);
    if j.relay.is_none() && normal != path {
        j.relay = Some(normal.into_owned());
    }
    j
}

/// [`judge`] of a normalised address.
fn judge_address(path: &str, rules: &Rules, keys: &Keyring, today: i64) -> Judgement {
    let ok = |reason| Judgement::new(TxVerdict::BounceOk, reason);
    let Ok(addr) = address::parse(path) else {
        return Judgement::new(TxVerdict::Unreadable, "unreadable-address");
    };
    let domain = addr.domain;
    if domain.starts_with('[') && !addr.local.eq_ignore_ascii_case("postmaster") {
        // An address literal names a host, not a domain: the MTA delivers one of its own
        // addresses locally (Postfix resolves [its IP] to local), protected or not. No
        // tag is ever made for one.
        return Judgement::new(TxVerdict::Backscatter, "address-literal");
    }
    let verdict = match tag::classify(path, addr) {
        tag::Parsed::Untagged(a) => {
            if !rules.protected.contains(domain) {
                return ok("not-protected");
            }
            if a.local.eq_ignore_ascii_case("postmaster") || a.local.eq_ignore_ascii_case("abuse") {
                return ok("exempt-role");
            }
            if tag::is_srs(&a.local) {
                return ok("exempt-srs");
            }
            // The signer leaves these untagged, so bounces to them are real.
            if rules.too_long_exempt(&a.local) {
                return ok("exempt-too-long");
            }
            Verdict::Untagged
        }
        tag::Parsed::Malformed(why) => Verdict::Malformed(why),
        tag::Parsed::Tagged(t) => tag::check(t, today, rules.schemes, keys),
    };
    if let Verdict::Valid(c) | Verdict::Expired(c) = &verdict {
        let valid = verdict.is_valid();
        let mut j = Judgement::new(
            if valid { TxVerdict::BounceOk } else { TxVerdict::Backscatter },
            if valid { "valid" } else { "expired" },
        );
        j.stripped = Some(c.original.to_string());
        j.relay = j.stripped.clone();
        j.key = Some(c.key_id);
        j.days_left = Some(c.days_left);
        return j;
    }
    if !rules.protected.contains(domain) {
        return ok("not-protected");
    }
    let mut j = Judgement::new(TxVerdict::Backscatter, verdict.reason());
    if let Verdict::UnknownKey(k) = verdict {
        j.key = Some(k);
    }
    j
}

/// Is this MAIL FROM path (between the brackets) the null sender? `None` if it cannot
/// be read at all: an MTA might take it as null, so a verifier refuses it.
pub fn null_sender(path: &str) -> Option<bool> {
    match address::normalize_path(path) {
        Ok(Path::Null) => Some(true),
        Ok(_) => Some(false),
        Err(_) => None,
    }
}

/// Monitor mode's mark on a bounce it let through (the `X-BATV:` value): the verdict it
/// would have given, with each verdict's count when the recipients had both. `accepted`
/// counts bounce-ok and backscatter recipients; the reasons are each kind's first.
pub fn monitor_mark(accepted: [u32; 2], ok_reason: &str, backscatter_reason: &str) -> String {
    let [ok, bad] = accepted;
    let (v, reason) = if bad > 0 {
        (TxVerdict::Backscatter, backscatter_reason)
    } else {
        (TxVerdict::BounceOk, ok_reason)
    };
    let mixed = if ok > 0 && bad > 0 {
        format!("; recipients=bounce-ok:{ok},backscatter:{bad}")
    } else {
        String::new()
    };
    format!("{}; reason={reason}; mode=monitor{mixed}", v.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            protected: DomainSet::new(["example.com"]).unwrap(),
            schemes: Schemes::of([Scheme::Native]),
            sign_scheme: Scheme::Native,
            delimiters: "+".into(),
        }
    }

    #[test]
    fn what_the_mta_would_deliver_is_judged() {
        let keys = Keyring::default();
        let r = rules();
        let j = |p: &str| {
            let j = judge(p, &r, &keys, 20_000);
            (j.verdict, j.reason)
        };
        use TxVerdict::*;
        for p in [
            "bob@example.com",
            "bob@example.com.",
            "bob @example.com",
            " bob@example.com",
            "bob@example.com (Bob)",
            "BOB@EXAMPLE.COM",
            "\"bob\"@example.com",
        ] {
            assert_eq!(j(p), (Backscatter, "untagged"), "{p:?}");
        }
        for p in [
            "bob",
            "\"bob@example.com\"",
            "bob@example.com,",
            "bob smith@example.com",
            "",
            "@example.com",
        ] {
            assert_eq!(j(p), (Unreadable, "unreadable-address"), "{p:?}");
        }
        assert_eq!(j("bob@[192.0.2.1]"), (Backscatter, "address-literal"));
        assert_eq!(j("Postmaster"), (BounceOk, "exempt-postmaster"));
        assert_eq!(j("\"Postmaster\""), (BounceOk, "exempt-postmaster"));
        assert_eq!(j("postmaster@[192.0.2.1]"), (BounceOk, "not-protected"));
        assert_eq!(j("postmaster (x)"), (BounceOk, "exempt-postmaster"));
        assert_eq!(j("abuse@example.com."), (BounceOk, "exempt-role"));
        assert_eq!(j("bob@example.org"), (BounceOk, "not-protected"));
        // The MTA gets the address as judged.
        assert_eq!(judge("bob@example.org.", &r, &keys, 0).relay.as_deref(), Some("bob@example.org"));
        assert_eq!(judge("bob@example.org", &r, &keys, 0).relay, None);
    }

    #[test]
    fn a_long_extension_is_no_exemption() {
        let keys = Keyring::default();
        let mut r = rules();
        let long = format!("bob+{}@example.com", "x".repeat(50));
        assert_eq!(judge(&long, &r, &keys, 0).reason, "untagged");
        // A mailbox too long to sign before its extension stays exempt.
        let mailbox = format!("{}+x@example.com", "b".repeat(50));
        assert_eq!(judge(&mailbox, &r, &keys, 0).reason, "exempt-too-long");
        let plain = format!("{}@example.com", "b".repeat(50));
        assert_eq!(judge(&plain, &r, &keys, 0).reason, "exempt-too-long");
        // Without a delimiter, the whole local part is the mailbox.
        r.delimiters.clear();
        assert_eq!(judge(&long, &r, &keys, 0).reason, "exempt-too-long");
        // The signer's own scheme sets the length: prvs tags are two octets shorter.
        r.sign_scheme = Scheme::Prvs;
        let mid = format!("{}@example.com", "b".repeat(47));
        assert_eq!(judge(&mid, &r, &keys, 0).reason, "untagged");
        r.sign_scheme = Scheme::Native;
        assert_eq!(judge(&mid, &r, &keys, 0).reason, "exempt-too-long");
    }

    #[test]
    fn null_sender_spellings() {
        for p in ["", " ", "()", "\"\"", " (comment) "] {
            assert_eq!(null_sender(p), Some(true), "{p:?}");
        }
        assert_eq!(null_sender("bob@example.com"), Some(false));
        assert_eq!(null_sender("bob"), Some(false));
        assert_eq!(null_sender("(unterminated"), None);
        assert_eq!(null_sender("a b@c"), None);
    }
}
