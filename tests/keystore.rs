//! The key store's refusals, end to end through the binary: secrets of 16 to 64 bytes, the
//! fingerprint (an HMAC, the same on every host, old manifests still loading), and the
//! owners and modes of key files and of the keys directory, checked by every command that
//! loads keys (`verify`, `keys`, the daemons' startup).

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use hmac::{KeyInit, Mac};
use sha2::Digest;

const BIN: &str = env!("CARGO_BIN_EXE_batv");
const TODAY: &str = "2026-11-23";
const LIMIT: Duration = Duration::from_secs(30);

fn is_root() -> bool {
    // SAFETY: a plain getter.
    unsafe { libc::geteuid() == 0 }
}

/// A temporary directory with a config file (`config` as its text) and a keys directory.
struct Store {
    dir: tempfile::TempDir,
    keys: PathBuf,
    config: PathBuf,
}

impl Store {
    /// Nothing created yet but the (empty) config.
    fn empty(config: &str) -> Store {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let path = dir.path().join("batv.toml");
        fs::write(&path, format!("sign_domains = [\"example.com\"]\n{config}")).unwrap();
        Store { dir, keys, config: path }
    }

    /// After `keys init`: one active key, id 1.
    fn init(config: &str) -> Store {
        let s = Store::empty(config);
        let r = s.batv(&["keys", "init"], b"");
        assert_eq!(r.code, 0, "keys init: {}", r.stderr);
        s
    }

    fn set_config(&self, config: &str) {
        fs::write(&self.config, format!("sign_domains = [\"example.com\"]\n{config}")).unwrap();
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--config")
            .arg(&self.config)
            .arg("--keys")
            .arg(&self.keys)
            .args(["--now", TODAY])
            .args(args);
        c
    }

    fn batv(&self, args: &[&str], stdin: &[u8]) -> common::Output {
        common::run_bounded(self.command(args), stdin, LIMIT)
    }

    fn import_file(&self, id: &str, secret: &[u8]) -> common::Output {
        let file = self.dir.path().join(format!("secret-{id}"));
        fs::write(&file, secret).unwrap();
        self.batv(&["keys", "import", id, "--secret-file", file.to_str().unwrap()], b"")
    }

    fn sign(&self, addr: &str) -> String {
        let r = self.batv(&["sign", addr], b"");
        assert_eq!(r.code, 0, "sign: {}", r.stderr);
        String::from_utf8(r.stdout).unwrap().trim().to_string()
    }

    /// The FINGERPRINT column of `keys list`, by id.
    fn fingerprints(&self) -> Vec<(String, String)> {
        let r = self.batv(&["keys", "list"], b"");
        assert_eq!(r.code, 0, "keys list: {}", r.stderr);
        String::from_utf8(r.stdout)
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                (cols[0].to_string(), cols[cols.len() - 1].to_string())
            })
            .collect()
    }

    fn key_file(&self, id: u8) -> PathBuf {
        self.keys.join(format!("key-{id}.secret"))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The fingerprint as specified: HMAC-SHA256(secret, "batv key fingerprint"), 8 bytes.
fn expected_fingerprint(secret: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(b"batv key fingerprint");
    hex(&mac.finalize().into_bytes()[..8])
}

fn assert_refused(r: &common::Output, code: i32, needles: &[&str]) {
    assert_eq!(r.code, code, "stderr {:?}", r.stderr);
    for n in needles {
        assert!(r.stderr.contains(n), "stderr {:?} lacks {n:?}", r.stderr);
    }
    assert_eq!(r.stderr.trim_end().lines().count(), 1, "one line: {:?}", r.stderr);
}

/// Start `batv proxy` on a free port: Ok once it listens (then stopped), or its exit code
/// and stderr if it exits first.
fn proxy_startup(s: &Store) -> Result<(), (i32, String)> {
    let mut child = s
        .command(&["proxy", "--listen", "127.0.0.1:0", "--forward", "127.0.0.1:9"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = String::new();
    loop {
        match rx.recv_timeout(LIMIT) {
            Ok(line) if line.contains("listening on") => {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(());
            }
            Ok(line) => log += &(line + "\n"),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let code = child.wait().unwrap().code().unwrap_or(-1);
                return Err((code, log));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("proxy neither listened nor exited: {log}");
            }
        }
    }
}

/// The name of a group (`getent group GID`), if it has one.
fn group_name(gid: u32) -> Option<String> {
    let mut c = Command::new("getent");
    c.args(["group", &gid.to_string()]);
    let o = common::run_bounded(c, b"", LIMIT);
    let out = String::from_utf8(o.stdout).ok()?;
    (o.code == 0).then(|| out.split(':').next().unwrap_or("").to_string())
}

// ---------------------------------------------------------------------------------------
// Secret length

#[test]
fn import_takes_16_to_64_bytes() {
    let s = Store::init("");
    let r = s.import_file("5", b"fifteen-bytes-x");
    assert_refused(&r, 65, &["secret must be 16 to 64 bytes, got 15"]);
    // One trailing newline is not part of the secret.
    let r = s.batv(&["keys", "import", "5", "--secret-stdin"], b"fifteen-bytes-x\n");
    assert_refused(&r, 65, &["secret must be 16 to 64 bytes, got 15"]);
    let r = s.batv(&["keys", "import", "5", "--secret-stdin"], &[b'x'; 65]);
    assert_refused(&r, 65, &["got 65"]);
    // Nothing was written by the refusals.
    assert!(!s.key_file(5).exists());
    assert_eq!(s.fingerprints().len(), 1);

    let r = s.import_file("5", b"sixteen-bytes-ok");
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = s.batv(&["keys", "import", "6", "--secret-stdin"], b"sixteen-bytes-ok\n");
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = s.batv(&["keys", "import", "7", "--secret-stdin"], &[b'y'; 64]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(fs::read(s.key_file(5)).unwrap(), b"sixteen-bytes-ok\n");
    assert_eq!(s.fingerprints().len(), 4);
}

#[test]
fn a_store_holding_a_short_secret_does_not_load() {
    // What an older batv accepted on import.
    let s = Store::init("");
    let tag = s.sign("alice@example.com");
    fs::write(s.key_file(1), "s3cret\n").unwrap();
    let file = s.key_file(1);
    let needle = format!("{}: secret is 6 bytes", file.display());
    for args in [&["verify", tag.as_str()][..], &["keys", "list"], &["keys", "add", "--standby"]] {
        assert_refused(&s.batv(args, b""), 78, &[&needle]);
    }
    let (code, log) = proxy_startup(&s).unwrap_err();
    assert_eq!(code, 78, "{log}");
    assert!(log.contains(&needle), "{log}");
}

// ---------------------------------------------------------------------------------------
// Fingerprints

#[test]
fn the_fingerprint_is_an_hmac_and_the_same_on_every_host() {
    let secret = b"shared by the whole fleet, 42 bytes long!!";
    let (a, b) = (Store::empty(""), Store::empty(""));
    for s in [&a, &b] {
        fs::create_dir(&s.keys).unwrap();
        assert_eq!(s.import_file("3", secret).code, 0);
    }
    let fa = a.fingerprints();
    assert_eq!(fa, b.fingerprints());
    let (id, fp) = &fa[0];
    assert_eq!(id, "3");
    assert_eq!(*fp, expected_fingerprint(secret));
    assert_eq!(fp.len(), 16);
    assert!(fp.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{fp}");
    // Not the plain hash a dictionary of chosen secrets can be checked against.
    assert!(!hex(&sha2::Sha256::digest(secret)).starts_with(fp.as_str()));
    // `keys show` and the manifest say the same.
    let show = String::from_utf8(a.batv(&["keys", "show", "3"], b"").stdout).unwrap();
    assert!(show.contains(&format!("fingerprint: {fp}\n")), "{show}");
    assert!(fs::read_to_string(a.keys.join("manifest.toml")).unwrap().contains(fp.as_str()));
}

#[test]
fn a_manifest_with_the_old_plain_hash_loads_and_is_rewritten() {
    let secret = b"an imported secret of 32 bytes..";
    let legacy = hex(&sha2::Sha256::digest(secret)[..8]);
    let s = Store::empty("");
    fs::create_dir(&s.keys).unwrap();
    // As the previous version wrote them.
    let mut f = secret.to_vec();
    f.push(b'\n');
    fs::write(s.key_file(4), f).unwrap();
    fs::set_permissions(s.key_file(4), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(
        s.keys.join("manifest.toml"),
        format!(
            "# batv key manifest\nversion = 1\ncount = 1\n\n[[key]]\nid = 4\nstate = \"active\"\n\
             created = \"2026-11-01T00:00:00Z\"\nactivated = \"2026-11-01T00:00:00Z\"\nfingerprint = \"{legacy}\"\n"
        ),
    )
    .unwrap();

    let fresh = expected_fingerprint(secret);
    assert_eq!(s.fingerprints(), [("4".to_string(), fresh.clone())]);
    let show = s.batv(&["keys", "show", "4"], b"");
    assert!(!String::from_utf8_lossy(&show.stdout).contains(&legacy));
    let tag = s.sign("alice@example.com");
    assert!(tag.starts_with("prvs=4"), "{tag}");
    assert_eq!(s.batv(&["verify", &tag], b"").code, 0);
    // A read leaves the manifest alone (it may be a read-only mount); a write replaces it.
    assert!(fs::read_to_string(s.keys.join("manifest.toml")).unwrap().contains(&legacy));
    assert_eq!(s.batv(&["keys", "add", "--standby"], b"").code, 0);
    let m = fs::read_to_string(s.keys.join("manifest.toml")).unwrap();
    assert!(m.contains(&fresh) && !m.contains(&legacy), "{m}");
    assert_eq!(s.batv(&["verify", &tag], b"").code, 0);
}

// ---------------------------------------------------------------------------------------
// Key files

#[test]
fn a_group_readable_key_file_needs_key_group() {
    let s = Store::init("");
    let tag = s.sign("alice@example.com");
    let file = s.key_file(1);
    fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();
    let gid = fs::metadata(&file).unwrap().gid();
    let group = group_name(gid).unwrap_or_else(|| gid.to_string());
    let needles = [
        format!("{}: key file is readable by group {group} (mode 0640)", file.display()),
        "key_group is not set".to_string(),
        format!("chmod 600 {}", file.display()),
        format!("key_group = \"{group}\""),
    ];
    let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
    assert_refused(&s.batv(&["verify", &tag], b""), 78, &needles);
    let (code, log) = proxy_startup(&s).unwrap_err();
    assert_eq!(code, 78, "{log}");
    assert!(log.contains(needles[0]), "{log}");
    let sock = s.dir.path().join("batv.sock");
    let r = s.batv(&["daemon", "--listen", &format!("unix:{}", sock.display())], b"");
    assert_refused(&r, 78, &needles[..1]);

    // With key_group naming the file's group, the same file is fine.
    let Some(name) = group_name(gid) else {
        eprintln!("skipping the key_group half: gid {gid} has no name");
        return;
    };
    s.set_config(&format!("key_group = \"{name}\"\n"));
    assert_eq!(s.batv(&["verify", &tag], b"").code, 0);
    proxy_startup(&s).expect("the proxy starts with key_group set");

    // Another group than the file's is not.
    if let Some(other) = ["daemon", "nogroup", "root"].iter().find(|g| **g != name) {
        s.set_config(&format!("key_group = \"{other}\"\n"));
        let r = s.batv(&["verify", &tag], b"");
        assert_refused(&r, 78, &[&format!("key_group is \"{other}\""), &format!("chgrp {other}")]);
    }
}

#[test]
fn key_group_stores_from_keys_init_load() {
    if !is_root() {
        eprintln!("skipping: needs root to give files the group root");
        return;
    }
    // Even under a umask that would clear the group's bits.
    let s = Store::empty("key_group = \"root\"\n");
    let mut c = Command::new("sh");
    c.arg("-c").arg("umask 077; exec \"$@\"").arg("sh").arg(BIN);
    c.arg("--config").arg(&s.config).arg("--keys").arg(&s.keys).args(["keys", "init"]);
    let r = common::run_bounded(c, b"", LIMIT);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(fs::metadata(&s.keys).unwrap().mode() & 0o7777, 0o750);
    assert_eq!(fs::metadata(s.key_file(1)).unwrap().mode() & 0o7777, 0o640);
    let tag = s.sign("alice@example.com");
    assert_eq!(s.batv(&["verify", &tag], b"").code, 0);
    assert_eq!(s.batv(&["keys", "rotate"], b"").code, 0);
    proxy_startup(&s).expect("the proxy starts");
}

#[test]
fn writable_key_files_are_refused() {
    let s = Store::init("");
    let tag = s.sign("alice@example.com");
    for (mode, needle) in [
        (0o620, "writable by others than its owner (mode 0620)"),
        (0o660, "writable by others than its owner (mode 0660)"),
        (0o602, "accessible to everyone (mode 0602)"),
    ] {
        fs::set_permissions(s.key_file(1), fs::Permissions::from_mode(mode)).unwrap();
        assert_refused(&s.batv(&["verify", &tag], b""), 78, &[needle]);
    }
}

#[test]
fn a_key_file_of_another_user_is_refused() {
    if !is_root() {
        eprintln!("skipping: needs root to chown a key file to nobody");
        return;
    }
    let s = Store::init("");
    let tag = s.sign("alice@example.com");
    std::os::unix::fs::chown(s.key_file(1), Some(65534), None).unwrap();
    let r = s.batv(&["verify", &tag], b"");
    assert_refused(&r, 78, &["key file is owned by nobody (uid 65534)", "chown root"]);
    assert_eq!(proxy_startup(&s).unwrap_err().0, 78);
}

// ---------------------------------------------------------------------------------------
// The keys directory

#[test]
fn a_keys_directory_others_can_write_is_refused() {
    let s = Store::init("");
    let tag = s.sign("alice@example.com");
    let before = fs::read(s.keys.join("manifest.toml")).unwrap();
    for (mode, by) in [(0o777, "others"), (0o1777, "others"), (0o770, "its group"), (0o730, "its group")] {
        fs::set_permissions(&s.keys, fs::Permissions::from_mode(mode)).unwrap();
        let needles = [
            format!("{}: keys directory is writable by {by} (mode {mode:04o})", s.keys.display()),
            format!("chmod go-w {}", s.keys.display()),
        ];
        let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
        for args in [&["verify", tag.as_str()][..], &["keys", "list"], &["keys", "rotate"]] {
            assert_refused(&s.batv(args, b""), 78, &needles);
        }
        assert_eq!(proxy_startup(&s).unwrap_err().0, 78);
    }
    // No write happened: the check comes before the lock and the manifest.
    assert_eq!(fs::read(s.keys.join("manifest.toml")).unwrap(), before);
    fs::set_permissions(&s.keys, fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(s.batv(&["verify", &tag], b"").code, 0);
}

#[test]
fn a_keys_directory_of_another_user_is_refused() {
    if !is_root() {
        eprintln!("skipping: needs root to chown the keys directory to nobody");
        return;
    }
    let s = Store::init("");
    let tag = s.sign("alice@example.com");
    std::os::unix::fs::chown(&s.keys, Some(65534), None).unwrap();
    let needles = [
        format!("{}: keys directory is owned by nobody (uid 65534)", s.keys.display()),
        format!("chown root {}", s.keys.display()),
    ];
    let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
    for args in [&["verify", tag.as_str()][..], &["keys", "init"], &["keys", "rotate"]] {
        assert_refused(&s.batv(args, b""), 78, &needles);
    }
    assert_eq!(proxy_startup(&s).unwrap_err().0, 78);
    std::os::unix::fs::chown(&s.keys, Some(0), None).unwrap();
    assert_eq!(s.batv(&["verify", &tag], b"").code, 0);
}

/// A Kubernetes Secret volume is a tmpfs of mode 1777, mounted read-only: the write bits
/// grant nothing there, so it loads; the same directory mounted read-write does not.
#[test]
fn a_read_only_mount_of_mode_1777_loads() {
    let mut probe = Command::new("unshare");
    probe.args(["-m", "true"]);
    if !is_root() || common::run_bounded(probe, b"", LIMIT).code != 0 {
        eprintln!("skipping: needs root and mount namespaces (unshare -m)");
        return;
    }
    let src = Store::init("");
    let tag = src.sign("alice@example.com");
    let vol = src.dir.path().join("vol");
    fs::create_dir(&vol).unwrap();
    // In a mount namespace of its own: the mount goes away with the shell.
    let run = |remount: &str| {
        let mut c = Command::new("unshare");
        c.args(["-m", "sh", "-ec"])
            .arg(format!(
                "mount -t tmpfs -o size=1m,mode=1777 batv-test \"$1\"; cp -p \"$2\"/manifest.toml \"$2\"/key-1.secret \"$1\"/; {remount} exec \"$3\" --config \"$5\" --keys \"$1\" --now {TODAY} verify \"$4\""
            ))
            .arg("sh")
            .arg(&vol)
            .arg(&src.keys)
            .arg(BIN)
            .arg(&tag)
            .arg(&src.config);
        common::run_bounded(c, b"", LIMIT)
    };
    let r = run("mount -o remount,ro \"$1\";");
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run("");
    assert_refused(&r, 78, &["keys directory is writable by others (mode 1777)"]);
}

#[test]
fn directories_made_by_keys_init_pass() {
    let s = Store::init("");
    assert_eq!(fs::metadata(&s.keys).unwrap().mode() & 0o7777, 0o700);
    let tag = s.sign("alice@example.com");
    for args in [&["keys", "rotate"][..], &["keys", "add", "--standby"], &["keys", "list"]] {
        assert_eq!(s.batv(args, b"").code, 0, "{args:?}");
    }
    assert_eq!(s.batv(&["verify", &tag], b"").code, 0);
    proxy_startup(&s).expect("the proxy starts");
    // A keys directory made by hand under the usual umask (0755) is fine too.
    let t = Store::empty("");
    fs::create_dir(&t.keys).unwrap();
    fs::set_permissions(&t.keys, fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(t.import_file("2", b"sixteen-bytes-ok").code, 0);
    assert_eq!(t.fingerprints().len(), 1);
}
