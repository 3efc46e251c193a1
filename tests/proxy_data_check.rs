//! The proxy's DATA check (`data_check`): mail from non-null senders to protected, untagged
//! recipients is inspected (its first `data_check_kib`) for bounces of mail we never sent,
//! marked with `X-BATV:` or, with `data_check_refuse`, refused before the downstream has it.
//! Downstream: tests/peers/chunking_sink.py, which records the exact octets it received.
//! Everything is on 127.0.0.1 and bounded in time.

mod common;

use common::peers::*;
use common::proxy::*;

/// A delivery report (RFC 3464) returning a message that `original` sent.
fn dsn(original: &str) -> String {
    format!(
        "From: Mail Delivery System <MAILER-DAEMON@mx.remote.example>\r\n\
To: carol@example.com\r\n\
Subject: Undelivered Mail Returned to Sender\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status; boundary=\"b1\"\r\n\
\r\n\
--b1\r\n\
Content-Type: text/plain\r\n\
\r\n\
I'm sorry to have to inform you that your message could not be delivered.\r\n\
\r\n\
--b1\r\n\
Content-Type: message/delivery-status\r\n\
\r\n\
Reporting-MTA: dns; mx.remote.example\r\n\
\r\n\
Final-Recipient: rfc822; nobody@remote.example\r\n\
Action: failed\r\n\
Status: 5.1.1\r\n\
\r\n\
--b1\r\n\
Content-Type: message/rfc822\r\n\
\r\n\
Return-Path: <{original}>\r\n\
From: Carol <carol@example.com>\r\n\
To: nobody@remote.example\r\n\
Subject: hello\r\n\
\r\n\
hello\r\n\
\r\n\
--b1--\r\n"
    )
}

const ORDINARY: &str = "From: Friend <friend@remote.example>\r\nTo: carol@example.com\r\nSubject: lunch?\r\n\r\nTomorrow at noon?\r\n";

/// DATA as the client sends it (dot-stuffed, terminated).
fn wire(message: &str) -> Vec<u8> {
    let mut w = Vec::new();
    for line in message.split_inclusive("\r\n") {
        if line.starts_with('.') {
            w.push(b'.');
        }
        w.extend_from_slice(line.as_bytes());
    }
    w.extend_from_slice(b".\r\n");
    w
}

/// One DATA transaction on `c`; the replies to MAIL, RCPT, DATA and the message.
fn send(c: &mut Client, from: &str, rcpt: &str, message: &[u8]) -> Vec<String> {
    let mut r = vec![c.cmd(&format!("MAIL FROM:<{from}>")), c.cmd(&format!("RCPT TO:<{rcpt}>"))];
    r.push(c.cmd("DATA"));
    if code(&r[2]) == 354 {
        c.send(message);
        r.push(c.reply());
    }
    r
}

fn codes_of(r: &[String]) -> Vec<u16> {
    r.iter().map(|r| code(r)).collect()
}

fn connect(p: &Proxy) -> Client {
    let mut c = Client::connect(&p.addr);
    assert_eq!(code(&c.reply()), 220);
    assert_eq!(code(&c.cmd("EHLO mx.remote.example")), 250);
    c
}

/// The message the sink received, as octets (terminator removed, unstuffed).
fn received(m: &serde_json::Value) -> Vec<u8> {
    unhex(m["data"].as_str().unwrap())
}

#[test]
fn bounces_to_untagged_addresses_are_marked_and_other_mail_is_untouched() {
    let Some(cs) = ChunkSink::start(&[]) else { return };
    let p = Proxy::start(&cs.forward(), "data_check = true\n");
    let tagged = p.sign(TODAY, "carol@example.com");
    let mut c = connect(&p);
    let sender = "MAILER-DAEMON@mx.remote.example";

    // A broken MTA bounces spam that forged carol, with a non-null sender: backscatter.
    let forged = dsn("carol@example.com");
    assert_eq!(
        codes_of(&send(&mut c, sender, "carol@example.com", &wire(&forged))),
        [250, 250, 354, 250]
    );
    // The same MTA bouncing mail carol really sent (its Return-Path has her tag).
    let genuine = dsn(&tagged);
    assert_eq!(
        codes_of(&send(&mut c, sender, "carol@example.com", &wire(&genuine))),
        [250, 250, 354, 250]
    );
    // A vacation reply: not ours to judge (replies go to From:, never tagged).
    let vacation = "From: dave@remote.example\r\nTo: carol@example.com\r\nSubject: Out of office\r\nAuto-Submitted: auto-replied\r\n\r\nAway until Monday.\r\n";
    assert_eq!(
        codes_of(&send(&mut c, "dave@remote.example", "carol@example.com", &wire(vacation))),
        [250, 250, 354, 250]
    );
    // Ordinary mail, with a forged X-BATV field that must not reach a filter.
    let forged_header = format!("X-BATV: bounce-with-valid-tag; reason=valid\r\n{ORDINARY}");
    assert_eq!(
        codes_of(&send(&mut c, "friend@remote.example", "carol@example.com", &wire(&forged_header))),
        [250, 250, 354, 250]
    );
    // Not inspected: a recipient with a valid tag, and one outside the protected domains.
    assert_eq!(codes_of(&send(&mut c, sender, &tagged, &wire(&forged))), [250, 250, 354, 250]);
    assert_eq!(
        codes_of(&send(&mut c, sender, "someone@other.example", &wire(&forged))),
        [250, 250, 354, 250]
    );
    assert_eq!(code(&c.cmd("QUIT")), 221);

    let m = cs.messages(6);
    assert_eq!(m.len(), 6, "{m:?}");
    let with = |h: &str, msg: &str| [h.as_bytes(), msg.as_bytes()].concat();
    assert_eq!(
        received(&m[0]),
        with("X-BATV: backscatter; reason=untagged; kind=delivery-report\r\n", &forged)
    );
    assert_eq!(
        received(&m[1]),
        with("X-BATV: bounce-with-valid-tag; reason=valid; kind=delivery-report\r\n", &genuine)
    );
    assert_eq!(
        received(&m[2]),
        with("X-BATV: unknown; reason=auto-reply; kind=auto-reply\r\n", vacation)
    );
    assert_eq!(
        received(&m[3]),
        ORDINARY.as_bytes(),
        "not a bounce: no header, the forged one removed"
    );
    assert_eq!(received(&m[4]), forged.as_bytes());
    assert_eq!(m[4]["rcpts"][0].as_str().unwrap().split_whitespace().next(), Some("RCPT"));
    assert_eq!(received(&m[5]), forged.as_bytes());
    let log = log(&p);
    assert_eq!(log.matches("check=data").count(), 4, "{log}");
    assert!(
        log.contains("check=data verdict=backscatter reason=untagged kind=delivery-report original_sender=<carol@example.com>"),
        "{log}"
    );
    assert!(log.contains("action=marked\n"), "{log}");
}

#[test]
fn backscatter_is_refused_before_the_downstream_has_it() {
    let Some(cs) = ChunkSink::start(&[]) else { return };
    let p = Proxy::start(&cs.forward(), "data_check = true\ndata_check_refuse = true\ndata_check_kib = 1\n");
    let tagged = p.sign(TODAY, "carol@example.com");
    let mut c = connect(&p);
    let sender = "bounces@mx.remote.example";
    // Bigger than what is inspected: the rest is read and dropped, the session stays in step.
    let mut big = dsn("carol@example.com");
    big.push_str(&"padding line\r\n".repeat(5000));
    for m in [dsn("carol@example.com"), big] {
        let r = send(&mut c, sender, "carol@example.com", &wire(&m));
        assert_eq!(codes_of(&r), [250, 250, 354, 550], "{r:?}");
        assert!(r[3].starts_with("550 5.7.1 "), "{r:?}");
    }
    // Genuine bounces and ordinary mail still go through, in the same session.
    assert_eq!(
        codes_of(&send(&mut c, sender, "carol@example.com", &wire(&dsn(&tagged)))),
        [250, 250, 354, 250]
    );
    assert_eq!(
        codes_of(&send(&mut c, "friend@remote.example", "carol@example.com", &wire(ORDINARY))),
        [250, 250, 354, 250]
    );
    assert_eq!(code(&c.cmd("QUIT")), 221);
    let m = cs.messages(2);
    assert_eq!(m.len(), 2, "nothing refused reached the downstream: {m:?}");
    assert!(received(&m[0]).starts_with(b"X-BATV: bounce-with-valid-tag;"));
    assert_eq!(received(&m[1]), ORDINARY.as_bytes());
    let log = log(&p);
    assert_eq!(log.matches("action=refused").count(), 2, "{log}");
    // Its first KiB of client octets, less a CR the scanner holds until the next octet.
    assert!(
        log.contains("inspected=1024+") || log.contains("inspected=1023+"),
        "the big one was judged on its first KiB: {log}"
    );
    drop(p);

    // Monitor mode: refusing is logged and marked, never done.
    let p = Proxy::start(&cs.forward(), "enforce = false\ndata_check = true\ndata_check_refuse = true\n");
    let mut c = connect(&p);
    let forged = dsn("carol@example.com");
    assert_eq!(
        codes_of(&send(&mut c, sender, "carol@example.com", &wire(&forged))),
        [250, 250, 354, 250]
    );
    let m = cs.messages(3);
    assert_eq!(
        received(&m[2]),
        [
            &b"X-BATV: backscatter; reason=untagged; kind=delivery-report; mode=monitor\r\n"[..],
            forged.as_bytes()
        ]
        .concat()
    );
    wait_log(&p, "action=marked-monitor", 1);
}

/// The held part and the streamed rest join seamlessly wherever the limit falls: at a
/// dot-stuffed line, between CR and LF, in a bare LF (which becomes CRLF), at the terminator.
#[test]
fn a_message_longer_than_the_inspected_part_arrives_intact() {
    let Some(cs) = ChunkSink::start(&[]) else { return };
    let p = Proxy::start(&cs.forward(), "data_check = true\ndata_check_kib = 1\n");
    let mut c = connect(&p);
    let mut sent = Vec::new();
    for pad in 1000..1030 {
        let mut wire = format!("Subject: pad {pad}\r\n\r\n").into_bytes();
        while wire.len() < pad {
            wire.push(b'x');
        }
        wire.extend_from_slice(b"\r\n..dot\r\nbare\nlf\r\n.\r\n");
        let r = send(&mut c, "friend@remote.example", "carol@example.com", &wire);
        assert_eq!(codes_of(&r), [250, 250, 354, 250], "{pad}: {r:?}");
        sent.push(wire);
    }
    assert_eq!(code(&c.cmd("QUIT")), 221);
    let m = cs.messages(sent.len());
    assert_eq!(m.len(), sent.len());
    for (w, m) in sent.iter().zip(&m) {
        let want = String::from_utf8_lossy(w).replace("bare\nlf", "bare\r\nlf");
        assert_eq!(String::from_utf8(unhex(m["wire"].as_str().unwrap())).unwrap(), want);
    }
    // Every one was held and inspected; the longer ones on their first KiB only.
    let log = log(&p);
    assert_eq!(log.matches("check=data").count(), sent.len(), "{log}");
    assert!(log.matches("+ action=relayed").count() >= 20, "{log}");
}

/// Another recipient's valid tag says nothing about an untagged one in the same
/// transaction: it is judged on its own.
#[test]
fn a_tagged_recipient_does_not_vouch_for_an_untagged_one() {
    let Some(cs) = ChunkSink::start(&[]) else { return };
    let p = Proxy::start(&cs.forward(), "data_check = true\ndata_check_refuse = true\n");
    let tagged = p.sign(TODAY, "dave@example.com");
    let mut c = connect(&p);
    assert_eq!(code(&c.cmd("MAIL FROM:<bounces@mx.remote.example>")), 250);
    assert_eq!(code(&c.cmd(&format!("RCPT TO:<{tagged}>"))), 250);
    assert_eq!(code(&c.cmd("RCPT TO:<carol@example.com>")), 250);
    assert_eq!(code(&c.cmd("DATA")), 354);
    c.send(&wire(&dsn("carol@example.com")));
    assert!(c.reply().starts_with("550 5.7.1 "));
    assert_eq!(code(&c.cmd("QUIT")), 221);
    assert!(cs.messages(1).is_empty());
}

/// A client that goes away while its message is held, or while the rest streams, leaves
/// nothing behind: the downstream never gets a terminator.
#[test]
fn a_client_vanishing_mid_message_leaves_nothing() {
    let Some(cs) = ChunkSink::start(&[]) else { return };
    let p = Proxy::start(&cs.forward(), "data_check = true\ndata_check_kib = 1\n");
    for sent in [&b"Subject: cut short\r\n\r\nhalf"[..], &[b'x'; 5000][..]] {
        let mut c = connect(&p);
        assert_eq!(
            codes_of(&[
                c.cmd("MAIL FROM:<friend@remote.example>"),
                c.cmd("RCPT TO:<carol@example.com>"),
                c.cmd("DATA")
            ]),
            [250, 250, 354]
        );
        c.send(sent);
        drop(c);
    }
    let mut c = connect(&p);
    assert_eq!(
        codes_of(&send(&mut c, "friend@remote.example", "carol@example.com", &wire(ORDINARY))),
        [250, 250, 354, 250]
    );
    let m = cs.messages(1);
    assert_eq!(m.len(), 1, "only the complete message: {m:?}");
    assert_eq!(received(&m[0]), ORDINARY.as_bytes());
}

/// The downstream waits while a message is held: a slow client is judged on what arrived
/// within the hold (5 s), and the rest follows.
#[test]
fn a_slow_client_is_judged_on_what_arrived_within_the_hold() {
    let Some(cs) = ChunkSink::start(&[]) else { return };
    let p = Proxy::start(
        &cs.forward(),
        "data_check = true\ncommand_timeout_ms = 20000\ndata_timeout_ms = 20000\n",
    );
    let mut c = connect(&p);
    let msg = dsn("carol@example.com");
    let w = wire(&msg);
    let (first, rest) = w.split_at(msg.find("Content-Type: message/rfc822").unwrap());
    assert_eq!(
        codes_of(&[
            c.cmd("MAIL FROM:<bounces@mx.remote.example>"),
            c.cmd("RCPT TO:<carol@example.com>"),
            c.cmd("DATA")
        ]),
        [250, 250, 354]
    );
    c.send(first);
    std::thread::sleep(std::time::Duration::from_millis(5500));
    c.send(rest);
    assert_eq!(code(&c.reply()), 250);
    let m = cs.messages(1);
    assert_eq!(
        received(&m[0]),
        [
            &b"X-BATV: backscatter; reason=untagged; kind=delivery-report\r\n"[..],
            msg.as_bytes()
        ]
        .concat()
    );
    assert!(log(&p).contains(&format!("inspected={}+", first.len())), "{}", log(&p));
}

fn bdat(c: &mut Client, from: &str, rcpt: &str, chunks: &[&[u8]]) -> Vec<String> {
    let mut replies = vec![c.cmd(&format!("MAIL FROM:<{from}>")), c.cmd(&format!("RCPT TO:<{rcpt}>"))];
    for (i, chunk) in chunks.iter().enumerate() {
        let last = if i + 1 == chunks.len() { " LAST" } else { "" };
        c.send(&[format!("BDAT {}{last}\r\n", chunk.len()).as_bytes(), chunk].concat());
        replies.push(c.reply());
    }
    replies
}

#[test]
fn bdat_messages_are_checked_across_chunks() {
    let Some(cs) = ChunkSink::start(&[]) else { return };
    let p = Proxy::start(&cs.forward(), "data_check = true\ndata_check_refuse = true\ndata_check_kib = 1\n");
    let tagged = p.sign(TODAY, "carol@example.com");
    let sender = "bounces@mx.remote.example";
    let mut c = connect(&p);
    let pieces = |m: &str, size: usize| -> Vec<Vec<u8>> { m.as_bytes().chunks(size).map(<[u8]>::to_vec).collect() };

    // Backscatter in small chunks: gathered, judged, refused; nothing reached the sink.
    let forged = pieces(&dsn("carol@example.com"), 100);
    let refs: Vec<&[u8]> = forged.iter().map(Vec::as_slice).collect();
    let r = bdat(&mut c, sender, "carol@example.com", &refs);
    assert!(r[..r.len() - 1].iter().all(|r| code(r) == 250), "{r:?}");
    assert!(r.last().unwrap().starts_with("550 5.7.1 "), "{r:?}");

    // Backscatter in one huge chunk past the limit: the rest of the chunk is consumed.
    let mut big = dsn("carol@example.com");
    big.push_str(&"padding line\r\n".repeat(3000));
    let r = bdat(&mut c, sender, "carol@example.com", &[big.as_bytes()]);
    assert!(r[2].starts_with("550 5.7.1 "), "{r:?}");

    // A genuine bounce in chunks that cross the limit, and ordinary mail in one small chunk.
    let mut genuine = dsn(&tagged);
    genuine.push_str(&"more\r\n".repeat(400));
    let parts = pieces(&genuine, 700);
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    let r = bdat(&mut c, sender, "carol@example.com", &refs);
    assert!(r.iter().all(|r| code(r) == 250), "{r:?}");
    assert!(
        r.last().unwrap().contains("queued as CHUNK"),
        "the final reply is the downstream's: {r:?}"
    );
    let r = bdat(&mut c, "friend@remote.example", "carol@example.com", &[ORDINARY.as_bytes()]);
    assert!(r.iter().all(|r| code(r) == 250), "{r:?}");
    // A message smaller than the limit, in one chunk, is judged whole.
    let r = bdat(&mut c, "friend@remote.example", "carol@example.com", &[b"Subject: x\r\n"]);
    assert_eq!(codes_of(&r), [250, 250, 250]);
    assert_eq!(code(&c.cmd("QUIT")), 221);

    let m = cs.messages(3);
    assert_eq!(m.len(), 3, "{m:?}");
    let header = b"X-BATV: bounce-with-valid-tag; reason=valid; kind=delivery-report\r\n";
    assert_eq!(received(&m[0]), [&header[..], genuine.as_bytes()].concat());
    assert_eq!(m[0]["via"], "BDAT");
    assert_eq!(received(&m[1]), ORDINARY.as_bytes());
    assert_eq!(m[1]["chunks"], serde_json::json!([ORDINARY.len()]));
    assert_eq!(received(&m[2]), b"Subject: x\r\n");
}

#[test]
fn data_after_held_chunks_is_refused() {
    let Some(cs) = ChunkSink::start(&[]) else { return };
    let p = Proxy::start(&cs.forward(), "data_check = true\n");
    let mut c = connect(&p);
    assert_eq!(code(&c.cmd("MAIL FROM:<friend@remote.example>")), 250);
    assert_eq!(code(&c.cmd("RCPT TO:<carol@example.com>")), 250);
    c.send(b"BDAT 5\r\nSubje");
    assert_eq!(code(&c.reply()), 250);
    assert!(c.cmd("DATA").starts_with("503 5.5.1"));
    assert_eq!(code(&c.cmd("RSET")), 250);
    assert_eq!(
        codes_of(&send(&mut c, "friend@remote.example", "carol@example.com", &wire(ORDINARY))),
        [250, 250, 354, 250]
    );
    assert_eq!(code(&c.cmd("QUIT")), 221);
    let m = cs.messages(1);
    assert_eq!(m.len(), 1);
    assert_eq!(received(&m[0]), ORDINARY.as_bytes());
}

/// A real bounce from the shared corpus (Postfix bouncing to an untagged sender), sent by a
/// broken relay with a non-null sender.
#[test]
fn a_real_postfix_bounce_to_an_untagged_address() {
    let Some(cs) = ChunkSink::start(&[]) else { return };
    let p = Proxy::start(&cs.forward(), "data_check = true\ndata_check_refuse = true\n");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/bounces/generated");
    let name = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with("postfix") && n.ends_with("untagged-sender.eml"))
        .min()
        .expect("a postfix untagged-sender bounce in the corpus");
    let raw = std::fs::read_to_string(dir.join(&name)).unwrap();
    let mut c = connect(&p);
    // The corpus is example.org's: the proxy here protects example.com.
    let msg = raw.replace("example.org", "example.com");
    let r = send(&mut c, "relay@mx.remote.example", "user@example.com", &wire(&msg));
    assert_eq!(codes_of(&r), [250, 250, 354, 550], "{name}: {r:?}\n{}", log(&p));
}

#[test]
fn data_check_settings_are_validated() {
    let t = tempfile::tempdir().unwrap();
    let cfg = t.path().join("batv.toml");
    for (text, want) in [
        (
            "[proxy]\ndata_check_refuse = true\n",
            "proxy.data_check_refuse needs proxy.data_check = true",
        ),
        (
            "[proxy]\ndata_check = true\ndata_check_kib = 0\n",
            "proxy.data_check_kib: must be 1 to 1024, got 0",
        ),
        ("[proxy]\ndata_check = true\ndata_check_kib = 4096\n", "must be 1 to 1024, got 4096"),
    ] {
        std::fs::write(&cfg, format!("sign_domains = [\"example.com\"]\n{text}")).unwrap();
        let o = std::process::Command::new(BIN)
            .arg("--config")
            .arg(&cfg)
            .args(["config", "check"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(78), "{text}: {err}");
        assert!(err.contains(want), "{text}: {err}");
    }
    std::fs::write(
        &cfg,
        "sign_domains = [\"example.com\"]\n[proxy]\ndata_check = true\ndata_check_refuse = true\ndata_check_kib = 256\n",
    )
    .unwrap();
    let o = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .args(["config", "show"])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && shown.contains("data_check_kib = 256") && shown.contains("data_check_refuse = true"),
        "{shown}"
    );
}
