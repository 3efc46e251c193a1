//! The configuration file (`batv.toml`, DESIGN §9). Unknown keys and bad values are errors
//! naming the file, line and key; every value is checked while it is read.

mod sections;
mod values;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::core::address::DomainSet;
pub use crate::core::recipients::LocalCase;
use crate::core::tag::{Scheme, Syntax, DEFAULT_LIFETIME};

pub use sections::*;
pub use values::IpNet;
use values::*;

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
    /// Where the signer puts the tag.
    #[serde(default)]
    pub tag_syntax: TagSyntax,
    /// The sub-address syntax's delimiter (one of `tag::SUBADDRESS_DELIMITERS`).
    #[serde(default = "default_subaddress_delimiter", deserialize_with = "subaddress_delimiter")]
    pub subaddress_delimiter: char,
    /// Per-domain key stores: the store of an address's domain (exact, then its parent
    /// domains) signs and verifies its tags; `keys_dir` serves the rest.
    #[serde(default, deserialize_with = "domain_keys", skip_serializing_if = "BTreeMap::is_empty")]
    pub domain_keys: BTreeMap<String, PathBuf>,
    #[serde(default)]
    pub sendmail: SendmailConfig,
    #[serde(default)]
    pub proxy: ProxyConfig,
    #[serde(default)]
    pub daemon: DaemonConfig,
    #[serde(default)]
    pub milter: MilterConfig,
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
            tag_syntax: TagSyntax::Prefix,
            subaddress_delimiter: default_subaddress_delimiter(),
            domain_keys: BTreeMap::new(),
            sendmail: SendmailConfig::default(),
            proxy: ProxyConfig::default(),
            daemon: DaemonConfig::default(),
            milter: MilterConfig::default(),
        }
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
        .chain(c.domain_keys.values_mut())
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

    /// Where the signer puts the tag.
    pub fn syntax(&self) -> Syntax {
        self.syntax_of(self.tag_syntax)
    }

    /// `syntax` written with this configuration's delimiter (`batv sign --syntax`).
    pub fn syntax_of(&self, syntax: TagSyntax) -> Syntax {
        match syntax {
            TagSyntax::Prefix => Syntax::Prefix,
            TagSyntax::Subaddress => Syntax::Subaddress(self.subaddress_delimiter),
        }
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
    fn tag_syntax_and_domain_keys() {
        let c = parse("tag_syntax = \"subaddress\"\nsubaddress_delimiter = \"-\"\n").unwrap();
        assert_eq!(c.syntax(), Syntax::Subaddress('-'));
        assert_eq!(parse("").unwrap().syntax(), Syntax::Prefix);
        assert_eq!(parse("tag_syntax = \"subaddress\"").unwrap().syntax(), Syntax::Subaddress('+'));
        for (text, needle) in [
            ("tag_syntax = \"suffix\"\n", ":1: tag_syntax"),
            ("subaddress_delimiter = \"%\"\n", ":1: subaddress_delimiter"),
            ("subaddress_delimiter = \"+-\"\n", "one character"),
            ("[domain_keys]\n\".example.com\" = \"k\"\n", "name the domain itself"),
            ("[domain_keys]\n\"a b\" = \"k\"\n", "domain_keys"),
            ("[domain_keys]\n\"Example.com\" = \"k1\"\n\"example.COM\" = \"k2\"\n", "same domain"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
        }
        let c = parse("[domain_keys]\n\"customer.example\" = \"keys-customer\"\n\"other.example\" = \"/srv/k\"\n").unwrap();
        assert_eq!(c.domain_keys["customer.example"], Path::new("/etc/batv/keys-customer"));
        assert_eq!(c.domain_keys["other.example"], Path::new("/srv/k"));
        // config show writes what config check reads back.
        let again = parse(&c.to_toml()).unwrap();
        assert_eq!(again.domain_keys, c.domain_keys);
        let c = parse("tag_syntax = \"subaddress\"\nsubaddress_delimiter = \"_\"\n").unwrap();
        assert_eq!(parse(&c.to_toml()).unwrap().syntax(), Syntax::Subaddress('_'));
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
