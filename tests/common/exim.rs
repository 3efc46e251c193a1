//! A private Exim daemon on a loopback port, with its own configuration (`-C`), spool and
//! log; stopped by its PID, its log printed when a test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;
use super::postfix::wait_port;

/// Debian's Exim binary, if installed.
pub fn binary() -> Option<&'static Path> {
    ["/usr/sbin/exim", "/usr/sbin/exim4"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
}

pub struct PrivateExim {
    child: Child,
    pub port: u16,
    pub binary: PathBuf,
    /// Its configuration file (for `exim -C conf -bpc` and the like).
    pub conf: PathBuf,
    pub dir: tempfile::TempDir,
}

impl PrivateExim {
    /// Start `binary` with the configuration `conf(dir)` makes for a directory whose
    /// `spool/` and `log/` the daemon can write.
    pub fn start(binary: &Path, conf: impl FnOnce(&Path) -> String) -> PrivateExim {
        let dir = super::exim_dir(binary);
        let conf_path = dir.path().join("exim.conf");
        std::fs::write(&conf_path, conf(dir.path())).unwrap();
        let port = free_port();
        // -bdf: the daemon in the foreground, so its PID is the child's.
        let child = Command::new(binary)
            .arg("-C")
            .arg(&conf_path)
            .args(["-bdf", "-oX", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let exim = PrivateExim {
            child,
            port,
            binary: binary.to_path_buf(),
            conf: conf_path,
            dir,
        };
        assert!(wait_port(port), "Exim did not listen on {port}: {}", exim.log());
        exim
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        let log = |name: &str| std::fs::read_to_string(self.dir.path().join("log").join(name)).unwrap_or_default();
        log("mainlog") + &log("paniclog")
    }
}

impl Drop for PrivateExim {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- exim log ---\n{}", self.log());
        }
        // SIGTERM stops the daemon; its children finish their one session or delivery.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
