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
    /// Root, and no `user` configured: it stays root, and says so.
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
    // Root's uid or gid would keep root's powers under another name.
    if u.uid == 0 {
        return Err(format!("user {name:?} is uid 0: name a user without root's powers"));
    }
    if gid == 0 {
        return Err(format!(
            "user {name:?} would run with gid 0: set group to one without root's powers"
        ));
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
        // Capabilities go with the uid only if they are not kept on purpose.
        if libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) != 0 {
            return Err(fail("prctl(PR_SET_KEEPCAPS)"));
        }
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
    // securebits (SECBIT_NO_SETUID_FIXUP, say) can keep capabilities across setuid.
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| format!("/proc/self/status: {e}"))?;
    match held_capabilities(&status) {
        Some(held) if held.is_empty() => Ok(()),
        Some(held) => Err(format!("capabilities still held after the drop: {}", held.join(", "))),
        None => Err("/proc/self/status: no capability sets".into()),
    }
}

/// The capability sets of a /proc status text that are not empty (names), or None if it
/// lists none.
fn held_capabilities(status: &str) -> Option<Vec<&'static str>> {
    let mut seen = 0;
    let mut held = Vec::new();
    for (field, name) in [("CapPrm:", "permitted"), ("CapEff:", "effective"), ("CapAmb:", "ambient")] {
        let Some(v) = status.lines().find_map(|l| l.strip_prefix(field)) else {
            continue;
        };
        seen += 1;
        // Unreadable counts as held.
        if !u64::from_str_radix(v.trim(), 16).is_ok_and(|bits| bits == 0) {
            held.push(name);
        }
    }
    (seen > 0).then_some(held)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_are_read_from_proc_status() {
        let none = "Name:\tbatv\nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\n";
        assert_eq!(held_capabilities(none), Some(vec![]));
        let kept = none.replace("CapPrm:\t0000000000000000", "CapPrm:\t0000000000000400");
        assert_eq!(held_capabilities(&kept), Some(vec!["permitted"]));
        let garbled = none.replace("CapEff:\t0000000000000000", "CapEff:\tzz");
        assert_eq!(held_capabilities(&garbled), Some(vec!["effective"]), "unreadable counts as held");
        assert_eq!(held_capabilities("Name:\tbatv\n"), None);
    }

    #[test]
    fn not_root_changes_nothing() {
        // SAFETY: plain getter.
        if unsafe { libc::geteuid() } == 0 {
            // Root: a user that is root is refused, whatever the group.
            assert!(run_as(Some("root"), None).unwrap_err().contains("uid 0"));
            assert!(run_as(Some("nobody"), Some("root")).unwrap_err().contains("gid 0"));
            assert!(run_as(Some("no-such-user-batv"), None).unwrap_err().contains("no such user"));
            assert_eq!(run_as(None, None).unwrap(), RunAs::Root);
        } else {
            assert_eq!(run_as(Some("root"), None).unwrap(), RunAs::Unchanged);
        }
        assert_eq!(drop_to(&RunAs::Unchanged), Ok(()));
        assert_eq!(drop_to(&RunAs::Root), Ok(()));
    }
}
