//! The SMTP proxy: verifies bounces in the session, strips authentic tags, relays the rest.
//!
//! A listener with a connection limit, one task per connection, each a [`Session`] with the
//! [`Verify`] policy towards the downstream MTA. Keys and settings are one snapshot of the
//! [`crate::server`] runtime, taken per transaction, so a reload never disturbs a session. Front mode adds the client
//! handoff and STARTTLS of [`crate::smtp::front`].

mod counters;
mod settings;
mod verify;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::BufReader;
use tokio::net::TcpStream;

use crate::core::config::{Config, ProxyMode};
use crate::core::failed_tags::FailedTags;
use crate::core::keys::Keyring;
use crate::core::log::q;
use crate::core::recipients::{self, LocalCase, Recipients};
use crate::server::metrics::Metrics;
use crate::server::{Connection, Peer, Server, Service, Stop, Stream};
use crate::smtp::front::{self, ClientIo};
use crate::smtp::session::{End, Session};
use crate::smtp::{self, Reply, SmtpError};

pub use counters::{Counters, DATA_CHECK_VERDICTS};
pub use settings::{DataCheck, Settings};
pub use verify::Verify;

/// One snapshot: the settings and the keys they are used with.
pub struct State {
    pub settings: Settings,
    pub keys: Keyring,
}

/// The proxy mode: what outlives reloads.
pub struct Proxy {
    pub counters: Counters,
    metrics: Metrics,
    /// Invalid tags per client.
    failed_tags: FailedTags,
    /// Fixed clock for tests (`--now`); None = the system clock.
    now: Option<i64>,
    /// The last `valid_recipients` table loaded, kept while its file is unchanged (a
    /// million lines are not read again for every key or configuration reload).
    recipients: Mutex<Option<LoadedTable>>,
}

type Stamp = Option<(std::time::SystemTime, u64, u64)>;

struct LoadedTable {
    path: PathBuf,
    case: LocalCase,
    stamp: Stamp,
    table: Arc<Recipients>,
}

impl Proxy {
    pub fn new(now: Option<i64>) -> Proxy {
        let mut metrics = Metrics::default();
        Proxy {
            counters: Counters::new(&mut metrics),
            metrics,
            failed_tags: FailedTags::default(),
            now,
            recipients: Mutex::new(None),
        }
    }

    /// Gateway mode's `valid_recipients` table: the one loaded before if its file is
    /// unchanged, else read whole (an error keeps the running state).
    fn recipients(&self, config: &Config) -> Result<Option<Arc<Recipients>>, String> {
        let p = &config.proxy;
        let Some(path) = p.valid_recipients.as_ref().filter(|_| p.mode == ProxyMode::Gateway) else {
            return Ok(None);
        };
        let case = p.valid_recipients_case;
        // Stamped before reading: a change while it is read is seen at the next poll.
        let stamp = recipients::stamp(path);
        let mut cache = self.recipients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache
            .as_ref()
            .filter(|c| c.path == *path && c.case == case && stamp.is_some() && c.stamp == stamp)
        {
            return Ok(Some(c.table.clone()));
        }
        let started = std::time::Instant::now();
        let table = Arc::new(Recipients::load(path, case).map_err(|e| format!("proxy.valid_recipients: {e}"))?);
        let took = started.elapsed().as_millis();
        let outside = table.outside(&crate::core::address::DomainSet::new(config.relay_domains()).unwrap_or_default());
        crate::logln!(
            "batv-proxy: valid_recipients: {} entries from {} in {} ms{}",
            table.len(),
            path.display(),
            took,
            if outside > 0 {
                format!("; warning: {outside} outside relay_domains (never used)")
            } else {
                String::new()
            }
        );
        *cache = Some(LoadedTable {
            path: path.clone(),
            case,
            stamp,
            table: table.clone(),
        });
        Ok(Some(table))
    }
}

impl Server<Proxy> {
    fn now(&self) -> i64 {
        self.service.now.unwrap_or_else(crate::core::time::system_now)
    }
}

const TOO_MANY: &[u8] = b"421 4.7.0 Too many connections, try again later\r\n";

impl Service for Proxy {
    type State = State;
    const NAME: &'static str = "batv-proxy";

    fn build(&self, config: &Config, keys: &Keyring) -> Result<State, String> {
        let recipients = self.recipients(config)?;
        Ok(State {
            settings: Settings::from_config(config, recipients)?,
            keys: keys.clone(),
        })
    }

    fn watched(state: &State) -> Vec<PathBuf> {
        let table = state.settings.gateway.as_ref().and_then(|g| g.recipients.as_ref());
        table.map(|(path, _)| path.clone()).into_iter().collect()
    }

    fn refuse_change(&self, running: &Config, new: &Config) -> Option<String> {
        // Switching front mode off on the fly would drop the client handoff on a public
        // port (an open relay): that takes a restart.
        (new.proxy.mode != running.proxy.mode || new.proxy.front_protocol != running.proxy.front_protocol)
            .then(|| "proxy.mode or proxy.front_protocol changed; restart to apply".to_string())
    }

    fn restart_only(running: &Config, new: &Config) -> Vec<&'static str> {
        let (a, b) = (&running.proxy, &new.proxy);
        crate::server::changed(&[
            ("proxy.listen", a.listen != b.listen),
            ("proxy.max_connections", a.max_connections != b.max_connections),
            ("proxy.metrics_listen", a.metrics_listen != b.metrics_listen),
        ])
    }

    fn started(&self, state: &State, listeners: &[String]) {
        let s = &state.settings;
        let now = self.now.unwrap_or_else(crate::core::time::system_now);
        for l in listeners {
            crate::logln!(
                "batv-proxy: listening on {} forwarding to {} mode={} enforce={}",
                l.strip_prefix("inet:").unwrap_or(l),
                s.forward,
                s.mode.name(),
                s.enforcing(now),
            );
        }
        if s.mode != ProxyMode::BeforeQueue && s.tls.is_none() {
            crate::logln!(
                "batv-proxy: warning: {} mode without proxy.tls_cert: no STARTTLS, so MTA-STS and DANE senders will not deliver{}",
                s.mode.name(),
                if s.mode == ProxyMode::Gateway {
                    ", and AUTH is refused"
                } else {
                    ""
                }
            );
        }
    }

    fn handle(server: Arc<Server<Self>>, conn: Connection, _stop: Stop) -> impl std::future::Future<Output = ()> + Send {
        // A session in progress is not cut short by a stop: it ends on its own (QUIT or
        // a timeout) within the drain time.
        handle(server, conn)
    }

    fn busy(&self) -> Option<&'static [u8]> {
        Some(TOO_MANY)
    }

    fn drain(state: &State) -> Duration {
        let l = state.settings.limits;
        l.data + l.command
    }

    fn render_metrics(&self) -> String {
        self.metrics.render()
    }
}

/// `TLSv1.3`, as Postfix writes it in its Received field.
fn tls_version_name(v: tokio_rustls::rustls::ProtocolVersion) -> &'static str {
    use tokio_rustls::rustls::ProtocolVersion;
    match v {
        ProtocolVersion::TLSv1_3 => "TLSv1.3",
        ProtocolVersion::TLSv1_2 => "TLSv1.2",
        _ => "TLS",
    }
}

/// Handle one client connection.
async fn handle(shared: Arc<Server<Proxy>>, conn: Connection) {
    let id = conn.id;
    let (Stream::Tcp(client), Peer::Tcp(peer)) = (conn.stream, conn.peer) else {
        // Refused at start: the proxy listens on TCP only.
        return;
    };
    shared.service.counters.connections.inc();
    let state = shared.state();
    let settings = &state.settings;
    let limits = settings.limits;
    let down = match tokio::time::timeout(limits.command, TcpStream::connect(settings.forward)).await {
        Ok(Ok(d)) => d,
        failure => {
            let why = match failure {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".into(),
            };
            crate::logln!(
                "batv-proxy: session={id:x} client={} downstream={} error={} action=421",
                peer.ip(),
                settings.forward,
                q(&why)
            );
            let mut client = client;
            let _ = smtp::send(
                &mut client,
                &Reply::new(421, "4.4.2", "Service temporarily unavailable, try again later").raw,
            )
            .await;
            return;
        }
    };
    let _ = down.set_nodelay(true);
    let (dr, dw) = down.into_split();
    let mut policy = Verify::new(&shared, id, peer.ip());
    let result = match settings.mode {
        ProxyMode::BeforeQueue => {
            let (cr, cw) = client.into_split();
            Session::new(BufReader::new(cr), cw, BufReader::new(dr), dw, &mut policy, limits)
                .run()
                .await
                .map(|_| ())
        }
        ProxyMode::Front | ProxyMode::Gateway => {
            front_session(&shared, settings, client, peer, id, BufReader::new(dr), dw, &mut policy).await
        }
    };
    if let Err(e) = result {
        crate::logln!("batv-proxy: session={id:x} client={} error={}", peer.ip(), q(&e.to_string()));
    }
}

/// Front mode: hand the client's identity to the MTA (or refuse the client), then relay,
/// ending STARTTLS here when a certificate is configured. Gateway mode: the same without
/// the handoff (the MTA cannot take one), and AUTH only inside TLS.
#[allow(clippy::too_many_arguments)]
async fn front_session(
    shared: &Server<Proxy>,
    settings: &Settings,
    client: TcpStream,
    peer: SocketAddr,
    id: u64,
    mut dr: BufReader<tokio::net::tcp::OwnedReadHalf>,
    mut dw: tokio::net::tcp::OwnedWriteHalf,
    policy: &mut Verify<'_>,
) -> Result<(), SmtpError> {
    let limits = settings.limits;
    let local = client.local_addr()?;
    let gateway = settings.mode == ProxyMode::Gateway;
    if gateway {
        let (r, w) = tokio::io::split(ClientIo::Plain(client));
        let mut session = Session::new(BufReader::new(r), w, dr, dw, &mut *policy, limits);
        session.front = true;
        session.starttls = settings.tls.is_some();
        session.auth_allowed = false;
        let end = session.run().await?;
        return tls_sessions(shared, settings, session, end).await;
    }
    let handoff = front::handoff(
        settings.front_protocol,
        &mut dr,
        &mut dw,
        peer,
        local,
        &settings.hostname,
        limits.command,
    )
    .await;
    let greeting = match handoff {
        Ok(g) => g,
        Err(e) => {
            shared.service.counters.handoff_failures.inc();
            crate::logln!(
                "batv-proxy: session={id:x} client={} error={} action=421",
                peer.ip(),
                q(&e.to_string())
            );
            let mut client = client;
            smtp::send(&mut client, &Reply::new(421, "4.3.0", "Service not available, try again later").raw).await?;
            return Ok(());
        }
    };
    let (r, w) = tokio::io::split(ClientIo::Plain(client));
    let mut session = Session::new(BufReader::new(r), w, dr, dw, &mut *policy, limits);
    session.front = true;
    session.starttls = settings.tls.is_some();
    let end = session.greeted(&greeting).await?;
    tls_sessions(shared, settings, session, end).await
}

type ClientSession<'p, 'v> = Session<
    'p,
    BufReader<tokio::io::ReadHalf<ClientIo>>,
    tokio::io::WriteHalf<ClientIo>,
    BufReader<tokio::net::tcp::OwnedReadHalf>,
    tokio::net::tcp::OwnedWriteHalf,
    Verify<'v>,
>;

/// After a client's STARTTLS: the handshake, then the session again inside TLS, where
/// AUTH may go to the MTA.
async fn tls_sessions(
    shared: &Server<Proxy>,
    settings: &Settings,
    mut session: ClientSession<'_, '_>,
    mut end: End,
) -> Result<(), SmtpError> {
    let limits = settings.limits;
    while end == End::StartTls {
        let (cr, cw, dr, dw, policy) = session.into_parts();
        // into_inner drops whatever the client pipelined after STARTTLS: it was sent in
        // the clear and must not count as sent inside TLS (RFC 3207 §4.2, CVE-2011-0411).
        let ClientIo::Plain(tcp) = cr.into_inner().unsplit(cw) else {
            return Ok(());
        };
        // The current certificate (reloaded on SIGHUP).
        let Some(acceptor) = shared.state().settings.tls.clone().or_else(|| settings.tls.clone()) else {
            return Ok(());
        };
        let tls = match tokio::time::timeout(limits.command, acceptor.accept(tcp)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => return Err(SmtpError::Io(e)),
            Err(_) => return Err(SmtpError::ClientClosed("(timed out) during the TLS handshake")),
        };
        let (_, conn) = tls.get_ref();
        let version = conn.protocol_version().map(tls_version_name).unwrap_or_default();
        let cipher = conn
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default();
        policy.tls(version, &cipher);
        let (r, w) = tokio::io::split(ClientIo::Tls(Box::new(tls)));
        session = Session::new(BufReader::new(r), w, dr, dw, policy, limits);
        session.front = true;
        end = session.resume().await?;
    }
    Ok(())
}
