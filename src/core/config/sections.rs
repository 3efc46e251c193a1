//! The sections of `batv.toml` below the top level, and the value types they share.

use std::num::NonZeroU32;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};

use super::values::*;
use super::LocalCase;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Send unsigned, warn on stderr and syslog.
    Pass,
    /// Exit 75 so the caller retries.
    Tempfail,
}

/// Where the signer puts the tag (`tag_syntax`); verifiers read both always.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TagSyntax {
    /// `prvs=KDDDHASH=alice@example.com`.
    #[default]
    Prefix,
    /// `alice+prvs=KDDDHASH@example.com` (`subaddress_delimiter`).
    Subaddress,
}

impl std::str::FromStr for TagSyntax {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "prefix" => Ok(TagSyntax::Prefix),
            "subaddress" => Ok(TagSyntax::Subaddress),
            _ => Err(format!("unknown tag syntax {s:?} (expected prefix or subaddress)")),
        }
    }
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
