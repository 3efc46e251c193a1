//! `batv milter` under test: started on a loopback port with a [`Store`]'s config and
//! keys, its log collected, killed by its PID when dropped.

use std::process::{Child, Command};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use super::daemon_proc::{spawn_logged, Store, BIN, NOW};

/// `batv milter` on a loopback port, and its log.
pub struct Milter {
    pub child: Child,
    pub addr: std::net::SocketAddr,
    log: Arc<Mutex<String>>,
    _lines: mpsc::Receiver<String>,
}

impl Drop for Milter {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- milter log ---\n{}", self.log.lock().unwrap());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Milter {
    pub fn start(store: &Store) -> Milter {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config").arg(&store.config).arg("--keys").arg(&store.keys).args([
            "--now",
            NOW,
            "milter",
            "--listen",
            "inet:127.0.0.1:0",
        ]);
        let (child, log, lines) = spawn_logged(cmd);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(l) => {
                    if let Some(a) = l.split("listening on inet:").nth(1) {
                        let addr = a.trim().parse().unwrap();
                        return Milter {
                            child,
                            addr,
                            log,
                            _lines: lines,
                        };
                    }
                }
                Err(_) => panic!("batv milter did not start: {}", log.lock().unwrap()),
            }
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Wait (at most 10 s) for `needle` in the log, which is read from a pipe.
    pub fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log().contains(needle) {
            assert!(Instant::now() < deadline, "{needle:?} not logged: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// An MTA with batv's milter, as the scenarios below drive it.
pub trait MilterSite {
    /// One SMTP transaction from `source` (127.0.0.x): the replies.
    fn transaction(&self, source: std::net::Ipv4Addr, from: &str, rcpts: &[&str], tag: &str) -> Vec<String>;
    /// The one delivered message whose text holds `tag`.
    fn one(&self, tag: &str) -> super::postfix_site::Message;
    fn store(&self) -> &Store;
    fn milter_log(&self) -> String;
}

/// Clients: 127.0.0.1 is in `internal_networks`, 127.0.0.2 is a stranger.
pub const INSIDE: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 1);
pub const OUTSIDE: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 2);

pub fn codes(r: &[String]) -> Vec<u16> {
    r.iter().map(|x| super::peers::code(x)).collect()
}

/// Mail from inside leaves with a signed sender (CHGFROM); the same sender from outside
/// does not.
pub fn inside_is_signed_outside_is_not(s: &impl MilterSite) {
    let r = s.transaction(INSIDE, "alice@example.org", &["<carol@remote.test>"], "out1");
    assert_eq!(codes(&r), [250, 250, 354, 250], "{r:?}\n{}", s.milter_log());
    let m = s.one("out1");
    assert!(m.from.starts_with("prvs="), "signed: {m:#?}");
    assert_eq!(s.store().verify(NOW, &[&m.from]).unwrap(), ["alice@example.org"]);
    assert_eq!(m.rcpts, ["carol@remote.test"]);
    let r = s.transaction(OUTSIDE, "alice@example.org", &["<bob@example.org>"], "in1");
    assert_eq!(codes(&r), [250, 250, 354, 250], "{r:?}");
    let m = s.one("in1");
    assert_eq!(m.from, "alice@example.org", "mail from outside is never signed");
}

/// An untagged bounce to a protected address is refused at RCPT with 550 5.7.1.
pub fn an_untagged_bounce_is_refused(s: &impl MilterSite) {
    let r = s.transaction(OUTSIDE, "", &["<bob@example.org>"], "bs1");
    assert_eq!(super::peers::code(&r[0]), 250, "{r:?}");
    assert_eq!(super::peers::code(&r[1]), 550, "{r:?}\n{}", s.milter_log());
    assert!(r[1].contains("5.7.1") && r[1].contains("BATV"), "{r:?}");
}

/// A bounce to an authentic tag is delivered to the original address (DELRCPT and
/// ADDRCPT_PAR at end of message).
pub fn a_tagged_bounce_goes_to_the_original(s: &impl MilterSite) {
    let tagged = s.store().sign(NOW, "bob@example.org");
    let r = s.transaction(OUTSIDE, "", &[&format!("<{tagged}>")], "ok1");
    assert_eq!(codes(&r), [250, 250, 354, 250], "{r:?}\n{}", s.milter_log());
    let m = s.one("ok1");
    assert_eq!(m.from, "");
    assert_eq!(m.rcpts, ["bob@example.org"], "the tag is stripped: {m:#?}");
}

/// With `enforce = false`: nothing refused, the bounce marked with one header.
pub fn monitor_mode_marks_the_bounce(s: &impl MilterSite) {
    let r = s.transaction(OUTSIDE, "", &["<bob@example.org>"], "mon1");
    assert_eq!(codes(&r), [250, 250, 354, 250], "{r:?}\n{}", s.milter_log());
    let m = s.one("mon1");
    assert_eq!(
        m.headers("X-BATV"),
        ["X-BATV: backscatter; reason=untagged; mode=monitor"],
        "{m:#?}"
    );
}
