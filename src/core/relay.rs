//! Relay control for gateway mode: which recipients a client the gateway does not trust
//! may name.
//!
//! The MTA behind a gateway sees every connection come from the gateway, which it trusts,
//! so it relays whatever its own rewriting turns into a foreign address. MTAs resolve
//! more than `local@domain`: the percent hack (`bob%evil.test@example.com`, Postfix
//! `allow_percent_hack`, Sendmail), UUCP bang paths (`evil.test!bob@example.com`, Postfix
//! `swap_bangpath`, qmail), source routes (`@example.com:bob@evil.test`, RFC 5321 says
//! ignore them, not every MTA does), a quoted local part holding an `@`
//! (`"bob@evil.test"@example.com`, which Sendmail and some appliances re-parse), and a
//! trailing dot (`bob@example.com.`, an absolute name some MTAs resolve and compare
//! differently). So an untrusted client gets only plain addresses at a relay domain
//! through, and the routing syntax of any MTA nowhere: fail closed, whatever the MTA
//! behind would have made of it.

use crate::core::address::{self, DomainSet, Path};

/// Why a recipient may not be relayed for an untrusted client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not an address to deliver here (`554 5.7.1`); the reason names the form.
    Denied(&'static str),
    /// Not readable as an address at all (`501 5.1.3`).
    Unreadable,
}

impl Refusal {
    /// The reason, for the log line.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Denied(r) => r,
            Refusal::Unreadable => "unreadable-address",
        }
    }
}

/// Judge an RCPT path (the text between the angle brackets) from a client that may not
/// relay: `Ok` only for a plain `local@domain` at one of `relay_domains` (or the bare
/// `<Postmaster>` RFC 5321 §4.5.1 requires), with no routing syntax in it.
pub fn check(raw: &str, relay_domains: &DomainSet) -> Result<(), Refusal> {
    let normal = match address::normalize_path(raw) {
        Ok(Path::Address(a)) => a,
        // A bare local part is delivered at whatever domain the MTA appends: only the
        // postmaster, which every MTA must take for itself.
        Ok(Path::Bare(local)) if local == raw && local.eq_ignore_ascii_case("postmaster") => return Ok(()),
        Ok(Path::Bare(_)) => return Err(Refusal::Denied("no-domain")),
        Ok(Path::Null) | Err(_) => return Err(Refusal::Unreadable),
    };
    if normal != raw {
        // normalize_path dropped something the MTA might read its own way.
        return Err(Refusal::Denied(if raw.trim_start().starts_with('@') {
            "source-route"
        } else if raw.trim_end().ends_with('.') {
            "trailing-dot"
        } else {
            "comment-or-space"
        }));
    }
    let Ok(a) = address::parse(&normal) else {
        return Err(Refusal::Unreadable);
    };
    if a.domain.starts_with('[') {
        return Err(Refusal::Denied("address-literal"));
    }
    // Checked on the unquoted local part: `"bob%evil"` and `bob\%evil` are the same.
    if a.local.contains('@') {
        return Err(Refusal::Denied("at-in-local-part"));
    }
    if a.local.contains('%') {
        return Err(Refusal::Denied("percent-hack"));
    }
    if a.local.contains('!') {
        return Err(Refusal::Denied("bang-path"));
    }
    if !relay_domains.contains(a.domain) {
        return Err(Refusal::Denied("not-a-relay-domain"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domains() -> DomainSet {
        DomainSet::new(["example.com", ".example.org"]).unwrap()
    }

    #[test]
    fn plain_addresses_at_relay_domains_pass() {
        let d = domains();
        for ok in [
            "alice@example.com",
            "Alice@EXAMPLE.COM",
            "prvs=1234abcdef=alice@example.com",
            "alice+list@example.com",
            "\"alice smith\"@example.com",
            "bob@mail.example.org",
            "postmaster",
            "Postmaster",
            "postmaster@example.com",
        ] {
            assert_eq!(check(ok, &d), Ok(()), "{ok}");
        }
    }

    #[test]
    fn every_routing_form_is_refused() {
        let d = domains();
        let cases = [
            ("bob@remote.test", "not-a-relay-domain"),
            ("bob@example.org", "not-a-relay-domain"),
            ("bob@example.com.evil.test", "not-a-relay-domain"),
            ("bob@evilexample.com", "not-a-relay-domain"),
            ("bob%evil.test@example.com", "percent-hack"),
            ("\"bob%evil.test\"@example.com", "percent-hack"),
            ("evil.test!bob@example.com", "bang-path"),
            ("\"bob@evil.test\"@example.com", "at-in-local-part"),
            ("\"bob\\@evil.test\"@example.com", "at-in-local-part"),
            ("@example.com:bob@evil.test", "source-route"),
            ("@example.com,@example.com:bob@example.com", "source-route"),
            ("bob@example.com.", "trailing-dot"),
            ("bob@example.com..", "trailing-dot"),
            ("bob@example.com (comment)", "comment-or-space"),
            (" bob@example.com", "comment-or-space"),
            ("bob@[127.0.0.1]", "address-literal"),
            ("bob@[IPv6:::1]", "address-literal"),
            ("bob", "no-domain"),
            ("\"postmaster\"", "no-domain"),
        ];
        for (raw, why) in cases {
            assert_eq!(check(raw, &d), Err(Refusal::Denied(why)), "{raw}");
        }
        for unreadable in [
            "",
            "bob@",
            "@example.com",
            "a@b@example.com",
            "bob@exa mple.com",
            "\"open@example.com",
        ] {
            assert!(check(unreadable, &d).is_err(), "{unreadable}");
        }
        assert_eq!(check("", &d), Err(Refusal::Unreadable));
    }
}
