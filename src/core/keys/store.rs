//! The `KeyStore`: the keys directory, its manifest and secret files, and how they are
//! read and written (the lock, atomic writes, the `batv keys` changes).
//!
//! Writers take an exclusive lock (`.lock`), write every file to a temporary name, fsync it,
//! rename it into place and fsync the directory. States live only in the manifest, so one
//! rename switches them: a reader sees the old set or the new one, never zero or two active
//! keys. New secrets are written before the manifest names them, and pruned secrets are
//! deleted after it stops naming them. Loading never writes (the directory may be a
//! read-only mount) and is all or nothing.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::perms::{dir_policy, effective_uid, file_policy, lookup_group, manifest_policy, read_only_fs};
use super::{Key, KeyError, KeyInfo, KeySet, Secret, State, MAX_SECRET_LEN, MIN_SECRET_LEN};
use crate::core::tag::TagKey;

pub const MANIFEST: &str = "manifest.toml";
const LOCK: &str = ".lock";

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
}
