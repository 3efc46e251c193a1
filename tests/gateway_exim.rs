//! Gateway mode in front of a real Exim 4.96 set up the way qmail (or Exchange, or a
//! stock Exim) runs without XCLIENT: it relays for `relay_from_hosts = 127.0.0.1`, which
//! is batv's address, accepts any local part of example.com at RCPT, and only finds out at
//! routing time that a user does not exist, when it has already taken the message and must
//! bounce it: backscatter made at home. alice, bob and postmaster are delivered to the
//! aiosmtpd sink; unknown users fail in a `:fail:` router; every other domain
//! (remote.test, evil.test) is routed to the sink too, so relayed mail and Exim's bounces
//! (from <> to the sender) are seen there, beside Exim's mainlog (`<=` arrivals, `<= <>`
//! bounces, `**` failures, `=>` deliveries) and its queue (`exim -bpc`).
//!
//! The first test shows that Exim alone does exactly that; the others put `batv proxy` in
//! gateway mode between a client on 127.0.0.2 and Exim and show that batv does the relay
//! control and the recipient validation Exim cannot do for it, and its BATV work: unknown
//! users and relay attempts refused at RCPT (Exim never hears of them, never bounces),
//! backscatter refused at DATA, a bounce to a valid tag delivered stripped under batv's
//! Received field. Loopback only; every wait has a deadline.

mod common;

use common::exim::PrivateExim;

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::peers::{code, Client};
use common::proxy::{Proxy, TODAY};
use common::{python_with_aiosmtpd, require, run_bounded, Sink};

/// The client: on loopback, but not Exim's relay host (127.0.0.1, batv's address).
const CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// Exim's relay host, and the address batv connects from.
const BATV_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
/// The client's HELO name.
const HELO: &str = "mx.remote.example";
/// A stranger's address: the sender of the test mail, and where Exim sends its bounces.
const CAROL: &str = "carol@remote.test";
/// The proxy's timeouts: generous, as the machine may be busy.
const SLOW: &str = "command_timeout_ms = 20000\ndata_timeout_ms = 20000\n";
/// The sink outlives every test.
const SINK_LIFETIME: u32 = 300;
/// How long a message takes, at most, to go through Exim to the sink.
const DELIVERY: Duration = Duration::from_secs(20);
/// After the last expected delivery: time for a bounce Exim had no business making.
const SETTLE: Duration = Duration::from_millis(1500);

/// Exim on a loopback port with its own configuration, stopped by its PID.
struct Exim(PrivateExim);

impl std::ops::Deref for Exim {
    type Target = PrivateExim;
    fn deref(&self) -> &PrivateExim {
        &self.0
    }
}

impl Exim {
    fn start(binary: &Path, sink: u16) -> Exim {
        Exim(PrivateExim::start(binary, |d| {
            format!(
                "primary_hostname = mx.example.com
domainlist local_domains = example.com
# batv's address: Exim relays anything for it.
hostlist relay_from_hosts = {relay}
spool_directory = {d}/spool
log_file_path = {d}/log/%slog
pid_file_path = {d}/exim.pid
local_interfaces = 127.0.0.1
keep_environment =
tls_advertise_hosts =
rfc1413_query_timeout = 0s
host_lookup =
log_selector = +received_recipients
acl_smtp_rcpt = acl_rcpt
begin acl
acl_rcpt:
  accept  hosts = +relay_from_hosts
  # Any local part: no recipient verification, as qmail.
  accept  domains = +local_domains
  deny    message = relay not permitted
begin routers
users:
  driver = manualroute
  domains = +local_domains
  local_parts = alice : bob : postmaster
  route_list = * 127.0.0.1
  self = send
  transport = sink
unknown:
  driver = redirect
  domains = +local_domains
  allow_fail
  data = :fail: Unknown user
elsewhere:
  driver = manualroute
  route_list = * 127.0.0.1
  self = send
  transport = sink
begin transports
sink:
  driver = smtp
  port = {sink}
  allow_localhost
  hosts_avoid_tls = *
begin retry
* * F,1m,10s
",
                relay = BATV_ADDR,
                d = d.display()
            )
        }))
    }

    /// The mainlog's lines holding `needle`.
    fn lines(&self, needle: &str) -> Vec<String> {
        self.log().lines().filter(|l| l.contains(needle)).map(str::to_string).collect()
    }

    /// The messages Exim made itself: its bounces (`<= <> R=<the bounced message>`).
    fn bounces(&self) -> Vec<String> {
        self.lines(" <= <> R=")
    }

    /// Wait until the mainlog holds `needle` (at most `DELIVERY`).
    fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + DELIVERY;
        while !self.log().contains(needle) {
            assert!(Instant::now() < deadline, "no {needle:?} in Exim's log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The number of messages in Exim's queue (`exim -bpc`).
    fn queued(&self) -> usize {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("-C").arg(&self.conf).arg("-bpc");
        let out = run_bounded(cmd, b"", Duration::from_secs(10));
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.code, 0, "exim -bpc: {text} {}", out.stderr);
        text.trim().parse().unwrap_or_else(|_| panic!("exim -bpc: {text:?} {}", out.stderr))
    }

    /// Wait until the queue is empty (at most `DELIVERY`).
    fn wait_empty_queue(&self) {
        let deadline = Instant::now() + DELIVERY;
        loop {
            let n = self.queued();
            if n == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "{n} messages still in Exim's queue:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Everything under test; fields drop in order: the proxy first, then Exim, the sink.
struct Site {
    proxy: Option<Proxy>,
    exim: Exim,
    sink: Sink,
    _dir: tempfile::TempDir,
}

/// The valid recipients batv is given (postmaster is valid without being listed).
const VALID: &str = "alice@example.com\nbob@example.com\n";

/// Exim and the sink, and with `gateway` (extra `[proxy]` settings) batv in gateway mode
/// in front of Exim, with `VALID` as its valid recipients. None (skip) when Exim or
/// aiosmtpd cannot run here.
fn site(gateway: Option<&str>) -> Option<Site> {
    let exim = common::exim::binary();
    let root = unsafe { libc::geteuid() } == 0;
    if !require("exim (exim4-daemon-light), run as root", exim.is_some() && root) || !require("python3-aiosmtpd", python_with_aiosmtpd()) {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start_for(dir.path(), SINK_LIFETIME);
    let exim = Exim::start(exim.unwrap(), sink.port);
    let proxy = gateway.map(|extra| {
        let valid = dir.path().join("valid_recipients");
        std::fs::write(&valid, VALID).unwrap();
        Proxy::start(
            &exim.addr(),
            &format!("mode = \"gateway\"\nvalid_recipients = \"{}\"\n{SLOW}{extra}", valid.display()),
        )
    });
    Some(Site {
        proxy,
        exim,
        sink,
        _dir: dir,
    })
}

/// One transaction to `addr` from `source`: the replies to MAIL, each RCPT and, when a
/// recipient was accepted, DATA and (after a 354) the end of the message.
fn transaction(addr: &str, source: Ipv4Addr, from: &str, rcpts: &[&str], subject: &str) -> Vec<String> {
    let mut c = Client::connect_from(addr, source);
    let greeting = c.reply();
    assert_eq!(code(&greeting), 220, "greeting from {addr}: {greeting:?}");
    let ehlo = c.cmd(&format!("EHLO {HELO}"));
    assert_eq!(code(&ehlo), 250, "EHLO to {addr}: {ehlo:?}");
    c.transaction(from, rcpts, &format!("Subject: {subject}\r\n\r\nHello.\r\n"))
}

fn codes(replies: &[String]) -> Vec<u16> {
    replies.iter().map(|r| code(r)).collect()
}

/// The message's data as the sink got it.
fn data(m: &serde_json::Value) -> &str {
    m["data"].as_str().unwrap_or("")
}

fn has_subject(m: &serde_json::Value, subject: &str) -> bool {
    let want = format!("Subject: {subject}");
    header_fields(data(m)).contains(&want)
}

/// The header fields of a message, unfolded, in order.
fn header_fields(data: &str) -> Vec<String> {
    let head = data.split("\r\n\r\n").next().unwrap_or("");
    let mut fields: Vec<String> = Vec::new();
    for line in head.split("\r\n") {
        match fields.last_mut() {
            Some(f) if line.starts_with([' ', '\t']) => {
                f.push(' ');
                f.push_str(line.trim_start());
            }
            _ => fields.push(line.to_string()),
        }
    }
    fields
}

impl Site {
    fn proxy(&self) -> &Proxy {
        self.proxy.as_ref().expect("a site with batv")
    }

    /// A transaction from 127.0.0.2 through batv.
    fn gateway(&self, from: &str, rcpts: &[&str], subject: &str) -> Vec<String> {
        transaction(&self.proxy().addr, CLIENT, from, rcpts, subject)
    }

    /// A transaction straight to Exim from `source`.
    fn direct(&self, source: Ipv4Addr, from: &str, rcpts: &[&str], subject: &str) -> Vec<String> {
        transaction(&self.exim.addr(), source, from, rcpts, subject)
    }

    /// Everything to print when an assertion fails.
    fn logs(&self) -> String {
        let proxy = self.proxy.as_ref().map(common::peers::log).unwrap_or_default();
        format!(
            "--- exim mainlog ---\n{}--- proxy log ---\n{proxy}--- sink ---\n{:#?}",
            self.exim.log(),
            self.sink.messages(0)
        )
    }

    /// The messages the sink got that `pick` chooses, once there are `n` (at most
    /// `DELIVERY`); exactly `n`.
    fn delivered(&self, n: usize, what: &str, pick: impl Fn(&serde_json::Value) -> bool) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + DELIVERY;
        loop {
            let got: Vec<serde_json::Value> = self.sink.messages(0).into_iter().filter(&pick).collect();
            if got.len() >= n || Instant::now() > deadline {
                assert_eq!(got.len(), n, "{what}: {n} messages wanted in the sink\n{}", self.logs());
                return got;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The one message with `subject`, once it is in the sink.
    fn delivered_subject(&self, subject: &str) -> serde_json::Value {
        self.delivered(1, subject, |m| has_subject(m, subject)).remove(0)
    }

    /// Exim made no bounce and holds nothing: no `<= <>` line, no failed delivery (`**`),
    /// an empty queue, nothing in the sink to the senders of the test mail. Called after
    /// the last expected delivery, with a moment to settle.
    fn assert_no_bounce(&self) {
        self.exim.wait_empty_queue();
        std::thread::sleep(SETTLE);
        let log = self.logs();
        assert!(self.exim.bounces().is_empty(), "Exim made a bounce\n{log}");
        assert!(self.exim.lines(" ** ").is_empty(), "Exim failed a delivery\n{log}");
        assert_eq!(self.exim.queued(), 0, "Exim's queue\n{log}");
        let to_carol: Vec<_> = self
            .sink
            .messages(0)
            .into_iter()
            .filter(|m| common::rcpt_tos(m).iter().any(|r| r == CAROL))
            .collect();
        assert!(to_carol.is_empty(), "bounces reached {CAROL}: {to_carol:#?}\n{log}");
    }
}

/// The queue id in Exim's reply to the end of a message (`250 OK id=...`).
fn exim_id(reply: &str) -> String {
    reply
        .split("id=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no queue id in {reply:?}"))
        .to_string()
}

/// Why the rest proves anything: Exim alone takes mail for any user of example.com, from a
/// stranger as from its relay host, and bounces it once it has found out the user does not
/// exist, to a sender that may well be forged.
#[test]
fn exim_alone_accepts_unknown_users_and_bounces_later() {
    let started = Instant::now();
    let Some(site) = site(None) else { return };
    for (source, subject) in [(BATV_ADDR, "to nobody from the relay host"), (CLIENT, "to nobody from a stranger")] {
        let r = site.direct(source, CAROL, &["nobody@example.com"], subject);
        assert_eq!(codes(&r), [250, 250, 354, 250], "{source}: {r:#?}\n{}", site.logs());
        let id = exim_id(&r[3]);
        site.exim.wait_log(&format!("{id} Completed"));
        let failed = site.exim.lines(&format!("{id} ** nobody@example.com R=unknown: Unknown user"));
        assert_eq!(failed.len(), 1, "{source}: the delivery to nobody failed\n{}", site.logs());
        let bounce = site.exim.lines(&format!(" <= <> R={id} "));
        assert!(
            bounce.len() == 1 && bounce[0].ends_with(&format!("for {CAROL}")),
            "{source}: Exim bounced {id} to {CAROL}: {bounce:#?}\n{}",
            site.logs()
        );
        let from = format!("[{source}]");
        let arrival = site.exim.lines(&format!("{id} <= {CAROL} "));
        assert!(arrival.len() == 1 && arrival[0].contains(&from), "{arrival:#?}");
    }
    // Both bounces reach the sink, from <> to carol, naming nobody.
    let bounces = site.delivered(2, "Exim's bounces", |m| m["mail_from"] == "<>");
    for m in &bounces {
        assert_eq!(common::rcpt_tos(m), [CAROL], "{m:#?}");
        assert!(data(m).contains("X-Failed-Recipients: nobody@example.com\r\n"), "{m:#?}");
        assert!(data(m).contains("Unknown user"), "{m:#?}");
    }
    site.exim.wait_empty_queue();
    eprintln!("gateway_exim: Exim alone: two bounces in {:?}", started.elapsed());
}

/// (a) Unknown users refused by batv at RCPT, on the recipients file: Exim never hears of
/// them, so never bounces. Known users, postmaster (valid unlisted) and a known user with
/// the domain in capitals are relayed.
#[test]
fn the_gateway_refuses_unknown_users_at_rcpt_and_exim_never_bounces() {
    let started = Instant::now();
    let Some(site) = site(Some("")) else { return };
    let r = site.gateway(CAROL, &["nobody@example.com", "alice@example.com", "bob@EXAMPLE.COM"], "mixed");
    assert_eq!(codes(&r), [250, 550, 250, 250, 354, 250], "{r:#?}\n{}", site.logs());
    assert!(r[1].starts_with("550 5.1.1 "), "{r:#?}");
    let r = site.gateway(CAROL, &["nobody@example.com"], "to nobody only");
    assert_eq!(codes(&r), [250, 550], "{r:#?}\n{}", site.logs());
    assert!(r[1].starts_with("550 5.1.1 "), "{r:#?}");
    let r = site.gateway(CAROL, &["postmaster@example.com"], "to postmaster");
    assert_eq!(codes(&r), [250, 250, 354, 250], "{r:#?}\n{}", site.logs());

    let mixed = site.delivered_subject("mixed");
    let mut rcpts = common::rcpt_tos(&mixed);
    rcpts.sort();
    assert_eq!(rcpts, ["alice@example.com", "bob@EXAMPLE.COM"], "{mixed:#?}");
    assert_eq!(mixed["mail_from"], CAROL);
    assert_eq!(
        common::rcpt_tos(&site.delivered_subject("to postmaster")),
        ["postmaster@example.com"]
    );
    site.assert_no_bounce();
    assert!(site.exim.lines("nobody@").is_empty(), "Exim heard of nobody\n{}", site.logs());
    let arrivals = site.exim.lines(" <= ");
    assert_eq!(arrivals.len(), 2, "Exim took the two messages only\n{}", site.logs());
    assert_eq!(site.sink.messages(0).len(), 2, "{}", site.logs());
    eprintln!("gateway_exim: unknown users: {:?}", started.elapsed());
}

/// (b) and (c): a bounce to an untagged protected address is backscatter, refused at DATA
/// (nothing reaches Exim); a bounce to a valid tag is delivered to its owner, stripped,
/// under batv's Received field naming the client, which Exim, seeing batv, cannot name.
#[test]
fn the_gateway_refuses_backscatter_and_delivers_bounces_to_valid_tags() {
    let started = Instant::now();
    let Some(site) = site(Some("")) else { return };
    let tag = site.proxy().sign(TODAY, "alice@example.com");
    assert!(
        tag.starts_with("prvs=") && tag.ends_with("=alice@example.com"),
        "batv sign: {tag:?}"
    );

    let r = site.gateway("", &["alice@example.com"], "backscatter");
    assert_eq!(codes(&r), [250, 250, 550], "{r:#?}\n{}", site.logs());
    assert!(r[2].starts_with("550 5.7.1 "), "{r:#?}");
    let r = site.gateway("", &[&tag], "bounce to a valid tag");
    assert_eq!(codes(&r), [250, 250, 354, 250], "{r:#?}\n{}", site.logs());

    let m = site.delivered_subject("bounce to a valid tag");
    assert_eq!(m["mail_from"], "<>", "{m:#?}");
    assert_eq!(common::rcpt_tos(&m), ["alice@example.com"], "{m:#?}");
    let received: Vec<String> = header_fields(data(&m))
        .into_iter()
        .filter(|f| f.to_ascii_lowercase().starts_with("received:"))
        .collect();
    // Exim's own field first: its client is batv, on 127.0.0.1. Then batv's, naming the
    // real client and its HELO: the top of what batv relayed.
    assert_eq!(received.len(), 2, "{received:#?}\n{m:#?}");
    assert!(
        received[0].contains("[127.0.0.1]") && received[0].contains("by mx.example.com"),
        "Exim's field: {received:#?}"
    );
    let batv = &received[1];
    eprintln!("gateway_exim: batv's field, unfolded: {batv}");
    assert!(
        batv.starts_with(&format!("Received: from {HELO} ([{CLIENT}])")),
        "batv's field names the client: {batv:?}"
    );
    assert!(batv.contains(" by ") && batv.contains("(batv)"), "batv's field: {batv:?}");
    let date = batv.rsplit_once(';').map(|(_, d)| d.trim()).unwrap_or("");
    assert!(
        date.len() > 10 && date.contains(':') && date.split_whitespace().count() >= 4,
        "batv's field ends with a date: {batv:?}"
    );
    let fields = header_fields(data(&m));
    assert!(
        fields[0].starts_with("Received:") && fields[1] == *batv,
        "batv's field on top of what batv relayed: {fields:#?}"
    );

    site.assert_no_bounce();
    let arrivals = site.exim.lines(" <= ");
    assert_eq!(arrivals.len(), 1, "Exim took the valid bounce only\n{}", site.logs());
    assert!(
        arrivals[0].contains(" <= <> H=") && arrivals[0].ends_with("for alice@example.com"),
        "{arrivals:#?}"
    );
    assert!(
        site.sink.messages(0).iter().all(|m| !has_subject(m, "backscatter")),
        "{}",
        site.logs()
    );
    assert!(site.exim.lines("prvs=").is_empty(), "Exim saw the tag\n{}", site.logs());
    eprintln!("gateway_exim: bounces: {:?}", started.elapsed());
}

/// (d) batv is the relay control: Exim relays anything for batv's address, yet the
/// stranger behind batv may not relay; a local recipient beside is delivered.
#[test]
fn the_gateway_is_the_relay_control() {
    let started = Instant::now();
    let Some(site) = site(Some("")) else { return };
    let r = site.gateway(CAROL, &["bob@remote.test"], "relay");
    assert_eq!(codes(&r), [250, 554], "{r:#?}\n{}", site.logs());
    assert!(r[1].starts_with("554 5.7.1 "), "{r:#?}");
    let r = site.gateway(CAROL, &["bob@remote.test", "alice@example.com"], "relay and local");
    assert_eq!(codes(&r), [250, 554, 250, 354, 250], "{r:#?}\n{}", site.logs());
    assert!(r[1].starts_with("554 5.7.1 "), "{r:#?}");
    let m = site.delivered_subject("relay and local");
    assert_eq!(common::rcpt_tos(&m), ["alice@example.com"], "{m:#?}");
    site.assert_no_bounce();
    assert!(
        site.exim.lines("bob@remote.test").is_empty(),
        "Exim heard of bob@remote.test\n{}",
        site.logs()
    );

    // What batv kept from Exim: from 127.0.0.1 (batv's address), Exim relays to
    // remote.test; from 127.0.0.2 its own relay control refuses.
    let r = site.direct(BATV_ADDR, CAROL, &["bob@remote.test"], "relayed by Exim");
    assert_eq!(codes(&r), [250, 250, 354, 250], "{r:#?}\n{}", site.logs());
    let m = site.delivered_subject("relayed by Exim");
    assert_eq!(common::rcpt_tos(&m), ["bob@remote.test"], "{m:#?}");
    site.exim.wait_log(&format!("{} => bob@remote.test R=elsewhere", exim_id(&r[3])));
    let r = site.direct(CLIENT, CAROL, &["bob@remote.test"], "refused by Exim");
    assert_eq!(codes(&r), [250, 550], "{r:#?}\n{}", site.logs());
    assert!(r[1].contains("relay not permitted"), "{r:#?}");
    eprintln!("gateway_exim: relay control: {:?}", started.elapsed());
}

/// What Exim itself does with a recipient from its relay host (batv's address).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fate {
    /// Accepted at RCPT, then failed at routing and bounced to the sender.
    Bounced,
    /// Accepted and relayed to this address.
    Relayed(String),
    /// Refused at RCPT with this code.
    Refused(u16),
}

/// The relay tricks, and what Exim 4.96 (this configuration, no `percent_hack_domains`)
/// does with each when it comes from 127.0.0.1: the percent hack and the bang path are
/// local parts of example.com to it, as is the quoted `@`, all unknown users, so bounced;
/// the source route is stripped (RFC 5321 4.1.1.3) and the mail relayed to evil.test; the
/// trailing dot is a syntax error (no `strip_trailing_dot`).
fn tricks() -> [(&'static str, Fate); 5] {
    [
        ("bob%evil.test@example.com", Fate::Bounced),
        ("evil.test!bob@example.com", Fate::Bounced),
        ("@example.com:bob@evil.test", Fate::Relayed("bob@evil.test".into())),
        ("\"bob@evil.test\"@example.com", Fate::Bounced),
        ("bob@example.com.", Fate::Refused(501)),
    ]
}

/// (e) The relay tricks are refused by batv with 554 5.7.1 and never reach Exim.
#[test]
fn the_gateway_refuses_relay_tricks() {
    let started = Instant::now();
    let Some(site) = site(Some("")) else { return };
    let mut failures = Vec::new();
    for (trick, _) in tricks() {
        let r = site.gateway(CAROL, &[trick], "trick");
        if codes(&r) != [250, 554] || !r[1].starts_with("554 5.7.1 ") {
            failures.push(format!("RCPT TO:<{trick}> through the gateway: {r:?}"));
        }
    }
    let r = site.gateway(CAROL, &["alice@example.com"], "after the tricks");
    assert_eq!(codes(&r), [250, 250, 354, 250], "{r:#?}\n{}", site.logs());
    site.delivered_subject("after the tricks");
    site.assert_no_bounce();
    if !site.exim.lines("evil.test").is_empty() {
        failures.push("Exim heard of evil.test through the gateway".to_string());
    }
    assert_eq!(site.exim.lines(" <= ").len(), 1, "{}", site.logs());
    assert!(failures.is_empty(), "{}\n{}", failures.join("\n"), site.logs());
    eprintln!("gateway_exim: relay tricks through the gateway: {:?}", started.elapsed());
}

/// What the gateway spares Exim: each relay trick sent to Exim directly from 127.0.0.1,
/// batv's address, has the fate `tricks()` gives it.
#[test]
fn exim_alone_takes_the_relay_tricks_from_batvs_address() {
    let started = Instant::now();
    let Some(site) = site(None) else { return };
    let mut failures = Vec::new();
    let mut bounced = 0;
    for (i, (trick, want)) in tricks().into_iter().enumerate() {
        let subject = format!("trick {i}");
        let r = site.direct(BATV_ADDR, CAROL, &[trick], &subject);
        let fate = if code(&r[1]) != 250 {
            Fate::Refused(code(&r[1]))
        } else {
            assert_eq!(codes(&r), [250, 250, 354, 250], "{trick}: {r:#?}\n{}", site.logs());
            let id = exim_id(&r[3]);
            site.exim.wait_log(&format!("{id} Completed"));
            let delivered = site.exim.lines(&format!("{id} => "));
            let failed = site.exim.lines(&format!("{id} ** "));
            match (&delivered[..], &failed[..]) {
                ([d], []) if d.contains(" R=elsewhere ") => Fate::Relayed(common::rcpt_tos(&site.delivered_subject(&subject)).join(", ")),
                ([], [_]) if !site.exim.lines(&format!(" <= <> R={id} ")).is_empty() => {
                    bounced += 1;
                    Fate::Bounced
                }
                _ => panic!("{trick}: delivered {delivered:#?}, failed {failed:#?}\n{}", site.logs()),
            }
        };
        eprintln!(
            "gateway_exim: Exim alone from 127.0.0.1, RCPT TO:<{trick}>: {:?}, {fate:?}",
            r[1].trim_end()
        );
        if fate != want {
            failures.push(format!("Exim alone, RCPT TO:<{trick}>: {fate:?}, want {want:?} ({r:?})"));
        }
    }
    assert!(failures.is_empty(), "{}\n{}", failures.join("\n"), site.logs());
    site.delivered(bounced, "Exim's bounces of the tricks", |m| {
        m["mail_from"] == "<>" && common::rcpt_tos(m) == [CAROL]
    });
    site.exim.wait_empty_queue();
    eprintln!("gateway_exim: relay tricks, Exim alone: {:?}", started.elapsed());
}

/// A client in trusted_networks may relay; another beside it may not.
#[test]
fn trusted_networks_may_relay_through_the_gateway() {
    let started = Instant::now();
    let Some(site) = site(Some("trusted_networks = [\"127.0.0.2\"]\n")) else {
        return;
    };
    let r = site.gateway(CAROL, &["bob@remote.test"], "relay from a trusted network");
    assert_eq!(codes(&r), [250, 250, 354, 250], "{r:#?}\n{}", site.logs());
    let m = site.delivered_subject("relay from a trusted network");
    assert_eq!(common::rcpt_tos(&m), ["bob@remote.test"], "{m:#?}");
    assert_eq!(m["mail_from"], CAROL, "{m:#?}");
    let r = transaction(
        &site.proxy().addr,
        Ipv4Addr::new(127, 0, 0, 3),
        CAROL,
        &["bob@remote.test"],
        "relay from elsewhere",
    );
    assert_eq!(codes(&r), [250, 554], "{r:#?}\n{}", site.logs());
    assert!(r[1].starts_with("554 5.7.1 "), "{r:#?}");
    site.assert_no_bounce();
    assert_eq!(site.exim.lines(" <= ").len(), 1, "{}", site.logs());
    eprintln!("gateway_exim: trusted networks: {:?}", started.elapsed());
}
