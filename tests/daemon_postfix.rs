//! `batv daemon` behind a whole Postfix: the submission port's own cleanup signs envelope
//! senders through the socketmap `sign` map, every cleanup strips valid tags from envelope
//! recipients through the `strip` map (which also makes smtpd accept the tagged address),
//! and the MX port refuses unsigned bounces with the policy service. One daemon, two
//! listeners: Postfix's socketmaps use the unix socket, its policy client the TCP one.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon_proc::{Daemon, NOW};
use common::peers::{code, Client};
use common::postfix::{can_run_postfix, free_port, Postfix};
use common::proxy::{postfix_root, SmtpSink};

/// Recipients the MX accepts for example.org (relay_recipient_maps).
const USERS: [&str; 2] = ["alice@example.org", "bob@example.org"];

/// `batv verify`: the original address if the tag is valid.
fn verify(d: &Daemon, addr: &str) -> Option<String> {
    d.store.verify(NOW, &[addr]).ok().and_then(|v| v.into_iter().next())
}

/// The tag with the first character of its hash changed (still well-formed).
fn forge(tagged: &str) -> String {
    // prvs= K DDD hash =local@domain
    let mut b = tagged.as_bytes().to_vec();
    b[9] = if b[9].eq_ignore_ascii_case(&b'a') { b'b' } else { b'a' };
    String::from_utf8(b).unwrap()
}

/// Everything under test, stopped when dropped.
struct Site {
    root: PathBuf,
    // Fields drop in declaration order: Postfix first, then the daemon and the sink.
    pf: Postfix,
    daemon: Daemon,
    sink: SmtpSink,
    mx: u16,
    submission: u16,
}

/// Postfix with an MX port (shared cleanup, policy check) and a submission port whose own
/// cleanup signs the envelope sender; all mail leaves to smtp-sink. None (skip) when Postfix
/// cannot run here.
fn site() -> Option<Site> {
    let root = postfix_root()?;
    if !can_run_postfix() {
        return None;
    }
    let daemon = Daemon::start("");
    // Postfix's smtpd and cleanup run as the postfix user: they must reach the socket.
    std::fs::set_permissions(daemon.store.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let sink = SmtpSink::start(&root, &[]);
    let (mx, submission) = (free_port(), free_port());
    let sock = daemon.sock.display().to_string();
    let users: Vec<String> = USERS.iter().map(|u| format!("{u}=ok")).collect();
    let main = format!(
        "mynetworks = 127.0.0.0/8
relay_domains = example.org
relay_recipient_maps = inline:{{ {users} }}
relayhost = [127.0.0.1]:{sink}
relay_transport = relay:[127.0.0.1]:{sink}
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
recipient_canonical_maps = socketmap:unix:{sock}:strip
recipient_canonical_classes = envelope_recipient
smtpd_relay_restrictions = reject_unauth_destination
smtpd_recipient_restrictions = reject_unauth_destination, check_policy_service inet:127.0.0.1:{policy}
",
        users = users.join(", "),
        sink = sink.port,
        policy = daemon.tcp.port(),
    );
    let services = [
        format!("127.0.0.1:{mx} inet n - n - - smtpd"),
        format!(
            "127.0.0.1:{submission} inet n - n - - smtpd
  -o cleanup_service_name=signcleanup
  -o smtpd_relay_restrictions=permit_mynetworks,reject
  -o smtpd_recipient_restrictions=permit_mynetworks,reject"
        ),
        format!(
            "signcleanup unix n - n - 0 cleanup
  -o sender_canonical_maps=socketmap:unix:{sock}:sign
  -o sender_canonical_classes=envelope_sender"
        ),
    ];
    let pf = Postfix::start(&root, &main, &services, &[mx, submission]);
    Some(Site {
        root,
        pf,
        daemon,
        sink,
        mx,
        submission,
    })
}

/// One SMTP transaction: the replies to the greeting, EHLO, MAIL, each RCPT and (when a
/// recipient was accepted) DATA and the end of the message.
fn transaction(port: u16, from: &str, rcpts: &[&str]) -> Vec<String> {
    let mut c = Client::connect(&format!("127.0.0.1:{port}"));
    let mut replies = vec![c.reply(), c.cmd("EHLO client.test"), c.cmd(&format!("MAIL FROM:<{from}>"))];
    let mut accepted = false;
    for r in rcpts {
        let reply = c.cmd(&format!("RCPT TO:<{r}>"));
        accepted |= code(&reply) == 250;
        replies.push(reply);
    }
    if accepted {
        replies.push(c.cmd("DATA"));
        replies.push(c.cmd(&format!("Subject: from <{from}>\r\n\r\nHello.\r\n.")));
    }
    c.cmd("QUIT");
    replies
}

/// A transaction that must be queued: every reply 2xx/3xx.
fn queued(port: u16, from: &str, rcpts: &[&str]) {
    let replies = transaction(port, from, rcpts);
    assert!(
        replies.iter().all(|r| (200..400).contains(&code(r))) && replies.last().unwrap().contains("queued"),
        "{from} -> {rcpts:?}: {replies:#?}"
    );
}

/// What smtp-sink received: (MAIL FROM address, [(RCPT TO address, ORCPT)]) per message.
type Envelope = (String, Vec<(String, String)>);

fn angle(s: &str) -> String {
    s.split_once('<')
        .and_then(|(_, r)| r.split_once('>'))
        .map(|(a, _)| a.to_string())
        .unwrap_or_default()
}

fn envelopes(sink: &SmtpSink) -> Vec<Envelope> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(sink.dump.path()).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap_or_default();
        let mut from = None;
        let mut rcpts = Vec::new();
        for l in text.lines() {
            if let Some(a) = l.strip_prefix("X-Mail-Args: ") {
                from = Some(angle(a));
            } else if let Some(a) = l.strip_prefix("X-Rcpt-Args: ") {
                let orcpt = a
                    .split_once("ORCPT=rfc822;")
                    .map(|x| x.1.split_whitespace().next().unwrap_or(""))
                    .unwrap_or("");
                rcpts.push((angle(a), orcpt.to_string()));
            }
        }
        // Only whole messages of this test (smtp-sink writes the dump as the data arrives).
        if let (Some(f), true) = (from, text.contains("Hello.")) {
            v.push((f, rcpts));
        }
    }
    v
}

/// Wait (at most 30 s) until smtp-sink has received `n` messages.
fn delivered(site: &Site, n: usize) -> Vec<Envelope> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let e = envelopes(&site.sink);
        if e.len() >= n {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "smtp-sink got {} of {n} messages: {e:?}\n--- maillog ---\n{}",
            e.len(),
            site.pf.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The message delivered to `rcpt` (exactly one).
fn to<'a>(got: &'a [Envelope], rcpt: &str) -> &'a Envelope {
    let m: Vec<&Envelope> = got.iter().filter(|(_, r)| r.iter().any(|(a, _)| a == rcpt)).collect();
    assert_eq!(m.len(), 1, "one message to {rcpt}: {got:?}");
    m[0]
}

#[test]
fn submission_signs_envelope_senders_and_the_mx_does_not() {
    let Some(site) = site() else { return };
    let d = &site.daemon;
    let tagged = d.sign("alice@example.org");

    queued(site.submission, "alice@example.org", &["out1@remote.test"]);
    queued(site.submission, "joe@other.test", &["out2@remote.test"]);
    // Already tagged (e.g. by `batv sendmail`): left as it is, not tagged twice.
    queued(site.submission, &tagged, &["out3@remote.test"]);
    // A forged sender from outside: the MX's cleanup has no sign map.
    queued(site.mx, "alice@example.org", &["bob@example.org"]);

    let got = delivered(&site, 4);
    assert_eq!(got.len(), 4, "{got:?}");
    let (from, _) = to(&got, "out1@remote.test");
    assert!(from.starts_with("prvs="), "alice's mail leaves signed: {got:?}");
    assert_eq!(
        verify(d, from).as_deref(),
        Some("alice@example.org"),
        "{from} is a valid tag for alice"
    );
    assert_eq!(to(&got, "out2@remote.test").0, "joe@other.test", "foreign senders are not signed");
    assert_eq!(to(&got, "out3@remote.test").0, tagged, "a tagged sender is not signed again");
    assert_eq!(
        to(&got, "bob@example.org").0,
        "alice@example.org",
        "mail from the MX port is not signed"
    );
}

#[test]
fn bounces_need_a_valid_tag_which_is_stripped_on_delivery() {
    let Some(site) = site() else { return };
    let d = &site.daemon;
    let bob = d.sign("bob@example.org");
    let forged = forge(&bob);
    let expired = d.store.sign("2026-09-01", "bob@example.org");
    let unknown = forge(&d.sign("nosuch@example.org"));
    let alice = d.sign("alice@example.org");
    assert_eq!(verify(d, &forged), None, "{forged} is forged");

    let r = transaction(site.mx, "", &["bob@example.org", &forged, &expired, &unknown, &bob]);
    let rcpt = |i: usize| &r[3 + i];
    for (i, what) in [(0, "untagged"), (1, "forged tag"), (2, "expired tag")] {
        assert!(
            rcpt(i).starts_with("550 5.7.1") && rcpt(i).contains("Recipient address rejected"),
            "a bounce to bob with an {what} is refused by the policy: {r:#?}"
        );
    }
    assert!(rcpt(3).starts_with("550"), "a bounce to an unknown user with a forged tag: {r:#?}");
    assert!(rcpt(4).starts_with("250"), "a bounce to bob's valid tag is accepted: {r:#?}");
    assert!(r[8].starts_with("354") && r[9].contains("queued"), "{r:#?}");

    // Tags are case-insensitive: a bounce to the upper-cased tag gets through as well.
    let upper = alice.to_ascii_uppercase();
    queued(site.mx, "", &[&upper]);
    // Ordinary mail to a tagged address (a reply to a signed message) is accepted too.
    queued(site.mx, "someone@remote.test", &[&alice]);
    // Untagged ordinary mail is not the policy's business.
    queued(site.mx, "someone@remote.test", &["bob@example.org"]);

    // (MAIL FROM, RCPT TO, ORCPT) as smtp-sink got them: tags stripped, ORCPT as sent.
    let got = delivered(&site, 4);
    let mut seen: Vec<(String, String, String)> = got
        .iter()
        .flat_map(|(f, r)| r.iter().map(|(a, o)| (f.clone(), a.to_ascii_lowercase(), o.clone())))
        .collect();
    seen.sort();
    let xtext = |a: &str| a.replace('=', "+3D");
    let mut want = vec![
        (String::new(), "bob@example.org".to_string(), xtext(&bob)),
        (String::new(), "alice@example.org".to_string(), xtext(&upper)),
        ("someone@remote.test".to_string(), "alice@example.org".to_string(), xtext(&alice)),
        (
            "someone@remote.test".to_string(),
            "bob@example.org".to_string(),
            "bob@example.org".to_string(),
        ),
    ];
    want.sort();
    assert_eq!(seen, want, "{got:?}\n--- maillog ---\n{}", site.pf.log());
}

#[test]
fn postmap_queries_the_socketmaps_on_both_listeners() {
    let Some(mut site) = site() else { return };
    let etc = site.pf.dir.path().join("etc");
    let unix = format!("socketmap:unix:{}", site.daemon.sock.display());
    let inet = format!("socketmap:inet:127.0.0.1:{}", site.daemon.tcp.port());
    let postmap = |key: &str, map: &str| -> (i32, String, String) {
        let o = Command::new(site.root.join("usr/sbin/postmap"))
            .env("LD_LIBRARY_PATH", site.root.join("usr/lib/postfix"))
            .arg("-c")
            .arg(&etc)
            .arg("-q")
            .arg(key)
            .arg(map)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let out = String::from_utf8(o.stdout).unwrap().trim().to_string();
        (o.status.code().unwrap_or(-1), out, String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let d = &site.daemon;
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&d.sock).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o666, "socket_mode defaults to 0666");

    for map in [&unix, &inet] {
        let (rc, tagged, err) = postmap("alice@example.org", &format!("{map}:sign"));
        assert_eq!(rc, 0, "{map}:sign alice@example.org: {err}");
        assert!(tagged.starts_with("prvs="), "{tagged}");
        assert_eq!(verify(d, &tagged).as_deref(), Some("alice@example.org"), "{map}: {tagged}");
        // Not found: no domain, a bare domain, a foreign domain, an already tagged address.
        for key in ["alice", "@example.org", "joe@other.test", &tagged] {
            let (rc, out, err) = postmap(key, &format!("{map}:sign"));
            assert_eq!((rc, out.as_str()), (1, ""), "{map}:sign {key}: {err}");
            assert!(!err.contains("warning") && !err.contains("fatal"), "{map}:sign {key}: {err}");
        }

        let bob = d.sign("bob@example.org");
        let (rc, out, err) = postmap(&bob, &format!("{map}:strip"));
        assert_eq!((rc, out.as_str()), (0, "bob@example.org"), "{map}:strip {bob}: {err}");
        // Expired but authentic: still stripped (a late bounce reaches its user's mailbox
        // only through the policy, which refuses it).
        let old = d.store.sign("2026-09-01", "bob@example.org");
        let (rc, out, err) = postmap(&old, &format!("{map}:strip"));
        assert_eq!((rc, out.as_str()), (0, "bob@example.org"), "{map}:strip {old}: {err}");
        for key in [forge(&bob).as_str(), "bob@example.org", "bob"] {
            let (rc, out, err) = postmap(key, &format!("{map}:strip"));
            assert_eq!((rc, out.as_str()), (1, ""), "{map}:strip {key}: {err}");
        }
    }

    // SIGTERM stops it promptly (within 10 s).
    let status = site.daemon.stop();
    assert!(status.success(), "{status}: {}", site.daemon.log());
    assert!(site.daemon.log().contains("batv-daemon:"), "{}", site.daemon.log());
}
