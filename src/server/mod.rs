//! The one server runtime every daemon mode plugs into (proxy, daemon, and milter):
//! listeners with a connection limit and one task per connection, a state snapshot
//! swapped whole without locks on the hot path, SIGHUP and key-directory reloads (each
//! part all or nothing), SIGUSR1 counters, an optional loopback `/metrics`, and a drain
//! on SIGTERM.
//!
//! A mode implements [`Service`]: how to build its state from a configuration and keys,
//! and how to serve one connection. It reads the current state with [`Server::state`],
//! once per transaction or request, so a reload never changes one halfway.

mod launch;
pub mod listen;
pub mod metrics;
mod reload;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{watch, Semaphore};

use crate::core::config::Config;
use crate::core::keys::Keyring;

pub use launch::{launch, Launch, StartError};
pub use listen::{Bound, Peer, Socket, Stream, UnixOptions};
pub use reload::Source;

/// Becomes true when the server stops: idle connections should end.
pub type Stop = watch::Receiver<bool>;

/// An accepted connection.
pub struct Connection {
    pub stream: Stream,
    pub peer: Peer,
    /// Unique in this process's life (log lines name sessions by it).
    pub id: u64,
}

/// A server mode.
pub trait Service: Send + Sync + Sized + 'static {
    /// What a reload replaces: settings and keys, and what is made of them.
    type State: Send + Sync + 'static;

    /// The log prefix (`batv-proxy`).
    const NAME: &'static str;

    /// Build a state; an error keeps the running one.
    fn build(&self, config: &Config, keys: &Keyring) -> Result<Self::State, String>;

    /// A new configuration this mode refuses to take without a restart, and why.
    fn refuse_change(&self, _running: &Config, _new: &Config) -> Option<String> {
        None
    }

    /// The mode's settings that wait for a restart (its listeners, its limits).
    fn restart_only(running: &Config, new: &Config) -> Vec<&'static str>;

    /// After each state is built (at start and on reloads): warnings about it.
    fn loaded(&self, _state: &Self::State) {}

    /// Files the state was read from besides the configuration and keys (a table of
    /// recipients): polled with the keys directory, and a change builds the state again
    /// from the running configuration and keys.
    fn watched(_state: &Self::State) -> Vec<PathBuf> {
        Vec::new()
    }

    /// The log lines of a start, given the listeners' names.
    fn started(&self, state: &Self::State, listeners: &[String]) {
        let _ = state;
        for l in listeners {
            crate::logln!("{}: listening on {l}", Self::NAME);
        }
    }

    /// Serve one connection. `stop` turns true when the server stops.
    fn handle(server: Arc<Server<Self>>, conn: Connection, stop: Stop) -> impl Future<Output = ()> + Send;

    /// What a client over the connection limit is told before it is closed.
    fn busy(&self) -> Option<&'static [u8]> {
        None
    }

    /// How long connections in progress may take to finish when the server stops.
    fn drain(state: &Self::State) -> Duration;

    /// The counters, as OpenMetrics text.
    fn render_metrics(&self) -> String;
}

/// The names of the settings that changed, for [`Service::restart_only`].
pub fn changed(settings: &[(&'static str, bool)]) -> Vec<&'static str> {
    settings.iter().filter_map(|&(n, changed)| changed.then_some(n)).collect()
}

/// A mode and its current state.
pub struct Server<S: Service> {
    pub service: S,
    state: ArcSwap<S::State>,
}

impl<S: Service> Server<S> {
    /// Build the first state (an error is a configuration error).
    pub fn new(service: S, config: &Config, keys: &Keyring) -> Result<Server<S>, String> {
        let state = service.build(config, keys)?;
        service.loaded(&state);
        Ok(Server {
            service,
            state: ArcSwap::from_pointee(state),
        })
    }

    /// The current state (a reference count, no lock).
    pub fn state(&self) -> Arc<S::State> {
        self.state.load_full()
    }

    fn replace(&self, state: S::State) {
        self.state.store(Arc::new(state));
    }
}

/// What [`run`] serves.
pub struct Plan {
    pub listeners: Vec<Bound>,
    pub metrics: Option<Bound>,
    pub max_connections: usize,
    pub source: Source,
    /// The configuration and keys the first state was built from.
    pub config: Config,
    pub keys: Keyring,
}

/// How often the keys directory is looked at.
const KEY_POLL: Duration = Duration::from_secs(2);

/// What a signal asks of a running server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// SIGHUP: configuration, certificate and keys again.
    Reload,
    /// SIGUSR1: the counters into the log.
    Counters,
    /// SIGTERM or SIGINT.
    Stop,
}

/// Serve until SIGTERM or SIGINT (see [`serve`]). Inside a tokio runtime.
pub async fn run<S: Service>(server: Arc<Server<S>>, plan: Plan) -> io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    // The handlers exist: what arrived while the signals were blocked (see launch) is
    // delivered now.
    launch::mask_signals(false);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let e = tokio::select! {
                _ = hup.recv() => Event::Reload,
                _ = usr1.recv() => Event::Counters,
                _ = term.recv() => Event::Stop,
                _ = int.recv() => Event::Stop,
            };
            if tx.send(e).await.is_err() {
                return;
            }
        }
    });
    serve(server, plan, rx).await
}

/// Serve until [`Event::Stop`] (or the end of `events`), then stop accepting, tell
/// connections to stop, and wait for them as long as the mode says.
pub async fn serve<S: Service>(server: Arc<Server<S>>, plan: Plan, mut events: tokio::sync::mpsc::Receiver<Event>) -> io::Result<()> {
    let name = S::NAME;
    let limit = Arc::new(Semaphore::new(plan.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut names = Vec::new();
    let mut ours: Vec<PathBuf> = Vec::new();
    let mut loops = Vec::new();
    for b in plan.listeners {
        if let Socket::Unix(_, Some(p)) = &b.socket {
            ours.push(p.clone());
        }
        names.push(b.name.clone());
        let l = listen::Listener::from_bound(b.socket)?;
        loops.push(tokio::spawn(accept_loop(l, b.name, server.clone(), limit.clone(), stop_rx.clone())));
    }
    if let Some(m) = plan.metrics {
        let Socket::Tcp(l) = m.socket else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "the metrics socket must be TCP"));
        };
        crate::logln!("{name}: metrics on http://{}/metrics", l.local_addr()?);
        let s = server.clone();
        tokio::spawn(metrics::serve(tokio::net::TcpListener::from_std(l)?, move || {
            s.service.render_metrics()
        }));
    }
    server.service.started(&server.state(), &names);
    let source = plan.source;
    let mut running = reload::Running::new(plan.config, plan.keys);
    let mut poll = tokio::time::interval(KEY_POLL);
    let mut last = source.stores.stamp();
    let mut files = watched_stamps(&server);
    loop {
        tokio::select! {
            e = events.recv() => match e {
                Some(Event::Reload) => {
                    // Stamped first: a change while the reload reads is seen next time.
                    last = source.stores.stamp();
                    reload::reload(&server, &source, &mut running, true);
                    files = watched_stamps(&server);
                }
                Some(Event::Counters) => {
                    crate::core::log::line(format_args!("{}", server.service.render_metrics().trim_end()));
                }
                Some(Event::Stop) | None => break,
            },
            _ = poll.tick() => {
                let now = source.stores.stamp();
                if now != last {
                    last = now;
                    reload::reload(&server, &source, &mut running, false);
                    files = watched_stamps(&server);
                }
                let now = watched_stamps(&server);
                if now != files {
                    let changed: Vec<String> = now
                        .iter()
                        .filter(|f| !files.contains(f))
                        .map(|(p, _)| p.display().to_string())
                        .collect();
                    files = now;
                    reload::rebuild(&server, &running, &changed.join(", "));
                    // A failed rebuild keeps the old state, and the new stamps: the file
                    // is read again when it changes again (or on SIGHUP).
                }
            }
        }
    }
    let _ = stop_tx.send(true);
    for l in loops {
        let _ = l.await;
    }
    for p in ours {
        if let Err(e) = std::fs::remove_file(&p) {
            // The next start replaces it; a dropped user may not write the directory.
            crate::logln!("{name}: could not remove {}: {e}", p.display());
        }
    }
    let busy = plan.max_connections - limit.available_permits();
    crate::logln!("{name}: draining {busy} connection(s)");
    let wait = S::drain(&server.state());
    let _ = tokio::time::timeout(wait, limit.acquire_many(plan.max_connections as u32)).await;
    crate::logln!("{name}: stopped");
    Ok(())
}

type FileStamp = Option<(std::time::SystemTime, u64, u64)>;

/// The current state's watched files and what they look like now (modified time, length,
/// inode: an atomic replace changes the inode even within one clock tick).
fn watched_stamps<S: Service>(server: &Server<S>) -> Vec<(PathBuf, FileStamp)> {
    S::watched(&server.state())
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(&p).ok();
            let stamp = m.and_then(|m| Some((m.modified().ok()?, m.len(), std::os::unix::fs::MetadataExt::ino(&m))));
            (p, stamp)
        })
        .collect()
}

async fn accept_loop<S: Service>(listener: listen::Listener, name: String, server: Arc<Server<S>>, limit: Arc<Semaphore>, mut stop: Stop) {
    // The start time in the high bits, then a count: unique across restarts too.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let base = (crate::core::time::system_now() as u64) << 16;
    let mut refused: u64 = 0;
    let mut last_refusal_log: Option<std::time::Instant> = None;
    loop {
        let accepted = tokio::select! {
            a = listener.accept(&name) => a,
            _ = stop.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors, say: wait rather than spin.
                crate::logln!("{}: accept on {name}: {e}", S::NAME);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let id = base + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            // A flood must not flood the log (and push the verdicts out of journald's
            // rate limit): the first refusal, then a count at most every 10 s.
            refused += 1;
            if last_refusal_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                crate::logln!(
                    "{}: client={peer} error=\"too many connections\" action=closed refused={refused}",
                    S::NAME
                );
                refused = 0;
                last_refusal_log = Some(std::time::Instant::now());
            }
            if let Some(reply) = server.service.busy() {
                // A new socket's send buffer is empty: the reply goes out at once, with
                // no task per refused connection, and the close follows.
                let _ = stream.try_write(reply);
            }
            continue;
        };
        let (server, stop) = (server.clone(), stop.clone());
        tokio::spawn(async move {
            S::handle(server, Connection { stream, peer, id }, stop).await;
            drop(permit);
        });
    }
}
