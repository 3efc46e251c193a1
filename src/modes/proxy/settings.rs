//! The proxy's settings, made from the configuration file (and its certificate).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_rustls::TlsAcceptor;

use crate::core::address::DomainSet;
use crate::core::config::{Config, FrontProtocol, IpNet, ProxyMode, RejectAt};
use crate::core::recipients::Recipients;
use crate::core::verdict::Rules;
use crate::smtp::front;
use crate::smtp::session::Limits;

/// What the config file decides; replaced whole on SIGHUP, one snapshot per transaction.
pub struct Settings {
    pub mode: ProxyMode,
    pub front_protocol: FrontProtocol,
    pub rules: Rules,
    pub trusted: Vec<IpNet>,
    pub reject_at: RejectAt,
    pub enforce: bool,
    /// Enforce from this Unix time on (monitor before).
    pub enforce_after: Option<i64>,
    pub forward: SocketAddr,
    pub limits: Limits,
    pub max_failed_tags: u32,
    /// Front mode with a certificate: STARTTLS is offered and ended here.
    pub tls: Option<TlsAcceptor>,
    /// For the EHLO the proxy itself sends before XCLIENT.
    pub hostname: String,
    /// The DATA check, if on.
    pub data_check: Option<DataCheck>,
    /// Gateway mode's relay control and recipient check.
    pub gateway: Option<Gateway>,
}

/// Gateway mode: what the MTA behind cannot judge, since it sees only the proxy.
pub struct Gateway {
    pub relay_domains: DomainSet,
    /// Clients that may relay anywhere.
    pub trusted: Vec<IpNet>,
    /// The valid recipients of the relay domains, and the file they came from.
    pub recipients: Option<(PathBuf, Arc<Recipients>)>,
    /// Address extension delimiters, for the recipient check.
    pub delimiters: String,
}

pub use crate::bounce::DataCheck;

impl Settings {
    /// `recipients`: the `valid_recipients` table, loaded by the caller (who keeps it
    /// across reloads while the file is unchanged).
    pub fn from_config(config: &Config, recipients: Option<Arc<Recipients>>) -> Result<Settings, String> {
        if config.protected().is_empty() {
            return Err("the proxy needs protected_domains (or sign_domains)".into());
        }
        let p = &config.proxy;
        let tls = match (&p.tls_cert, &p.tls_key, p.mode) {
            (Some(c), Some(k), ProxyMode::Front | ProxyMode::Gateway) => {
                Some(front::acceptor(c, k).map_err(|e| format!("proxy.tls_cert: {e}"))?)
            }
            _ => None,
        };
        let gateway = (p.mode == ProxyMode::Gateway).then(|| Gateway {
            relay_domains: DomainSet::new(config.relay_domains()).unwrap_or_default(),
            trusted: p.trusted_networks.iter().filter_map(|n| IpNet::parse(n).ok()).collect(),
            recipients: p.valid_recipients.clone().zip(recipients),
            delimiters: config.recipient_delimiter.clone(),
        });
        if gateway.as_ref().is_some_and(|g| g.relay_domains.is_empty()) {
            return Err("gateway mode needs proxy.relay_domains (or protected_domains)".into());
        }
        Ok(Settings {
            mode: p.mode,
            front_protocol: p.front_protocol,
            rules: Rules::from_config(config),
            trusted: p.trusted_relays.iter().filter_map(|n| IpNet::parse(n).ok()).collect(),
            reject_at: p.reject_at,
            enforce: p.enforce,
            enforce_after: p.enforce_after.as_deref().and_then(|d| crate::core::time::parse_now(d).ok()),
            forward: p.forward,
            limits: Limits {
                command: Duration::from_millis(p.command_timeout_ms),
                data: Duration::from_millis(p.data_timeout_ms),
                recipients: p.max_recipients.get() as usize,
                errors: p.max_errors.get() as usize,
            },
            max_failed_tags: p.max_failed_tags.get(),
            tls,
            hostname: front::hostname(),
            data_check: p.data_check.then_some(DataCheck {
                limit: p.data_check_kib as usize * 1024,
                refuse: p.data_check_refuse,
            }),
            gateway,
        })
    }

    pub(crate) fn enforcing(&self, now: i64) -> bool {
        self.enforce && self.enforce_after.is_none_or(|t| now >= t)
    }
}
