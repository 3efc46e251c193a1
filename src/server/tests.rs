//! The runtime with a toy mode: reloads all or nothing, the connection limit, and the
//! drain on stop. (Socket activation: `listen.rs`; the drop to a user: tests/server.rs,
//! which needs a process of its own.)

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::*;
use crate::core::config::Listen;
use crate::core::keys::{KeyStore, KeyStores, Keyring};

/// Answers each line with its state (`lifetime keys`); `slow` takes 300 ms, and a stop
/// is seen only between lines.
struct Toy;

#[derive(Debug, PartialEq)]
struct ToyState {
    lifetime: u16,
    keys: usize,
}

impl Service for Toy {
    type State = ToyState;
    const NAME: &'static str = "batv-toy";

    fn build(&self, config: &Config, keys: &Keyring) -> Result<ToyState, String> {
        if config.sign_domains.is_empty() {
            return Err("the toy needs sign_domains".into());
        }
        Ok(ToyState {
            lifetime: config.lifetime_days,
            keys: keys.default.iter().count(),
        })
    }

    fn restart_only(_: &Config, _: &Config) -> Vec<&'static str> {
        vec![]
    }

    async fn handle(server: Arc<Server<Self>>, conn: Connection, mut stop: Stop) {
        let mut io = BufReader::new(conn.stream);
        loop {
            let mut line = String::new();
            tokio::select! {
                r = io.read_line(&mut line) => if r.unwrap_or(0) == 0 { return },
                _ = stop.changed() => return,
            }
            if line.trim() == "slow" {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let s = server.state();
            let _ = io.get_mut().write_all(format!("{} {}\n", s.lifetime, s.keys).as_bytes()).await;
        }
    }

    fn busy(&self) -> Option<&'static [u8]> {
        Some(b"busy\n")
    }

    fn drain(_: &ToyState) -> Duration {
        Duration::from_secs(5)
    }

    fn render_metrics(&self) -> String {
        String::new()
    }
}

const NOW: i64 = 20_780 * 86_400;

/// A config file and a keys directory with one key.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        let dir = tempfile::tempdir().unwrap();
        let f = Files { dir };
        f.config("sign_domains = [\"example.org\"]\nlifetime_days = 7\n");
        std::fs::create_dir(f.dir.path().join("keys")).unwrap();
        f.store().ensure_first_key(NOW).unwrap();
        f
    }

    fn config(&self, text: &str) {
        std::fs::write(self.dir.path().join("batv.toml"), text).unwrap();
    }

    fn store(&self) -> KeyStore {
        KeyStore::new(self.dir.path().join("keys"), None).unwrap()
    }

    fn source(&self) -> Source {
        Source::new(self.dir.path().join("batv.toml"), KeyStores::new(self.store()))
    }

    fn running(&self) -> reload::Running {
        let config = Config::load(Some(&self.dir.path().join("batv.toml"))).unwrap();
        reload::Running::new(config, self.store().load().unwrap().into())
    }
}

fn state(s: &Server<Toy>) -> (u16, usize) {
    let st = s.state();
    (st.lifetime, st.keys)
}

#[test]
fn each_part_of_a_reload_is_taken_whole_or_not_at_all() {
    let f = Files::new();
    let source = f.source();
    let mut running = f.running();
    let server = Server::new(Toy, &running.config, &running.keys).unwrap();
    assert_eq!(state(&server), (7, 1));

    // Both good: both taken.
    f.config("sign_domains = [\"example.org\"]\nlifetime_days = 10\n");
    f.store().add(true, NOW).unwrap();
    reload::reload(&server, &source, &mut running, true);
    assert_eq!(state(&server), (10, 2));

    // A file that does not parse: the keys still come, the settings stay.
    f.config("sign_domains = [\"example.org\"\nlifetime_days = 20\n");
    f.store().add(true, NOW).unwrap();
    reload::reload(&server, &source, &mut running, true);
    assert_eq!(state(&server), (10, 3));

    // A file the mode cannot build from: the same.
    f.config("lifetime_days = 20\n");
    reload::reload(&server, &source, &mut running, true);
    assert_eq!(state(&server), (10, 3));
    assert_eq!(running.config.lifetime_days, 10, "the running config is the one in use");

    // Keys that cannot be read: the configuration comes, the keys stay.
    let manifest = f.dir.path().join("keys").join("manifest.toml");
    let saved = std::fs::read(&manifest).unwrap();
    std::fs::write(&manifest, "not [a manifest").unwrap();
    f.config("sign_domains = [\"example.org\"]\nlifetime_days = 14\n");
    reload::reload(&server, &source, &mut running, true);
    assert_eq!(state(&server), (14, 3));

    // The keys directory changed (no SIGHUP): the file on disk is not read.
    std::fs::write(&manifest, saved).unwrap();
    f.config("sign_domains = [\"example.org\"]\nlifetime_days = 30\n");
    f.store().add(true, NOW).unwrap();
    reload::reload(&server, &source, &mut running, false);
    assert_eq!(state(&server), (14, 4));
}

/// A snapshot taken before a reload stays whole while it is in use.
#[test]
fn a_snapshot_outlives_the_reload_that_replaces_it() {
    let f = Files::new();
    let source = f.source();
    let mut running = f.running();
    let server = Server::new(Toy, &running.config, &running.keys).unwrap();
    let held = server.state();
    f.config("sign_domains = [\"example.org\"]\nlifetime_days = 9\n");
    reload::reload(&server, &source, &mut running, true);
    assert_eq!(held.lifetime, 7);
    assert_eq!(server.state().lifetime, 9);
}

/// The toy served on a unix socket at `sock`, driven by the returned channel.
fn start(
    f: &Files,
    sock: &std::path::Path,
    max_connections: usize,
) -> (tokio::sync::mpsc::Sender<Event>, tokio::task::JoinHandle<io::Result<()>>) {
    let running = f.running();
    let server = Arc::new(Server::new(Toy, &running.config, &running.keys).unwrap());
    let listeners = listen::bind(&[Listen::Unix(sock.to_path_buf())], UnixOptions { mode: 0o600, group: None }).unwrap();
    let plan = Plan {
        listeners,
        metrics: None,
        max_connections,
        source: f.source(),
        config: running.config,
        keys: running.keys,
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    (tx, tokio::spawn(serve(server, plan, rx)))
}

async fn line(r: &mut BufReader<tokio::net::UnixStream>) -> String {
    let mut s = String::new();
    tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut s))
        .await
        .unwrap()
        .unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_holds_and_a_stop_drains() {
    let f = Files::new();
    let sock = f.dir.path().join("toy.sock");
    let (tx, served) = start(&f, &sock, 1);
    let connect = || async {
        for _ in 0..100 {
            if let Ok(s) = tokio::net::UnixStream::connect(&sock).await {
                return BufReader::new(s);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no listener at {}", sock.display());
    };
    let mut a = connect().await;
    a.get_mut().write_all(b"hello\n").await.unwrap();
    assert_eq!(line(&mut a).await, "7 1\n");

    // Over the limit: told so, and closed.
    let mut b = connect().await;
    assert_eq!(line(&mut b).await, "busy\n");
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), b.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "closed after the refusal");

    // A request in progress at the stop still gets its answer, then the connection ends.
    a.get_mut().write_all(b"slow\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    tx.send(Event::Stop).await.unwrap();
    assert_eq!(line(&mut a).await, "7 1\n");
    assert_eq!(line(&mut a).await, "", "told to stop between requests");
    let result = tokio::time::timeout(Duration::from_secs(4), served).await;
    assert!(matches!(result, Ok(Ok(Ok(())))), "serve returned once drained: {result:?}");
    assert!(!sock.exists(), "its own socket is removed");
    assert!(tokio::net::UnixStream::connect(&sock).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_event_reaches_new_requests() {
    let f = Files::new();
    let sock = f.dir.path().join("toy.sock");
    let (tx, served) = start(&f, &sock, 4);
    let mut a = BufReader::new(tokio::net::UnixStream::connect(&sock).await.unwrap());
    a.get_mut().write_all(b"x\n").await.unwrap();
    assert_eq!(line(&mut a).await, "7 1\n");
    f.config("sign_domains = [\"example.org\"]\nlifetime_days = 12\n");
    tx.send(Event::Reload).await.unwrap();
    // The same connection sees the new state at its next request.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        a.get_mut().write_all(b"x\n").await.unwrap();
        if line(&mut a).await == "12 1\n" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "reload not seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(tx);
    let result = tokio::time::timeout(Duration::from_secs(6), served).await;
    assert!(matches!(result, Ok(Ok(Ok(())))), "the end of the events stops it: {result:?}");
}
