//! Per-domain key stores (`[domain_keys]`): a relay that signs for many customer domains
//! gives each its own keys, so a customer can verify on its own MX without the relay's
//! master key. The store of an address's domain, or of its nearest parent domain that has
//! one, signs and verifies its tags; `keys_dir` serves every other domain.

use std::path::Path;

use crate::core::address;
use crate::core::config::Config;
use crate::core::tag::{KeyLookup, TagKey};

use super::{KeyError, KeySet, KeyStore};

/// A value for every domain: one per configured domain, a default for the rest. Domains
/// are kept canonical (lower case, A-labels), longest first, so the first match is the
/// nearest.
#[derive(Debug, Clone, Default)]
pub struct ByDomain<T> {
    pub default: T,
    domains: Vec<(String, T)>,
}

impl<T> ByDomain<T> {
    pub fn new(default: T) -> ByDomain<T> {
        ByDomain {
            default,
            domains: Vec::new(),
        }
    }

    /// Add `value` for `domain` (already validated by the configuration).
    pub fn insert(&mut self, domain: &str, value: T) -> Result<(), String> {
        let d = address::canonical_domain(domain)
            .map_err(|e| format!("{domain:?}: {e}"))?
            .into_owned();
        if self.domains.iter().any(|(e, _)| *e == d) {
            return Err(format!("{domain:?} is listed twice"));
        }
        self.domains.push((d, value));
        self.domains.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Ok(())
    }

    /// The value for `domain`: its own, its nearest parent's, or the default. A domain
    /// that cannot be read gets the default (it names no configured domain).
    pub fn get(&self, domain: &str) -> &T {
        self.lookup(domain).1
    }

    /// [`ByDomain::get`], with the configured domain that matched (`None`: the default).
    pub fn lookup(&self, domain: &str) -> (Option<&str>, &T) {
        if self.domains.is_empty() {
            return (None, &self.default);
        }
        let Ok(d) = address::canonical_domain(domain) else {
            return (None, &self.default);
        };
        self.domains
            .iter()
            .find(|(e, _)| d.ends_with(e.as_str()) && (d.len() == e.len() || d.as_bytes()[d.len() - e.len() - 1] == b'.'))
            .map_or((None, &self.default), |(e, v)| (Some(e.as_str()), v))
    }

    /// The configured domains and their values, the default first (domain `None`).
    pub fn iter(&self) -> impl Iterator<Item = (Option<&str>, &T)> {
        std::iter::once((None, &self.default)).chain(self.domains.iter().map(|(d, v)| (Some(d.as_str()), v)))
    }

    /// The same domains with values made from these.
    pub fn try_map<U, E>(&self, mut f: impl FnMut(Option<&str>, &T) -> Result<U, E>) -> Result<ByDomain<U>, E> {
        Ok(ByDomain {
            default: f(None, &self.default)?,
            domains: self
                .domains
                .iter()
                .map(|(d, v)| Ok((d.clone(), f(Some(d), v)?)))
                .collect::<Result<_, E>>()?,
        })
    }
}

/// Every key set a signer or verifier uses.
pub type Keyring = ByDomain<KeySet>;

impl From<KeySet> for Keyring {
    fn from(set: KeySet) -> Keyring {
        ByDomain::new(set)
    }
}

impl<'k> KeyLookup<'k> for &'k Keyring {
    fn key(&self, domain: &str, id: u8) -> Option<&'k TagKey> {
        self.get(domain).get(id)
    }
}

/// Where the key sets come from: `keys_dir` and each `[domain_keys]` directory.
pub type KeyStores = ByDomain<KeyStore>;

impl KeyStores {
    /// The stores of `config`, with `keys_dir` (the command line's, or the config's) as
    /// the default.
    pub fn from_config(config: &Config, keys_dir: &Path) -> Result<KeyStores, KeyError> {
        let group = config.key_group.as_deref();
        let mut stores = ByDomain::new(KeyStore::new(keys_dir, group)?);
        for (domain, dir) in &config.domain_keys {
            stores
                .insert(domain, KeyStore::new(dir, group)?)
                .map_err(|reason| KeyError::Corrupt { path: dir.clone(), reason })?;
        }
        Ok(stores)
    }

    /// Load every store, or fail and change nothing.
    pub fn load(&self) -> Result<Keyring, KeyError> {
        self.try_map(|_, store| store.load())
    }

    /// What a daemon starts with: every store holds a key (a daemon never invents one).
    pub fn startup(&self) -> Result<Keyring, KeyError> {
        self.try_map(|_, store| super::startup_keys(store))
    }

    /// One change stamp over every store's directory.
    pub fn stamp(&self) -> Vec<(String, std::time::SystemTime, u64)> {
        self.iter()
            .flat_map(|(domain, store)| {
                let tag = domain.unwrap_or("").to_string();
                store
                    .stamp()
                    .into_iter()
                    .map(move |(name, t, ino)| (format!("{tag}/{name}"), t, ino))
            })
            .collect()
    }

    /// The directories, for log lines.
    pub fn describe(&self) -> String {
        self.iter()
            .map(|(_, s)| s.dir().display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_domain_wins() {
        let mut m = ByDomain::new(0);
        m.insert("Customer.Example", 1).unwrap();
        m.insert("eu.customer.example", 2).unwrap();
        m.insert("bücher.example", 3).unwrap();
        assert_eq!(*m.get("customer.example"), 1);
        assert_eq!(*m.get("CUSTOMER.EXAMPLE"), 1);
        assert_eq!(*m.get("mail.customer.example"), 1);
        assert_eq!(*m.get("eu.customer.example"), 2);
        assert_eq!(*m.get("x.eu.customer.example"), 2);
        assert_eq!(*m.get("xn--bcher-kva.example"), 3);
        assert_eq!(*m.get("BÜCHER.example"), 3);
        // A suffix is not a parent.
        assert_eq!(*m.get("notcustomer.example"), 0);
        assert_eq!(*m.get("example"), 0);
        assert_eq!(*m.get("other.example"), 0);
        assert_eq!(*m.get("[192.0.2.1]"), 0);
        assert!(m.insert("customer.EXAMPLE", 4).is_err());
        let names: Vec<_> = m.iter().map(|(d, v)| (d.map(str::to_string), *v)).collect();
        assert_eq!(names[0], (None, 0));
        assert_eq!(names.len(), 4);
    }
}
