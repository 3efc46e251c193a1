//! `batv milter` inside a whole Postfix: `smtpd_milters` on the MX port, mail relayed to
//! Postfix's smtp-sink. `mynetworks` and `[milter] internal_networks` are 127.0.0.1 only:
//! clients connect from 127.0.0.2 and up as strangers. Loopback only, bounded in time;
//! every process is stopped by its PID.

mod common;

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use common::daemon_proc::{bounded, Store, NOW};
use common::milter_proc::*;
use common::peers::code;
use common::postfix::{can_run_postfix, free_port, Postfix};
use common::postfix_site::{delivered, ended, send_transaction, Message};
use common::proxy::{postfix_root, SmtpSink};

const LIMIT: Duration = Duration::from_secs(120);

/// Postfix with batv's milter, relaying to smtp-sink.
struct Site {
    // Fields drop in declaration order: Postfix first.
    pf: Postfix,
    milter: Milter,
    sink: SmtpSink,
    store: Store,
    mx: u16,
    submission: u16,
}

/// A site, or None (skip) where Postfix cannot run. `batv` follows the `[milter]` line.
fn site(batv: &str) -> Option<Site> {
    site_with("", batv)
}

/// [`site`] with `top` among the top-level settings.
fn site_with(top: &str, batv: &str) -> Option<Site> {
    let root = postfix_root()?;
    if !can_run_postfix() {
        return None;
    }
    let store = Store::new(&format!("{top}[milter]\ninternal_networks = [\"127.0.0.1/32\"]\n{batv}"));
    let milter = Milter::start(&store);
    let sink = SmtpSink::start(&root, &[]);
    let mx = free_port();
    // Recipients are validated before the milter strips a tag (at end of message): the
    // tagged forms of the users are listed too (README's milter section).
    let recipients = store.dir.path().join("recipients");
    std::fs::write(
        &recipients,
        "/^(alice|bob)@example\\.org$/ ok\n/^prvs=[0-9]{4}[0-9a-z]{6,8}=(alice|bob)@example\\.org$/ ok\n/^(alice|bob)\\+prvs=[0-9]{4}[0-9a-z]{6,8}@example\\.org$/ ok\n",
    )
    .unwrap();
    std::fs::set_permissions(store.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let main = format!(
        "mynetworks = 127.0.0.1/32
relay_domains = example.org
relay_recipient_maps = regexp:{recipients}
relayhost = [127.0.0.1]:{sink}
relay_transport = relay:[127.0.0.1]:{sink}
default_transport = smtp:[127.0.0.1]:{sink}
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_milters = inet:{milter}
non_smtpd_milters = inet:{milter}
milter_protocol = 6
milter_default_action = tempfail
# sendmail(1) runs postdrop with this environment: the unpacked libraries with it.
export_environment = TZ MAIL_CONFIG LANG LD_LIBRARY_PATH={lib}
",
        lib = root.join("usr/lib/postfix").display(),
        recipients = recipients.display(),
        sink = sink.port,
        milter = milter.addr,
    );
    // A submission port beside the MX, for clients of mynetworks only, with the milter
    // named on the service as master.cf would.
    let submission = free_port();
    let services = [
        format!("127.0.0.1:{mx} inet n - n - - smtpd"),
        format!(
            "127.0.0.1:{submission} inet n - n - - smtpd -o smtpd_client_restrictions=permit_mynetworks,reject -o smtpd_milters=inet:{}",
            milter.addr
        ),
    ];
    let pf = Postfix::start(&root, &main, &services, &[mx, submission]);
    Some(Site {
        pf,
        milter,
        sink,
        store,
        mx,
        submission,
    })
}

impl Site {
    fn transaction(&self, source: Ipv4Addr, from: &str, rcpts: &[&str], tag: &str) -> Vec<String> {
        self.transaction_on(self.mx, source, from, rcpts, tag)
    }

    fn transaction_on(&self, port: u16, source: Ipv4Addr, from: &str, rcpts: &[&str], tag: &str) -> Vec<String> {
        let mut c = common::peers::Client::connect_from(&format!("127.0.0.1:{port}"), source);
        assert_eq!(code(&c.reply()), 220);
        assert_eq!(code(&c.cmd("EHLO mx.remote.test")), 250);
        let r = send_transaction(&mut c, from, rcpts, tag);
        if !ended(&r) {
            c.cmd("QUIT");
        }
        r
    }

    fn delivered(&self, n: usize) -> Vec<Message> {
        delivered(&self.pf, &self.sink, n)
    }

    fn one(&self, tag: &str) -> Message {
        let m: Vec<Message> = self.delivered(1).into_iter().filter(|m| m.text.contains(tag)).collect();
        assert_eq!(m.len(), 1, "{m:#?}");
        m.into_iter().next().unwrap()
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

/// Mail from inside leaves with a signed sender; the same sender from outside does not.
#[test]
fn inside_is_signed_outside_is_not() {
    bounded(LIMIT, || {
        let Some(s) = site("") else { return };
        common::milter_proc::inside_is_signed_outside_is_not(&s);
    });
}

/// An untagged bounce is refused at RCPT; one to an authentic tag is delivered to the
/// original address.
#[test]
fn bounces_are_judged_and_tags_stripped() {
    bounded(LIMIT, || {
        let Some(s) = site("") else { return };
        an_untagged_bounce_is_refused(&s);
        a_tagged_bounce_goes_to_the_original(&s);
    });
}

/// With `tag_syntax = "subaddress"` the milter signs `alice+prvs=...@` (CHGFROM), and a
/// bounce to a sub-address tag is delivered to the mailbox; a forged one is refused.
#[test]
fn subaddress_tags_are_signed_verified_and_stripped() {
    bounded(LIMIT, || {
        let Some(s) = site_with("tag_syntax = \"subaddress\"\n", "") else {
            return;
        };
        let r = s.transaction(INSIDE, "alice@example.org", &["<carol@remote.test>"], "sub-out");
        assert_eq!(codes(&r), [250, 250, 354, 250], "{r:?}\n{}", s.milter_log());
        let m = s.one("sub-out");
        assert!(m.from.starts_with("alice+prvs=1"), "signed in the sub-address syntax: {m:#?}");
        assert_eq!(s.store.verify(NOW, &[&m.from]).unwrap(), ["alice@example.org"]);
        let o = s.store.batv(NOW, &["sign", "--syntax", "subaddress", "bob@example.org"]);
        let tagged = String::from_utf8(o.stdout).unwrap().trim().to_string();
        assert!(tagged.starts_with("bob+prvs="), "{tagged}");
        let r = s.transaction(OUTSIDE, "", &[&format!("<{tagged}>")], "sub-in");
        assert_eq!(codes(&r), [250, 250, 354, 250], "{r:?}\n{}", s.milter_log());
        assert_eq!(s.one("sub-in").rcpts, ["bob@example.org"], "the tag is stripped");
        // One hash character changed: refused at RCPT.
        let at = tagged.find('@').unwrap();
        let last = tagged.as_bytes()[at - 1];
        let forged = format!("{}{}{}", &tagged[..at - 1], if last == b'a' { 'b' } else { 'a' }, &tagged[at..]);
        let r = s.transaction(OUTSIDE, "", &[&format!("<{forged}>")], "sub-forged");
        assert_eq!(code(&r[1]), 550, "{r:?}");
    });
}

/// With reject_at = "data", a second recipient of the other verdict gets 452 and the
/// bounce goes to the one with the valid tag.
#[test]
fn a_mixed_bounce_gets_its_452() {
    bounded(LIMIT, || {
        let Some(s) = site("reject_at = \"data\"\n") else { return };
        let tagged = s.store.sign(NOW, "bob@example.org");
        let r = s.transaction(OUTSIDE, "", &[&format!("<{tagged}>"), "<alice@example.org>"], "mix1");
        assert_eq!(codes(&r), [250, 250, 452, 354, 250], "{r:?}\n{}", s.milter.log());
        let m = s.one("mix1");
        assert_eq!(m.rcpts, ["bob@example.org"]);
        // Backscatter alone is refused at DATA.
        // (send_transaction then sends the message as commands, which Postfix ends.)
        let r = s.transaction(OUTSIDE, "", &["<alice@example.org>"], "bs2");
        assert_eq!(codes(&r)[..3], [250, 250, 550], "{r:?}");
        assert!(r[2].contains("5.7.1") && r[2].contains("BATV"), "{r:?}");
    });
}

/// Monitor mode refuses nothing and marks the bounce.
#[test]
fn monitor_mode_delivers_with_the_header() {
    bounded(LIMIT, || {
        let Some(s) = site("enforce = false\n") else { return };
        monitor_mode_marks_the_bounce(&s);
    });
}

/// batv stopped: milter_default_action = tempfail defers the mail, nothing passes
/// unchecked or unsigned.
#[test]
fn a_stopped_milter_defers() {
    bounded(LIMIT, || {
        let Some(mut s) = site("") else { return };
        let _ = s.milter.child.kill();
        let _ = s.milter.child.wait();
        let r = s.transaction(OUTSIDE, "", &["<bob@example.org>"], "down1");
        assert!(r.iter().any(|x| code(x) / 100 == 4), "deferred: {r:?}");
        let r = s.transaction(INSIDE, "alice@example.org", &["<carol@remote.test>"], "down2");
        assert!(r.iter().any(|x| code(x) / 100 == 4), "deferred: {r:?}");
        std::thread::sleep(Duration::from_millis(500));
        assert!(s.sink_is_empty(), "nothing delivered while batv is down");
    });
}

impl Site {
    fn sink_is_empty(&self) -> bool {
        common::postfix_site::sink_messages(&self.sink).is_empty()
    }
}

/// Mail submitted with Postfix's own sendmail(1) goes through pickup and cleanup, where
/// non_smtpd_milters runs batv: it leaves signed, as submitted mail should.
#[test]
fn locally_submitted_mail_is_signed() {
    bounded(LIMIT, || {
        let Some(s) = site("") else { return };
        let root = postfix_root().unwrap();
        let mut cmd = Command::new(root.join("usr/sbin/sendmail"));
        cmd.env("LD_LIBRARY_PATH", root.join("usr/lib/postfix"))
            .env("MAIL_CONFIG", s.pf.dir.path().join("etc"))
            .args(["-f", "alice@example.org", "carol@remote.test"]);
        let o = common::run_bounded(cmd, b"Subject: test local1\n\nHello.\n", Duration::from_secs(15));
        assert_eq!(o.code, 0, "postfix sendmail: {}", o.stderr);
        let m = s.one("local1");
        assert!(m.from.starts_with("prvs="), "signed: {m:#?}\n{}", s.milter.log());
        assert_eq!(s.store.verify(NOW, &[&m.from]).unwrap(), ["alice@example.org"]);
        assert_eq!(m.rcpts, ["carol@remote.test"]);
        s.milter.wait_log("action=signed");
        let log = s.milter.log();
        let line = log.lines().find(|l| l.contains("action=signed")).unwrap_or_else(|| panic!("{log}"));
        // Postfix names a local submission's client 127.0.0.1: internal_networks must keep
        // it for non_smtpd_milters to sign (README).
        assert!(line.contains("client=127.0.0.1 "), "{line}");
    });
}

/// A forged tag is refused like an untagged address, and a client that keeps guessing
/// gets 421 for every tagged recipient once its max_failed_tags are used up.
#[test]
fn forged_tags_are_refused_and_guessers_cut_off() {
    bounded(LIMIT, || {
        let Some(s) = site("max_failed_tags = 2\n") else { return };
        let tagged = s.store.sign(NOW, "bob@example.org");
        let forged = common::postfix_site::forge(&tagged);
        for _ in 0..2 {
            let r = s.transaction(OUTSIDE, "", &[&format!("<{forged}>")], "forged");
            assert_eq!(code(&r[1]), 550, "{r:?}");
        }
        let r = s.transaction(OUTSIDE, "", &[&format!("<{tagged}>")], "guess3");
        assert_eq!(code(&r[1]), 421, "used up: even a valid tag is not checked: {r:?}");
        // Another client is not affected.
        let r = s.transaction(Ipv4Addr::new(127, 0, 0, 3), "", &[&format!("<{tagged}>")], "other1");
        assert_eq!(codes(&r), [250, 250, 354, 250], "{r:?}");
    });
}

/// A delivery report (RFC 3464) for bob@example.org, returning a message `original` sent,
/// with a forged `X-BATV:` field; its epilogue ends "Hello." as the site's messages do.
fn dsn(original: &str, tag: &str) -> String {
    format!(
        "From: Mail Delivery System <MAILER-DAEMON@mx.remote.test>\r\n\
To: bob@example.org\r\n\
Subject: Undelivered Mail Returned to Sender {tag}\r\n\
X-BATV: bounce-with-valid-tag; reason=valid\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status; boundary=\"b1\"\r\n\
\r\n\
--b1\r\n\
Content-Type: text/plain\r\n\
\r\n\
Your message could not be delivered.\r\n\
\r\n\
--b1\r\n\
Content-Type: message/delivery-status\r\n\
\r\n\
Reporting-MTA: dns; mx.remote.test\r\n\
\r\n\
Final-Recipient: rfc822; nobody@remote.test\r\n\
Action: failed\r\n\
Status: 5.1.1\r\n\
\r\n\
--b1\r\n\
Content-Type: message/rfc822\r\n\
\r\n\
Return-Path: <{original}>\r\n\
From: Bob <bob@example.org>\r\n\
To: nobody@remote.test\r\n\
Subject: hello\r\n\
\r\n\
hello\r\n\
\r\n\
--b1--\r\n\
Hello.\r\n"
    )
}

/// One message from a non-null sender, as raw DATA: the reply to its end.
fn send_message(s: &Site, from: &str, rcpt: &str, message: &str) -> String {
    let mut c = common::peers::Client::connect_from(&format!("127.0.0.1:{}", s.mx), OUTSIDE);
    assert_eq!(code(&c.reply()), 220);
    assert_eq!(code(&c.cmd("EHLO mx.remote.test")), 250);
    assert_eq!(code(&c.cmd(&format!("MAIL FROM:<{from}>"))), 250);
    assert_eq!(code(&c.cmd(&format!("RCPT TO:<{rcpt}>"))), 250);
    assert_eq!(code(&c.cmd("DATA")), 354);
    c.send(message.as_bytes());
    let r = c.cmd(".");
    c.cmd("QUIT");
    r
}

/// The DATA check in the milter: backscatter from a non-null sender is marked (the forged
/// field removed) or, with data_check_refuse, refused at end of message; a bounce of mail
/// we did send is delivered.
#[test]
fn the_data_check_marks_or_refuses_backscatter_without_the_null_sender() {
    bounded(LIMIT, || {
        let Some(s) = site("data_check = true\n") else { return };
        let r = send_message(&s, "mailer-daemon@remote.test", "bob@example.org", &dsn("bob@example.org", "dc1"));
        assert_eq!(code(&r), 250, "{r}\n{}", s.milter.log());
        let m = s.one("dc1");
        assert_eq!(
            m.headers("X-BATV"),
            ["X-BATV: backscatter; reason=untagged; kind=delivery-report"],
            "ours only: {m:#?}"
        );
        let tagged = s.store.sign(NOW, "bob@example.org");
        let r = send_message(&s, "mailer-daemon@remote.test", "bob@example.org", &dsn(&tagged, "dc2"));
        assert_eq!(code(&r), 250, "{r}");
        let m = s.one("dc2");
        assert_eq!(
            m.headers("X-BATV"),
            ["X-BATV: bounce-with-valid-tag; reason=valid; kind=delivery-report"],
            "{m:#?}"
        );
    });
    bounded(LIMIT, || {
        let Some(s) = site("data_check = true\ndata_check_refuse = true\n") else {
            return;
        };
        let r = send_message(&s, "mailer-daemon@remote.test", "bob@example.org", &dsn("bob@example.org", "dc3"));
        assert_eq!(code(&r), 550, "{r}\n{}", s.milter.log());
        assert!(r.contains("5.7.1") && r.contains("BATV"), "{r}");
        std::thread::sleep(Duration::from_millis(300));
        assert!(s.sink_is_empty());
    });
}

/// Mail submitted on the submission port leaves signed; a stranger is turned away there
/// by Postfix before batv is asked.
#[test]
fn the_submission_port_signs() {
    bounded(LIMIT, || {
        let Some(s) = site("") else { return };
        let r = s.transaction_on(s.submission, INSIDE, "bob@example.org", &["<dave@remote.test>"], "sub1");
        assert_eq!(codes(&r), [250, 250, 354, 250], "{r:?}");
        let m = s.one("sub1");
        assert!(m.from.starts_with("prvs="), "signed: {m:#?}");
        assert_eq!(s.store.verify(NOW, &[&m.from]).unwrap(), ["bob@example.org"]);
        let r = s.transaction_on(s.submission, OUTSIDE, "bob@example.org", &["<dave@remote.test>"], "sub2");
        assert!(r.iter().any(|x| code(x) / 100 == 5), "{r:?}");
    });
}
