//! The proxy under test, its peers (aiosmtpd, Postfix's smtp-sink) and SMTP helpers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{python_with_aiosmtpd, require, Sink};

pub const BIN: &str = env!("CARGO_BIN_EXE_batv");
pub const TODAY: &str = "2026-11-23";

pub struct Proxy {
    pub child: Child,
    pub addr: String,
    pub dir: tempfile::TempDir,
    pub keys: std::path::PathBuf,
    /// The config file (rewrite it and send SIGHUP to test reloads).
    pub config: std::path::PathBuf,
    /// Everything the proxy wrote on stderr so far.
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- proxy log ---\n{}", self.log.lock().map(|l| l.clone()).unwrap_or_default());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    /// Start a proxy towards `forward` with extra `[proxy]` settings.
    pub fn start(forward: &str, proxy_extra: &str) -> Proxy {
        let t = tempfile::tempdir().unwrap();
        let keys = t.path().join("keys");
        assert!(Command::new(BIN)
            .arg("--keys")
            .arg(&keys)
            .args(["--now", TODAY, "keys", "init"])
            .output()
            .unwrap()
            .status
            .success());
        let cfg = t.path().join("batv.toml");
        std::fs::write(
            &cfg,
            // Short timeouts keep fault tests quick; `proxy_extra` may set its own.
            format!(
                "sign_domains = [\"example.com\"]\n[proxy]\n{}{}{proxy_extra}",
                if proxy_extra.contains("command_timeout_ms") {
                    ""
                } else {
                    "command_timeout_ms = 3000\n"
                },
                if proxy_extra.contains("data_timeout_ms") {
                    ""
                } else {
                    "data_timeout_ms = 3000\n"
                },
            ),
        )
        .unwrap();
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(&cfg)
            .arg("--keys")
            .arg(&keys)
            .args(["--now", TODAY, "proxy", "--listen", "127.0.0.1:0", "--forward", forward])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        // Startup lines up to "listening on ADDR" (metrics and warnings come first).
        let mut head = String::new();
        let addr = loop {
            let mut line = String::new();
            if err.read_line(&mut line).unwrap() == 0 {
                panic!("proxy did not start: {head}");
            }
            head.push_str(&line);
            if let Some(a) = line.split("listening on ").nth(1).and_then(|r| r.split_whitespace().next()) {
                break a.to_string();
            }
        };
        let log = std::sync::Arc::new(std::sync::Mutex::new(head));
        let l = log.clone();
        std::thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                l.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        Proxy {
            child,
            addr,
            dir: t,
            keys,
            config: cfg,
            log,
        }
    }

    pub fn sign(&self, now: &str, addr: &str) -> String {
        let o = Command::new(BIN)
            .arg("--keys")
            .arg(&self.keys)
            .args(["--now", now, "sign", addr])
            .output()
            .unwrap();
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    }

    /// Send `script` pipelined as RFC 2920 allows: every command up to DATA in one write,
    /// then the message only after a 354 (else QUIT); read until the server closes.
    pub fn session(&self, script: &[u8]) -> String {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let text = String::from_utf8_lossy(script).into_owned();
        let Some(at) = text.find("DATA\r\n") else {
            s.write_all(script).unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            return out;
        };
        let (head, body) = text.split_at(at + 6);
        s.write_all(head.as_bytes()).unwrap();
        // Replies expected before the message: the greeting and one per command.
        let want = 1 + head.matches("\r\n").count();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut out = String::new();
        let mut finals = 0;
        while finals < want {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap() == 0 {
                return out;
            }
            if line.as_bytes().get(3) == Some(&b' ') {
                finals += 1;
            }
            out.push_str(&line);
        }
        let last = out.lines().last().unwrap_or("").to_string();
        if last.starts_with("354") {
            s.write_all(body.as_bytes()).unwrap();
        } else {
            s.write_all(b"QUIT\r\n").unwrap();
        }
        let _ = r.read_to_string(&mut out);
        out
    }
}

pub fn setup() -> Option<(Sink, tempfile::TempDir)> {
    if !require("python3-aiosmtpd", python_with_aiosmtpd()) {
        return None;
    }
    let t = tempfile::tempdir().unwrap();
    Some((Sink::start(t.path()), t))
}

pub fn codes(out: &str) -> Vec<u16> {
    out.lines()
        .filter(|l| l.as_bytes().get(3) == Some(&b' '))
        .filter_map(|l| l[..3].parse().ok())
        .collect()
}

pub fn bounce(rcpts: &[&str]) -> Vec<u8> {
    let mut s = b"EHLO mx.remote.example\r\nMAIL FROM:<>\r\n".to_vec();
    for r in rcpts {
        s.extend_from_slice(format!("RCPT TO:<{r}>\r\n").as_bytes());
    }
    s.extend_from_slice(b"DATA\r\nSubject: Undeliverable\r\n\r\nYour message could not be delivered.\r\n.\r\nQUIT\r\n");
    s
}

/// Debian's postfix package, unpacked (it conflicts with exim4): .ci/run puts it in
/// target/postfix/root; BATV_POSTFIX_ROOT overrides.
pub fn postfix_root() -> Option<std::path::PathBuf> {
    let root = std::env::var_os("BATV_POSTFIX_ROOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/postfix/root"));
    require("Postfix smtp-sink (target/postfix/root)", root.join("usr/sbin/smtp-sink").exists()).then_some(root)
}

/// Postfix's smtp-sink on a free loopback port, dumping each transaction into `dump`.
pub struct SmtpSink {
    pub child: Child,
    pub port: u16,
    pub dump: tempfile::TempDir,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SmtpSink {
    pub fn start(root: &Path, options: &[&str]) -> SmtpSink {
        let dump = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dump.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let port = super::free_port();
        let mut cmd = Command::new(root.join("usr/sbin/smtp-sink"));
        cmd.env("LD_LIBRARY_PATH", root.join("usr/lib/postfix"));
        if unsafe { libc::geteuid() } == 0 {
            cmd.args(["-u", "nobody"]);
        }
        cmd.arg("-d")
            .arg(format!("{}/%H%M%S.", dump.path().display()))
            .args(options)
            .arg(format!("127.0.0.1:{port}"))
            .arg("100");
        let child = cmd.stderr(Stdio::null()).spawn().unwrap();
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        SmtpSink { child, port, dump }
    }

    /// The dumped transactions' envelope lines (X-Mail-Args, X-Rcpt-Args).
    pub fn envelopes(&self) -> Vec<String> {
        std::thread::sleep(Duration::from_millis(200));
        let mut v: Vec<String> = std::fs::read_dir(self.dump.path())
            .unwrap()
            .map(|e| {
                let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
                text.lines()
                    .filter(|l| l.starts_with("X-Mail-Args") || l.starts_with("X-Rcpt-Args"))
                    .collect::<Vec<_>>()
                    .join("|")
            })
            .collect();
        v.sort();
        v
    }
}

/// Run tests/peers/client.py: greeting and replies, one line each.
pub fn client(addr: &str, source: &str, commands: &[&str]) -> String {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/client.py");
    let o = Command::new("/usr/bin/python3")
        .arg(script)
        .args([host, port, "--source", source])
        .args(commands)
        .output()
        .unwrap();
    assert!(o.status.success(), "client: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// The n-th final reply line (0 is the greeting; DATA has two: 354 and the final one).
pub fn reply_to(out: &str, n: usize) -> String {
    let is_final = |l: &str| l.len() >= 4 && l.as_bytes()[..3].iter().all(u8::is_ascii_digit) && l.as_bytes()[3] == b' ';
    let finals: Vec<&str> = out.lines().filter(|l| is_final(l) || *l == "EOF").collect();
    finals.get(n).copied().unwrap_or("none").to_string()
}

/// A throwaway certificate for `name`: (cert, key, SHA-256 of its DER form).
pub fn make_cert(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
        ])
        .args(["-subj", "/CN=mx.example.com", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let der = Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(&cert)
        .output()
        .unwrap();
    use sha2::Digest;
    let fp = sha2::Sha256::digest(&der.stdout).iter().map(|b| format!("{b:02x}")).collect();
    (cert, key, fp)
}
