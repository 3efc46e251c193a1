//! Starting a mode: its sockets (systemd's, or bound from the configuration), the drop
//! from root, then the runtime.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::core::config::Config;
use crate::core::keys::Keyring;
use crate::core::privilege::{self, RunAs};

use super::listen::{self, Bound, Socket};
use super::{reload, run, Plan, Server, Service, Source};

/// Why a daemon did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A socket could not be bound or served.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The configuration (or what systemd passed) cannot be served: no such user, a
    /// public socket for a loopback-only service, say.
    #[error("{0}")]
    Config(String),
}

/// How a mode is started: where it listens when systemd passes no sockets.
pub struct Launch<B: FnOnce() -> io::Result<Vec<Bound>>> {
    pub bind: B,
    pub metrics: Option<std::net::SocketAddr>,
    pub max_connections: usize,
    /// The mode serves TCP only (the proxy).
    pub tcp_only: bool,
    /// TCP on loopback only (the daemon, which has no authentication): also asked of
    /// sockets systemd passes.
    pub loopback_only: bool,
}

/// The signals the runtime handles: blocked from the start, so that one arriving before
/// its handlers exist waits for them instead of killing the process (a SIGHUP right
/// after start would be a clean exit to systemd, and not restarted).
pub(crate) fn handled_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset and sigaddset fill a sigset_t we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGHUP, libc::SIGTERM, libc::SIGINT, libc::SIGUSR1] {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// Block (or unblock) the handled signals in the calling thread (and the threads it
/// starts from then on).
pub(crate) fn mask_signals(block: bool) {
    let set = handled_signals();
    let how = if block { libc::SIG_BLOCK } else { libc::SIG_UNBLOCK };
    // SAFETY: a valid set; the old mask is not wanted.
    unsafe { libc::pthread_sigmask(how, &set, std::ptr::null_mut()) };
}

/// A TCP socket that is not on loopback, for a service that must stay there.
fn public(b: &Bound) -> Option<String> {
    match &b.socket {
        Socket::Tcp(l) => match l.local_addr() {
            Ok(a) if a.ip().is_loopback() => None,
            Ok(a) => Some(a.to_string()),
            Err(e) => Some(format!("{} ({e})", b.name)),
        },
        Socket::Unix(..) => None,
    }
}

/// Start a mode: take systemd's sockets (one named `metrics` serves the counters) or
/// bind the configured ones, drop root to `user`, then serve on a two-thread runtime
/// until SIGTERM.
pub fn launch<S: Service, B: FnOnce() -> io::Result<Vec<Bound>>>(
    service: S,
    config: Config,
    keys: Keyring,
    source: Source,
    how: Launch<B>,
) -> Result<(), StartError> {
    let name = S::NAME;
    mask_signals(true);
    let bad = StartError::Config;
    let server = Server::new(service, &config, &keys).map_err(bad)?;
    let run_as = privilege::run_as(config.user.as_deref(), config.group.as_deref()).map_err(bad)?;
    let activated = listen::activated().map_err(|e| bad(format!("sockets from systemd: {e}")))?;
    let (listeners, metrics) = match activated {
        Some(passed) => {
            let n = passed.len();
            let (mut m, l): (Vec<Bound>, Vec<Bound>) = passed.into_iter().partition(|b| b.fd_name.as_deref() == Some("metrics"));
            if l.is_empty() {
                return Err(bad("systemd passed no socket to serve (only metrics)".into()));
            }
            if m.len() > 1 {
                return Err(bad(format!("systemd passed {} sockets named metrics: one serves", m.len())));
            }
            crate::logln!("{name}: {n} socket(s) from systemd");
            let m = match m.pop() {
                Some(m) => Some(m),
                None => how.metrics.map(listen::bind_tcp).transpose()?,
            };
            (l, m)
        }
        None => ((how.bind)()?, how.metrics.map(listen::bind_tcp).transpose()?),
    };
    if how.tcp_only {
        if let Some(b) = listeners.iter().find(|b| !matches!(b.socket, Socket::Tcp(_))) {
            return Err(bad(format!("{name} serves TCP only, not {}", b.name)));
        }
    }
    if how.loopback_only {
        if let Some(a) = listeners.iter().find_map(public) {
            return Err(bad(format!("{name} serves loopback only (it has no authentication), not {a}")));
        }
    }
    if let Some(m) = &metrics {
        if !matches!(m.socket, Socket::Tcp(_)) {
            return Err(bad(format!("the metrics socket must be TCP, not {}", m.name)));
        }
        if let Some(a) = public(m) {
            return Err(bad(format!("the metrics socket serves loopback only, not {a}")));
        }
    }
    privilege::drop_to(&run_as).map_err(bad)?;
    match &run_as {
        RunAs::User { user, gid } => {
            crate::logln!("{name}: running as user {} (uid {}, gid {gid})", user.name, user.uid);
            // Every reload from now on reads as this user: one that could not would keep
            // old keys and settings without anyone noticing.
            reload::check(&server, &source).map_err(|e| {
                bad(format!(
                    "running as user {}, {name} could not reload: {e} (give the files to key_group, and the user that group)",
                    user.name
                ))
            })?;
        }
        RunAs::Root => crate::logln!(
            "{name}: warning: running as root: set user (and key_group) in the configuration to drop root once the sockets are bound"
        ),
        RunAs::Unchanged => {
            if let Some(u) = config.user.as_deref().and_then(crate::core::nss::user) {
                // SAFETY: plain getter.
                let uid = unsafe { libc::geteuid() };
                if u.uid != uid {
                    crate::logln!(
                        "{name}: warning: user = {:?} is set but batv runs as uid {uid} (not started as root)",
                        u.name
                    );
                }
            }
        }
    }
    // The packaged configuration names no domain until the admin sets one: say so, or a
    // running service that refuses nothing looks like one that works.
    if config.sign_domains.is_empty() && config.protected().is_empty() {
        crate::logln!(
            "{name}: warning: no sign_domains or protected_domains in the configuration: nothing is signed and no bounce is refused"
        );
    }
    let plan = Plan {
        listeners,
        metrics,
        max_connections: how.max_connections,
        source,
        config,
        keys,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let served = rt.block_on(run(Arc::new(server), plan));
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(served?)
}
