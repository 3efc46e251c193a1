//! Set-id safety. A setgid copy of batv (so that users without the key group get signed
//! mail) must do nothing but sign and hand over to the real sendmail: no config or keys
//! override, no other command, and no privilege left when the real sendmail runs.

/// True if running with set-user-id or set-group-id privileges.
pub fn is_privileged() -> bool {
    // SAFETY: plain getters.
    unsafe { libc::getuid() != libc::geteuid() || libc::getgid() != libc::getegid() }
}

/// Give up set-id privileges for good (after the keys are read).
pub fn drop_privileges() -> std::io::Result<()> {
    // SAFETY: plain syscalls with our own real ids.
    unsafe {
        let (gid, uid) = (libc::getgid(), libc::getuid());
        if libc::setresgid(gid, gid, gid) != 0 || libc::setresuid(uid, uid, uid) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::getegid() != gid || libc::geteuid() != uid {
            return Err(std::io::Error::other("privileges still held"));
        }
    }
    Ok(())
}

/// Variables kept for the real sendmail when we were started set-id; the rest of the
/// caller's environment is dropped.
pub const SAFE_ENV: &[&str] = &["TZ", "LANG", "LC_ALL", "LC_CTYPE"];
pub const SAFE_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// Who a daemon will run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunAs {
    /// Not started as root: nothing to drop.
    Unchanged,
    /// Root, and no `user` configured (or `user` is root): it stays root, and says so.
    Root,
    /// This user and group, with the user's supplementary groups.
    User { user: crate::core::nss::User, gid: u32 },
}

/// Whom to become: `user` (a name or uid) with `group` (default: the user's own), when
/// started as root. Asked before the sockets are bound, so a wrong name fails early.
pub fn run_as(user: Option<&str>, group: Option<&str>) -> Result<RunAs, String> {
    // SAFETY: plain getter.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(RunAs::Unchanged);
    }
    let Some(name) = user else {
        return Ok(RunAs::Root);
    };
    let u = crate::core::nss::user(name).ok_or_else(|| format!("user {name:?}: no such user"))?;
    let gid = match group {
        Some(g) => crate::core::nss::group_id(g).ok_or_else(|| format!("group {g:?}: no such group"))?,
        None => u.gid,
    };
    if u.uid == 0 {
        return Ok(RunAs::Root);
    }
    Ok(RunAs::User { user: u, gid })
}

/// Become the user of [`run_as`] for good (with its supplementary groups, so that
/// `key_group` membership still reads the keys). Called once the sockets are bound and
/// before any thread is started.
pub fn drop_to(to: &RunAs) -> Result<(), String> {
    let RunAs::User { user: u, gid } = to else {
        return Ok(());
    };
    let gid = *gid;
    let cname = std::ffi::CString::new(u.name.clone()).map_err(|_| format!("user {:?}: bad name", u.name))?;
    let fail = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    // SAFETY: plain syscalls; cname is a NUL-terminated string that outlives the call.
    unsafe {
        if libc::initgroups(cname.as_ptr(), gid as _) != 0 {
            return Err(fail("initgroups"));
        }
        if libc::setresgid(gid, gid, gid) != 0 {
            return Err(fail("setresgid"));
        }
        if libc::setresuid(u.uid, u.uid, u.uid) != 0 {
            return Err(fail("setresuid"));
        }
        // For good: root cannot be taken back.
        if libc::setuid(0) == 0 || libc::geteuid() != u.uid || libc::getegid() != gid {
            return Err("privileges still held after the drop".into());
        }
    }
    Ok(())
}
