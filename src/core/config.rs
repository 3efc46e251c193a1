//! The configuration file (`batv.toml`, DESIGN §9). Unknown keys and bad values are errors
//! naming the file, line and key; every value is checked while it is read.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use crate::core::address::DomainSet;
pub use crate::core::recipients::LocalCase;
use crate::core::tag::{Scheme, DEFAULT_LIFETIME, MAX_LIFETIME, MIN_LIFETIME};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{detail}")]
    Invalid { path: PathBuf, detail: String },
}

impl ConfigError {
    pub fn exit_code(&self) -> u8 {
        crate::core::exit::EX_CONFIG
    }
}

/// "line N: key: message" for a TOML error. Its span points at the offending key or
/// value; for a value, the key is the one assigned on that line, with its [table].
pub fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim_end();
    let Some(span) = e.span() else {
        return format!(" {msg}");
    };
    let start = span.start.min(text.len());
    let line = text[..start].matches('\n').count() + 1;
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let before = &text[line_start..start];
    let key = match before.find('=') {
        Some(eq) => {
            let table = text[..line_start]
                .lines()
                .rev()
                .map(str::trim)
                .find(|l| l.starts_with('[') && !l.starts_with("[["))
                .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim());
            let k = before[..eq].trim();
            Some(match table {
                Some(t) if !t.is_empty() => format!("{t}.{k}"),
                _ => k.to_string(),
            })
        }
        None => text
            .get(span.clone())
            .map(str::trim)
            .filter(|k| !k.is_empty() && k.len() <= 60 && !k.contains('\n'))
            .map(str::to_string),
    };
    match key {
        Some(k) => format!("{line}: {k}: {msg}"),
        None => format!("{line}: {msg}"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Send unsigned, warn on stderr and syslog.
    Pass,
    /// Exit 75 so the caller retries.
    Tempfail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProxyMode {
    BeforeQueue,
    Front,
    /// In front of an MTA that takes neither XCLIENT nor PROXY: the proxy is the relay
    /// control and, with `valid_recipients`, the recipient check.
    Gateway,
}

impl ProxyMode {
    pub fn name(self) -> &'static str {
        match self {
            ProxyMode::BeforeQueue => "before-queue",
            ProxyMode::Front => "front",
            ProxyMode::Gateway => "gateway",
        }
    }
}

/// How a front proxy tells the MTA who the client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FrontProtocol {
    /// Postfix XCLIENT (`smtpd_authorized_xclient_hosts`).
    Xclient,
    /// A PROXY protocol v2 header (Postfix `smtpd_upstream_proxy_protocol = haproxy`).
    ProxyV2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RejectAt {
    Data,
    Rcpt,
}

/// The effective configuration: file values over defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Keys directory. Relative paths are taken from the config file's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys_dir: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_group: Option<String>,
    /// Daemons started as root bind their sockets, then run as this user (a name or a
    /// uid), with its groups.
    #[serde(default, deserialize_with = "account_opt", skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The group to run as with `user` (default: the user's own group).
    #[serde(default, deserialize_with = "account_opt", skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default = "default_scheme")]
    pub scheme: Scheme,
    #[serde(default = "default_lifetime", deserialize_with = "lifetime")]
    pub lifetime_days: u16,
    #[serde(default, deserialize_with = "domains")]
    pub sign_domains: Vec<String>,
    /// Default: sign_domains.
    #[serde(default, deserialize_with = "domains_opt", skip_serializing_if = "Option::is_none")]
    pub protected_domains: Option<Vec<String>>,
    /// The schemes a verifier accepts. Default: `[scheme]`.
    #[serde(default, deserialize_with = "schemes_opt", skip_serializing_if = "Option::is_none")]
    pub verify_schemes: Option<Vec<Scheme>>,
    /// The MTA's address extension delimiters (Postfix `recipient_delimiter`): a long
    /// extension on a mailbox the signer tags is no reason to exempt a bounce.
    #[serde(default = "default_recipient_delimiter", deserialize_with = "delimiters")]
    pub recipient_delimiter: String,
    #[serde(default)]
    pub sendmail: SendmailConfig,
    #[serde(default)]
    pub proxy: ProxyConfig,
    #[serde(default)]
    pub daemon: DaemonConfig,
    #[serde(default)]
    pub milter: MilterConfig,
}

/// Where `batv daemon` listens: a unix socket, or TCP on loopback (it has no
/// authentication of its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Unix(PathBuf),
    Inet(std::net::SocketAddr),
}

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(format!("{s:?}: the socket path must be absolute"));
            }
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        let Some(addr) = s.strip_prefix("inet:") else {
            return Err(format!("{s:?}: expected unix:/path or inet:127.0.0.1:PORT"));
        };
        let a: std::net::SocketAddr = addr.parse().map_err(|e| format!("{s:?}: {e}"))?;
        if !a.ip().is_loopback() {
            return Err(format!(
                "{s:?}: TCP on loopback only (127.0.0.1 or [::1]); the daemon has no authentication"
            ));
        }
        Ok(Listen::Inet(a))
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
            Listen::Inet(a) => write!(f, "inet:{a}"),
        }
    }
}

impl Serialize for Listen {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// `batv daemon`: Postfix socketmap and policy service, Exim `${readsocket}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    #[serde(default = "default_daemon_listen", deserialize_with = "listen_list")]
    pub listen: Vec<Listen>,
    /// Permissions of the unix sockets (octal); the directory they are in decides who
    /// reaches them.
    #[serde(default = "default_socket_mode", deserialize_with = "socket_mode")]
    pub socket_mode: String,
    /// The group the unix sockets are given (with a `socket_mode` such as "0660"), for
    /// an MTA that runs in that group.
    #[serde(default, deserialize_with = "account_opt", skip_serializing_if = "Option::is_none")]
    pub socket_group: Option<String>,
    /// Counters as Prometheus text on this loopback address (`/metrics`), as the proxy's.
    #[serde(default, deserialize_with = "loopback_opt", skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    #[serde(default = "default_daemon_max_connections")]
    pub max_connections: NonZeroU32,
    /// Longest request (a netstring, a policy request, a line) in octets.
    #[serde(default = "default_request_limit", deserialize_with = "request_limit")]
    pub request_limit: u32,
    /// A connection with no request for this long is closed (Postfix's own idle limits
    /// are shorter: 10 s for socketmap, 300 s for the policy client).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_ms: u64,
    /// "rcpt" refuses a backscatter recipient at once; "data" gives the proxy's one
    /// verdict per transaction and needs the service in smtpd_data_restrictions too.
    #[serde(default = "default_daemon_reject_at")]
    pub reject_at: RejectAt,
    #[serde(default = "yes")]
    pub enforce: bool,
    #[serde(default, deserialize_with = "date_opt", skip_serializing_if = "Option::is_none")]
    pub enforce_after: Option<String>,
    #[serde(default, deserialize_with = "nets")]
    pub trusted_relays: Vec<String>,
    /// Invalid tags in bounces from one client (IPv6: its /64, and 8 times as many per /48) within an hour before
    /// its tagged bounces get `421 4.7.0` unchecked, as in the proxy.
    #[serde(default = "default_max_failed_tags")]
    pub max_failed_tags: NonZeroU32,
}

fn default_daemon_listen() -> Vec<Listen> {
    vec![Listen::Unix(PathBuf::from("/var/spool/postfix/batv/batv.sock"))]
}
fn listen_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Listen>, D::Error> {
    let v = Vec::<Listen>::deserialize(d)?;
    if v.is_empty() {
        return Err(serde::de::Error::custom("at least one listener"));
    }
    Ok(v)
}
fn default_socket_mode() -> String {
    "0666".into()
}
fn socket_mode<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    match u32::from_str_radix(&s, 8) {
        Ok(m) if m <= 0o777 => Ok(s),
        _ => Err(serde::de::Error::custom(format!("{s:?}: an octal mode such as \"0660\""))),
    }
}
/// A user or group: a name as useradd(8) takes it, or a numeric id. Whether it exists is
/// asked when a daemon starts (the file may be checked on another machine).
fn account_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    let name = !s.is_empty()
        && s.len() <= 32
        && !s.starts_with('-')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if name || (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && s.parse::<u32>().is_ok()) {
        Ok(Some(s))
    } else {
        Err(serde::de::Error::custom(format!("{s:?}: a user or group name, or a numeric id")))
    }
}
fn default_daemon_max_connections() -> NonZeroU32 {
    NonZeroU32::new(200).unwrap_or(NonZeroU32::MIN)
}
fn default_request_limit() -> u32 {
    16_384
}
fn request_limit<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = i64::deserialize(d)?;
    if (512..=1_048_576).contains(&v) {
        Ok(v as u32)
    } else {
        Err(serde::de::Error::custom(format!("must be 512 to 1048576, got {v}")))
    }
}
fn default_idle_timeout() -> u64 {
    600_000
}
fn default_daemon_reject_at() -> RejectAt {
    RejectAt::Rcpt
}

impl DaemonConfig {
    /// The unix sockets' mode (validated when read).
    pub fn socket_mode(&self) -> u32 {
        u32::from_str_radix(&self.socket_mode, 8).unwrap_or(0o666)
    }
}

/// `batv milter`: sign, verify and strip inside a milter-speaking MTA (DESIGN §10).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MilterConfig {
    #[serde(default = "default_milter_listen", deserialize_with = "listen_list")]
    pub listen: Vec<Listen>,
    /// Permissions of the unix sockets (octal), as `[daemon]`'s.
    #[serde(default = "default_socket_mode", deserialize_with = "socket_mode")]
    pub socket_mode: String,
    #[serde(default, deserialize_with = "account_opt", skip_serializing_if = "Option::is_none")]
    pub socket_group: Option<String>,
    /// Mail from these clients (and from authenticated ones, and local submissions) is
    /// signed; mail from anywhere else never is.
    #[serde(default = "default_internal_networks", deserialize_with = "nets")]
    pub internal_networks: Vec<String>,
    #[serde(default = "default_daemon_reject_at")]
    pub reject_at: RejectAt,
    #[serde(default = "yes")]
    pub enforce: bool,
    #[serde(default, deserialize_with = "date_opt", skip_serializing_if = "Option::is_none")]
    pub enforce_after: Option<String>,
    #[serde(default, deserialize_with = "nets")]
    pub trusted_relays: Vec<String>,
    #[serde(default = "default_max_failed_tags")]
    pub max_failed_tags: NonZeroU32,
    #[serde(default = "default_daemon_max_connections")]
    pub max_connections: NonZeroU32,
    /// A connection with no command for this long is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_ms: u64,
    #[serde(default, deserialize_with = "loopback_opt", skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The proxy's DATA check, here: mail from a non-null sender to a protected untagged
    /// recipient is inspected (its header and first `data_check_kib`) at end of message.
    #[serde(default)]
    pub data_check: bool,
    #[serde(default)]
    pub data_check_refuse: bool,
    #[serde(default = "default_data_check_kib", deserialize_with = "data_check_kib")]
    pub data_check_kib: u32,
}

fn default_milter_listen() -> Vec<Listen> {
    vec![Listen::Unix(PathBuf::from("/var/spool/postfix/batv/milter"))]
}
fn default_internal_networks() -> Vec<String> {
    vec!["127.0.0.0/8".into(), "::1".into()]
}

impl MilterConfig {
    /// The unix sockets' mode (validated when read).
    pub fn socket_mode(&self) -> u32 {
        u32::from_str_radix(&self.socket_mode, 8).unwrap_or(0o666)
    }
}

impl Default for MilterConfig {
    fn default() -> Self {
        MilterConfig {
            listen: default_milter_listen(),
            socket_mode: default_socket_mode(),
            socket_group: None,
            internal_networks: default_internal_networks(),
            reject_at: default_daemon_reject_at(),
            enforce: true,
            enforce_after: None,
            trusted_relays: vec![],
            max_failed_tags: default_max_failed_tags(),
            max_connections: default_daemon_max_connections(),
            idle_timeout_ms: default_idle_timeout(),
            metrics_listen: None,
            data_check: false,
            data_check_refuse: false,
            data_check_kib: default_data_check_kib(),
        }
    }
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            listen: default_daemon_listen(),
            socket_mode: default_socket_mode(),
            socket_group: None,
            metrics_listen: None,
            max_connections: default_daemon_max_connections(),
            request_limit: default_request_limit(),
            idle_timeout_ms: default_idle_timeout(),
            reject_at: default_daemon_reject_at(),
            enforce: true,
            enforce_after: None,
            trusted_relays: vec![],
            max_failed_tags: default_max_failed_tags(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendmailConfig {
    #[serde(default = "default_sendmail_path")]
    pub path: PathBuf,
    #[serde(default, deserialize_with = "domain_opt", skip_serializing_if = "Option::is_none")]
    pub default_domain: Option<String>,
    #[serde(default, deserialize_with = "exempt_list")]
    pub exempt_recipients: Vec<String>,
    #[serde(default = "default_on_error")]
    pub on_error: OnError,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    #[serde(default = "default_mode")]
    pub mode: ProxyMode,
    #[serde(default = "default_listen")]
    pub listen: std::net::SocketAddr,
    #[serde(default = "default_forward")]
    pub forward: std::net::SocketAddr,
    #[serde(default = "default_reject_at")]
    pub reject_at: RejectAt,
    #[serde(default = "yes")]
    pub enforce: bool,
    #[serde(default, deserialize_with = "date_opt", skip_serializing_if = "Option::is_none")]
    pub enforce_after: Option<String>,
    #[serde(default, deserialize_with = "nets")]
    pub trusted_relays: Vec<String>,
    #[serde(default = "default_max_connections")]
    pub max_connections: NonZeroU32,
    /// Front mode: XCLIENT or PROXY v2 towards the MTA.
    #[serde(default = "default_front_protocol")]
    pub front_protocol: FrontProtocol,
    /// Recipients per message (Postfix smtpd_recipient_limit); more get 452 4.5.3.
    #[serde(default = "default_max_recipients")]
    pub max_recipients: NonZeroU32,
    /// Error replies per session before it is closed (Postfix smtpd_hard_error_limit).
    #[serde(default = "default_max_errors")]
    pub max_errors: NonZeroU32,
    /// Invalid tags (bad signature, unknown key, malformed; not expired) in bounces from
    /// one client within an hour before its sessions are closed.
    #[serde(default = "default_max_failed_tags")]
    pub max_failed_tags: NonZeroU32,
    /// Serve counters as Prometheus text here (loopback only).
    #[serde(default, deserialize_with = "loopback_opt", skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Waiting for a command or a reply to one (RFC 5321 §4.5.3.2: 5 minutes).
    #[serde(default = "default_command_timeout")]
    pub command_timeout_ms: u64,
    /// Waiting for message data and for the reply to its end (10 minutes).
    #[serde(default = "default_data_timeout")]
    pub data_timeout_ms: u64,
    /// Inspect mail from non-null senders to protected, untagged recipients for bounces of
    /// mail we never sent (backscatter from broken MTAs and auto-responders): adds `X-BATV:`.
    #[serde(default)]
    pub data_check: bool,
    /// With `data_check`: refuse what it finds to be backscatter with 550 5.7.1.
    #[serde(default)]
    pub data_check_refuse: bool,
    /// With `data_check`: how much of a message is inspected (held before it goes on).
    #[serde(default = "default_data_check_kib", deserialize_with = "data_check_kib")]
    pub data_check_kib: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Gateway mode: the domains mail is taken for from any client (exact names,
    /// `.example.com` for subdomains). Default: protected_domains.
    #[serde(default, deserialize_with = "domains_opt", skip_serializing_if = "Option::is_none")]
    pub relay_domains: Option<Vec<String>>,
    /// Gateway mode: clients that may relay to any domain.
    #[serde(default, deserialize_with = "nets", skip_serializing_if = "Vec::is_empty")]
    pub trusted_networks: Vec<String>,
    /// Gateway mode: the valid recipients of the relay domains (one address or `@domain`
    /// a line); the others get 550 5.1.1 at RCPT. Without it the MTA's answers stand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_recipients: Option<PathBuf>,
    /// How `valid_recipients` compares local parts (domains: always without case).
    #[serde(default)]
    pub valid_recipients_case: LocalCase,
}

fn default_scheme() -> Scheme {
    Scheme::Native
}
fn default_lifetime() -> u16 {
    DEFAULT_LIFETIME
}
fn default_sendmail_path() -> PathBuf {
    PathBuf::from("/usr/sbin/sendmail.real")
}
fn default_on_error() -> OnError {
    OnError::Pass
}
fn default_mode() -> ProxyMode {
    ProxyMode::BeforeQueue
}
fn default_listen() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 10025))
}
fn default_forward() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 10026))
}
fn default_reject_at() -> RejectAt {
    RejectAt::Data
}
fn yes() -> bool {
    true
}
fn default_command_timeout() -> u64 {
    300_000
}
fn default_data_timeout() -> u64 {
    600_000
}
fn default_front_protocol() -> FrontProtocol {
    FrontProtocol::Xclient
}
fn default_max_recipients() -> NonZeroU32 {
    NonZeroU32::new(1000).unwrap_or(NonZeroU32::MIN)
}
fn default_max_errors() -> NonZeroU32 {
    NonZeroU32::new(20).unwrap_or(NonZeroU32::MIN)
}
fn default_max_failed_tags() -> NonZeroU32 {
    NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN)
}
fn loopback_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<std::net::SocketAddr>, D::Error> {
    let a = std::net::SocketAddr::deserialize(d)?;
    if !a.ip().is_loopback() {
        return Err(serde::de::Error::custom(format!(
            "{a}: the metrics port serves loopback only (127.0.0.1 or ::1)"
        )));
    }
    Ok(Some(a))
}
/// Bounces carry their evidence (the report and the returned headers) near the start.
fn default_data_check_kib() -> u32 {
    64
}
const MAX_DATA_CHECK_KIB: u32 = 1024;
fn data_check_kib<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = i64::deserialize(d)?;
    if (1..=MAX_DATA_CHECK_KIB as i64).contains(&v) {
        Ok(v as u32)
    } else {
        Err(serde::de::Error::custom(format!("must be 1 to {MAX_DATA_CHECK_KIB}, got {v}")))
    }
}
fn default_max_connections() -> NonZeroU32 {
    NonZeroU32::new(1000).unwrap_or(NonZeroU32::MIN)
}

impl Default for SendmailConfig {
    fn default() -> Self {
        SendmailConfig {
            path: default_sendmail_path(),
            default_domain: None,
            exempt_recipients: vec![],
            on_error: default_on_error(),
        }
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            mode: default_mode(),
            listen: default_listen(),
            forward: default_forward(),
            reject_at: default_reject_at(),
            enforce: true,
            enforce_after: None,
            trusted_relays: vec![],
            max_connections: default_max_connections(),
            front_protocol: default_front_protocol(),
            max_recipients: default_max_recipients(),
            max_errors: default_max_errors(),
            max_failed_tags: default_max_failed_tags(),
            metrics_listen: None,
            command_timeout_ms: default_command_timeout(),
            data_timeout_ms: default_data_timeout(),
            data_check: false,
            data_check_refuse: false,
            data_check_kib: default_data_check_kib(),
            tls_cert: None,
            tls_key: None,
            relay_domains: None,
            trusted_networks: vec![],
            valid_recipients: None,
            valid_recipients_case: LocalCase::default(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            keys_dir: None,
            key_group: None,
            user: None,
            group: None,
            scheme: default_scheme(),
            lifetime_days: DEFAULT_LIFETIME,
            sign_domains: vec![],
            protected_domains: None,
            verify_schemes: None,
            recipient_delimiter: default_recipient_delimiter(),
            sendmail: SendmailConfig::default(),
            proxy: ProxyConfig::default(),
            daemon: DaemonConfig::default(),
            milter: MilterConfig::default(),
        }
    }
}

fn lifetime<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    let v = i64::deserialize(d)?;
    if (MIN_LIFETIME as i64..=MAX_LIFETIME as i64).contains(&v) {
        Ok(v as u16)
    } else {
        Err(serde::de::Error::custom(format!(
            "lifetime_days must be {MIN_LIFETIME} to {MAX_LIFETIME}, got {v}"
        )))
    }
}

fn schemes_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Scheme>>, D::Error> {
    let v = Vec::<Scheme>::deserialize(d)?;
    if v.is_empty() {
        return Err(serde::de::Error::custom("verify_schemes needs at least one scheme"));
    }
    Ok(Some(v))
}

fn default_recipient_delimiter() -> String {
    "+".into()
}

fn delimiters<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    match s.chars().find(|c| !c.is_ascii_punctuation() || matches!(c, '.' | '@' | '"' | '\\')) {
        Some(c) => Err(serde::de::Error::custom(format!(
            "{c:?} cannot be an address extension delimiter (ASCII punctuation other than . @ \" \\)"
        ))),
        None => Ok(s),
    }
}

fn check_domain<E: serde::de::Error>(d: &str) -> Result<(), E> {
    DomainSet::new([d]).map(|_| ()).map_err(|e| E::custom(format!("{d:?}: {e}")))
}

fn domains<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    v.iter().try_for_each(|s| check_domain::<D::Error>(s))?;
    Ok(v)
}

fn domains_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    domains(d).map(Some)
}

fn domain_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    if s.starts_with('.') {
        return Err(serde::de::Error::custom(format!("{s:?}: a domain name, not a suffix")));
    }
    check_domain::<D::Error>(&s)?;
    Ok(Some(s))
}

/// `@domain` (every address there) or a full address.
fn exempt_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    for s in &v {
        let ok = match s.strip_prefix('@') {
            Some(domain) => DomainSet::new([domain]).is_ok(),
            None => crate::core::address::parse(s).is_ok(),
        };
        if !ok {
            return Err(serde::de::Error::custom(format!("{s:?}: expected an address or @domain")));
        }
    }
    Ok(v)
}

fn date_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    crate::core::time::parse_now(&s).map_err(serde::de::Error::custom)?;
    Ok(Some(s))
}

fn nets<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    for s in &v {
        IpNet::parse(s).map_err(serde::de::Error::custom)?;
    }
    Ok(v)
}

/// An IP address or CIDR network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?}: expected an IP address or network (192.0.2.0/24, 2001:db8::/32)");
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = ip.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(IpNet { addr, prefix })
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        let (a, b, bits) = match (self.addr, ip) {
            (std::net::IpAddr::V4(a), std::net::IpAddr::V4(b)) => (u32::from(a) as u128, u32::from(b) as u128, 32),
            (std::net::IpAddr::V6(a), std::net::IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
            _ => return false,
        };
        let shift = bits - self.prefix as u32;
        shift >= bits || (a >> shift) == (b >> shift)
    }
}

/// Where the binary thinks it lives: in a cargo checkout (its `target/` holds us) or
/// installed. The checkout mode uses `./keys` and `./batv.toml` there.
fn checkout_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?.canonicalize().ok()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).canonicalize().ok()?;
    exe.starts_with(root.join("target")).then_some(root)
}

/// Default config file: `batv.toml` in the checkout, or `/etc/batv/batv.toml`.
pub fn default_config_path() -> PathBuf {
    match checkout_dir() {
        Some(root) => root.join("batv.toml"),
        None => PathBuf::from("/etc/batv/batv.toml"),
    }
}

/// Default keys directory: `keys/` in the checkout, or `/etc/batv/keys`.
pub fn default_keys_dir() -> PathBuf {
    match checkout_dir() {
        Some(root) => root.join("keys"),
        None => PathBuf::from("/etc/batv/keys"),
    }
}

impl Config {
    /// Parse config text. `path` is only for messages and relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut c: Config = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            detail: describe_toml_error(text, &e),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            c.keys_dir.as_mut(),
            c.proxy.tls_cert.as_mut(),
            c.proxy.tls_key.as_mut(),
            c.proxy.valid_recipients.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        let invalid = |detail: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            detail: format!(" {detail}"),
        };
        let p = &c.proxy;
        if p.mode != ProxyMode::BeforeQueue && p.tls_cert.is_some() != p.tls_key.is_some() {
            return Err(invalid("proxy.tls_cert and proxy.tls_key go together".into()));
        }
        if p.mode != ProxyMode::Gateway {
            // Relay control is the MTA's in the other modes: a setting that would do
            // nothing there is a mistake, not a default.
            let set = [
                ("relay_domains", p.relay_domains.is_some()),
                ("trusted_networks", !p.trusted_networks.is_empty()),
                ("valid_recipients", p.valid_recipients.is_some()),
            ];
            if let Some((name, _)) = set.iter().find(|(_, set)| *set) {
                return Err(invalid(format!(
                    "proxy.{name} applies in gateway mode only (proxy.mode = \"gateway\"); the MTA does this in {} mode",
                    p.mode.name()
                )));
            }
        } else if c.relay_domains().is_empty() {
            return Err(invalid(
                "gateway mode needs the domains it takes mail for: set proxy.relay_domains (or protected_domains or sign_domains); without them it would relay for nobody, or for everybody".into(),
            ));
        }
        if c.proxy.data_check_refuse && !c.proxy.data_check {
            return Err(invalid("proxy.data_check_refuse needs proxy.data_check = true".into()));
        }
        Ok(c)
    }

    /// Load `path`, or the defaults if `path` is the default location and absent.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (path, explicit) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (default_config_path(), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Config::parse(&text, &path),
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    /// Domains whose bounces need a valid tag.
    pub fn protected(&self) -> &[String] {
        self.protected_domains.as_deref().unwrap_or(&self.sign_domains)
    }

    /// Gateway mode: the domains any client may send to.
    pub fn relay_domains(&self) -> &[String] {
        self.proxy.relay_domains.as_deref().unwrap_or(self.protected())
    }

    pub fn sign_domain_set(&self) -> DomainSet {
        DomainSet::new(&self.sign_domains).unwrap_or_default()
    }

    pub fn protected_domain_set(&self) -> DomainSet {
        DomainSet::new(self.protected()).unwrap_or_default()
    }

    /// The schemes verifiers accept: `verify_schemes`, or the signing scheme alone.
    pub fn accepted_schemes(&self) -> crate::core::tag::Schemes {
        match &self.verify_schemes {
            Some(v) => crate::core::tag::Schemes::of(v.iter().copied()),
            None => crate::core::tag::Schemes::of([self.scheme]),
        }
    }

    /// The effective configuration as TOML (`config show`).
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        shown.protected_domains = Some(self.protected().to_vec());
        shown.verify_schemes = Some(self.verify_schemes.clone().unwrap_or_else(|| vec![self.scheme]));
        if self.proxy.mode == ProxyMode::Gateway {
            shown.proxy.relay_domains = Some(self.relay_domains().to_vec());
        }
        toml::to_string(&shown).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/etc/batv/batv.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.scheme, Scheme::Native);
        assert_eq!(c.lifetime_days, 7);
        assert_eq!(c.proxy.mode, ProxyMode::BeforeQueue);
    }

    #[test]
    fn full_example() {
        let c = parse(
            r#"keys_dir = "keys"
scheme = "prvs"
lifetime_days = 14
sign_domains = ["example.com", ".example.org"]
[sendmail]
path = "/usr/sbin/sendmail.real"
default_domain = "example.com"
exempt_recipients = ["@lists.example.org", "announce@example.net"]
on_error = "tempfail"
[proxy]
mode = "front"
listen = "[::1]:25"
trusted_relays = ["192.0.2.10", "2001:db8::/32"]
enforce_after = "2026-12-01"
"#,
        )
        .unwrap();
        assert_eq!(c.keys_dir.as_deref(), Some(Path::new("/etc/batv/keys")));
        assert_eq!(c.protected(), ["example.com", ".example.org"]);
        assert_eq!(c.sendmail.on_error, OnError::Tempfail);
    }

    #[test]
    fn errors_name_line_and_key() {
        let e = parse("scheme = \"native\"\nbogus = 1\n").unwrap_err();
        assert!(e.starts_with("/etc/batv/batv.toml:2: bogus"), "{e}");
        let e = parse("\n\nlifetime_days = 45\n").unwrap_err();
        assert!(e.contains(":3:") && e.contains("7 to 30"), "{e}");
        let e = parse("[proxy]\nmode = \"sideways\"\n").unwrap_err();
        assert!(e.contains(":2:") && e.contains("sideways"), "{e}");
        let e = parse("sign_domains = [\"exa mple.com\"]").unwrap_err();
        assert!(e.contains(":1:"), "{e}");
        assert!(parse("scheme = ").is_err());
    }

    #[test]
    fn gateway_settings() {
        let c = parse(
            "sign_domains = [\"example.com\"]\n[proxy]\nmode = \"gateway\"\nvalid_recipients = \"rcpts\"\ntrusted_networks = [\"192.0.2.0/24\"]\nvalid_recipients_case = \"insensitive\"\n",
        )
        .unwrap();
        assert_eq!(c.relay_domains(), ["example.com"]);
        assert_eq!(c.proxy.valid_recipients.as_deref(), Some(Path::new("/etc/batv/rcpts")));
        assert_eq!(c.proxy.valid_recipients_case, LocalCase::Insensitive);
        assert!(c.to_toml().contains("relay_domains = [\"example.com\"]"), "{}", c.to_toml());
        let c = parse("protected_domains = [\"a.example\"]\n[proxy]\nmode = \"gateway\"\nrelay_domains = [\".b.example\"]\n").unwrap();
        assert_eq!(c.relay_domains(), [".b.example"]);
        // Nothing to take mail for: refused, not an open (or closed) relay.
        let e = parse("[proxy]\nmode = \"gateway\"\n").unwrap_err();
        assert!(e.contains("gateway mode needs") && e.contains("relay_domains"), "{e}");
        let e = parse("sign_domains = [\"example.com\"]\n[proxy]\nmode = \"gateway\"\nrelay_domains = []\n").unwrap_err();
        assert!(e.contains("gateway mode needs"), "{e}");
        // Gateway settings elsewhere do nothing: refused.
        for (k, v) in [
            ("relay_domains", "[\"example.com\"]"),
            ("trusted_networks", "[\"192.0.2.1\"]"),
            ("valid_recipients", "\"/x\""),
        ] {
            let e = parse(&format!("sign_domains = [\"example.com\"]\n[proxy]\nmode = \"front\"\n{k} = {v}\n")).unwrap_err();
            assert!(e.contains(&format!("proxy.{k} applies in gateway mode only")), "{e}");
        }
        let e = parse("sign_domains = [\"example.com\"]\n[proxy]\nmode = \"gateway\"\ntrusted_networks = [\"nonsense\"]\n").unwrap_err();
        assert!(e.contains(":4:"), "{e}");
        let e = parse("sign_domains = [\"example.com\"]\n[proxy]\nmode = \"gateway\"\ntls_cert = \"c.pem\"\n").unwrap_err();
        assert!(e.contains("go together"), "{e}");
    }

    #[test]
    fn ip_nets() {
        let n = IpNet::parse("192.0.2.0/24").unwrap();
        assert!(n.contains("192.0.2.77".parse().unwrap()));
        assert!(n.contains("::ffff:192.0.2.1".parse().unwrap()));
        assert!(!n.contains("192.0.3.1".parse().unwrap()));
        assert!(IpNet::parse("192.0.2.0/33").is_err());
        assert!(IpNet::parse("2001:db8::/32").unwrap().contains("2001:db8::1".parse().unwrap()));
    }
}
