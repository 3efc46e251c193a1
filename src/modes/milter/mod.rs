//! `batv milter`: BATV inside the MTA's own SMTP session, for Sendmail and for Postfix
//! sites that run milters (DESIGN §10). One connection per MTA session (reused across
//! sessions after QUIT_NC); each does three jobs:
//!
//! - sign: mail from `internal_networks`, an authenticated client or a local submission
//!   gets its envelope sender tagged (CHGFROM at end of message, parameters kept);
//! - verify: in a null-sender transaction each RCPT gets the proxy's verdict, one per
//!   transaction (`reject_at`, monitor mode's one `X-BATV:` header);
//! - strip: a recipient with an authentic tag is replaced by its original address at end
//!   of message (DELRCPT, then ADDRCPT_PAR with its parameters).

mod session;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

use crate::core::config::{Config, IpNet, RejectAt};
use crate::core::failed_tags::FailedTags;
use crate::core::keys::Keyring;
use crate::core::signer::Signer;
use crate::core::verdict::Rules;
use crate::server::metrics::Metrics;
use crate::server::{Connection, Server, Service, Stop};

/// What the configuration decides.
#[derive(Debug)]
pub struct Settings {
    rules: Rules,
    internal: Vec<IpNet>,
    trusted: Vec<IpNet>,
    reject_at: RejectAt,
    enforce: bool,
    enforce_after: Option<i64>,
    max_failed_tags: u32,
    idle: Duration,
    /// The DATA check, if on.
    data_check: Option<crate::bounce::DataCheck>,
}

impl Settings {
    pub fn from_config(config: &Config) -> Result<Settings, String> {
        if config.protected().is_empty() {
            return Err("the milter needs sign_domains (or protected_domains)".into());
        }
        let m = &config.milter;
        let nets = |v: &[String]| v.iter().filter_map(|n| IpNet::parse(n).ok()).collect();
        Ok(Settings {
            rules: Rules::from_config(config),
            internal: nets(&m.internal_networks),
            trusted: nets(&m.trusted_relays),
            reject_at: m.reject_at,
            enforce: m.enforce,
            enforce_after: m.enforce_after.as_deref().and_then(|t| crate::core::time::parse_now(t).ok()),
            max_failed_tags: m.max_failed_tags.get(),
            idle: Duration::from_millis(m.idle_timeout_ms.max(1)),
            data_check: m.data_check.then_some(crate::bounce::DataCheck {
                limit: m.data_check_kib as usize * 1024,
                refuse: m.data_check_refuse,
            }),
        })
    }

    fn enforcing(&self, now: i64) -> bool {
        self.enforce && self.enforce_after.is_none_or(|t| now >= t)
    }

    fn internal(&self, ip: IpAddr) -> bool {
        self.internal.iter().any(|n| n.contains(ip))
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(ip))
    }
}

/// One snapshot: settings, keys, and the signer made of them.
pub struct State {
    settings: Settings,
    keys: Keyring,
    /// None without an active key: nothing is signed (mail leaves unsigned).
    signer: Option<Signer>,
}

/// Decisions by outcome.
#[derive(Debug)]
pub struct Counters {
    pub connections: Counter,
    pub signed: Counter,
    pub stripped: Counter,
    pub bounce_ok: Counter,
    pub backscatter: Counter,
    pub refused: Counter,
    pub deferred: Counter,
    pub malformed: Counter,
    pub failed_tag_closes: Counter,
}

impl Counters {
    fn new(m: &mut Metrics) -> Counters {
        let [bounce_ok, backscatter] = m.by(
            "batv_milter_recipients",
            "Recipients of bounces judged, by verdict.",
            "verdict",
            ["bounce-ok", "backscatter"],
        );
        Counters {
            connections: m.counter("batv_milter_connections", "MTA connections accepted."),
            signed: m.counter("batv_milter_signed", "Envelope senders signed (CHGFROM)."),
            stripped: m.counter(
                "batv_milter_stripped",
                "Recipients with an authentic tag, replaced by the original.",
            ),
            bounce_ok,
            backscatter,
            refused: m.counter("batv_milter_refused", "Recipients or messages refused."),
            deferred: m.counter(
                "batv_milter_deferred",
                "Recipients deferred (452) to keep one verdict per transaction.",
            ),
            malformed: m.counter("batv_milter_malformed", "Connections ended on a malformed or unexpected packet."),
            failed_tag_closes: m.counter(
                "batv_milter_failed_tag_closes",
                "Recipients answered 421 for too many invalid tags.",
            ),
        }
    }
}

/// The milter mode: what outlives reloads.
pub struct Milter {
    failed_tags: FailedTags,
    pub counters: Counters,
    metrics: Metrics,
    /// Fixed clock (`--now`), for tests.
    now: Option<i64>,
}

impl Milter {
    pub fn new(now: Option<i64>) -> Milter {
        let mut metrics = Metrics::default();
        Milter {
            failed_tags: FailedTags::default(),
            counters: Counters::new(&mut metrics),
            metrics,
            now,
        }
    }
}

impl Server<Milter> {
    fn now(&self) -> i64 {
        self.service.now.unwrap_or_else(crate::core::time::system_now)
    }
}

impl Service for Milter {
    type State = State;
    const NAME: &'static str = "batv-milter";

    fn build(&self, config: &Config, keys: &Keyring) -> Result<State, String> {
        Ok(State {
            settings: Settings::from_config(config)?,
            keys: keys.clone(),
            signer: Signer::new(keys.clone(), config).ok(),
        })
    }

    fn restart_only(running: &Config, new: &Config) -> Vec<&'static str> {
        let (a, b) = (&running.milter, &new.milter);
        crate::server::changed(&[
            ("milter.listen", a.listen != b.listen),
            ("milter.max_connections", a.max_connections != b.max_connections),
            ("milter.socket_mode", a.socket_mode != b.socket_mode),
            ("milter.socket_group", a.socket_group != b.socket_group),
            ("milter.metrics_listen", a.metrics_listen != b.metrics_listen),
        ])
    }

    fn loaded(&self, state: &State) {
        match &state.signer {
            None => crate::logln!("batv-milter: warning: no active key: nothing is signed (mail leaves unsigned)"),
            Some(s) => {
                if let Some(w) = s.keyless_warning() {
                    crate::logln!("batv-milter: warning: {w}");
                }
            }
        }
    }

    async fn handle(server: Arc<Server<Self>>, conn: Connection, stop: Stop) {
        server.service.counters.connections.inc();
        session::serve(&server, conn, stop).await;
    }

    fn drain(_: &State) -> Duration {
        // A transaction in progress gets its end of message; idle connections close.
        Duration::from_secs(10)
    }

    fn render_metrics(&self) -> String {
        self.metrics.render()
    }
}
