//! `batv milter` under test: started on a loopback port with a [`Store`]'s config and
//! keys, its log collected, killed by its PID when dropped.

use std::process::{Child, Command};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use super::daemon_proc::{spawn_logged, Store, BIN, NOW};

/// `batv milter` on a loopback port, and its log.
pub struct Milter {
    pub child: Child,
    pub addr: std::net::SocketAddr,
    log: Arc<Mutex<String>>,
    _lines: mpsc::Receiver<String>,
}

impl Drop for Milter {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- milter log ---\n{}", self.log.lock().unwrap());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Milter {
    pub fn start(store: &Store) -> Milter {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config").arg(&store.config).arg("--keys").arg(&store.keys).args([
            "--now",
            NOW,
            "milter",
            "--listen",
            "inet:127.0.0.1:0",
        ]);
        let (child, log, lines) = spawn_logged(cmd);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(l) => {
                    if let Some(a) = l.split("listening on inet:").nth(1) {
                        let addr = a.trim().parse().unwrap();
                        return Milter {
                            child,
                            addr,
                            log,
                            _lines: lines,
                        };
                    }
                }
                Err(_) => panic!("batv milter did not start: {}", log.lock().unwrap()),
            }
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}
