//! Defaults and checked readers for single values of `batv.toml`; serde names them in
//! `default = ...` and `deserialize_with = ...`.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

use super::sections::*;
use crate::core::address::DomainSet;
use crate::core::tag::{Scheme, DEFAULT_LIFETIME, MAX_LIFETIME, MIN_LIFETIME};

pub(super) fn default_daemon_listen() -> Vec<Listen> {
    vec![Listen::Unix(PathBuf::from("/var/spool/postfix/batv/batv.sock"))]
}
pub(super) fn listen_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Listen>, D::Error> {
    let v = Vec::<Listen>::deserialize(d)?;
    if v.is_empty() {
        return Err(serde::de::Error::custom("at least one listener"));
    }
    Ok(v)
}
pub(super) fn default_socket_mode() -> String {
    "0666".into()
}
pub(super) fn socket_mode<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    match u32::from_str_radix(&s, 8) {
        Ok(m) if m <= 0o777 => Ok(s),
        _ => Err(serde::de::Error::custom(format!("{s:?}: an octal mode such as \"0660\""))),
    }
}
/// A user or group: a name as useradd(8) takes it, or a numeric id. Whether it exists is
/// asked when a daemon starts (the file may be checked on another machine).
pub(super) fn account_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
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
pub(super) fn default_daemon_max_connections() -> NonZeroU32 {
    NonZeroU32::new(200).unwrap_or(NonZeroU32::MIN)
}
pub(super) fn default_request_limit() -> u32 {
    16_384
}
pub(super) fn request_limit<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = i64::deserialize(d)?;
    if (512..=1_048_576).contains(&v) {
        Ok(v as u32)
    } else {
        Err(serde::de::Error::custom(format!("must be 512 to 1048576, got {v}")))
    }
}
pub(super) fn default_idle_timeout() -> u64 {
    600_000
}
pub(super) fn default_daemon_reject_at() -> RejectAt {
    RejectAt::Rcpt
}

pub(super) fn default_milter_listen() -> Vec<Listen> {
    vec![Listen::Unix(PathBuf::from("/var/spool/postfix/batv/milter"))]
}
pub(super) fn default_internal_networks() -> Vec<String> {
    vec!["127.0.0.0/8".into(), "::1".into()]
}

pub(super) fn default_scheme() -> Scheme {
    Scheme::Native
}
pub(super) fn default_lifetime() -> u16 {
    DEFAULT_LIFETIME
}
pub(super) fn default_sendmail_path() -> PathBuf {
    PathBuf::from("/usr/sbin/sendmail.real")
}
pub(super) fn default_on_error() -> OnError {
    OnError::Pass
}
pub(super) fn default_mode() -> ProxyMode {
    ProxyMode::BeforeQueue
}
pub(super) fn default_listen() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 10025))
}
pub(super) fn default_forward() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 10026))
}
pub(super) fn default_reject_at() -> RejectAt {
    RejectAt::Data
}
pub(super) fn yes() -> bool {
    true
}
pub(super) fn default_command_timeout() -> u64 {
    300_000
}
pub(super) fn default_data_timeout() -> u64 {
    600_000
}
pub(super) fn default_front_protocol() -> FrontProtocol {
    FrontProtocol::Xclient
}
pub(super) fn default_max_recipients() -> NonZeroU32 {
    NonZeroU32::new(1000).unwrap_or(NonZeroU32::MIN)
}
pub(super) fn default_max_errors() -> NonZeroU32 {
    NonZeroU32::new(20).unwrap_or(NonZeroU32::MIN)
}
pub(super) fn default_max_failed_tags() -> NonZeroU32 {
    NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN)
}
pub(super) fn loopback_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<std::net::SocketAddr>, D::Error> {
    let a = std::net::SocketAddr::deserialize(d)?;
    if !a.ip().is_loopback() {
        return Err(serde::de::Error::custom(format!(
            "{a}: the metrics port serves loopback only (127.0.0.1 or ::1)"
        )));
    }
    Ok(Some(a))
}
/// Bounces carry their evidence (the report and the returned headers) near the start.
pub(super) fn default_data_check_kib() -> u32 {
    64
}
pub(super) const MAX_DATA_CHECK_KIB: u32 = 1024;
pub(super) fn data_check_kib<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = i64::deserialize(d)?;
    if (1..=MAX_DATA_CHECK_KIB as i64).contains(&v) {
        Ok(v as u32)
    } else {
        Err(serde::de::Error::custom(format!("must be 1 to {MAX_DATA_CHECK_KIB}, got {v}")))
    }
}
pub(super) fn default_max_connections() -> NonZeroU32 {
    NonZeroU32::new(1000).unwrap_or(NonZeroU32::MIN)
}

pub(super) fn lifetime<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    let v = i64::deserialize(d)?;
    if (MIN_LIFETIME as i64..=MAX_LIFETIME as i64).contains(&v) {
        Ok(v as u16)
    } else {
        Err(serde::de::Error::custom(format!(
            "lifetime_days must be {MIN_LIFETIME} to {MAX_LIFETIME}, got {v}"
        )))
    }
}

pub(super) fn schemes_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Scheme>>, D::Error> {
    let v = Vec::<Scheme>::deserialize(d)?;
    if v.is_empty() {
        return Err(serde::de::Error::custom("verify_schemes needs at least one scheme"));
    }
    Ok(Some(v))
}

pub(super) fn default_recipient_delimiter() -> String {
    "+".into()
}

pub(super) fn delimiters<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    match s.chars().find(|c| !c.is_ascii_punctuation() || matches!(c, '.' | '@' | '"' | '\\')) {
        Some(c) => Err(serde::de::Error::custom(format!(
            "{c:?} cannot be an address extension delimiter (ASCII punctuation other than . @ \" \\)"
        ))),
        None => Ok(s),
    }
}

pub(super) fn check_domain<E: serde::de::Error>(d: &str) -> Result<(), E> {
    DomainSet::new([d]).map(|_| ()).map_err(|e| E::custom(format!("{d:?}: {e}")))
}

pub(super) fn domains<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    v.iter().try_for_each(|s| check_domain::<D::Error>(s))?;
    Ok(v)
}

pub(super) fn domains_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    domains(d).map(Some)
}

pub(super) fn domain_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    if s.starts_with('.') {
        return Err(serde::de::Error::custom(format!("{s:?}: a domain name, not a suffix")));
    }
    check_domain::<D::Error>(&s)?;
    Ok(Some(s))
}

/// `@domain` (every address there) or a full address.
pub(super) fn exempt_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
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

pub(super) fn date_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    crate::core::time::parse_now(&s).map_err(serde::de::Error::custom)?;
    Ok(Some(s))
}

pub(super) fn nets<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
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

pub(super) fn default_subaddress_delimiter() -> char {
    '+'
}
pub(super) fn subaddress_delimiter<'de, D: Deserializer<'de>>(d: D) -> Result<char, D::Error> {
    let s = String::deserialize(d)?;
    let mut chars = s.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) => crate::core::tag::Syntax::subaddress(c).map(|_| c).map_err(serde::de::Error::custom),
        _ => Err(serde::de::Error::custom(format!("must be one character, got {s:?}"))),
    }
}

/// `[domain_keys]`: domain names (a store also serves the domains below it) to keys
/// directories.
pub(super) fn domain_keys<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, PathBuf>, D::Error> {
    let map = BTreeMap::<String, PathBuf>::deserialize(d)?;
    let mut seen = BTreeMap::new();
    for (domain, dir) in &map {
        if domain.starts_with('.') {
            return Err(serde::de::Error::custom(format!(
                "{domain:?}: name the domain itself; its store also serves the domains below it"
            )));
        }
        check_domain::<D::Error>(domain)?;
        if dir.as_os_str().is_empty() {
            return Err(serde::de::Error::custom(format!("{domain:?}: empty keys directory")));
        }
        let canonical = crate::core::address::canonical_domain(domain)
            .map_err(|e| serde::de::Error::custom(format!("{domain:?}: {e}")))?
            .into_owned();
        if let Some(other) = seen.insert(canonical, domain) {
            return Err(serde::de::Error::custom(format!("{other:?} and {domain:?} are the same domain")));
        }
    }
    Ok(map)
}
