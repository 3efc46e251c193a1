//! Who may change the keys directory and read or change its files: the owner and mode
//! checks every load and write makes, and the user and group lookups they need.
//!
//! Whoever can write the directory or a key file can make batv sign and verify with a key
//! of their choosing, and whoever can read a key file can forge tags: every load and every
//! write first checks the directory's and the files' owners and modes (`dir_policy`,
//! `file_policy`), and refuses what is not private.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::KeyError;
use crate::core::nss::{group_id, group_name, user_name};

pub(super) fn effective_uid() -> u32 {
    // SAFETY: a plain getter.
    unsafe { libc::geteuid() }
}

/// Refuse a keys directory that someone other than root and `euid` could add files to or
/// rename files in. On a read-only mount the write bits grant nothing: a Kubernetes Secret
/// volume is mode 1777 but mounted read-only. (Whoever can write the mount's source, which
/// batv cannot see, is trusted like root.)
pub(super) fn dir_policy(path: &Path, mode: u32, uid: u32, euid: u32, read_only: bool) -> Result<(), KeyError> {
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
pub(super) fn file_policy(path: &Path, meta: &fs::Metadata, key_group: Option<&(String, u32)>, euid: u32) -> Result<(), KeyError> {
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
pub(super) fn manifest_policy(path: &Path, meta: &fs::Metadata, euid: u32) -> Result<(), KeyError> {
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
pub(super) fn read_only_fs(path: &Path) -> io::Result<bool> {
    let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: zeroed is a valid statvfs; c is a NUL-terminated path that outlives the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_flag & libc::ST_RDONLY != 0)
}

/// `key_group`'s gid (a name, or a number).
pub(super) fn lookup_group(name: &str) -> Result<u32, KeyError> {
    group_id(name).ok_or_else(|| KeyError::UnknownGroup(name.to_string()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn numeric_key_groups_are_gids() {
        assert_eq!(lookup_group("4242").unwrap(), 4242);
        assert!(lookup_group("no-such-group-here").is_err());
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
