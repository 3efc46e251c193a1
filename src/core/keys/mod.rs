//! The key store: a directory with a manifest (`manifest.toml`: ids, states, times) and one
//! secret file per key (`key-N.secret`).
//!
//! This file holds the key types and the public API (secrets, key sets, errors, ids); the
//! directory and how it is written are in `store`, the owner and mode checks in `perms`.

use std::io;
use std::path::{Path, PathBuf};

use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::core::tag::TagKey;
use crate::core::time;

mod perms;
mod ring;
mod store;

pub use ring::{ByDomain, KeyStores, Keyring};
pub use store::{Change, KeyStore, MANIFEST};

/// Retired keys are kept this long: the longest a tag can stay valid (31 days ahead plus
/// a day of grace).
pub const PRUNE_AFTER_DAYS: i64 = 32;
/// A tag is an HMAC of the address, so one signed address lets anyone test guesses of the
/// secret offline: a short secret falls to exhaustive search, 16 random bytes do not.
pub const MIN_SECRET_LEN: usize = 16;
/// One SHA-256 block: longer keys would be hashed first, which adds nothing.
pub const MAX_SECRET_LEN: usize = 64;
/// The message of the fingerprint's HMAC: no table of plain hashes of likely secrets (or
/// of Exim secrets used elsewhere) matches it. (A guess can still be tested against it, as
/// against any signed address: what protects a secret is its length.)
const FINGERPRINT_LABEL: &[u8] = b"batv key fingerprint";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("keys directory {0} does not exist (create it with `batv keys init`)")]
    MissingDir(PathBuf),
    #[error("{0} is not a directory")]
    NotADir(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: corrupt key store: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: key file is accessible to everyone (mode {mode:04o}); run `chmod 600 {path}` (or 640 with key_group)")]
    WorldAccessible { path: PathBuf, mode: u32 },
    #[error("{path}: writable by others than its owner (mode {mode:04o}); run `chmod go-w {path}`")]
    GroupWritable { path: PathBuf, mode: u32 },
    #[error("{path}: key file is readable by group {group} (mode {mode:04o}) but {}; run {}",
        .key_group.as_ref().map_or_else(|| "key_group is not set".to_string(), |g| format!("key_group is {g:?}")),
        .key_group.as_ref().map_or_else(
            || format!("`chmod 600 {}` or set key_group = {group:?}", path.display()),
            |g| format!("`chmod 600 {}` or `chgrp {g} {}`", path.display(), path.display())
        ))]
    GroupReadable {
        path: PathBuf,
        mode: u32,
        /// The file's group, by name where it has one.
        group: String,
        key_group: Option<String>,
    },
    #[error("{path}: key file is owned by {owner}, neither root nor the user batv runs as; run `chown root {path}`")]
    ForeignFileOwner { path: PathBuf, owner: String },
    #[error("{path}: keys directory is writable by {by} (mode {mode:04o}), who could plant a key; run `chmod go-w {path}`")]
    DirWritable { path: PathBuf, mode: u32, by: &'static str },
    #[error("{path}: keys directory is owned by {owner}, who is neither root nor the user batv runs as and could plant a key; run `chown root {path}`")]
    ForeignDirOwner { path: PathBuf, owner: String },
    #[error("{0}: empty secret")]
    EmptySecret(PathBuf),
    #[error("{path}: secret is {len} bytes; a key needs {MIN_SECRET_LEN} to {MAX_SECRET_LEN} (shorter ones can be guessed): move this store aside and make new keys (`batv keys init`, or `batv keys import` a longer secret)")]
    ShortSecret { path: PathBuf, len: usize },
    #[error("secret must be {MIN_SECRET_LEN} to {MAX_SECRET_LEN} bytes, got {0}")]
    BadSecretLength(usize),
    #[error("no key with id {0}")]
    UnknownKey(u8),
    #[error("key id must be a digit 0-9, got {0:?}")]
    BadId(String),
    #[error("no active key (activate one with `batv keys activate ID`, or `batv keys init`)")]
    NoActiveKey,
    #[error("no active key in the [domain_keys] store of {0} (activate one with `batv keys --domain {0} activate ID`)")]
    NoActiveKeyFor(String),
    #[error("all ten key ids are in use; prune retired keys first (`batv keys prune`)")]
    NoFreeId,
    #[error("key id {0} is in use; an id is reused only after `batv keys prune` removed it")]
    IdInUse(u8),
    #[error("key {0} is the active key; activate another key first (or use `batv keys rotate`)")]
    RetireActive(u8),
    #[error("unknown group {0:?} (key_group)")]
    UnknownGroup(String),
}

impl KeyError {
    fn io(path: &Path, source: io::Error) -> Self {
        KeyError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// sysexits code for this error.
    pub fn exit_code(&self) -> u8 {
        use crate::core::exit::*;
        match self {
            KeyError::Io { .. } => EX_IOERR,
            KeyError::BadSecretLength(_)
            | KeyError::UnknownKey(_)
            | KeyError::BadId(_)
            | KeyError::IdInUse(_)
            | KeyError::RetireActive(_) => EX_DATAERR,
            KeyError::NoFreeId => EX_TEMPFAIL,
            _ => EX_CONFIG,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Verifies, does not sign.
    Standby,
    /// The one signing key.
    Active,
    /// Verifies until its last tag can have expired; then prunable.
    Retired,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Standby => "standby",
            State::Active => "active",
            State::Retired => "retired",
        }
    }
}

/// Public facts about a key (no secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyInfo {
    pub id: u8,
    pub state: State,
    #[serde(with = "time::rfc3339")]
    pub created: i64,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::rfc3339_opt")]
    pub activated: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::rfc3339_opt")]
    pub retired: Option<i64>,
    /// `Secret::fingerprint`: tells truncated or swapped secret files apart, and lets a
    /// fleet compare keys without showing them. Manifests written before it was an HMAC
    /// hold `Secret::legacy_fingerprint`, accepted on load and replaced on the next write.
    pub fingerprint: String,
}

impl KeyInfo {
    /// Retired long enough that no tag of this key can still be valid.
    pub fn prunable(&self, now: i64) -> bool {
        self.state == State::Retired && self.retired.is_some_and(|r| now - r > PRUNE_AFTER_DAYS * 86_400)
    }
}

/// A secret. Never printed by Debug.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Result<Self, KeyError> {
        if !(MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&bytes.len()) {
            return Err(KeyError::BadSecretLength(bytes.len()));
        }
        Ok(Secret(bytes))
    }

    /// 32 random bytes as 64 lower-case hex characters (the string is the HMAC key, so the
    /// same text works as an Exim secret).
    pub fn generate() -> Result<Self, KeyError> {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| KeyError::io(Path::new("getrandom"), io::Error::other(e.to_string())))?;
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        Ok(Secret(hex.into_bytes()))
    }

    /// Parse the content of a secret file or of `import` input: one trailing LF is stripped.
    pub fn from_file_bytes(mut bytes: Vec<u8>) -> Result<Self, KeyError> {
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
        }
        Secret::new(bytes)
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// First 8 bytes of HMAC-SHA256(key = secret, message = "batv key fingerprint"), as 16
    /// lower-case hex characters. The same on every host for the same secret.
    pub fn fingerprint(&self) -> String {
        // HMAC pads a key shorter than its block with zeros, so padding it here is the same
        // key, and gives the fixed-size key that `new` takes without a failure path.
        let mut key = [0u8; MAX_SECRET_LEN];
        key[..self.0.len()].copy_from_slice(&self.0);
        let mut mac = hmac::Hmac::<sha2::Sha256>::new(&key.into());
        mac.update(FINGERPRINT_LABEL);
        hex8(&mac.finalize().into_bytes())
    }

    /// What manifests of old versions hold: a plain SHA-256 prefix, never shown again.
    fn legacy_fingerprint(&self) -> String {
        hex8(&sha2::Sha256::digest(&self.0))
    }
}

fn hex8(digest: &[u8]) -> String {
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A loaded key.
#[derive(Debug, Clone)]
pub struct Key {
    pub info: KeyInfo,
    pub secret: Secret,
    pub tag: TagKey,
}

/// A complete, consistent key set: at most one active key.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: [Option<Key>; 10],
}

impl KeySet {
    /// Key material for verification (any state).
    pub fn get(&self, id: u8) -> Option<&TagKey> {
        self.keys.get(id as usize)?.as_ref().map(|k| &k.tag)
    }

    pub fn key(&self, id: u8) -> Option<&Key> {
        self.keys.get(id as usize)?.as_ref()
    }

    pub fn active(&self) -> Option<&Key> {
        self.iter().find(|k| k.info.state == State::Active)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Key> {
        self.keys.iter().flatten()
    }

    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// Build from keys (used by load and by tests).
    pub fn from_keys(keys: Vec<Key>) -> Result<Self, String> {
        let mut set = KeySet::default();
        for k in keys {
            let slot = set
                .keys
                .get_mut(k.info.id as usize)
                .ok_or_else(|| format!("key id {} is not a digit", k.info.id))?;
            if slot.is_some() {
                return Err(format!("key id {} listed twice", k.info.id));
            }
            *slot = Some(k);
        }
        if set.iter().filter(|k| k.info.state == State::Active).count() > 1 {
            return Err("more than one active key".into());
        }
        Ok(set)
    }
}

/// An active key with id 2 and secret `test`, for unit tests. Built directly: the tests'
/// expected tags are for this secret, shorter than a store accepts.
#[cfg(test)]
pub(crate) fn test_key() -> Key {
    let secret = Secret(b"test".to_vec());
    Key {
        tag: crate::core::tag::TagKey::new(secret.expose()),
        info: KeyInfo {
            id: 2,
            state: State::Active,
            created: 0,
            activated: None,
            retired: None,
            fingerprint: secret.fingerprint(),
        },
        secret,
    }
}

/// Load the keys a daemon starts with: a daemon never invents one.
pub fn startup_keys(store: &KeyStore) -> Result<KeySet, KeyError> {
    let keys = store.load()?;
    if keys.is_empty() {
        return Err(KeyError::Corrupt {
            path: store.dir().to_path_buf(),
            reason: "no keys; a daemon never creates one (run `batv keys init`)".into(),
        });
    }
    Ok(keys)
}

/// Parse a key id argument.
pub fn parse_id(s: &str) -> Result<u8, KeyError> {
    match s.as_bytes() {
        [d @ b'0'..=b'9'] => Ok(d - b'0'),
        _ => Err(KeyError::BadId(s.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_file_bytes() {
        let s = b"sixteen-bytes-ok";
        assert_eq!(Secret::from_file_bytes([&s[..], b"\n"].concat()).unwrap().expose(), s);
        assert_eq!(
            Secret::from_file_bytes([&s[..], b"\n\n"].concat()).unwrap().expose(),
            [&s[..], b"\n"].concat()
        );
        assert!(Secret::from_file_bytes(b"\n".to_vec()).is_err());
        assert!(Secret::from_file_bytes(vec![b'a'; 65]).is_err());
        assert_eq!(Secret::generate().unwrap().expose().len(), 64);
    }

    #[test]
    fn secrets_are_16_to_64_bytes() {
        for len in [0, 1, 15, 65] {
            let e = Secret::new(vec![b'x'; len]).unwrap_err();
            assert_eq!(e.to_string(), format!("secret must be 16 to 64 bytes, got {len}"));
            assert_eq!(e.exit_code(), crate::core::exit::EX_DATAERR);
        }
        for len in [16, 64] {
            assert_eq!(Secret::new(vec![b'x'; len]).unwrap().expose().len(), len);
        }
        // The trailing LF of a file does not count.
        assert!(Secret::from_file_bytes(b"fifteen-bytes-x\n".to_vec()).is_err());
    }

    #[test]
    fn fingerprint_is_a_domain_separated_hmac() {
        // Known answers from Python's hmac module, an implementation of its own:
        // hmac.new(secret, b"batv key fingerprint", "sha256").hexdigest()[:16]
        let s = Secret::new(b"0123456789abcdef".to_vec()).unwrap();
        assert_eq!(s.fingerprint(), "318a265d2b45ada3");
        let s = Secret::new(vec![0xa5; 64]).unwrap();
        assert_eq!(s.fingerprint(), "3550645eeaeba9e0");
        // Not the plain hash a dictionary of likely secrets can be checked against.
        assert_eq!(s.legacy_fingerprint(), hex8(&sha2::Sha256::digest([0xa5; 64])));
        assert_ne!(s.fingerprint(), s.legacy_fingerprint());
    }
}
