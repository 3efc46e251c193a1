//! The SMTP proxy: verifies bounces in the session, strips authentic tags, relays the rest.
//!
//! A listener with a connection limit, one task per connection, each a [`Session`] with the
//! [`Verify`] policy towards the downstream MTA. Keys and settings are shared as `Arc`
//! snapshots taken per transaction, replaced whole on SIGHUP (and the keys also when their
//! directory changes), so a reload never disturbs a session. Front mode adds the client
//! handoff and STARTTLS of [`crate::smtp::front`].

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::bounce::{self, CheckVerdict};
use crate::core::config::{Config, FrontProtocol, IpNet, ProxyMode, RejectAt};
use crate::core::failed_tags::FailedTags;
use crate::core::keys::{KeySet, KeyStore};
use crate::core::log::q;
use crate::core::tag;
use crate::smtp::front::{self, ClientIo};
use crate::smtp::session::{Decision, End, Limits, Policy, Session};
use crate::smtp::{self, Reply, SmtpError};

use crate::core::verdict::{self, judge, Judgement, Rules, TxVerdict};

/// Counters per verdict and per key id (how often each key still validates tags).
#[derive(Debug, Default)]
pub struct Counters {
    pub bounce_ok: AtomicU64,
    pub backscatter: AtomicU64,
    pub refused_transactions: AtomicU64,
    /// Backscatter transactions let through because the proxy only monitors.
    pub monitored_transactions: AtomicU64,
    pub stripped: AtomicU64,
    pub per_key: [AtomicU64; 10],
    pub connections: AtomicU64,
    /// Front mode: the MTA did not take XCLIENT / PROXY v2 (client got 421 4.3.0).
    pub handoff_failures: AtomicU64,
    /// Sessions closed for too many invalid tags.
    pub failed_tag_closes: AtomicU64,
    /// DATA checks, by verdict (see [`DATA_CHECK_VERDICTS`]).
    pub data_checks: [AtomicU64; 4],
}

/// The verdicts of the DATA check, in the order of [`Counters::data_checks`].
pub const DATA_CHECK_VERDICTS: [&str; 4] = ["not-a-bounce", "bounce-with-valid-tag", "backscatter", "unknown"];

impl Counters {
    /// Prometheus text exposition format (also what SIGUSR1 prints).
    pub fn render(&self) -> String {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut s = String::new();
        let mut metric = |name: &str, help: &str, rows: &[(&str, u64)]| {
            s.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
            for (labels, v) in rows {
                s.push_str(&format!("{name}{labels} {v}\n"));
            }
        };
        metric(
            "batv_rcpt_total",
            "Recipients of bounces judged, by verdict.",
            &[
                ("{verdict=\"bounce-ok\"}", n(&self.bounce_ok)),
                ("{verdict=\"backscatter\"}", n(&self.backscatter)),
            ],
        );
        metric(
            "batv_transactions_total",
            "Backscatter transactions, by what was done.",
            &[
                ("{action=\"refused\"}", n(&self.refused_transactions)),
                ("{action=\"monitored\"}", n(&self.monitored_transactions)),
            ],
        );
        metric(
            "batv_stripped_total",
            "Recipients judged with an authentic tag (stripped when relayed).",
            &[("", n(&self.stripped))],
        );
        let keys: Vec<(String, u64)> = self
            .per_key
            .iter()
            .enumerate()
            .filter(|(_, c)| n(c) > 0)
            .map(|(k, c)| (format!("{{key=\"{k}\"}}"), n(c)))
            .collect();
        let rows: Vec<(&str, u64)> = keys.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        metric("batv_tags_total", "Authentic tags seen, by key id.", &rows);
        metric(
            "batv_connections_total",
            "Client connections accepted.",
            &[("", n(&self.connections))],
        );
        metric(
            "batv_handoff_failures_total",
            "Front mode: connections refused because the MTA did not take XCLIENT or PROXY v2.",
            &[("", n(&self.handoff_failures))],
        );
        metric(
            "batv_failed_tag_closes_total",
            "Sessions closed for too many invalid tags.",
            &[("", n(&self.failed_tag_closes))],
        );
        let labels: Vec<String> = DATA_CHECK_VERDICTS.iter().map(|v| format!("{{verdict=\"{v}\"}}")).collect();
        let rows: Vec<(&str, u64)> = labels.iter().zip(&self.data_checks).map(|(l, c)| (l.as_str(), n(c))).collect();
        metric(
            "batv_data_checks_total",
            "Messages from non-null senders to protected untagged recipients inspected at DATA, by verdict.",
            &rows,
        );
        s
    }
}

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
}

/// The DATA check's settings.
#[derive(Debug, Clone, Copy)]
pub struct DataCheck {
    /// Octets of a message inspected.
    pub limit: usize,
    /// Refuse backscatter (else only mark it).
    pub refuse: bool,
}

impl Settings {
    pub fn from_config(config: &Config) -> Result<Settings, String> {
        if config.protected().is_empty() {
            return Err("the proxy needs protected_domains (or sign_domains)".into());
        }
        let p = &config.proxy;
        let tls = match (&p.tls_cert, &p.tls_key, p.mode) {
            (Some(c), Some(k), ProxyMode::Front) => Some(front::acceptor(c, k).map_err(|e| format!("proxy.tls_cert: {e}"))?),
            _ => None,
        };
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
        })
    }

    fn enforcing(&self, now: i64) -> bool {
        self.enforce && self.enforce_after.is_none_or(|t| now >= t)
    }
}

/// What every connection shares.
pub struct Shared {
    keys: RwLock<Arc<KeySet>>,
    settings: RwLock<Arc<Settings>>,
    pub counters: Counters,
    /// Invalid tags per client.
    failed_tags: FailedTags,
    /// Fixed clock for tests (`--now`); None = the system clock.
    now: Option<i64>,
}

impl Shared {
    pub fn new(settings: Settings, keys: KeySet, now: Option<i64>) -> Self {
        Shared {
            keys: RwLock::new(Arc::new(keys)),
            settings: RwLock::new(Arc::new(settings)),
            counters: Counters::default(),
            failed_tags: FailedTags::default(),
            now,
        }
    }

    fn now(&self) -> i64 {
        self.now.unwrap_or_else(crate::core::time::system_now)
    }

    pub fn keys(&self) -> Arc<KeySet> {
        // A poisoned lock still holds a whole set (it is replaced in one assignment).
        match self.keys.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn settings(&self) -> Arc<Settings> {
        match self.settings.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// The verifying direction of a session.
pub struct Verify<'a> {
    shared: &'a Shared,
    settings: Arc<Settings>,
    session: u64,
    /// The connection's peer, and the client as named by XFORWARD (else the peer).
    peer: IpAddr,
    client: IpAddr,
    trusted_client: bool,
    keys: Arc<KeySet>,
    today: i64,
    enforce: bool,
    sender: Option<String>,
    /// The sender of the MAIL being relayed, as judged (the null path in any spelling is
    /// empty).
    pending_sender: Option<String>,
    /// The transaction's verdict, set by the first recipient the downstream accepted.
    verdict: Option<TxVerdict>,
    pending: Option<TxVerdict>,
    reason: &'static str,
    pending_reason: &'static str,
    /// Recipients the downstream accepted, bounce-ok and backscatter (monitor mode lets
    /// both into one message and says so in its header), and the first backscatter's
    /// reason.
    accepted: [u32; 2],
    backscatter_reason: &'static str,
    /// Monitor mode has logged that it would have closed this session.
    would_close_logged: bool,
    /// For the DATA check (non-null senders): the accepted recipients that are protected
    /// and untagged, each judged on its own (one's tag says nothing about another).
    untagged_rcpts: Vec<String>,
    /// The recipient being relayed, if it is such a one.
    pending_rcpt: Option<String>,
}

impl<'a> Verify<'a> {
    pub fn new(shared: &'a Shared, session: u64, client: IpAddr) -> Self {
        let mut v = Verify {
            shared,
            settings: shared.settings(),
            session,
            peer: client,
            client,
            trusted_client: false,
            keys: shared.keys(),
            today: 0,
            enforce: true,
            sender: None,
            pending_sender: None,
            verdict: None,
            pending: None,
            reason: "",
            pending_reason: "",
            accepted: [0; 2],
            backscatter_reason: "",
            would_close_logged: false,
            untagged_rcpts: Vec::new(),
            pending_rcpt: None,
        };
        v.reset();
        v
    }

    fn log(&self, rcpt: &str, j: &Judgement, action: &str) {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        crate::logln!(
            "batv-proxy: session={:x} client={} sender={} rcpt={} verdict={} reason={} action={} key={} tag_days_left={}",
            self.session,
            self.client,
            q(&format!("<{}>", self.sender.as_deref().unwrap_or(""))),
            q(&format!("<{rcpt}>")),
            j.verdict.name(),
            j.reason,
            action,
            opt(j.key.map(|k| k.to_string())),
            opt(j.days_left.map(|d| d.to_string())),
        );
    }

    fn bounce(&self) -> bool {
        self.sender.as_deref() == Some("")
    }
}

/// The ADDR attribute of an XFORWARD command (Postfix XFORWARD_README), if it is an address.
fn xforward_addr(line: &[u8]) -> Option<IpAddr> {
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_ascii_whitespace();
    if !words.next()?.eq_ignore_ascii_case("XFORWARD") {
        return None;
    }
    let value = words.find_map(|w| w.get(..5).filter(|k| k.eq_ignore_ascii_case("ADDR=")).map(|_| &w[5..]))?;
    let value = match value.get(..5) {
        Some(p) if p.eq_ignore_ascii_case("IPV6:") => &value[5..],
        _ => value,
    };
    value.parse().ok()
}

/// The queue id in a final reply (Postfix: `250 2.0.0 Ok: queued as 4Xy1z2`).
fn queue_id(reply: &Reply) -> Option<String> {
    let text = String::from_utf8_lossy(&reply.raw);
    let after = text.split("queued as ").nth(1)?;
    let id: String = after.chars().take_while(|c| c.is_ascii_alphanumeric()).take(64).collect();
    (!id.is_empty()).then_some(id)
}

impl Policy for Verify<'_> {
    fn mail(&mut self, path: &str) -> Decision {
        // Judged as the MTA reads it: every spelling of the null path it takes as null
        // (`< >`, `<()>`, `<"">`) is a bounce, and goes on as `<>` so both agree.
        match verdict::null_sender(path) {
            Some(true) => {
                self.pending_sender = Some(String::new());
                Decision::Relay((!path.is_empty()).then(String::new))
            }
            Some(false) => {
                self.pending_sender = Some(path.to_string());
                Decision::Relay(None)
            }
            None if self.enforce => {
                crate::logln!(
                    "batv-proxy: session={:x} client={} sender={} action=refused reason=unreadable-sender",
                    self.session,
                    self.client,
                    q(&format!("<{path}>"))
                );
                Decision::Refuse(Reply::new(501, "5.1.7", "Bad sender address syntax (BATV)"))
            }
            None => {
                // Monitor mode: what cannot be read is judged as a bounce.
                self.pending_sender = Some(String::new());
                Decision::Relay(None)
            }
        }
    }

    fn mail_reply(&mut self, _path: &str, reply: &Reply) {
        if reply.is_positive() {
            // A fresh key and settings snapshot and clock per transaction.
            let sender = self.pending_sender.take();
            self.reset();
            self.sender = sender;
        }
    }

    fn rcpt(&mut self, path: &str) -> Decision {
        let mut j = judge(path, &self.settings.rules, &self.keys, self.today);
        let c = &self.shared.counters;
        let bounce = self.bounce();
        if self.trusted_client && bounce && j.verdict == TxVerdict::Backscatter {
            j.verdict = TxVerdict::BounceOk;
            j.reason = "trusted-relay";
        }
        // Guessing at tags, in any transaction (a non-bounce to a guessed tag tells the
        // guesser by its reply whether the tag was stripped): a client that has used up
        // its failed tags gets no tagged recipient checked, and every invalid tag counts.
        let tagged = j.stripped.is_some() || j.failed_tag();
        if tagged && !self.trusted_client {
            let max = self.settings.max_failed_tags;
            let now = self.shared.now();
            if self.shared.failed_tags.over_limit(self.client, j.failed_tag(), max, now) {
                if self.enforce {
                    c.failed_tag_closes.fetch_add(1, Ordering::Relaxed);
                    self.log(path, &j, "closed-too-many-invalid-tags");
                    return Decision::Close(Reply::new(421, "4.7.0", "Too many invalid BATV tags, closing"));
                }
                if !self.would_close_logged {
                    self.would_close_logged = true;
                    self.log(path, &j, "would-close-too-many-invalid-tags");
                }
            }
        }
        if let Some(k) = j.key.filter(|_| j.stripped.is_some()) {
            c.per_key[k as usize].fetch_add(1, Ordering::Relaxed);
        }
        if j.stripped.is_some() {
            c.stripped.fetch_add(1, Ordering::Relaxed);
        }
        let relay = Decision::Relay(j.relay.clone());
        let unreadable = Decision::Refuse(Reply::new(501, "5.1.3", "Bad recipient address syntax (BATV)"));
        if !bounce {
            // Recipients with a tag, valid or not, are not inspected: a bounce carries
            // the null sender, and what else reaches a tag is not backscatter.
            if self.settings.data_check.is_some() {
                if j.verdict == TxVerdict::Unreadable && self.enforce && !self.trusted_client {
                    // The DATA check judges this message for its recipients: one it
                    // cannot read is one it cannot judge.
                    self.log(path, &j, "refused");
                    return unreadable;
                }
                if matches!(j.reason, "untagged" | "unreadable-address") {
                    self.pending_rcpt = Some(j.relay.clone().unwrap_or_else(|| path.to_string()));
                }
            }
            return relay;
        }
        match j.verdict {
            TxVerdict::BounceOk => c.bounce_ok.fetch_add(1, Ordering::Relaxed),
            TxVerdict::Backscatter | TxVerdict::Unreadable => c.backscatter.fetch_add(1, Ordering::Relaxed),
        };
        if j.verdict == TxVerdict::Unreadable {
            if self.trusted_client {
                self.log(path, &j, "relayed-trusted");
                return relay;
            }
            if self.enforce {
                self.log(path, &j, "refused");
                return unreadable;
            }
            // Monitor mode counts it with the backscatter it would refuse.
            j.verdict = TxVerdict::Backscatter;
        }
        if j.verdict == TxVerdict::Backscatter && self.enforce && self.settings.reject_at == RejectAt::Rcpt {
            self.log(path, &j, "refused");
            return Decision::Refuse(Reply::new(
                550,
                "5.7.1",
                "Backscatter refused: this address never sent the message you are bouncing (BATV)",
            ));
        }
        // One verdict per transaction; monitor mode changes nothing in the dialogue, so
        // it lets every recipient in and marks the message with what each one was.
        let first = self.verdict.or(self.pending);
        if self.enforce && self.settings.reject_at == RejectAt::Data && first.is_some_and(|v| v != j.verdict) {
            self.log(path, &j, "deferred-452");
            return Decision::Refuse(Reply::new(
                452,
                "4.5.3",
                "Too many recipients for this transaction, send the rest separately",
            ));
        }
        self.pending = Some(j.verdict);
        self.pending_reason = j.reason;
        self.log(path, &j, if self.enforce { "relayed" } else { "relayed-monitor" });
        relay
    }

    fn rcpt_reply(&mut self, reply: &Reply) {
        // Only a recipient the downstream accepted sets the transaction's verdict.
        if let Some(v) = self.pending.take().filter(|_| reply.is_positive()) {
            if self.verdict.is_none() {
                self.verdict = Some(v);
                self.reason = self.pending_reason;
            }
            match v {
                TxVerdict::BounceOk => self.accepted[0] += 1,
                _ => {
                    if self.accepted[1] == 0 {
                        self.backscatter_reason = self.pending_reason;
                    }
                    self.accepted[1] += 1;
                }
            }
        }
        if let Some(rcpt) = self.pending_rcpt.take().filter(|_| reply.is_positive()) {
            self.untagged_rcpts.push(rcpt);
        }
    }

    fn data(&mut self) -> Option<Reply> {
        // Enforcing, every accepted recipient has the first one's verdict; monitoring,
        // any backscatter recipient makes the message what would have been refused.
        let backscatter = if self.enforce {
            self.verdict == Some(TxVerdict::Backscatter)
        } else {
            self.accepted[1] > 0
        };
        if !backscatter {
            return None;
        }
        let c = &self.shared.counters;
        let action = if self.enforce { "refused-at-data" } else { "delivered-monitor" };
        crate::logln!(
            "batv-proxy: session={:x} client={} sender=<> verdict=backscatter reason={} action={action}",
            self.session,
            self.client,
            self.backscatter_reason
        );
        if !self.enforce {
            c.monitored_transactions.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        c.refused_transactions.fetch_add(1, Ordering::Relaxed);
        Some(Reply::new(
            550,
            "5.7.1",
            "Backscatter refused: no recipient of this bounce sent the original message (BATV)",
        ))
    }

    fn header(&mut self) -> Option<Vec<u8>> {
        // Monitor mode marks what it would have done, so an admin can sort and check:
        // one header per message, with each verdict's count when they differ.
        if self.enforce || !self.bounce() || self.accepted == [0, 0] {
            return None;
        }
        let [ok, bad] = self.accepted;
        let (v, reason) = if bad > 0 {
            (TxVerdict::Backscatter, self.backscatter_reason)
        } else {
            (TxVerdict::BounceOk, self.reason)
        };
        let mixed = if ok > 0 && bad > 0 {
            format!("; recipients=bounce-ok:{ok},backscatter:{bad}")
        } else {
            String::new()
        };
        Some(format!("X-BATV: {}; reason={reason}; mode=monitor{mixed}\r\n", v.name()).into_bytes())
    }

    fn inspect(&mut self) -> Option<usize> {
        // Only mail to an address that bounces must not reach untagged: a bounce of mail
        // this address never sent, from a sender that did not use the null path.
        let check = self.settings.data_check?;
        (!self.bounce() && !self.untagged_rcpts.is_empty() && !self.trusted_client).then_some(check.limit)
    }

    fn content(&mut self, head: &mut Vec<u8>, complete: bool) -> Result<Option<Vec<u8>>, Reply> {
        let Some(check) = self.settings.data_check else {
            return Ok(None);
        };
        // Only our header may speak for us: forged ones go.
        remove_fields(head, b"X-BATV", complete);
        let report = bounce::inspect(head, head.len(), false);
        let c = &self.shared.counters;
        // The returned sender's tag is checked here, so this is a guesser's oracle too: a
        // client that has used up its failed tags gets no answer, and a failure counts.
        let rules = &self.settings.rules;
        let tag = report.original_sender.as_deref().and_then(|a| {
            let v = tag::verify(a, self.today, rules.schemes, |k| self.keys.get(k)).ok()?;
            let ours = crate::core::address::parse(a).is_ok_and(|x| rules.protected.contains(x.domain));
            (v != tag::Verdict::Untagged && ours).then_some(v)
        });
        if let Some(v) = tag {
            let failed = matches!(
                v,
                tag::Verdict::BadSignature | tag::Verdict::UnknownKey(_) | tag::Verdict::Malformed(_)
            );
            let now = self.shared.now();
            if self
                .shared
                .failed_tags
                .over_limit(self.client, failed, self.settings.max_failed_tags, now)
                && self.enforce
            {
                c.failed_tag_closes.fetch_add(1, Ordering::Relaxed);
                crate::logln!(
                    "batv-proxy: session={:x} client={} sender={} check=data action=deferred-too-many-invalid-tags",
                    self.session,
                    self.client,
                    q(&format!("<{}>", self.sender.as_deref().unwrap_or(""))),
                );
                return Err(Reply::new(451, "4.7.0", "Too many invalid BATV tags, try again later"));
            }
        }
        // Every untagged recipient on its own: the message is backscatter if it is for any
        // of them (a tag vouches only for its own address).
        let verdicts: Vec<(CheckVerdict, &str)> = self
            .untagged_rcpts
            .iter()
            .map(|r| (bounce::judge(&report, Some(r), rules, &self.keys, self.today), r.as_str()))
            .collect();
        let rank = |v: &CheckVerdict| match v {
            CheckVerdict::Backscatter(_) => 0,
            CheckVerdict::Unknown(_) => 1,
            _ => 2,
        };
        let Some((verdict, rcpt)) = verdicts.into_iter().min_by_key(|(v, _)| rank(v)) else {
            return Ok(None);
        };
        if let Some(i) = DATA_CHECK_VERDICTS.iter().position(|v| *v == verdict.name()) {
            c.data_checks[i].fetch_add(1, Ordering::Relaxed);
        }
        let backscatter = matches!(verdict, CheckVerdict::Backscatter(_));
        let action = match (backscatter, check.refuse, self.enforce) {
            (true, true, true) => "refused",
            (true, true, false) => "marked-monitor",
            _ if verdict == CheckVerdict::NotABounce => "relayed",
            _ => "marked",
        };
        crate::logln!(
            "batv-proxy: session={:x} client={} sender={} rcpt={} check=data verdict={} reason={} kind={} original_sender={} inspected={}{} action={action}",
            self.session,
            self.client,
            q(&format!("<{}>", self.sender.as_deref().unwrap_or(""))),
            q(&format!("<{rcpt}>")),
            verdict.name(),
            verdict.reason(),
            report.kind.name(),
            q(&format!(
                "<{}>",
                report.original_sender.as_deref().map_or("", |a| &a[..crate::bounce::floor(a, 256)])
            )),
            head.len(),
            if complete { "" } else { "+" },
        );
        if action == "refused" {
            c.refused_transactions.fetch_add(1, Ordering::Relaxed);
            return Err(Reply::new(
                550,
                "5.7.1",
                "Backscatter refused: this bounces a message this address never sent (BATV)",
            ));
        }
        if verdict == CheckVerdict::NotABounce {
            return Ok(None);
        }
        let monitor = if action == "marked-monitor" { "; mode=monitor" } else { "" };
        Ok(Some(
            format!(
                "X-BATV: {}; reason={}; kind={}{monitor}\r\n",
                verdict.name(),
                verdict.reason(),
                report.kind.name()
            )
            .into_bytes(),
        ))
    }

    fn finished(&mut self, reply: &Reply) {
        if let Some(v) = self.verdict.filter(|_| self.bounce()) {
            crate::logln!(
                "batv-proxy: session={:x} client={} sender=<> verdict={} reason={} result={} queue_id={}",
                self.session,
                self.client,
                v.name(),
                self.reason,
                reply.code,
                queue_id(reply).as_deref().unwrap_or("-")
            );
        }
    }

    fn xforward(&mut self, line: &[u8]) {
        // Before-queue: Postfix names the real client; trusted_relays and the failed-tag
        // count apply to it, not to Postfix's own address.
        // Only Postfix on this host may say who the client is.
        if !self.peer.is_loopback() {
            return;
        }
        if let Some(ip) = xforward_addr(line) {
            self.client = ip;
            self.trusted_client = self.settings.trusted.iter().any(|n| n.contains(ip));
        }
    }

    fn reset(&mut self) {
        self.keys = self.shared.keys();
        self.settings = self.shared.settings();
        self.trusted_client = self.settings.trusted.iter().any(|n| n.contains(self.client));
        let now = self.shared.now();
        self.today = tag::unix_day(now);
        self.enforce = self.settings.enforcing(now);
        self.sender = None;
        self.pending_sender = None;
        self.verdict = None;
        self.pending = None;
        self.reason = "";
        self.pending_reason = "";
        self.accepted = [0; 2];
        self.backscatter_reason = "";
        self.untagged_rcpts.clear();
        self.pending_rcpt = None;
    }
}

/// Remove the header fields called `name` (with their continuation lines) from the
/// header section at the start of `head`. A field is removed only when its end is within
/// `head` (the line after it has begun, or `head` is the `complete` message), so no part
/// of one is ever left behind.
fn remove_fields(head: &mut Vec<u8>, name: &[u8], complete: bool) {
    let mut out = Vec::new();
    let mut kept_to = 0;
    let mut at = 0;
    let mut field: Option<(usize, bool)> = None; // (start, remove)
    while at < head.len() {
        let Some(nl) = head[at..].iter().position(|&b| b == b'\n') else {
            break;
        };
        let line = &head[at..at + nl + 1];
        let continuation = matches!(line[0], b' ' | b'\t');
        if !continuation {
            if let Some((start, true)) = field.take() {
                out.extend_from_slice(&head[kept_to..start]);
                kept_to = at;
            }
            if line == b"\r\n" || line == b"\n" {
                break;
            }
            let colon = line.iter().position(|&b| b == b':');
            let remove = colon.is_some_and(|c| line[..c].trim_ascii_end().eq_ignore_ascii_case(name));
            field = Some((at, remove));
        }
        at += nl + 1;
    }
    if let Some((start, true)) = field.filter(|_| complete && at == head.len()) {
        out.extend_from_slice(&head[kept_to..start]);
        kept_to = head.len();
    }
    if kept_to > 0 {
        out.extend_from_slice(&head[kept_to..]);
        *head = out;
    }
}

/// Handle one client connection.
pub async fn handle(shared: Arc<Shared>, client: TcpStream, peer: SocketAddr, id: u64) {
    shared.counters.connections.fetch_add(1, Ordering::Relaxed);
    let settings = shared.settings();
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
        ProxyMode::Front => front_session(&shared, &settings, client, peer, id, BufReader::new(dr), dw, &mut policy).await,
    };
    if let Err(e) = result {
        crate::logln!("batv-proxy: session={id:x} client={} error={}", peer.ip(), q(&e.to_string()));
    }
}

/// Front mode: hand the client's identity to the MTA (or refuse the client), then relay,
/// ending STARTTLS here when a certificate is configured.
#[allow(clippy::too_many_arguments)]
async fn front_session(
    shared: &Shared,
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
            shared.counters.handoff_failures.fetch_add(1, Ordering::Relaxed);
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
    let mut end = session.greeted(&greeting).await?;
    while end == End::StartTls {
        let (cr, cw, dr, dw) = session.into_parts();
        // into_inner drops whatever the client pipelined after STARTTLS: it was sent in
        // the clear and must not count as sent inside TLS (RFC 3207 §4.2, CVE-2011-0411).
        let ClientIo::Plain(tcp) = cr.into_inner().unsplit(cw) else {
            return Ok(());
        };
        // The current certificate (reloaded on SIGHUP).
        let Some(acceptor) = shared.settings().tls.clone().or_else(|| settings.tls.clone()) else {
            return Ok(());
        };
        let tls = match tokio::time::timeout(limits.command, acceptor.accept(tcp)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => return Err(SmtpError::Io(e)),
            Err(_) => return Err(SmtpError::ClientClosed("(timed out) during the TLS handshake")),
        };
        let (r, w) = tokio::io::split(ClientIo::Tls(Box::new(tls)));
        session = Session::new(BufReader::new(r), w, dr, dw, &mut *policy, limits);
        session.front = true;
        end = session.resume().await?;
    }
    Ok(())
}

/// Reload the keys: all or nothing; a bad new set keeps the old one.
pub fn reload_keys(shared: &Shared, store: &KeyStore) {
    match store.load() {
        Ok(k) if !k.is_empty() => {
            if let Ok(mut w) = shared.keys.write() {
                *w = Arc::new(k);
            }
            crate::logln!("batv-proxy: keys reloaded from {}", store.dir().display());
        }
        Ok(_) => crate::logln!(
            "batv-proxy: keys not reloaded: {} holds no key; keeping the old set",
            store.dir().display()
        ),
        Err(e) => crate::logln!("batv-proxy: keys not reloaded: {e}; keeping the old set"),
    }
}

/// Where the settings come from, for SIGHUP.
pub struct Source {
    pub config: PathBuf,
    /// `--forward`, which outlives reloads.
    pub forward: Option<SocketAddr>,
    pub store: KeyStore,
}

impl Source {
    /// Read the config file and build settings from it.
    pub fn load(&self) -> Result<(Config, Settings), String> {
        let mut config = Config::load(Some(&self.config)).map_err(|e| e.to_string())?;
        if let Some(f) = self.forward {
            config.proxy.forward = f;
        }
        let settings = Settings::from_config(&config).map_err(|e| format!("{}: {e}", self.config.display()))?;
        Ok((config, settings))
    }

    /// SIGHUP: config, certificate and keys; each all or nothing.
    fn reload(&self, shared: &Shared, running: &Config) {
        match self.load() {
            Ok((config, _)) if config.proxy.mode != running.proxy.mode || config.proxy.front_protocol != running.proxy.front_protocol => {
                // Switching front mode off on the fly would drop the client handoff on a
                // public port (an open relay): that takes a restart.
                crate::logln!("batv-proxy: configuration not reloaded: proxy.mode or proxy.front_protocol changed; restart to apply");
            }
            Ok((config, settings)) => {
                for (what, changed) in [
                    ("proxy.listen", config.proxy.listen != running.proxy.listen),
                    (
                        "proxy.max_connections",
                        config.proxy.max_connections != running.proxy.max_connections,
                    ),
                    ("proxy.metrics_listen", config.proxy.metrics_listen != running.proxy.metrics_listen),
                    ("keys_dir", config.keys_dir != running.keys_dir),
                ] {
                    if changed {
                        crate::logln!("batv-proxy: {what} changed: takes effect at the next restart");
                    }
                }
                if let Ok(mut w) = shared.settings.write() {
                    *w = Arc::new(settings);
                }
                crate::logln!("batv-proxy: configuration reloaded from {}", self.config.display());
            }
            Err(e) => crate::logln!("batv-proxy: configuration not reloaded: {e}; keeping the old one"),
        }
        reload_keys(shared, &self.store);
    }
}

/// Answer each connection with the counters as Prometheus text, HTTP/1.0 style.
async fn serve_metrics(listener: TcpListener, shared: Arc<Shared>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            // Read the request head (ignored: every path gets the metrics), bounded.
            let mut buf = [0u8; 4096];
            let mut seen = 0;
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while seen < buf.len() {
                    match sock.read(&mut buf[seen..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen += n,
                    }
                    if buf[..seen].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            })
            .await;
            let body = shared.counters.render();
            let head = format!(
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

/// Serve until SIGTERM/SIGINT, then stop accepting and let sessions finish (bounded by
/// the timeouts). SIGHUP reloads configuration, certificate and keys; the keys directory
/// is also watched.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    source: Source,
    running: Config,
    metrics: Option<TcpListener>,
) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let max_connections = running.proxy.max_connections.get() as usize;
    let limit = Arc::new(Semaphore::new(max_connections));
    let mut poll = tokio::time::interval(Duration::from_secs(2));
    let mut last = source.store.stamp();
    let mut next_id: u64 = (crate::core::time::system_now() as u64) << 16;
    if let Some(m) = metrics {
        crate::logln!("batv-proxy: metrics on http://{}/metrics", m.local_addr()?);
        tokio::spawn(serve_metrics(m, shared.clone()));
    }
    {
        let s = shared.settings();
        crate::logln!(
            "batv-proxy: listening on {} forwarding to {} mode={} enforce={}",
            listener.local_addr()?,
            s.forward,
            match s.mode {
                ProxyMode::BeforeQueue => "before-queue",
                ProxyMode::Front => "front",
            },
            s.enforcing(shared.now()),
        );
        if s.mode == ProxyMode::Front && s.tls.is_none() {
            crate::logln!(
                "batv-proxy: warning: front mode without proxy.tls_cert: no STARTTLS, so MTA-STS and DANE senders will not deliver"
            );
        }
    }
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (sock, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        crate::logln!("batv-proxy: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                next_id += 1;
                let id = next_id;
                let _ = sock.set_nodelay(true);
                match limit.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let shared = shared.clone();
                        tokio::spawn(async move {
                            handle(shared, sock, peer, id).await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        tokio::spawn(async move {
                            let mut sock = sock;
                            let _ = smtp::send(&mut sock, &Reply::new(421, "4.7.0", "Too many connections, try again later").raw).await;
                        });
                    }
                }
            }
            _ = hup.recv() => source.reload(&shared, &running),
            _ = poll.tick() => {
                let now = source.store.stamp();
                if now != last {
                    last = now;
                    reload_keys(&shared, &source.store);
                }
            }
            _ = usr1.recv() => eprint!("{}", shared.counters.render()),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    drop(listener);
    crate::logln!("batv-proxy: draining {} session(s)", max_connections - limit.available_permits());
    let drain = limit.acquire_many(max_connections as u32);
    let l = shared.settings().limits;
    let _ = tokio::time::timeout(l.data + l.command, drain).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_batv_fields_are_removed_from_the_header_only() {
        let strip = |s: &str| {
            let mut v = s.as_bytes().to_vec();
            remove_fields(&mut v, b"X-BATV", false);
            String::from_utf8(v).unwrap()
        };
        assert_eq!(
            strip("X-BATV: bounce-with-valid-tag\r\nFrom: a@b\r\nx-batv : valid;\r\n\tfolded\r\nTo: c@d\r\n\r\nX-BATV: body\r\n"),
            "From: a@b\r\nTo: c@d\r\n\r\nX-BATV: body\r\n"
        );
        assert_eq!(strip("From: a@b\r\nX-BATV: last\r\n\r\nbody"), "From: a@b\r\n\r\nbody");
        // Cut inside the field, or before we know it has no more lines: it stays whole.
        assert_eq!(strip("From: a@b\r\nX-BATV: cut"), "From: a@b\r\nX-BATV: cut");
        assert_eq!(strip("From: a@b\r\nX-BATV: x\r\n"), "From: a@b\r\nX-BATV: x\r\n");
        assert_eq!(
            strip("X-BATVX: no\r\nX-BATV-Other: no\r\n\r\n"),
            "X-BATVX: no\r\nX-BATV-Other: no\r\n\r\n"
        );
        assert_eq!(strip(""), "");
        // A whole message that ends in its header section: the last field ends with it.
        let mut v = b"From: a@b\r\nX-BATV: x\r\n\ty\r\n".to_vec();
        remove_fields(&mut v, b"X-BATV", true);
        assert_eq!(v, b"From: a@b\r\n");
        let mut v = b"X-BATV: cut".to_vec();
        remove_fields(&mut v, b"X-BATV", true);
        assert_eq!(v, b"X-BATV: cut", "no line end: not a field we can cut cleanly");
    }

    #[test]
    fn xforward_addresses() {
        assert_eq!(
            xforward_addr(b"XFORWARD NAME=mx.example ADDR=192.0.2.7\r\n"),
            Some([192, 0, 2, 7].into())
        );
        assert_eq!(
            xforward_addr(b"xforward addr=IPV6:2001:db8::1 PORT=25\r\n"),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(xforward_addr(b"XFORWARD ADDR=[UNAVAILABLE]\r\n"), None);
        assert_eq!(xforward_addr(b"XCLIENT ADDR=192.0.2.7\r\n"), None);
    }
}
