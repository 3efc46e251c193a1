//! Messages to the system log (facility mail), for modes that run unattended.

use std::ffi::CString;
use std::sync::Once;

static OPEN: Once = Once::new();

fn log(priority: libc::c_int, msg: &str) {
    OPEN.call_once(|| {
        // SAFETY: the ident is a 'static C string; openlog keeps the pointer.
        unsafe { libc::openlog(c"batv".as_ptr(), libc::LOG_PID | libc::LOG_NDELAY, libc::LOG_MAIL) };
    });
    let Ok(text) = CString::new(msg.replace('\0', " ")) else {
        return;
    };
    // SAFETY: "%s" with one valid C string argument.
    unsafe { libc::syslog(priority, c"%s".as_ptr(), text.as_ptr()) };
}

pub fn warning(msg: &str) {
    log(libc::LOG_WARNING, msg);
}

pub fn error(msg: &str) {
    log(libc::LOG_ERR, msg);
}
