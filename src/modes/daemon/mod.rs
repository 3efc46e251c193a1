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

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, Semaphore};

use crate::core::config::{Config, IpNet, Listen, RejectAt};
use crate::core::failed_tags::FailedTags;
use crate::core::keys::{KeySet, KeyStore};
use crate::core::log::q;
use crate::core::signer::{Outcome, Signer};
use crate::core::tag::{self, Verdict};
use crate::core::verdict::{judge, Rules, TxVerdict};
use crate::logln;

/// Longest a request may take to arrive once it has begun (Postfix's own socketmap and
/// policy timeouts are 100 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(100);
/// Transactions remembered for `reject_at = "data"` and monitor marks (about 100 octets
/// each), and for how long.
const MAX_INSTANCES: usize = 50_000;
const INSTANCE_TTL: i64 = 3600;

const REFUSE_RCPT: &str = "550 5.7.1 Backscatter refused: this address never sent the message you are bouncing (BATV)";
const REFUSE_DATA: &str = "550 5.7.1 Backscatter refused: no recipient of this bounce sent the original message (BATV)";
const DEFER_MIXED: &str = "452 4.5.3 Too many recipients for this transaction, send the rest separately";
const REFUSE_UNREADABLE: &str = "501 5.1.3 Bad recipient address syntax (BATV)";
/// Postfix disconnects after a 421 from a policy service (access(5)).
const CLOSE_GUESSING: &str = "421 4.7.0 Too many invalid BATV tags, closing";

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
    config: Arc<Config>,
    keys: KeySet,
    /// None without an active key: `sign` then answers NOTFOUND (mail leaves unsigned,
    /// as the sendmail wrapper's default `on_error = "pass"` does).
    signer: Option<Signer>,
    settings: Settings,
}

impl State {
    pub fn new(config: Arc<Config>, keys: KeySet) -> Result<State, String> {
        let settings = Settings::from_config(&config)?;
        let signer = Signer::new(keys.clone(), &config).ok();
        Ok(State {
            config,
            keys,
            signer,
            settings,
        })
    }
}

/// Lookups and decisions, by outcome (SIGUSR1 prints them).
#[derive(Debug, Default)]
pub struct Counters {
    pub connections: AtomicU64,
    pub sign_ok: AtomicU64,
    pub sign_notfound: AtomicU64,
    pub strip_ok: AtomicU64,
    pub strip_notfound: AtomicU64,
    pub bounce_ok: AtomicU64,
    pub backscatter: AtomicU64,
    pub refused: AtomicU64,
    pub deferred: AtomicU64,
    pub malformed: AtomicU64,
    /// Requests answered 421 for too many invalid tags from one client.
    pub failed_tag_closes: AtomicU64,
}

impl Counters {
    pub fn render(&self) -> String {
        let mut s = String::new();
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(s, "batv_daemon_connections_total {}", g(&self.connections));
        for (map, result, c) in [
            ("sign", "ok", &self.sign_ok),
            ("sign", "notfound", &self.sign_notfound),
            ("strip", "ok", &self.strip_ok),
            ("strip", "notfound", &self.strip_notfound),
        ] {
            let _ = writeln!(s, "batv_daemon_lookups_total{{map=\"{map}\",result=\"{result}\"}} {}", g(c));
        }
        for (verdict, c) in [("bounce-ok", &self.bounce_ok), ("backscatter", &self.backscatter)] {
            let _ = writeln!(s, "batv_daemon_recipients_total{{verdict=\"{verdict}\"}} {}", g(c));
        }
        let _ = writeln!(s, "batv_daemon_refused_total {}", g(&self.refused));
        let _ = writeln!(s, "batv_daemon_deferred_total {}", g(&self.deferred));
        let _ = writeln!(s, "batv_daemon_malformed_requests_total {}", g(&self.malformed));
        let _ = writeln!(s, "batv_daemon_failed_tag_closes_total {}", g(&self.failed_tag_closes));
        s
    }
}

/// A transaction seen by the policy service (Postfix's `instance` attribute).
struct Instance {
    /// The verdict of its first bounce recipient (`reject_at = "data"`).
    verdict: Option<TxVerdict>,
    reason: &'static str,
    /// Monitor mode has added its header.
    marked: bool,
    seen: i64,
}

/// What every connection shares.
pub struct Shared {
    state: RwLock<Arc<State>>,
    instances: Mutex<HashMap<String, Instance>>,
    failed_tags: FailedTags,
    pub counters: Counters,
    /// Fixed clock (`--now`), for tests.
    now: Option<i64>,
}

impl Shared {
    pub fn new(config: Config, keys: KeySet, now: Option<i64>) -> Result<Shared, String> {
        let state = State::new(Arc::new(config), keys)?;
        Ok(Shared {
            state: RwLock::new(Arc::new(state)),
            instances: Mutex::new(HashMap::new()),
            failed_tags: FailedTags::default(),
            counters: Counters::default(),
            now,
        })
    }

    fn state(&self) -> Arc<State> {
        // A poisoned lock still holds a whole snapshot (replaced in one assignment).
        match self.state.read() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn now(&self) -> i64 {
        self.now.unwrap_or_else(crate::core::time::system_now)
    }

    fn replace(&self, state: State) {
        if let Ok(mut w) = self.state.write() {
            *w = Arc::new(state);
        }
    }

    fn instances(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instance>> {
        // A poisoned table is still a table of whole entries.
        self.instances.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A socketmap lookup: the reply, without its netstring framing.
    pub fn lookup(&self, request: &[u8]) -> String {
        let Ok(text) = std::str::from_utf8(request) else {
            return "NOTFOUND ".into();
        };
        let (map, key) = text.split_once(' ').unwrap_or((text, ""));
        match self.map(map, key) {
            Some(Some(value)) => format!("OK {value}"),
            Some(None) => "NOTFOUND ".into(),
            // A map name Postfix should never ask for is a configuration mistake.
            None => format!(
                "PERM unknown map {:?}: batv serves sign and strip",
                &map[..crate::bounce::floor(map, 64)]
            ),
        }
    }

    /// `sign` and `strip`: Some(value) to rewrite, None to leave alone; the outer None for
    /// a map we do not serve.
    fn map(&self, map: &str, key: &str) -> Option<Option<String>> {
        let state = self.state();
        let c = &self.counters;
        let today = tag::unix_day(self.now());
        match map {
            "sign" => {
                // The null sender, partial keys (`user`, `@domain`), foreign domains,
                // tagged addresses (cleanup asks again with our answer) are left alone.
                let signed = match state.signer.as_ref().map(|s| s.sign(key, today)) {
                    Some(Outcome::Signed(s)) => Some(s),
                    _ => None,
                };
                let counter = if signed.is_some() { &c.sign_ok } else { &c.sign_notfound };
                counter.fetch_add(1, Ordering::Relaxed);
                Some(signed)
            }
            "strip" => {
                // Only an authentic tag (valid or expired) comes off: a map answer makes
                // smtpd count the address as known, so a made-up tag must not get one.
                let stripped = match tag::verify(key, today, state.settings.rules.schemes, |k| state.keys.get(k)) {
                    Ok(Verdict::Valid(c) | Verdict::Expired(c)) => Some(c.original.into_owned()),
                    _ => None,
                };
                let counter = if stripped.is_some() { &c.strip_ok } else { &c.strip_notfound };
                counter.fetch_add(1, Ordering::Relaxed);
                Some(stripped)
            }
            _ => None,
        }
    }

    /// Answer one policy request (its attributes): the `action=` value.
    pub fn policy(&self, attrs: &PolicyRequest) -> String {
        if attrs.get("request") != Some("smtpd_access_policy") {
            return "DUNNO".into();
        }
        // Postfix sends the sender in its internal form, as it parsed it: every spelling
        // of the null path is empty there, and anything else is a sender (a quoted local
        // part arrives unquoted: `john doe@example.org`).
        let bounce = attrs.get("sender") == Some("");
        let instance = attrs.get("instance").unwrap_or("");
        match attrs.get("protocol_state").map(|s| s.to_ascii_uppercase()).as_deref() {
            Some("RCPT") => self.policy_rcpt(attrs, instance, bounce),
            Some("DATA" | "END-OF-MESSAGE") if bounce => self.policy_data(attrs, instance),
            _ => "DUNNO".into(),
        }
    }

    fn policy_rcpt(&self, attrs: &PolicyRequest, instance: &str, bounce: bool) -> String {
        let state = self.state();
        let s = &state.settings;
        let now = self.now();
        let enforce = s.enforcing(now);
        let rcpt = attrs.get("recipient").unwrap_or("");
        let client = attrs.get("client_address").unwrap_or("");
        // The recipient in Postfix's internal form too: quoted back before it is judged.
        let mut j = judge(
            &crate::core::address::from_internal(rcpt),
            &s.rules,
            &state.keys,
            tag::unix_day(now),
        );
        let ip: Option<std::net::IpAddr> = client.parse().ok();
        let trusted = ip.is_some_and(|ip| s.trusted.iter().any(|n| n.contains(ip)));
        if trusted && j.verdict == TxVerdict::Backscatter {
            j.verdict = TxVerdict::BounceOk;
            j.reason = "trusted-relay";
        }
        let c = &self.counters;
        let log = |name: &str, j: &crate::core::verdict::Judgement| {
            let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
            logln!(
                "batv-daemon: policy client={} instance={} sender={} rcpt={} verdict={} reason={} action={} key={} tag_days_left={}",
                q(client),
                q(instance),
                q(&format!("<{}>", attrs.get("sender").unwrap_or(""))),
                q(&format!("<{rcpt}>")),
                j.verdict.name(),
                j.reason,
                name,
                opt(j.key.map(|k| k.to_string())),
                opt(j.days_left.map(|d| d.to_string())),
            );
        };
        // Guessing at tags, in any transaction (a non-bounce to a guessed tag tells by its
        // reply whether the strip map knew it). Without a client address (a local
        // submission) there is no one to count.
        if let Some(ip) = ip.filter(|_| !trusted && (j.stripped.is_some() || j.failed_tag())) {
            let max = s.max_failed_tags;
            if self.failed_tags.over_limit(ip, j.failed_tag(), max, now) {
                if enforce {
                    c.failed_tag_closes.fetch_add(1, Ordering::Relaxed);
                    log("closed-too-many-invalid-tags", &j);
                    return CLOSE_GUESSING.into();
                }
                log("would-close-too-many-invalid-tags", &j);
            }
        }
        if !bounce {
            return "DUNNO".into();
        }
        match j.verdict {
            TxVerdict::BounceOk => c.bounce_ok.fetch_add(1, Ordering::Relaxed),
            TxVerdict::Backscatter | TxVerdict::Unreadable => c.backscatter.fetch_add(1, Ordering::Relaxed),
        };
        if j.verdict == TxVerdict::Unreadable {
            if trusted {
                log("dunno-trusted", &j);
                return "DUNNO".into();
            }
            if enforce {
                c.refused.fetch_add(1, Ordering::Relaxed);
                log("refused", &j);
                return REFUSE_UNREADABLE.into();
            }
            // Monitor mode counts it with the backscatter it would refuse.
            j.verdict = TxVerdict::Backscatter;
        }
        let (action, name): (String, &str) = {
            let mut instances = self.instances();
            // Without an instance attribute, or with the table full, a request stands
            // alone and its verdict is given at once (as reject_at = "rcpt" does): a
            // transaction without state must not reach DATA unjudged.
            let mut alone = Instance {
                verdict: None,
                reason: "",
                marked: false,
                seen: now,
            };
            let remembered = if instance.is_empty() {
                None
            } else {
                remember(&mut instances, instance, now, MAX_INSTANCES)
            };
            let reject_at = if remembered.is_some() { s.reject_at } else { RejectAt::Rcpt };
            let inst = remembered.unwrap_or(&mut alone);
            let first = inst.verdict;
            if first.is_none() {
                inst.verdict = Some(j.verdict);
                inst.reason = j.reason;
            }
            match (j.verdict, reject_at) {
                // Monitor mode changes nothing in the dialogue: no 452 either.
                (_, RejectAt::Data) if enforce && first.is_some_and(|v| v != j.verdict) => {
                    c.deferred.fetch_add(1, Ordering::Relaxed);
                    (DEFER_MIXED.into(), "deferred-452")
                }
                (TxVerdict::Backscatter, RejectAt::Rcpt) if enforce => {
                    c.refused.fetch_add(1, Ordering::Relaxed);
                    (REFUSE_RCPT.into(), "refused")
                }
                // Monitor mode marks the message once, as the proxy does.
                (TxVerdict::Backscatter, _) if !enforce && !inst.marked => {
                    inst.marked = true;
                    (
                        format!("PREPEND X-BATV: backscatter; reason={}; mode=monitor", j.reason),
                        "marked-monitor",
                    )
                }
                (TxVerdict::Backscatter, RejectAt::Data) if enforce => ("DUNNO".into(), "refuse-at-data"),
                (TxVerdict::Backscatter, _) => ("DUNNO".into(), "dunno-monitor"),
                _ => ("DUNNO".into(), "dunno"),
            }
        };
        log(name, &j);
        action
    }

    fn policy_data(&self, attrs: &PolicyRequest, instance: &str) -> String {
        let state = self.state();
        let now = self.now();
        if state.settings.reject_at != RejectAt::Data || !state.settings.enforcing(now) {
            return "DUNNO".into();
        }
        if instance.is_empty() {
            return "DUNNO".into();
        }
        let verdict = self.instances().get(instance).and_then(|i| i.verdict.map(|v| (v, i.reason)));
        let Some((TxVerdict::Backscatter, reason)) = verdict else {
            return "DUNNO".into();
        };
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
        logln!(
            "batv-daemon: policy client={} instance={} sender=<> verdict=backscatter reason={reason} action=refused-at-data",
            q(attrs.get("client_address").unwrap_or("")),
            q(instance),
        );
        REFUSE_DATA.into()
    }

    /// One line from Exim's `${readsocket}`: the answer line, without its newline.
    pub fn one_line(&self, line: &str) -> String {
        let (op, arg) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
        let arg = arg.trim();
        match op {
            // Exim's addresses are unquoted ($local_part): quoted back for the maps.
            "sign" | "strip" => match self.map(op, &crate::core::address::from_internal(arg)).flatten() {
                Some(v) => format!("OK {v}"),
                None => "NOTFOUND".into(),
            },
            "verify" => {
                let state = self.state();
                let now = self.now();
                // `verify ADDRESS [CLIENT]`: with the client's address (Exim's
                // $sender_host_address), invalid tags count against it, as in the policy.
                let (arg, client) = match arg.rsplit_once(' ') {
                    Some((a, c)) => match c.parse::<std::net::IpAddr>() {
                        Ok(ip) => (a.trim_end(), Some(ip)),
                        Err(_) => (arg, None),
                    },
                    None => (arg, None),
                };
                let s = &state.settings;
                // Exim's $local_part is unquoted: quoted back before it is judged.
                let j = judge(&crate::core::address::from_internal(arg), &s.rules, &state.keys, tag::unix_day(now));
                let trusted = client.is_some_and(|ip| s.trusted.iter().any(|n| n.contains(ip)));
                if let Some(ip) = client.filter(|_| !trusted && (j.stripped.is_some() || j.failed_tag())) {
                    let max = s.max_failed_tags;
                    if self.failed_tags.over_limit(ip, j.failed_tag(), max, now) {
                        let action = if s.enforcing(now) { "deferred" } else { "would-defer" };
                        logln!(
                            "batv-daemon: exim client={ip} rcpt={} verdict={} reason={} action={action}-too-many-invalid-tags",
                            q(&format!("<{arg}>")),
                            j.verdict.name(),
                            j.reason
                        );
                        if s.enforcing(now) {
                            self.counters.failed_tag_closes.fetch_add(1, Ordering::Relaxed);
                            return "DEFER too-many-invalid-tags".into();
                        }
                    }
                }
                match (j.verdict, j.stripped) {
                    (TxVerdict::BounceOk, Some(original)) => format!("OK {original}"),
                    (TxVerdict::BounceOk, None) => format!("DUNNO {}", j.reason),
                    (_, _) if !state.settings.enforcing(now) => format!("DUNNO monitor {}", j.reason),
                    (_, _) => {
                        self.counters.refused.fetch_add(1, Ordering::Relaxed);
                        logln!(
                            "batv-daemon: exim rcpt={} verdict={} reason={} action=refused",
                            q(&format!("<{arg}>")),
                            j.verdict.name(),
                            j.reason
                        );
                        format!("REJECT {}", j.reason)
                    }
                }
            }
            _ => {
                self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                "ERROR expected: sign|strip|verify ADDRESS".into()
            }
        }
    }
}

/// The instance's entry, created if new. Entries older than an hour go when the table is
/// full; if it is still full (a flood of bounces), a new transaction gets no entry, and
/// never at the cost of one in progress: None.
fn remember<'m>(map: &'m mut HashMap<String, Instance>, instance: &str, now: i64, capacity: usize) -> Option<&'m mut Instance> {
    if map.len() >= capacity && !map.contains_key(instance) {
        map.retain(|_, i| now - i.seen < INSTANCE_TTL);
        if map.len() >= capacity {
            return None;
        }
    }
    let e = map.entry(instance.to_string()).or_insert(Instance {
        verdict: None,
        reason: "",
        marked: false,
        seen: now,
    });
    e.seen = now;
    Some(e)
}

/// A policy request's attributes (Postfix sends about 30; later ones win).
#[derive(Debug, Default)]
pub struct PolicyRequest {
    attrs: Vec<(String, String)>,
}

impl PolicyRequest {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.attrs.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Add one `name=value` line (without its newline); false if it is not one.
    pub fn push_line(&mut self, line: &str) -> bool {
        match line.split_once('=') {
            Some((name, value)) if is_attr_name(name) => {
                self.attrs.push((name.to_string(), value.to_string()));
                true
            }
            _ => false,
        }
    }
}

fn is_attr_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
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

/// Read one netstring's payload; None at a clean end of the connection.
async fn read_netstring<R: AsyncBufReadExt + Unpin>(r: &mut R, limit: usize) -> Result<Option<Vec<u8>>, ProtoError> {
    let mut len: usize = 0;
    let mut digits = 0;
    loop {
        let mut b = [0u8; 1];
        if r.read(&mut b).await? == 0 {
            return if digits == 0 { Ok(None) } else { Err(ProtoError::Truncated) };
        }
        match b[0] {
            d @ b'0'..=b'9' => {
                digits += 1;
                len = len * 10 + (d - b'0') as usize;
                if len > limit {
                    return Err(ProtoError::TooLong(limit));
                }
            }
            b':' if digits > 0 => break,
            _ => return Err(ProtoError::Netstring("expected digits, then ':'")),
        }
    }
    let mut payload = vec![0u8; len + 1];
    r.read_exact(&mut payload).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => ProtoError::Truncated,
        _ => ProtoError::Io(e),
    })?;
    if payload.pop() != Some(b',') {
        return Err(ProtoError::Netstring("no ',' after the payload"));
    }
    Ok(Some(payload))
}

fn netstring(payload: &str) -> Vec<u8> {
    format!("{}:{payload},", payload.len()).into_bytes()
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
pub async fn handle<S: AsyncRead + AsyncWrite + Unpin>(shared: Arc<Shared>, stream: S, peer: String, mut stop: watch::Receiver<bool>) {
    shared.counters.connections.fetch_add(1, Ordering::Relaxed);
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
            shared.counters.malformed.fetch_add(1, Ordering::Relaxed);
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

/// A bound listener.
pub enum Listener {
    Unix(UnixListener, PathBuf),
    Inet(TcpListener),
}

/// Bind every listener. A leftover unix socket is replaced, unless something still
/// answers on it (another daemon) or the path is not a socket.
pub fn bind(specs: &[Listen], mode: u32) -> std::io::Result<Vec<Listener>> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let mut out = Vec::new();
    for spec in specs {
        let err = |e: std::io::Error| std::io::Error::new(e.kind(), format!("listen on {spec}: {e}"));
        match spec {
            Listen::Unix(path) => {
                if let Ok(m) = std::fs::symlink_metadata(path) {
                    if !m.file_type().is_socket() {
                        return Err(err(std::io::Error::new(
                            std::io::ErrorKind::AlreadyExists,
                            "exists and is not a socket",
                        )));
                    }
                    if std::os::unix::net::UnixStream::connect(path).is_ok() {
                        return Err(err(std::io::Error::new(
                            std::io::ErrorKind::AddrInUse,
                            "another server answers there",
                        )));
                    }
                    std::fs::remove_file(path).map_err(err)?;
                }
                let l = UnixListener::bind(path).map_err(err)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
                out.push(Listener::Unix(l, path.clone()));
            }
            Listen::Inet(addr) => {
                let l = std::net::TcpListener::bind(addr).map_err(err)?;
                l.set_nonblocking(true).map_err(err)?;
                out.push(Listener::Inet(TcpListener::from_std(l).map_err(err)?));
            }
        }
    }
    Ok(out)
}

impl Listener {
    fn name(&self) -> String {
        match self {
            Listener::Unix(_, p) => format!("unix:{}", p.display()),
            Listener::Inet(l) => l.local_addr().map(|a| format!("inet:{a}")).unwrap_or_else(|_| "inet:?".into()),
        }
    }
}

/// Where configuration and keys come from, for reloads.
pub struct Source {
    pub config: PathBuf,
    pub store: KeyStore,
}

impl Source {
    /// Every reload logs one closing line: `reloaded (...)`, or `not reloaded: ...`.
    fn reload(&self, shared: &Shared, config_too: bool) {
        let running = shared.state().config.clone();
        let mut config = None;
        if config_too {
            match Config::load(Some(&self.config)) {
                Ok(c) => {
                    if c.daemon.listen != running.daemon.listen || c.daemon.max_connections != running.daemon.max_connections {
                        logln!("batv-daemon: daemon.listen or daemon.max_connections changed: takes effect at the next restart");
                    }
                    config = Some(Arc::new(c));
                }
                Err(e) => logln!("batv-daemon: configuration not reloaded: {e}; keeping the old one"),
            }
        }
        let keys = match self.store.load() {
            Ok(k) if !k.is_empty() => k,
            Ok(_) => {
                logln!(
                    "batv-daemon: keys not reloaded: {} holds no key; keeping the old set",
                    self.store.dir().display()
                );
                shared.state().keys.clone()
            }
            Err(e) => {
                logln!("batv-daemon: keys not reloaded: {e}; keeping the old set");
                shared.state().keys.clone()
            }
        };
        let warn = |state: &State| {
            if state.signer.is_none() {
                logln!("batv-daemon: warning: no active key: the sign map answers NOTFOUND (mail leaves unsigned)");
            }
        };
        if let Some(config) = config {
            match State::new(config, keys.clone()) {
                Ok(state) => {
                    warn(&state);
                    shared.replace(state);
                    logln!("batv-daemon: reloaded (configuration and keys)");
                    return;
                }
                Err(e) => logln!("batv-daemon: configuration not reloaded: {e}; keeping the old one"),
            }
        }
        match State::new(running, keys) {
            Ok(state) => {
                warn(&state);
                shared.replace(state);
                logln!("batv-daemon: reloaded (keys)");
            }
            Err(e) => logln!("batv-daemon: not reloaded: {e}"),
        }
    }
}

/// Serve until SIGTERM/SIGINT; SIGHUP reloads configuration and keys, the keys directory
/// is watched, SIGUSR1 prints the counters.
pub async fn serve(listeners: Vec<Listener>, shared: Arc<Shared>, source: Source, max_connections: usize) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let limit = Arc::new(Semaphore::new(max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut sockets = Vec::new();
    for l in listeners {
        logln!("batv-daemon: listening on {}", l.name());
        if let Listener::Unix(_, p) = &l {
            sockets.push(p.clone());
        }
        tokio::spawn(accept_loop(l, shared.clone(), limit.clone(), stop_rx.clone()));
    }
    if shared.state().signer.is_none() {
        logln!("batv-daemon: warning: no active key: the sign map answers NOTFOUND (mail leaves unsigned)");
    }
    let mut poll = tokio::time::interval(Duration::from_secs(2));
    let mut last = source.store.stamp();
    loop {
        tokio::select! {
            _ = hup.recv() => {
                source.reload(&shared, true);
                last = source.store.stamp();
            }
            _ = poll.tick() => {
                let now = source.store.stamp();
                if now != last {
                    last = now;
                    source.reload(&shared, false);
                }
            }
            _ = usr1.recv() => crate::core::log::line(format_args!("{}", shared.counters.render().trim_end())),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    let _ = stop_tx.send(true);
    for p in sockets {
        let _ = std::fs::remove_file(p);
    }
    // Requests in progress finish; idle connections have already been told to close.
    let _ = tokio::time::timeout(Duration::from_secs(5), limit.acquire_many(max_connections as u32)).await;
    logln!("batv-daemon: stopped");
    Ok(())
}

async fn accept_loop(listener: Listener, shared: Arc<Shared>, limit: Arc<Semaphore>, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            a = accept(&listener) => a,
            _ = stop.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                logln!("batv-daemon: accept on {}: {e}", listener.name());
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            // Postfix retries on a new connection or defers; nothing is answered wrongly.
            logln!("batv-daemon: client={peer} error=\"too many connections\" action=closed");
            continue;
        };
        let (shared, stop) = (shared.clone(), stop.clone());
        tokio::spawn(async move {
            match stream {
                Stream::Unix(s) => handle(shared, s, peer, stop).await,
                Stream::Tcp(s) => handle(shared, s, peer, stop).await,
            }
            drop(permit);
        });
    }
}

enum Stream {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

async fn accept(l: &Listener) -> std::io::Result<(Stream, String)> {
    match l {
        Listener::Unix(l, p) => {
            let (s, _) = l.accept().await?;
            Ok((Stream::Unix(s), format!("unix:{}", p.display())))
        }
        Listener::Inet(l) => {
            let (s, a) = l.accept().await?;
            let _ = s.set_nodelay(true);
            Ok((Stream::Tcp(s), a.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn netstrings() {
        let mut ok: &[u8] = b"5:hello,0:,";
        assert_eq!(read_netstring(&mut ok, 100).await.unwrap().as_deref(), Some(&b"hello"[..]));
        assert_eq!(read_netstring(&mut ok, 100).await.unwrap().as_deref(), Some(&b""[..]));
        assert!(read_netstring(&mut ok, 100).await.unwrap().is_none());
        for (bad, why) in [
            (&b"5:hello;"[..], "no ','"),
            (b"x:", "digits"),
            (b":hello,", "digits"),
            (b"5hello,", "digits"),
            (b"5:hel", "closed"),
            (b"12", "closed"),
            (b"999999999999:", "longer"),
        ] {
            let mut r = bad;
            let e = read_netstring(&mut r, 100).await.unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert_eq!(netstring("OK a@b"), b"6:OK a@b,");
    }

    fn shared(extra: impl FnOnce(&mut Config)) -> Shared {
        let key = crate::core::keys::test_key();
        let mut config = Config {
            sign_domains: vec!["example.org".into()],
            ..Config::default()
        };
        extra(&mut config);
        Shared::new(config, KeySet::from_keys(vec![key]).unwrap(), Some(20_780 * 86_400)).unwrap()
    }

    fn request(lines: &[&str]) -> PolicyRequest {
        let mut r = PolicyRequest::default();
        for l in ["request=smtpd_access_policy", "protocol_state=RCPT", "sender="]
            .iter()
            .chain(lines)
        {
            assert!(r.push_line(l));
        }
        r
    }

    #[test]
    fn policy_state_is_per_instance_and_none_without_one() {
        let d = shared(|c| {
            c.daemon.reject_at = RejectAt::Data;
            c.daemon.enforce = false;
        });
        let tagged = match d.lookup(b"sign bob@example.org").strip_prefix("OK ") {
            Some(t) => t.to_string(),
            None => panic!("sign"),
        };
        // Monitor: one mark per transaction; transactions without an instance stand alone.
        for instance in ["instance=a", "instance=b"] {
            assert!(d
                .policy(&request(&["recipient=bob@example.org", instance]))
                .starts_with("PREPEND X-BATV: backscatter"));
            assert_eq!(d.policy(&request(&["recipient=alice@example.org", instance])), "DUNNO");
            // Monitor mode changes nothing in the dialogue: no 452 for a second verdict.
            assert_eq!(d.policy(&request(&[&format!("recipient={tagged}"), instance])), "DUNNO");
        }
        for _ in 0..2 {
            assert!(d.policy(&request(&["recipient=bob@example.org"])).starts_with("PREPEND"));
            assert_eq!(d.policy(&request(&[&format!("recipient={tagged}")])), "DUNNO");
        }
        // Monitor never refuses at DATA.
        assert_eq!(d.policy(&request(&["protocol_state=DATA", "instance=a"])), "DUNNO");
        let d = shared(|c| c.daemon.reject_at = RejectAt::Data);
        assert_eq!(d.policy(&request(&["recipient=bob@example.org", "instance=c"])), "DUNNO");
        assert!(d.policy(&request(&["protocol_state=DATA", "instance=c"])).starts_with("550 5.7.1"));
        assert_eq!(d.policy(&request(&["protocol_state=DATA"])), "DUNNO");
        assert_eq!(d.policy(&request(&["protocol_state=DATA", "instance=unknown"])), "DUNNO");
    }

    #[test]
    fn a_full_instance_table_keeps_the_transactions_in_progress() {
        let mut m = HashMap::new();
        for i in 0..3 {
            assert!(remember(&mut m, &format!("t{i}"), 1000, 3).is_some());
        }
        // Full of fresh entries: a new one gets none, old ones keep theirs.
        assert!(remember(&mut m, "new", 1000, 3).is_none());
        assert!(remember(&mut m, "t0", 1001, 3).is_some());
        // An hour on, stale entries make room.
        assert!(remember(&mut m, "new", 1000 + INSTANCE_TTL, 3).is_some());
        assert!(
            m.contains_key("t0") && m.contains_key("new") && m.len() == 2,
            "{:?}",
            m.keys().collect::<Vec<_>>()
        );
    }

    #[test]
    fn policy_lines() {
        let mut r = PolicyRequest::default();
        assert!(r.push_line("request=smtpd_access_policy"));
        assert!(r.push_line("sender="));
        assert!(r.push_line("ccert_subject=CN=x=y"));
        assert!(!r.push_line("no equals sign"));
        assert!(!r.push_line("Bad Name=x"));
        assert_eq!(r.get("sender"), Some(""));
        assert_eq!(r.get("ccert_subject"), Some("CN=x=y"));
        assert_eq!(r.get("recipient"), None);
    }
}
