//! `batv daemon` for the tests: a unix socket and a loopback TCP port, its own keys and
//! config in a temporary directory, stopped by PID when dropped.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::postfix::free_port;

pub const BIN: &str = env!("CARGO_BIN_EXE_batv");
/// The daemon, `sign` and `verify` all evaluate tags as of this time.
pub const NOW: &str = "2026-11-23T12:00:00Z";

/// `batv` with the test's config and keys in `dir`, as of `now`.
pub fn batv(dir: &Path, now: &str) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--config")
        .arg(dir.join("batv.toml"))
        .arg("--keys")
        .arg(dir.join("keys"))
        .args(["--now", now]);
    c
}

/// `batv daemon` on a unix socket and a loopback TCP port; SIGTERM (then SIGKILL) when dropped.
pub struct Daemon {
    child: Child,
    pub dir: tempfile::TempDir,
    pub sock: PathBuf,
    pub port: u16,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    pub fn start() -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        // Postfix's smtpd and cleanup run as the postfix user: they must reach the socket.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        std::fs::write(dir.path().join("batv.toml"), "sign_domains = [\"example.org\"]\n").unwrap();
        let init = batv(dir.path(), NOW).args(["keys", "init"]).output().unwrap();
        assert!(init.status.success(), "keys init: {}", String::from_utf8_lossy(&init.stderr));
        let (sock, port) = (dir.path().join("batv.sock"), free_port());
        // A stale socket from an earlier run, which the daemon replaces.
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        let mut child = batv(dir.path(), NOW)
            .arg("daemon")
            .arg("--listen")
            .arg(format!("unix:{}", sock.display()))
            .arg("--listen")
            .arg(format!("inet:127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = BufReader::new(child.stderr.take().unwrap());
        let log: Arc<Mutex<String>> = Arc::default();
        let l = log.clone();
        std::thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                l.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let mut d = Daemon {
            child,
            dir,
            sock,
            port,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while UnixStream::connect(&d.sock).is_err() || TcpStream::connect(("127.0.0.1", d.port)).is_err() {
            if let Some(status) = d.child.try_wait().unwrap() {
                panic!("batv daemon exited ({status}): {}", d.log());
            }
            assert!(Instant::now() < deadline, "batv daemon did not listen: {}", d.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    pub fn batv(&self, now: &str, args: &[&str]) -> std::process::Output {
        batv(self.dir.path(), now).args(args).stdin(Stdio::null()).output().unwrap()
    }

    /// `batv sign addr` (as of `now`).
    pub fn sign_at(&self, now: &str, addr: &str) -> String {
        let o = self.batv(now, &["sign", addr]);
        assert!(o.status.success(), "sign {addr}: {}", String::from_utf8_lossy(&o.stderr));
        let tagged = String::from_utf8(o.stdout).unwrap().trim().to_string();
        assert!(tagged.starts_with("prvs=") && tagged.ends_with(addr), "sign {addr}: {tagged}");
        tagged
    }

    pub fn sign(&self, addr: &str) -> String {
        self.sign_at(NOW, addr)
    }

    /// `batv verify addr`: the original address if the tag is valid.
    pub fn verify(&self, addr: &str) -> Option<String> {
        let o = self.batv(NOW, &["verify", addr]);
        o.status.success().then(|| String::from_utf8(o.stdout).unwrap().trim().to_string())
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGTERM; the exit status once it has stopped (SIGKILL after 10 s).
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        if let Some(s) = self.child.try_wait().unwrap() {
            return Some(s);
        }
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- batv daemon log ---\n{}", self.log());
        }
        self.terminate();
    }
}
