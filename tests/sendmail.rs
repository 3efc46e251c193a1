//! `batv sendmail` end to end: a recording fake sendmail proves what reaches the real one
//! (arguments, stdin, exit status); msmtp delivering to an aiosmtpd sink proves a signed
//! envelope leaves the machine; a fake `sendmail -bs` proves the SMTP mode signs MAIL FROM.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod common;
use common::{python_with_aiosmtpd, require, Sink};

const BIN: &str = env!("CARGO_BIN_EXE_batv");
const TODAY: &str = "2026-11-23";

struct Env {
    _t: tempfile::TempDir,
    dir: PathBuf,
    keys: PathBuf,
    config: PathBuf,
}

/// A keys directory, a recording fake sendmail and a config pointing at it.
fn env_with(extra_sendmail: &str, real: Option<&str>) -> Env {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().to_path_buf();
    let keys = dir.join("keys");
    let out = Command::new(BIN)
        .arg("--keys")
        .arg(&keys)
        .args(["--now", TODAY, "keys", "init"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let fake = dir.join("real-sendmail");
    fs::write(&fake, "#!/bin/sh\nd=\"$REC_DIR\"\nprintf '%s\\0' \"$@\" > \"$d/argv\"\ncat > \"$d/stdin\"\nexit $(cat \"$d/exit\" 2>/dev/null || echo 0)\n").unwrap();
    fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let real = real.map(str::to_string).unwrap_or_else(|| fake.display().to_string());
    let config = dir.join("batv.toml");
    fs::write(
        &config,
        format!(
            "sign_domains = [\"example.com\"]\n[sendmail]\npath = \"{real}\"\ndefault_domain = \"example.com\"\nexempt_recipients = [\"@lists.example.org\", \"announce@example.net\"]\n{extra_sendmail}"
        ),
    )
    .unwrap();
    Env { _t: t, dir, keys, config }
}

fn env() -> Env {
    env_with("", None)
}

struct Done {
    code: i32,
    err: String,
}

impl Env {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--config")
            .arg(&self.config)
            .arg("--keys")
            .arg(&self.keys)
            .args(["--now", TODAY, "sendmail"])
            .args(args)
            .env("REC_DIR", &self.dir);
        c
    }

    fn run(&self, args: &[&str], stdin: &[u8]) -> Done {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut sin = child.stdin.take().unwrap();
        let data = stdin.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = sin.write_all(&data);
        });
        let o = child.wait_with_output().unwrap();
        writer.join().unwrap();
        Done {
            code: o.status.code().unwrap_or(-1),
            err: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// The arguments the fake sendmail got.
    fn argv(&self) -> Vec<String> {
        let raw = fs::read(self.dir.join("argv")).expect("the real sendmail was not run");
        let mut v: Vec<String> = raw.split(|&b| b == 0).map(|s| String::from_utf8(s.to_vec()).unwrap()).collect();
        v.pop();
        v
    }

    fn stdin(&self) -> Vec<u8> {
        fs::read(self.dir.join("stdin")).unwrap()
    }

    fn called(&self) -> bool {
        self.dir.join("argv").exists()
    }

    fn reset(&self) {
        let _ = fs::remove_file(self.dir.join("argv"));
        let _ = fs::remove_file(self.dir.join("stdin"));
    }

    fn verify(&self, addr: &str) -> String {
        let o = Command::new(BIN)
            .arg("--keys")
            .arg(&self.keys)
            .args(["--now", TODAY, "verify", addr])
            .output()
            .unwrap();
        assert!(o.status.success(), "{addr} does not verify: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    }
}

const MSG: &[u8] = b"From: Web <www@example.com>\r\nTo: friend@example.net\r\nSubject: hi\r\n\r\nHello.\r\n.leading dot\r\n";

/// Expect `got` to equal `want` except at `at`, where a tag must sit on `original`.
fn assert_signed_at(e: &Env, got: &[String], want: &[&str], at: usize, prefix: &str, original: &str) {
    assert_eq!(got.len(), want.len(), "{got:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if i == at {
            let value = g.strip_prefix(prefix).unwrap_or_else(|| panic!("{g} lacks {prefix}"));
            let bare = value.trim_start_matches('<').trim_end_matches('>');
            assert!(bare.starts_with("prvs=1787"), "{g}");
            assert_eq!(e.verify(bare), original);
        } else {
            assert_eq!(g, w, "argument {i} changed");
        }
    }
}

#[test]
fn callers_argument_lists_change_only_at_the_sender() {
    let e = env();
    // (caller, arguments, index of the sender's argument, its prefix, the sender)
    let fixtures: &[(&str, &[&str], usize, &str, &str)] = &[
        ("PHP mail() with -f", &["-t", "-i", "-fwww@example.com"], 2, "-f", "www@example.com"),
        (
            "git send-email",
            &["-i", "-f", "Alice.Dev@example.com", "bob@example.net", "carol@example.org"],
            2,
            "",
            "Alice.Dev@example.com",
        ),
        (
            "Mutt",
            &["-oem", "-oi", "-f", "<me@example.com>", "--", "friend@example.net"],
            3,
            "",
            "<me@example.com>",
        ),
        (
            "repeated -f: the last wins",
            &["-f", "first@example.com", "-r", "last@example.com", "x@example.net"],
            3,
            "",
            "last@example.com",
        ),
        ("clustered -tf", &["-tfme@example.com", "-i"], 0, "-t", "fme@example.com"),
    ];
    for (name, args, at, prefix, sender) in fixtures {
        e.reset();
        let d = e.run(args, MSG);
        assert_eq!(d.code, 0, "{name}: {}", d.err);
        let (prefix, original) = if *name == "clustered -tf" {
            ("-tf", "me@example.com")
        } else {
            (*prefix, sender.trim_matches(['<', '>']))
        };
        assert_signed_at(&e, &e.argv(), args, *at, prefix, original);
        if name.starts_with("Mutt") {
            assert!(
                e.argv()[3].starts_with("<prvs=") && e.argv()[3].ends_with('>'),
                "brackets kept: {:?}",
                e.argv()
            );
        }
        assert_eq!(e.stdin(), MSG, "{name}: stdin changed");
    }
}

#[test]
fn without_f_the_login_name_is_signed_and_passed_as_f() {
    let e = env();
    let login = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string();
    for args in [
        &["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"][..],
        &["-i", "-odi", "-oem", "-oi", "-t"],
        &["-t"],
    ] {
        e.reset();
        let d = e.run(args, MSG);
        assert_eq!(d.code, 0, "{}", d.err);
        let got = e.argv();
        assert_eq!(got[0], "-f");
        assert_eq!(e.verify(&got[1]), format!("{login}@example.com"));
        assert_eq!(got[2..].iter().map(String::as_str).collect::<Vec<_>>(), *args);
    }
}

#[test]
fn what_is_passed_through_untouched() {
    let e = env();
    let cases: &[&[&str]] = &[
        &["-bp"],
        &["-q"],
        &["-q1h"],
        &["-bi"],
        &["-bv", "someone@example.com"],
        &["-I"],
        &["-f", "", "x@example.net"],
        &["-f", "<>", "x@example.net"],
        &["-f", "me@other.example", "x@example.net"],
        &["-f", "prvs=1787abcdef=me@example.com", "x@example.net"],
        &["-f", "SRS0=HHH=TT=other.example=me@example.com", "x@example.net"],
        &["-f", "me@example.com", "dev@lists.example.org"],
        &["-f", "me@example.com", "x@example.net, Announce@example.net"],
        &["-i", "-f"],
    ];
    for args in cases {
        e.reset();
        let d = e.run(args, MSG);
        assert_eq!(d.code, 0, "{args:?}: {}", d.err);
        assert_eq!(e.argv(), *args, "{args:?}");
        assert_eq!(e.stdin(), MSG);
    }
}

#[test]
fn exemptions_from_headers_with_t() {
    let e = env();
    let to_list = b"To: Dev List <dev@lists.example.org>\r\nSubject: x\r\n\r\nbody\r\n".to_vec();
    let to_friend =
        b"To: Friend <friend@example.net>\r\nCc: a@example.org\r\nSubject: x\r\n\r\nbody\r\nTo: dev@lists.example.org\r\n".to_vec();
    let d = e.run(&["-t", "-i", "-f", "me@example.com"], &to_list);
    assert_eq!(d.code, 0, "{}", d.err);
    assert_eq!(e.argv(), ["-t", "-i", "-f", "me@example.com"]);
    assert_eq!(e.stdin(), to_list);
    e.reset();
    // An exempt address in the body is not a recipient.
    let d = e.run(&["-t", "-i", "-f", "me@example.com"], &to_friend);
    assert_eq!(d.code, 0, "{}", d.err);
    assert!(e.argv()[3].starts_with("prvs="), "{:?}", e.argv());
    assert_eq!(e.stdin(), to_friend);
}

/// 20 MB of every byte value, long lines and dots at line starts.
fn big_message(headers: &[u8]) -> Vec<u8> {
    let mut m = headers.to_vec();
    let mut x: u32 = 12345;
    while m.len() < 20 << 20 {
        for _ in 0..3000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            m.push((x >> 16) as u8);
        }
        m.extend_from_slice(b"\r\n.\r\n..\n\0\r");
    }
    m
}

fn sha(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn stdin_is_byte_identical_for_20_mb() {
    let e = env();
    for (args, headers) in [
        (&["-i", "-f", "me@example.com", "x@example.net"][..], &b"Subject: big\r\n\r\n"[..]),
        (&["-t", "-f", "me@example.com"], b"To: friend@example.net\r\nSubject: big\r\n\r\n"),
    ] {
        e.reset();
        let msg = big_message(headers);
        let d = e.run(args, &msg);
        assert_eq!(d.code, 0, "{}", d.err);
        let got = e.stdin();
        assert_eq!((got.len(), sha(&got)), (msg.len(), sha(&msg)), "{args:?}");
        assert!(e.argv().iter().any(|a| a.starts_with("prvs=")));
    }
}

#[test]
fn exit_status_is_the_real_sendmails() {
    let e = env();
    for code in [0, 75, 67] {
        fs::write(e.dir.join("exit"), code.to_string()).unwrap();
        assert_eq!(e.run(&["-f", "me@example.com", "x@example.net"], MSG).code, code);
        // Also when batv itself feeds the message (-t with exemptions).
        assert_eq!(
            e.run(&["-t", "-f", "me@example.com"], b"To: x@example.net\r\n\r\nhi\r\n").code,
            code
        );
    }
}

#[test]
fn refuses_to_run_itself() {
    let e = env_with("", Some(BIN));
    let d = e.run(&["-f", "me@example.com", "x@example.net"], MSG);
    assert_eq!(d.code, 78, "{}", d.err);
    assert!(d.err.contains("is batv itself"), "{}", d.err);
    // Through a symlink too.
    let link = e.dir.join("sendmail.real");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let e2 = env_with("", Some(link.to_str().unwrap()));
    assert_eq!(e2.run(&["-bp"], b"").code, 78);
}

#[test]
fn on_error_pass_sends_unsigned_tempfail_exits_75() {
    let e = env();
    fs::remove_dir_all(&e.keys).unwrap();
    fs::create_dir(&e.keys).unwrap();
    let d = e.run(&["-f", "me@example.com", "x@example.net"], MSG);
    assert_eq!(d.code, 0, "{}", d.err);
    assert!(d.err.contains("sending unsigned") && d.err.contains("no active key"), "{}", d.err);
    assert_eq!(e.argv(), ["-f", "me@example.com", "x@example.net"]);
    // The wrapper never invents a key.
    assert_eq!(fs::read_dir(&e.keys).unwrap().count(), 0);

    let e = env_with("on_error = \"tempfail\"\n", None);
    fs::remove_file(e.keys.join("key-1.secret")).unwrap();
    let d = e.run(&["-f", "me@example.com", "x@example.net"], MSG);
    assert_eq!(d.code, 75, "{}", d.err);
    assert!(!e.called());
}

#[test]
fn invoked_as_sendmail_it_is_the_wrapper() {
    let t = tempfile::tempdir().unwrap();
    for name in ["sendmail", "mailq", "newaliases"] {
        let link = t.path().join(name);
        std::os::unix::fs::symlink(BIN, &link).unwrap();
        let o = Command::new(&link).arg("-bp").output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        // From the checkout the default config has sendmail.path = /usr/sbin/sendmail.real,
        // which this machine lacks: the wrapper (not the CLI) says so.
        if !Path::new("/usr/sbin/sendmail.real").exists() {
            assert_eq!(o.status.code(), Some(78), "{name}: {err}");
            assert!(
                err.contains("batv sendmail: sendmail.path /usr/sbin/sendmail.real"),
                "{name}: {err}"
            );
        }
    }
}

#[test]
fn msmtp_delivers_a_signed_envelope_to_an_smtp_sink() {
    if !require("msmtp", Path::new("/usr/bin/msmtp").exists()) || !require("python3-aiosmtpd", python_with_aiosmtpd()) {
        return;
    }
    let e = env_with("", Some("/usr/bin/msmtp"));
    let sink = Sink::start(&e.dir);
    let port = format!("--port={}", sink.port);
    let body = "From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nSubject: 8-bit caf\u{e9}\r\n\r\nBonjour \u{e0} tous.\r\n.dot\r\n";
    let d = e.run(
        &[
            "--host=127.0.0.1",
            &port,
            "-C",
            "/dev/null",
            "-oi",
            "-f",
            "alice@example.com",
            "bob@example.net",
        ],
        body.as_bytes(),
    );
    assert_eq!(d.code, 0, "{}", d.err);
    let m = &sink.messages(1)[0];
    let from = m["mail_from"].as_str().unwrap();
    assert!(from.starts_with("prvs=1787") && from.ends_with("=alice@example.com"), "{m}");
    assert_eq!(e.verify(from), "alice@example.com");
    assert_eq!(m["rcpt_tos"][0], "bob@example.net");
    // msmtp sends the message as it got it (aiosmtpd's copy is dot-unstuffed).
    assert!(m["data"].as_str().unwrap().contains("Bonjour"), "{m}");
}

/// Run `batv sendmail -bs` with the fake -bs sendmail, feeding `session` at once
/// (pipelined), and return what the client read and what the fake recorded.
fn bs_session(session: &[u8]) -> (String, Vec<serde_json::Value>, Env) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/bs_sendmail.py");
    let e = env_with("", Some(script.to_str().unwrap()));
    let rec = e.dir.join("bs.jsonl");
    let mut cmd = e.cmd(&["-bs"]);
    cmd.env("BS_RECORD", &rec);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(session).unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let text = fs::read_to_string(&rec).unwrap();
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect(),
        e,
    )
}

#[test]
fn bs_mode_signs_mail_from_in_the_smtp_session() {
    if !require("python3", Path::new("/usr/bin/python3").exists()) {
        return;
    }
    let (out, rec, e) = bs_session(
        b"EHLO app.example\r\nMAIL FROM:<alice@example.com> BODY=8BITMIME SIZE=100\r\nRCPT TO:<bob@example.net> NOTIFY=NEVER\r\nRCPT TO:<reject@example.net>\r\nDATA\r\nSubject: caf\xc3\xa9\r\n\r\n..dot\r\nbody\r\n.\r\nMAIL FROM:<other@elsewhere.example>\r\nRCPT TO:<x@example.net>\r\nBDAT 7 LAST\r\nchunk\r\nSTARTTLS\r\nQUIT\r\n",
    );
    assert_eq!(rec[0]["argv"], serde_json::json!(["-bs"]));
    let replies: Vec<&str> = out.lines().collect();
    assert!(replies[0].starts_with("220 fake.example"), "{out}");
    assert!(
        !out.contains("250-STARTTLS") && out.contains("250 CHUNKING"),
        "EHLO must hide STARTTLS: {out}"
    );
    assert!(out.contains("550 5.1.1 Recipient rejected"), "{out}");
    assert!(out.contains("502 5.5.1"), "STARTTLS refused by batv: {out}");
    assert!(out.ends_with("221 2.0.0 Bye\r\n"), "{out}");
    let mail = rec[1]["mail_from"].as_str().unwrap();
    let tagged = mail.strip_prefix("MAIL FROM:<").unwrap().split('>').next().unwrap();
    assert!(tagged.starts_with("prvs=1787"), "{mail}");
    assert!(mail.ends_with("> BODY=8BITMIME SIZE=100"), "parameters kept: {mail}");
    assert_eq!(rec[1]["rcpt"], serde_json::json!(["RCPT TO:<bob@example.net> NOTIFY=NEVER"]));
    assert_eq!(rec[1]["data"], "Subject: caf\u{c3}\u{a9}\r\n\r\n..dot\r\nbody\r\n");
    // A foreign sender is relayed unchanged, and BDAT works.
    assert_eq!(rec[2]["mail_from"], "MAIL FROM:<other@elsewhere.example>");
    assert_eq!(rec[2]["data"], "chunk\r\n");
    assert_eq!(e.verify(tagged), "alice@example.com");
}

#[test]
fn a_set_id_copy_refuses_everything_but_the_wrapper() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: needs root to make a set-gid copy");
        return;
    }
    let e = env();
    // A set-gid-root copy, run by nobody: privileged (egid 0, gid 65534).
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let copy = dir.path().join("batv");
    fs::copy(BIN, &copy).unwrap();
    std::os::unix::fs::chown(&copy, Some(0), Some(0)).unwrap();
    fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o2755)).unwrap();
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&copy)
            .args(args)
            .output()
            .unwrap()
    };
    // On a nosuid mount the bit is ignored and the copy is an ordinary batv.
    if !String::from_utf8_lossy(&as_nobody(&["keys", "list"]).stderr).contains("set-id") {
        eprintln!("skipping: set-gid bit not honoured on this file system");
        return;
    }
    for args in [
        &["--keys", e.keys.to_str().unwrap(), "keys", "show", "1", "--secret"][..],
        &["--config", e.config.to_str().unwrap(), "sendmail", "-bp"],
        &["sign", "a@example.com"],
    ] {
        let o = as_nobody(args);
        assert_eq!(o.status.code(), Some(78), "{args:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("refusing to run with set-id privileges"),
            "{args:?}"
        );
        assert!(o.stdout.is_empty());
    }
}
