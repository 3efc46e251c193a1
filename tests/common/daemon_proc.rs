//! `batv daemon` under test: a temporary config and keys directory, the daemon listening on
//! a unix socket and a loopback TCP port, its log, and raw clients for its three protocols
//! (socketmap netstrings, policy delegation, Exim's one line).

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use super::{run_bounded, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_batv");
/// The fixed clock of every command and daemon (tags are deterministic in time).
pub const NOW: &str = "2026-11-23T12:00:00Z";
/// Read and write timeout of every client socket.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a batv command may run.
const CMD_LIMIT: Duration = Duration::from_secs(15);

/// Run `body` on a thread of its own and fail if it takes longer than `limit`. (A daemon
/// left behind by a body that hangs dies with the test process: see `PR_SET_PDEATHSIG`.)
pub fn bounded(limit: Duration, body: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let h = std::thread::spawn(move || {
        body();
        let _ = tx.send(());
    });
    match rx.recv_timeout(limit) {
        Ok(()) => h.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => match h.join() {
            Err(p) => std::panic::resume_unwind(p),
            Ok(()) => unreachable!(),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("test ran longer than {limit:?}"),
    }
}

/// A config file and a keys directory (one active key, made at `NOW`).
pub struct Store {
    pub dir: tempfile::TempDir,
    pub keys: PathBuf,
    pub config: PathBuf,
}

impl Store {
    /// `sign_domains = ["example.org"]` followed by `extra` (e.g. a `[daemon]` table).
    pub fn new(extra: &str) -> Store {
        let s = Store::without_keys(extra);
        let o = s.batv(NOW, &["keys", "init"]);
        assert_eq!(o.code, 0, "keys init: {}", o.stderr);
        s
    }

    /// The config file only; `keys` is not created.
    pub fn without_keys(extra: &str) -> Store {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let config = dir.path().join("batv.toml");
        std::fs::write(&config, format!("sign_domains = [\"example.org\"]\n{extra}")).unwrap();
        Store { dir, keys, config }
    }

    pub fn set_config(&self, text: &str) {
        // Written to a temporary file and renamed: the daemon never reads half a file.
        let tmp = self.dir.path().join("batv.toml.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
    }

    /// `batv --config C --keys K --now NOW ARGS...`, bounded in time.
    pub fn batv(&self, now: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--keys")
            .arg(&self.keys)
            .args(["--now", now])
            .args(args);
        run_bounded(cmd, b"", CMD_LIMIT)
    }

    /// A tag for `addr` as of `now`.
    pub fn sign(&self, now: &str, addr: &str) -> String {
        let o = self.batv(now, &["sign", addr]);
        assert_eq!(o.code, 0, "sign {addr}: {}", o.stderr);
        let t = String::from_utf8(o.stdout).unwrap().trim().to_string();
        assert!(t.starts_with("prvs="), "{t}");
        t
    }

    /// `batv verify` on each address: the originals it printed, or the exit code and stderr.
    pub fn verify(&self, now: &str, addrs: &[&str]) -> Result<Vec<String>, (i32, String)> {
        let mut args = vec!["verify"];
        args.extend_from_slice(addrs);
        let o = self.batv(now, &args);
        if o.code != 0 {
            return Err((o.code, o.stderr));
        }
        Ok(String::from_utf8(o.stdout).unwrap().lines().map(str::to_string).collect())
    }

    /// The daemon command line, listening on `listen` (e.g. `unix:/path`).
    pub fn daemon_cmd(&self, now: &str, listen: &[String]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--keys")
            .arg(&self.keys)
            .args(["--now", now, "daemon"]);
        for l in listen {
            cmd.arg("--listen").arg(l);
        }
        cmd
    }
}

/// A running daemon, killed (by its PID) when dropped; its log is printed if the test
/// panicked.
pub struct Daemon {
    pub child: Child,
    pub store: Store,
    pub sock: PathBuf,
    pub tcp: std::net::SocketAddr,
    pub now: String,
    /// Everything the daemon wrote on stderr so far.
    pub log: Arc<Mutex<String>>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            if lines.len() > 150 {
                let (head, tail) = (lines[..20].join("\n"), lines[lines.len() - 100..].join("\n"));
                eprintln!("--- daemon log ---\n{head}\n[... {} lines ...]\n{tail}", lines.len() - 120);
            } else {
                eprintln!("--- daemon log ---\n{log}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `cmd` (killed with the test process), its stderr collected into a log and sent
/// line by line.
pub fn spawn_logged(mut cmd: Command) -> (Child, Arc<Mutex<String>>, mpsc::Receiver<String>) {
    die_with_parent(&mut cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel::<String>();
    let l = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            l.lock().unwrap().push_str(&format!("{line}\n"));
            let _ = tx.send(line);
        }
    });
    (child, log, rx)
}

/// Kill the child when the thread that started it ends (the test process included),
/// whatever happens to the test.
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches only the new process.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

impl Daemon {
    /// A daemon on a fresh store with `extra` config, at `NOW`.
    pub fn start(extra: &str) -> Daemon {
        Daemon::start_at(Store::new(extra), NOW)
    }

    /// A daemon on `store` at `now`, on unix:DIR/sock and inet:127.0.0.1:0.
    pub fn start_at(store: Store, now: &str) -> Daemon {
        let sock = store.dir.path().join("sock");
        let listen = [format!("unix:{}", sock.display()), "inet:127.0.0.1:0".to_string()];
        let (mut child, log, rx) = spawn_logged(store.daemon_cmd(now, &listen));
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut tcp = None;
        let mut unix = false;
        while tcp.is_none() || !unix {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(a) = line.split("listening on inet:").nth(1) {
                        tcp = Some(a.trim().parse().unwrap());
                    }
                    unix |= line.contains(&format!("listening on unix:{}", sock.display()));
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("daemon did not start ({e}): {}", log.lock().unwrap());
                }
            }
        }
        Daemon {
            child,
            store,
            sock,
            tcp: tcp.unwrap(),
            now: now.to_string(),
            log,
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Wait (at most 10 s) until `needle` is in the log `n` times.
    pub fn wait_log(&self, needle: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.log().matches(needle).count() < n {
            assert!(Instant::now() < deadline, "{needle:?} not logged {n} times: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: i32) {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on our own child's PID (not yet reaped).
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    /// SIGTERM, and the exit status (within 10 s).
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "daemon did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn unix(&self) -> Client {
        Client::unix(&self.sock)
    }

    pub fn tcp(&self) -> Client {
        Client::tcp(self.tcp)
    }

    /// One new connection on each listener.
    pub fn both(&self) -> [Client; 2] {
        [self.unix(), self.tcp()]
    }

    pub fn sign(&self, addr: &str) -> String {
        self.store.sign(&self.now, addr)
    }
}

/// A stream both ways, with a half-close.
pub trait Duplex: Read + Write + Send {
    fn shutdown_write(&self) -> std::io::Result<()>;
}

impl Duplex for UnixStream {
    fn shutdown_write(&self) -> std::io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

impl Duplex for TcpStream {
    fn shutdown_write(&self) -> std::io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

/// A netstring.
pub fn ns(payload: &str) -> Vec<u8> {
    let mut v = format!("{}:", payload.len()).into_bytes();
    v.extend_from_slice(payload.as_bytes());
    v.push(b',');
    v
}

/// A policy request as Postfix's smtpd sends it (SMTPD_POLICY_README), RCPT stage of a
/// bounce; `set` replaces attributes (or adds them).
pub fn policy_request(set: &[(&str, &str)]) -> String {
    let mut attrs: Vec<(String, String)> = [
        ("request", "smtpd_access_policy"),
        ("protocol_state", "RCPT"),
        ("protocol_name", "ESMTP"),
        ("client_address", "198.51.100.7"),
        ("client_name", "mx.remote.example"),
        ("client_port", "40123"),
        ("reverse_client_name", "mx.remote.example"),
        ("server_address", "127.0.0.1"),
        ("server_port", "25"),
        ("helo_name", "mx.remote.example"),
        ("sender", ""),
        ("recipient", "bob@example.org"),
        ("recipient_count", "0"),
        ("queue_id", ""),
        ("instance", "1a2b.6560a1b2.3c4d5.0"),
        ("size", "0"),
        ("etrn_domain", ""),
        ("stress", ""),
        ("sasl_method", ""),
        ("sasl_username", ""),
        ("sasl_sender", ""),
        ("ccert_subject", ""),
        ("ccert_issuer", ""),
        ("ccert_fingerprint", ""),
        ("ccert_pubkey_fingerprint", ""),
        ("encryption_protocol", "TLSv1.3"),
        ("encryption_cipher", "TLS_AES_256_GCM_SHA384"),
        ("encryption_keysize", "256"),
        ("policy_context", ""),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect();
    for (n, v) in set {
        match attrs.iter_mut().find(|(name, _)| name == n) {
            Some(a) => a.1 = v.to_string(),
            None => attrs.push((n.to_string(), v.to_string())),
        }
    }
    let mut s: String = attrs.iter().map(|(n, v)| format!("{n}={v}\n")).collect();
    s.push('\n');
    s
}

/// One connection to the daemon.
pub struct Client {
    r: BufReader<Box<dyn Duplex>>,
    pub name: &'static str,
}

impl Client {
    pub fn tcp(addr: std::net::SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        Client {
            r: BufReader::new(Box::new(s)),
            name: "tcp",
        }
    }

    pub fn unix(path: &Path) -> Client {
        let s = UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        Client {
            r: BufReader::new(Box::new(s)),
            name: "unix",
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.r.get_mut().write_all(bytes).unwrap();
    }

    /// `send` to a connection the daemon may already have closed: false if it had (the
    /// write met a reset or a broken pipe).
    pub fn try_send(&mut self, bytes: &[u8]) -> bool {
        match self.r.get_mut().write_all(bytes) {
            Ok(()) => true,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset) => false,
            Err(e) => panic!("{}: write: {e}", self.name),
        }
    }

    /// shutdown(SHUT_WR), as Exim's `${readsocket}` does after its request.
    pub fn half_close(&mut self) {
        self.r.get_ref().shutdown_write().unwrap();
    }

    /// One netstring reply's payload.
    pub fn netstring(&mut self) -> String {
        let mut len = Vec::new();
        self.r.read_until(b':', &mut len).unwrap();
        assert_eq!(
            len.pop(),
            Some(b':'),
            "{}: no netstring reply: {:?}",
            self.name,
            String::from_utf8_lossy(&len)
        );
        let n: usize = std::str::from_utf8(&len).unwrap().parse().unwrap();
        let mut payload = vec![0u8; n + 1];
        self.r.read_exact(&mut payload).unwrap();
        assert_eq!(payload.pop(), Some(b','), "{}: netstring without ','", self.name);
        String::from_utf8(payload).unwrap()
    }

    /// One netstring reply, or None if the connection ends (or is reset) first.
    pub fn try_netstring(&mut self) -> Option<String> {
        let mut len = Vec::new();
        match self.r.read_until(b':', &mut len) {
            Ok(_) if len.last() == Some(&b':') => {}
            Ok(_) => return None,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("{}: {e}", self.name),
        }
        len.pop();
        let n: usize = std::str::from_utf8(&len).unwrap().parse().unwrap();
        let mut payload = vec![0u8; n + 1];
        self.r.read_exact(&mut payload).unwrap();
        assert_eq!(payload.pop(), Some(b','), "{}: netstring without ','", self.name);
        Some(String::from_utf8(payload).unwrap())
    }

    /// A socketmap lookup and its reply.
    pub fn lookup(&mut self, map: &str, key: &str) -> String {
        self.send(&ns(&format!("{map} {key}")));
        self.netstring()
    }

    /// One policy request (as `policy_request(set)`) and its action.
    pub fn policy(&mut self, set: &[(&str, &str)]) -> String {
        self.send(policy_request(set).as_bytes());
        self.policy_reply()
    }

    /// A policy reply: `action=VALUE` and an empty line; VALUE.
    pub fn policy_reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let mut l = String::new();
            let n = self.r.read_line(&mut l).unwrap();
            assert!(n > 0, "{}: policy reply cut short: {lines:?}", self.name);
            assert!(l.ends_with('\n'), "{}: policy reply line without newline: {l:?}", self.name);
            if l == "\n" {
                break;
            }
            lines.push(l.trim_end_matches('\n').to_string());
        }
        assert_eq!(lines.len(), 1, "{}: {lines:?}", self.name);
        lines[0]
            .strip_prefix("action=")
            .unwrap_or_else(|| panic!("{}: {lines:?}", self.name))
            .to_string()
    }

    /// Everything up to the end of the connection (reset counts as the end).
    pub fn rest(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        match self.r.read_to_end(&mut out) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!("{}: read to the end: {e} (after {:?})", self.name, String::from_utf8_lossy(&out)),
        }
        out
    }

    /// The daemon closed the connection without answering (end of file, or a reset when
    /// it left part of our request unread).
    pub fn expect_closed(&mut self, what: &str) {
        let mut buf = [0u8; 256];
        match self.r.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!(
                "{} {what}: expected the connection closed, got {:?}",
                self.name,
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!("{} {what}: expected the connection closed, got {e}", self.name),
        }
    }
}
