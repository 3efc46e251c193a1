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
