//! `batv milter` inside a real Sendmail 8.17 (`INPUT_MAIL_FILTER`), relaying to Postfix's
//! smtp-sink. Debian's sendmail-bin conflicts with exim4: .ci/run downloads sendmail-bin,
//! sendmail-base and sendmail-cf and unpacks them into target/sendmail/root
//! (BATV_SENDMAIL_ROOT overrides); the test builds a sendmail.cf from a small .mc with m4.
//! `[milter] internal_networks` is 127.0.0.1 only: clients connect from 127.0.0.2 as
//! strangers. Loopback only, bounded in time; every process is stopped by its PID.
//!
//! Sendmail runs as `sendmail -bD` (a daemon in the foreground) in its own UTS and mount
//! namespaces: the host name is `mx.example.org` (an unqualified one makes Sendmail sleep
//! 60 s looking for its domain) and /etc/nsswitch.conf is bound to `hosts: files` (no DNS
//! query, answered or not). That needs root, as Sendmail itself does.

mod common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::daemon_proc::{bounded, spawn_logged, Store};
use common::milter_proc::*;
use common::peers::{code, Client};
use common::postfix::{free_port, wait_port};
use common::postfix_site::{ended, send_transaction, sink_messages, Message};
use common::proxy::{postfix_root, SmtpSink};
use common::{require, run_bounded};

const LIMIT: Duration = Duration::from_secs(120);
/// The daemon binary in the unpacked sendmail-bin.
const SENDMAIL: &str = "usr/libexec/sendmail/sendmail";
/// The m4 configuration kit in the unpacked sendmail-cf.
const CF_DIR: &str = "usr/share/sendmail/cf";

/// The unpacked Sendmail, or None (skip): it, m4 and unshare must be there, and root.
fn sendmail_root() -> Option<PathBuf> {
    let root = std::env::var_os("BATV_SENDMAIL_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/sendmail/root"));
    let unpacked = root.join(SENDMAIL).exists() && root.join(CF_DIR).join("m4/cf.m4").exists();
    if !require("Sendmail (target/sendmail/root, from sendmail-bin and sendmail-cf)", unpacked) {
        return None;
    }
    let m4 = Command::new("m4").arg("--version").output().is_ok_and(|o| o.status.success());
    if !require("m4", m4) {
        return None;
    }
    let root_user = unsafe { libc::geteuid() } == 0;
    require("root (Sendmail and its namespaces)", root_user).then_some(root)
}

/// `sendmail -bD` with its config, queue and trace in a temporary directory.
struct Sendmail {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    log: Arc<Mutex<String>>,
    _lines: mpsc::Receiver<String>,
}

impl Drop for Sendmail {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- sendmail stderr ---\n{}\n--- sendmail SMTP trace ---\n{}",
                self.log.lock().unwrap(),
                std::fs::read_to_string(self.dir.path().join("trace")).unwrap_or_default()
            );
        }
        // SIGTERM: the daemon stops its children too.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The .mc: a relay for example.org (and for 127.0.0.1, Sendmail's default) sending
/// everything to `[127.0.0.1]:sink`, with batv as its only milter. Files under `dir`.
fn mc(dir: &Path, port: u16, sink: u16, milter: std::net::SocketAddr) -> String {
    let d = dir.display();
    let (mhost, mport) = (milter.ip(), milter.port());
    format!(
        "divert(-1)
divert(0)dnl
OSTYPE(`linux')dnl
define(`confDOMAIN_NAME', `mx.example.org')dnl
define(`confSERVICE_SWITCH_FILE', `{d}/service.switch')dnl
define(`confDONT_PROBE_INTERFACES', `True')dnl
define(`confTO_IDENT', `0')dnl
define(`QUEUE_DIR', `{d}/queue')dnl
define(`confPID_FILE', `{d}/sendmail.pid')dnl
define(`STATUS_FILE', `{d}/statistics')dnl
define(`HELP_FILE', `{d}/helpfile')dnl
define(`ALIAS_FILE', `{d}/aliases')dnl
define(`SMART_HOST', `relay:[127.0.0.1]')dnl
define(`RELAY_MAILER_ARGS', `TCP $h {sink}')dnl
DAEMON_OPTIONS(`Family=inet, Name=MTA, Addr=127.0.0.1, Port={port}')dnl
FEATURE(`no_default_msa')dnl
FEATURE(`accept_unresolvable_domains')dnl
RELAY_DOMAIN(`example.org')dnl
INPUT_MAIL_FILTER(`batv', `S=inet:{mport}@{mhost}, F=T, T=S:10s;R:10s;E:30s')dnl
MAILER(`local')dnl
MAILER(`smtp')dnl
"
    )
}

impl Sendmail {
    fn start(root: &Path, sink: u16, milter: std::net::SocketAddr) -> Sendmail {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let port = free_port();
        std::fs::create_dir(d.join("queue")).unwrap();
        std::fs::write(d.join("service.switch"), "hosts files\naliases files\n").unwrap();
        std::fs::write(d.join("nsswitch.conf"), "passwd: files\ngroup: files\nhosts: files\n").unwrap();
        std::fs::write(d.join("aliases"), "").unwrap();
        std::fs::write(d.join("batv.mc"), mc(d, port, sink, milter)).unwrap();
        let cf_dir = root.join(CF_DIR);
        let mut m4 = Command::new("m4");
        m4.arg(format!("-D_CF_DIR_={}/", cf_dir.display()))
            .arg(cf_dir.join("m4/cf.m4"))
            .arg(d.join("batv.mc"));
        let o = run_bounded(m4, b"", Duration::from_secs(15));
        assert_eq!(o.code, 0, "m4: {}", o.stderr);
        let cf = d.join("sendmail.cf");
        std::fs::write(&cf, &o.stdout).unwrap();

        // Own UTS and mount namespaces (unshare execs, no fork: the child's PID is
        // Sendmail's): a qualified host name, and no DNS for the host lookups.
        let mut cmd = Command::new("unshare");
        cmd.args(["--uts", "--mount", "sh", "-c"])
            .arg("hostname mx.example.org && mount --bind \"$1\" /etc/nsswitch.conf && shift && exec \"$@\"")
            .arg("sh")
            .arg(d.join("nsswitch.conf"))
            .arg(root.join(SENDMAIL))
            .arg("-bD")
            .arg("-C")
            .arg(&cf)
            .arg("-X")
            .arg(d.join("trace"));
        let (child, log, lines) = spawn_logged(cmd);
        let mut s = Sendmail {
            child,
            dir,
            port,
            log,
            _lines: lines,
        };
        let up = wait_port(port);
        if !up {
            let exited = s.child.try_wait().unwrap();
            panic!("sendmail did not listen on {port} (exit: {exited:?}): {}", s.log.lock().unwrap());
        }
        s
    }
}

/// Sendmail with batv's milter, relaying to smtp-sink.
struct Site {
    // Fields drop in declaration order: Sendmail first.
    sm: Sendmail,
    milter: Milter,
    sink: SmtpSink,
    store: Store,
}

/// A site, or None (skip) where Sendmail or smtp-sink is missing. `batv` follows the
/// `[milter]` line.
fn site(batv: &str) -> Option<Site> {
    let sendmail = sendmail_root()?;
    let postfix = postfix_root()?;
    let store = Store::new(&format!("[milter]\ninternal_networks = [\"127.0.0.1/32\"]\n{batv}"));
    let milter = Milter::start(&store);
    let sink = SmtpSink::start(&postfix, &[]);
    let sm = Sendmail::start(&sendmail, sink.port, milter.addr);
    Some(Site { sm, milter, sink, store })
}

impl Site {
    fn transaction(&self, source: Ipv4Addr, from: &str, rcpts: &[&str], tag: &str) -> Vec<String> {
        let mut c = Client::connect_from(&format!("127.0.0.1:{}", self.sm.port), source);
        assert_eq!(code(&c.reply()), 220);
        assert_eq!(code(&c.cmd("EHLO mx.remote.test")), 250);
        let r = send_transaction(&mut c, from, rcpts, tag);
        if !ended(&r) {
            c.cmd("QUIT");
        }
        r
    }

    /// The one message smtp-sink got with `tag` in it (waiting at most 30 s for it).
    fn one(&self, tag: &str) -> Message {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let m: Vec<Message> = sink_messages(&self.sink).into_iter().filter(|m| m.text.contains(tag)).collect();
            if !m.is_empty() {
                assert_eq!(m.len(), 1, "{m:#?}");
                return m.into_iter().next().unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "smtp-sink never got the message {tag}\n--- milter log ---\n{}",
                self.milter.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl MilterSite for Site {
    fn transaction(&self, source: Ipv4Addr, from: &str, rcpts: &[&str], tag: &str) -> Vec<String> {
        Site::transaction(self, source, from, rcpts, tag)
    }
    fn one(&self, tag: &str) -> Message {
        Site::one(self, tag)
    }
    fn store(&self) -> &Store {
        &self.store
    }
    fn milter_log(&self) -> String {
        self.milter.log()
    }
}

/// Mail from inside (127.0.0.1) leaves with a signed sender (CHGFROM); the same sender
/// from outside does not.
#[test]
fn sendmail_signs_mail_from_inside() {
    bounded(LIMIT, || {
        let Some(s) = site("") else { return };
        inside_is_signed_outside_is_not(&s);
    });
}

/// An untagged bounce to a protected address is refused at RCPT with 550 5.7.1.
#[test]
fn sendmail_refuses_an_untagged_bounce_at_rcpt() {
    bounded(LIMIT, || {
        let Some(s) = site("") else { return };
        an_untagged_bounce_is_refused(&s);
        s.milter.wait_log("action=refused");
    });
}

/// A bounce to an authentic tag is delivered to the original address.
#[test]
fn sendmail_delivers_a_tagged_bounce_to_the_original() {
    bounded(LIMIT, || {
        let Some(s) = site("") else { return };
        a_tagged_bounce_goes_to_the_original(&s);
    });
}

/// Monitor mode refuses nothing and marks the bounce with its header.
#[test]
fn sendmail_monitor_mode_adds_the_header() {
    bounded(LIMIT, || {
        let Some(s) = site("enforce = false\n") else { return };
        monitor_mode_marks_the_bounce(&s);
    });
}
