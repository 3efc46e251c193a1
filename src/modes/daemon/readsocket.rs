//! One line for Exim's `${readsocket}`: `sign|strip|verify ADDRESS [CLIENT]`, answered
//! with one line, then the connection closes (Exim reads to end of file).

use super::Daemon;
use crate::core::log::q;
use crate::core::tag;
use crate::core::verdict::{judge, TxVerdict};
use crate::logln;
use crate::server::Server;

impl Server<Daemon> {
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
                    if self.service.failed_tags.over_limit(ip, j.failed_tag(), max, now) {
                        let action = if s.enforcing(now) { "deferred" } else { "would-defer" };
                        logln!(
                            "batv-daemon: exim client={ip} rcpt={} verdict={} reason={} action={action}-too-many-invalid-tags",
                            q(&format!("<{arg}>")),
                            j.verdict.name(),
                            j.reason
                        );
                        if s.enforcing(now) {
                            self.service.counters.failed_tag_closes.inc();
                            return "DEFER too-many-invalid-tags".into();
                        }
                    }
                }
                match (j.verdict, j.stripped) {
                    (TxVerdict::BounceOk, Some(original)) => format!("OK {original}"),
                    (TxVerdict::BounceOk, None) => format!("DUNNO {}", j.reason),
                    (_, _) if !state.settings.enforcing(now) => format!("DUNNO monitor {}", j.reason),
                    (_, _) => {
                        self.service.counters.refused.inc();
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
                self.service.counters.malformed.inc();
                "ERROR expected: sign|strip|verify ADDRESS".into()
            }
        }
    }
}
