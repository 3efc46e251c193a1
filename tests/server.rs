//! The server runtime from outside, on the real binary: sockets handed over by systemd
//! (`LISTEN_FDS`), and a daemon started as root binding a privileged port, then running
//! as its configured user (keys read through `key_group` on reload). Loopback only,
//! bounded in time; every process is stopped by its PID.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::daemon_proc::*;

const LIMIT: Duration = Duration::from_secs(60);

/// A started batv and its log.
struct Proc {
    child: Child,
    log: Arc<Mutex<String>>,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(cmd: Command) -> Proc {
        let (child, log, lines) = spawn_logged(cmd);
        Proc { child, log, lines }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Wait for a log line containing `needle`; the line.
    fn wait_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(_) => panic!("{needle:?} not logged: {}", self.log()),
            }
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: a signal to our own child, by its PID.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// SIGTERM, then the exit status within 10 s.
    fn stop(&mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "did not stop: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- log ---\n{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The uids of a process (real, effective, saved, fs), from /proc.
fn uids(pid: u32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().skip(1).map(|n| n.parse().unwrap()).collect()
}

/// Whether the test runs as root; if not, it says it skips.
fn root_or_skip() -> bool {
    // SAFETY: plain getter.
    let root = unsafe { libc::geteuid() == 0 };
    if !root {
        eprintln!("skipping: needs root (CI runs as root)");
    }
    root
}

/// `batv daemon` handed two listening sockets from fd 3 on, as systemd does: a unix
/// socket it serves, and a TCP one named `metrics` that serves the counters. It names
/// them in the log, binds nothing of its own, and leaves the socket file (systemd's) in
/// place when it stops.
#[test]
fn a_daemon_serves_the_sockets_systemd_passes() {
    bounded(LIMIT, || {
        let store = Store::new("");
        let path = store.dir.path().join("passed.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let metrics_addr = metrics.local_addr().unwrap();
        let fds = [listener.as_raw_fd(), metrics.as_raw_fd()];
        // The configured listener must not be used when sockets are passed.
        let unused = store.dir.path().join("configured.sock");
        let cmd = with_sockets(&store, &fds, "batv:metrics", &unused);
        let mut d = Proc::spawn(cmd);
        drop(listener);
        drop(metrics);
        d.wait_line("2 socket(s) from systemd");
        d.wait_line(&format!("metrics on http://{metrics_addr}/metrics"));
        d.wait_line(&format!("listening on unix:{}", path.display()));
        let mut c = Client::unix(&path);
        let signed = c.lookup("sign", "bob@example.org");
        assert_eq!(signed, format!("OK {}", store.sign(NOW, "bob@example.org")));
        assert!(!unused.exists(), "the configured socket was bound too");
        let out = http_get(metrics_addr);
        assert!(out.contains("batv_daemon_lookups_total{map=\"sign\",result=\"ok\"} 1\n"), "{out}");
        drop(c);
        assert!(d.stop().success(), "{}", d.log());
        assert!(path.exists(), "systemd's socket file is not the daemon's to remove");
        assert!(!d.log().contains("LISTEN_"), "{}", d.log());
    });
}

/// `batv daemon` as systemd starts a socket-activated service: `fds` on 3, 4, ... with
/// their names, LISTEN_PID its own; `configured` is its --listen (which must stay unused).
fn with_sockets(store: &Store, fds: &[i32], names: &str, configured: &std::path::Path) -> Command {
    let mut cmd = Command::new("/bin/sh");
    // LISTEN_PID must be the daemon's own pid: the shell's, kept by exec.
    cmd.arg("-c")
        .arg(format!(
            "LISTEN_PID=$$ LISTEN_FDS={} LISTEN_FDNAMES={names} exec \"$0\" \"$@\"",
            fds.len()
        ))
        .arg(BIN)
        .arg("--config")
        .arg(&store.config)
        .arg("--keys")
        .arg(&store.keys)
        .args(["--now", NOW, "daemon", "--listen"])
        .arg(format!("unix:{}", configured.display()));
    let fds = fds.to_vec();
    // SAFETY: dup2 and close are async-signal-safe; the descriptors stay open in the
    // parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            // Out of the way first (a source may already be 3 or 4), then into place,
            // without close-on-exec.
            for (i, fd) in fds.iter().enumerate() {
                let high = 200 + i as i32;
                if libc::dup2(*fd, high) != high {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for i in 0..fds.len() as i32 {
                if libc::dup2(200 + i, 3 + i) != 3 + i {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(200 + i);
            }
            Ok(())
        });
    }
    cmd
}

/// The daemon has no authentication: a TCP socket systemd passes on a public address
/// (`ListenStream=10030` binds every interface) is refused, as `daemon.listen` refuses
/// one, and so is a public metrics socket (exit 78, nothing served).
#[test]
fn passed_public_sockets_are_refused() {
    bounded(LIMIT, || {
        let store = Store::new("");
        let unused = store.dir.path().join("configured.sock");
        let public = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let mut d = Proc::spawn(with_sockets(&store, &[public.as_raw_fd()], "batv", &unused));
        assert_eq!(d.child.wait().unwrap().code(), Some(78), "{}", d.log());
        // The log is read from a pipe: wait for the line rather than race its reader.
        d.wait_line("serves loopback only");
        let sock = store.dir.path().join("ok.sock");
        let ok = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let fds = [ok.as_raw_fd(), public.as_raw_fd()];
        let mut d = Proc::spawn(with_sockets(&store, &fds, "batv:metrics", &unused));
        assert_eq!(d.child.wait().unwrap().code(), Some(78), "{}", d.log());
        d.wait_line("the metrics socket serves loopback only");
    });
}

/// GET /metrics: the whole HTTP answer.
fn http_get(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Started as root with `user`: the daemon binds a port below 1024 first, then runs as
/// that user for good (every uid, and no way back), and a SIGHUP reads the 0640 keys
/// through key_group.
#[test]
fn root_binds_then_runs_as_its_user() {
    if !root_or_skip() {
        return;
    }
    bounded(LIMIT, || {
        let store = Store::new("user = \"nobody\"\ngroup = \"nogroup\"\nkey_group = \"nogroup\"\n");
        // The user must reach the config and the keys: the directories are
        // root:nogroup 0750, the key files 0640 (what key_group allows).
        let gid = 65534;
        for d in [store.dir.path(), store.keys.as_path()] {
            std::os::unix::fs::chown(d, Some(0), Some(gid)).unwrap();
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o750)).unwrap();
        }
        for e in std::fs::read_dir(&store.keys).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                std::os::unix::fs::chown(&p, Some(0), Some(gid)).unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
            }
        }
        std::os::unix::fs::chown(&store.config, Some(0), Some(gid)).unwrap();
        std::fs::set_permissions(&store.config, std::fs::Permissions::from_mode(0o640)).unwrap();
        // A free privileged port on loopback.
        let port = (600..1000)
            .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
            .expect("a free port below 1024");
        let mut d = Proc::spawn(store.daemon_cmd(NOW, &[format!("inet:127.0.0.1:{port}")]));
        d.wait_line("running as user nobody (uid 65534, gid 65534)");
        d.wait_line(&format!("listening on inet:127.0.0.1:{port}"));
        assert_eq!(uids(d.child.id()), [65534; 4], "{}", d.log());
        let mut c = Client::tcp(([127, 0, 0, 1], port).into());
        let signed = c.lookup("sign", "bob@example.org");
        assert_eq!(signed, format!("OK {}", store.sign(NOW, "bob@example.org")));
        // Reloads run as the user: the keys come through the group.
        d.signal(libc::SIGHUP);
        d.wait_line("reloaded (configuration and keys)");
        assert!(!d.log().contains("not reloaded"), "{}", d.log());
        assert_eq!(c.lookup("strip", &signed[3..]), "OK bob@example.org");
        assert!(d.stop().success(), "{}", d.log());
    });
}

/// Started as root with `user`, but keys only root can read (no key_group): every reload
/// would fail, so it does not start (exit 78) and says why.
#[test]
fn a_user_that_cannot_reload_is_refused_at_start() {
    if !root_or_skip() {
        return;
    }
    bounded(LIMIT, || {
        let store = Store::new("user = \"nobody\"\n");
        std::fs::set_permissions(store.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&store.config, std::fs::Permissions::from_mode(0o644)).unwrap();
        let sock = store.dir.path().join("s");
        let o = common::run_bounded(
            store.daemon_cmd(NOW, &[format!("unix:{}", sock.display())]),
            b"",
            Duration::from_secs(15),
        );
        assert_eq!(o.code, 78, "{}", o.stderr);
        assert!(o.stderr.contains("running as user nobody"), "{}", o.stderr);
        assert!(o.stderr.contains("could not reload"), "{}", o.stderr);
    });
}

/// As root without `user`, it runs (a container may want that) and says so.
#[test]
fn root_without_a_user_says_so() {
    if !root_or_skip() {
        return;
    }
    bounded(LIMIT, || {
        let store = Store::new("");
        let sock = store.dir.path().join("s");
        let mut d = Proc::spawn(store.daemon_cmd(NOW, &[format!("unix:{}", sock.display())]));
        d.wait_line("warning: running as root: set user");
        d.wait_line("listening on unix:");
        assert!(d.stop().success(), "{}", d.log());
        assert!(!sock.exists(), "its own socket is removed when it stops");
    });
}

/// A user that does not exist is a configuration error (78), before anything is served.
#[test]
fn an_unknown_user_is_a_configuration_error() {
    if !root_or_skip() {
        return;
    }
    bounded(LIMIT, || {
        let store = Store::new("user = \"no-such-user-batv\"\n");
        let sock = store.dir.path().join("s");
        let o = common::run_bounded(
            store.daemon_cmd(NOW, &[format!("unix:{}", sock.display())]),
            b"",
            Duration::from_secs(15),
        );
        assert_eq!(o.code, 78, "{}", o.stderr);
        assert!(o.stderr.contains("no-such-user-batv"), "{}", o.stderr);
    });
}

/// `[daemon] metrics_listen`: the daemon's counters over HTTP on loopback, as the proxy's.
#[test]
fn the_daemon_serves_its_counters() {
    bounded(LIMIT, || {
        let port = common::free_port();
        let d = Daemon::start(&format!("[daemon]\nmetrics_listen = \"127.0.0.1:{port}\"\n"));
        d.wait_log(&format!("metrics on http://127.0.0.1:{port}/metrics"), 1);
        let signed = d.unix().lookup("sign", "bob@example.org");
        assert!(signed.starts_with("OK prvs="), "{signed}");
        let out = http_get(([127, 0, 0, 1], port).into());
        assert!(out.starts_with("HTTP/1.0 200 OK\r\n"), "{out}");
        for line in [
            "batv_daemon_connections_total 1\n",
            "batv_daemon_lookups_total{map=\"sign\",result=\"ok\"} 1\n",
            "batv_daemon_lookups_total{map=\"strip\",result=\"ok\"} 0\n",
            "# EOF\n",
        ] {
            assert!(out.contains(line), "{line:?} in {out}");
        }
        // Only loopback may serve them.
        let store = Store::without_keys("[daemon]\nmetrics_listen = \"192.0.2.1:9100\"\n");
        let o = store.batv(NOW, &["config", "check"]);
        assert_eq!(o.code, 78, "{}", o.stderr);
        assert!(o.stderr.contains("loopback only"), "{}", o.stderr);
    });
}
