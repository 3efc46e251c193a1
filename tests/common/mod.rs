//! Helpers shared by the integration tests: the aiosmtpd sink and peer checks.
#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub fn python_with_aiosmtpd() -> bool {
    Command::new("/usr/bin/python3")
        .args(["-c", "import aiosmtpd"])
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn require(what: &str, ok: bool) -> bool {
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{what} missing: .ci/run must install it"
        );
        eprintln!("skipping: {what} not installed");
    }
    ok
}

/// The aiosmtpd sink, stopped when dropped.
pub struct Sink {
    child: std::process::Child,
    pub port: u16,
    record: PathBuf,
}

impl Sink {
    pub fn start(dir: &Path) -> Sink {
        Sink::start_for(dir, 60)
    }

    /// A sink that stops by itself after `seconds` (`start`: 60).
    pub fn start_for(dir: &Path, seconds: u32) -> Sink {
        Sink::spawn(dir, seconds, None)
    }

    /// A sink that offers AUTH PLAIN and LOGIN and takes `user:password` alone.
    pub fn with_auth(dir: &Path, user_password: &str) -> Sink {
        Sink::spawn(dir, 60, Some(user_password))
    }

    fn spawn(dir: &Path, seconds: u32, auth: Option<&str>) -> Sink {
        let record = dir.join("sink.jsonl");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/sink.py");
        let mut cmd = Command::new("/usr/bin/python3");
        if let Some(a) = auth {
            cmd.env("SINK_AUTH", a);
        }
        let mut child = cmd
            .arg(script)
            .arg(&record)
            .arg(seconds.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut out = child.stdout.take().unwrap();
        let mut b = [0u8; 1];
        while !line.ends_with('\n') && out.read(&mut b).unwrap() == 1 {
            line.push(b[0] as char);
        }
        let port = line.trim().strip_prefix("PORT ").expect("sink did not start").parse().unwrap();
        Sink { child, port, record }
    }

    pub fn messages(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = fs::read_to_string(&self.record).unwrap_or_default();
            let v: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
            if v.len() >= n || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port for a peer that binds it itself (Postfix, smtp-sink, a configured
/// listener). Picked below the kernel's ephemeral range, where `bind(0)` (every listener
/// this suite lets the kernel place) and outgoing connections never land: a port taken from
/// `bind(0)` and released can be handed out again to the next `bind(0)` before the peer
/// binds it, and the test then talks to a stranger (seen: a Postfix that could not bind,
/// and a client that waited for a greeting from another test's listener).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    // [low - span, low): far from the well-known ports; a per-process start, so test
    // binaries run one after another (with TIME_WAIT left behind) rarely meet.
    let span = 10_000.min(low.saturating_sub(1100));
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let port = low - span + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    panic!("no free loopback port below {low}");
}

/// A directory for a private Exim run by `binary`: `spool/` and `log/` inside, owned by
/// the user Exim receives as, and the directory itself open to it.
pub fn exim_dir(binary: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let user = Command::new(binary).args(["-bP", "exim_user"]).output().unwrap();
    let user = String::from_utf8_lossy(&user.stdout)
        .split('=')
        .nth(1)
        .unwrap_or("")
        .trim()
        .to_string();
    for sub in ["spool", "log"] {
        fs::create_dir(d.join(sub)).unwrap();
        if !user.is_empty() {
            assert!(Command::new("chown").arg(&user).arg(d.join(sub)).status().unwrap().success());
        }
    }
    dir
}

/// The recipients of a message the sink recorded.
pub fn rcpt_tos(m: &serde_json::Value) -> Vec<String> {
    m["rcpt_tos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect()
}

pub mod data;
/// A private Exim daemon.
pub mod exim;
pub mod postfix;
/// A whole Postfix MX with `batv daemon` as the README wires it.
pub mod postfix_site;
pub mod proxy;

/// A command's exit code and output.
pub struct Output {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

/// Run `cmd` with `input` on stdin; kill it (by its PID) if it outlives `limit`. Output goes
/// to files, so a grandchild keeping a descriptor open cannot block the test.
pub fn run_bounded(mut cmd: Command, input: &[u8], limit: Duration) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} ran longer than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    writer.join().unwrap();
    Output {
        code: status.code().unwrap_or(-1),
        stdout: std::fs::read(&out_path).unwrap(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

pub mod peers;

/// The shared corpus's tags were made by Exim with the secret `s3cret`, shorter than a key
/// store accepts. HMAC pads a key shorter than its block with zeros (RFC 2104), so these
/// 16 bytes are the same HMAC key: the corpus's tags verify as Exim made them.
pub const CORPUS_SECRET: &[u8; 16] = b"s3cret\0\0\0\0\0\0\0\0\0\0";

/// In `dir`: `batv.toml` (signing example.org, prvs) and `keys/` holding Exim's test secret
/// (`CORPUS_SECRET`) as key 0, the key of the shared corpus's tags.
pub fn exim_secret_store(dir: &Path) {
    std::fs::write(dir.join("batv.toml"), "sign_domains = [\"example.org\"]\nscheme = \"prvs\"\n").unwrap();
    std::fs::write(dir.join("secret"), CORPUS_SECRET).unwrap();
    std::fs::create_dir(dir.join("keys")).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_batv"))
        .arg("--config")
        .arg(dir.join("batv.toml"))
        .arg("--keys")
        .arg(dir.join("keys"))
        .args(["keys", "import", "0", "--secret-file"])
        .arg(dir.join("secret"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// `batv daemon` under test (tests/daemon.rs).
pub mod daemon_proc;
/// `batv milter` under test.
pub mod milter_proc;
