//! `batv daemon`: BATV inside Postfix without a proxy hop (as PostSRSd does SRS), and for
//! Exim's ACLs. One server; each connection speaks one of three protocols, told apart by
//! its first bytes:
//!
//! - socketmap_table(5), a netstring (it starts with a digit): the map `sign` for
//!   `sender_canonical_maps` and `strip` for `recipient_canonical_maps`. Anything not ours
//!   to change answers `NOTFOUND`, never `PERM` (Postfix defers mail on PERM and TEMP).
//! - the policy delegation protocol (SMTPD_POLICY_README; `name=value` lines): the
//!   verdict on each recipient of a bounce, as the proxy gives it.
//! - one line for Exim's `${readsocket}`: `sign|strip|verify ADDRESS`, answered with one
//!   line, then the connection closes (Exim reads to end of file).
//!
//! Keys, signer and settings are one snapshot, replaced whole on SIGHUP and when the keys
//! directory changes.

mod policy;
mod readsocket;
mod socketmap;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::core::config::{Config, IpNet, RejectAt};
use crate::core::failed_tags::FailedTags;
use crate::core::keys::Keyring;
use crate::core::log::q;
use crate::core::signer::Signer;
use crate::core::verdict::Rules;
use crate::logln;
use crate::server::metrics::Metrics;
use crate::server::{Connection, Server, Service, Stop};

pub use policy::PolicyRequest;
use policy::{is_attr_name, Instance};
use socketmap::{netstring, read_netstring};

/// Longest a request may take to arrive once it has begun (Postfix's own socketmap and
/// policy timeouts are 100 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(100);

/// What the configuration decides.
#[derive(Debug)]
pub struct Settings {
    rules: Rules,
    max_failed_tags: u32,
    trusted: Vec<IpNet>,
    reject_at: RejectAt,
    enforce: bool,
    enforce_after: Option<i64>,
    request_limit: usize,
    idle: Duration,
}

impl Settings {
    pub fn from_config(config: &Config) -> Result<Settings, String> {
        if config.protected().is_empty() {
            return Err("the daemon needs sign_domains (or protected_domains)".into());
        }
        let d = &config.daemon;
        Ok(Settings {
            rules: Rules::from_config(config),
            max_failed_tags: d.max_failed_tags.get(),
            trusted: d.trusted_relays.iter().filter_map(|n| IpNet::parse(n).ok()).collect(),
            reject_at: d.reject_at,
            enforce: d.enforce,
            enforce_after: d.enforce_after.as_deref().and_then(|t| crate::core::time::parse_now(t).ok()),
            request_limit: d.request_limit as usize,
            idle: Duration::from_millis(d.idle_timeout_ms.max(1)),
        })
    }

    fn enforcing(&self, now: i64) -> bool {
        self.enforce && self.enforce_after.is_none_or(|t| now >= t)
    }
}

/// One consistent snapshot: the configuration and keys, and what is made from them.
pub struct State {
    keys: Keyring,
    /// None without an active key: `sign` then answers NOTFOUND (mail leaves unsigned,
    /// as the sendmail wrapper's default `on_error = "pass"` does).
    signer: Option<Signer>,
    settings: Settings,
}

/// Lookups and decisions, by outcome (SIGUSR1 logs them; `metrics_listen` serves them).
#[derive(Debug)]
pub struct Counters {
    pub connections: Counter,
    pub sign_ok: Counter,
    pub sign_notfound: Counter,
    pub strip_ok: Counter,
    pub strip_notfound: Counter,
    pub bounce_ok: Counter,
    pub backscatter: Counter,
    pub refused: Counter,
    pub deferred: Counter,
    pub malformed: Counter,
    /// Requests answered 421 for too many invalid tags from one client.
    pub failed_tag_closes: Counter,
}

impl Counters {
    fn new(m: &mut Metrics) -> Counters {
        let connections = m.counter("batv_daemon_connections", "Connections accepted.");
        let [sign_ok, sign_notfound, strip_ok, strip_notfound] = m.by2(
            "batv_daemon_lookups",
            "Socketmap and readsocket lookups, by map and result.",
            ("map", "result"),
            [("sign", "ok"), ("sign", "notfound"), ("strip", "ok"), ("strip", "notfound")],
        );
        let [bounce_ok, backscatter] = m.by(
            "batv_daemon_recipients",
            "Recipients of bounces judged, by verdict.",
            "verdict",
            ["bounce-ok", "backscatter"],
        );
        Counters {
            connections,
            sign_ok,
            sign_notfound,
            strip_ok,
            strip_notfound,
            bounce_ok,
            backscatter,
            refused: m.counter("batv_daemon_refused", "Recipients or messages refused."),
            deferred: m.counter(
                "batv_daemon_deferred",
                "Recipients deferred (452) to keep one verdict per transaction.",
            ),
            malformed: m.counter("batv_daemon_malformed_requests", "Connections closed on a malformed request."),
            failed_tag_closes: m.counter(
                "batv_daemon_failed_tag_closes",
                "Requests answered 421 or DEFER for too many invalid tags from one client.",
            ),
        }
    }
}

/// The daemon mode: what outlives reloads.
pub struct Daemon {
    instances: Mutex<std::collections::HashMap<String, Instance>>,
    failed_tags: FailedTags,
    pub counters: Counters,
    metrics: Metrics,
    /// Fixed clock (`--now`), for tests.
    now: Option<i64>,
}

impl Daemon {
    pub fn new(now: Option<i64>) -> Daemon {
        let mut metrics = Metrics::default();
        Daemon {
            instances: Mutex::new(std::collections::HashMap::new()),
            failed_tags: FailedTags::default(),
            counters: Counters::new(&mut metrics),
            metrics,
            now,
        }
    }
}

impl Service for Daemon {
    type State = State;
    const NAME: &'static str = "batv-daemon";

    fn build(&self, config: &Config, keys: &Keyring) -> Result<State, String> {
        let settings = Settings::from_config(config)?;
        let signer = Signer::new(keys.clone(), config).ok();
        Ok(State {
            keys: keys.clone(),
            signer,
            settings,
        })
    }

    fn restart_only(running: &Config, new: &Config) -> Vec<&'static str> {
        let (a, b) = (&running.daemon, &new.daemon);
        crate::server::changed(&[
            ("daemon.listen", a.listen != b.listen),
            ("daemon.max_connections", a.max_connections != b.max_connections),
            ("daemon.socket_mode", a.socket_mode != b.socket_mode),
            ("daemon.socket_group", a.socket_group != b.socket_group),
            ("daemon.metrics_listen", a.metrics_listen != b.metrics_listen),
        ])
    }

    fn loaded(&self, state: &State) {
        match &state.signer {
            None => logln!("batv-daemon: warning: no active key: the sign map answers NOTFOUND (mail leaves unsigned)"),
            Some(s) => {
                if let Some(w) = s.keyless_warning() {
                    logln!("batv-daemon: warning: {w} (the sign map answers NOTFOUND for them)");
                }
            }
        }
    }

    fn handle(server: Arc<Server<Self>>, conn: Connection, stop: Stop) -> impl std::future::Future<Output = ()> + Send {
        handle(server, conn, stop)
    }

    fn drain(_: &State) -> Duration {
        // Requests in progress finish; idle connections have already been told to close.
        Duration::from_secs(5)
    }

    fn render_metrics(&self) -> String {
        self.metrics.render()
    }
}

impl Server<Daemon> {
    fn now(&self) -> i64 {
        self.service.now.unwrap_or_else(crate::core::time::system_now)
    }

    fn instances(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Instance>> {
        // A poisoned table is still a table of whole entries.
        self.service.instances.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why a connection was closed on a bad request.
#[derive(Debug, thiserror::Error)]
enum ProtoError {
    #[error("malformed netstring: {0}")]
    Netstring(&'static str),
    #[error("request longer than {0} octets")]
    TooLong(usize),
    #[error("policy request line without '=': {0:?}")]
    NotAttribute(String),
    #[error("connection closed in the middle of a request")]
    Truncated,
    #[error("no complete request within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Read one line (to '\n', or to the end of the connection), at most `limit` octets.
/// Returns the line without its end, and whether the connection ended.
async fn read_line<R: AsyncBufReadExt + Unpin>(r: &mut R, limit: usize) -> Result<(String, bool), ProtoError> {
    let mut line = Vec::new();
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok((String::from_utf8_lossy(&line).into_owned(), true));
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if line.len() + take > limit {
            return Err(ProtoError::TooLong(limit));
        }
        line.extend_from_slice(&buf[..take]);
        r.consume(take);
        if done {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            // Lossy: an attribute Postfix copied from a client (helo_name, say) may be any
            // bytes; closing on it would give that client's mail a 451.
            return Ok((String::from_utf8_lossy(&line).into_owned(), false));
        }
    }
}

/// What the first bytes of a connection say it speaks.
enum Protocol {
    Socketmap,
    /// The first line of the first request, already read.
    Policy(Option<String>),
    OneLine(String),
}

/// Serve one connection until the client closes it, goes idle, errs, or we shut down.
async fn handle(shared: Arc<Server<Daemon>>, conn: Connection, mut stop: Stop) {
    let (stream, peer) = (conn.stream, conn.peer);
    shared.service.counters.connections.inc();
    let mut io = BufReader::with_capacity(4096, stream);
    let (limit, idle) = {
        let st = shared.state();
        (st.settings.request_limit, st.settings.idle)
    };
    let mut protocol: Option<Protocol> = None;
    let result: Result<(), ProtoError> = async {
        loop {
            // Between requests: wait for the next one, or for the end.
            tokio::select! {
                ready = tokio::time::timeout(idle, io.fill_buf()) => match ready {
                    Err(_) => return Ok(()),
                    Ok(Err(e)) => return Err(e.into()),
                    Ok(Ok([])) => return Ok(()),
                    Ok(Ok(_)) => {}
                },
                _ = stop.changed() => return Ok(()),
            }
            let request = async {
                if protocol.is_none() {
                    let first = io.fill_buf().await?.first().copied();
                    protocol = Some(if first.is_some_and(|b| b.is_ascii_digit()) {
                        Protocol::Socketmap
                    } else {
                        let (line, _) = read_line(&mut io, limit).await?;
                        let policy = line.split_once('=').is_some_and(|(n, _)| is_attr_name(n));
                        if policy {
                            Protocol::Policy(Some(line))
                        } else {
                            Protocol::OneLine(line)
                        }
                    });
                }
                Ok::<_, ProtoError>(match protocol.as_mut() {
                    Some(Protocol::Socketmap) => read_netstring(&mut io, limit).await?.map(|req| netstring(&shared.lookup(&req))),
                    Some(Protocol::Policy(first)) => {
                        let mut req = PolicyRequest::default();
                        let mut size = 0;
                        let mut line = match first.take() {
                            Some(l) => l,
                            None => read_line(&mut io, limit).await?.0,
                        };
                        loop {
                            size += line.len() + 1;
                            if size > limit {
                                return Err(ProtoError::TooLong(limit));
                            }
                            if line.is_empty() {
                                break;
                            }
                            if !req.push_line(&line) {
                                return Err(ProtoError::NotAttribute(line.chars().take(64).collect()));
                            }
                            let (next, eof) = read_line(&mut io, limit).await?;
                            if eof && next.is_empty() {
                                return Err(ProtoError::Truncated);
                            }
                            line = next;
                        }
                        Some(format!("action={}\n\n", shared.policy(&req)).into_bytes())
                    }
                    Some(Protocol::OneLine(line)) => {
                        let answer = shared.one_line(line);
                        let mut out = answer.into_bytes();
                        out.push(b'\n');
                        Some(out)
                    }
                    None => None,
                })
            };
            let reply = match tokio::time::timeout(REQUEST_TIMEOUT.min(idle.max(Duration::from_secs(1))), request).await {
                Ok(r) => r?,
                Err(_) => return Err(ProtoError::Timeout(REQUEST_TIMEOUT)),
            };
            let Some(reply) = reply else { return Ok(()) };
            tokio::time::timeout(REQUEST_TIMEOUT, io.get_mut().write_all(&reply))
                .await
                .map_err(|_| ProtoError::Timeout(REQUEST_TIMEOUT))??;
            if matches!(protocol, Some(Protocol::OneLine(_))) {
                // Exim reads until the end of the connection.
                let _ = io.get_mut().shutdown().await;
                return Ok(());
            }
        }
    }
    .await;
    if let Err(e) = result {
        if !matches!(e, ProtoError::Io(_)) {
            shared.service.counters.malformed.inc();
        }
        let what = match protocol {
            Some(Protocol::Socketmap) => "socketmap",
            Some(Protocol::Policy(_)) => "policy",
            Some(Protocol::OneLine(_)) => "line",
            None => "-",
        };
        logln!(
            "batv-daemon: client={peer} protocol={what} error={} action=closed",
            q(&e.to_string())
        );
    }
}
