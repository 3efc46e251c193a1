//! The SMTP proxy: verifies bounces in the session, strips authentic tags, relays the rest.
//!
//! A listener with a connection limit, one task per connection, each a [`Session`] with the
//! [`Verify`] policy towards the downstream MTA. Keys are shared as an `Arc<KeySet>` snapshot
//! taken per transaction, replaced whole on SIGHUP or when the keys directory changes.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::address::DomainSet;
use crate::config::{Config, IpNet, RejectAt};
use crate::keys::{KeyError, KeySet, KeyStore};
use crate::session::{Decision, Limits, Policy, Session};
use crate::smtp::{self, Reply};
use crate::tag::{self, Verdict};

/// A recipient's standing in a null-sender transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxVerdict {
    BounceOk,
    Backscatter,
}

/// How one recipient was judged, and the path to relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgement {
    pub verdict: TxVerdict,
    /// Stable name for logs: valid, exempt-postmaster, untagged, expired, ...
    pub reason: &'static str,
    /// The address without its tag, if the tag is authentic (valid or expired).
    pub stripped: Option<String>,
    pub key: Option<u8>,
    pub days_left: Option<i32>,
}

/// Judge one recipient of a bounce (also used for non-bounces, for the stripping).
pub fn judge(path: &str, keys: &KeySet, protected: &DomainSet, today: i64) -> Judgement {
    let ok = |reason| Judgement {
        verdict: TxVerdict::BounceOk,
        reason,
        stripped: None,
        key: None,
        days_left: None,
    };
    // RFC 5321 §4.5.1: <Postmaster> without a domain is always accepted.
    if path.eq_ignore_ascii_case("postmaster") {
        return ok("exempt-postmaster");
    }
    // Parsed once: the tag check and the exemptions below share it.
    let Ok(addr) = crate::address::parse(path) else {
        // Not an address: the downstream will say so.
        return ok("not-an-address");
    };
    let domain = addr.domain;
    let verdict = match tag::classify(path, addr) {
        tag::Parsed::Untagged(a) => {
            if !protected.contains(domain) {
                return ok("not-protected");
            }
            if a.local.eq_ignore_ascii_case("postmaster") || a.local.eq_ignore_ascii_case("abuse") {
                return ok("exempt-role");
            }
            if tag::is_srs(&a.local) {
                return ok("exempt-srs");
            }
            // The signer leaves these untagged (either scheme), so bounces to them are real.
            if tag::too_long_to_sign(&a.local, tag::Scheme::Native) {
                return ok("exempt-too-long");
            }
            Verdict::Untagged
        }
        tag::Parsed::Malformed(why) => Verdict::Malformed(why),
        tag::Parsed::Tagged(t) => tag::check(t, today, |k| keys.get(k)),
    };
    if let Verdict::Valid(c) | Verdict::Expired(c) = &verdict {
        let valid = verdict.is_valid();
        return Judgement {
            verdict: if valid { TxVerdict::BounceOk } else { TxVerdict::Backscatter },
            reason: if valid { "valid" } else { "expired" },
            stripped: Some(c.original.to_string()),
            key: Some(c.key_id),
            days_left: Some(c.days_left),
        };
    }
    if !protected.contains(domain) {
        return ok("not-protected");
    }
    Judgement {
        verdict: TxVerdict::Backscatter,
        reason: verdict.reason(),
        stripped: None,
        key: match verdict {
            Verdict::UnknownKey(k) => Some(k),
            _ => None,
        },
        days_left: None,
    }
}

/// Counters per verdict and per key id (how often each key still validates tags).
#[derive(Debug, Default)]
pub struct Counters {
    pub bounce_ok: AtomicU64,
    pub backscatter: AtomicU64,
    pub refused_transactions: AtomicU64,
    pub stripped: AtomicU64,
    pub per_key: [AtomicU64; 10],
    pub connections: AtomicU64,
}

impl Counters {
    pub fn render(&self) -> String {
        let mut s = format!(
            "batv_rcpt_total{{verdict=\"bounce-ok\"}} {}\nbatv_rcpt_total{{verdict=\"backscatter\"}} {}\nbatv_refused_transactions_total {}\nbatv_stripped_total {}\nbatv_connections_total {}\n",
            self.bounce_ok.load(Ordering::Relaxed),
            self.backscatter.load(Ordering::Relaxed),
            self.refused_transactions.load(Ordering::Relaxed),
            self.stripped.load(Ordering::Relaxed),
            self.connections.load(Ordering::Relaxed),
        );
        for (k, c) in self.per_key.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            if n > 0 {
                s.push_str(&format!("batv_tags_total{{key=\"{k}\"}} {n}\n"));
            }
        }
        s
    }
}

/// What every connection shares.
pub struct Shared {
    pub keys: RwLock<Arc<KeySet>>,
    pub protected: DomainSet,
    pub trusted: Vec<IpNet>,
    pub reject_at: RejectAt,
    pub enforce: bool,
    /// Enforce from this Unix time on (monitor before).
    pub enforce_after: Option<i64>,
    pub forward: SocketAddr,
    pub limits: Limits,
    pub counters: Counters,
    /// Fixed clock for tests (`--now`); None = the system clock.
    pub now: Option<i64>,
}

impl Shared {
    pub fn from_config(config: &Config, keys: KeySet, now: Option<i64>) -> Self {
        Shared {
            keys: RwLock::new(Arc::new(keys)),
            protected: config.protected_domain_set(),
            trusted: config.proxy.trusted_relays.iter().filter_map(|n| IpNet::parse(n).ok()).collect(),
            reject_at: config.proxy.reject_at,
            enforce: config.proxy.enforce,
            enforce_after: config.proxy.enforce_after.as_deref().and_then(|d| crate::time::parse_now(d).ok()),
            forward: config.proxy.forward,
            limits: Limits {
                command: Duration::from_millis(config.proxy.command_timeout_ms),
                data: Duration::from_millis(config.proxy.data_timeout_ms),
            },
            counters: Counters::default(),
            now,
        }
    }

    fn now(&self) -> i64 {
        self.now.unwrap_or_else(crate::time::system_now)
    }

    fn keys(&self) -> Arc<KeySet> {
        self.keys.read().map(|k| k.clone()).unwrap_or_default()
    }

    fn enforcing(&self) -> bool {
        self.enforce && self.enforce_after.is_none_or(|t| self.now() >= t)
    }
}

/// The verifying direction of a session.
pub struct Verify<'a> {
    shared: &'a Shared,
    session: u64,
    client: IpAddr,
    trusted_client: bool,
    keys: Arc<KeySet>,
    today: i64,
    enforce: bool,
    sender: Option<String>,
    /// The transaction's verdict, set by the first recipient the downstream accepted.
    verdict: Option<TxVerdict>,
    pending: Option<TxVerdict>,
    reason: &'static str,
}

impl<'a> Verify<'a> {
    pub fn new(shared: &'a Shared, session: u64, client: IpAddr) -> Self {
        let trusted_client = shared.trusted.iter().any(|n| n.contains(client));
        let mut v = Verify {
            shared,
            session,
            client,
            trusted_client,
            keys: shared.keys(),
            today: 0,
            enforce: true,
            sender: None,
            verdict: None,
            pending: None,
            reason: "",
        };
        v.reset();
        v
    }

    fn log(&self, rcpt: &str, j: &Judgement, action: &str) {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        eprintln!(
            "batv-proxy: session={:x} client={} sender=<{}> rcpt=<{}> verdict={} reason={} action={} key={} tag_days_left={}",
            self.session,
            self.client,
            self.sender.as_deref().unwrap_or(""),
            rcpt.escape_debug(),
            match j.verdict {
                TxVerdict::BounceOk => "bounce-ok",
                TxVerdict::Backscatter => "backscatter",
            },
            j.reason,
            action,
            opt(j.key.map(|k| k.to_string())),
            opt(j.days_left.map(|d| d.to_string())),
        );
    }
}

impl Policy for Verify<'_> {
    fn mail(&mut self, path: &str) -> Decision {
        // A fresh key snapshot and clock per transaction.
        self.reset();
        self.sender = Some(path.to_string());
        Decision::Relay(None)
    }

    fn rcpt(&mut self, path: &str) -> Decision {
        let j = judge(path, &self.keys, &self.shared.protected, self.today);
        let c = &self.shared.counters;
        if let Some(k) = j.key.filter(|_| j.stripped.is_some()) {
            c.per_key[k as usize].fetch_add(1, Ordering::Relaxed);
        }
        let relay = Decision::Relay(j.stripped.clone());
        if j.stripped.is_some() {
            c.stripped.fetch_add(1, Ordering::Relaxed);
        }
        let bounce = self.sender.as_deref() == Some("");
        if !bounce {
            return relay;
        }
        let mut j = j;
        if self.trusted_client && j.verdict == TxVerdict::Backscatter {
            j.verdict = TxVerdict::BounceOk;
            j.reason = "trusted-relay";
        }
        match j.verdict {
            TxVerdict::BounceOk => c.bounce_ok.fetch_add(1, Ordering::Relaxed),
            TxVerdict::Backscatter => c.backscatter.fetch_add(1, Ordering::Relaxed),
        };
        if j.verdict == TxVerdict::Backscatter && self.enforce && self.shared.reject_at == RejectAt::Rcpt {
            self.log(path, &j, "refused");
            return Decision::Refuse(Reply::new(
                550,
                "5.7.1",
                "Backscatter refused: this address never sent the message you are bouncing (BATV)",
            ));
        }
        let first = self.verdict.or(self.pending);
        if first.is_some_and(|v| v != j.verdict && self.shared.reject_at == RejectAt::Data) {
            self.log(path, &j, "deferred-452");
            return Decision::Refuse(Reply::new(
                452,
                "4.5.3",
                "Too many recipients for this transaction, send the rest separately",
            ));
        }
        self.pending = Some(j.verdict);
        self.reason = j.reason;
        self.log(path, &j, if self.enforce { "relayed" } else { "relayed-monitor" });
        relay
    }

    fn rcpt_reply(&mut self, reply: &Reply) {
        // Only a recipient the downstream accepted sets the transaction's verdict.
        if reply.is_positive() && self.verdict.is_none() {
            self.verdict = self.pending;
        }
        if self.verdict.is_none() {
            self.pending = None;
        }
    }

    fn data(&mut self) -> Option<Reply> {
        if self.enforce && self.verdict == Some(TxVerdict::Backscatter) {
            self.shared.counters.refused_transactions.fetch_add(1, Ordering::Relaxed);
            eprintln!(
                "batv-proxy: session={:x} client={} sender=<> verdict=backscatter reason={} action=refused-at-data",
                self.session, self.client, self.reason
            );
            return Some(Reply::new(
                550,
                "5.7.1",
                "Backscatter refused: no recipient of this bounce sent the original message (BATV)",
            ));
        }
        None
    }

    fn reset(&mut self) {
        self.keys = self.shared.keys();
        let now = self.shared.now();
        self.today = tag::unix_day(now);
        self.enforce = self.shared.enforcing();
        self.sender = None;
        self.verdict = None;
        self.pending = None;
        self.reason = "";
    }
}

/// Handle one client connection.
pub async fn handle(shared: Arc<Shared>, client: TcpStream, peer: SocketAddr, id: u64) {
    shared.counters.connections.fetch_add(1, Ordering::Relaxed);
    let (cr, mut cw) = client.into_split();
    let down = match tokio::time::timeout(shared.limits.command, TcpStream::connect(shared.forward)).await {
        Ok(Ok(d)) => d,
        failure => {
            let why = match failure {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".into(),
            };
            eprintln!(
                "batv-proxy: session={id:x} client={} downstream={} error=\"{why}\" action=421",
                peer.ip(),
                shared.forward
            );
            let _ = smtp::send(
                &mut cw,
                &Reply::new(421, "4.4.2", "Service temporarily unavailable, try again later").raw,
            )
            .await;
            return;
        }
    };
    let _ = down.set_nodelay(true);
    let (dr, dw) = down.into_split();
    let mut policy = Verify::new(&shared, id, peer.ip());
    let result = Session {
        client_r: BufReader::new(cr),
        client_w: cw,
        down_r: BufReader::new(dr),
        down_w: dw,
        policy: &mut policy,
        limits: shared.limits,
    }
    .run()
    .await;
    if let Err(e) = result {
        eprintln!("batv-proxy: session={id:x} client={} error=\"{e}\"", peer.ip());
    }
}

/// A change stamp for the keys directory (manifest and secrets), for reloads.
fn stamp(dir: &std::path::Path) -> Vec<(String, SystemTime, u64)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let m = std::fs::metadata(e.path()).ok()?;
                    Some((name, m.modified().ok()?, std::os::unix::fs::MetadataExt::ino(&m)))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Reload the keys: all or nothing; a bad new set keeps the old one.
pub fn reload(shared: &Shared, store: &KeyStore) {
    match store.load() {
        Ok(k) if !k.is_empty() => {
            if let Ok(mut w) = shared.keys.write() {
                *w = Arc::new(k);
            }
            eprintln!("batv-proxy: keys reloaded from {}", store.dir().display());
        }
        Ok(_) => eprintln!(
            "batv-proxy: keys not reloaded: {} holds no key; keeping the old set",
            store.dir().display()
        ),
        Err(e) => eprintln!("batv-proxy: keys not reloaded: {e}; keeping the old set"),
    }
}

/// Load the keys a daemon starts with: never invents one (exit 78 without).
pub fn startup_keys(store: &KeyStore) -> Result<KeySet, KeyError> {
    let keys = store.load()?;
    if keys.is_empty() {
        return Err(KeyError::Corrupt {
            path: store.dir().to_path_buf(),
            reason: "no keys; a daemon never creates one (run `batv keys init`)".into(),
        });
    }
    Ok(keys)
}

/// Serve until SIGTERM/SIGINT, then stop accepting and let sessions finish (bounded by
/// the data timeout).
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, store: KeyStore, max_connections: usize) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let limit = Arc::new(Semaphore::new(max_connections));
    let mut poll = tokio::time::interval(Duration::from_secs(2));
    let mut last = stamp(store.dir());
    let mut next_id: u64 = (crate::time::system_now() as u64) << 16;
    eprintln!(
        "batv-proxy: listening on {} forwarding to {}",
        listener.local_addr()?,
        shared.forward
    );
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (sock, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        eprintln!("batv-proxy: accept: {e}");
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
            _ = hup.recv() => reload(&shared, &store),
            _ = poll.tick() => {
                let now = stamp(store.dir());
                if now != last {
                    last = now;
                    reload(&shared, &store);
                }
            }
            _ = usr1.recv() => eprint!("{}", shared.counters.render()),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    drop(listener);
    eprintln!("batv-proxy: draining {} session(s)", max_connections - limit.available_permits());
    let drain = limit.acquire_many(max_connections as u32);
    let _ = tokio::time::timeout(shared.limits.data + shared.limits.command, drain).await;
    Ok(())
}
