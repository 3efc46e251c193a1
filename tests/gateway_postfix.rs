//! Gateway mode in front of a whole Postfix that takes no XCLIENT from batv: the MTA sees
//! every client as batv's address (127.0.0.1, in its `mynetworks`), relays anything for it,
//! and accepts any local part of example.com (`local_recipient_maps =`), bouncing unknown
//! users after the fact, as qmail or Exchange do. So batv does relay control and recipient
//! validation itself.
//!
//! Postfix delivers alice, bob and postmaster to the aiosmtpd sink (`transport_maps`),
//! bounces every other local part (`local_transport = error:5.1.1`) and sends all other
//! mail, relayed or bounces, to the sink too (`default_transport`, a transport named
//! `outbound` in the maillog): whatever Postfix lets out is seen, and what left example.com
//! is told apart.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::peers::{code, Client};
use common::postfix::{can_run_postfix, free_port, Postfix};
use common::proxy::{postfix_root, Proxy, TODAY};
use common::{python_with_aiosmtpd, require, Sink};

/// A whole Postfix forks an smtpd per connection: slow on a busy machine.
const SLOW: &str = "command_timeout_ms = 20000\ndata_timeout_ms = 20000\n";

/// batv's address towards Postfix, and Postfix's only trusted client.
const BATV: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
/// The client from outside: on loopback, not in Postfix's mynetworks nor batv's
/// trusted_networks.
const CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const HELO: &str = "mx.remote.example";

/// The relay tricks: each names example.com last but routes to evil.test (or is not quite
/// example.com), in RCPT TO's angle brackets.
const TRICKS: [(&str, &str); 5] = [
    ("percent hack", "bob%evil.test@example.com"),
    ("bang path", "evil.test!bob@example.com"),
    ("source route", "@example.com:bob@evil.test"),
    ("quoted @", "\"bob@evil.test\"@example.com"),
    ("trailing dot", "bob@example.com."),
];

/// Everything under test; fields drop in order: Postfix first, then batv, the sink.
struct Site {
    pf: Postfix,
    gateway: Option<Proxy>,
    sink: Sink,
    mx: u16,
    _dir: tempfile::TempDir,
}

/// Postfix on 127.0.0.1:mx as described above and, with `gateway` (extra `[proxy]`
/// settings), `batv proxy` in gateway mode in front of it, knowing alice, bob and
/// postmaster of example.com. None (skip) when Postfix or aiosmtpd cannot run here.
fn site(gateway: Option<&str>) -> Option<Site> {
    let root = postfix_root()?;
    if !can_run_postfix() || !require("python3-aiosmtpd", python_with_aiosmtpd()) {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(dir.path());
    let mx = free_port();
    let to_sink = format!("smtp:[127.0.0.1]:{}", sink.port);
    let out = format!("outbound:[127.0.0.1]:{}", sink.port);
    let main = format!(
        "mydestination = example.com
mynetworks = 127.0.0.1/32
local_recipient_maps =
smtpd_reject_unlisted_recipient = no
transport_maps = inline:{{ alice@example.com={to_sink}, bob@example.com={to_sink}, postmaster@example.com={to_sink} }}
local_transport = error:5.1.1 User unknown
default_transport = {out}
allow_percent_hack = yes
swap_bangpath = yes
allow_untrusted_routing = no
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
"
    );
    let services = [
        format!("127.0.0.1:{mx} inet n - n - - smtpd"),
        // The way out of example.com, told apart in the maillog by its name.
        "outbound unix - - n - - smtp -o syslog_name=postfix/outbound".to_string(),
    ];
    let pf = Postfix::start(&root, &main, &services, &[mx]);
    let gateway = gateway.map(|extra| {
        let valid = dir.path().join("valid_recipients");
        std::fs::write(&valid, "alice@example.com\nbob@example.com\n").unwrap();
        Proxy::start(
            &format!("127.0.0.1:{mx}"),
            &format!("mode = \"gateway\"\nvalid_recipients = \"{}\"\n{SLOW}{extra}", valid.display()),
        )
    });
    Some(Site {
        pf,
        gateway,
        sink,
        mx,
        _dir: dir,
    })
}

impl Site {
    /// Where clients connect: batv when there is one, else Postfix itself.
    fn addr(&self) -> String {
        match &self.gateway {
            Some(g) => g.addr.clone(),
            None => format!("127.0.0.1:{}", self.mx),
        }
    }

    fn gateway(&self) -> &Proxy {
        self.gateway.as_ref().expect("a gateway site")
    }

    /// One transaction from `source`: the replies to MAIL, each RCPT and, when a
    /// recipient was accepted, DATA and (after a 354) the message, whose own header
    /// fields are From: and Subject: `subject`.
    fn transaction(&self, source: Ipv4Addr, from: &str, rcpts: &[&str], subject: &str) -> Vec<String> {
        let mut c = Client::connect_from(&self.addr(), source);
        let greeting = c.reply();
        assert_eq!(code(&greeting), 220, "{greeting}\n{}", self.logs());
        assert_eq!(code(&c.cmd(&format!("EHLO {HELO}"))), 250, "{}", self.logs());
        c.transaction(from, rcpts, &format!("From: <{from}>\r\nSubject: {subject}\r\n\r\nA message.\r\n"))
    }

    /// The maillog and, with a gateway, batv's log: for failure messages.
    fn logs(&self) -> String {
        let batv = self.gateway.as_ref().map(common::peers::log).unwrap_or_default();
        format!("--- maillog ---\n{}--- batv ---\n{batv}", self.pf.log())
    }

    /// The sink's messages once one satisfies `want` (at most 20 s: Postfix delivers
    /// from its queue).
    fn wait_message(&self, what: &str, want: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let all = self.sink.messages(0);
            if let Some(m) = all.iter().find(|m| want(m)) {
                return m.clone();
            }
            assert!(Instant::now() < deadline, "no {what} in the sink: {all:#?}\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The one message whose own Subject is `subject` (a bounce quoting it has its own).
    fn message(&self, subject: &str) -> serde_json::Value {
        let m = self.wait_message(&format!("message {subject:?}"), |m| subject_of(m) == Some(subject));
        let same = self.sink.messages(0).iter().filter(|m| subject_of(m) == Some(subject)).count();
        assert_eq!(same, 1, "one message {subject:?}: {:#?}", self.sink.messages(0));
        m
    }

    /// Bounces Postfix sent (null sender) to `rcpt`.
    fn bounces_to(&self, rcpt: &str) -> Vec<serde_json::Value> {
        self.sink
            .messages(0)
            .into_iter()
            .filter(|m| m["mail_from"] == "<>" && common::rcpt_tos(m) == [rcpt])
            .collect()
    }
}

fn codes(replies: &[String]) -> Vec<u16> {
    replies.iter().map(|r| code(r)).collect()
}

/// The message's header fields as raw lines (folding kept), up to the blank line.
fn header_lines(m: &serde_json::Value) -> Vec<String> {
    let data = m["data"].as_str().unwrap_or("");
    let head = data.split("\r\n\r\n").next().unwrap_or("");
    head.split("\r\n").map(str::to_string).collect()
}

/// The header fields, each as its raw lines (the first, then its continuations).
fn fields(m: &serde_json::Value) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    for line in header_lines(m) {
        match out.last_mut() {
            Some(f) if line.starts_with([' ', '\t']) => f.push(line),
            _ => out.push(vec![line]),
        }
    }
    out
}

fn subject_of(m: &serde_json::Value) -> Option<&str> {
    let data = m["data"].as_str()?;
    let head = data.split("\r\n\r\n").next()?;
    head.split("\r\n").find_map(|l| l.strip_prefix("Subject: "))
}

/// The queue ID in the final reply to a message (`250 2.0.0 Ok: queued as QID`).
fn queue_id(reply: &str) -> String {
    let qid = reply.split("queued as ").nth(1).map(str::trim);
    qid.unwrap_or_else(|| panic!("no queue ID: {reply}")).to_string()
}

impl Site {
    /// The maillog's delivery lines (`status=`) for the message queued as `qid`, once it
    /// is removed from the queue (every recipient delivered or bounced).
    fn deliveries(&self, qid: &str) -> Vec<String> {
        assert!(self.pf.wait_log(&format!("{qid}: removed")), "{qid} never removed\n{}", self.logs());
        let prefix = format!(": {qid}: to=<");
        let log = self.pf.log();
        log.lines()
            .filter(|l| l.contains(&prefix) && l.contains("status="))
            .map(str::to_string)
            .collect()
    }

    /// RCPT commands Postfix's smtpd received in all its sessions (the `rcpt=` counts of
    /// its `disconnect` lines), once every session it logged has ended.
    fn rcpts_at_postfix(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(15);
        let lines = loop {
            let log = self.pf.log();
            let smtpd: Vec<String> = log.lines().filter(|l| l.contains(" postfix/smtpd[")).map(str::to_string).collect();
            let connects = smtpd.iter().filter(|l| l.contains(": connect from ")).count();
            let disconnects: Vec<String> = smtpd.into_iter().filter(|l| l.contains(": disconnect from ")).collect();
            if disconnects.len() == connects {
                break disconnects;
            }
            assert!(Instant::now() < deadline, "Postfix sessions still open\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(100));
        };
        lines
            .iter()
            .filter_map(|l| l.split(" rcpt=").nth(1))
            .map(|n| {
                // rcpt=N when all were accepted, rcpt=accepted/N otherwise.
                let n = n.split_whitespace().next().unwrap();
                n.rsplit('/').next().unwrap().parse::<usize>().unwrap()
            })
            .sum()
    }
}

/// What Postfix does, alone, with what batv is there to stop: from its trusted client
/// (127.0.0.1, batv's address) it takes any local part and bounces unknown users
/// afterwards (backscatter to a forged sender), and it relays anything, each relay trick
/// included. From a stranger its own relay control refuses the tricks that route.
#[test]
fn postfix_alone_takes_unknown_users_then_bounces_and_relays_for_batvs_address() {
    let Some(site) = site(None) else { return };

    // An unknown user: accepted, then bounced to the sender.
    let r = site.transaction(BATV, "carol@remote.test", &["nobody@example.com"], "to nobody");
    assert_eq!(codes(&r), [250, 250, 354, 250], "{r:#?}\n{}", site.logs());
    let d = site.deliveries(&queue_id(&r[3]));
    assert!(
        d.len() == 1 && d[0].contains("to=<nobody@example.com>") && d[0].contains("dsn=5.1.1, status=bounced"),
        "{d:#?}\n{}",
        site.logs()
    );
    let bounce = site.wait_message("bounce to carol", |m| {
        m["mail_from"] == "<>" && common::rcpt_tos(m) == ["carol@remote.test"]
    });
    assert!(bounce["data"].as_str().unwrap().contains("Subject: to nobody"), "{bounce:#?}");
    assert_eq!(subject_of(&bounce), Some("Undelivered Mail Returned to Sender"));

    // Relaying for batv's address: anywhere.
    let r = site.transaction(BATV, "carol@remote.test", &["bob@remote.test"], "relay to remote");
    assert_eq!(codes(&r), [250, 250, 354, 250], "{r:#?}\n{}", site.logs());
    let d = site.deliveries(&queue_id(&r[3]));
    assert!(
        d.len() == 1 && d[0].contains(" postfix/outbound/smtp[") && d[0].contains("to=<bob@remote.test>, relay="),
        "{d:#?}"
    );
    assert_eq!(common::rcpt_tos(&site.message("relay to remote")), ["bob@remote.test"]);

    // Every relay trick is taken. The four that route are rewritten to bob@evil.test and
    // relayed out (Postfix's defaults: allow_percent_hack, swap_bangpath, source routes
    // stripped, the quoted local part re-parsed); the trailing dot is dropped and the
    // message delivered to the local bob.
    for (trick, rcpt) in TRICKS {
        let r = site.transaction(BATV, "carol@remote.test", &[rcpt], trick);
        assert_eq!(codes(&r), [250, 250, 354, 250], "{trick}: {r:#?}\n{}", site.logs());
        let d = site.deliveries(&queue_id(&r[3]));
        let m = site.message(trick);
        if trick == "trailing dot" {
            assert!(
                d.len() == 1
                    && d[0].contains(" postfix/smtp[")
                    && d[0].contains("to=<bob@example.com>, orig_to=<bob@example.com.>, relay="),
                "{trick}: {d:#?}"
            );
            assert_eq!(common::rcpt_tos(&m), ["bob@example.com"], "{trick}");
        } else {
            // The source route is gone at RCPT already: no orig_to.
            let to = match trick {
                "source route" => "to=<bob@evil.test>, relay=".to_string(),
                _ => format!("to=<bob@evil.test>, orig_to=<{rcpt}>, relay="),
            };
            assert!(
                d.len() == 1 && d[0].contains(" postfix/outbound/smtp[") && d[0].contains(&to),
                "{trick}: {d:#?}"
            );
            assert_eq!(common::rcpt_tos(&m), ["bob@evil.test"], "{trick}");
        }
    }

    // The same tricks from a stranger (127.0.0.2): Postfix's own relay control sees the
    // routes and refuses (defer_unauth_destination); the trailing dot is only bob.
    for (trick, rcpt) in TRICKS {
        let r = site.transaction(CLIENT, "carol@remote.test", &[rcpt], &format!("{trick} from a stranger"));
        if trick == "trailing dot" {
            assert_eq!(codes(&r), [250, 250, 354, 250], "{trick}: {r:#?}\n{}", site.logs());
        } else {
            assert_eq!(codes(&r), [250, 454], "{trick}: {r:#?}\n{}", site.logs());
            assert!(
                r[1].starts_with("454 4.7.1 ") && r[1].contains("Relay access denied"),
                "{trick}: {r:#?}"
            );
        }
    }
}

/// A `Received:` field batv added: one, right below Postfix's own (the first field, which
/// names batv's address, all Postfix sees) and right above the client's own fields (the
/// first is `From: <from>`); names the client's HELO and address, ends in `;`, white
/// space and a date, and folds over lines starting with a tab.
fn assert_batv_received(m: &serde_json::Value, from: &str) {
    let f = fields(m);
    let show = || header_lines(m).join("\n");
    let ours: Vec<usize> = (0..f.len())
        .filter(|&i| f[i][0].starts_with("Received:") && f[i].concat().contains("(batv)"))
        .collect();
    assert_eq!(ours.len(), 1, "one Received: by batv:\n{}", show());
    let i = ours[0];
    assert!(
        i == 1 && f[0][0].starts_with("Received: ") && f[0].concat().contains("(Postfix)"),
        "Postfix's Received: first, then batv's:\n{}",
        show()
    );
    assert!(f[0].concat().contains("[127.0.0.1]"), "Postfix sees batv's address:\n{}", show());
    assert_eq!(f[i + 1][0], format!("From: <{from}>"), "the client's fields follow:\n{}", show());
    let lines = &f[i];
    assert!(lines.len() > 1, "folded:\n{}", show());
    assert!(lines[1..].iter().all(|l| l.starts_with('\t')), "folded with tabs:\n{}", show());
    // Unfolded (RFC 5322 §2.2.3: the line breaks removed, the tabs kept).
    let text = lines.concat();
    assert!(text.starts_with(&format!("Received: from {HELO} ")), "the HELO:\n{}", show());
    assert!(text.contains("[127.0.0.2]"), "the client's address:\n{}", show());
    // `;`, white space (a space or the fold's tab), the date: the field's end.
    let (_, date) = text.rsplit_once(';').unwrap_or_else(|| panic!("no `;`:\n{}", show()));
    assert!(date.starts_with([' ', '\t']), "white space after `;`:\n{}", show());
    assert!(
        chrono::DateTime::parse_from_rfc2822(date.trim()).is_ok(),
        "an RFC 5322 date after `;`: {date:?}\n{}",
        show()
    );
}

/// Gateway mode from a stranger (127.0.0.2): what Postfix would take and bounce or relay
/// is refused at RCPT and never reaches it; bounces are checked (the untagged refused at
/// DATA, the tagged delivered stripped); delivered mail carries batv's Received: field.
#[test]
fn the_gateway_refuses_unknown_users_relaying_and_backscatter() {
    let Some(site) = site(Some("")) else { return };
    let carol = "carol@remote.test";
    // RCPTs batv accepted: each is one Postfix saw.
    let mut forwarded = 0;

    // Relaying: refused by batv, to a plain remote address and by every trick.
    let r = site.transaction(CLIENT, carol, &["bob@remote.test"], "relay to remote");
    assert_eq!(codes(&r), [250, 554], "{r:#?}\n{}", site.logs());
    assert!(r[1].starts_with("554 5.7.1 "), "{r:#?}");
    for (trick, rcpt) in TRICKS {
        let r = site.transaction(CLIENT, carol, &[rcpt], trick);
        assert_eq!(codes(&r), [250, 554], "{trick}: {rcpt}: {r:#?}\n{}", site.logs());
        assert!(r[1].starts_with("554 5.7.1 "), "{trick}: {r:#?}");
    }

    // A genuine bounce: delivered to alice, stripped.
    let tagged = site.gateway().sign(TODAY, "alice@example.com");
    assert!(tagged.ends_with("=alice@example.com") && tagged != "alice@example.com", "{tagged}");
    let r = site.transaction(CLIENT, "", &[&tagged], "bounce to a valid tag");
    assert_eq!(codes(&r), [250, 250, 354, 250], "{r:#?}\n{}", site.logs());
    forwarded += 1;

    // An unknown user, refused at RCPT beside two good ones (postmaster is always valid):
    // the message goes to them, and Postfix never makes a bounce for nobody.
    let r = site.transaction(
        CLIENT,
        carol,
        &["nobody@example.com", "alice@example.com", "postmaster@example.com"],
        "mail",
    );
    assert_eq!(codes(&r), [250, 550, 250, 250, 354, 250], "{r:#?}\n{}", site.logs());
    assert!(r[1].starts_with("550 5.1.1 "), "{r:#?}");
    forwarded += 2;
    let d = site.deliveries(&queue_id(r.last().unwrap()));
    assert!(
        d.len() == 2 && d.iter().all(|l| l.contains("status=sent")),
        "{d:#?}\n{}",
        site.logs()
    );

    let bounce = site.message("bounce to a valid tag");
    assert_eq!(bounce["mail_from"], "<>", "{bounce:#?}");
    assert_eq!(common::rcpt_tos(&bounce), ["alice@example.com"], "{bounce:#?}");
    assert_batv_received(&bounce, "");
    let mail = site.message("mail");
    assert_eq!(mail["mail_from"], carol, "{mail:#?}");
    let mut to = common::rcpt_tos(&mail);
    to.sort();
    assert_eq!(to, ["alice@example.com", "postmaster@example.com"], "{mail:#?}");
    assert_batv_received(&mail, carol);

    // Nothing else came out of Postfix: no bounce, nothing relayed; and Postfix never saw
    // a refused recipient.
    let log = site.pf.log();
    assert!(
        !log.contains("status=bounced") && !log.contains("non-delivery notification"),
        "{}",
        site.logs()
    );
    assert!(site.bounces_to(carol).is_empty(), "{:#?}", site.sink.messages(0));
    assert_eq!(site.sink.messages(0).len(), 2, "{:#?}", site.sink.messages(0));
    let outside = |l: &&str| l.contains(" to=<") && (l.contains("remote.test>") || l.contains("evil.test"));
    assert_eq!(log.lines().filter(outside).count(), 0, "{}", site.logs());
    assert_eq!(site.rcpts_at_postfix(), forwarded, "{}", site.logs());

    // Backscatter: an untagged bounce to a real user, refused at DATA (whether its RCPT
    // reached Postfix is batv's business: it comes after the count).
    let r = site.transaction(CLIENT, "", &["alice@example.com"], "untagged bounce");
    assert_eq!(codes(&r), [250, 250, 550], "{r:#?}\n{}", site.logs());
    assert!(r[2].starts_with("550 5.7.1 "), "{r:#?}");
    assert_eq!(site.sink.messages(0).len(), 2, "{:#?}", site.sink.messages(0));
}

/// A client in `trusted_networks` may relay: the message leaves Postfix for remote.test.
#[test]
fn the_gateway_relays_for_trusted_networks() {
    let Some(site) = site(Some("trusted_networks = [\"127.0.0.2\"]\n")) else {
        return;
    };
    let r = site.transaction(CLIENT, "carol@example.com", &["bob@remote.test"], "relayed");
    assert_eq!(codes(&r), [250, 250, 354, 250], "{r:#?}\n{}", site.logs());
    let d = site.deliveries(&queue_id(&r[3]));
    assert!(
        d.len() == 1 && d[0].contains(" postfix/outbound/smtp[") && d[0].contains("to=<bob@remote.test>, relay="),
        "{d:#?}\n{}",
        site.logs()
    );
    let m = site.message("relayed");
    assert_eq!(common::rcpt_tos(&m), ["bob@remote.test"]);
    assert_batv_received(&m, "carol@example.com");
}
