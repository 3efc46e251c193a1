//! The policy delegation protocol (SMTPD_POLICY_README): the verdict on each recipient of
//! a bounce, one per transaction (Postfix's `instance`), as the proxy gives it.

use std::collections::HashMap;

use super::Daemon;
use crate::core::config::RejectAt;
use crate::core::log::q;
use crate::core::tag;
use crate::core::verdict::{judge, TxVerdict};
use crate::logln;
use crate::server::Server;

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

/// A transaction seen by the policy service (Postfix's `instance` attribute).
pub(super) struct Instance {
    /// The verdict of its first bounce recipient (`reject_at = "data"`).
    verdict: Option<TxVerdict>,
    reason: &'static str,
    /// Monitor mode has added its header.
    marked: bool,
    seen: i64,
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

pub(super) fn is_attr_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl Server<Daemon> {
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
        let c = &self.service.counters;
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
            if self.service.failed_tags.over_limit(ip, j.failed_tag(), max, now) {
                if enforce {
                    c.failed_tag_closes.inc();
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
            TxVerdict::BounceOk => c.bounce_ok.inc(),
            TxVerdict::Backscatter | TxVerdict::Unreadable => c.backscatter.inc(),
        };
        if j.verdict == TxVerdict::Unreadable {
            if trusted {
                log("dunno-trusted", &j);
                return "DUNNO".into();
            }
            if enforce {
                c.refused.inc();
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
                    c.deferred.inc();
                    (DEFER_MIXED.into(), "deferred-452")
                }
                (TxVerdict::Backscatter, RejectAt::Rcpt) if enforce => {
                    c.refused.inc();
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
        self.service.counters.refused.inc();
        logln!(
            "batv-daemon: policy client={} instance={} sender=<> verdict=backscatter reason={reason} action=refused-at-data",
            q(attrs.get("client_address").unwrap_or("")),
            q(instance),
        );
        REFUSE_DATA.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::Config;
    use crate::core::keys::KeySet;

    fn shared(extra: impl FnOnce(&mut Config)) -> Server<Daemon> {
        let key = crate::core::keys::test_key();
        let mut config = Config {
            sign_domains: vec!["example.org".into()],
            ..Config::default()
        };
        extra(&mut config);
        let keys = KeySet::from_keys(vec![key]).unwrap().into();
        Server::new(Daemon::new(Some(20_780 * 86_400)), &config, &keys).unwrap()
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
