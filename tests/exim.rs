//! Interoperability with a real peer: Exim's `${prvs}`, `${prvscheck}` and `${hmac}`
//! expansions (Debian `exim4-daemon-light`). batv's `prvs` tags must be byte-identical to
//! Exim's, each must accept what the other signs, and both must refuse a tampered tag.
//!
//! Without Exim the tests print a note and pass, except under CI (`CI=true`), where a missing
//! Exim is a failure. Signing on another day with Exim needs `faketime` and root; those cases
//! are skipped the same way (and fail under CI).
//!
//! Every test adds the vectors it compared to one total; the last test to finish prints
//! `exim interop: N vectors compared` (see it with `cargo test --test exim -- --nocapture`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

const BIN: &str = env!("CARGO_BIN_EXE_batv");

/// The key ids every store holds (all with the store's one secret).
const KEYS: [u8; 3] = [0, 3, 9];
/// The tag lifetime batv and Exim's `${prvs}` both use.
const LIFETIME: i64 = 7;
/// Tests that call `record`; the last of them to finish prints the total.
const COUNTING_TESTS: usize = 5;

static TOTAL: AtomicUsize = AtomicUsize::new(0);
static DONE: AtomicUsize = AtomicUsize::new(0);

fn record(test: &str, n: usize) {
    assert!(n > 0, "{test} compared nothing");
    eprintln!("exim interop: {test}: {n} vectors");
    let total = TOTAL.fetch_add(n, Ordering::SeqCst) + n;
    if DONE.fetch_add(1, Ordering::SeqCst) + 1 == COUNTING_TESTS {
        eprintln!("exim interop: {total} vectors compared");
        assert!(total > 100, "only {total} vectors compared");
    }
}

fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

// ---------------------------------------------------------------------------------------
// Finding the peer

fn find_program(names: &[&str], extra_dirs: &[&str]) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path).chain(extra_dirs.iter().map(PathBuf::from)).collect();
    for name in names {
        for dir in &dirs {
            let p = dir.join(name);
            if let Ok(m) = std::fs::metadata(&p) {
                if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                    return Some(p);
                }
            }
        }
    }
    None
}

/// Exim, or `None` (after a note) when it is missing outside CI.
fn exim(test: &str) -> Option<Exim> {
    match find_program(&["exim", "exim4"], &["/usr/sbin", "/usr/local/sbin", "/sbin"]) {
        Some(path) => Some(Exim { path }),
        None if ci() => panic!("exim not found: .ci/run must install exim4-daemon-light"),
        None => {
            eprintln!("note: {test} skipped: exim not found (install exim4-daemon-light)");
            None
        }
    }
}

/// `faketime`, usable on Exim (setuid) only as root; `None` (after a note) outside CI.
fn faketime(test: &str) -> Option<PathBuf> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let found = find_program(&["faketime"], &[]);
    match (root, found) {
        (true, Some(p)) => Some(p),
        (root, found) => {
            let why = if !root { "not running as root" } else { "faketime not found" };
            assert!(
                !ci(),
                "{test}: cannot make Exim sign on other days under CI: {why} (found faketime: {found:?})"
            );
            eprintln!("note: {test}: Exim signing on other days skipped: {why}");
            None
        }
    }
}

/// Quote a string for an Exim expansion argument: `\`, `$`, `{` and `}` become literal.
fn esc(s: &[u8]) -> String {
    let s = std::str::from_utf8(s).expect("test strings are UTF-8");
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if matches!(c, '\\' | '$' | '{' | '}') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

struct Exim {
    path: PathBuf,
}

impl Exim {
    /// Expand each expression with `exim -be`, on `fake_day` (via faketime) if given.
    ///
    /// All expressions go to one process on stdin, one a line, each prefixed by its index
    /// (`12:${...}`), so prompts (`> `) and any stray lines are told apart from results.
    /// Whatever the batch did not answer is retried one process per expression.
    fn eval(&self, exprs: &[String], fake: Option<(&Path, i64)>) -> Vec<String> {
        let mut results: Vec<Option<String>> = vec![None; exprs.len()];
        let mut input = String::new();
        for (i, e) in exprs.iter().enumerate() {
            assert!(!e.contains('\n'), "expression spans lines: {e:?}");
            input.push_str(&format!("{i}:{e}\n"));
        }
        let (out, err) = self.run(fake, &[], Some(&input));
        parse_results(&out, &mut results);
        let missing: Vec<usize> = (0..exprs.len()).filter(|&i| results[i].is_none()).collect();
        if !missing.is_empty() {
            eprintln!(
                "note: exim -be on stdin answered {} of {}; expanding the rest one by one",
                exprs.len() - missing.len(),
                exprs.len()
            );
            for i in missing {
                let (o, e) = self.run(fake, &[format!("{i}:{}", exprs[i])], None);
                parse_results(&o, &mut results);
                assert!(
                    results[i].is_some(),
                    "exim gave no result for {:?}\nstdout: {o}\nstderr: {e}\n(batch stderr: {err})",
                    exprs[i]
                );
            }
        }
        results.into_iter().map(Option::unwrap).collect()
    }

    fn run(&self, fake: Option<(&Path, i64)>, args: &[String], stdin: Option<&str>) -> (String, String) {
        let mut cmd = match fake {
            Some((faketime, day)) => {
                let mut c = Command::new(faketime);
                c.arg(format!("{} 12:00:00", date_of(day))).arg(&self.path);
                c
            }
            None => Command::new(&self.path),
        };
        cmd.arg("-be")
            .args(args)
            .env("TZ", "UTC")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {:?}: {e}", self.path));
        // Feed stdin from another thread: Exim answers as it reads, and a full stdout pipe
        // would otherwise block both sides.
        let mut sin = child.stdin.take().unwrap();
        let input = stdin.unwrap_or_default().to_string();
        let writer = std::thread::spawn(move || sin.write_all(input.as_bytes()));
        let o = child.wait_with_output().expect("wait for exim");
        writer.join().expect("stdin writer").expect("write exim stdin");
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "exim -be failed ({}): stdout {out}\nstderr {err}", o.status);
        (out, err)
    }

    /// `${prvs}` on today's (or the faked) clock.
    fn prvs(&self, addr: &str, secret: &[u8], key: u8) -> String {
        format!("${{prvs{{{}}}{{{}}}{{{key}}}}}", esc(addr.as_bytes()), esc(secret))
    }

    /// `${prvscheck}`: `ok:<original>` for a valid unexpired tag, else `bad` (or empty).
    fn prvscheck(&self, tag: &str, secret: &[u8]) -> String {
        format!(
            "${{prvscheck{{{}}}{{{}}}{{${{if eq{{$prvscheck_result}}{{1}}{{ok:$prvscheck_address}}{{bad}}}}}}}}",
            esc(tag.as_bytes()),
            esc(secret)
        )
    }

    /// The full 40-hex HMAC-SHA1 of `data`.
    fn hmac_sha1(&self, secret: &[u8], data: &str) -> String {
        format!("${{hmac{{sha1}}{{{}}}{{{}}}}}", esc(secret), esc(data.as_bytes()))
    }
}

fn parse_results(out: &str, results: &mut [Option<String>]) {
    for line in out.lines() {
        let l = line.trim_start_matches(['>', ' ']);
        let Some((idx, rest)) = l.split_once(':') else { continue };
        let Ok(i) = idx.parse::<usize>() else { continue };
        if let Some(slot @ None) = results.get_mut(i) {
            *slot = Some(rest.to_string());
        }
    }
}

// ---------------------------------------------------------------------------------------
// batv

struct Out {
    code: i32,
    out: String,
    err: String,
}

/// A key store whose keys 0, 3 and 9 all hold one secret (3 is active), with an empty
/// config file of its own so nothing in the checkout leaks in.
struct Store {
    _dir: tempfile::TempDir,
    keys: PathBuf,
    config: PathBuf,
    secret: Vec<u8>,
}

impl Store {
    fn new(secret: &[u8]) -> Store {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        std::fs::create_dir(&keys).unwrap();
        let config = dir.path().join("batv.toml");
        // Exim interop: prvs tags are accepted where they are listed.
        std::fs::write(&config, "verify_schemes = [\"native\", \"prvs\"]\n").unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, secret).unwrap();
        let s = Store {
            _dir: dir,
            keys,
            config,
            secret: secret.to_vec(),
        };
        for k in KEYS {
            let r = s.batv(&["keys", "import", &k.to_string(), "--secret-file", file.to_str().unwrap()]);
            assert_eq!(r.code, 0, "keys import {k}: {}", r.err);
        }
        let r = s.batv(&["keys", "activate", "3"]);
        assert_eq!(r.code, 0, "keys activate: {}", r.err);
        s
    }

    fn batv(&self, args: &[&str]) -> Out {
        let o = Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .arg("--keys")
            .arg(&self.keys)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run batv");
        Out {
            code: o.status.code().unwrap_or(-1),
            out: String::from_utf8_lossy(&o.stdout).into_owned(),
            err: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// `batv --now DAY sign --scheme prvs --key K ADDR...`, one tag per address.
    fn sign(&self, day: i64, key: u8, addrs: &[&str]) -> Vec<String> {
        let date = date_of(day);
        let k = key.to_string();
        let mut args = vec!["--now", &date, "sign", "--scheme", "prvs", "--key", &k];
        args.extend_from_slice(addrs);
        let r = self.batv(&args);
        assert_eq!(r.code, 0, "batv sign on {date}: {}", r.err);
        let tags: Vec<String> = r.out.lines().map(str::to_string).collect();
        assert_eq!(tags.len(), addrs.len(), "batv sign printed {:?} (stderr {:?})", r.out, r.err);
        tags
    }

    /// `batv --now DAY verify --json TAG...`, one JSON object per tag.
    fn verify_json(&self, day: i64, tags: &[String]) -> (i32, Vec<serde_json::Value>) {
        let date = date_of(day);
        let mut args = vec!["--now", date.as_str(), "verify", "--json"];
        args.extend(tags.iter().map(String::as_str));
        let r = self.batv(&args);
        let v: Vec<serde_json::Value> = r
            .out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}")))
            .collect();
        assert_eq!(v.len(), tags.len(), "verify --json printed {:?} (stderr {:?})", r.out, r.err);
        (r.code, v)
    }

    /// `batv --now DAY verify TAG...` (plain output).
    fn verify(&self, day: i64, tags: &[String]) -> Out {
        let date = date_of(day);
        let mut args = vec!["--now", date.as_str(), "verify"];
        args.extend(tags.iter().map(String::as_str));
        self.batv(&args)
    }
}

/// Assert each JSON verdict is valid for key `key` with original `original`.
fn assert_valid(v: &serde_json::Value, tag: &str, key: u8, original: &str, context: &str) {
    assert_eq!(v["address"], tag, "{context}: {v}");
    assert_eq!(v["valid"], true, "{context}: {tag} not valid: {v}");
    assert_eq!(v["original"], original, "{context}: {v}");
    assert_eq!(v["key"], key as u64, "{context}: {v}");
    assert_eq!(v["scheme"], "prvs", "{context}: {v}");
}

fn assert_invalid(v: &serde_json::Value, tag: &str, reason: &str, context: &str) {
    assert_eq!(v["address"], tag, "{context}: {v}");
    assert_eq!(v["valid"], false, "{context}: {tag} accepted: {v}");
    assert_eq!(v["reason"], reason, "{context}: {tag}: {v}");
}

// ---------------------------------------------------------------------------------------
// Test data

/// Dot-atom addresses: plain, dots, plus-addressing, mixed case on both sides, digits,
/// hyphens, subdomains, and a 48-octet local part (the longest a prvs tag fits in 64).
fn addresses() -> Vec<&'static str> {
    let long = "abcdefghijklmnopqrstuvwxyz.0123456789-ABCDEFGHIJ@example.com";
    assert_eq!(long.split('@').next().unwrap().len(), 48);
    vec![
        "alice@example.com",
        "first.last@example.net",
        "Jane.Doe+news@example.org",
        "MiXeD.CaSe@ExAmPle.COM",
        "user1234@mail2.example.co.uk",
        "no-reply@list-server.example-domain.org",
        "bounce-12345+tag@Mail.Sub.Example.COM",
        "0123456789@123.example",
        "x@a.b.c.d.example",
        long,
    ]
}

/// 16 bytes (the shortest secret a store takes), 64 hex digits, an odd-length passphrase
/// with spaces, and 64 bytes of punctuation (including Exim's expansion metacharacters).
fn secrets() -> Vec<Vec<u8>> {
    let short = "s3cret-for-exim!";
    let hex = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    let phrase = "Correct Horse Battery Staple 2026";
    let punct = "a$b{c}d\\e!#%&'()*+,-./:;<=>?@[]^_`|~\" Tr0ub4dor&3=correct-horse!";
    assert_eq!(short.len(), 16);
    assert_eq!(hex.len(), 64);
    assert_eq!(phrase.len(), 33);
    assert_eq!(punct.len(), 64);
    vec![
        short.as_bytes().to_vec(),
        hex.as_bytes().to_vec(),
        phrase.as_bytes().to_vec(),
        punct.as_bytes().to_vec(),
    ]
}

fn stores() -> Vec<Store> {
    secrets().iter().map(|s| Store::new(s)).collect()
}

// ---------------------------------------------------------------------------------------
// Days and tags

const UNIX_DAY: i64 = 86_400;

fn date_of(day: i64) -> String {
    chrono::DateTime::from_timestamp(day * UNIX_DAY, 0)
        .expect("day in range")
        .format("%Y-%m-%d")
        .to_string()
}

fn today() -> i64 {
    chrono::Utc::now().timestamp().div_euclid(UNIX_DAY)
}

fn ddd(day: i64) -> String {
    format!("{:03}", (day + LIFETIME).rem_euclid(1000))
}

/// `prvs=KDDDhhhhhh=local@domain` split into (K, DDD, hash, original).
fn split_tag(tag: &str) -> (&str, &str, &str, &str) {
    let rest = tag.strip_prefix("prvs=").unwrap_or_else(|| panic!("not a prvs tag: {tag:?}"));
    assert!(rest.len() > 11 && rest.as_bytes()[10] == b'=', "malformed tag {tag:?}");
    (&rest[..1], &rest[1..4], &rest[4..10], &rest[11..])
}

/// The tag with its hash in upper case.
fn upper_hex(tag: &str) -> String {
    let (k, d, h, a) = split_tag(tag);
    format!("prvs={k}{d}{}={a}", h.to_ascii_uppercase())
}

/// The tag with the prefix in upper case.
fn upper_prefix(tag: &str) -> String {
    format!("PRVS={}", &tag[5..])
}

/// The tag with hex digit `pos` (0..6) of its hash changed.
fn tamper(tag: &str, pos: usize) -> String {
    let (k, d, h, a) = split_tag(tag);
    let mut hb = h.as_bytes().to_vec();
    let v = (hb[pos] as char).to_digit(16).unwrap();
    hb[pos] = char::from_digit((v + 1 + pos as u32) % 16, 16).unwrap() as u8;
    let h2 = String::from_utf8(hb).unwrap();
    assert_ne!(h, h2);
    format!("prvs={k}{d}{h2}={a}")
}

/// Exim's `${prvs}` tags for every store × key × address, signed on `fake_day` (or today).
fn exim_tags(exim: &Exim, stores: &[Store], addrs: &[&str], fake: Option<(&Path, i64)>) -> Vec<Vec<Vec<String>>> {
    let mut exprs = vec![];
    for s in stores {
        for k in KEYS {
            for a in addrs {
                exprs.push(exim.prvs(a, &s.secret, k));
            }
        }
    }
    let mut it = exim.eval(&exprs, fake).into_iter();
    stores
        .iter()
        .map(|_| KEYS.iter().map(|_| addrs.iter().map(|_| it.next().unwrap()).collect()).collect())
        .collect()
}

/// batv's tags, same shape as `exim_tags`.
fn batv_tags(stores: &[Store], addrs: &[&str], day: i64) -> Vec<Vec<Vec<String>>> {
    stores
        .iter()
        .map(|s| KEYS.iter().map(|&k| s.sign(day, k, addrs)).collect())
        .collect()
}

// ---------------------------------------------------------------------------------------
// Tests

/// batv's `sign --scheme prvs` today is byte-identical to Exim's `${prvs}`.
#[test]
fn sign_matches_exim_prvs_today() {
    let Some(exim) = exim("sign_matches_exim_prvs_today") else { return };
    let stores = stores();
    let addrs = addresses();
    let mut compared = 0;
    for attempt in 0..2 {
        let day = today();
        let ours = batv_tags(&stores, &addrs, day);
        let theirs = exim_tags(&exim, &stores, &addrs, None);
        let after = today();
        if ours != theirs && attempt == 0 {
            // Midnight may have passed between the two; try once more.
            eprintln!("note: batv and Exim differ on day {day} (now {after}); retrying once");
            continue;
        }
        for (si, s) in stores.iter().enumerate() {
            for (ki, k) in KEYS.iter().enumerate() {
                for (ai, a) in addrs.iter().enumerate() {
                    let (o, t) = (&ours[si][ki][ai], &theirs[si][ki][ai]);
                    assert_eq!(
                        o,
                        t,
                        "sign {a} with key {k}, secret {:?}, on {}",
                        String::from_utf8_lossy(&s.secret),
                        date_of(day)
                    );
                    let (kk, d, _, orig) = split_tag(o);
                    assert_eq!((kk, orig), (k.to_string().as_str(), *a));
                    assert!(d == ddd(day) || d == ddd(after), "DDD {d} on day {day}");
                    compared += 1;
                }
            }
        }
        break;
    }
    assert_eq!(compared, stores.len() * KEYS.len() * addrs.len());
    record("sign_matches_exim_prvs_today", compared);
}

/// On any day (across the DDD wrap and far from today), batv's hash is the first 6 hex of
/// Exim's `${hmac{sha1}}` over K ‖ DDD ‖ address, with DDD = (day + 7) mod 1000.
#[test]
fn sign_matches_exim_hmac_any_day() {
    let Some(exim) = exim("sign_matches_exim_hmac_any_day") else {
        return;
    };
    let stores = stores();
    let addrs = addresses();
    let mut days: Vec<i64> = (20990..=21010).collect();
    days.extend([0, 20780, 21787, 29999]);
    // Pseudo-random days from 1970 to ~9900 (xorshift, fixed seed).
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..30 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        days.push((x % 2_900_000) as i64);
    }
    assert!(
        days.iter().any(|&d| ddd(d) == "999") && days.iter().any(|&d| ddd(d) == "000"),
        "days miss the wrap"
    );

    // (store, key, day, address, batv tag)
    let mut cases = vec![];
    for (di, &day) in days.iter().enumerate() {
        for (si, s) in stores.iter().enumerate() {
            let k = KEYS[(di + si) % KEYS.len()];
            for (a, tag) in addrs.iter().zip(s.sign(day, k, &addrs)) {
                cases.push((si, k, day, *a, tag));
            }
        }
    }
    let exprs: Vec<String> = cases
        .iter()
        .map(|(si, k, day, a, _)| exim.hmac_sha1(&stores[*si].secret, &format!("{k}{}{a}", ddd(*day))))
        .collect();
    let macs = exim.eval(&exprs, None);
    for ((si, k, day, a, tag), mac) in cases.iter().zip(&macs) {
        assert_eq!(mac.len(), 40, "exim hmac gave {mac:?}");
        let (kk, d, h, orig) = split_tag(tag);
        let context = format!(
            "{tag} on day {day} ({}), key {k}, secret {:?}",
            date_of(*day),
            String::from_utf8_lossy(&stores[*si].secret)
        );
        assert_eq!(kk, k.to_string(), "{context}");
        assert_eq!(d, ddd(*day), "{context}");
        assert_eq!(orig, *a, "{context}");
        assert_eq!(h, &mac[..6], "{context}: Exim's HMAC is {mac}");
    }
    record("sign_matches_exim_hmac_any_day", cases.len());
}

/// batv verifies Exim's `${prvs}` tags: today (also with upper-case hex and `PRVS=`),
/// expired 40 days later; and tags Exim signed (under faketime) around the DDD wrap
/// throughout their window, expired after it.
#[test]
fn batv_verifies_exim_prvs() {
    let test = "batv_verifies_exim_prvs";
    let Some(exim) = exim(test) else { return };
    let stores = stores();
    let addrs = addresses();
    let mut compared = 0;

    let day = today();
    let theirs = exim_tags(&exim, &stores, &addrs, None);
    for (si, s) in stores.iter().enumerate() {
        let tags: Vec<String> = theirs[si].concat();
        let originals: Vec<&str> = KEYS.iter().flat_map(|_| addrs.iter().copied()).collect();
        for variant in [
            tags.clone(),
            tags.iter().map(|t| upper_hex(t)).collect(),
            tags.iter().map(|t| upper_prefix(t)).collect(),
        ] {
            let r = s.verify(day, &variant);
            assert_eq!(r.code, 0, "verify {variant:?}: {}", r.err);
            assert_eq!(r.out.lines().collect::<Vec<_>>(), originals, "verify {variant:?}: stderr {}", r.err);
            compared += variant.len();
        }
        let (code, verdicts) = s.verify_json(day, &tags);
        assert_eq!(code, 0);
        for (i, v) in verdicts.iter().enumerate() {
            assert_valid(v, &tags[i], KEYS[i / addrs.len()], originals[i], "today, --json");
        }
        compared += verdicts.len();

        // 40 days later every one has expired.
        let r = s.verify(day + 40, &tags);
        assert_eq!(r.code, 1, "verify 40 days on: {}", r.out);
        assert_eq!(r.out, "", "expired tags verified");
        assert!(r.err.contains("expired"), "stderr {:?}", r.err);
        let (code, verdicts) = s.verify_json(day + 40, &tags);
        assert_eq!(code, 1);
        for (tag, v) in tags.iter().zip(&verdicts) {
            assert_invalid(v, tag, "expired", "40 days later");
        }
        compared += verdicts.len();
    }

    // Exim signing on other days, around DDD 999 -> 000.
    if let Some(faketime) = faketime(test) {
        let few = [addrs[0], addrs[2], addrs[3], addrs[9]];
        for sign_day in [20992, 20993, 20999, 21000, 21001, 21030] {
            let theirs = exim_tags(&exim, &stores, &few, Some((&faketime, sign_day)));
            let ours = batv_tags(&stores, &few, sign_day);
            for (t, o) in theirs.concat().concat().iter().zip(ours.concat().concat().iter()) {
                let (_, d, _, _) = split_tag(t);
                assert_eq!(
                    d,
                    ddd(sign_day),
                    "Exim under faketime signed {t} for day {sign_day}: is faketime working?"
                );
                assert_eq!(o, t, "sign on day {sign_day} ({})", date_of(sign_day));
                compared += 1;
            }
            for (si, s) in stores.iter().enumerate() {
                let tags: Vec<String> = theirs[si].concat();
                let keys: Vec<u8> = KEYS.iter().flat_map(|&k| few.iter().map(move |_| k)).collect();
                let originals: Vec<&str> = KEYS.iter().flat_map(|_| few.iter().copied()).collect();
                // Valid from 24 days before signing (31 ahead) to a day past expiry (grace).
                for offset in [-24, 0, 1, 2, 3, 4, 5, 6, 7, 8] {
                    let now = sign_day + offset;
                    let (code, verdicts) = s.verify_json(now, &tags);
                    let context = format!("signed on day {sign_day}, verified on {now} ({})", date_of(now));
                    assert_eq!(code, 0, "{context}: {verdicts:?}");
                    for (i, v) in verdicts.iter().enumerate() {
                        assert_valid(v, &tags[i], keys[i], originals[i], &context);
                    }
                    compared += verdicts.len();
                }
                for offset in [9, 33] {
                    let now = sign_day + offset;
                    let (code, verdicts) = s.verify_json(now, &tags);
                    let context = format!("signed on day {sign_day}, verified on {now} ({})", date_of(now));
                    assert_eq!(code, 1, "{context}");
                    for (tag, v) in tags.iter().zip(&verdicts) {
                        assert_invalid(v, tag, "expired", &context);
                    }
                    compared += verdicts.len();
                }
            }
        }
    }
    record(test, compared);
}

/// Exim's `${prvscheck}` accepts batv's prvs tags with the right secret, not a wrong one.
#[test]
fn exim_accepts_batv_prvs() {
    let Some(exim) = exim("exim_accepts_batv_prvs") else { return };
    let stores = stores();
    let addrs = addresses();
    let ours = batv_tags(&stores, &addrs, today());
    let mut cases = vec![]; // (tag, secret, expected)
    for (si, s) in stores.iter().enumerate() {
        // Same length (Exim takes HMAC keys of at most 64 bytes), last byte changed.
        let mut wrong = s.secret.clone();
        let last = wrong.last_mut().unwrap();
        *last = if *last == b'x' { b'y' } else { b'x' };
        for (ki, _) in KEYS.iter().enumerate() {
            for (ai, a) in addrs.iter().enumerate() {
                let tag = &ours[si][ki][ai];
                cases.push((tag.clone(), s.secret.clone(), format!("ok:{a}")));
                cases.push((tag.clone(), wrong.clone(), "bad".to_string()));
            }
        }
    }
    let exprs: Vec<String> = cases.iter().map(|(t, s, _)| exim.prvscheck(t, s)).collect();
    let got = exim.eval(&exprs, None);
    for ((tag, secret, want), got) in cases.iter().zip(&got) {
        assert_eq!(got, want, "prvscheck {tag} with secret {:?}", String::from_utf8_lossy(secret));
    }
    record("exim_accepts_batv_prvs", cases.len());
}

/// A tag with one hex digit changed is refused by both batv (bad-signature) and Exim (bad),
/// whichever of them signed it.
#[test]
fn tampered_tag_rejected_by_both() {
    let Some(exim) = exim("tampered_tag_rejected_by_both") else {
        return;
    };
    let stores = stores();
    let addrs = addresses();
    let few = [addrs[0], addrs[2], addrs[3], addrs[9]];
    let day = today();
    let theirs = exim_tags(&exim, &stores, &few, None);
    let ours = batv_tags(&stores, &few, day);
    let mut compared = 0;
    let mut exim_cases = vec![]; // (tampered tag, secret)
    for (si, s) in stores.iter().enumerate() {
        let mut tampered = vec![];
        for tag in theirs[si].concat().iter().chain(ours[si].concat().iter()) {
            for pos in 0..6 {
                tampered.push(tamper(tag, pos));
            }
        }
        let (code, verdicts) = s.verify_json(day, &tampered);
        assert_eq!(code, 1);
        for (t, v) in tampered.iter().zip(&verdicts) {
            assert_invalid(v, t, "bad-signature", "tampered");
        }
        let r = s.verify(day, &tampered);
        assert_eq!((r.code, r.out.as_str()), (1, ""), "tampered tags accepted");
        assert_eq!(r.err.matches("bad-signature").count(), tampered.len(), "stderr {:?}", r.err);
        compared += verdicts.len();
        exim_cases.extend(tampered.into_iter().map(|t| (t, s.secret.clone())));
    }
    // The untampered ones pass Exim, so a "bad" below is the tampering's doing.
    let mut exprs: Vec<String> = exim_cases.iter().map(|(t, s)| exim.prvscheck(t, s)).collect();
    let originals: Vec<(String, Vec<u8>)> = stores
        .iter()
        .enumerate()
        .flat_map(|(si, s)| {
            theirs[si]
                .concat()
                .into_iter()
                .chain(ours[si].concat())
                .map(move |t| (t, s.secret.clone()))
        })
        .collect();
    exprs.extend(originals.iter().map(|(t, s)| exim.prvscheck(t, s)));
    let got = exim.eval(&exprs, None);
    for ((tag, _), g) in exim_cases.iter().zip(&got) {
        assert_eq!(g, "bad", "Exim accepted tampered {tag}");
        compared += 1;
    }
    for ((tag, _), g) in originals.iter().zip(&got[exim_cases.len()..]) {
        let (_, _, _, orig) = split_tag(tag);
        assert_eq!(g, &format!("ok:{orig}"), "Exim refused untampered {tag}");
    }
    record("tampered_tag_rejected_by_both", compared);
}
