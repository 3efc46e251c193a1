//! Fresh bounces from real MTAs, judged end to end by `batv check`.
//!
//! The corpus in ../shared/data/bounces was generated once; these tests make new bounces at
//! test time, so a change in how Postfix or Exim words or shapes its DSNs (or in batv's
//! parser) shows up here. Everything runs on loopback with its own configuration and spool:
//!
//! 1. `batv sign` tags alice@example.org (prvs scheme, today's date, a fresh key store).
//! 2. A real MTA is given a message with `MAIL FROM:<the tag>` that it cannot deliver:
//!    - Postfix (a whole one, tests/common/postfix.rs): an unknown local user (local(8)
//!      bounces it), a next hop answering 550 (Postfix's smtp-sink), and a next hop
//!      answering 450 long enough to trigger a delay warning (`delay_warning_time`);
//!    - Exim (one-shot `exim -C CONFIG -odi`): a redirect router failing the recipient, and
//!      a next hop (smtp-sink) answering 550.
//! 3. The MTA delivers its DSN over SMTP to an aiosmtpd capture server (tests/peers/sink.py),
//!    which records the envelope and the message bytes.
//! 4. `batv check --recipient <the bounce's envelope recipient>` must find the tagged sender
//!    in the bounce and call it a real bounce (exit 0), while the same bounce with the tag
//!    removed everywhere, with a tampered tag, or made for the untagged sender is
//!    backscatter (exit 1); `--add-header` writes the verdict and the message unchanged.
//!
//! Peers missing (Postfix unpacked in target/postfix/root, root, Exim, python3-aiosmtpd):
//! the tests skip with a note, except under CI (`CI=true`), where that is a failure. Every
//! wait has a deadline and every process started is stopped by its PID when dropped.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::postfix::{can_run_postfix, free_port, Postfix};
use common::proxy::{postfix_root, SmtpSink};
use common::{python_with_aiosmtpd, require, run_bounded, Output, Sink};

const BIN: &str = env!("CARGO_BIN_EXE_batv");
/// How long an MTA may take to produce and deliver its bounce.
const DELIVERY: Duration = Duration::from_secs(30);
/// How long one command (batv, exim) may run.
const COMMAND: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Running commands with a deadline

// ---------------------------------------------------------------------------------------
// batv: a key store, signing and checking

/// A fresh key store (a random prvs key) protecting example.org; batv uses the real clock.
struct Store {
    dir: tempfile::TempDir,
}

impl Store {
    fn new() -> Store {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("batv.toml"),
            "sign_domains = [\"example.org\"]\nscheme = \"prvs\"\n",
        )
        .unwrap();
        let s = Store { dir };
        let o = s.batv(&["keys", "init"], b"");
        assert_eq!(o.code, 0, "keys init: {}", o.stderr);
        s
    }

    fn batv(&self, args: &[&str], input: &[u8]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(self.dir.path().join("batv.toml"))
            .arg("--keys")
            .arg(self.dir.path().join("keys"))
            .args(args);
        run_bounded(cmd, input, COMMAND)
    }

    /// `batv sign --scheme prvs ADDR`, checked for shape.
    fn sign(&self, addr: &str) -> String {
        let o = self.batv(&["sign", "--scheme", "prvs", addr], b"");
        assert_eq!(o.code, 0, "sign: {}", o.stderr);
        let tagged = String::from_utf8(o.stdout).unwrap().trim().to_string();
        let (tag, rest) = tagged.strip_prefix("prvs=").and_then(|t| t.split_once('=')).unwrap_or(("", ""));
        assert!(
            rest == addr && tag.len() == 10 && tag.bytes().all(|b| b.is_ascii_hexdigit()),
            "not a prvs tag of {addr}: {tagged}"
        );
        tagged
    }

    /// `batv check ARGS < raw`: (exit code, stdout).
    fn check(&self, args: &[&str], raw: &[u8]) -> (i32, Vec<u8>) {
        let mut a = vec!["check"];
        a.extend_from_slice(args);
        let o = self.batv(&a, raw);
        assert!(o.stderr.is_empty(), "batv check {args:?}: {}", o.stderr);
        (o.code, o.stdout)
    }
}

/// `key=value` fields of check's output line.
fn field<'a>(out: &'a str, key: &str) -> &'a str {
    out.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or("")
}

/// Replace every occurrence of `from` in `raw` by `to`.
fn replace(raw: &[u8], from: &str, to: &str) -> Vec<u8> {
    let (from, mut out, mut i) = (from.as_bytes(), Vec::with_capacity(raw.len()), 0);
    while i < raw.len() {
        if raw[i..].starts_with(from) {
            out.extend_from_slice(to.as_bytes());
            i += from.len();
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    out
}

fn contains(raw: &[u8], needle: &str) -> bool {
    raw.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// The same tag with one hash digit changed (still well-formed, no longer valid).
fn tamper(tagged: &str) -> String {
    let mut b = tagged.as_bytes().to_vec();
    let i = "prvs=".len() + 9;
    b[i] = if b[i] == b'0' { b'1' } else { b'0' };
    String::from_utf8(b).unwrap()
}

/// A bounce an MTA delivered to the capture server.
struct Bounce {
    what: String,
    mail_from: String,
    rcpt: String,
    raw: Vec<u8>,
}

/// `--add-header` must put `X-BATV: VERDICT; reason=REASON; kind=delivery-report` in front
/// of the message, byte for byte unchanged, and exit 0.
fn assert_header(s: &Store, b: &Bounce, rcpt: &str, raw: &[u8], verdict: &str) {
    let (code, out) = s.check(&["--sender", "", "--recipient", rcpt, "--add-header"], raw);
    let header = format!("X-BATV: {verdict}; kind=delivery-report\r\n");
    assert_eq!(code, 0, "{}: --add-header exits 0", b.what);
    assert!(
        out.starts_with(header.as_bytes()),
        "{}: expected {header:?}, got {:?}",
        b.what,
        String::from_utf8_lossy(&out[..out.len().min(120)])
    );
    assert!(
        out[header.len()..] == *raw,
        "{}: the message after X-BATV: is byte-identical",
        b.what
    );
}

/// The whole judgement of a bounce to `tagged` (the tag of `plain`): valid as delivered,
/// backscatter without its tag or with a forged one.
fn assert_real_bounce(s: &Store, b: &Bounce, tagged: &str, plain: &str) {
    let what = &b.what;
    assert_eq!(b.mail_from, "", "{what}: a bounce has the null sender");
    assert_eq!(b.rcpt, tagged, "{what}: the bounce goes to the tagged sender");
    assert!(
        contains(&b.raw, "multipart/report") && contains(&b.raw, "report-type=delivery-status"),
        "{what}: not a DSN:\n{}",
        String::from_utf8_lossy(&b.raw)
    );

    // The library finds the tagged sender in the returned message.
    let r = batv::bounce::inspect(&b.raw, 1 << 20, true);
    assert_eq!(r.kind, batv::bounce::Kind::DeliveryReport, "{what}");
    assert_eq!(
        r.original_sender.as_deref(),
        Some(tagged),
        "{what}: original sender ({:?})",
        r.source
    );

    // As delivered, with the envelope the MTA used: a real bounce.
    let (code, out) = s.check(&["--sender", "", "--recipient", &b.rcpt], &b.raw);
    let out = String::from_utf8(out).unwrap();
    assert_eq!(
        (code, field(&out, "verdict"), field(&out, "reason"), field(&out, "kind")),
        (0, "bounce-with-valid-tag", "valid", "delivery-report"),
        "{what}: {out}"
    );
    assert_eq!(field(&out, "original_sender"), tagged, "{what}: {out}");
    assert_eq!(field(&out, "recipient"), tagged, "{what}: {out}");
    // Without --sender and --recipient (no X-Original-To either): the returned message
    // carries the tag, but a tag vouches only for its own address, and whose bounce this
    // is nobody said: delivered, unjudged.
    let (code, out) = s.check(&[], &b.raw);
    let out = String::from_utf8(out).unwrap();
    assert_eq!(
        (code, field(&out, "verdict"), field(&out, "reason")),
        (0, "unknown", "no-recipient"),
        "{what}: {out}"
    );
    // Delivered by an MTA that names the recipient (Postfix's Delivered-To, after the tag
    // was stripped): the returned sender's tag is the recipient's own.
    let delivered = [format!("Delivered-To: {plain}\r\n").as_bytes(), &b.raw[..]].concat();
    let (code, out) = s.check(&[], &delivered);
    let out = String::from_utf8(out).unwrap();
    assert_eq!((code, field(&out, "verdict")), (0, "bounce-with-valid-tag"), "{what}: {out}");
    // An MTA that stripped the envelope tag before delivery: the returned message still has it.
    let (code, out) = s.check(&["--sender", "", "--recipient", plain], &b.raw);
    let out = String::from_utf8(out).unwrap();
    assert_eq!(
        (code, field(&out, "verdict")),
        (0, "bounce-with-valid-tag"),
        "{what} (envelope stripped): {out}"
    );
    assert_header(s, b, &b.rcpt, &b.raw, "bounce-with-valid-tag; reason=valid");

    // The tag removed everywhere (envelope, headers, returned message): backscatter.
    let stripped = replace(&b.raw, tagged, plain);
    assert!(!contains(&stripped, "prvs="), "{what}: a tag is left after stripping");
    let (code, out) = s.check(&["--sender", "", "--recipient", plain], &stripped);
    let out = String::from_utf8(out).unwrap();
    assert_eq!(
        (code, field(&out, "verdict"), field(&out, "reason")),
        (1, "backscatter", "untagged"),
        "{what} (tag stripped): {out}"
    );
    assert_eq!(field(&out, "original_sender"), plain, "{what} (tag stripped): {out}");
    assert_header(s, b, plain, &stripped, "backscatter; reason=untagged");
    // The tag left only on the envelope recipient: that is enough.
    let (code, out) = s.check(&["--sender", "", "--recipient", &b.rcpt], &stripped);
    let out = String::from_utf8(out).unwrap();
    assert_eq!(
        (code, field(&out, "verdict")),
        (0, "bounce-with-valid-tag"),
        "{what} (tag on the envelope only): {out}"
    );

    // A forged tag everywhere: backscatter.
    let forged = tamper(tagged);
    let tampered = replace(&b.raw, tagged, &forged);
    let (code, out) = s.check(&["--sender", "", "--recipient", &forged], &tampered);
    let out = String::from_utf8(out).unwrap();
    assert_eq!(
        (code, field(&out, "verdict"), field(&out, "reason")),
        (1, "backscatter", "bad-signature"),
        "{what} (forged tag): {out}"
    );
    assert_header(s, b, &forged, &tampered, "backscatter; reason=bad-signature");
}

/// A bounce made by the MTA for the untagged sender: backscatter.
fn assert_backscatter(s: &Store, b: &Bounce, plain: &str) {
    let what = &b.what;
    assert_eq!((b.mail_from.as_str(), b.rcpt.as_str()), ("", plain), "{what}: envelope");
    assert!(!contains(&b.raw, "prvs="), "{what}: no tag anywhere");
    let r = batv::bounce::inspect(&b.raw, 1 << 20, true);
    assert_eq!(r.kind, batv::bounce::Kind::DeliveryReport, "{what}");
    assert_eq!(r.original_sender.as_deref(), Some(plain), "{what}: original sender");
    let (code, out) = s.check(&["--sender", "", "--recipient", plain], &b.raw);
    let out = String::from_utf8(out).unwrap();
    assert_eq!(
        (code, field(&out, "verdict"), field(&out, "reason"), field(&out, "kind")),
        (1, "backscatter", "untagged", "delivery-report"),
        "{what}: {out}"
    );
    assert_eq!(field(&out, "original_sender"), plain, "{what}: {out}");
    assert_header(s, b, plain, &b.raw, "backscatter; reason=untagged");
}

// ---------------------------------------------------------------------------------------
// The capture server and an SMTP client

/// The capture server's messages once there are `n` (the MTAs deliver asynchronously).
fn captured(sink: &Sink, n: usize, log: &dyn Fn() -> String) -> Vec<Bounce> {
    let deadline = Instant::now() + DELIVERY;
    let records = loop {
        // Each call waits up to 10 s itself.
        let v = sink.messages(n);
        if v.len() >= n {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} bounces captured; MTA log:\n{}",
            v.len(),
            log()
        );
    };
    records
        .iter()
        .map(|r| {
            let data = r["data"].as_str().unwrap();
            assert!(!data.is_empty() || r["size"] == 0, "message too big for the sink's record");
            Bounce {
                what: String::new(),
                // aiosmtpd records the null sender as "<>".
                mail_from: r["mail_from"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string(),
                rcpt: {
                    let rcpts = r["rcpt_tos"].as_array().unwrap();
                    assert_eq!(rcpts.len(), 1, "one recipient per bounce: {r}");
                    rcpts[0].as_str().unwrap().to_string()
                },
                // The sink records the bytes as latin-1 text.
                raw: data.chars().map(|c| u8::try_from(u32::from(c)).unwrap()).collect(),
            }
        })
        .collect()
}

/// The one captured bounce to `rcpt`, named `what`.
fn bounce_to(bounces: &[Bounce], rcpt: &str, what: &str) -> Bounce {
    let mut found = bounces.iter().filter(|b| b.rcpt == rcpt);
    let b = found.next().unwrap_or_else(|| panic!("{what}: no bounce to {rcpt}"));
    assert!(found.next().is_none(), "{what}: two bounces to {rcpt}");
    Bounce {
        what: what.to_string(),
        mail_from: b.mail_from.clone(),
        rcpt: b.rcpt.clone(),
        raw: b.raw.clone(),
    }
}

/// The message every test sends (CRLF; no line starts with a dot). As with BATV in real
/// life, only the envelope sender is tagged, never From:.
fn message(to: &str, subject: &str) -> String {
    format!(
        "From: Alice <alice@example.org>\r\nTo: <{to}>\r\nSubject: {subject}\r\n\
         Message-ID: <{}.live@example.org>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\r\nHello,\r\n\r\nthis cannot be delivered.\r\n",
        subject.replace(' ', "-")
    )
}

/// Read one SMTP reply (all its lines); panics on a timeout or a closed connection.
fn reply(r: &mut BufReader<TcpStream>) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        let n = r
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("SMTP reply: {e} (so far {all:?})"));
        assert!(n > 0, "connection closed (so far {all:?})");
        all.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            return all;
        }
    }
}

/// Submit one message over SMTP to 127.0.0.1:port; every command must succeed. `mail` and
/// each of `rcpts` are the MAIL FROM and RCPT TO arguments (`<address>` and any ESMTP
/// parameters).
fn submit(port: u16, mail: &str, rcpts: &[&str], data: &str) {
    assert!(!data.contains("\n."), "no dot-stuffing here");
    let mut script = vec![
        (String::new(), "220"),
        ("EHLO client.example.org\r\n".to_string(), "250"),
        (format!("MAIL FROM:{mail}\r\n"), "250"),
    ];
    script.extend(rcpts.iter().map(|r| (format!("RCPT TO:{r}\r\n"), "250")));
    script.extend([
        ("DATA\r\n".to_string(), "354"),
        (format!("{data}.\r\n"), "250"),
        ("QUIT\r\n".to_string(), "221"),
    ]);
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    for (cmd, want) in script {
        w.write_all(cmd.as_bytes()).unwrap();
        let got = reply(&mut r);
        assert!(got.starts_with(want), "{cmd:?}: {got}");
    }
}

// ---------------------------------------------------------------------------------------
// Postfix

/// The peers the Postfix tests need, or `None` (skip) outside CI.
fn postfix_peers() -> Option<PathBuf> {
    let root = postfix_root()?;
    if !can_run_postfix() || !require("python3-aiosmtpd", python_with_aiosmtpd()) {
        return None;
    }
    Some(root)
}

/// A Postfix on 127.0.0.1:`smtpd` that is the final destination for example.com (any local
/// part accepted, so local(8) bounces unknown users), relays remote.example to 127.0.0.1:
/// `next_hop` and sends mail for example.org (the bounces) to the capture server.
/// (`mydestination` overrides the empty one of tests/common/postfix.rs: the last entry wins,
/// and Postfix logs a harmless "overriding earlier entry" warning.)
fn postfix(root: &Path, smtpd: u16, capture: u16, next_hop: u16, extra: &str) -> Postfix {
    let main = format!(
        "mynetworks = 127.0.0.0/8
mydestination = example.com
local_recipient_maps =
relay_domains = remote.example
transport_maps = inline:{{ remote.example=smtp:[127.0.0.1]:{next_hop}, example.org=smtp:[127.0.0.1]:{capture} }}
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
{extra}"
    );
    let pf = Postfix::start(root, &main, &[format!("127.0.0.1:{smtpd} inet n - n - - smtpd")], &[smtpd]);
    let mut postconf = Command::new(root.join("usr/sbin/postconf"));
    postconf.env("LD_LIBRARY_PATH", root.join("usr/lib/postfix"));
    postconf.arg("-c").arg(pf.dir.path().join("etc")).args(["-h", "mail_version"]);
    let o = run_bounded(postconf, b"", COMMAND);
    eprintln!("postfix: mail_version {}", String::from_utf8_lossy(&o.stdout).trim());
    pf
}

#[test]
fn postfix_unknown_user_bounces_to_the_tag_are_valid_and_untagged_ones_backscatter() {
    let Some(root) = postfix_peers() else { return };
    let t = tempfile::tempdir().unwrap();
    let sink = Sink::start(t.path());
    let s = Store::new();
    let plain = "alice@example.org";
    let tagged = s.sign(plain);
    let smtpd = free_port();
    let pf = postfix(&root, smtpd, sink.port, free_port(), "");

    // One message from the tagged sender, one from the bare address: both to a user that
    // does not exist in Postfix's own domain. Postfix accepts them and local(8) bounces.
    let to = "nosuchuser@example.com";
    submit(smtpd, &format!("<{tagged}>"), &[&format!("<{to}>")], &message(to, "tagged"));
    submit(smtpd, &format!("<{plain}>"), &[&format!("<{to}>")], &message(to, "untagged"));
    let all = captured(&sink, 2, &|| pf.log());
    assert_eq!(all.len(), 2, "exactly two bounces");

    let b = bounce_to(&all, &tagged, "postfix unknown user, tagged sender");
    assert!(
        contains(&b.raw, "unknown user") && contains(&b.raw, "Status: 5.1.1"),
        "{}",
        String::from_utf8_lossy(&b.raw)
    );
    assert!(
        contains(&b.raw, &format!("X-Postfix-Sender: rfc822; {tagged}")),
        "Postfix names the sender"
    );
    assert_real_bounce(&s, &b, &tagged, plain);

    let b = bounce_to(&all, plain, "postfix unknown user, untagged sender");
    assert!(contains(&b.raw, "unknown user"), "{}", String::from_utf8_lossy(&b.raw));
    assert_backscatter(&s, &b, plain);
}

#[test]
fn postfix_next_hop_550_bounce_with_dsn_options_is_valid() {
    let Some(root) = postfix_peers() else { return };
    let t = tempfile::tempdir().unwrap();
    let sink = Sink::start(t.path());
    // The next hop refuses every recipient for good.
    let next_hop = SmtpSink::start(&root, &["-f", "RCPT", "-B", "550 5.1.1 Recipient address rejected: User unknown"]);
    let s = Store::new();
    let plain = "alice@example.org";
    let tagged = s.sign(plain);
    let smtpd = free_port();
    let pf = postfix(&root, smtpd, sink.port, next_hop.port, "");

    // DSN options (RFC 3461): only the headers come back, with the ENVID and ORCPT.
    submit(
        smtpd,
        &format!("<{tagged}> RET=HDRS ENVID=live-envid-1"),
        &["<bob@remote.example> NOTIFY=FAILURE,DELAY ORCPT=rfc822;bob@remote.example"],
        &message("bob@remote.example", "next hop"),
    );
    let all = captured(&sink, 1, &|| pf.log());
    assert_eq!(all.len(), 1, "exactly one bounce");
    let b = bounce_to(&all, &tagged, "postfix next hop 550, RET=HDRS");
    let text = String::from_utf8_lossy(&b.raw).into_owned();
    assert!(text.contains("550 5.1.1 Recipient address rejected"), "{text}");
    assert!(text.contains("text/rfc822-headers"), "RET=HDRS: {text}");
    assert!(text.contains("Original-Envelope-Id: live-envid-1"), "{text}");
    assert!(text.contains("Original-Recipient: rfc822;bob@remote.example"), "{text}");
    assert_real_bounce(&s, &b, &tagged, plain);
}

#[test]
fn postfix_delay_warning_to_the_tag_is_valid() {
    let Some(root) = postfix_peers() else { return };
    let t = tempfile::tempdir().unwrap();
    let sink = Sink::start(t.path());
    // The next hop answers RCPT with 450 after 2 s: by the time Postfix defers the message,
    // it has been queued longer than delay_warning_time.
    let next_hop = SmtpSink::start(&root, &["-r", "RCPT", "-W", "RCPT:2", "-b", "450 4.2.1 Mailbox busy, try later"]);
    let s = Store::new();
    let plain = "alice@example.org";
    let tagged = s.sign(plain);
    let smtpd = free_port();
    let pf = postfix(&root, smtpd, sink.port, next_hop.port, "delay_warning_time = 1s\n");

    let to = "carol@remote.example";
    submit(smtpd, &format!("<{tagged}>"), &[&format!("<{to}>")], &message(to, "delayed"));
    let all = captured(&sink, 1, &|| pf.log());
    let b = bounce_to(&all, &tagged, "postfix delay warning");
    let text = String::from_utf8_lossy(&b.raw).into_owned();
    assert!(
        text.contains("Action: delayed") && text.contains("450 4.2.1 Mailbox busy"),
        "{text}"
    );
    assert!(text.contains("Delayed Mail (still being retried)"), "{text}");
    assert_real_bounce(&s, &b, &tagged, plain);
}

// ---------------------------------------------------------------------------------------
// Exim

/// Exim's binary, if installed.
fn exim_binary() -> Option<PathBuf> {
    ["/usr/sbin/exim4", "/usr/sbin/exim", "/usr/local/sbin/exim"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Exim with a throwaway configuration and spool, run once per message (`-odi`: the message
/// and its bounce are delivered before the command returns).
struct Exim {
    bin: PathBuf,
    dir: tempfile::TempDir,
}

impl Exim {
    /// The peers the Exim tests need, or `None` (skip) outside CI.
    fn find() -> Option<(PathBuf, String)> {
        // -C with a configuration of our own keeps no privilege for a non-root caller, and
        // then Exim cannot write a spool it does not own.
        let root = unsafe { libc::geteuid() } == 0;
        let bin = exim_binary();
        if !require("exim4-daemon-light", bin.is_some())
            || !require("root (Exim with its own configuration)", root)
            || !require("python3-aiosmtpd", python_with_aiosmtpd())
        {
            return None;
        }
        let bin = bin.unwrap();
        let mut bv = Command::new(&bin);
        bv.arg("-bV");
        let o = run_bounded(bv, b"", COMMAND);
        let version = String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").to_string();
        assert!(version.starts_with("Exim version"), "exim -bV: {version} {}", o.stderr);
        eprintln!("exim: {version}");
        Some((bin, version))
    }

    /// Exim is mx.example.net, the final destination for example.net, where every local
    /// part fails ("Unknown user"); mail for example.org (the bounces) goes to 127.0.0.1:
    /// `capture`, mail for remote.example to 127.0.0.1:`next_hop`.
    fn new(bin: PathBuf, capture: u16, next_hop: u16) -> Exim {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Exim writes its spool and logs as its own user (Debian-exim), under a 0700 tempdir.
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        for sub in ["spool", "log"] {
            std::fs::create_dir(d.join(sub)).unwrap();
        }
        let user = ["Debian-exim", "exim"]
            .into_iter()
            .find(|u| {
                let mut c = Command::new("getent");
                c.args(["passwd", u]);
                run_bounded(c, b"", COMMAND).code == 0
            })
            .expect("Exim's user (Debian-exim)");
        let mut chown = Command::new("chown");
        chown.arg(user).arg(d.join("spool")).arg(d.join("log"));
        let o = run_bounded(chown, b"", COMMAND);
        assert_eq!(o.code, 0, "chown: {}", o.stderr);
        let config = format!(
            "primary_hostname = mx.example.net
qualify_domain = example.net
spool_directory = {d}/spool
log_file_path = {d}/log/%slog
keep_environment =
host_lookup =
rfc1413_hosts =

begin routers
unknown_user:
  driver = redirect
  domains = example.net
  allow_fail
  data = :fail: Unknown user
to_capture:
  driver = manualroute
  domains = example.org
  route_list = * 127.0.0.1
  self = send
  transport = capture_smtp
to_next_hop:
  driver = manualroute
  domains = remote.example
  route_list = * 127.0.0.1
  self = send
  transport = next_hop_smtp

begin transports
capture_smtp:
  driver = smtp
  port = {capture}
  allow_localhost
next_hop_smtp:
  driver = smtp
  port = {next_hop}
  allow_localhost

begin retry
* * F,1h,1h
",
            d = d.display()
        );
        // Exim insists that its configuration belongs to root (CONFIGURE_OWNER) and is
        // writable by no one else: a file written by root with mode 0644.
        let path = d.join("exim.conf");
        std::fs::write(&path, config).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        Exim { bin, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log/mainlog")).unwrap_or_default()
    }

    /// `exim -C CONFIG -odi -oi -f SENDER RCPT < message`: accept, deliver (or fail) and send
    /// any bounce, all before returning.
    fn send(&self, sender: &str, rcpt: &str, data: &str) {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-C")
            .arg(self.dir.path().join("exim.conf"))
            .args(["-odi", "-oi", "-f", sender, rcpt])
            .env("TZ", "UTC");
        let o = run_bounded(cmd, data.as_bytes(), COMMAND);
        assert_eq!(o.code, 0, "exim: {}\n{}", o.stderr, self.log());
    }
}

#[test]
fn exim_unknown_user_bounces_to_the_tag_are_valid_and_untagged_ones_backscatter() {
    let Some((bin, _)) = Exim::find() else { return };
    let t = tempfile::tempdir().unwrap();
    let sink = Sink::start(t.path());
    let s = Store::new();
    let plain = "alice@example.org";
    let tagged = s.sign(plain);
    let exim = Exim::new(bin, sink.port, free_port());

    exim.send(&tagged, "nosuchuser@example.net", &message("nosuchuser@example.net", "tagged"));
    exim.send(plain, "nosuchuser@example.net", &message("nosuchuser@example.net", "untagged"));
    let all = captured(&sink, 2, &|| exim.log());
    assert_eq!(all.len(), 2, "exactly two bounces");

    let b = bounce_to(&all, &tagged, "exim unknown user, tagged sender");
    assert!(contains(&b.raw, "Unknown user") && contains(&b.raw, "X-Failed-Recipients: nosuchuser@example.net"));
    assert!(
        contains(&b.raw, &format!("Return-path: <{tagged}>")),
        "the whole message comes back"
    );
    assert_real_bounce(&s, &b, &tagged, plain);

    let b = bounce_to(&all, plain, "exim unknown user, untagged sender");
    assert_backscatter(&s, &b, plain);
}

#[test]
fn exim_next_hop_550_bounce_to_the_tag_is_valid() {
    let Some((bin, _)) = Exim::find() else { return };
    let Some(root) = postfix_root() else { return };
    let t = tempfile::tempdir().unwrap();
    let sink = Sink::start(t.path());
    let next_hop = SmtpSink::start(&root, &["-f", "RCPT", "-B", "550 5.1.1 <bob@remote.example>: no such user"]);
    let s = Store::new();
    let plain = "alice@example.org";
    let tagged = s.sign(plain);
    let exim = Exim::new(bin, sink.port, next_hop.port);

    exim.send(&tagged, "bob@remote.example", &message("bob@remote.example", "next hop"));
    let all = captured(&sink, 1, &|| exim.log());
    assert_eq!(all.len(), 1, "exactly one bounce");
    let b = bounce_to(&all, &tagged, "exim next hop 550");
    let text = String::from_utf8_lossy(&b.raw).into_owned();
    assert!(text.contains("550 5.1.1 <bob@remote.example>: no such user"), "{text}");
    assert!(text.contains("Remote-MTA: dns; 127.0.0.1"), "{text}");
    assert_real_bounce(&s, &b, &tagged, plain);
}
