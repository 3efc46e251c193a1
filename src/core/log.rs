//! Log lines for the daemons, on stderr (journald, or a supervisor's log file), and the
//! system log for the sendmail wrapper.
//!
//! `eprintln!` writes unbuffered, piece by piece: a line with escaped fields costs one
//! write(2) per piece (measured: a fifth of the proxy's CPU with the DATA check on). A
//! line here is formatted first and written once, so it also arrives whole.
//!
//! A line starts with an RFC 3339 time, unless stderr is journald's (`JOURNAL_STREAM`
//! names it), which stamps each line itself.

use std::fmt;
use std::io::Write;
use std::os::fd::AsFd;
use std::sync::OnceLock;

/// Whether log lines carry their own time.
static STAMP: OnceLock<bool> = OnceLock::new();

/// True unless stderr is the stream systemd's `JOURNAL_STREAM` (`device:inode`) names.
fn stamped() -> bool {
    *STAMP.get_or_init(|| !journal_stream(std::env::var("JOURNAL_STREAM").ok().as_deref(), stderr_id()))
}

/// stderr's device and inode.
fn stderr_id() -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let f = std::fs::File::from(std::io::stderr().as_fd().try_clone_to_owned().ok()?);
    f.metadata().ok().map(|m| (m.dev(), m.ino()))
}

/// Whether `value` (`JOURNAL_STREAM`) names the stream `id` is.
fn journal_stream(value: Option<&str>, id: Option<(u64, u64)>) -> bool {
    let (Some(value), Some((dev, ino))) = (value, id) else {
        return false;
    };
    let mut parts = value.split(':').map(|p| p.parse::<u64>().ok());
    matches!((parts.next(), parts.next(), parts.next()), (Some(Some(d)), Some(Some(i)), None) if d == dev && i == ino)
}

/// Write one formatted line (the newline added) in one write.
pub fn line(args: fmt::Arguments<'_>) {
    let mut s = String::with_capacity(256);
    if stamped() {
        s.push_str(&chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, false));
        s.push(' ');
    }
    let _ = fmt::write(&mut s, args);
    s.push('\n');
    let _ = std::io::stderr().lock().write_all(s.as_bytes());
}

/// `eprintln!`, but one write per line: see the module comment.
#[macro_export]
macro_rules! logln {
    ($($arg:tt)*) => {
        $crate::core::log::line(format_args!($($arg)*))
    };
}

/// A log value, written so that no input can add a field or a line (logfmt style): as
/// is when it is a plain word, else in double quotes with `"`, `\`, control characters
/// and other white space escaped. `<` and `>` and `=` are plain (addresses and tags).
pub struct Value<'a>(pub &'a str);

/// Quote a value for a log line: see [`Value`].
pub fn q(s: &str) -> Value<'_> {
    Value(s)
}

impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plain = !self.0.is_empty() && self.0.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '\\');
        if plain {
            return f.write_str(self.0);
        }
        f.write_str("\"")?;
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                ' ' => f.write_str(" ")?,
                c if c.is_control() || c.is_whitespace() || is_format(c) => write!(f, "\\u{{{:x}}}", c as u32)?,
                c => write!(f, "{c}")?,
            }
        }
        f.write_str("\"")
    }
}

/// Invisible characters that reorder or hide text on a terminal (bidi controls, zero
/// widths): escaped too, so a log line reads as it is.
fn is_format(c: char) -> bool {
    matches!(c as u32, 0x200b..=0x200f | 0x202a..=0x202e | 0x2060..=0x2064 | 0x2066..=0x2069 | 0xfeff)
}

/// The system log (facility mail), for the sendmail wrapper, which runs unattended and
/// has no stderr anyone reads.
mod syslog {
    use std::ffi::CString;
    use std::sync::Once;

    static OPEN: Once = Once::new();

    pub(super) fn log(priority: libc::c_int, msg: &str) {
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
}

/// A warning to the system log.
pub fn syslog_warning(msg: &str) {
    syslog::log(libc::LOG_WARNING, msg);
}

/// An error to the system log.
pub fn syslog_error(msg: &str) {
    syslog::log(libc::LOG_ERR, msg);
}

#[cfg(test)]
mod tests {
    use super::q;

    #[test]
    fn journald_is_told_by_device_and_inode() {
        use super::journal_stream;
        assert!(journal_stream(Some("8:1234"), Some((8, 1234))));
        assert!(!journal_stream(Some("8:1234"), Some((8, 1235))), "another stream");
        assert!(!journal_stream(Some("8:1234:5"), Some((8, 1234))));
        assert!(!journal_stream(Some("x:1234"), Some((8, 1234))));
        assert!(!journal_stream(None, Some((8, 1234))), "no JOURNAL_STREAM: stamp");
        assert!(!journal_stream(Some("8:1234"), None));
    }

    #[test]
    fn values_cannot_add_fields() {
        assert_eq!(q("<bob@example.com>").to_string(), "<bob@example.com>");
        assert_eq!(
            q("<prvs=1234abcdef=bob@example.com>").to_string(),
            "<prvs=1234abcdef=bob@example.com>"
        );
        assert_eq!(q("").to_string(), "\"\"");
        assert_eq!(
            q("<\"x verdict=bounce-ok\"@example.com>").to_string(),
            "\"<\\\"x verdict=bounce-ok\\\"@example.com>\""
        );
        assert_eq!(q("a\nb\r\tc\\").to_string(), "\"a\\nb\\r\\tc\\\\\"");
        assert_eq!(q("é\u{202e}x\u{85}").to_string(), "\"é\\u{202e}x\\u{85}\"");
    }
}
