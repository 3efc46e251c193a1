//! `batv proxy` against real clients (swaks, Python's smtplib, raw sockets) and downstreams
//! (aiosmtpd, and tests/peers/chunking_sink.py, which speaks BDAT and can misbehave): 8-bit
//! and SMTPUTF8 transparency, CHUNKING, monitor headers, downstream faults, SIGHUP reloads,
//! session limits and the metrics endpoint. Everything is on 127.0.0.1 and bounded in time.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::peers::*;
use common::proxy::*;
use common::require;

const MONITOR_BACKSCATTER: &str = "X-BATV: backscatter; reason=untagged; mode=monitor\r\n";
const MONITOR_VALID: &str = "X-BATV: bounce-ok; reason=valid; mode=monitor\r\n";
/// What `bounce()` sends as the message.
const BOUNCE_BODY: &str = "Subject: Undeliverable\r\n\r\nYour message could not be delivered.\r\n";

/// The bytes aiosmtpd's sink recorded (latin-1 text, one char per byte).
fn sink_data(m: &serde_json::Value) -> Vec<u8> {
    m["data"]
        .as_str()
        .unwrap()
        .chars()
        .map(|c| u8::try_from(u32::from(c)).unwrap())
        .collect()
}

/// RFC 3461 xtext, as the proxy writes an ORCPT.
fn xtext(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
                (b as char).to_string()
            } else {
                format!("+{b:02X}")
            }
        })
        .collect()
}

/// A tag with one signature character changed.
fn forge(tagged: &str) -> String {
    let c = if tagged[10..11].eq_ignore_ascii_case("a") { "b" } else { "a" };
    format!("{}{c}{}", &tagged[..10], &tagged[11..])
}

fn sighup(p: &Proxy) {
    let pid = i32::try_from(p.child.id()).unwrap();
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
}

/// Run a peer program with a hard time limit (coreutils `timeout`): (exit code, stdout+stderr).
fn run_bounded(program: &str, args: &[&str]) -> (Option<i32>, String) {
    let o = Command::new("timeout")
        .args(["-s", "KILL", "30", program])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    (o.status.code(), text)
}

fn swaks(p: &Proxy, args: &[&str]) -> (Option<i32>, String) {
    let port = p.addr.rsplit(':').next().unwrap();
    let mut all = vec![
        "--server",
        "127.0.0.1",
        "--port",
        port,
        "--timeout",
        "10",
        "--helo",
        "mx.remote.example",
    ];
    all.extend_from_slice(args);
    run_bounded("swaks", &all)
}

#[test]
fn swaks_through_the_proxy() {
    if !require("swaks", Path::new("/usr/bin/swaks").exists()) {
        return;
    }
    let Some((sink, t)) = setup() else { return };
    let p = Proxy::start(&format!("127.0.0.1:{}", sink.port), "");
    let tagged = p.sign(TODAY, "bob@example.com");
    let file = t.path().join("msg.eml");
    let body = "From: Mail Delivery System <MAILER-DAEMON@remote.example>\r\nSubject: Undelivered Mail\r\n\r\nIt bounced.\r\n";
    // swaks ends the data with its own CRLF before the dot.
    std::fs::write(&file, body.strip_suffix("\r\n").unwrap()).unwrap();
    let data = format!("@{}", file.display());

    // A bounce to a valid tag passes, tag stripped.
    let (status, out) = swaks(&p, &["--from", "<>", "--to", &tagged, "--data", &data]);
    assert_eq!(status, Some(0), "{out}");
    assert!(out.contains("MAIL FROM:<>"), "{out}");
    let m = sink.messages(1);
    assert_eq!(m.len(), 1, "{out}");
    assert_eq!(m[0]["mail_from"], "<>");
    assert_eq!(m[0]["rcpt_tos"], serde_json::json!(["bob@example.com"]));
    assert_eq!(sink_data(&m[0]), body.as_bytes());

    // Backscatter: the RCPT is relayed, DATA refused; swaks says so in its exit status.
    let (status, out) = swaks(&p, &["--from", "<>", "--to", "carol@example.com", "--data", &data]);
    assert_ne!(status, Some(0), "{out}");
    assert_eq!(status, Some(25), "swaks: server returned error to DATA request: {out}");
    assert!(out.contains("<** 550 5.7.1"), "{out}");

    // Normal mail from a remote sender is untouched.
    let (status, out) = swaks(&p, &["--from", "alice@remote.example", "--to", "dave@example.com", "--data", &data]);
    assert_eq!(status, Some(0), "{out}");
    let m = sink.messages(2);
    assert_eq!(m.len(), 2, "the refused bounce never reached the sink: {m:?}");
    assert_eq!(m[1]["mail_from"], "alice@remote.example");
    assert_eq!(m[1]["rcpt_tos"], serde_json::json!(["dave@example.com"]));
    assert_eq!(sink_data(&m[1]), body.as_bytes());
}

const SMTPLIB_CLIENT: &str = r#"
import json, smtplib, sys
from email.message import EmailMessage
port, good, bad = int(sys.argv[1]), sys.argv[2], sys.argv[3]
out = {}
def refused(d):
    return {k: [v[0], v[1].decode()] for k, v in d.items()}
with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
    s.ehlo("mx.remote.example")
    m = EmailMessage()
    m["From"] = "Mail Delivery System <MAILER-DAEMON@remote.example>"
    m["To"] = good
    m["Subject"] = "Undelivered Mail Returned to Sender"
    m.set_content("Your message could not be delivered.\n")
    out["send_message"] = refused(s.send_message(m, from_addr="", to_addrs=[good]))
    out["sendmail"] = refused(s.sendmail("", [good, bad], b"Subject: second bounce\r\n\r\nsecond\r\n"))
    try:
        s.sendmail("", [bad], b"Subject: backscatter\r\n\r\nx\r\n")
        out["backscatter"] = "accepted"
    except smtplib.SMTPDataError as e:
        out["backscatter"] = [e.smtp_code, e.smtp_error.decode()]
print(json.dumps(out))
"#;

#[test]
fn smtplib_through_the_proxy() {
    let Some((sink, _t)) = setup() else { return };
    let p = Proxy::start(&format!("127.0.0.1:{}", sink.port), "");
    let tagged = p.sign(TODAY, "bob@example.com");
    let port = p.addr.rsplit(':').next().unwrap();
    let (status, out) = run_bounded("/usr/bin/python3", &["-c", SMTPLIB_CLIENT, port, &tagged, "carol@example.com"]);
    assert_eq!(status, Some(0), "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["send_message"], serde_json::json!({}), "{out}");
    // The untagged recipient differs from the transaction's verdict: 452, try again later.
    let r = &v["sendmail"]["carol@example.com"];
    assert_eq!(r[0], 452, "{out}");
    assert!(r[1].as_str().unwrap().starts_with("4.5.3"), "{out}");
    assert_eq!(v["sendmail"].as_object().unwrap().len(), 1, "{out}");
    // Alone, it is backscatter: refused at DATA.
    assert_eq!(v["backscatter"][0], 550, "{out}");
    assert!(v["backscatter"][1].as_str().unwrap().starts_with("5.7.1"), "{out}");

    let m = sink.messages(2);
    assert_eq!(m.len(), 2, "{m:?}");
    for x in &m {
        assert_eq!(x["mail_from"], "<>");
        assert_eq!(x["rcpt_tos"], serde_json::json!(["bob@example.com"]));
    }
    assert!(String::from_utf8_lossy(&sink_data(&m[0])).contains("Subject: Undelivered Mail Returned to Sender\r\n"));
    assert_eq!(sink_data(&m[1]), b"Subject: second bounce\r\n\r\nsecond\r\n");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(sink.messages(0).len(), 2, "the backscatter was not delivered");
}

/// A message with every byte 0x80-0xFF on lines of various lengths, a line that starts
/// with a dot, and a long line. Returns (message, the message dot-stuffed as on the wire).
fn eight_bit_message() -> (Vec<u8>, Vec<u8>) {
    let mut msg = "From: J\u{f6}rg <j\u{f6}rg@remote.example>\r\nSubject: 8-bit \u{fc}ber alles\r\n\r\n"
        .as_bytes()
        .to_vec();
    let high: Vec<u8> = (0x80..=0xFF).collect();
    let mut rest = &high[..];
    for len in [1, 2, 3, 5, 8, 13, 21, 34, 41].iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let n = (*len).min(rest.len());
        msg.extend_from_slice(&rest[..n]);
        msg.extend_from_slice(b"\r\n");
        rest = &rest[n..];
    }
    msg.extend_from_slice(b".leading dot \xff\xfe\r\n\r\n");
    // The longest line RFC 5321 allows (1000 octets with CRLF); aiosmtpd refuses longer.
    msg.extend(high.iter().cycle().take(998));
    msg.extend_from_slice(b"\r\n..two dots\r\nend\r\n");
    let mut wire = Vec::new();
    for line in msg.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            wire.push(b'.');
        }
        wire.extend_from_slice(line);
    }
    (msg, wire)
}

/// The SMTPUTF8 transaction of the 8-bit test, on a raw client.
fn send_eight_bit(addr: &str, wire: &[u8]) -> Vec<String> {
    let mut c = Client::connect(addr);
    let mut replies = vec![c.reply(), c.cmd("EHLO mx.remote.example")];
    replies.push(c.cmd("MAIL FROM:<j\u{f6}rg@remote.example> SMTPUTF8 BODY=8BITMIME"));
    replies.push(c.cmd("RCPT TO:<\u{fc}n\u{ef}code@example.com>"));
    replies.push(c.cmd("DATA"));
    c.send(wire);
    c.send(b".\r\n");
    replies.push(c.reply());
    replies.push(c.cmd("QUIT"));
    replies
}

#[test]
fn eight_bit_and_smtputf8_arrive_byte_identical() {
    let Some((sink, _t)) = setup() else { return };
    let p = Proxy::start(&format!("127.0.0.1:{}", sink.port), "");
    let (msg, wire) = eight_bit_message();
    let replies = send_eight_bit(&p.addr, &wire);
    let codes: Vec<u16> = replies.iter().map(|r| code(r)).collect();
    assert_eq!(codes, [220, 250, 250, 250, 354, 250, 221], "{replies:?}");
    let m = sink.messages(1);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0]["mail_from"], "j\u{f6}rg@remote.example");
    assert_eq!(m[0]["rcpt_tos"], serde_json::json!(["\u{fc}n\u{ef}code@example.com"]));
    assert_eq!(m[0]["mail_options"], serde_json::json!(["SMTPUTF8", "BODY=8BITMIME"]));
    let got = sink_data(&m[0]);
    assert_eq!(got.len(), msg.len());
    assert!(got == msg, "the message changed on its way");

    // On the wire (dot-stuffing included), to a server that records raw bytes.
    let Some(cs) = ChunkSink::start(&[]) else { return };
    let p = Proxy::start(&cs.forward(), "");
    let replies = send_eight_bit(&p.addr, &wire);
    assert_eq!(code(&replies[5]), 250, "{replies:?}");
    let m = cs.messages(1);
    assert_eq!(m[0]["mail_from"], "<j\u{f6}rg@remote.example> SMTPUTF8 BODY=8BITMIME");
    assert_eq!(m[0]["rcpts"], serde_json::json!(["RCPT TO:<\u{fc}n\u{ef}code@example.com>"]));
    let mut want = wire.clone();
    want.extend_from_slice(b".\r\n");
    assert!(unhex(m[0]["wire"].as_str().unwrap()) == want, "the DATA stream changed on its way");
    assert!(unhex(m[0]["data"].as_str().unwrap()) == msg);
}

/// MAIL, RCPT and the message as BDAT chunks (pipelined in one write); the replies.
fn bdat_transaction(c: &mut Client, from: &str, rcpt: &str, chunks: &[&[u8]]) -> Vec<String> {
    let mut replies = vec![c.cmd(&format!("MAIL FROM:<{from}>")), c.cmd(&format!("RCPT TO:<{rcpt}>"))];
    let mut out = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = if i + 1 == chunks.len() { " LAST" } else { "" };
        out.extend_from_slice(format!("BDAT {}{last}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
    }
    c.send(&out);
    for _ in chunks {
        replies.push(c.reply());
    }
    replies
}

#[test]
fn bdat_chunks_are_relayed_refused_and_marked() {
    let Some(cs) = ChunkSink::start(&[]) else { return };
    let p = Proxy::start(&cs.forward(), "");
    let tagged = p.sign(TODAY, "bob@example.com");
    let mut c = Client::connect(&p.addr);
    assert_eq!(code(&c.reply()), 220);
    let ehlo = c.cmd("EHLO mx.remote.example");
    assert!(ehlo.contains("250-CHUNKING\r\n"), "{ehlo}");
    // Chunk boundaries mid-line; a leading dot inside BDAT is data, not stuffing.
    let chunks: [&[u8]; 3] = [
        b"Subject: chunked bounce\r\n\r\nYour mess",
        b"age \xff could not\r\n.be deliv",
        b"ered.\r\n\r\n.\r\n",
    ];
    let r = bdat_transaction(&mut c, "", &tagged, &chunks);
    assert_eq!(r.iter().map(|r| code(r)).collect::<Vec<_>>(), [250, 250, 250, 250, 250], "{r:?}");
    assert!(r[4].contains("queued as CHUNK"), "the final reply is the downstream's: {r:?}");

    // Backscatter by BDAT: refused after the chunk; the session stays in step.
    let r = bdat_transaction(&mut c, "", "carol@example.com", &[b"Subject: backscatter\r\n\r\nspam\r\n"]);
    assert_eq!(code(&r[1]), 250, "{r:?}");
    assert!(r[2].starts_with("550 5.7.1"), "{r:?}");
    let r = bdat_transaction(
        &mut c,
        "alice@remote.example",
        "dave@example.com",
        &[b"Subject: hi\r\n\r\n", b"hello\r\n"],
    );
    assert_eq!(r.iter().map(|r| code(r)).collect::<Vec<_>>(), [250, 250, 250, 250], "{r:?}");
    assert_eq!(code(&c.cmd("QUIT")), 221);

    let m = cs.messages(2);
    assert_eq!(m.len(), 2, "{m:?}");
    assert_eq!(m[0]["via"], "BDAT");
    assert_eq!(m[0]["mail_from"], "<>");
    // The downstream offers DSN: the stripped recipient carries the tagged one as ORCPT.
    assert_eq!(
        m[0]["rcpts"],
        serde_json::json!([format!("RCPT TO:<bob@example.com> ORCPT=rfc822;{}", xtext(&tagged))])
    );
    assert_eq!(
        m[0]["chunks"],
        serde_json::json!(chunks.iter().map(|c| c.len()).collect::<Vec<_>>())
    );
    assert!(unhex(m[0]["data"].as_str().unwrap()) == chunks.concat());
    assert_eq!(m[1]["mail_from"], "<alice@remote.example>");
    assert_eq!(m[1]["rcpts"], serde_json::json!(["RCPT TO:<dave@example.com>"]));
    assert_eq!(unhex(m[1]["data"].as_str().unwrap()), b"Subject: hi\r\n\r\nhello\r\n");
    wait_log(&p, "reason=untagged action=refused-at-data", 1);
    drop(p);

    // Monitor mode: the header goes first, as a chunk of its own; the client's follow unchanged.
    let p = Proxy::start(&cs.forward(), "enforce = false\n");
    let mut c = Client::connect(&p.addr);
    c.reply();
    c.cmd("EHLO mx.remote.example");
    let chunks: [&[u8]; 2] = [b"Subject: backscatter\r\n\r\n", b"monitored \xe9\r\n"];
    let r = bdat_transaction(&mut c, "", "carol@example.com", &chunks);
    assert_eq!(r.iter().map(|r| code(r)).collect::<Vec<_>>(), [250, 250, 250, 250], "{r:?}");
    let m = cs.messages(3);
    assert_eq!(m.len(), 3, "{m:?}");
    assert_eq!(
        m[2]["chunks"],
        serde_json::json!([MONITOR_BACKSCATTER.len(), chunks[0].len(), chunks[1].len()])
    );
    let mut want = MONITOR_BACKSCATTER.as_bytes().to_vec();
    want.extend_from_slice(&chunks.concat());
    assert_eq!(unhex(m[2]["data"].as_str().unwrap()), want);
    assert_eq!(m[2]["rcpts"], serde_json::json!(["RCPT TO:<carol@example.com>"]));
    // One message in two chunks is one monitored transaction, logged once.
    wait_log(&p, "action=delivered-monitor", 1);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(log(&p).matches("action=delivered-monitor").count(), 1, "{}", log(&p));
}

/// Found while writing these tests: the proxy relays BDAT even when the downstream did not
/// offer CHUNKING. Such a server answers `BDAT` with 500 and then reads the chunk's octets
/// as commands, which the proxy never judged: a bounce smuggled inside a chunk reaches the
/// MTA unchecked, and every later reply is off by several.
#[test]
fn bdat_is_not_relayed_to_a_downstream_without_chunking() {
    let Some((sink, _t)) = setup() else { return };
    let p = Proxy::start(&format!("127.0.0.1:{}", sink.port), "");
    let mut c = Client::connect(&p.addr);
    assert_eq!(code(&c.reply()), 220);
    let ehlo = c.cmd("EHLO mx.remote.example");
    assert!(!ehlo.contains("CHUNKING"), "aiosmtpd does not offer CHUNKING: {ehlo}");
    let inner = b"MAIL FROM:<>\r\nRCPT TO:<carol@example.com>\r\nDATA\r\nSubject: smuggled\r\n\r\nbackscatter\r\n.\r\n";
    let mut bdat = format!("BDAT {} LAST\r\n", inner.len()).into_bytes();
    bdat.extend_from_slice(inner);
    c.send(&bdat);
    let r = c.reply();
    assert!(r.starts_with('5'), "{r}");
    // Still in step: VRFY's own answer (aiosmtpd: 252), not the 250 of a smuggled command.
    let r = c.cmd("VRFY carol@example.com");
    assert_eq!(code(&r), 252, "{r}");
    assert_eq!(code(&c.cmd("QUIT")), 221);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        sink.messages(0).is_empty(),
        "a bounce nobody judged was delivered: {:?}",
        sink.messages(0)
    );
}

#[test]
fn monitor_mode_marks_bounces_with_a_header() {
    let Some((sink, _t)) = setup() else { return };
    let p = Proxy::start(&format!("127.0.0.1:{}", sink.port), "enforce = false\n");
    let tagged = p.sign(TODAY, "bob@example.com");
    for rcpt in ["carol@example.com", tagged.as_str()] {
        let out = p.session(&bounce(&[rcpt]));
        assert_eq!(codes(&out), [220, 250, 250, 250, 354, 250, 221], "{rcpt}: {out}");
    }
    let out = p.session(
        format!("EHLO x\r\nMAIL FROM:<alice@remote.example>\r\nRCPT TO:<dave@example.com>\r\nDATA\r\n{BOUNCE_BODY}.\r\nQUIT\r\n")
            .as_bytes(),
    );
    assert_eq!(codes(&out), [220, 250, 250, 250, 354, 250, 221], "{out}");
    let m = sink.messages(3);
    assert_eq!(m.len(), 3);
    assert_eq!(sink_data(&m[0]), format!("{MONITOR_BACKSCATTER}{BOUNCE_BODY}").as_bytes());
    assert_eq!(m[1]["rcpt_tos"], serde_json::json!(["bob@example.com"]));
    assert_eq!(sink_data(&m[1]), format!("{MONITOR_VALID}{BOUNCE_BODY}").as_bytes());
    assert_eq!(sink_data(&m[2]), BOUNCE_BODY.as_bytes(), "normal mail gets no X-BATV header");
}

/// Issue 13: the downstream gets each path as batv judged it: the null sender in any
/// spelling as `<>`, a trailing dot, comments and a source route gone, a valid tag stripped.
#[test]
fn paths_are_relayed_as_judged() {
    let Some((sink, _t)) = setup() else { return };
    let p = Proxy::start(&format!("127.0.0.1:{}", sink.port), "");
    let tagged = p.sign(TODAY, "bob@example.com");
    let out = p.session(
        format!(
            "EHLO x\r\nMAIL FROM:<@relay.example:>\r\nRCPT TO:<{tagged}.>\r\n\
             RCPT TO:<postmaster@example.com (the postmaster)>\r\nRCPT TO:<@a.example,@b.example:abuse@example.com>\r\n\
             DATA\r\n{BOUNCE_BODY}.\r\nQUIT\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(codes(&out), [220, 250, 250, 250, 250, 250, 354, 250, 221], "{out}");
    let out = p.session(
        format!(
            "EHLO x\r\nMAIL FROM:<@a.example:alice@remote.example>\r\nRCPT TO:<carol@example.org.>\r\nDATA\r\n{BOUNCE_BODY}.\r\nQUIT\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(codes(&out), [220, 250, 250, 250, 354, 250, 221], "{out}");
    let m = sink.messages(2);
    assert_eq!(m.len(), 2);
    assert_eq!(m[0]["mail_from"], "<>");
    assert_eq!(
        m[0]["rcpt_tos"],
        serde_json::json!(["bob@example.com", "postmaster@example.com", "abuse@example.com"])
    );
    assert_eq!(m[1]["mail_from"], "alice@remote.example");
    assert_eq!(m[1]["rcpt_tos"], serde_json::json!(["carol@example.org"]));
}

/// A bounce to postmaster (always passes) on a raw client, up to the 354.
fn up_to_data(addr: &str) -> (Client, Vec<String>) {
    let mut c = Client::connect(addr);
    let r = vec![
        c.reply(),
        c.cmd("EHLO x"),
        c.cmd("MAIL FROM:<>"),
        c.cmd("RCPT TO:<postmaster@example.com>"),
        c.cmd("DATA"),
    ];
    assert_eq!(code(&r[4]), 354, "{r:?}");
    (c, r)
}

/// `up_to_data`, then a long message: the replies, and whatever follows.
fn after_data(addr: &str) -> (Vec<String>, String) {
    let (mut c, mut r) = up_to_data(addr);
    let mut body = BOUNCE_BODY.repeat(200).into_bytes();
    body.extend_from_slice(b".\r\n");
    c.send(&body);
    r.push(c.reply());
    let rest = c.rest();
    (r, rest)
}

#[test]
fn downstream_faults_during_data() {
    // The downstream reads a little of the message and hangs up.
    let Some(cs) = ChunkSink::start(&["--close-in-data"]) else { return };
    let p = Proxy::start(&cs.forward(), "");
    let (r, rest) = after_data(&p.addr);
    assert!(r[5].starts_with("421 4.4.2"), "{r:?} {rest}");
    assert!(!rest.contains("250"), "{rest}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(cs.messages(0).is_empty());
    drop(p);

    // The downstream's 451 at the end of data is the client's, verbatim.
    let Some(cs) = ChunkSink::start(&["--data-reply", "451 4.3.0 Queue file write error, try again"]) else {
        return;
    };
    let p = Proxy::start(&cs.forward(), "");
    let (mut c, mut r) = up_to_data(&p.addr);
    c.send(format!("{BOUNCE_BODY}.\r\n").as_bytes());
    r.push(c.reply());
    assert_eq!(r[5], "451 4.3.0 Queue file write error, try again\r\n", "{r:?}");
    // The session goes on.
    assert_eq!(code(&c.cmd("NOOP")), 250);
    assert_eq!(code(&c.cmd("QUIT")), 221);
    assert!(cs.messages(0).is_empty());
}

fn set_config(p: &Proxy, text: &str) {
    std::fs::write(&p.config, text).unwrap();
}

#[test]
fn sighup_reloads_the_config_without_dropping_sessions() {
    let Some((sink, _t)) = setup() else { return };
    let p = Proxy::start(&format!("127.0.0.1:{}", sink.port), "");
    let mut c = Client::connect(&p.addr);
    assert_eq!(code(&c.reply()), 220);
    assert_eq!(code(&c.cmd("EHLO mx.remote.example")), 250);
    assert_eq!(code(&c.cmd("MAIL FROM:<>")), 250);

    let original = std::fs::read_to_string(&p.config).unwrap();
    set_config(&p, &format!("{original}enforce = false\n"));
    sighup(&p);
    wait_log(&p, "reloaded (configuration", 1);

    // The open transaction keeps the snapshot taken at MAIL: still enforcing.
    assert_eq!(code(&c.cmd("RCPT TO:<carol@example.com>")), 250);
    let r = c.cmd("DATA");
    assert!(r.starts_with("550 5.7.1"), "{r}");
    // Its next transaction takes the new settings: monitor.
    assert_eq!(code(&c.cmd("MAIL FROM:<>")), 250);
    assert_eq!(code(&c.cmd("RCPT TO:<carol@example.com>")), 250);
    assert_eq!(code(&c.cmd("DATA")), 354);
    c.send(format!("{BOUNCE_BODY}.\r\n").as_bytes());
    assert_eq!(code(&c.reply()), 250);
    assert_eq!(code(&c.cmd("QUIT")), 221);
    // And so does a new session.
    let out = p.session(&bounce(&["carol@example.com"]));
    assert_eq!(codes(&out), [220, 250, 250, 250, 354, 250, 221], "{out}");
    let m = sink.messages(2);
    assert_eq!(m.len(), 2);
    for x in &m {
        assert_eq!(sink_data(x), format!("{MONITOR_BACKSCATTER}{BOUNCE_BODY}").as_bytes());
    }

    // A broken config is not loaded; the proxy goes on with the settings it has (monitor).
    set_config(&p, "sign_domains = [\"example.com\"]\n[proxy]\nenforce = maybe\n");
    sighup(&p);
    wait_log(&p, "configuration not reloaded", 1);
    assert_eq!(log(&p).matches("reloaded (configuration").count(), 1);
    let out = p.session(&bounce(&["carol@example.com"]));
    assert_eq!(codes(&out), [220, 250, 250, 250, 354, 250, 221], "{out}");
    assert_eq!(sink.messages(3).len(), 3);
}

#[test]
fn new_keys_are_picked_up_by_sighup_and_by_the_directory_poll() {
    let Some((sink, _t)) = setup() else { return };
    // The poll below tries a tag of a key not yet loaded (unknown-key) until it is: those
    // count as failed tags, which is not what this test is about.
    let p = Proxy::start(&format!("127.0.0.1:{}", sink.port), "max_failed_tags = 1000\n");
    let old = p.sign(TODAY, "bob@example.com");
    let rotate = || {
        let o = Command::new(BIN)
            .arg("--keys")
            .arg(&p.keys)
            .args(["--now", TODAY, "keys", "rotate"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    rotate();
    let new = p.sign(TODAY, "bob@example.com");
    assert_ne!(old[5..6], new[5..6], "signed with a new key id: {old} {new}");
    sighup(&p);
    // SIGHUP reloads the config and the keys, in one step.
    wait_log(&p, "reloaded (configuration and keys)", 1);
    let out = p.session(&bounce(&[&new]));
    assert_eq!(codes(&out), [220, 250, 250, 250, 354, 250, 221], "{out}");
    // The retired key still verifies its tags.
    let out = p.session(&bounce(&[&old]));
    assert_eq!(codes(&out), [220, 250, 250, 250, 354, 250, 221], "{out}");

    // Without a signal: the keys directory is checked every 2 s.
    rotate();
    let newer = p.sign(TODAY, "bob@example.com");
    assert_ne!(new[5..6], newer[5..6]);
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let out = p.session(&bounce(&[&newer]));
        if codes(&out) == [220, 250, 250, 250, 354, 250, 221] {
            break;
        }
        assert_eq!(codes(&out), [220, 250, 250, 250, 550, 221], "{out}");
        assert!(Instant::now() < deadline, "key {} never picked up: {}", &newer[5..6], log(&p));
        std::thread::sleep(Duration::from_millis(200));
    }
    let m = sink.messages(3);
    assert_eq!(m.len(), 3);
    assert!(m.iter().all(|x| x["rcpt_tos"] == serde_json::json!(["bob@example.com"])));
    for k in [&old[5..6], &new[5..6], &newer[5..6]] {
        wait_log(&p, &format!("reason=valid action=relayed key={k} "), 1);
    }
}

#[test]
fn failed_tag_and_error_limits_close_the_session() {
    let Some((sink, _t)) = setup() else { return };
    let p = Proxy::start(&format!("127.0.0.1:{}", sink.port), "max_failed_tags = 2\nmax_errors = 3\n");
    let forged: Vec<String> = ["bob", "carol", "dave"]
        .iter()
        .map(|u| forge(&p.sign(TODAY, &format!("{u}@example.com"))))
        .collect();
    // Expired tags were once ours and do not count (batv.toml(5)): three of them pass
    // first; then two forged ones use up the limit and the third closes the session.
    let expired: Vec<String> = ["bob", "carol", "dave"]
        .iter()
        .map(|u| p.sign("2026-10-01", &format!("{u}@example.com")))
        .collect();
    let out = p.session(&bounce(&[
        &expired[0],
        &expired[1],
        &expired[2],
        &forged[0],
        &forged[1],
        &forged[2],
    ]));
    assert_eq!(codes(&out), [220, 250, 250, 250, 250, 250, 250, 250, 421], "{out}");
    assert!(out.lines().last().unwrap().starts_with("421 4.7.0"), "{out}");
    wait_log(&p, "action=closed-too-many-invalid-tags", 1);
    // The count is per client, over sessions: this client has used up its guesses, so its
    // next tagged recipient closes the session unchecked, even a valid tag (it would be
    // one more guess); untagged recipients are judged as ever.
    let valid = p.sign(TODAY, "bob@example.com");
    let out = p.session(&bounce(&["postmaster@example.com", &valid]));
    assert_eq!(codes(&out), [220, 250, 250, 250, 421], "{out}");
    wait_log(&p, "action=closed-too-many-invalid-tags", 2);

    // Errors: RCPT before MAIL (503 from the downstream), two unknown commands (500).
    let out = p.session(b"EHLO x\r\nRCPT TO:<bob@example.com>\r\nFROB\r\nXYZZY now\r\nNOOP\r\nQUIT\r\n");
    assert_eq!(codes(&out), [220, 250, 503, 500, 500, 421], "{out}");
    assert!(out.ends_with("421 4.7.0 Too many errors, closing\r\n"), "{out}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(sink.messages(0).is_empty());

    // Monitor mode refuses nothing, not even a tag guesser: it logs what it would do.
    let m = Proxy::start(&format!("127.0.0.1:{}", sink.port), "max_failed_tags = 2\nenforce = false\n");
    let forged_m: Vec<String> = ["bob", "carol", "dave"]
        .iter()
        .map(|u| forge(&m.sign(TODAY, &format!("{u}@example.com"))))
        .collect();
    let out = m.session(&bounce(&[&forged_m[0], &forged_m[1], &forged_m[2]]));
    assert_eq!(codes(&out), [220, 250, 250, 250, 250, 250, 354, 250, 221], "{out}");
    wait_log(&m, "action=would-close-too-many-invalid-tags", 1);
}

#[test]
fn metrics_endpoint() {
    let Some((sink, _t)) = setup() else { return };
    let port = common::free_port();
    let p = Proxy::start(
        &format!("127.0.0.1:{}", sink.port),
        &format!("metrics_listen = \"127.0.0.1:{port}\"\n"),
    );
    let out = p.session(&bounce(&["carol@example.com"]));
    assert_eq!(codes(&out), [220, 250, 250, 250, 550, 221], "{out}");
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.0 200 "), "{resp}");
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
    let lines: Vec<&str> = body.lines().collect();
    for want in [
        "batv_transactions_total{action=\"refused\"} 1",
        "batv_transactions_total{action=\"monitored\"} 0",
        "batv_rcpt_total{verdict=\"backscatter\"} 1",
        "batv_rcpt_total{verdict=\"bounce-ok\"} 0",
        "batv_connections_total 1",
    ] {
        assert!(lines.contains(&want), "{want} in {body}");
    }

    // Only loopback addresses may serve metrics.
    let cfg = p.dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "sign_domains = [\"example.com\"]\n[proxy]\nmetrics_listen = \"192.0.2.1:9\"\n",
    )
    .unwrap();
    let o = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .args(["config", "check"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(78), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("{}:3:", cfg.display())) && err.contains("loopback"), "{err}");
}
