//! The user and group databases (getpwnam_r and friends), for key-file checks and for a
//! daemon's drop to its user.

/// An entry of the user or group database, looked up by `call` (a `get*_r` function) into
/// a buffer of its own, grown while the entry does not fit (a group of many members);
/// `read` sees it while the buffer its strings point into lives.
pub(crate) fn nss_entry<E: NssEntry, T>(
    mut call: impl FnMut(*mut E, *mut libc::c_char, usize, *mut *mut E) -> libc::c_int,
    read: impl FnOnce(&E) -> T,
) -> Option<T> {
    let mut size = 16 * 1024;
    loop {
        // SAFETY: NssEntry types are plain C structs, for which all zeros is a valid value.
        let mut entry: E = unsafe { std::mem::zeroed() };
        let mut buf = vec![0 as libc::c_char; size];
        let mut result: *mut E = std::ptr::null_mut();
        let rc = call(&mut entry, buf.as_mut_ptr(), buf.len(), &mut result);
        if rc == libc::ERANGE && size < 1 << 20 {
            size *= 4;
            continue;
        }
        return (rc == 0 && !result.is_null()).then(|| read(&entry));
    }
}

/// The structs `nss_entry` may zero.
///
/// # Safety
/// Only plain C structs for which all zero bytes are a valid value.
pub(crate) unsafe trait NssEntry {}
// SAFETY: C structs of integers and pointers.
unsafe impl NssEntry for libc::passwd {}
// SAFETY: as above.
unsafe impl NssEntry for libc::group {}

/// A string of an entry `nss_entry` found.
///
/// # Safety
/// `p` is one of the entry's string fields, read inside `nss_entry`'s `read` (while the
/// buffer it points into lives).
pub(crate) unsafe fn entry_str(p: *const libc::c_char) -> String {
    // SAFETY: per the contract, NUL-terminated text in a live buffer.
    unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// A user's name and uid for messages ("nobody (uid 65534)"), or the uid alone.
pub fn user_name(uid: u32) -> String {
    // SAFETY: the pointers nss_entry passes are valid for the call.
    nss_entry(
        |pw, buf, len, res| unsafe { libc::getpwuid_r(uid, pw, buf, len, res) },
        // SAFETY: inside read, a field of the entry.
        |pw: &libc::passwd| format!("{} (uid {uid})", unsafe { entry_str(pw.pw_name) }),
    )
    .unwrap_or_else(|| format!("uid {uid}"))
}

/// A group's name, or its number if it has none.
pub fn group_name(gid: u32) -> String {
    // SAFETY: the pointers nss_entry passes are valid for the call.
    nss_entry(
        |gr, buf, len, res| unsafe { libc::getgrgid_r(gid, gr, buf, len, res) },
        // SAFETY: inside read, a field of the entry.
        |gr: &libc::group| unsafe { entry_str(gr.gr_name) },
    )
    .unwrap_or_else(|| gid.to_string())
}

/// A group's gid by name; a number is a gid (a container's fsGroup often has no name in
/// /etc/group).
pub fn group_id(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Some(gid);
    }
    let cname = std::ffi::CString::new(name).ok()?;
    // SAFETY: the pointers nss_entry passes are valid for the call; cname outlives it.
    nss_entry(
        |gr, buf, len, res| unsafe { libc::getgrnam_r(cname.as_ptr(), gr, buf, len, res) },
        |gr: &libc::group| gr.gr_gid,
    )
}

/// A user as the system knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    /// The user's own (primary) group.
    pub gid: u32,
}

/// A user by name, or by uid if `name` is a number.
pub fn user(name: &str) -> Option<User> {
    let read = |pw: &libc::passwd| User {
        // SAFETY: inside read, a field of the entry.
        name: unsafe { entry_str(pw.pw_name) },
        uid: pw.pw_uid,
        gid: pw.pw_gid,
    };
    if let Ok(uid) = name.parse::<u32>() {
        // SAFETY: the pointers nss_entry passes are valid for the call.
        return nss_entry(|pw, buf, len, res| unsafe { libc::getpwuid_r(uid, pw, buf, len, res) }, read);
    }
    let cname = std::ffi::CString::new(name).ok()?;
    // SAFETY: the pointers nss_entry passes are valid for the call; cname outlives it.
    nss_entry(
        |pw, buf, len, res| unsafe { libc::getpwnam_r(cname.as_ptr(), pw, buf, len, res) },
        read,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_numbers() {
        let root = user("root").expect("root is in every user database");
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(user("0").map(|u| u.name), Some("root".into()));
        assert_eq!(group_id("0"), Some(0));
        assert_eq!(group_id("4242424"), Some(4_242_424), "a gid needs no name");
        assert_eq!(user("no-such-user-batv-test"), None);
        assert_eq!(group_id("no-such-group-batv-test"), None);
        assert_eq!(user_name(0), "root (uid 0)");
        assert_eq!(group_name(0), "root");
        assert_eq!(group_name(4_242_424), "4242424");
    }
}
