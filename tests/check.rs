//! `batv check` on real bounces: the generated corpus (made by Exim and Postfix bouncing
//! mail with Exim prvs tags, ../shared/data/bounces/generated), `--add-header`, and inputs
//! that must never break it.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_batv");

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/bounces")
}

/// A key store holding Exim's test secret as prvs key 0, protecting example.org.
struct Store {
    dir: tempfile::TempDir,
}

impl Store {
    fn new() -> Store {
        let dir = tempfile::tempdir().unwrap();
        common::exim_secret_store(dir.path());
        Store { dir }
    }

    /// `batv check ARGS < input` as of the corpus's day: (exit code, stdout, stderr).
    fn run(&self, args: &[&str], input: &[u8]) -> (i32, Vec<u8>, String) {
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(self.dir.path().join("batv.toml"))
            .arg("--keys")
            .arg(self.dir.path().join("keys"))
            .args(["--now", "2026-11-23"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let o = child.wait_with_output().unwrap();
        writer.join().unwrap();
        (
            o.status.code().unwrap_or(-1),
            o.stdout,
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    fn check(&self, args: &[&str], input: &[u8]) -> (i32, String) {
        let mut a = vec!["check"];
        a.extend_from_slice(args);
        let (code, out, err) = self.run(&a, input);
        let out = String::from_utf8(out).unwrap();
        // Only unreadable keys are worth a word on stderr.
        assert!(err.is_empty() || out.contains("keys-unavailable") || code == 75, "{err}");
        (code, out)
    }
}

/// `key=value` fields of check's output line.
fn field<'a>(out: &'a str, key: &str) -> &'a str {
    out.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or("")
}

/// INDEX.tsv rows as maps from column name to value.
fn index() -> Vec<std::collections::HashMap<String, String>> {
    let text = std::fs::read_to_string(corpus().join("generated/INDEX.tsv")).unwrap();
    let mut lines = text.lines();
    let cols: Vec<String> = lines.next().unwrap().split('\t').map(str::to_string).collect();
    lines
        .map(|l| cols.iter().cloned().zip(l.split('\t').map(str::to_string)).collect())
        .collect()
}

#[test]
fn generated_bounces_are_judged_by_their_tags() {
    let s = Store::new();
    let rows = index();
    assert_eq!(rows.len(), 24);
    for row in rows {
        let file = &row["file"];
        let raw = std::fs::read(corpus().join("generated").join(file)).unwrap();
        // The expected values come from INDEX.tsv and the .env files, not from batv.
        let env = std::fs::read_to_string(corpus().join("generated").join(file.replace(".eml", ".env"))).unwrap();
        let rcpt = env
            .lines()
            .find_map(|l| l.strip_prefix("RCPT TO:<"))
            .and_then(|l| l.split('>').next())
            .unwrap();
        assert_eq!(rcpt, row["rcpt_to"], "{file}");
        let kind = if row["top_content_type"].contains("report-type=delivery-status") {
            "delivery-report"
        } else {
            assert!(row["case"].contains("vacation"), "{file}");
            "auto-reply"
        };
        let (verdict, reason, code) = match row["rcpt_tag_by_exim_prvscheck"].as_str() {
            "valid" => ("bounce-with-valid-tag", "valid", 0),
            "invalid" => ("backscatter", "bad-signature", 1),
            "not-prvs" => ("backscatter", "untagged", 1),
            other => panic!("{file}: {other}"),
        };
        // With the envelope the MTA used, and without it: then a tag in the returned
        // message vouches for nobody (whose bounce is it?), but an untagged or forged
        // sender of ours is still backscatter.
        for args in [vec!["--sender", "", "--recipient", rcpt], vec![]] {
            let (c, out) = s.check(&args, &raw);
            assert_eq!(field(&out, "kind"), kind, "{file} {args:?}: {out}");
            assert_eq!(field(&out, "original_sender"), rcpt, "{file} {args:?}: {out}");
            let want = match (args.is_empty(), verdict) {
                (true, "bounce-with-valid-tag") => ("unknown", "no-recipient", 0),
                _ => (verdict, reason, code),
            };
            assert_eq!((field(&out, "verdict"), field(&out, "reason"), c), want, "{file} {args:?}: {out}");
        }
        // An MTA that stripped the tag before delivery: the returned sender still has it,
        // and the recipient comes from the delivering MTA's Delivered-To.
        if let Some(stripped) = rcpt.strip_prefix("prvs=").and_then(|r| r.split_once('=')).map(|x| x.1) {
            let (c, out) = s.check(&["--recipient", stripped], &raw);
            assert_eq!((field(&out, "verdict"), c), (verdict, code), "{file} stripped: {out}");
            let delivered = [format!("Delivered-To: {stripped}\r\n").as_bytes(), &raw[..]].concat();
            let (c, out) = s.check(&[], &delivered);
            assert_eq!((field(&out, "verdict"), c), (verdict, code), "{file} Delivered-To: {out}");
        }
    }
}

#[test]
fn add_header_writes_the_message_back_and_exits_0() {
    let s = Store::new();
    for (file, verdict) in [
        ("postfix-untagged-sender.eml", "backscatter; reason=untagged"),
        ("exim-unknown-user.eml", "bounce-with-valid-tag; reason=valid"),
    ] {
        // As the MTA delivered it, to the address without its tag.
        let raw = std::fs::read(corpus().join("generated").join(file)).unwrap();
        let raw = [&b"Delivered-To: user@example.org\r\n"[..], &raw].concat();
        let (code, out) = s.check(&["--add-header"], &raw);
        assert_eq!(code, 0, "{file}");
        let header = format!("X-BATV: {verdict}; kind=delivery-report\r\n");
        assert!(out.starts_with(&header), "{file}: {}", &out[..200.min(out.len())]);
        assert_eq!(&out.as_bytes()[header.len()..], &raw[..], "{file}: the message itself is unchanged");
    }
    // Without keys: a temporary failure, or with --add-header a header and exit 0.
    std::fs::remove_dir_all(s.dir.path().join("keys")).unwrap();
    let raw = std::fs::read(corpus().join("generated/exim-unknown-user.eml")).unwrap();
    assert_eq!(s.check(&[], &raw).0, 75);
    let (code, out) = s.check(&["--add-header"], &raw);
    assert_eq!(code, 0);
    assert!(out.starts_with("X-BATV: unknown; reason=keys-unavailable;"), "{out}");
}

/// Issue 13, "any tag vouches": every message we send carries a tag, so a spammer can quote
/// a colleague's tagged Return-Path in a bounce to alice. Only a tag on alice's own address
/// (canonically: case and a trailing dot aside) makes a bounce to alice genuine.
#[test]
fn a_tag_vouches_only_for_its_own_address() {
    let s = Store::new();
    // Returned message's sender: prvs=0787ed3775=user@example.org (valid on the day).
    let raw = std::fs::read(corpus().join("generated/exim-unknown-user.eml")).unwrap();
    for (rcpt, verdict, reason, code) in [
        ("user@example.org", "bounce-with-valid-tag", "valid", 0),
        ("USER@Example.ORG.", "bounce-with-valid-tag", "valid", 0),
        ("alice@example.org", "backscatter", "tag-of-another-address", 1),
        ("user.x@example.org", "backscatter", "tag-of-another-address", 1),
        // Not ours to protect: not refused, whatever is quoted.
        ("user@example.net", "unknown", "not-protected", 0),
        // A recipient that cannot be read as an address: no verdict either way.
        ("user @ example.org,", "unknown", "unreadable-recipient", 0),
    ] {
        let (c, out) = s.check(&["--sender", "", "--recipient", rcpt], &raw);
        assert_eq!(
            (field(&out, "verdict"), field(&out, "reason"), c),
            (verdict, reason, code),
            "{rcpt}: {out}"
        );
    }
    // The recipient from the delivering MTA's own field (the topmost), not one the sender
    // forged further down.
    let forged = String::from_utf8_lossy(&raw).replacen("\r\n\r\n", "\r\nX-Original-To: user@example.org\r\n\r\n", 1);
    let delivered = format!("Delivered-To: alice@example.org\r\n{forged}");
    let (c, out) = s.check(&[], delivered.as_bytes());
    assert_eq!(
        (field(&out, "verdict"), field(&out, "recipient"), c),
        ("backscatter", "alice@example.org", 1),
        "{out}"
    );
    let (c, out) = s.check(&[], forged.as_bytes());
    assert_eq!((field(&out, "verdict"), c), ("bounce-with-valid-tag", 0), "{out}");
}

/// Issue 13, "log injection": what a message says is quoted in check's output line, so it
/// cannot add a field.
#[test]
fn values_from_the_message_cannot_add_fields() {
    let s = Store::new();
    let raw = std::fs::read(corpus().join("generated/postfix-untagged-sender.eml")).unwrap();
    let text = String::from_utf8_lossy(&raw).replace("user@example.org", "\"x verdict=bounce-with-valid-tag\"@example.org");
    let (_, out) = s.check(&["--sender", ""], text.as_bytes());
    // The keys a logfmt reader finds: each once, the quoted value whole.
    let (mut keys, mut quoted, mut escaped, mut word) = (Vec::new(), false, false, String::new());
    for c in out.trim_end().chars().chain([' ']) {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                keys.push(word.split('=').next().unwrap_or("").to_string());
                word.clear();
                continue;
            }
            _ => {}
        }
        word.push(c);
    }
    assert_eq!(keys, ["verdict", "reason", "kind", "original_sender", "recipient"], "{out}");
    assert!(out.starts_with("verdict=backscatter "), "{out}");
    assert!(out.contains("original_sender=\"\\\"x verdict="), "{out}");
}

#[test]
fn broken_and_huge_input_is_delivered() {
    let s = Store::new();
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        (
            "binary",
            (0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect(),
        ),
        ("no body", b"From: MAILER-DAEMON@x.example\r\nSubject: Undelivered Mail".to_vec()),
        ("truncated report", {
            let raw = std::fs::read(corpus().join("generated/postfix-untagged-sender.eml")).unwrap();
            raw[..raw.len() / 3].to_vec()
        }),
    ];
    let mut deep = String::from("From: MAILER-DAEMON@x.example\r\nSubject: failure notice\r\nMIME-Version: 1.0\r\n");
    for i in 0..3000 {
        deep.push_str(&format!("Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n"));
    }
    cases.push(("3000 nested multiparts", deep.into_bytes()));
    let mut nested = String::from("Return-Path: <user@example.org>\r\nFrom: user@example.org\r\n\r\nbody\r\n");
    for _ in 0..3000 {
        nested = format!("From: MAILER-DAEMON@x.example\r\nContent-Type: message/rfc822\r\n\r\n{nested}");
    }
    cases.push(("3000 nested messages", nested.into_bytes()));
    let mut big = b"From: MAILER-DAEMON@x.example\r\nSubject: failure notice\r\n\r\n".to_vec();
    big.extend(std::iter::repeat_n(b"0123456789".repeat(99).into_iter().chain(*b"\r\n"), 50_000).flatten());
    cases.push(("50 MB", big));
    for (what, input) in cases {
        let (code, out, err) = s.run(&["check", "--add-header"], &input);
        assert_eq!(code, 0, "{what}: {err}");
        assert!(out.starts_with(b"X-BATV: "), "{what}");
        assert!(out.ends_with(&input), "{what}: the message goes on whole");
        let (code, out) = s.check(&[], &input);
        assert!(code == 0 && !out.contains("backscatter"), "{what}: {out}");
    }
}

/// Rows of the public corpus batv gets wrong today: (file, kind wrong, sender wrong). The
/// test fails when one of them starts to pass, so the list only shrinks.
const KNOWN_MISSES: &[(&str, bool, bool)] = &[];

#[test]
fn public_corpus_matches_the_expectations_written_by_reading_it() {
    let mut rows = Vec::new();
    for f in ["expected-public-a.tsv", "expected-public-b.tsv"] {
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bounces").join(f)).unwrap();
        rows.extend(text.lines().skip(1).map(|l| l.split('\t').map(str::to_string).collect::<Vec<_>>()));
    }
    assert_eq!(rows.len(), 200);
    let (mut kinds, mut senders) = (0, 0);
    for row in &rows {
        let [file, kind, sender, _source] = &row[..] else {
            panic!("{row:?}")
        };
        let raw = std::fs::read(corpus().join("public").join(file)).unwrap();
        let r = batv::bounce::inspect(&raw, 1 << 20, false);
        let got_sender = r.original_sender.as_deref().unwrap_or("-");
        let kind_ok = r.kind.name() == kind;
        let sender_ok = got_sender == sender;
        kinds += kind_ok as usize;
        senders += sender_ok as usize;
        let (kind_miss, sender_miss) = KNOWN_MISSES.iter().find(|m| m.0 == file).map_or((false, false), |m| (m.1, m.2));
        assert_eq!(
            kind_ok,
            !kind_miss,
            "{file}: kind {} (expected {kind}); update KNOWN_MISSES if fixed",
            r.kind.name()
        );
        assert_eq!(
            sender_ok, !sender_miss,
            "{file}: sender {got_sender} (expected {sender}); update KNOWN_MISSES if fixed"
        );
    }
    eprintln!("public corpus: kind right {kinds}/200, original sender right {senders}/200");
}

#[test]
fn ordinary_mail_is_never_a_bounce() {
    let s = Store::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ordinary");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_none_or(|x| x != "eml") {
            continue;
        }
        let raw = std::fs::read(&path).unwrap();
        let r = batv::bounce::inspect(&raw, 1 << 20, false);
        assert_eq!(r.kind, batv::bounce::Kind::NotABounce, "{}", path.display());
        // Also to a protected, untagged recipient: delivered.
        let (code, out) = s.check(&["--recipient", "user@example.org"], &raw);
        assert_eq!((code, field(&out, "verdict")), (0, "not-a-bounce"), "{}: {out}", path.display());
        n += 1;
    }
    assert!(n >= 24, "{n} samples");
}
