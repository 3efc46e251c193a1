//! The signing policy shared by every mode: which envelope senders get a tag, and the tag.

use crate::core::address::{self, AddressError, DomainSet};
use crate::core::config::Config;
use crate::core::keys::{ByDomain, Key, KeyError, Keyring};
use crate::core::tag::{self, Scheme, Skip, Syntax};

/// What happened to one sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Signed(String),
    /// Left unchanged, and why.
    Skipped(Skip),
    /// Not an address we can read: left unchanged for the MTA to judge.
    Invalid(AddressError),
    /// Its domain's key store (`[domain_keys]`, or `keys_dir`) has no active key: it is
    /// not signed with another store's key, which that domain's MX could not check.
    NoKey,
}

/// Signs senders of the configured domains with the active key of their domain's store.
#[derive(Debug, Clone)]
pub struct Signer {
    keys: ByDomain<Option<Key>>,
    scheme: Scheme,
    syntax: Syntax,
    lifetime: u16,
    domains: DomainSet,
}

impl Signer {
    /// A signer if any store has an active key; the others' domains get
    /// [`Outcome::NoKey`] (see [`Signer::keyless`]).
    pub fn new(keys: impl Into<Keyring>, config: &Config) -> Result<Self, KeyError> {
        let keys = keys.into();
        let active: ByDomain<Option<Key>> = keys.try_map(|_, set| Ok::<_, KeyError>(set.active().cloned()))?;
        if active.iter().all(|(_, k)| k.is_none()) {
            return Err(KeyError::NoActiveKey);
        }
        Ok(Signer {
            keys: active,
            scheme: config.scheme,
            syntax: config.syntax(),
            lifetime: config.lifetime_days,
            domains: config.sign_domain_set(),
        })
    }

    /// The stores without an active key: `[domain_keys]` domains, and `None` for
    /// `keys_dir`. For a warning when the state is built.
    pub fn keyless(&self) -> Vec<Option<&str>> {
        self.keys.iter().filter(|(_, k)| k.is_none()).map(|(d, _)| d).collect()
    }

    /// A warning naming the stores without an active key, if there are any.
    pub fn keyless_warning(&self) -> Option<String> {
        let names: Vec<String> = self
            .keyless()
            .into_iter()
            .map(|d| d.map_or_else(|| "keys_dir".to_string(), |d| format!("the [domain_keys] store of {d}")))
            .collect();
        (!names.is_empty()).then(|| format!("no active key in {}: senders there are not signed", names.join(", ")))
    }

    /// Sign `sender` (bare `local@domain`, no angle brackets) as of Unix day `today`.
    pub fn sign(&self, sender: &str, today: i64) -> Outcome {
        if sender.is_empty() {
            return Outcome::Skipped(Skip::NullSender);
        }
        let addr = match address::parse(sender) {
            Ok(a) => a,
            Err(e) => return Outcome::Invalid(e),
        };
        if !self.domains.contains(addr.domain) {
            return Outcome::Skipped(Skip::ForeignDomain);
        }
        if let Some(skip) = tag::structural_skip(&addr, self.scheme) {
            return Outcome::Skipped(skip);
        }
        let Some(key) = self.keys.get(addr.domain) else {
            return Outcome::NoKey;
        };
        match tag::sign(
            &key.tag,
            key.info.id,
            self.scheme,
            self.syntax,
            &addr,
            tag::day_stamp(today, self.lifetime),
        ) {
            Ok(s) => Outcome::Signed(s),
            Err(e) => Outcome::Invalid(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::keys::KeySet;

    pub fn signer(domains: &[&str]) -> Signer {
        let key = crate::core::keys::test_key();
        let config = Config {
            sign_domains: domains.iter().map(|d| d.to_string()).collect(),
            ..Config::default()
        };
        Signer::new(KeySet::from_keys(vec![key]).unwrap(), &config).unwrap()
    }

    #[test]
    fn signs_only_local_domains() {
        let s = signer(&["example.com"]);
        assert!(matches!(s.sign("alice@Example.com", 20_780), Outcome::Signed(t) if t.starts_with("prvs=2787")));
        assert_eq!(s.sign("alice@example.org", 20_780), Outcome::Skipped(Skip::ForeignDomain));
        assert_eq!(s.sign("", 20_780), Outcome::Skipped(Skip::NullSender));
        assert_eq!(s.sign("SRS0=a=b=c=d@example.com", 20_780), Outcome::Skipped(Skip::Srs));
        assert_eq!(
            s.sign("prvs=2787abcdefgh=a@example.com", 20_780),
            Outcome::Skipped(Skip::AlreadyTagged)
        );
        assert!(matches!(s.sign("nope", 20_780), Outcome::Invalid(_)));
    }
}
