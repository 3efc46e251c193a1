//! A whole Postfix MX with `batv daemon` wired in as README's "Inside Postfix, without a
//! proxy" section wires it: the `strip` socketmap as `recipient_canonical_maps`, the policy
//! service last in `smtpd_recipient_restrictions` after `permit_mynetworks` and
//! `reject_unauth_destination`. All mail leaves to Postfix's smtp-sink. `mynetworks` is
//! 127.0.0.1/32 only: clients connect from 127.0.0.2 and up, as strangers on port 25.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::daemon_proc::{Daemon, NOW};
use super::peers::{code, Client};
use super::postfix::{can_run_postfix, free_port, Postfix};
use super::proxy::{postfix_root, SmtpSink};

/// Everything under test, stopped when dropped.
pub struct Site {
    pub root: PathBuf,
    // Fields drop in declaration order: Postfix first, then the daemon and the sink.
    pub pf: Postfix,
    pub daemon: Daemon,
    pub sink: SmtpSink,
    pub mx: u16,
}

/// What to change from the README's wiring.
pub struct Wiring<'a> {
    /// batv.toml after `sign_domains = ["example.org"]` (e.g. a `[daemon]` table).
    pub batv: &'a str,
    /// main.cf lines appended to the MX's (later lines win in Postfix); `{policy}` stands
    /// for the daemon's policy service (e.g. for `smtpd_data_restrictions`).
    pub main: &'a str,
    /// Addresses the MX accepts for example.org (relay_recipient_maps).
    pub users: &'a [&'a str],
}

impl Default for Wiring<'_> {
    fn default() -> Self {
        Wiring {
            batv: "",
            main: "",
            users: &["alice@example.org", "bob@example.org"],
        }
    }
}

/// An MX for example.org (relayed to smtp-sink) with batv daemon as its policy service.
/// None (skip) when Postfix cannot run here.
pub fn mx_site(w: Wiring) -> Option<Site> {
    let root = postfix_root()?;
    if !can_run_postfix() {
        return None;
    }
    let daemon = Daemon::start(w.batv);
    // Postfix's smtpd and cleanup run as the postfix user: they must reach the socket.
    std::fs::set_permissions(daemon.store.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let sink = SmtpSink::start(&root, &[]);
    let mx = free_port();
    let users: Vec<String> = w.users.iter().map(|u| format!("{u}=ok")).collect();
    let main = format!(
        "mynetworks = 127.0.0.1/32
relay_domains = example.org
relay_recipient_maps = inline:{{ {users} }}
relayhost = [127.0.0.1]:{sink}
relay_transport = relay:[127.0.0.1]:{sink}
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
recipient_canonical_maps = socketmap:unix:{sock}:strip
recipient_canonical_classes = envelope_recipient
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination, check_policy_service {policy}
{extra}",
        users = users.join(", "),
        sink = sink.port,
        sock = daemon.sock.display(),
        policy = policy_service(&daemon),
        extra = w.main.replace("{policy}", &policy_service(&daemon)),
    );
    let services = [format!("127.0.0.1:{mx} inet n - n - - smtpd")];
    let pf = Postfix::start(&root, &main, &services, &[mx]);
    Some(Site {
        root,
        pf,
        daemon,
        sink,
        mx,
    })
}

/// The daemon's policy service as main.cf names it (its TCP listener).
pub fn policy_service(d: &Daemon) -> String {
    format!("inet:127.0.0.1:{}", d.tcp.port())
}

impl Site {
    /// A connection to the MX from `source` (127.0.0.x), greeted and past EHLO.
    pub fn connect(&self, source: Ipv4Addr) -> Client {
        let mut c = Client::connect_from(&format!("127.0.0.1:{}", self.mx), source);
        let greeting = c.reply();
        assert_eq!(code(&greeting), 220, "greeting: {greeting:?}");
        let ehlo = c.cmd("EHLO mx.remote.test");
        assert_eq!(code(&ehlo), 250, "EHLO: {ehlo:?}");
        c
    }

    /// One transaction from `source`: the replies to MAIL, each RCPT (the raw text after
    /// `RCPT TO:`, brackets included) and, when a recipient was accepted, DATA and the end of
    /// the message (body: `Subject: test <tag>`, `tag` to find it at the sink). Stops early
    /// when the server closes the connection.
    pub fn transaction(&self, source: Ipv4Addr, from: &str, rcpts: &[&str], tag: &str) -> Vec<String> {
        let mut c = self.connect(source);
        let r = send_transaction(&mut c, from, rcpts, tag);
        if !ended(&r) {
            c.cmd("QUIT");
        }
        r
    }

    /// What smtp-sink has received so far (whole messages only).
    pub fn messages(&self) -> Vec<Message> {
        sink_messages(&self.sink)
    }

    /// See [`delivered`].
    pub fn delivered(&self, n: usize) -> Vec<Message> {
        delivered(&self.pf, &self.sink, n)
    }
}

/// What smtp-sink has received so far (whole messages only).
pub fn sink_messages(sink: &SmtpSink) -> Vec<Message> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(sink.dump.path()).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap_or_default();
        let mut from = None;
        let mut rcpts = Vec::new();
        for l in text.lines() {
            if let Some(a) = l.strip_prefix("X-Mail-Args: ") {
                from = Some(angle(a));
            } else if let Some(a) = l.strip_prefix("X-Rcpt-Args: ") {
                rcpts.push(angle(a));
            }
        }
        // smtp-sink writes the dump as the data arrives: only messages that ended
        // (every message of these tests ends with "Hello.").
        if let (Some(from), true) = (from, text.trim_end().ends_with("Hello.")) {
            v.push(Message { from, rcpts, text });
        }
    }
    v
}

/// Wait (at most 30 s) until smtp-sink has `n` messages; then, so that a message that
/// should not be there has its chance to arrive, until Postfix's queue is empty.
pub fn delivered(pf: &Postfix, sink: &SmtpSink, n: usize) -> Vec<Message> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = sink_messages(sink);
        if got.len() >= n && queue_empty(pf) {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "smtp-sink got {} of {n} messages (or the queue is not empty): {got:#?}\n--- maillog ---\n{}",
            got.len(),
            pf.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// No message in Postfix's incoming, active or deferred queue.
pub fn queue_empty(pf: &Postfix) -> bool {
    let q = pf.dir.path().join("queue");
    ["incoming", "active", "deferred", "maildrop"]
        .iter()
        .all(|d| files_under(&q.join(d)) == 0)
}

fn files_under(dir: &std::path::Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.map_while(Result::ok)
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                files_under(&p)
            } else {
                1
            }
        })
        .sum()
}

/// MAIL, the RCPTs and (if one was accepted) DATA and a message on an open connection:
/// the replies, up to the server closing the connection.
pub fn send_transaction(c: &mut Client, from: &str, rcpts: &[&str], tag: &str) -> Vec<String> {
    let mut replies = vec![c.cmd(&format!("MAIL FROM:<{from}>"))];
    let mut accepted = false;
    for r in rcpts {
        let reply = c.cmd(&format!("RCPT TO:{r}"));
        accepted |= code(&reply) == 250;
        replies.push(reply);
        if ended(&replies) {
            return replies;
        }
    }
    if accepted {
        replies.push(c.cmd("DATA"));
        replies.push(c.cmd(&format!("Subject: test {tag}\r\n\r\nHello.\r\n.")));
    } else {
        replies.push(c.cmd("RSET"));
    }
    replies
}

/// Did the last reply end the session (421, or the connection closed)?
pub fn ended(replies: &[String]) -> bool {
    replies.last().is_some_and(|r| r.is_empty() || code(r) == 421)
}

/// One message as smtp-sink dumped it.
#[derive(Debug, Clone)]
pub struct Message {
    /// The MAIL FROM address (between the brackets).
    pub from: String,
    /// The RCPT TO addresses.
    pub rcpts: Vec<String>,
    /// The whole dump: smtp-sink's X- lines, then the message as Postfix relayed it.
    pub text: String,
}

impl Message {
    /// The message's header lines named `name` (case-insensitive).
    pub fn headers(&self, name: &str) -> Vec<&str> {
        let prefix = format!("{}:", name.to_ascii_lowercase());
        let head = self.text.split("\n\n").next().unwrap_or("");
        head.lines().filter(|l| l.to_ascii_lowercase().starts_with(&prefix)).collect()
    }
}

fn angle(s: &str) -> String {
    s.split_once('<')
        .and_then(|(_, r)| r.rsplit_once('>'))
        .map(|(a, _)| a.to_string())
        .unwrap_or_default()
}

/// The fields of one log line read logfmt-style: `key=value` words separated by spaces,
/// a value in double quotes may hold spaces and `\"`, `\\`, `\n` escapes; a word without
/// `=` is a field without a value. Panics on an unterminated quote.
pub fn logfmt(line: &str) -> Vec<(String, Option<String>)> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if_eq(&' ').is_some() {}
        if chars.peek().is_none() {
            return fields;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|&c| c != ' ' && c != '=') {
            key.push(c);
        }
        if chars.next_if_eq(&'=').is_none() {
            fields.push((key, None));
            continue;
        }
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next() {
                    None => panic!("unterminated quote in {line:?}"),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some('n') => value.push('\n'),
                        Some('r') => value.push('\r'),
                        Some('t') => value.push('\t'),
                        Some(c) => value.push(c),
                        None => panic!("unterminated escape in {line:?}"),
                    },
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|&c| c != ' ') {
                value.push(c);
            }
        }
        fields.push((key, Some(value)));
    }
}

/// The daemon's policy log lines (`batv-daemon: policy ...`), each read as logfmt fields.
pub fn policy_lines(d: &Daemon) -> Vec<Vec<(String, Option<String>)>> {
    d.log().lines().filter(|l| l.contains("batv-daemon: policy ")).map(logfmt).collect()
}

/// The value of field `key` (the first one).
pub fn field<'a>(fields: &'a [(String, Option<String>)], key: &str) -> Option<&'a str> {
    fields.iter().find(|(k, _)| k == key).and_then(|(_, v)| v.as_deref())
}

/// A tag with the first character of its hash changed (still well-formed, so it is
/// checked and fails: bad-signature).
pub fn forge(tagged: &str) -> String {
    forge_at(tagged, 0)
}

/// A tag with character `i` (0-5) of its hash changed: distinct forgeries of one tag.
pub fn forge_at(tagged: &str, i: usize) -> String {
    // prvs= K DDD hash =local@domain
    let mut b = tagged.as_bytes().to_vec();
    let at = 9 + i;
    b[at] = if b[at] == b'a' { b'b' } else { b'a' };
    String::from_utf8(b).unwrap()
}

/// `batv verify` at the daemon's clock: the original address if the tag is valid.
pub fn verify(d: &Daemon, addr: &str) -> Option<String> {
    d.store.verify(NOW, &[addr]).ok().and_then(|v| v.into_iter().next())
}
