//! `batv proxy` on loopback between raw SMTP clients and a real server (aiosmtpd sink):
//! verdicts, stripping, monitor mode, and faults. Every session is bounded in time.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::proxy::*;
use std::path::Path;

#[test]
fn valid_tags_pass_stripped_and_backscatter_is_refused_at_data() {
    let Some((sink, _t)) = setup() else { return };
    let p = Proxy::start(&format!("127.0.0.1:{}", sink.port), "");
    let tagged = p.sign(TODAY, "bob@example.com");
    let out = p.session(&bounce(&[&tagged]));
    assert_eq!(codes(&out), [220, 250, 250, 250, 354, 250, 221], "{out}");
    let m = sink.messages(1);
    assert_eq!(m[0]["mail_from"], "<>");
    assert_eq!(m[0]["rcpt_tos"], serde_json::json!(["bob@example.com"]), "the tag is stripped");

    let expired = p.sign("2026-10-01", "bob@example.com");
    let forged = format!("{}{}", &tagged[..10], if &tagged[10..11] == "a" { "b" } else { "a" }) + &tagged[11..];
    let unknown = format!("prvs=7{}", &tagged[6..]);
    for rcpt in [
        "bob@example.com",
        forged.as_str(),
        expired.as_str(),
        unknown.as_str(),
        "prvs=junk@example.com",
    ] {
        let out = p.session(&bounce(&[rcpt]));
        // RCPT is relayed (callouts learn the truth), the transaction refused at DATA.
        assert_eq!(codes(&out), [220, 250, 250, 250, 550, 221], "{rcpt}: {out}");
        assert!(out.contains("550 5.7.1"), "{out}");
    }
    assert_eq!(sink.messages(1).len(), 1, "nothing refused reached the sink");
    let log = p.log.lock().unwrap().clone();
    for reason in [
        "reason=untagged",
        "reason=bad-signature",
        "reason=expired",
        "reason=unknown-key",
        "reason=malformed",
        "reason=valid",
    ] {
        assert!(log.contains(reason), "{reason} not logged: {log}");
    }
    assert!(log.contains("action=refused-at-data"), "{log}");
}

#[test]
fn exemptions_and_normal_mail() {
    let Some((sink, _t)) = setup() else { return };
    let p = Proxy::start(&format!("127.0.0.1:{}", sink.port), "");
    let long = format!("{}@example.com", "l".repeat(47));
    let mut n = 0;
    for rcpt in [
        "postmaster@example.com",
        "Postmaster",
        "abuse@example.com",
        "SRS0=abc=de=other.example=u@example.com",
        long.as_str(),
        "someone@not-ours.example",
    ] {
        let out = p.session(&bounce(&[rcpt]));
        assert_eq!(codes(&out), [220, 250, 250, 250, 354, 250, 221], "{rcpt}: {out}");
        n += 1;
    }
    // Ordinary mail is never judged; an authentic tag is stripped all the same.
    let tagged = p.sign(TODAY, "carol@example.com");
    let script = format!("EHLO x\r\nMAIL FROM:<friend@remote.example> BODY=8BITMIME\r\nRCPT TO:<{tagged}>\r\nRCPT TO:<dave@example.com>\r\nDATA\r\nSubject: caf\u{e9}\r\n\r\n\u{fc}ber 8-bit\r\n..leading dot\r\n.\r\nQUIT\r\n");
    let out = p.session(script.as_bytes());
    assert_eq!(codes(&out), [220, 250, 250, 250, 250, 354, 250, 221], "{out}");
    n += 1;
    let m = sink.messages(n);
    assert_eq!(m.len(), n);
    let last = &m[n - 1];
    assert_eq!(last["rcpt_tos"], serde_json::json!(["carol@example.com", "dave@example.com"]));
    assert_eq!(last["mail_options"], serde_json::json!(["BODY=8BITMIME"]));
    // Body relayed byte for byte (aiosmtpd's copy is dot-unstuffed, latin-1 decoded).
    let data = last["data"].as_str().unwrap().chars().map(|c| c as u8).collect::<Vec<u8>>();
    assert_eq!(data, "Subject: caf\u{e9}\r\n\r\n\u{fc}ber 8-bit\r\n.leading dot\r\n".as_bytes());
}

#[test]
fn one_verdict_per_transaction() {
    let Some((sink, _t)) = setup() else { return };
    let p = Proxy::start(&format!("127.0.0.1:{}", sink.port), "");
    let good = p.sign(TODAY, "bob@example.com");
    // First recipient valid: the untagged one gets 452 and the bounce is delivered.
    let out = p.session(&bounce(&[&good, "carol@example.com"]));
    assert_eq!(codes(&out), [220, 250, 250, 250, 452, 354, 250, 221], "{out}");
    assert!(out.contains("452 4.5.3"));
    // First recipient backscatter: the valid one gets 452, DATA is refused.
    let out = p.session(&bounce(&["carol@example.com", &good]));
    assert_eq!(codes(&out), [220, 250, 250, 250, 452, 550, 221], "{out}");
    let m = sink.messages(1);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0]["rcpt_tos"], serde_json::json!(["bob@example.com"]));
}

#[test]
fn reject_at_rcpt_and_monitor_mode() {
    let Some((sink, _t)) = setup() else { return };
    let p = Proxy::start(&format!("127.0.0.1:{}", sink.port), "reject_at = \"rcpt\"\n");
    let good = p.sign(TODAY, "bob@example.com");
    let out = p.session(&bounce(&["carol@example.com", &good]));
    assert_eq!(codes(&out), [220, 250, 250, 550, 250, 354, 250, 221], "{out}");
    assert_eq!(sink.messages(1)[0]["rcpt_tos"], serde_json::json!(["bob@example.com"]));
    drop(p);
    // Monitor: everything is delivered, and the verdict logged.
    let p = Proxy::start(&format!("127.0.0.1:{}", sink.port), "enforce = false\n");
    let out = p.session(&bounce(&["carol@example.com"]));
    assert_eq!(codes(&out), [220, 250, 250, 250, 354, 250, 221], "{out}");
    assert_eq!(sink.messages(2).len(), 2);
    assert!(p
        .log
        .lock()
        .unwrap()
        .contains("verdict=backscatter reason=untagged action=relayed-monitor"));
    drop(p);
    // enforce_after in the future is monitor mode too; in the past it enforces.
    let p = Proxy::start(&format!("127.0.0.1:{}", sink.port), "enforce_after = \"2026-12-01\"\n");
    assert_eq!(codes(&p.session(&bounce(&["carol@example.com"])))[4], 354);
    let p = Proxy::start(&format!("127.0.0.1:{}", sink.port), "enforce_after = \"2026-11-01\"\n");
    assert_eq!(codes(&p.session(&bounce(&["carol@example.com"])))[4], 550);
}

#[test]
fn downstream_down_gets_421() {
    // A port nothing listens on.
    let port = common::free_port();
    let p = Proxy::start(&format!("127.0.0.1:{port}"), "");
    let out = p.session(b"EHLO x\r\n");
    assert!(out.starts_with("421 4.4.2"), "{out}");
}

#[test]
fn client_vanishing_mid_data_delivers_nothing() {
    let Some((sink, _t)) = setup() else { return };
    let p = Proxy::start(&format!("127.0.0.1:{}", sink.port), "");
    let mut s = TcpStream::connect(&p.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"EHLO x\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\nSubject: cut\r\n\r\nhalf a message")
        .unwrap();
    let mut buf = [0u8; 4096];
    let mut got = String::new();
    while !got.contains("354") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    s.shutdown(Shutdown::Both).unwrap();
    drop(s);
    // A complete message afterwards arrives; the cut one never does.
    let out = p.session(&bounce(&["postmaster@example.com"]));
    assert_eq!(codes(&out).last(), Some(&221));
    std::thread::sleep(Duration::from_millis(300));
    let m = sink.messages(1);
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!(m[0]["rcpt_tos"], serde_json::json!(["postmaster@example.com"]));
}

#[test]
fn overlong_lines_and_slow_clients() {
    let Some((sink, _t)) = setup() else { return };
    let p = Proxy::start(&format!("127.0.0.1:{}", sink.port), "");
    let long = format!("NOOP {}\r\nQUIT\r\n", "x".repeat(600));
    let out = p.session(long.as_bytes());
    assert_eq!(codes(&out), [220, 500, 221], "{out}");
    // A client that says nothing is dropped after the command timeout (3 s here).
    let mut s = TcpStream::connect(&p.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.contains("421 4.4.2"), "{out}");
}

#[test]
fn daemon_never_invents_a_key() {
    let t = tempfile::tempdir().unwrap();
    let keys = t.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let cfg = t.path().join("batv.toml");
    std::fs::write(&cfg, "sign_domains = [\"example.com\"]\n").unwrap();
    let o = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .arg("--keys")
        .arg(&keys)
        .args(["proxy", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(78), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_dir(&keys).unwrap().count(), 0);
    std::fs::write(&cfg, "sign_domains = [\"example.com\"]\n[proxy]\nmode = \"front\"\n").unwrap();
    let o = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .arg("--keys")
        .arg(Path::new("/nonexistent"))
        .args(["proxy"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(78));
}

#[test]
fn through_postfix_smtp_sink() {
    let Some(root) = postfix_root() else { return };
    let sink = SmtpSink::start(&root, &[]);
    let p = Proxy::start(&format!("127.0.0.1:{}", sink.port), "");
    let tagged = p.sign(TODAY, "bob@example.com");
    // XFORWARD (what Postfix's smtpd_proxy_filter sends) is relayed and answered by the sink.
    let script = format!("EHLO x\r\nXFORWARD ADDR=192.0.2.7 NAME=mx.remote.example\r\nMAIL FROM:<>\r\nRCPT TO:<{tagged}> NOTIFY=NEVER\r\nDATA\r\nSubject: bounce\r\n\r\nbody\r\n.\r\nQUIT\r\n");
    let out = p.session(script.as_bytes());
    assert_eq!(codes(&out), [220, 250, 250, 250, 250, 354, 250, 221], "{out}");
    assert!(out.contains("250-XFORWARD"), "EHLO keywords relayed: {out}");
    let out = p.session(&bounce(&["carol@example.com"]));
    assert_eq!(codes(&out), [220, 250, 250, 250, 550, 221], "{out}");
    // smtp-sink offers DSN: the stripped recipient carries the tagged address as ORCPT.
    let orcpt = tagged.replace('=', "+3D");
    assert_eq!(
        sink.envelopes(),
        [format!(
            "X-Mail-Args: <>|X-Rcpt-Args: <bob@example.com> NOTIFY=NEVER ORCPT=rfc822;{orcpt}"
        )]
    );
}

#[test]
fn the_downstreams_final_reply_is_the_clients() {
    let Some(root) = postfix_root() else { return };
    // smtp-sink: -f hard-rejects, -r soft-rejects, -q hangs up without a reply.
    for (option, want) in [("-f", "5"), ("-r", "4"), ("-q", "421 4.4.2")] {
        let sink = SmtpSink::start(&root, &[option, "."]);
        let p = Proxy::start(&format!("127.0.0.1:{}", sink.port), "");
        let out = p.session(&bounce(&["postmaster@example.com"]));
        let after_354 = out.split("354 ").nth(1).unwrap_or_else(|| panic!("{option}: {out}"));
        let final_reply = after_354.lines().nth(1).unwrap_or("");
        assert!(final_reply.starts_with(want), "{option}: {final_reply:?} in {out}");
        assert!(!final_reply.starts_with("250"));
    }
}

#[test]
fn ten_thousand_pipelined_recipients() {
    let Some(root) = postfix_root() else { return };
    let sink = SmtpSink::start(&root, &[]);
    let p = Proxy::start(&format!("127.0.0.1:{}", sink.port), "");
    let mut script = b"EHLO x\r\nMAIL FROM:<list@remote.example>\r\n".to_vec();
    for i in 0..10_000 {
        script.extend_from_slice(format!("RCPT TO:<user{i}@example.com>\r\n").as_bytes());
    }
    script.extend_from_slice(b"RSET\r\nQUIT\r\n");
    let out = p.session(&script);
    let c = codes(&out);
    assert_eq!(c.len(), 10_005, "{}", &out[out.len().saturating_sub(300)..]);
    // proxy.max_recipients (1000): the rest are asked to come again in a new transaction,
    // and those 452s do not count as errors (the session is not closed).
    assert_eq!(c.iter().filter(|&&c| c == 250).count(), 1003);
    assert_eq!(c.iter().filter(|&&c| c == 452).count(), 9000);
    assert_eq!(c.last(), Some(&221));
}

#[test]
fn sigterm_drains_running_sessions() {
    let Some((sink, _t)) = setup() else { return };
    let mut p = Proxy::start(&format!("127.0.0.1:{}", sink.port), "");
    let mut s = TcpStream::connect(&p.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = std::io::BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    let mut expect = |r: &mut std::io::BufReader<TcpStream>, code: &str| loop {
        line.clear();
        std::io::BufRead::read_line(r, &mut line).unwrap();
        assert!(line.starts_with(code), "want {code}, got {line:?}");
        if line.as_bytes().get(3) == Some(&b' ') {
            break;
        }
    };
    expect(&mut r, "220");
    s.write_all(b"EHLO x\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<bob@example.com>\r\n")
        .unwrap();
    for c in ["250", "250", "250"] {
        expect(&mut r, c);
    }
    unsafe { libc::kill(p.child.id() as i32, libc::SIGTERM) };
    // New connections are no longer accepted...
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(&p.addr).is_ok() {
        assert!(std::time::Instant::now() < deadline, "still accepting after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    // ...but the running session finishes its message.
    s.write_all(b"DATA\r\n").unwrap();
    expect(&mut r, "354");
    s.write_all(b"Subject: drained\r\n\r\nbody\r\n.\r\nQUIT\r\n").unwrap();
    expect(&mut r, "250");
    expect(&mut r, "221");
    let m = sink.messages(1);
    assert_eq!(m.len(), 1, "{m:?}");
    // Then the proxy exits cleanly by itself.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(st) = p.child.try_wait().unwrap() {
            break st;
        }
        assert!(std::time::Instant::now() < deadline, "proxy did not exit after draining");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    std::thread::sleep(Duration::from_millis(200));
    let log = p.log.lock().unwrap().clone();
    assert!(log.contains("batv-proxy: draining "), "{log}");
}

#[test]
fn before_queue_judges_the_client_postfix_names_in_xforward() {
    let Some(root) = postfix_root() else { return };
    let sink = SmtpSink::start(&root, &[]);
    let p = Proxy::start(&format!("127.0.0.1:{}", sink.port), "trusted_relays = [\"192.0.2.10\"]\n");
    // Postfix's smtpd_proxy_filter names the real client: a trusted relay's bounce passes...
    let trusted = b"EHLO x\r\nXFORWARD ADDR=192.0.2.10 NAME=relay.example\r\nMAIL FROM:<>\r\nRCPT TO:<carol@example.com>\r\nDATA\r\nSubject: bounce\r\n\r\nbody\r\n.\r\nQUIT\r\n";
    assert_eq!(codes(&p.session(trusted)), [220, 250, 250, 250, 250, 354, 250, 221]);
    // ...another client's does not, although both arrive from Postfix on 127.0.0.1.
    let other = String::from_utf8_lossy(trusted).replace("192.0.2.10", "192.0.2.99");
    assert_eq!(codes(&p.session(other.as_bytes())), [220, 250, 250, 250, 250, 550, 221]);
    std::thread::sleep(Duration::from_millis(200));
    let log = p.log.lock().unwrap().clone();
    assert!(
        log.contains("client=192.0.2.10 sender=<> rcpt=<carol@example.com> verdict=bounce-ok reason=trusted-relay"),
        "{log}"
    );
    assert!(
        log.contains("client=192.0.2.99 sender=<> rcpt=<carol@example.com> verdict=backscatter"),
        "{log}"
    );
}

#[test]
fn a_reload_cannot_switch_the_mode() {
    let Some((sink, _t)) = setup() else { return };
    let p = Proxy::start(&format!("127.0.0.1:{}", sink.port), "");
    let text = std::fs::read_to_string(&p.config).unwrap();
    std::fs::write(&p.config, text.replace("[proxy]\n", "[proxy]\nmode = \"front\"\nenforce = false\n")).unwrap();
    unsafe { libc::kill(p.child.id() as i32, libc::SIGHUP) };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !p.log.lock().unwrap().contains("configuration not reloaded") {
        assert!(std::time::Instant::now() < deadline, "{}", p.log.lock().unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(p
        .log
        .lock()
        .unwrap()
        .contains("proxy.mode or proxy.front_protocol changed; restart to apply"));
    // Still before-queue and still enforcing: the whole new file was refused.
    let out = p.session(&bounce(&["carol@example.com"]));
    assert_eq!(codes(&out), [220, 250, 250, 250, 550, 221], "{out}");
}

/// Sub-address tags (`bob+prvs=...@`, as batv-tools writes them) are read by a proxy
/// whatever its own tag_syntax: a valid one is stripped to the mailbox before it, an
/// extension kept; a tag moved behind another extension, or forged, is refused.
#[test]
fn subaddress_tags_are_verified_and_stripped() {
    let Some((sink, _t)) = setup() else { return };
    let p = Proxy::start(&format!("127.0.0.1:{}", sink.port), "");
    let sign = |addr: &str| {
        let o = Command::new(BIN)
            .arg("--keys")
            .arg(&p.keys)
            .args(["--now", TODAY, "sign", "--syntax", "subaddress", addr])
            .output()
            .unwrap();
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    };
    let bob = sign("bob@example.com");
    let news = sign("carol+news@example.com");
    assert!(bob.starts_with("bob+prvs=") && news.starts_with("carol+news+prvs="), "{bob} {news}");
    let out = p.session(&bounce(&[&bob, &news]));
    assert_eq!(codes(&out), [220, 250, 250, 250, 250, 354, 250, 221], "{out}");
    assert_eq!(
        sink.messages(1)[0]["rcpt_tos"],
        serde_json::json!(["bob@example.com", "carol+news@example.com"]),
        "the tags are stripped, the extension kept"
    );
    let carol = sign("carol@example.com");
    let moved = carol.replacen("carol+", "carol+news+", 1);
    let at = bob.find('@').unwrap();
    let forged = format!(
        "{}{}{}",
        &bob[..at - 1],
        if bob.as_bytes()[at - 1] == b'a' { 'b' } else { 'a' },
        &bob[at..]
    );
    for rcpt in [moved.as_str(), forged.as_str(), "bob+prvs=junk@example.com"] {
        let out = p.session(&bounce(&[rcpt]));
        assert_eq!(codes(&out), [220, 250, 250, 250, 550, 221], "{rcpt}: {out}");
    }
    assert_eq!(sink.messages(1).len(), 1, "nothing refused reached the sink");
}
