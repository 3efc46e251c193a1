//! Raw SMTP peers for the proxy tests: a line-level client and tests/peers/chunking_sink.py.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::proxy::Proxy;
use super::require;

/// A raw SMTP client: one command, one complete reply.
pub struct Client {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(addr: &str) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        Client {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }

    /// Like `connect`, from a chosen loopback address (e.g. 127.0.0.2, which a Postfix with
    /// `mynetworks = 127.0.0.1/32` does not trust).
    pub fn connect_from(addr: &str, source: std::net::Ipv4Addr) -> Client {
        use std::os::fd::FromRawFd;
        let to: std::net::SocketAddrV4 = addr.parse().unwrap();
        let sin = |a: std::net::SocketAddrV4| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        // Owned from here on: closed when dropped, whatever fails below.
        let s = unsafe { TcpStream::from_raw_fd(fd) };
        let from = sin(std::net::SocketAddrV4::new(source, 0));
        let bound = unsafe { libc::bind(fd, (&raw const from).cast(), len) };
        assert_eq!(bound, 0, "bind {source}: {}", std::io::Error::last_os_error());
        // A loopback connect is answered at once (accepted or refused): no timeout needed.
        let dest = sin(to);
        let connected = unsafe { libc::connect(fd, (&raw const dest).cast(), len) };
        assert_eq!(connected, 0, "connect {addr} from {source}: {}", std::io::Error::last_os_error());
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        Client {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).unwrap();
    }

    /// One complete (possibly multi-line) reply; "" at end of stream or on a read error.
    pub fn reply(&mut self) -> String {
        let mut out = String::new();
        loop {
            let mut line = Vec::new();
            match self.r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return out,
                Ok(_) => {}
            }
            out.push_str(&String::from_utf8_lossy(&line));
            if line.len() < 4 || line[3] != b'-' {
                return out;
            }
        }
    }

    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// One transaction, then QUIT: the replies to MAIL and each RCPT and, when a recipient
    /// was accepted, to DATA and (after a 354) to `message` (header and body, ending in
    /// CRLF; the final dot is added).
    pub fn transaction(&mut self, from: &str, rcpts: &[&str], message: &str) -> Vec<String> {
        let mut replies = vec![self.cmd(&format!("MAIL FROM:<{from}>"))];
        let mut accepted = false;
        for r in rcpts {
            let reply = self.cmd(&format!("RCPT TO:<{r}>"));
            accepted |= code(&reply) == 250;
            replies.push(reply);
        }
        if accepted {
            let data = self.cmd("DATA");
            let go = code(&data) == 354;
            replies.push(data);
            if go {
                replies.push(self.cmd(&format!("{message}.")));
            }
        }
        self.cmd("QUIT");
        replies
    }

    /// Has the server closed the connection? One read (bounded by the read timeout): true
    /// at the end of the stream or on a reset, false if data arrives or the read times out.
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        match self.r.read(&mut b) {
            Ok(0) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(_) => false,
        }
    }

    /// Everything until the server closes (or the read timeout).
    pub fn rest(&mut self) -> String {
        let mut v = Vec::new();
        let _ = self.r.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    }
}

pub fn code(reply: &str) -> u16 {
    reply.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0)
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

pub fn log(p: &Proxy) -> String {
    p.log.lock().unwrap().clone()
}

/// Wait until the proxy's log holds `needle` at least `n` times.
pub fn wait_log(p: &Proxy, needle: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while log(p).matches(needle).count() < n {
        assert!(Instant::now() < deadline, "no {needle:?} (x{n}) in the log: {}", log(p));
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn python() -> bool {
    require("/usr/bin/python3", Path::new("/usr/bin/python3").exists())
}

/// tests/peers/chunking_sink.py: a raw-socket downstream with CHUNKING; stopped when dropped.
pub struct ChunkSink {
    child: Child,
    pub port: u16,
    record: PathBuf,
    _dir: tempfile::TempDir,
}

impl ChunkSink {
    pub fn start(options: &[&str]) -> Option<ChunkSink> {
        if !python() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("chunking.jsonl");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/chunking_sink.py");
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .arg(&record)
            .arg("60")
            .args(options)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .expect("chunking_sink did not start")
            .parse()
            .unwrap();
        Some(ChunkSink {
            child,
            port,
            record,
            _dir: dir,
        })
    }

    pub fn forward(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The recorded messages, once there are `n` (or after 5 s).
    pub fn messages(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&self.record).unwrap_or_default();
            let v: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
            if v.len() >= n || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChunkSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
