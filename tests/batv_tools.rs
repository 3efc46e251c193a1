//! Interop with batv-tools 0.8, the other BATV implementation: ../shared/data/batv-tools/
//! vectors.tsv holds tags its `batv-sign -k KEYFILE -d DELIM` made (sub-address syntax,
//! prvs scheme, key id 0, lifetime 7) on two days, with two 64-byte keys (one ends in LF).
//! Every row is signed byte for byte through the CLI with the key imported `--raw`, and
//! verified from its day through its expiry window and refused after it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use batv::core::tag::{self, Schemes, TagKey, Verdict};
use batv::core::time;

const BIN: &str = env!("CARGO_BIN_EXE_batv");
/// Rows in vectors.tsv: 2 keys x 2 days x 2 delimiters x 6 addresses.
const ROWS: usize = 48;

struct Vector {
    date: String,
    key: Vec<u8>,
    delim: char,
    address: String,
    tagged: String,
}

fn vectors() -> Vec<Vector> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/batv-tools/vectors.tsv");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("date\tkey_hex\tdelim\taddress\tbatv_tools_output"));
    let v: Vec<Vector> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 5, "{l}");
            let key = (0..f[1].len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&f[1][i..i + 2], 16).unwrap())
                .collect();
            let mut d = f[2].chars();
            let delim = d.next().unwrap();
            assert_eq!(d.next(), None);
            Vector {
                date: f[0].to_string(),
                key,
                delim,
                address: f[3].to_string(),
                tagged: f[4].to_string(),
            }
        })
        .collect();
    assert_eq!(v.len(), ROWS, "vectors.tsv changed: update ROWS");
    v
}

fn day(date: &str) -> i64 {
    tag::unix_day(time::parse_now(date).unwrap())
}

fn run(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(BIN).args(args).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A keys directory holding `key` as key 0, imported from a file as batv-tools keeps it.
fn import(dir: &Path, key: &[u8], raw: bool) -> PathBuf {
    let keys = dir.join(if raw { "keys" } else { "keys-text" });
    fs::create_dir(&keys).unwrap();
    let secret = dir.join("batv-tools.key");
    fs::write(&secret, key).unwrap();
    let k = keys.to_str().unwrap();
    let mut args = vec!["--keys", k, "keys", "import", "0", "--secret-file", secret.to_str().unwrap()];
    if raw {
        args.push("--raw");
    }
    let (code, out, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("imported key 0"), "{out}");
    keys
}

#[test]
fn every_vector_is_signed_byte_exact_by_the_cli() {
    let vectors = vectors();
    // One batv invocation per key, day and delimiter, with all six addresses.
    let mut groups: BTreeMap<(Vec<u8>, String, char), Vec<&Vector>> = BTreeMap::new();
    for v in &vectors {
        groups.entry((v.key.clone(), v.date.clone(), v.delim)).or_default().push(v);
    }
    let mut checked = 0;
    for ((key, date, delim), rows) in &groups {
        let t = tempfile::tempdir().unwrap();
        let keys = import(t.path(), key, true);
        let config = t.path().join("batv.toml");
        fs::write(
            &config,
            format!("scheme = \"prvs\"\ntag_syntax = \"subaddress\"\nsubaddress_delimiter = \"{delim}\"\n"),
        )
        .unwrap();
        let now = format!("{date}T12:00:00Z");
        let mut args = vec![
            "--config",
            config.to_str().unwrap(),
            "--keys",
            keys.to_str().unwrap(),
            "--now",
            &now,
            "sign",
            "--key",
            "0",
        ];
        args.extend(rows.iter().map(|v| v.address.as_str()));
        let (code, out, err) = run(&args);
        assert_eq!(code, 0, "{err}");
        let got: Vec<&str> = out.lines().collect();
        let want: Vec<&str> = rows.iter().map(|v| v.tagged.as_str()).collect();
        assert_eq!(got, want, "key {:02x?}.. on {date} with {delim:?}", &key[..2]);
        // `batv verify` gives each address back on the day it was made.
        let mut args = vec![
            "--config",
            config.to_str().unwrap(),
            "--keys",
            keys.to_str().unwrap(),
            "--now",
            &now,
            "verify",
        ];
        args.extend(want.iter().copied());
        let (code, out, err) = run(&args);
        assert_eq!(code, 0, "{err}");
        let originals: Vec<&str> = rows.iter().map(|v| v.address.as_str()).collect();
        assert_eq!(out.lines().collect::<Vec<_>>(), originals);
        checked += rows.len();
    }
    assert_eq!(checked, ROWS);
}

#[test]
fn a_key_ending_in_a_newline_needs_raw() {
    let v = vectors();
    let row = v.iter().find(|v| v.key.last() == Some(&b'\n')).expect("a key that ends in LF");
    let t = tempfile::tempdir().unwrap();
    let text = import(t.path(), &row.key, false);
    let raw = import(t.path(), &row.key, true);
    let now = format!("{}T12:00:00Z", row.date);
    let sign = |keys: &Path| {
        let (code, out, err) = run(&[
            "--keys",
            keys.to_str().unwrap(),
            "--now",
            &now,
            "sign",
            "--scheme",
            "prvs",
            "--syntax",
            "subaddress",
            "--key",
            "0",
            &row.address,
        ]);
        assert_eq!(code, 0, "{err}");
        out.trim_end().to_string()
    };
    // The text import strips the trailing LF (a 63-byte key): a different tag.
    assert_ne!(sign(&text), row.tagged);
    assert_eq!(sign(&raw), row.tagged);
    // The secret is kept exactly: show --secret prints the 64 bytes.
    let o = Command::new(BIN)
        .args(["--keys", raw.to_str().unwrap(), "keys", "show", "0", "--secret"])
        .output()
        .unwrap();
    assert!(o.stdout.windows(row.key.len()).any(|w| w == row.key.as_slice()));
}

#[test]
fn every_vector_verifies_through_its_window_and_not_after() {
    let mut checked = 0;
    for v in vectors() {
        let key = TagKey::new(&v.key);
        let lookup = |k: u8| (k == 0).then_some(&key);
        let signed_on = day(&v.date);
        let expiry = signed_on + 7;
        fn check<'a>(s: &'a str, today: i64, key: &TagKey) -> Verdict<'a> {
            tag::verify(s, today, Schemes::ALL, |k: u8| (k == 0).then_some(key)).unwrap()
        }
        let verdict = |s: &str, today: i64| check(s, today, &key).reason();
        // Valid from the day it was made to its expiry day DDD (batv-validate's window),
        // and on batv's one day of grace after it.
        for today in [signed_on - 1, signed_on, signed_on + 3, expiry, expiry + 1] {
            match check(&v.tagged, today, &key) {
                Verdict::Valid(c) => assert_eq!(c.original, v.address, "{}", v.tagged),
                other => panic!("{} on day {today}: {other:?}", v.tagged),
            }
        }
        for today in [expiry + 2, expiry + 30, signed_on + 500] {
            assert_eq!(verdict(&v.tagged, today), "expired", "{} on day {today}", v.tagged);
        }
        // A native-only verifier does not take 24-bit prvs tags.
        assert!(matches!(
            tag::verify(&v.tagged, signed_on, Schemes::of([tag::Scheme::Native]), lookup).unwrap(),
            Verdict::Malformed(_)
        ));
        // Tampered: every hash digit changed, the day changed, another key id.
        let at = v.tagged.rfind("prvs=").unwrap() + "prvs=".len();
        for i in at + 4..at + 10 {
            let mut b = v.tagged.clone().into_bytes();
            b[i] = if b[i] == b'0' { b'1' } else { b'0' };
            let s = String::from_utf8(b).unwrap();
            assert_eq!(verdict(&s, signed_on), "bad-signature", "{s}");
        }
        let mut b = v.tagged.clone().into_bytes();
        b[at + 3] = if b[at + 3] == b'9' { b'8' } else { b'9' };
        let s = String::from_utf8(b).unwrap();
        assert_eq!(verdict(&s, signed_on), "bad-signature", "{s}");
        let s = format!("{}1{}", &v.tagged[..at], &v.tagged[at + 1..]);
        assert_eq!(check(&s, signed_on, &key), Verdict::UnknownKey(1), "{s}");
        // The tag moved to another mailbox, or the extension taken off, does not verify.
        let (local, domain) = v.address.rsplit_once('@').unwrap();
        let moved = v.tagged.replacen(local, "mallory", 1);
        assert_eq!(verdict(&moved, signed_on), "bad-signature", "{moved}");
        if let Some((mailbox, _)) = local.split_once('+') {
            let cut = format!("{mailbox}{}@{domain}", &v.tagged[at - 6..v.tagged.rfind('@').unwrap()]);
            assert_eq!(verdict(&cut, signed_on), "bad-signature", "{cut}");
        }
        // Strip needs no key.
        assert_eq!(tag::strip(&v.tagged).unwrap(), v.address);
        checked += 1;
    }
    assert_eq!(checked, ROWS);
}
