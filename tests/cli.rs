//! The batv CLI end to end: signing and verifying, the key store's life cycle, and every
//! kind of bad input getting one clear line and its sysexits code.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_batv");
const TODAY: &str = "2026-11-23";

struct Run {
    code: i32,
    out: String,
    err: String,
}

fn run_in(keys: &Path, args: &[&str], stdin: Option<&[u8]>) -> Run {
    let mut cmd = Command::new(BIN);
    cmd.arg("--keys")
        .arg(keys)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn batv");
    {
        use std::io::Write;
        let mut sin = child.stdin.take().unwrap();
        if let Some(b) = stdin {
            sin.write_all(b).unwrap();
        }
    }
    to_run(child.wait_with_output().unwrap())
}

fn to_run(o: Output) -> Run {
    Run {
        code: o.status.code().unwrap_or(-1),
        out: String::from_utf8_lossy(&o.stdout).into_owned(),
        err: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn batv(keys: &Path, args: &[&str]) -> Run {
    run_in(keys, args, None)
}

/// A keys directory with one active key (id 1).
fn store() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let k = t.path().join("keys");
    let r = batv(&k, &["--now", TODAY, "keys", "init"]);
    assert_eq!(r.code, 0, "{}", r.err);
    (t, k)
}

fn sign(keys: &Path, now: &str, extra: &[&str], addr: &str) -> String {
    let mut args = vec!["--now", now, "sign"];
    args.extend_from_slice(extra);
    args.push(addr);
    let r = batv(keys, &args);
    assert_eq!(r.code, 0, "sign {addr}: {}", r.err);
    r.out.trim_end().to_string()
}

fn assert_one_line_error(r: &Run, code: i32, needle: &str) {
    assert_eq!(r.code, code, "stdout {:?} stderr {:?}", r.out, r.err);
    assert!(r.err.contains(needle), "stderr {:?} lacks {needle:?}", r.err);
    assert_eq!(r.err.trim_end().lines().count(), 1, "expected one line: {:?}", r.err);
}

fn manifest(keys: &Path) -> String {
    fs::read_to_string(keys.join("manifest.toml")).unwrap()
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A config for a verifier that accepts both schemes (Exim interop, a migration).
fn both_schemes(t: &tempfile::TempDir) -> String {
    let cfg = t.path().join("both.toml");
    fs::write(&cfg, "verify_schemes = [\"native\", \"prvs\"]\n").unwrap();
    cfg.to_string_lossy().into_owned()
}

#[test]
fn sign_verify_both_schemes() {
    let (t, k) = store();
    let cfg = both_schemes(&t);
    let batv = |k: &Path, args: &[&str]| batv(k, &[&["--config", &cfg], args].concat());
    for scheme in ["native", "prvs"] {
        let s = sign(&k, TODAY, &["--scheme", scheme], "Alice.Smith+x@Example.COM");
        let len = if scheme == "native" { 12 } else { 10 };
        let val = s.strip_prefix("prvs=").unwrap().split('=').next().unwrap();
        assert_eq!(val.len(), len, "{s}");
        // DDD = (20780 + 7) mod 1000.
        assert!(val.starts_with("1787"), "{s}");
        let r = batv(&k, &["--now", TODAY, "verify", &s]);
        assert_eq!((r.code, r.out.as_str()), (0, "Alice.Smith+x@Example.COM\n"), "{}", r.err);
        // Valid up to 31 days ahead, plus one day of grace after expiry; not beyond.
        assert_eq!(batv(&k, &["--now", "2026-11-30", "verify", &s]).code, 0);
        assert_eq!(batv(&k, &["--now", "2026-12-01", "verify", &s]).code, 0);
        let r = batv(&k, &["--now", "2026-12-02", "verify", &s]);
        assert_eq!(r.code, 1);
        assert!(r.err.contains("expired"), "{}", r.err);
        assert_eq!(batv(&k, &["--now", "2026-10-30", "verify", &s]).code, 0);
        assert_eq!(batv(&k, &["--now", "2026-10-29", "verify", &s]).code, 1);
    }
}

/// Issue 13: a native-only verifier (the default: `verify_schemes = [scheme]`) does not take
/// 24-bit prvs tags, which fall to brute force in minutes; listing prvs takes them.
#[test]
fn only_the_accepted_schemes_verify() {
    let (t, k) = store();
    let p = sign(&k, TODAY, &["--scheme", "prvs"], "alice@example.com");
    let r = batv(&k, &["--now", TODAY, "verify", "--json", &p]);
    assert_eq!(r.code, 1, "{}", r.out);
    let v: serde_json::Value = serde_json::from_str(r.out.trim()).unwrap();
    assert_eq!(
        (v["reason"].as_str(), v["valid"].as_bool()),
        (Some("malformed"), Some(false)),
        "{v}"
    );
    assert!(v["detail"].as_str().unwrap_or("").contains("verify_schemes"), "{v}");
    let cfg = both_schemes(&t);
    assert_eq!(batv(&k, &["--config", &cfg, "--now", TODAY, "verify", &p]).code, 0);
    // And a prvs-only site refuses native tags.
    let prvs_only = t.path().join("prvs.toml");
    fs::write(&prvs_only, "scheme = \"prvs\"\n").unwrap();
    let n = sign(&k, TODAY, &["--scheme", "native"], "alice@example.com");
    let r = batv(&k, &["--config", prvs_only.to_str().unwrap(), "--now", TODAY, "verify", &n]);
    assert_eq!(r.code, 1, "{}", r.err);
    assert!(r.err.contains("native tags are not accepted"), "{}", r.err);
}

#[test]
fn native_tags_survive_case_changes_prvs_tags_do_not() {
    let (t, k) = store();
    let cfg = both_schemes(&t);
    let batv = |k: &Path, args: &[&str]| batv(k, &[&["--config", &cfg], args].concat());
    let n = sign(&k, TODAY, &["--scheme", "native"], "alice@example.com");
    assert_eq!(batv(&k, &["--now", TODAY, "verify", &n.to_uppercase()]).code, 0);
    let p = sign(&k, TODAY, &["--scheme", "prvs"], "alice@example.com");
    let upper_tag = format!("PRVS={}", p[5..16].to_uppercase()) + &p[16..];
    assert_eq!(batv(&k, &["--now", TODAY, "verify", &upper_tag]).code, 0, "{upper_tag}");
    let r = batv(&k, &["--now", TODAY, "verify", &p.replace("alice", "ALICE")]);
    assert!(r.err.contains("bad-signature"), "{}", r.err);
}

#[test]
fn idn_domains_are_canonical_for_native() {
    let (_t, k) = store();
    let s = sign(&k, TODAY, &[], "bob@Bücher.example");
    assert_eq!(batv(&k, &["--now", TODAY, "verify", &s.replace("Bücher", "xn--bcher-kva")]).code, 0);
    assert_eq!(batv(&k, &["--now", TODAY, "verify", &s.replace("Bücher", "BÜCHER")]).code, 0);
}

#[test]
fn verify_json_and_reasons() {
    let (_t, k) = store();
    let s = sign(&k, TODAY, &[], "alice@example.com");
    let forged = format!("{}{}", &s[..10], if &s[10..11] == "a" { "b" } else { "a" }) + &s[11..];
    let unknown = format!("prvs=7{}", &s[6..]);
    let r = batv(
        &k,
        &[
            "--now",
            TODAY,
            "verify",
            "--json",
            &s,
            "alice@example.com",
            "prvs=x=a@example.com",
            &unknown,
            &forged,
        ],
    );
    assert_eq!(r.code, 1, "{}", r.err);
    let v: Vec<serde_json::Value> = r.out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(v.len(), 5);
    assert_eq!(v[0]["valid"], true);
    assert_eq!(v[0]["original"], "alice@example.com");
    assert_eq!(v[0]["key"], 1);
    assert_eq!(v[0]["expires"], "2026-11-30");
    assert_eq!(v[0]["days_left"], 7);
    let reasons: Vec<_> = v.iter().map(|j| j["reason"].as_str().unwrap().to_string()).collect();
    assert_eq!(reasons, ["valid", "untagged", "malformed", "unknown-key", "bad-signature"]);
    let r = batv(&k, &["--now", "2027-01-30", "verify", "--json", &s]);
    let j: serde_json::Value = serde_json::from_str(r.out.trim()).unwrap();
    assert_eq!(
        (j["reason"].as_str(), j["original"].as_str()),
        (Some("expired"), Some("alice@example.com"))
    );
}

#[test]
fn stdin_input_and_strip() {
    let (_t, k) = store();
    let r = run_in(&k, &["--now", TODAY, "sign"], Some(b"a@example.com\n\nb@example.com\n"));
    let signed: Vec<_> = r.out.lines().collect();
    assert_eq!(signed.len(), 2, "{}", r.err);
    let r = run_in(&k, &["strip"], Some(r.out.as_bytes()));
    assert_eq!(r.out, "a@example.com\nb@example.com\n");
    let r = batv(&k, &["strip", "\"prvs=1787abcdefgh=john doe\"@x.org", "plain@x.org"]);
    assert_eq!(r.out, "\"john doe\"@x.org\nplain@x.org\n");
}

#[test]
fn signer_skips() {
    let (_t, k) = store();
    let l46 = "a".repeat(46);
    let l48 = "b".repeat(48);
    for (addr, scheme, reason) in [
        ("SRS0=HHH=TT=example.org=alice@example.com", "native", "srs"),
        ("prvs=1787abcdef=alice@example.com", "native", "already-tagged"),
        ("<>", "native", "null-sender"),
        (&format!("{l46}x@example.com") as &str, "native", "too-long"),
        (&format!("{l48}x@example.com") as &str, "prvs", "too-long"),
    ] {
        let r = batv(&k, &["--now", TODAY, "sign", "--scheme", scheme, addr]);
        assert_eq!((r.code, r.out.trim_end()), (0, addr), "{}", r.err);
        assert!(r.err.contains(reason), "{addr}: {}", r.err);
    }
    // The longest local parts that fit: 46 (native) and 48 (prvs) octets give 64.
    let s = sign(&k, TODAY, &[], &format!("{l46}@example.com"));
    assert_eq!(s.split('@').next().unwrap().len(), 64);
    let s = sign(&k, TODAY, &["--scheme", "prvs"], &format!("{l48}@example.com"));
    assert_eq!(s.split('@').next().unwrap().len(), 64);
}

#[test]
fn quoted_local_parts_are_written_as_one_quoted_string() {
    let (_t, k) = store();
    let s = sign(&k, TODAY, &[], r#""john \"jd\" doe"@example.com"#);
    assert!(
        s.starts_with("\"prvs=1787") && s.ends_with(r#"=john \"jd\" doe"@example.com"#),
        "{s}"
    );
    let r = batv(&k, &["--now", TODAY, "verify", &s]);
    assert_eq!(r.out, "\"john \\\"jd\\\" doe\"@example.com\n", "{}", r.err);
}

#[test]
fn malformed_addresses_exit_65_with_one_line() {
    let (_t, k) = store();
    for (addr, needle) in [
        ("alice", "no @"),
        ("@example.com", "empty local part"),
        ("alice@", "empty domain"),
        ("al\u{1}ice@example.com", "control character"),
        ("john doe@example.com", "not allowed"),
        (&format!("{}@example.com", "a".repeat(600)) as &str, "longer than"),
    ] {
        let r = batv(&k, &["--now", TODAY, "sign", addr]);
        assert_one_line_error(&r, 65, needle);
        assert_eq!(r.out, "");
        let r = batv(&k, &["--now", TODAY, "verify", addr]);
        assert_one_line_error(&r, 65, needle);
        let r = batv(&k, &["strip", addr]);
        assert_one_line_error(&r, 65, needle);
    }
    for bare in ["prvs=@example.com", "prvs=1787=a@example.com"] {
        let r = batv(&k, &["--now", TODAY, "sign", bare]);
        assert_one_line_error(&r, 65, "malformed tag");
    }
    // A bare prvs= is an address with a malformed tag: a verification failure.
    let r = batv(&k, &["--now", TODAY, "verify", "prvs=@example.com"]);
    assert_one_line_error(&r, 1, "malformed");
}

#[test]
fn usage_errors_exit_64() {
    let (_t, k) = store();
    let r = batv(&k, &["--now", "last tuesday", "sign", "a@example.com"]);
    assert_one_line_error(&r, 64, "--now");
    assert_eq!(batv(&k, &["frobnicate"]).code, 64);
    assert_eq!(batv(&k, &["sign", "--scheme", "md5", "a@b.c"]).code, 64);
    assert_eq!(batv(&k, &["keys", "import", "3"]).code, 64);
    assert_eq!(batv(&k, &["--help"]).code, 0);
}

#[test]
fn unknown_key_digit() {
    let (_t, k) = store();
    let r = batv(&k, &["--now", TODAY, "sign", "--key", "7", "a@example.com"]);
    assert_one_line_error(&r, 65, "no key with id 7");
    let r = batv(&k, &["--now", TODAY, "sign", "--key", "x", "a@example.com"]);
    assert_one_line_error(&r, 65, "digit");
    let r = batv(&k, &["keys", "activate", "7"]);
    assert_one_line_error(&r, 65, "no key with id 7");
}

#[test]
fn first_key_is_created_once_even_under_concurrency() {
    let t = tempfile::tempdir().unwrap();
    let k = t.path().join("keys");
    fs::create_dir(&k).unwrap();
    let children: Vec<_> = (0..8)
        .map(|i| {
            Command::new(BIN)
                .arg("--keys")
                .arg(&k)
                .args(["--now", TODAY, "sign", &format!("u{i}@example.com")])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let runs: Vec<Run> = children.into_iter().map(|c| to_run(c.wait_with_output().unwrap())).collect();
    for r in &runs {
        assert!(r.code == 0 && r.out.starts_with("prvs=1787"), "{} {:?} {:?}", r.code, r.out, r.err);
    }
    assert_eq!(runs.iter().filter(|r| r.err.contains("created a first signing key")).count(), 1);
    assert!(manifest(&k).contains("count = 1"));
    // Every process signed with the same key.
    for r in &runs {
        assert_eq!(batv(&k, &["--now", TODAY, "verify", r.out.trim()]).code, 0);
    }
}

#[test]
fn missing_keys_directory_is_not_created_by_sign() {
    let t = tempfile::tempdir().unwrap();
    let k = t.path().join("nope");
    let r = batv(&k, &["--now", TODAY, "sign", "a@example.com"]);
    assert_one_line_error(&r, 78, "does not exist");
    assert!(!k.exists());
}

#[test]
fn key_files_are_private_and_atomic() {
    let (_t, k) = store();
    assert_eq!(listing(&k), [".lock", "key-1.secret", "manifest.toml"]);
    for f in ["key-1.secret", "manifest.toml"] {
        assert_eq!(fs::metadata(k.join(f)).unwrap().mode() & 0o777, 0o600, "{f}");
    }
    let secret = fs::read_to_string(k.join("key-1.secret")).unwrap();
    assert_eq!(secret.len(), 65);
    assert!(secret[..64].bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    // Secrets are shown only when asked.
    let r = batv(&k, &["keys", "list"]);
    assert!(!r.out.contains(&secret[..64]) && !r.err.contains(&secret[..64]));
    let r = batv(&k, &["keys", "show", "1"]);
    assert!(!r.out.contains(&secret[..64]));
    let r = batv(&k, &["keys", "show", "1", "--secret"]);
    assert!(r.out.contains(&format!("secret: {}", &secret[..64])));
}

#[test]
fn rotation_on_one_host() {
    let (_t, k) = store();
    let old = sign(&k, TODAY, &[], "alice@example.com");
    let r = batv(&k, &["--now", "2026-11-24", "keys", "rotate"]);
    assert_eq!(r.out, "added key 2, now active; key 1 retired\n", "{}", r.err);
    let new = sign(&k, "2026-11-24", &[], "alice@example.com");
    assert!(new.starts_with("prvs=2"), "{new}");
    // Old tags still verify with the retired key.
    assert_eq!(batv(&k, &["--now", "2026-11-24", "verify", &old, &new]).code, 0);
    // A retired key cannot be pruned while its tags can be valid...
    let r = batv(&k, &["--now", "2026-12-20", "keys", "prune"]);
    assert_eq!(r.out, "nothing to prune\n");
    // ... and goes after 32 days.
    let r = batv(&k, &["--now", "2026-12-27", "keys", "list"]);
    assert!(r.out.contains("retired (prunable)"), "{}", r.out);
    let r = batv(&k, &["--now", "2026-12-27", "keys", "prune"]);
    assert_eq!(r.out, "pruned key(s) 1\n");
    assert!(!k.join("key-1.secret").exists());
    let r = batv(&k, &["--now", "2026-12-27", "verify", &old]);
    assert!(r.err.contains("unknown-key") || r.err.contains("expired"), "{}", r.err);
}

#[test]
fn ids_are_never_reused_while_listed() {
    let (_t, k) = store();
    let mut seen = vec![1u8];
    for _ in 0..9 {
        let r = batv(&k, &["--now", TODAY, "keys", "add", "--standby"]);
        assert_eq!(r.code, 0, "{}", r.err);
        let id: u8 = r.out.split_whitespace().nth(2).unwrap().parse().unwrap();
        assert!(!seen.contains(&id), "id {id} reused");
        seen.push(id);
    }
    let r = batv(&k, &["--now", TODAY, "keys", "rotate"]);
    assert_one_line_error(&r, 75, "all ten key ids are in use");
    // The failed rotation changed nothing.
    assert!(manifest(&k).contains("count = 10"));
    assert_eq!(batv(&k, &["keys", "list"]).out.matches(" active ").count(), 1);
}

#[test]
fn states_activate_and_retire() {
    let (_t, k) = store();
    let r = batv(&k, &["--now", TODAY, "keys", "add", "--standby"]);
    assert_eq!(r.out, format!("added key 2 in {}\n", k.display()));
    // Standby verifies but does not sign.
    assert!(sign(&k, TODAY, &[], "a@example.com").starts_with("prvs=1"));
    let t2 = sign(&k, TODAY, &["--key", "2"], "a@example.com");
    assert_eq!(batv(&k, &["--now", TODAY, "verify", &t2]).code, 0);
    let r = batv(&k, &["keys", "retire", "1"]);
    assert_one_line_error(&r, 65, "is the active key");
    let r = batv(&k, &["--now", TODAY, "keys", "activate", "2"]);
    assert_eq!(r.out, "key 2 is now active; key 1 retired\n");
    assert!(sign(&k, TODAY, &[], "a@example.com").starts_with("prvs=2"));
    let r = batv(&k, &["--now", TODAY, "keys", "add", "--standby"]);
    assert!(r.out.starts_with("added key 3"));
    assert_eq!(batv(&k, &["keys", "retire", "3"]).out, "key 3 retired\n");
    assert!(batv(&k, &["keys", "retire", "3"]).out.starts_with("unchanged"));
    let list = batv(&k, &["keys", "list"]).out;
    assert_eq!(list.matches(" active ").count(), 1, "{list}");
}

#[test]
fn fleet_rotation_in_two_phases() {
    // Two hosts share key 1 (imported), then key 4 is added in standby everywhere before
    // either host activates it: neither ever sees a tag it cannot check.
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    let s1 = t.path().join("s1");
    let s4 = t.path().join("s4");
    fs::write(&s1, "first-shared-secret\n").unwrap();
    fs::write(&s4, "second-shared-secret\n").unwrap();
    for h in [&a, &b] {
        fs::create_dir(h).unwrap();
        assert_eq!(batv(h, &["keys", "import", "1", "--secret-file", s1.to_str().unwrap()]).code, 0);
        assert_eq!(batv(h, &["--now", TODAY, "keys", "activate", "1"]).code, 0);
        // Phase one, on every host.
        assert_eq!(batv(h, &["keys", "import", "4", "--secret-file", s4.to_str().unwrap()]).code, 0);
    }
    // Phase two on host a only so far: b already verifies a's new tags.
    assert_eq!(batv(&a, &["--now", TODAY, "keys", "activate", "4"]).code, 0);
    let from_a = sign(&a, TODAY, &[], "alice@example.com");
    let from_b = sign(&b, TODAY, &[], "alice@example.com");
    assert!(from_a.starts_with("prvs=4") && from_b.starts_with("prvs=1"));
    for h in [&a, &b] {
        assert_eq!(batv(h, &["--now", TODAY, "verify", &from_a, &from_b]).code, 0);
    }
    let fa = batv(&a, &["keys", "show", "4"]).out;
    let fb = batv(&b, &["keys", "show", "4"]).out;
    assert_eq!(
        fa.lines().find(|l| l.starts_with("fingerprint")),
        fb.lines().find(|l| l.starts_with("fingerprint"))
    );
}

#[test]
fn import_validates_the_secret() {
    let (_t, k) = store();
    let r = run_in(&k, &["keys", "import", "5", "--secret-stdin"], Some(b"\n"));
    assert_one_line_error(&r, 65, "16 to 64 bytes, got 0");
    let r = run_in(&k, &["keys", "import", "5", "--secret-stdin"], Some(&[b'x'; 65]));
    assert_one_line_error(&r, 65, "16 to 64 bytes, got 65");
    let r = run_in(&k, &["keys", "import", "1", "--secret-stdin"], Some(b"a good long secret"));
    assert_one_line_error(&r, 65, "in use");
    let r = run_in(&k, &["keys", "import", "5", "--secret-stdin"], Some(&[b'y'; 64]));
    assert_eq!(r.code, 0, "{}", r.err);
    assert_eq!(fs::read(k.join("key-5.secret")).unwrap().len(), 65);
}

#[test]
fn corrupt_key_stores_are_refused() {
    type Damage = fn(&Path);
    let cases: &[(&str, Damage, &str)] = &[
        (
            "garbage manifest",
            |k| fs::write(k.join("manifest.toml"), "version = 1\ncount = [\n").unwrap(),
            "corrupt key store",
        ),
        (
            "truncated manifest",
            |k| {
                let m = manifest(k);
                fs::write(k.join("manifest.toml"), &m[..m.rfind("[[key]]").unwrap()]).unwrap()
            },
            "truncated",
        ),
        (
            "truncated secret",
            |k| {
                let s = fs::read_to_string(k.join("key-1.secret")).unwrap();
                fs::write(k.join("key-1.secret"), &s[..20]).unwrap()
            },
            "fingerprint",
        ),
        (
            "short secret",
            |k| fs::write(k.join("key-1.secret"), "s3cret\n").unwrap(),
            "secret is 6 bytes",
        ),
        ("empty secret", |k| fs::write(k.join("key-1.secret"), "").unwrap(), "empty secret"),
        (
            "world-readable secret",
            |k| fs::set_permissions(k.join("key-1.secret"), fs::Permissions::from_mode(0o644)).unwrap(),
            "accessible to everyone",
        ),
        (
            "missing secret",
            |k| fs::remove_file(k.join("key-1.secret")).unwrap(),
            "key-1.secret",
        ),
        (
            "secrets without manifest",
            |k| fs::remove_file(k.join("manifest.toml")).unwrap(),
            "no manifest",
        ),
        (
            "two active keys",
            |k| {
                let m = manifest(k).replace("state = \"standby\"", "state = \"active\"");
                fs::write(k.join("manifest.toml"), m).unwrap()
            },
            "more than one active key",
        ),
    ];
    for (name, damage, needle) in cases {
        let (_t, k) = store();
        assert_eq!(batv(&k, &["--now", TODAY, "keys", "add", "--standby"]).code, 0);
        let signed = sign(&k, TODAY, &[], "a@example.com");
        damage(&k);
        let before = listing(&k);
        for args in [
            &["--now", TODAY, "verify", signed.as_str()][..],
            &["--now", TODAY, "sign", "a@example.com"],
            &["--now", TODAY, "keys", "rotate"],
            &["keys", "list"],
        ] {
            let r = batv(&k, args);
            let code = if *name == "missing secret" { 74 } else { 78 };
            assert_eq!(r.code, code, "{name} {args:?}: {}", r.err);
            assert!(r.err.contains(needle), "{name} {args:?}: {:?}", r.err);
            assert_eq!(r.err.lines().count(), 1, "{name}: {:?}", r.err);
            assert_eq!(r.out, "", "{name} {args:?}");
        }
        // Nothing was written, and no first key was invented over the damage.
        assert_eq!(listing(&k), before, "{name}");
    }
}

#[test]
fn key_group_makes_files_0640() {
    let t = tempfile::tempdir().unwrap();
    let k = t.path().join("keys");
    let group = if unsafe { libc::getegid() } == 0 { "root" } else { return };
    let cfg = t.path().join("batv.toml");
    fs::write(&cfg, format!("key_group = \"{group}\"\n")).unwrap();
    let c = cfg.to_str().unwrap();
    assert_eq!(batv(&k, &["--config", c, "keys", "init"]).code, 0);
    for f in ["key-1.secret", "manifest.toml"] {
        let m = fs::metadata(k.join(f)).unwrap();
        assert_eq!((m.mode() & 0o777, m.gid()), (0o640, 0), "{f}");
    }
    assert_eq!(fs::metadata(&k).unwrap().mode() & 0o777, 0o750);
    fs::write(&cfg, "key_group = \"no-such-group-batv\"\n").unwrap();
    let r = batv(&k, &["--config", c, "keys", "list"]);
    assert_one_line_error(&r, 78, "unknown group");
}

/// Run batv as `nobody` (root ignores directory permissions, so a real unwritable
/// directory needs another user).
fn as_nobody(keys: &Path, args: &[&str]) -> Option<Run> {
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN, "--keys"])
        .arg(keys)
        .args(args)
        .output()
        .ok()?;
    Some(to_run(o))
}

#[test]
fn unwritable_keys_directory_leaves_no_partial_state() {
    let (t, k) = store();
    // Before the files change hands: root refuses key files of another user.
    let signed = sign(&k, TODAY, &[], "a@example.com");
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
    if unsafe { libc::geteuid() } == 0 {
        // The files belong to nobody, the directory stays root's 0755.
        for f in listing(&k) {
            std::os::unix::fs::chown(k.join(f), Some(65534), Some(65534)).unwrap();
        }
        fs::set_permissions(&k, fs::Permissions::from_mode(0o755)).unwrap();
    } else {
        fs::set_permissions(&k, fs::Permissions::from_mode(0o555)).unwrap();
    }
    let before = (manifest(&k), listing(&k));
    let rotate = |args: &[&str]| as_nobody(&k, args).unwrap_or_else(|| batv(&k, args));
    let r = rotate(&["--now", TODAY, "keys", "rotate"]);
    assert_one_line_error(&r, 74, "Permission denied");
    assert_eq!((manifest(&k), listing(&k)), before);
    // Verification still works from the read-only directory.
    let r = rotate(&["--now", TODAY, "verify", &signed]);
    assert_eq!(r.code, 0, "{}", r.err);
    fs::set_permissions(&k, fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn loading_never_writes_and_follows_kubernetes_symlinks() {
    // A Kubernetes Secret volume: files are symlinks into ..data, itself a symlink that is
    // swapped to a new timestamped directory on update.
    let (_t, src) = store();
    let signed = sign(&src, TODAY, &[], "a@example.com");
    let t = tempfile::tempdir().unwrap();
    let vol = t.path().join("vol");
    let gen1 = vol.join("..2026_11_23_1");
    fs::create_dir_all(&gen1).unwrap();
    for f in ["manifest.toml", "key-1.secret"] {
        fs::copy(src.join(f), gen1.join(f)).unwrap();
        std::os::unix::fs::symlink(format!("..data/{f}"), vol.join(f)).unwrap();
    }
    fs::set_permissions(gen1.join("key-1.secret"), fs::Permissions::from_mode(0o400)).unwrap();
    std::os::unix::fs::symlink("..2026_11_23_1", vol.join("..data")).unwrap();
    let before = listing(&vol);
    let r = batv(&vol, &["--now", TODAY, "verify", &signed]);
    assert_eq!(r.code, 0, "{}", r.err);
    assert_eq!(listing(&vol), before, "loading wrote into the key directory");
    // The secret swaps to a new generation with another key: verification follows.
    assert_eq!(batv(&src, &["--now", TODAY, "keys", "rotate"]).code, 0);
    let signed2 = sign(&src, TODAY, &[], "b@example.com");
    let gen2 = vol.join("..2026_11_24_1");
    fs::create_dir(&gen2).unwrap();
    for f in ["manifest.toml", "key-1.secret", "key-2.secret"] {
        fs::copy(src.join(f), gen2.join(f)).unwrap();
    }
    std::os::unix::fs::symlink("..data/key-2.secret", vol.join("key-2.secret")).unwrap();
    std::os::unix::fs::symlink("..2026_11_24_1", vol.join("..data_tmp")).unwrap();
    fs::rename(vol.join("..data_tmp"), vol.join("..data")).unwrap();
    let r = batv(&vol, &["--now", TODAY, "verify", &signed, &signed2]);
    assert_eq!(r.code, 0, "{}", r.err);
}

#[test]
fn config_errors_name_file_line_and_key() {
    let t = tempfile::tempdir().unwrap();
    let k = t.path().join("keys");
    let cfg = t.path().join("batv.toml");
    let c = cfg.to_str().unwrap();
    for (text, needle) in [
        ("scheme = \"prvs\"\nsign_domain = [\"example.com\"]\n", ":2: sign_domain"),
        ("lifetime_days = 31\n", ":1:"),
        ("[proxy]\nmax_connections = 0\n", ":2:"),
        ("[sendmail]\non_error = \"drop\"\n", ":2:"),
        ("scheme = \"native\"\n[proxy\n", ":2"),
        ("scheme = native\n", ":1"),
    ] {
        fs::write(&cfg, text).unwrap();
        let r = batv(&k, &["--config", c, "config", "check"]);
        assert_one_line_error(&r, 78, &format!("{c}{needle}"));
        let r = batv(&k, &["--config", c, "sign", "a@example.com"]);
        assert_eq!(r.code, 78, "{text}");
    }
    fs::write(&cfg, "scheme = \"prvs\"\nlifetime_days = 10\nsign_domains = [\"example.com\"]\n").unwrap();
    let r = batv(&k, &["--config", c, "config", "check"]);
    assert_eq!((r.code, r.out.clone()), (0, format!("{c}: OK\n")), "{}", r.err);
    let r = batv(&k, &["--config", c, "config", "show"]);
    assert!(
        r.out.contains("scheme = \"prvs\"") && r.out.contains("protected_domains = [\"example.com\"]"),
        "{}",
        r.out
    );
    // config show's output is itself a valid config file.
    fs::write(&cfg, &r.out).unwrap();
    assert_eq!(batv(&k, &["--config", c, "config", "check"]).code, 0);
    // The config's scheme and lifetime drive signing; the keys dir comes from --keys.
    fs::create_dir(&k).unwrap();
    let r = batv(&k, &["--config", c, "--now", TODAY, "sign", "a@example.com"]);
    assert!(
        r.out.starts_with("prvs=1790") && r.out.len() == "prvs=1790abcdef=a@example.com\n".len(),
        "{}",
        r.out
    );
    let r = batv(&k, &["--config", "/nonexistent/batv.toml", "config", "check"]);
    assert_one_line_error(&r, 78, "/nonexistent/batv.toml");
}
