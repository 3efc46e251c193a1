//! A whole Postfix (master, smtpd, cleanup, qmgr, smtp...) from the unpacked Debian package,
//! with its own config and queue directories, on loopback ports; stopped by its master's PID.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::require;

pub struct Postfix {
    pub dir: tempfile::TempDir,
    script: Child,
}

pub use super::free_port;

/// Wait until something listens on 127.0.0.1:port.
pub fn wait_port(port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Postfix needs root (it drops to mail_owner) and the postfix user and postdrop group,
/// which .ci/run creates.
pub fn can_run_postfix() -> bool {
    let root = unsafe { libc::geteuid() } == 0;
    let user = Command::new("getent")
        .args(["passwd", "postfix"])
        .output()
        .is_ok_and(|o| o.status.success());
    let group = Command::new("getent")
        .args(["group", "postdrop"])
        .output()
        .is_ok_and(|o| o.status.success());
    require(
        "root and the postfix user and postdrop group (a whole Postfix)",
        root && user && group,
    )
}

impl Postfix {
    /// Start Postfix with `main_extra` appended to main.cf and `services` (master.cf lines,
    /// e.g. `127.0.0.1:2525 inet n - n - - smtpd`) beside the internal services. Waits for
    /// every `ports` to accept connections.
    pub fn start(root: &Path, main_extra: &str, services: &[String], ports: &[u16]) -> Postfix {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (etc, queue, data) = (d.join("etc"), d.join("queue"), d.join("data"));
        for p in [&etc, &queue, &data] {
            std::fs::create_dir_all(p).unwrap();
        }
        // The tempdir itself is 0700: the postfix user must reach the queue and data.
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let chown = Command::new("chown").arg("postfix").arg(&data).status().unwrap();
        assert!(chown.success());
        let lib = root.join("usr/lib/postfix");
        let main = format!(
            "compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
command_directory = {root}/usr/sbin
daemon_directory = {lib}/sbin
shlib_directory = {lib}
meta_directory = {etc}
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = mx.example.com
mydomain = example.com
mydestination =
alias_maps =
alias_database =
biff = no
smtpd_banner = $myhostname ESMTP Postfix
maillog_file = {d}/maillog
maillog_file_prefixes = {d}
import_environment = MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C LD_LIBRARY_PATH={lib}
{main_extra}
",
            queue = queue.display(),
            data = data.display(),
            root = root.display(),
            lib = lib.display(),
            etc = etc.display(),
            d = d.display(),
        );
        std::fs::write(etc.join("main.cf"), main).unwrap();
        let internal = "
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
local     unix  - n n - - local
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
";
        std::fs::write(etc.join("master.cf"), services.join("\n") + internal).unwrap();
        // postfix-script's integrity check reads it from meta_directory.
        let _ = std::fs::copy(root.join("etc/postfix/postfix-files"), etc.join("postfix-files"));
        let script = Command::new(root.join("usr/sbin/postfix"))
            .env("LD_LIBRARY_PATH", &lib)
            .arg("-c")
            .arg(&etc)
            .arg("start-fg")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pf = Postfix { dir, script };
        for &p in ports {
            assert!(wait_port(p), "Postfix did not listen on {p}: {}", pf.log());
        }
        pf
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }

    /// Wait until the log contains `needle` (Postfix logs asynchronously).
    pub fn wait_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    fn master_pid(&self) -> Option<i32> {
        let p: PathBuf = self.dir.path().join("queue/pid/master.pid");
        std::fs::read_to_string(p).ok()?.trim().parse().ok()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        if let Some(pid) = self.master_pid() {
            // SIGTERM to the master stops it and its children.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.script.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.script.kill();
        let _ = self.script.wait();
    }
}
