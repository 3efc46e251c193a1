//! The sendmail wrapper: sign the envelope sender, then run the real sendmail.
//!
//! The command line is read with sendmail's own option table (getopt style: options with a
//! value take it joined, `-fuser`, or as the next argument, `-f user`; flags may be
//! clustered, `-ti`; options end at `--` or the first non-option). Only the sender's value
//! is ever changed; every other argument is passed on byte for byte and in order.

use std::ffi::{OsStr, OsString};
use std::io::{self, BufRead, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::core::config::{Config, OnError};
use crate::core::exit::*;
use crate::core::keys::KeyStores;
use crate::core::signer::{Outcome, Signer};
use crate::core::tag;
use crate::smtp::session::{self, Decision, Policy, Session};

/// Largest header block read for `-t` recipient checks.
const MAX_HEADER: usize = 1 << 20;

/// What the real sendmail will be asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Deliver a message from stdin (`-bm`, the default).
    Deliver,
    /// SMTP on stdin/stdout (`-bs`).
    Smtp,
    /// Anything else (`-bp`, `-bi`, `-bv`, `-q`, `-I`, ...): passed through untouched.
    Other,
}

/// Where the sender's value sits: `args[arg][offset..]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub arg: usize,
    pub offset: usize,
}

/// A sendmail command line, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub args: Vec<OsString>,
    /// The last `-f`/`-r` (the last one wins).
    pub sender: Option<Slot>,
    pub mode: Mode,
    /// `-t`: recipients come from the headers.
    pub headers_recipients: bool,
    /// Index of the first recipient argument.
    pub recipients_from: usize,
    /// Why the line could not be read (then it is passed on untouched).
    pub problem: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Arity {
    Flag,
    /// A value, joined or as the next argument.
    Value,
    /// An optional value, joined only (`-q`, `-q1h`; `-d`, `-d0.1`).
    Joined,
}

/// sendmail 8 and Postfix option letters.
fn arity(c: u8) -> Arity {
    match c {
        b'A' | b'B' | b'C' | b'F' | b'L' | b'N' | b'O' | b'R' | b'V' | b'X' | b'b' | b'e' | b'f' | b'h' | b'o' | b'p' | b'r' => {
            Arity::Value
        }
        b'q' | b'd' => Arity::Joined,
        _ => Arity::Flag,
    }
}

impl Invocation {
    /// Read `args` (without argv[0]).
    pub fn parse(args: Vec<OsString>) -> Self {
        let mut inv = Invocation {
            recipients_from: args.len(),
            args,
            sender: None,
            mode: Mode::Deliver,
            headers_recipients: false,
            problem: None,
        };
        let mut i = 0;
        while i < inv.args.len() {
            let a = inv.args[i].as_bytes();
            if a == b"--" {
                inv.recipients_from = i + 1;
                break;
            }
            if a.len() < 2 || a[0] != b'-' {
                inv.recipients_from = i;
                break;
            }
            let mut j = 1;
            while j < a.len() {
                let c = a[j];
                match arity(c) {
                    Arity::Flag => {
                        match c {
                            b't' => inv.headers_recipients = true,
                            b'I' => inv.mode = Mode::Other,
                            _ => {}
                        }
                        j += 1;
                    }
                    Arity::Joined => {
                        if c == b'q' {
                            inv.mode = Mode::Other;
                        }
                        break;
                    }
                    Arity::Value => {
                        let slot = if j + 1 < a.len() {
                            Slot { arg: i, offset: j + 1 }
                        } else if i + 1 < inv.args.len() {
                            i += 1;
                            Slot { arg: i, offset: 0 }
                        } else {
                            inv.problem = Some(format!("option -{} needs a value", c as char));
                            break;
                        };
                        let value = &inv.args[slot.arg].as_bytes()[slot.offset..];
                        match c {
                            b'f' | b'r' => inv.sender = Some(slot),
                            b'b' => {
                                inv.mode = match value.first() {
                                    Some(b'm') => Mode::Deliver,
                                    Some(b's') => Mode::Smtp,
                                    _ => Mode::Other,
                                }
                            }
                            _ => {}
                        }
                        break;
                    }
                }
            }
            i += 1;
        }
        inv
    }

    /// The sender's value as given.
    pub fn sender_value(&self) -> Option<&[u8]> {
        self.sender.map(|s| &self.args[s.arg].as_bytes()[s.offset..])
    }

    /// Recipient arguments (a comma-separated list each, as sendmail allows).
    pub fn recipients(&self) -> impl Iterator<Item = String> + '_ {
        self.args[self.recipients_from.min(self.args.len())..]
            .iter()
            .flat_map(|a| a.to_string_lossy().split(',').map(|r| r.trim().to_string()).collect::<Vec<_>>())
            .filter(|r| !r.is_empty())
    }

    /// The arguments with the sender replaced (or `-f SENDER` put first if there was none).
    pub fn with_sender(&self, sender: &str) -> Vec<OsString> {
        let mut args = self.args.clone();
        match self.sender {
            Some(slot) => {
                let old = args[slot.arg].as_bytes();
                let value = &old[slot.offset..];
                let mut new = old[..slot.offset].to_vec();
                // Keep angle brackets if the caller used them.
                if value.starts_with(b"<") && value.ends_with(b">") {
                    new.extend_from_slice(format!("<{sender}>").as_bytes());
                } else {
                    new.extend_from_slice(sender.as_bytes());
                }
                args[slot.arg] = OsString::from_vec(new);
            }
            None => {
                args.splice(0..0, [OsString::from("-f"), OsString::from(sender)]);
            }
        }
        args
    }
}

/// `<addr>`, ` addr ` -> `addr`; `<>` -> empty.
fn bare_sender(value: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(value).ok()?.trim();
    let s = s.strip_prefix('<').and_then(|s| s.strip_suffix('>')).unwrap_or(s);
    Some(s.trim().to_string())
}

/// Is `rcpt` matched by an `exempt_recipients` entry (`@domain` or a full address)?
pub fn exempt(rcpt: &str, exemptions: &[String]) -> bool {
    let rcpt = rcpt.trim().trim_start_matches('<').trim_end_matches('>');
    let domain = rcpt.rsplit_once('@').map(|(_, d)| d);
    exemptions.iter().any(|e| match e.strip_prefix('@') {
        Some(d) => domain.is_some_and(|rd| rd.eq_ignore_ascii_case(d)),
        None => e.eq_ignore_ascii_case(rcpt),
    })
}

/// The login name of the real user (as Postfix's sendmail uses), if any.
fn login_name() -> Option<String> {
    // SAFETY: getpwuid_r with buffers we own; the result points into `buf`.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        if libc::getpwuid_r(libc::getuid(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) != 0 || out.is_null() {
            return None;
        }
        let name = std::ffi::CStr::from_ptr(pw.pw_name);
        name.to_str().ok().map(str::to_string)
    }
}

/// Warn on stderr and in the mail log.
fn warn(msg: &str) {
    eprintln!("batv sendmail: {msg}");
    crate::core::log::syslog_warning(msg);
}

/// Everything the wrapper needs that can fail before it runs the real sendmail.
pub struct Wrapper {
    pub config: Config,
    pub keys_dir: std::path::PathBuf,
    pub now: i64,
    /// argv[0] to give the real sendmail (Postfix looks at it for mailq/newaliases).
    pub argv0: OsString,
    /// Started set-id: drop privileges and the caller's environment before running the
    /// real sendmail.
    pub privileged: bool,
}

impl Wrapper {
    fn signer(&self) -> Result<Signer, String> {
        let stores = KeyStores::from_config(&self.config, &self.keys_dir).map_err(|e| e.to_string())?;
        let keys = stores.load().map_err(|e| e.to_string())?;
        Signer::new(keys, &self.config).map_err(|e| e.to_string())
    }

    /// Refuse to run ourselves: a loop would fork until the machine gives up.
    fn check_loop(&self) -> Result<(), String> {
        let real = std::fs::canonicalize(&self.config.sendmail.path)
            .map_err(|e| format!("sendmail.path {}: {e}", self.config.sendmail.path.display()))?;
        let me = std::env::current_exe().and_then(std::fs::canonicalize).ok();
        if me.as_deref() == Some(real.as_path()) {
            return Err(format!(
                "sendmail.path {} is batv itself; point it at the real sendmail",
                self.config.sendmail.path.display()
            ));
        }
        Ok(())
    }

    /// The real sendmail's command. Called only after the keys are read: from here on
    /// a set-id wrapper holds no privilege.
    fn command(&self, args: &[OsString]) -> io::Result<Command> {
        let mut c = Command::new(&self.config.sendmail.path);
        c.arg0(&self.argv0).args(args);
        if self.privileged {
            crate::core::privilege::drop_privileges()?;
            c.env_clear().env("PATH", crate::core::privilege::SAFE_PATH);
            for var in crate::core::privilege::SAFE_ENV {
                if let Some(v) = std::env::var_os(var) {
                    c.env(var, v);
                }
            }
        }
        Ok(c)
    }

    fn cannot_run(&self, e: io::Error) -> u8 {
        let msg = format!("cannot run {}: {e}", self.config.sendmail.path.display());
        eprintln!("batv sendmail: {msg}");
        crate::core::log::syslog_error(&msg);
        EX_TEMPFAIL
    }

    /// Replace this process with the real sendmail (stdin inherited, nothing copied).
    fn exec(&self, args: &[OsString]) -> u8 {
        let err = match self.command(args) {
            Ok(mut c) => c.exec(),
            Err(e) => e,
        };
        self.cannot_run(err)
    }

    /// Run the wrapper. Returns the exit status (only on failure when it execs).
    pub fn run(&self, args: Vec<OsString>) -> u8 {
        if let Err(e) = self.check_loop() {
            eprintln!("batv sendmail: {e}");
            crate::core::log::syslog_error(&e);
            return EX_CONFIG;
        }
        let name = Path::new(&self.argv0).file_name().unwrap_or_default().to_os_string();
        let inv = Invocation::parse(args);
        if name == OsStr::new("mailq") || name == OsStr::new("newaliases") || inv.mode == Mode::Other || inv.problem.is_some() {
            return self.exec(&inv.args);
        }
        if inv.mode == Mode::Smtp {
            return self.run_smtp(&inv);
        }
        // The sender: the last -f/-r, else the login name at default_domain.
        let sender = match inv.sender_value() {
            Some(v) => match bare_sender(v) {
                Some(s) => s,
                None => return self.exec(&inv.args),
            },
            None => match (login_name(), &self.config.sendmail.default_domain) {
                (Some(user), Some(domain)) => format!("{user}@{domain}"),
                // No domain to sign for: the real sendmail picks the sender.
                _ => return self.exec(&inv.args),
            },
        };
        let exemptions = &self.config.sendmail.exempt_recipients;
        if inv.recipients().any(|r| exempt(&r, exemptions)) {
            return self.exec(&inv.args);
        }
        let signed = match self.sign(&sender) {
            Ok(Some(s)) => s,
            Ok(None) => return self.exec(&inv.args),
            Err(code) => return code,
        };
        let args = inv.with_sender(&signed);
        if inv.headers_recipients && !exemptions.is_empty() {
            return self.run_checking_headers(&inv.args, &args);
        }
        self.exec(&args)
    }

    /// The signer, or what `on_error` says to do without one: `Ok(None)` goes on unsigned
    /// (with a warning), `Err(code)` stops with that status.
    fn signer_or_fallback(&self) -> Result<Option<Signer>, u8> {
        match self.signer() {
            Ok(s) => Ok(Some(s)),
            Err(e) => self.unsigned(&e).map(|()| None),
        }
    }

    /// What `on_error` says when a sender cannot be signed: `Ok` goes on unsigned (with a
    /// warning), `Err(code)` stops with that status.
    fn unsigned(&self, why: &str) -> Result<(), u8> {
        match self.config.sendmail.on_error {
            OnError::Pass => {
                warn(&format!("sending unsigned: {why}"));
                Ok(())
            }
            OnError::Tempfail => {
                warn(&format!("not sending (on_error = tempfail): {why}"));
                Err(EX_TEMPFAIL)
            }
        }
    }

    /// Sign one sender. `Ok(None)`: send unsigned. `Err(code)`: stop with that status.
    fn sign(&self, sender: &str) -> Result<Option<String>, u8> {
        let Some(signer) = self.signer_or_fallback()? else {
            return Ok(None);
        };
        match signer.sign(sender, tag::unix_day(self.now)) {
            Outcome::Signed(s) => Ok(Some(s)),
            Outcome::Skipped(_) | Outcome::Invalid(_) => Ok(None),
            // Its domain's store cannot sign: the same as no keys at all.
            Outcome::NoKey => self
                .unsigned(&format!("no active key for the sender's domain ({})", crate::core::log::q(sender)))
                .map(|()| None),
        }
    }

    /// `-t` with exemptions: read the header block, decide, then run the real sendmail
    /// and give it the header followed by the rest of stdin (spliced, not buffered).
    fn run_checking_headers(&self, unsigned: &[OsString], signed: &[OsString]) -> u8 {
        let stdin = io::stdin();
        let mut input = stdin.lock();
        let header = match read_header(&mut input) {
            Ok(h) => h,
            Err(e) => {
                eprintln!("batv sendmail: reading the message: {e}");
                return EX_IOERR;
            }
        };
        let exempted = match header_recipients(&header) {
            Some(rcpts) => rcpts.iter().any(|r| exempt(r, &self.config.sendmail.exempt_recipients)),
            None => {
                warn("header block too large or unreadable to check recipients; sending unsigned");
                true
            }
        };
        let args = if exempted { unsigned } else { signed };
        let mut child = match self.command(args).and_then(|mut c| c.stdin(Stdio::piped()).spawn()) {
            Ok(c) => c,
            Err(e) => return self.cannot_run(e),
        };
        let copied = (|| -> io::Result<()> {
            let mut to = child.stdin.take().ok_or_else(|| io::Error::other("no stdin"))?;
            to.write_all(&header)?;
            io::copy(&mut input, &mut to)?;
            Ok(())
        })();
        let status = match child.wait() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("batv sendmail: waiting for {}: {e}", self.config.sendmail.path.display());
                return EX_TEMPFAIL;
            }
        };
        if let Err(e) = copied {
            // The real sendmail stopped reading: its status tells the caller what happened.
            if e.kind() != io::ErrorKind::BrokenPipe {
                eprintln!("batv sendmail: passing the message on: {e}");
                if status.success() {
                    return EX_IOERR;
                }
            }
        }
        exit_status(status)
    }

    /// `-bs`: an SMTP session on stdin/stdout, relayed to `sendmail.path -bs`, signing
    /// MAIL FROM on the way.
    fn run_smtp(&self, inv: &Invocation) -> u8 {
        let signer = match self.signer_or_fallback() {
            Ok(s) => s,
            Err(code) => return code,
        };
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("batv sendmail: {e}");
                return EX_SOFTWARE;
            }
        };
        let mut policy = SignPolicy {
            signer,
            today: tag::unix_day(self.now),
        };
        let code = rt.block_on(async {
            let spawned = self.command(&inv.args).and_then(|c| {
                let mut cmd = tokio::process::Command::from(c);
                cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
                cmd.spawn()
            });
            let mut child = match spawned {
                Ok(c) => c,
                Err(e) => return self.cannot_run(e),
            };
            let (Some(down_w), Some(down_r)) = (child.stdin.take(), child.stdout.take()) else {
                return EX_SOFTWARE;
            };
            let mut session = Session::new(
                tokio::io::BufReader::new(tokio::io::stdin()),
                tokio::io::stdout(),
                tokio::io::BufReader::new(down_r),
                down_w,
                &mut policy,
                session::Limits::default(),
            );
            let result = session.run().await;
            // Closing the child's stdin lets it see the end and exit.
            drop(session);
            if let Err(e) = &result {
                eprintln!("batv sendmail: SMTP session: {e}");
            }
            match child.wait().await {
                Ok(status) => exit_status(status),
                Err(_) => EX_TEMPFAIL,
            }
        });
        // Do not wait for the blocking stdin reader: the session is over.
        rt.shutdown_background();
        code
    }
}

/// The real sendmail's status as ours (a signal becomes 75: try again).
fn exit_status(status: std::process::ExitStatus) -> u8 {
    match status.code() {
        Some(c) => c.clamp(0, 255) as u8,
        None => {
            let sig = status.signal().unwrap_or(0);
            eprintln!("batv sendmail: the real sendmail died of signal {sig}");
            EX_TEMPFAIL
        }
    }
}

/// Read the header block (through the empty line) without reading further.
fn read_header<R: BufRead>(r: &mut R) -> io::Result<Vec<u8>> {
    let mut header = Vec::new();
    loop {
        let before = header.len();
        let n = r
            .by_ref()
            .take((MAX_HEADER + 1 - header.len().min(MAX_HEADER)) as u64)
            .read_until(b'\n', &mut header)?;
        let line = &header[before..];
        if n == 0 || line == b"\n" || line == b"\r\n" || header.len() > MAX_HEADER {
            return Ok(header);
        }
    }
}

/// To, Cc and Bcc addresses of a header block; `None` if it is not a complete header.
pub fn header_recipients(header: &[u8]) -> Option<Vec<String>> {
    if header.len() > MAX_HEADER {
        return None;
    }
    let msg = mail_parser::MessageParser::new().parse_headers(header)?;
    let mut out = Vec::new();
    for name in [
        mail_parser::HeaderName::To,
        mail_parser::HeaderName::Cc,
        mail_parser::HeaderName::Bcc,
    ] {
        for v in msg.header_values(name) {
            if let Some(list) = v.as_address() {
                out.extend(list.iter().filter_map(|a| a.address()).map(str::to_string));
            }
        }
    }
    Some(out)
}

/// Signing direction for `-bs`: MAIL FROM gets a tag; nothing is refused.
struct SignPolicy {
    signer: Option<Signer>,
    today: i64,
}

impl Policy for SignPolicy {
    fn mail(&mut self, path: &str) -> Decision {
        match self.signer.as_ref().map(|s| s.sign(path, self.today)) {
            Some(Outcome::Signed(s)) => Decision::Relay(Some(s)),
            _ => Decision::Relay(None),
        }
    }
    fn rcpt(&mut self, _path: &str) -> Decision {
        Decision::Relay(None)
    }
    fn reset(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(args: &[&str]) -> Invocation {
        Invocation::parse(args.iter().map(OsString::from).collect())
    }

    fn strs(v: Vec<OsString>) -> Vec<String> {
        v.into_iter().map(|s| s.into_string().unwrap()).collect()
    }

    #[test]
    fn option_table() {
        // PHP mail(): -t -i -f from the fifth parameter.
        let i = inv(&["-t", "-i", "-fwww@example.com"]);
        assert_eq!(i.sender_value(), Some(&b"www@example.com"[..]));
        assert!(i.headers_recipients);
        assert_eq!(i.mode, Mode::Deliver);
        // cron: -FCronDaemon -i -B8BITMIME -oem user
        let i = inv(&["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"]);
        assert_eq!((i.sender, i.recipients().collect::<Vec<_>>()), (None, vec!["root".to_string()]));
        // Separate values, clusters, repeated -f (last wins), -- and recipients.
        let i = inv(&[
            "-F",
            "Full Name",
            "-f",
            "a@x.org",
            "-ti",
            "-r",
            "<b@x.org>",
            "-N",
            "never",
            "--",
            "-odd@x.org",
        ]);
        assert_eq!(i.sender_value(), Some(&b"<b@x.org>"[..]));
        assert_eq!(i.recipients().collect::<Vec<_>>(), ["-odd@x.org"]);
        assert!(i.headers_recipients);
        assert_eq!(
            strs(i.with_sender("s@x.org")),
            [
                "-F",
                "Full Name",
                "-f",
                "a@x.org",
                "-ti",
                "-r",
                "<s@x.org>",
                "-N",
                "never",
                "--",
                "-odd@x.org"
            ]
        );
        // Modes.
        assert_eq!(inv(&["-bs"]).mode, Mode::Smtp);
        assert_eq!(inv(&["-b", "s"]).mode, Mode::Smtp);
        for other in [&["-bp"][..], &["-bi"], &["-bv", "a@x"], &["-q"], &["-q1h"], &["-qIabc"], &["-I"]] {
            assert_eq!(inv(other).mode, Mode::Other, "{other:?}");
        }
        // -q takes its value joined only: the next argument is a recipient.
        assert_eq!(inv(&["-q", "x@y"]).recipients().collect::<Vec<_>>(), ["x@y"]);
        // A value missing at the end: pass through untouched.
        assert!(inv(&["-i", "-f"]).problem.is_some());
        // -oi / -o i / -odi are one option each.
        let i = inv(&["-o", "i", "-odi", "-oem", "a@b"]);
        assert_eq!(i.recipients().collect::<Vec<_>>(), ["a@b"]);
        // Joined -f inside a cluster: the value is the rest of the argument.
        let i = inv(&["-tfme@x.org"]);
        assert_eq!(strs(i.with_sender("new@x.org")), ["-tfnew@x.org"]);
        // No sender: put first.
        assert_eq!(strs(inv(&["-i", "a@b"]).with_sender("s@x.org")), ["-f", "s@x.org", "-i", "a@b"]);
        // Comma-separated recipients.
        assert_eq!(inv(&["a@b, c@d", "e@f"]).recipients().collect::<Vec<_>>(), ["a@b", "c@d", "e@f"]);
    }

    #[test]
    fn exemptions() {
        let e = vec!["@lists.example.org".to_string(), "announce@example.net".to_string()];
        assert!(exempt("x@Lists.Example.org", &e));
        assert!(exempt("<Announce@example.net>", &e));
        assert!(!exempt("x@sub.lists.example.org", &e));
        assert!(!exempt("other@example.net", &e));
    }

    #[test]
    fn header_block() {
        let msg = b"To: A <a@x.org>, b@y.org\r\nCc: undisclosed:;\r\nBcc: <c@z.org>\r\nSubject: hi\r\n\r\nbody\r\nTo: not@me\r\n";
        let mut r = &msg[..];
        let h = read_header(&mut r).unwrap();
        assert!(h.ends_with(b"\r\n\r\n"));
        assert_eq!(r, b"body\r\nTo: not@me\r\n");
        assert_eq!(header_recipients(&h).unwrap(), ["a@x.org", "b@y.org", "c@z.org"]);
    }
}
