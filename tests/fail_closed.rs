//! Issue 13, "fail closed", against a whole Postfix behind batv in front mode: what an
//! attacker sends to get a bounce delivered is first sent straight to the same Postfix (to
//! show it accepts and delivers it: the attack is real), then through batv, which must
//! refuse it. Postfix relays example.com to a capture sink, so what it delivered, and to
//! which address, is visible.

mod common;

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use common::peers::{code, log, wait_log, Client};
use common::postfix::{can_run_postfix, free_port, Postfix};
use common::proxy::*;
use common::Sink;

/// A client outside Postfix's mynetworks (127.0.0.1/32).
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// A whole Postfix forks an smtpd per connection: slow on a busy machine.
const SLOW: &str = "command_timeout_ms = 20000\ndata_timeout_ms = 20000\n";

const BODY: &str = "Subject: Undelivered Mail Returned to Sender\r\n\r\nYour message could not be delivered.\r\n.\r\n";

/// Postfix relaying example.com to the sink, with an address extension delimiter.
fn postfix(root: &Path, sink: u16, port: u16) -> Postfix {
    let main = format!(
        "mynetworks = 127.0.0.1/32
smtpd_authorized_xclient_hosts = 127.0.0.1
relay_domains = example.com
relayhost = [127.0.0.1]:{sink}
recipient_delimiter = +
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
"
    );
    Postfix::start(root, &main, &[format!("127.0.0.1:{port} inet n - n - - smtpd")], &[port])
}

/// The sink and a Postfix relaying to it; None when the peers are missing.
fn peers() -> Option<(tempfile::TempDir, Sink, Postfix, String)> {
    let root = postfix_root()?;
    if !can_run_postfix() || !common::require("python3-aiosmtpd", common::python_with_aiosmtpd()) {
        return None;
    }
    let t = tempfile::tempdir().unwrap();
    let sink = Sink::start(t.path());
    let port = free_port();
    let pf = postfix(&root, sink.port, port);
    Some((t, sink, pf, format!("127.0.0.1:{port}")))
}

/// One transaction in lock step from OUTSIDE: the replies to EHLO, MAIL, each RCPT and
/// (if any RCPT was accepted) DATA and the message; the connection ends with QUIT.
fn transaction(addr: &str, mail: &str, rcpts: &[&str], body: &str) -> Vec<String> {
    let mut c = Client::connect_from(addr, OUTSIDE);
    let mut out = vec![c.reply()];
    out.push(c.cmd("EHLO mx.remote.example"));
    out.push(c.cmd(&format!("MAIL FROM:{mail}")));
    let mut accepted = false;
    for r in rcpts {
        let reply = c.cmd(&format!("RCPT TO:{r}"));
        accepted |= code(&reply) == 250;
        out.push(reply);
        if code(out.last().unwrap()) == 421 {
            return out;
        }
    }
    if accepted && code(&out[2]) == 250 {
        let reply = c.cmd("DATA");
        let go = code(&reply) == 354;
        out.push(reply);
        if go {
            c.send(body.as_bytes());
            out.push(c.reply());
        }
    }
    out.push(c.cmd("QUIT"));
    out
}

fn codes_of(replies: &[String]) -> Vec<u16> {
    replies.iter().map(|r| code(r)).collect()
}

/// Wait until the sink has `n` messages, then a moment more for any that should not come.
fn delivered(sink: &Sink, n: usize) -> Vec<serde_json::Value> {
    let got = sink.messages(n);
    assert!(got.len() >= n, "expected {n} messages, got {got:?}");
    std::thread::sleep(Duration::from_millis(500));
    sink.messages(n)
}

fn rcpts(m: &serde_json::Value) -> Vec<String> {
    m["rcpt_tos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// Item 2, "parsing fails open", and the null-sender spellings: each spelling Postfix
/// accepts and delivers to bob, batv refuses; a valid tag still goes through.
#[test]
fn what_postfix_would_deliver_to_an_untagged_mailbox_is_refused() {
    let Some((_t, sink, pf, direct)) = peers() else { return };
    let p = Proxy::start(&direct, &format!("mode = \"front\"\nreject_at = \"rcpt\"\n{SLOW}"));
    let long = format!("<bob+{}@example.com>", "x".repeat(50));
    let recipients = [
        "<bob@example.com.>",
        "<bob @example.com>",
        "< bob@example.com>",
        "<bob@example.com (Bob)>",
        "<(x)bob@example.com>",
        long.as_str(),
    ];
    // Straight to Postfix: every spelling is accepted and relayed.
    for r in recipients {
        let out = transaction(&direct, "<>", &[r], BODY);
        assert_eq!(codes_of(&out), [220, 250, 250, 250, 354, 250, 221], "direct {r}: {out:?}");
    }
    let got = delivered(&sink, recipients.len());
    assert_eq!(got.len(), recipients.len(), "{got:?}");
    for m in &got {
        let to = rcpts(m);
        assert!(to.len() == 1 && to[0].starts_with("bob"), "{m}");
        assert_eq!(m["mail_from"], "<>", "{m}");
    }
    eprintln!("Postfix delivered: {:?}", got.iter().map(rcpts).collect::<Vec<_>>());

    // Through batv: refused (550 5.7.1 as bob's untagged mail, or 501 5.1.3 unreadable).
    for r in recipients {
        let out = transaction(&p.addr, "<>", &[r], BODY);
        let c = codes_of(&out);
        assert!(
            c == [220, 250, 250, 550, 221] || c == [220, 250, 250, 501, 221],
            "batv {r}: {out:?}"
        );
    }
    // Spellings Postfix would read its own way are refused as unreadable, never relayed.
    for r in [
        "<bob@example.com,>",
        "<\"bob@example.com\">",
        "<bob>",
        "<bob smith@example.com>",
        "<bob@example.com(>",
    ] {
        let out = transaction(&p.addr, "<>", &[r], BODY);
        assert_eq!(codes_of(&out), [220, 250, 250, 501, 221], "batv {r}: {out:?}");
        assert!(out[3].starts_with("501 5.1.3"), "{r}: {out:?}");
    }
    // An address literal names the host, which Postfix delivers locally when it is its own.
    let out = transaction(&p.addr, "<>", &["<bob@[127.0.0.1]>"], BODY);
    assert_eq!(codes_of(&out)[3], 550, "{out:?}");

    // The null sender in spellings Postfix takes as null: bounces, refused at DATA.
    let q = Proxy::start(&direct, &format!("mode = \"front\"\n{SLOW}"));
    for mail in ["< >", "<()>", "<\"\">"] {
        let out = transaction(&direct, mail, &["<carol@example.com>"], BODY);
        assert_eq!(codes_of(&out), [220, 250, 250, 250, 354, 250, 221], "direct {mail}: {out:?}");
        let out = transaction(&q.addr, mail, &["<carol@example.com>"], BODY);
        assert_eq!(codes_of(&out), [220, 250, 250, 250, 550, 221], "batv {mail}: {out:?}");
        assert!(out[4].starts_with("550 5.7.1"), "{out:?}");
    }
    let got = delivered(&sink, recipients.len() + 3);
    let nulls: Vec<&serde_json::Value> = got.iter().filter(|m| rcpts(m) == ["carol@example.com"]).collect();
    assert_eq!(nulls.len(), 3, "{got:?}");
    assert!(
        nulls.iter().all(|m| m["mail_from"] == "<>"),
        "Postfix takes each as the null sender: {nulls:?}"
    );
    // A sender batv cannot read might be null to the MTA: refused.
    let out = transaction(&q.addr, "<(unterminated>", &["<carol@example.com>"], BODY);
    assert!(out[2].starts_with("501 5.1.7"), "{out:?}");

    // A valid tag, with a trailing dot even: delivered to bob, and nothing else arrived.
    let tagged = p.sign(TODAY, "bob@example.com");
    let out = transaction(&p.addr, "<>", &[&format!("<{tagged}.>")], BODY);
    assert_eq!(codes_of(&out), [220, 250, 250, 250, 354, 250, 221], "{out:?}");
    let got = delivered(&sink, recipients.len() + 4);
    assert_eq!(got.len(), recipients.len() + 4, "only the valid tag got through batv: {got:?}");
    assert!(
        got.iter().any(|m| rcpts(m) == ["bob@example.com"] && m["mail_from"] == "<>"),
        "{got:?}"
    );
    assert!(pf.wait_log("[127.0.0.2]"));
}

/// Item 3, "tag guessing": failed tags count in every transaction (a non-bounce too, and
/// after an exempt recipient), per client; once used up, no tagged recipient from that
/// client is checked at all.
#[test]
fn tag_guessing_is_bounded_per_client() {
    let Some((_t, sink, _pf, direct)) = peers() else { return };
    let p = Proxy::start(&direct, &format!("mode = \"front\"\nmax_failed_tags = 3\n{SLOW}"));
    let guess = |user: &str| {
        let t = p.sign(TODAY, &format!("{user}@example.com"));
        let c = if &t[10..11] == "a" { "b" } else { "a" };
        format!("<{}{c}{}>", &t[..10], &t[11..])
    };
    // Two guesses in mail from a non-null sender (Postfix relays the wrong tags as they
    // are, and a right one would come back stripped: an oracle).
    let out = transaction(&p.addr, "<spam@remote.example>", &[&guess("bob"), &guess("carol")], BODY);
    assert_eq!(codes_of(&out), [220, 250, 250, 250, 250, 354, 250, 221], "{out:?}");
    // A bounce to postmaster first (exempt: the rest get 452), then guesses: the third
    // one uses up the limit, the fourth closes the session unchecked.
    let out = transaction(&p.addr, "<>", &["<postmaster@example.com>", &guess("dave"), &guess("erin")], BODY);
    assert_eq!(codes_of(&out), [220, 250, 250, 250, 452, 421], "{out:?}");
    assert!(out[5].starts_with("421 4.7.0"), "{out:?}");
    // A new connection: its first tagged recipient, even a valid one, gets 421 unchecked.
    let valid = format!("<{}>", p.sign(TODAY, "bob@example.com"));
    let out = transaction(&p.addr, "<>", &[&valid], BODY);
    assert_eq!(codes_of(&out), [220, 250, 250, 421], "{out:?}");
    // An untagged bounce from the same client is judged as ever (and refused).
    let out = transaction(&p.addr, "<>", &["<bob@example.com>"], BODY);
    assert_eq!(codes_of(&out), [220, 250, 250, 250, 550, 221], "{out:?}");
    // Another client is not affected: the count is per client.
    let mut c = Client::connect(&p.addr);
    c.reply();
    c.cmd("EHLO other.example");
    assert_eq!(code(&c.cmd("MAIL FROM:<>")), 250);
    assert_eq!(code(&c.cmd(&format!("RCPT TO:{valid}"))), 250);
    c.cmd("QUIT");
    wait_log(&p, "action=closed-too-many-invalid-tags", 2);
    // One log line per closed session, not one per guess past the limit.
    assert_eq!(log(&p).matches("closed-too-many-invalid-tags").count(), 2, "{}", log(&p));
    let got = delivered(&sink, 1);
    assert_eq!(got.len(), 1, "only the non-bounce with two wrong tags: {got:?}");
}

/// Item 3, the other half: a prvs tag (24 bits, found by brute force in minutes) does not
/// verify at a native-only site; it does where `verify_schemes` lists prvs.
#[test]
fn prvs_tags_verify_only_where_listed() {
    let Some((_t, sink, _pf, direct)) = peers() else { return };
    let q = Proxy::start(&direct, &format!("mode = \"front\"\nreject_at = \"rcpt\"\n{SLOW}"));
    let prvs = String::from_utf8(
        std::process::Command::new(BIN)
            .arg("--keys")
            .arg(&q.keys)
            .args(["--now", TODAY, "sign", "--scheme", "prvs", "bob@example.com"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let prvs = format!("<{}>", prvs.trim());
    let mut c = Client::connect(&q.addr);
    c.reply();
    c.cmd("EHLO mx.remote.example");
    c.cmd("MAIL FROM:<>");
    assert!(c.cmd(&format!("RCPT TO:{prvs}")).starts_with("550 5.7.1"));
    c.cmd("QUIT");
    wait_log(&q, "reason=malformed action=refused", 1);
    std::fs::write(
        &q.config,
        std::fs::read_to_string(&q.config)
            .unwrap()
            .replace("[proxy]", "verify_schemes = [\"native\", \"prvs\"]\n[proxy]"),
    )
    .unwrap();
    assert_eq!(unsafe { libc::kill(q.child.id() as i32, libc::SIGHUP) }, 0);
    wait_log(&q, "reloaded (configuration", 1);
    let out = transaction(&q.addr, "<>", &[&prvs], BODY);
    assert_eq!(codes_of(&out), [220, 250, 250, 250, 354, 250, 221], "{out:?}");
    let got = delivered(&sink, 1);
    assert_eq!(got.len(), 1, "the listed prvs tag: {got:?}");
    assert_eq!(rcpts(&got[0]), ["bob@example.com"], "{got:?}");
}

/// Item 4, "any tag vouches", in the DATA check: a tag vouches only for its own address.
#[test]
fn a_tag_in_the_message_vouches_only_for_its_own_address() {
    let Some((_t, sink, _pf, direct)) = peers() else { return };

    // The DATA check with refusal on: a DSN to alice returning a message whose tagged
    // sender is bob's (anyone who ever had mail from bob has such a Return-Path) is
    // backscatter; the same DSN returning alice's own tagged message is genuine.
    let p = Proxy::start(
        &direct,
        &format!("mode = \"front\"\ndata_check = true\ndata_check_refuse = true\n{SLOW}"),
    );
    let dsn = |returned: &str| {
        format!(
            "From: MAILER-DAEMON@remote.example\r\nTo: alice@example.com\r\nSubject: Undelivered Mail Returned to Sender\r\n\
             MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n\
             --b\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n\
             --b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; remote.example\r\n\r\n\
             Final-Recipient: rfc822; nobody@remote.example\r\nAction: failed\r\nStatus: 5.1.1\r\n\
             --b\r\nContent-Type: message/rfc822\r\n\r\nReturn-Path: <{returned}>\r\nFrom: someone@example.com\r\n\
             To: nobody@remote.example\r\nSubject: hi\r\n\r\nhello\r\n--b--\r\n.\r\n"
        )
    };
    let bobs = p.sign(TODAY, "bob@example.com");
    let alices = p.sign(TODAY, "alice@example.com");
    let out = transaction(&p.addr, "<mailer@remote.example>", &["<alice@example.com>"], &dsn(&bobs));
    assert_eq!(codes_of(&out), [220, 250, 250, 250, 354, 550, 221], "{out:?}");
    wait_log(&p, "reason=tag-of-another-address", 1);
    let out = transaction(&p.addr, "<mailer@remote.example>", &["<alice@example.com>"], &dsn(&alices));
    assert_eq!(codes_of(&out), [220, 250, 250, 250, 354, 250, 221], "{out:?}");
    let got = delivered(&sink, 1);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0]["data"]
            .as_str()
            .unwrap()
            .contains("\r\nX-BATV: bounce-with-valid-tag; reason=valid;"),
        "{got:?}"
    );
    // Alice's tag says nothing about bob, a second recipient of the same message.
    let out = transaction(
        &p.addr,
        "<mailer@remote.example>",
        &["<alice@example.com>", "<bob@example.com>"],
        &dsn(&alices),
    );
    assert_eq!(codes_of(&out), [220, 250, 250, 250, 250, 354, 550, 221], "{out:?}");

    // The returned sender's tag is checked here too: guesses at it count, and once the
    // client has used them up it gets no answer (451), even for a right one.
    let g = Proxy::start(
        &direct,
        &format!("mode = \"front\"\ndata_check = true\ndata_check_refuse = true\nmax_failed_tags = 2\n{SLOW}"),
    );
    let alices = g.sign(TODAY, "alice@example.com");
    let wrong = |i: usize| {
        let c = ["a", "b", "c"].into_iter().filter(|c| **c != alices[10..11]).nth(i % 2).unwrap();
        format!("{}{c}{}", &alices[..10], &alices[11..])
    };
    for (returned, last) in [(wrong(0), 550), (wrong(1), 550), (wrong(0), 451), (alices.clone(), 451)] {
        let out = transaction(&g.addr, "<mailer@remote.example>", &["<alice@example.com>"], &dsn(&returned));
        assert_eq!(codes_of(&out), [220, 250, 250, 250, 354, last, 221], "{returned}: {out:?}");
    }
    wait_log(&g, "action=deferred-too-many-invalid-tags", 2);
    assert_eq!(delivered(&sink, 1).len(), 1, "nothing more was delivered");
}

/// Item 5, "log injection": a quoted local part that reads like more fields is one quoted
/// value in the log line.
#[test]
fn log_values_cannot_add_fields() {
    let Some((_t, _sink, _pf, direct)) = peers() else { return };
    let p = Proxy::start(&direct, &format!("mode = \"front\"\n{SLOW}"));

    let out = transaction(&p.addr, "<>", &["<\"x verdict=bounce-ok reason=valid\"@example.com>"], BODY);
    assert_eq!(codes_of(&out)[3], 250, "{out:?}");
    wait_log(&p, "x verdict=bounce-ok", 1);
    let line = log(&p).lines().find(|l| l.contains("x verdict=bounce-ok")).unwrap().to_string();
    let fields = logfmt(&line);
    let verdicts: Vec<&str> = fields.iter().filter(|(k, _)| k == "verdict").map(|(_, v)| v.as_str()).collect();
    assert_eq!(verdicts, ["backscatter"], "{line}");
    assert_eq!(
        fields.iter().find(|(k, _)| k == "rcpt").map(|(_, v)| v.as_str()),
        Some("<\"x verdict=bounce-ok reason=valid\"@example.com>"),
        "{line}"
    );
}

/// Item 8, "monitor mode is not silent": with one verdict per transaction, a valid tag and
/// an untagged recipient both get 250 (no 452 4.5.3), and the message says what each was.
#[test]
fn monitor_mode_leaves_the_dialogue_alone() {
    let Some((_t, sink, _pf, direct)) = peers() else { return };
    let m = Proxy::start(&direct, &format!("mode = \"front\"\nenforce = false\n{SLOW}"));
    let valid = format!("<{}>", m.sign(TODAY, "bob@example.com"));
    let out = transaction(&m.addr, "<>", &[&valid, "<carol@example.com>"], BODY);
    assert_eq!(codes_of(&out), [220, 250, 250, 250, 250, 354, 250, 221], "{out:?}");
    let got = delivered(&sink, 1);
    let msg = got.iter().find(|x| rcpts(x).len() == 2).expect("the monitored bounce");
    assert_eq!(rcpts(msg), ["bob@example.com", "carol@example.com"], "{msg}");
    let data = msg["data"].as_str().unwrap();
    assert_eq!(data.matches("X-BATV:").count(), 1, "{data}");
    assert!(
        data.contains("X-BATV: backscatter; reason=untagged; mode=monitor; recipients=bounce-ok:1,backscatter:1\r\n"),
        "{data}"
    );
}

/// Split a log line logfmt-style: `key=value` words, double-quoted values whole.
fn logfmt(line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ' ')).collect();
        if key.is_empty() && chars.peek().is_none() {
            return out;
        }
        let mut value = String::new();
        if chars.next_if_eq(&'=').is_some() {
            if chars.next_if_eq(&'"').is_some() {
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => value.extend(chars.next()),
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                value = std::iter::from_fn(|| chars.next_if(|c| *c != ' ')).collect();
            }
        }
        out.push((key, value));
    }
}
