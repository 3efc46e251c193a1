//! The key store: a directory with a manifest (`manifest.toml`: ids, states, times) and one
//! secret file per key (`key-N.secret`).
//!
//! Writers take an exclusive lock (`.lock`), write every file to a temporary name, fsync it,
//! rename it into place and fsync the directory. States live only in the manifest, so one
//! rename switches them: a reader sees the old set or the new one, never zero or two active
//! keys. New secrets are written before the manifest names them, and pruned secrets are
//! deleted after it stops naming them. Loading never writes (the directory may be a
//! read-only mount) and is all or nothing.
//!
//! Whoever can write the directory or a key file can make batv sign and verify with a key
//! of their choosing, and whoever can read a key file can forge tags: every load and every
//! write first checks the directory's and the files' owners and modes (`dir_policy`,
//! `file_policy`), and refuses what is not private.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::core::tag::TagKey;
use crate::core::time;

pub const MANIFEST: &str = "manifest.toml";
const LOCK: &str = ".lock";
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

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    version: u32,
    /// Number of keys: a manifest cut short between entries still parses, this catches it.
    count: usize,
    #[serde(default, rename = "key")]
    keys: Vec<KeyInfo>,
}

const MANIFEST_HEADER: &str = "# batv key manifest: ids, states and times (no secrets; those are in key-N.secret).\n\
# Written by `batv keys`; edit only with the tool, or keep count and fingerprints right.\n";

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

/// The keys directory and how to write it.
#[derive(Debug, Clone)]
pub struct KeyStore {
    dir: PathBuf,
    /// Group allowed to read key files (mode 0640), from `key_group`.
    group: Option<(String, u32)>,
}

/// What a change did, for the CLI to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Added(u8),
    Activated { id: u8, retired: Option<u8> },
    Rotated { new: u8, retired: Option<u8> },
    Retired(u8),
    Pruned(Vec<u8>),
    Imported(u8),
    Unchanged(String),
}

impl KeyStore {
    /// `group` is the configured `key_group`, resolved to a gid here.
    pub fn new(dir: impl Into<PathBuf>, group: Option<&str>) -> Result<Self, KeyError> {
        let group = match group {
            Some(name) => Some((name.to_string(), lookup_group(name)?)),
            None => None,
        };
        Ok(KeyStore { dir: dir.into(), group })
    }

    /// A change stamp for the directory (every file's name, mtime and inode), for the
    /// daemons' reload on change.
    pub fn stamp(&self) -> Vec<(String, std::time::SystemTime, u64)> {
        let mut v: Vec<_> = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        let m = std::fs::metadata(e.path()).ok()?;
                        Some((name, m.modified().ok()?, std::os::unix::fs::MetadataExt::ino(&m)))
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn secret_name(id: u8) -> String {
        format!("key-{id}.secret")
    }

    /// The directory exists and no one but root and us can change what is in it. Follows
    /// symlinks: the directory may be one.
    fn check_dir(&self) -> Result<(), KeyError> {
        let m = match fs::metadata(&self.dir) {
            Ok(m) if m.is_dir() => m,
            Ok(_) => return Err(KeyError::NotADir(self.dir.clone())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(KeyError::MissingDir(self.dir.clone())),
            Err(e) => return Err(KeyError::io(&self.dir, e)),
        };
        let read_only = m.mode() & 0o022 != 0 && read_only_fs(&self.dir).map_err(|e| KeyError::io(&self.dir, e))?;
        dir_policy(&self.dir, m.mode(), m.uid(), effective_uid(), read_only)
    }

    /// Load the whole key set, or fail and change nothing.
    pub fn load(&self) -> Result<KeySet, KeyError> {
        self.check_dir()?;
        // A writer may prune between our reading the manifest and a secret: read again.
        let mut attempt = 0;
        loop {
            let manifest = self.read_manifest()?;
            match self.load_secrets(&manifest) {
                Err(KeyError::Io { source, .. })
                    if source.kind() == io::ErrorKind::NotFound && attempt < 2 && self.read_manifest()?.keys != manifest.keys =>
                {
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn load_secrets(&self, manifest: &Manifest) -> Result<KeySet, KeyError> {
        let mut keys = Vec::with_capacity(manifest.keys.len());
        for info in &manifest.keys {
            let path = self.path(&Self::secret_name(info.id));
            let secret = self.read_secret_file(&path)?;
            let fingerprint = secret.fingerprint();
            if info.fingerprint != fingerprint && info.fingerprint != secret.legacy_fingerprint() {
                return Err(KeyError::Corrupt {
                    path,
                    reason: format!(
                        "secret does not match the manifest's fingerprint for key {} (truncated or replaced?)",
                        info.id
                    ),
                });
            }
            // A legacy fingerprint is never shown, and the next manifest write replaces it.
            let info = KeyInfo {
                fingerprint,
                ..info.clone()
            };
            keys.push(Key {
                tag: TagKey::new(secret.expose()),
                secret,
                info,
            });
        }
        KeySet::from_keys(keys).map_err(|reason| KeyError::Corrupt {
            path: self.path(MANIFEST),
            reason,
        })
    }

    fn read_manifest(&self) -> Result<Manifest, KeyError> {
        let path = self.path(MANIFEST);
        // The manifest says which key signs and which still verify: whoever can change it
        // can bring a retired key back. It holds no secret, so anyone may read it.
        let read = File::open(&path).and_then(|f| {
            let meta = f.metadata()?;
            let mut text = Vec::new();
            io::Read::read_to_end(&mut io::Read::take(f, 1 << 20), &mut text)?;
            Ok((meta, text))
        });
        let text = match read {
            Ok((meta, t)) => {
                manifest_policy(&path, &meta, effective_uid())?;
                t
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // No manifest: an empty store, unless secrets lie about without one. A
                // first key is written secret first, manifest second, and readers take no
                // lock: give such a writer a moment before calling the store corrupt.
                for _ in 0..20 {
                    if !self.has_secret_files()? {
                        return Ok(Manifest {
                            version: 1,
                            ..Manifest::default()
                        });
                    }
                    if path.exists() {
                        return self.read_manifest();
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                return Err(KeyError::Corrupt {
                    path,
                    reason: "secret files but no manifest".into(),
                });
            }
            Err(e) => return Err(KeyError::io(&path, e)),
        };
        let corrupt = |reason: String| KeyError::Corrupt {
            path: path.clone(),
            reason,
        };
        let text = String::from_utf8(text).map_err(|_| corrupt("not UTF-8".into()))?;
        let m: Manifest = toml::from_str(&text).map_err(|e| corrupt(crate::core::config::describe_toml_error(&text, &e)))?;
        if m.version != 1 {
            return Err(corrupt(format!("unsupported manifest version {}", m.version)));
        }
        if m.count != m.keys.len() {
            return Err(corrupt(format!(
                "manifest names {} keys but says count = {} (truncated?)",
                m.keys.len(),
                m.count
            )));
        }
        if let Some(k) = m.keys.iter().find(|k| k.id > 9) {
            return Err(corrupt(format!("key id {} is not a digit", k.id)));
        }
        Ok(m)
    }

    fn has_secret_files(&self) -> Result<bool, KeyError> {
        let rd = fs::read_dir(&self.dir).map_err(|e| KeyError::io(&self.dir, e))?;
        Ok(rd.flatten().any(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with("key-") && n.ends_with(".secret")
        }))
    }

    /// Take the writers' lock for the lifetime of the returned file.
    fn lock(&self) -> Result<File, KeyError> {
        let path = self.path(LOCK);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| KeyError::io(&path, e))?;
        // SAFETY: flock on a valid fd we own.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) } != 0 {
            return Err(KeyError::io(&path, io::Error::last_os_error()));
        }
        Ok(f)
    }

    /// Read a secret file, refusing one that anyone but root, us and `key_group` could read
    /// or change. Follows symlinks (a Kubernetes Secret's files are symlinks into `..data`).
    fn read_secret_file(&self, path: &Path) -> Result<Secret, KeyError> {
        let f = File::open(path).map_err(|e| KeyError::io(path, e))?;
        let meta = f.metadata().map_err(|e| KeyError::io(path, e))?;
        file_policy(path, &meta, self.group.as_ref(), effective_uid())?;
        let mut bytes = Vec::with_capacity(MAX_SECRET_LEN + 1);
        io::Read::read_to_end(&mut io::Read::take(f, (MAX_SECRET_LEN + 2) as u64), &mut bytes).map_err(|e| KeyError::io(path, e))?;
        match Secret::from_file_bytes(bytes) {
            Ok(s) => Ok(s),
            Err(KeyError::BadSecretLength(0)) => Err(KeyError::EmptySecret(path.to_path_buf())),
            Err(KeyError::BadSecretLength(len)) if len < MIN_SECRET_LEN => Err(KeyError::ShortSecret {
                path: path.to_path_buf(),
                len,
            }),
            Err(_) => Err(KeyError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("secret longer than {MAX_SECRET_LEN} bytes"),
            }),
        }
    }

    fn file_mode(&self) -> u32 {
        if self.group.is_some() {
            0o640
        } else {
            0o600
        }
    }

    /// Write `data` to `name` atomically: temp file, fsync, rename, fsync directory.
    fn write_atomic(&self, name: &str, data: &[u8]) -> Result<(), KeyError> {
        let tmp = self.path(&format!(".{name}.tmp.{}", std::process::id()));
        let result = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).mode(self.file_mode()).open(&tmp)?;
            if let Some((_, gid)) = &self.group {
                std::os::unix::fs::fchown(&f, None, Some(*gid))?;
            }
            // The umask may have cleared bits we want (0640).
            f.set_permissions(fs::Permissions::from_mode(self.file_mode()))?;
            f.write_all(data)?;
            f.sync_all()?;
            fs::rename(&tmp, self.path(name))?;
            File::open(&self.dir)?.sync_all()
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(KeyError::io(&self.path(name), e));
        }
        Ok(())
    }

    fn write_manifest(&self, mut keys: Vec<KeyInfo>) -> Result<(), KeyError> {
        keys.sort_by_key(|k| k.id);
        let m = Manifest {
            version: 1,
            count: keys.len(),
            keys,
        };
        let body = toml::to_string(&m).map_err(|e| KeyError::Corrupt {
            path: self.path(MANIFEST),
            reason: e.to_string(),
        })?;
        self.write_atomic(MANIFEST, format!("{MANIFEST_HEADER}{body}").as_bytes())
    }

    fn write_secret(&self, id: u8, secret: &Secret) -> Result<(), KeyError> {
        let mut data = secret.expose().to_vec();
        data.push(b'\n');
        self.write_atomic(&Self::secret_name(id), &data)
    }

    /// Create the directory (0700, or 0750 with key_group) if needed.
    fn create_dir(&self) -> Result<(), KeyError> {
        if self.dir.is_dir() {
            return Ok(());
        }
        let mode = if self.group.is_some() { 0o750 } else { 0o700 };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(&self.dir)
            .map_err(|e| KeyError::io(&self.dir, e))?;
        if let Some((_, gid)) = &self.group {
            std::os::unix::fs::chown(&self.dir, None, Some(*gid)).map_err(|e| KeyError::io(&self.dir, e))?;
        }
        // A umask of 077 would have cleared the group's bits.
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(mode)).map_err(|e| KeyError::io(&self.dir, e))?;
        Ok(())
    }

    /// `keys init`: create the directory and a first active key unless keys exist.
    pub fn init(&self, now: i64) -> Result<Change, KeyError> {
        self.create_dir()?;
        self.ensure_first_key(now)
    }

    /// Create a first active key if the (existing) directory holds none. Safe against a
    /// concurrent caller doing the same: the lock makes one of them find the other's key.
    pub fn ensure_first_key(&self, now: i64) -> Result<Change, KeyError> {
        self.check_dir()?;
        let _lock = self.lock()?;
        let m = self.read_manifest()?;
        if !m.keys.is_empty() {
            return Ok(Change::Unchanged(format!(
                "{} already holds {} key(s)",
                self.dir.display(),
                m.keys.len()
            )));
        }
        let id = 1;
        let info = self.new_key(id, State::Active, now, Secret::generate()?)?;
        self.write_manifest(vec![info])?;
        Ok(Change::Added(id))
    }

    fn new_key(&self, id: u8, state: State, now: i64, secret: Secret) -> Result<KeyInfo, KeyError> {
        self.write_secret(id, &secret)?;
        Ok(KeyInfo {
            id,
            state,
            created: now,
            activated: (state == State::Active).then_some(now),
            retired: None,
            fingerprint: secret.fingerprint(),
        })
    }

    /// Under the lock: the manifest, checked against the secrets (so a change is never
    /// built on a corrupt store).
    fn locked_manifest(&self) -> Result<(File, Vec<KeyInfo>), KeyError> {
        self.check_dir()?;
        let lock = self.lock()?;
        let m = self.read_manifest()?;
        // The loaded infos carry current fingerprints, so the write drops legacy ones.
        let keys = self.load_secrets(&m)?.iter().map(|k| k.info.clone()).collect();
        Ok((lock, keys))
    }

    /// The next free id after the newest key's, wrapping; ids still listed are never reused.
    fn free_id(keys: &[KeyInfo]) -> Result<u8, KeyError> {
        let last = keys.iter().max_by_key(|k| (k.created, k.id)).map_or(0, |k| k.id);
        (1..=10)
            .map(|i| (last + i) % 10)
            .find(|id| keys.iter().all(|k| k.id != *id))
            .ok_or(KeyError::NoFreeId)
    }

    /// `keys add [--standby]`: a new key; active unless `standby` (activating retires the
    /// previous active key).
    pub fn add(&self, standby: bool, now: i64) -> Result<Change, KeyError> {
        let (_lock, mut keys) = self.locked_manifest()?;
        let id = Self::free_id(&keys)?;
        if standby {
            keys.push(self.new_key(id, State::Standby, now, Secret::generate()?)?);
            self.write_manifest(keys)?;
            return Ok(Change::Added(id));
        }
        let retired = retire_active(&mut keys, now);
        keys.push(self.new_key(id, State::Active, now, Secret::generate()?)?);
        self.write_manifest(keys)?;
        Ok(Change::Rotated { new: id, retired })
    }

    /// `keys rotate`: add and activate in one manifest write.
    pub fn rotate(&self, now: i64) -> Result<Change, KeyError> {
        self.add(false, now)
    }

    /// `keys activate ID`: make ID the signing key; the previous one is retired.
    pub fn activate(&self, id: u8, now: i64) -> Result<Change, KeyError> {
        let (_lock, mut keys) = self.locked_manifest()?;
        let state = keys.iter().find(|k| k.id == id).map(|k| k.state).ok_or(KeyError::UnknownKey(id))?;
        if state == State::Active {
            return Ok(Change::Unchanged(format!("key {id} is already active")));
        }
        let retired = retire_active(&mut keys, now);
        for k in keys.iter_mut().filter(|k| k.id == id) {
            k.state = State::Active;
            k.activated = Some(now);
            k.retired = None;
        }
        self.write_manifest(keys)?;
        Ok(Change::Activated { id, retired })
    }

    /// `keys retire ID`.
    pub fn retire(&self, id: u8, now: i64) -> Result<Change, KeyError> {
        let (_lock, mut keys) = self.locked_manifest()?;
        let k = keys.iter_mut().find(|k| k.id == id).ok_or(KeyError::UnknownKey(id))?;
        match k.state {
            State::Active => return Err(KeyError::RetireActive(id)),
            State::Retired => return Ok(Change::Unchanged(format!("key {id} is already retired"))),
            State::Standby => {
                k.state = State::Retired;
                k.retired = Some(now);
            }
        }
        self.write_manifest(keys)?;
        Ok(Change::Retired(id))
    }

    /// `keys prune`: forget keys retired more than 32 days ago.
    pub fn prune(&self, now: i64) -> Result<Change, KeyError> {
        let (_lock, keys) = self.locked_manifest()?;
        let (gone, kept): (Vec<KeyInfo>, Vec<KeyInfo>) = keys.into_iter().partition(|k| k.prunable(now));
        if gone.is_empty() {
            return Ok(Change::Pruned(vec![]));
        }
        self.write_manifest(kept)?;
        for k in &gone {
            let path = self.path(&Self::secret_name(k.id));
            // The manifest no longer names it: a failure here leaves a harmless orphan.
            fs::remove_file(&path).map_err(|e| KeyError::io(&path, e))?;
        }
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| KeyError::io(&self.dir, e))?;
        Ok(Change::Pruned(gone.iter().map(|k| k.id).collect()))
    }

    /// `keys import ID`: add a key with a given secret, in standby.
    pub fn import(&self, id: u8, secret: Secret, now: i64) -> Result<Change, KeyError> {
        let (_lock, mut keys) = self.locked_manifest()?;
        if keys.iter().any(|k| k.id == id) {
            return Err(KeyError::IdInUse(id));
        }
        keys.push(self.new_key(id, State::Standby, now, secret)?);
        self.write_manifest(keys)?;
        Ok(Change::Imported(id))
    }
}

fn retire_active(keys: &mut [KeyInfo], now: i64) -> Option<u8> {
    let k = keys.iter_mut().find(|k| k.state == State::Active)?;
    k.state = State::Retired;
    k.retired = Some(now);
    Some(k.id)
}

fn effective_uid() -> u32 {
    // SAFETY: a plain getter.
    unsafe { libc::geteuid() }
}

/// Refuse a keys directory that someone other than root and `euid` could add files to or
/// rename files in. On a read-only mount the write bits grant nothing: a Kubernetes Secret
/// volume is mode 1777 but mounted read-only. (Whoever can write the mount's source, which
/// batv cannot see, is trusted like root.)
fn dir_policy(path: &Path, mode: u32, uid: u32, euid: u32, read_only: bool) -> Result<(), KeyError> {
    if uid != 0 && uid != euid {
        return Err(KeyError::ForeignDirOwner {
            path: path.to_path_buf(),
            owner: user_name(uid),
        });
    }
    let by = if mode & 0o002 != 0 {
        "others"
    } else if mode & 0o020 != 0 {
        "its group"
    } else {
        return Ok(());
    };
    if read_only {
        return Ok(());
    }
    Err(KeyError::DirWritable {
        path: path.to_path_buf(),
        mode: mode & 0o7777,
        by,
    })
}

/// Refuse a key file that anyone but root, `euid` and the key group could read, or that
/// anyone but its owner could change.
fn file_policy(path: &Path, meta: &fs::Metadata, key_group: Option<&(String, u32)>, euid: u32) -> Result<(), KeyError> {
    let mode = meta.mode() & 0o7777;
    let path = path.to_path_buf();
    if mode & 0o007 != 0 {
        return Err(KeyError::WorldAccessible { path, mode });
    }
    if mode & 0o020 != 0 {
        return Err(KeyError::GroupWritable { path, mode });
    }
    if mode & 0o040 != 0 && key_group.is_none_or(|(_, gid)| *gid != meta.gid()) {
        return Err(KeyError::GroupReadable {
            path,
            mode,
            group: group_name(meta.gid()),
            key_group: key_group.map(|(name, _)| name.clone()),
        });
    }
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(KeyError::ForeignFileOwner {
            path,
            owner: user_name(meta.uid()),
        });
    }
    Ok(())
}

/// Refuse a manifest that anyone but its owner could change, or one owned by someone other
/// than root and `euid`.
fn manifest_policy(path: &Path, meta: &fs::Metadata, euid: u32) -> Result<(), KeyError> {
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(KeyError::GroupWritable {
            path: path.to_path_buf(),
            mode,
        });
    }
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(KeyError::ForeignFileOwner {
            path: path.to_path_buf(),
            owner: user_name(meta.uid()),
        });
    }
    Ok(())
}

/// True if `path` is on a file system mounted read-only.
fn read_only_fs(path: &Path) -> io::Result<bool> {
    let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: zeroed is a valid statvfs; c is a NUL-terminated path that outlives the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_flag & libc::ST_RDONLY != 0)
}

/// An entry of the user or group database, looked up by `call` (a `get*_r` function) into
/// a buffer of its own; `read` sees it while the buffer its strings point into lives.
fn nss_entry<E: NssEntry, T>(
    call: impl FnOnce(*mut E, *mut libc::c_char, usize, *mut *mut E) -> libc::c_int,
    read: impl FnOnce(&E) -> T,
) -> Option<T> {
    // SAFETY: NssEntry types are plain C structs, for which all zeros is a valid value.
    let mut entry: E = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut E = std::ptr::null_mut();
    let rc = call(&mut entry, buf.as_mut_ptr(), buf.len(), &mut result);
    (rc == 0 && !result.is_null()).then(|| read(&entry))
}

/// The structs `nss_entry` may zero.
trait NssEntry {}
impl NssEntry for libc::passwd {}
impl NssEntry for libc::group {}

/// A string of an entry `nss_entry` found.
///
/// # Safety
/// `p` is one of the entry's string fields, read inside `nss_entry`'s `read` (while the
/// buffer it points into lives).
unsafe fn entry_str(p: *const libc::c_char) -> String {
    // SAFETY: per the contract, NUL-terminated text in a live buffer.
    unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// A user's name and uid for messages ("nobody (uid 65534)"), or the uid alone.
fn user_name(uid: u32) -> String {
    // SAFETY: the pointers nss_entry passes are valid for the call.
    nss_entry(
        |pw, buf, len, res| unsafe { libc::getpwuid_r(uid, pw, buf, len, res) },
        // SAFETY: inside read, a field of the entry.
        |pw: &libc::passwd| format!("{} (uid {uid})", unsafe { entry_str(pw.pw_name) }),
    )
    .unwrap_or_else(|| format!("uid {uid}"))
}

/// A group's name, or its number if it has none.
fn group_name(gid: u32) -> String {
    // SAFETY: the pointers nss_entry passes are valid for the call.
    nss_entry(
        |gr, buf, len, res| unsafe { libc::getgrgid_r(gid, gr, buf, len, res) },
        // SAFETY: inside read, a field of the entry.
        |gr: &libc::group| unsafe { entry_str(gr.gr_name) },
    )
    .unwrap_or_else(|| gid.to_string())
}

fn lookup_group(name: &str) -> Result<u32, KeyError> {
    // A number is a gid (a container's fsGroup often has no name in /etc/group).
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let unknown = || KeyError::UnknownGroup(name.to_string());
    let cname = std::ffi::CString::new(name).map_err(|_| unknown())?;
    // SAFETY: the pointers nss_entry passes are valid for the call; cname outlives it.
    nss_entry(
        |gr, buf, len, res| unsafe { libc::getgrnam_r(cname.as_ptr(), gr, buf, len, res) },
        |gr: &libc::group| gr.gr_gid,
    )
    .ok_or_else(unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ids_wrap_and_skip() {
        let info = |id, created| KeyInfo {
            id,
            state: State::Retired,
            created,
            activated: None,
            retired: None,
            fingerprint: String::new(),
        };
        assert_eq!(KeyStore::free_id(&[]).unwrap(), 1);
        assert_eq!(KeyStore::free_id(&[info(9, 5), info(0, 1)]).unwrap(), 1);
        let all: Vec<_> = (0..10).map(|i| info(i, i as i64)).collect();
        assert!(matches!(KeyStore::free_id(&all), Err(KeyError::NoFreeId)));
    }

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

    fn store_with_key(dir: &Path, secret: &[u8]) -> KeyStore {
        let store = KeyStore::new(dir, None).unwrap();
        store.init(0).unwrap();
        store.import(5, Secret::new(secret.to_vec()).unwrap(), 0).unwrap();
        store
    }

    #[test]
    fn legacy_fingerprints_load_and_are_replaced_on_write() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("keys");
        let secret = b"a shared secret, 31 bytes long.";
        let store = store_with_key(&dir, secret);
        let s = Secret::new(secret.to_vec()).unwrap();
        let manifest = dir.join(MANIFEST);
        let text = fs::read_to_string(&manifest).unwrap();
        assert!(text.contains(&s.fingerprint()) && !text.contains(&s.legacy_fingerprint()));
        fs::write(&manifest, text.replace(&s.fingerprint(), &s.legacy_fingerprint())).unwrap();

        let keys = store.load().unwrap();
        assert_eq!(keys.key(5).unwrap().info.fingerprint, s.fingerprint());
        store.add(true, 0).unwrap();
        let text = fs::read_to_string(&manifest).unwrap();
        assert!(text.contains(&s.fingerprint()) && !text.contains(&s.legacy_fingerprint()), "{text}");

        // Any other fingerprint is still a mismatch.
        fs::write(&manifest, text.replace(&s.fingerprint(), "0000000000000000")).unwrap();
        assert!(matches!(store.load(), Err(KeyError::Corrupt { .. })));
    }

    #[test]
    fn a_manifest_others_can_change_does_not_load() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("keys");
        let store = store_with_key(&dir, b"sixteen-bytes-ok");
        let manifest = dir.join(MANIFEST);
        // Readable by all is fine: it holds no secret.
        fs::set_permissions(&manifest, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(store.load().is_ok());
        for mode in [0o666, 0o620] {
            fs::set_permissions(&manifest, fs::Permissions::from_mode(mode)).unwrap();
            let e = store.load().unwrap_err();
            assert!(matches!(&e, KeyError::GroupWritable { path, .. } if *path == manifest), "{e}");
            assert_eq!(e.exit_code(), crate::core::exit::EX_CONFIG);
        }
    }

    #[test]
    fn numeric_key_groups_are_gids() {
        assert_eq!(lookup_group("4242").unwrap(), 4242);
        assert!(lookup_group("no-such-group-here").is_err());
    }

    #[test]
    fn short_secret_files_do_not_load() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("keys");
        let store = store_with_key(&dir, b"sixteen-bytes-ok");
        let file = dir.join("key-5.secret");
        fs::write(&file, "s3cret\n").unwrap();
        let e = store.load().unwrap_err();
        assert!(matches!(&e, KeyError::ShortSecret { path, len: 6 } if *path == file), "{e}");
        assert_eq!(e.exit_code(), crate::core::exit::EX_CONFIG);
        assert!(e.to_string().contains("key-5.secret: secret is 6 bytes"), "{e}");
    }

    #[test]
    fn directory_policy() {
        let p = Path::new("/k");
        let ok = |mode, uid, euid, ro| dir_policy(p, mode, uid, euid, ro).is_ok();
        // What `keys init` makes, and a plain `mkdir` under umask 022.
        assert!(ok(0o40700, 0, 0, false) && ok(0o40750, 0, 0, false) && ok(0o40755, 0, 0, false));
        // Our own directory, e.g. a checkout's keys/ run by its owner.
        assert!(ok(0o40700, 1000, 1000, false));
        // Root's directory read by a set-gid wrapper running as its caller.
        assert!(ok(0o40750, 0, 1000, false));
        for (mode, by) in [
            (0o40770, "its group"),
            (0o40777, "others"),
            (0o41777, "others"),
            (0o40702, "others"),
        ] {
            let e = dir_policy(p, mode, 0, 0, false).unwrap_err();
            assert!(matches!(e, KeyError::DirWritable { by: b, .. } if b == by), "{mode:o}: {e}");
            assert!(e.to_string().contains("chmod go-w /k"), "{e}");
            assert_eq!(e.exit_code(), crate::core::exit::EX_CONFIG);
        }
        // A Kubernetes Secret volume: 1777, but mounted read-only.
        assert!(ok(0o41777, 0, 0, true));
        // Someone else's directory, even a private one, even read-only.
        for (uid, euid) in [(65534, 0), (1000, 1001)] {
            let e = dir_policy(p, 0o40700, uid, euid, true).unwrap_err();
            assert!(matches!(e, KeyError::ForeignDirOwner { .. }), "{e}");
            assert!(e.to_string().contains("chown root /k"), "{e}");
        }
    }

    #[test]
    fn key_file_policy() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("key-1.secret");
        fs::write(&path, "0123456789abcdef\n").unwrap();
        let check = |mode: u32, group: Option<&(String, u32)>, euid: u32| {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            file_policy(&path, &fs::metadata(&path).unwrap(), group, euid)
        };
        let meta = fs::metadata(&path).unwrap();
        let (me, my_gid) = (meta.uid(), meta.gid());
        let mine = ("mine".to_string(), my_gid);
        let other = ("other".to_string(), my_gid + 1);
        assert!(check(0o600, None, me).is_ok());
        assert!(check(0o400, None, me).is_ok());
        assert!(check(0o640, Some(&mine), me).is_ok());
        assert!(check(0o600, Some(&mine), me).is_ok());
        let e = check(0o640, None, me).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, KeyError::GroupReadable { .. }), "{e}");
        assert!(msg.contains("mode 0640") && msg.contains("key_group is not set"), "{msg}");
        assert!(msg.contains(&format!("chmod 600 {}", path.display())), "{msg}");
        assert!(msg.contains(&format!("key_group = {:?}", group_name(my_gid))), "{msg}");
        let msg = check(0o640, Some(&other), me).unwrap_err().to_string();
        assert!(msg.contains("key_group is \"other\"") && msg.contains("chgrp other"), "{msg}");
        assert!(matches!(check(0o660, Some(&mine), me), Err(KeyError::GroupWritable { .. })));
        assert!(matches!(check(0o620, None, me), Err(KeyError::GroupWritable { .. })));
        for mode in [0o604, 0o602, 0o644] {
            assert!(matches!(check(mode, Some(&mine), me), Err(KeyError::WorldAccessible { .. })));
        }
        // Owned by a user that is neither root nor us.
        let stranger = if me == 0 {
            std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
            0
        } else {
            me + 1
        };
        let e = check(0o600, None, stranger).unwrap_err();
        assert!(matches!(e, KeyError::ForeignFileOwner { .. }), "{e}");
        assert!(e.to_string().contains("chown root"), "{e}");
    }
}
