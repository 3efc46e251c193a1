//! The Debian package (DESIGN §11) as an admin meets it: `cargo deb` builds it, lintian
//! finds no error, `dpkg -i` installs it on this machine, the daemon starts as the unit
//! starts it and answers, an upgrade over itself keeps the edited conffile and the keys,
//! and `dpkg -P` leaves nothing behind.
//!
//! It installs a package, so it runs only as root with CI=true (`.ci/run`) or
//! BATV_PACKAGE_TEST=1, on a machine without batv installed; it puts back what it
//! changed, even when it fails.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const UNITS: [&str; 4] = [
    "batv-proxy.service",
    "batv-daemon.service",
    "batv-daemon.socket",
    "batv-milter.service",
];
const SPOOL: &str = "/var/spool/postfix";
const SOCKET: &str = "/var/spool/postfix/batv/batv.sock";

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

fn getent(db: &str, name: &str) -> Option<String> {
    let out = Command::new("getent").args([db, name]).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${db:Status-Status}", "batv"])
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.is_empty() && o.stdout != b"not-installed")
}

/// Puts the machine back: purges the package and removes what the test itself made.
struct Cleanup {
    spool_existed: bool,
    daemon: Option<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if installed() {
            let _ = Command::new("dpkg").args(["-P", "batv"]).output();
        }
        if !self.spool_existed {
            let _ = fs::remove_dir_all(SPOOL);
        }
    }
}

fn cargo_deb() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Its own target directory: this test's cargo holds the one it was built in.
    let target = root.join("target/package");
    let out = ok(Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .env("CARGO_TARGET_DIR", &target)
        .args(["deb", "--locked", "--output"])
        .arg(target.join("debian")));
    let deb = PathBuf::from(out.lines().last().unwrap_or_default().trim());
    assert!(deb.is_file(), "cargo deb made no package: {out}");
    deb
}

fn mode(p: &str) -> (u32, String, String) {
    let m = fs::metadata(p).unwrap_or_else(|e| panic!("{p}: {e}"));
    let name = |db: &str, id: u32| {
        getent(db, &id.to_string())
            .and_then(|l| l.split(':').next().map(str::to_string))
            .unwrap_or(id.to_string())
    };
    (m.permissions().mode() & 0o7777, name("passwd", m.uid()), name("group", m.gid()))
}

/// The value of `Key=` in a unit file, prefixes (`-`, `+`) removed.
fn unit_line(unit: &str, key: &str) -> Option<String> {
    let text = fs::read_to_string(Path::new("/lib/systemd/system").join(unit)).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(|v| v.trim_start_matches(['-', '+', '@', ':', '!']).to_string())
}

fn socketmap(query: &str) -> String {
    let mut s = UnixStream::connect(SOCKET).unwrap_or_else(|e| panic!("{SOCKET}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("{}:{query},", query.len()).as_bytes()).unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Starts `ExecStartPre` (as root, as `+` says) and `ExecStart` as user batv, as systemd
/// would, and waits for the socket.
fn start_daemon() -> Child {
    let pre = unit_line("batv-daemon.service", "ExecStartPre").expect("ExecStartPre");
    ok(Command::new("sh").arg("-c").arg(&pre));
    let exec = unit_line("batv-daemon.service", "ExecStart").expect("ExecStart");
    assert!(exec.starts_with("/usr/bin/batv "), "{exec}");
    assert_eq!(unit_line("batv-daemon.service", "User").as_deref(), Some("batv"));
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=batv", "--regid=batv", "--init-groups", "--"])
        .args(exec.split_whitespace());
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while UnixStream::connect(SOCKET).is_err() {
        if let Ok(Some(st)) = child.try_wait() {
            let mut err = String::new();
            let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut err));
            panic!("batv daemon exited {st}: {err}");
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no socket at {SOCKET} after 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let uid = getent("passwd", "batv").unwrap().split(':').nth(2).unwrap().to_string();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        line.split_whitespace().skip(1).all(|u| u == uid),
        "daemon not running as batv: {line}"
    );
    child
}

fn stop(mut child: Child) {
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < Duration::from_secs(10), "daemon ignores SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn debian_package_installs_runs_upgrades_and_purges() {
    let wanted = std::env::var("CI").as_deref() == Ok("true") || std::env::var_os("BATV_PACKAGE_TEST").is_some();
    // SAFETY: plain getter.
    if !wanted || unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: installs a package (root with CI=true or BATV_PACKAGE_TEST=1)");
        return;
    }
    for tool in ["cargo-deb", "lintian", "dpkg", "systemd-analyze", "setpriv", "adduser"] {
        assert!(have(tool), "{tool} missing: .ci/run must install it");
    }
    assert!(!installed(), "batv is installed here: this test installs and purges its own");
    for p in ["/etc/batv", "/var/lib/batv", "/usr/bin/batv"] {
        assert!(!Path::new(p).exists(), "{p} exists: not a machine this test may change");
    }
    assert!(
        getent("passwd", "batv").is_none() && getent("group", "batv").is_none(),
        "user or group batv exists"
    );
    let mut guard = Cleanup {
        spool_existed: Path::new(SPOOL).exists(),
        daemon: None,
    };

    let deb = cargo_deb();

    // lintian: no error (warnings are reported, not fatal).
    let lint = run(Command::new("lintian").arg(&deb));
    let report = String::from_utf8_lossy(&lint.stdout);
    eprintln!("lintian:\n{report}");
    assert!(!report.lines().any(|l| l.starts_with("E:")), "lintian errors:\n{report}");

    ok(Command::new("dpkg").arg("-i").arg(&deb));

    // Files, owners, modes.
    assert_eq!(mode("/usr/bin/batv"), (0o755, "root".into(), "root".into()));
    let version = ok(Command::new("/usr/bin/batv").arg("--version"));
    assert!(version.starts_with(&format!("batv {}", env!("CARGO_PKG_VERSION"))), "{version}");
    let files = ok(Command::new("dpkg-query").args(["-L", "batv"]));
    let man = Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    for page in fs::read_dir(&man).unwrap() {
        let name = page.unwrap().file_name().to_string_lossy().into_owned();
        let section = name.rsplit('.').next().unwrap();
        let path = format!("/usr/share/man/man{section}/{name}.gz");
        assert!(files.lines().any(|l| l == path), "no {path}");
        let head = fs::read(&path).unwrap();
        assert_eq!(&head[..2], &[0x1f, 0x8b], "{path}: not gzip");
    }
    for f in [
        "/usr/share/bash-completion/completions/batv",
        "/usr/share/zsh/vendor-completions/_batv",
        "/usr/share/fish/vendor_completions.d/batv.fish",
        "/usr/share/doc/batv/copyright",
        "/usr/share/doc/batv/changelog.Debian.gz",
    ] {
        assert_eq!(mode(f), (0o644, "root".into(), "root".into()), "{f}");
    }
    for u in UNITS {
        assert_eq!(mode(&format!("/lib/systemd/system/{u}")).0, 0o644, "{u}");
    }
    let conffiles = ok(Command::new("dpkg-query").args(["-W", "-f", "${Conffiles}", "batv"]));
    assert!(conffiles.contains("/etc/batv/batv.toml"), "not a conffile: {conffiles}");
    let user = getent("passwd", "batv").expect("user batv");
    let fields: Vec<&str> = user.split(':').collect();
    assert!(fields[2].parse::<u32>().unwrap() < 1000, "not a system user: {user}");
    assert_eq!(fields[6], "/usr/sbin/nologin", "{user}");
    assert_eq!(getent("group", fields[3]).unwrap().split(':').next(), Some("batv"), "{user}");
    assert_eq!(mode("/etc/batv/keys"), (0o750, "root".into(), "batv".into()));
    let keys: Vec<String> = fs::read_dir("/etc/batv/keys")
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .filter(|p| p.ends_with(".secret"))
        .collect();
    assert_eq!(keys.len(), 1, "postinst makes one first key: {keys:?}");
    assert_eq!(mode(&keys[0]), (0o640, "root".into(), "batv".into()));
    let key_before = fs::read(&keys[0]).unwrap();

    // The shipped conffile is accepted as it is.
    let check = ok(Command::new("batv").args(["--config", "/etc/batv/batv.toml", "config", "check"]));
    assert!(check.contains("OK"), "{check}");

    // The units as installed: systemd-analyze finds nothing wrong and rates each service
    // "OK" or better.
    for u in UNITS {
        let path = format!("/lib/systemd/system/{u}");
        let v = run(Command::new("systemd-analyze").args(["verify", &path]));
        let said = format!("{}{}", String::from_utf8_lossy(&v.stdout), String::from_utf8_lossy(&v.stderr));
        assert!(v.status.success() && said.trim().is_empty(), "systemd-analyze verify {u}: {said}");
        if u.ends_with(".service") {
            let s = ok(Command::new("systemd-analyze").args(["security", "--offline=true", &path]));
            let level = s
                .lines()
                .find_map(|l| l.split("Overall exposure level for ").nth(1))
                .and_then(|l| l.split(": ").nth(1))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|n| n.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no exposure level for {u}: {s}"));
            eprintln!("{u}: exposure {level}");
            assert!(level <= 3.9, "{u}: exposure {level} > 3.9");
        }
    }

    // An admin names the domain; the daemon, started as its unit starts it, signs for it.
    let conf = fs::read_to_string("/etc/batv/batv.toml").unwrap();
    let edited = conf.replacen("# sign_domains = [\"example.com\"]", "sign_domains = [\"example.org\"]", 1);
    assert_ne!(conf, edited, "the conffile has no sign_domains example to uncomment");
    fs::write("/etc/batv/batv.toml", &edited).unwrap();
    guard.daemon = Some(start_daemon());
    assert_eq!(mode("/var/spool/postfix/batv"), (0o750, "batv".into(), "postfix".into()));
    let signed = socketmap("sign bob@example.org");
    let tag = signed
        .split_once(":OK ")
        .and_then(|(_, t)| t.strip_suffix(','))
        .unwrap_or_else(|| panic!("sign answer: {signed:?}"));
    assert!(tag.starts_with("prvs=") && tag.ends_with("=bob@example.org"), "{tag}");
    assert_eq!(socketmap("sign bob@elsewhere.example"), "9:NOTFOUND ,");
    stop(guard.daemon.take().unwrap());

    // Upgrade over itself: the edited conffile, the user and the key stay.
    ok(Command::new("dpkg").arg("-i").arg(&deb));
    assert_eq!(
        fs::read_to_string("/etc/batv/batv.toml").unwrap(),
        edited,
        "upgrade replaced the edited conffile"
    );
    assert_eq!(getent("passwd", "batv").as_deref(), Some(user.as_str()));
    assert_eq!(fs::read(&keys[0]).unwrap(), key_before, "upgrade changed the key");
    let verified = ok(Command::new("batv").args(["--config", "/etc/batv/batv.toml", "verify", tag]));
    assert_eq!(verified.trim(), "bob@example.org");

    // Purge: nothing of the package is left.
    ok(Command::new("dpkg").args(["-P", "batv"]));
    assert!(!installed());
    for p in [
        "/etc/batv",
        "/var/lib/batv",
        "/usr/bin/batv",
        "/var/spool/postfix/batv",
        "/usr/share/doc/batv",
    ] {
        assert!(!Path::new(p).exists(), "{p} left after purge");
    }
    for u in UNITS {
        assert!(!Path::new(&format!("/lib/systemd/system/{u}")).exists(), "{u} left after purge");
    }
    assert!(getent("passwd", "batv").is_none(), "user batv left after purge");
    assert!(getent("group", "batv").is_none(), "group batv left after purge");
    assert_eq!(Path::new(SPOOL).exists(), guard.spool_existed, "{SPOOL} made by the unit and left");
    let leftover = run(Command::new("find").args(["/etc/systemd", "/var/lib/systemd", "-name", "*batv*"]));
    assert!(leftover.stdout.is_empty(), "left: {}", String::from_utf8_lossy(&leftover.stdout));
}
