//! The proxy's counters (SIGUSR1 logs them; `metrics_listen` serves them).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::server::metrics::{Label, Metrics};

/// The verdicts of the DATA check, in the order of [`Counters::data_checks`].
pub const DATA_CHECK_VERDICTS: [&str; 4] = ["not-a-bounce", "bounce-with-valid-tag", "backscatter", "unknown"];

/// Key ids as label values.
const KEY_IDS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// Counters per verdict and per key id (how often each key still validates tags).
#[derive(Debug)]
pub struct Counters {
    pub bounce_ok: Counter,
    pub backscatter: Counter,
    pub refused_transactions: Counter,
    /// Backscatter transactions let through because the proxy only monitors.
    pub monitored_transactions: Counter,
    pub stripped: Counter,
    per_key: Family<Label, Counter>,
    pub connections: Counter,
    /// Front mode: the MTA did not take XCLIENT / PROXY v2 (client got 421 4.3.0).
    pub handoff_failures: Counter,
    /// Sessions closed for too many invalid tags.
    pub failed_tag_closes: Counter,
    /// DATA checks, by verdict (see [`DATA_CHECK_VERDICTS`]).
    pub data_checks: [Counter; 4],
    /// Gateway mode: recipients refused by the relay control, and as unknown users.
    pub relay_refusals: Counter,
    pub unknown_recipients: Counter,
}

impl Counters {
    pub fn new(m: &mut Metrics) -> Counters {
        let [bounce_ok, backscatter] = m.by(
            "batv_rcpt",
            "Recipients of bounces judged, by verdict.",
            "verdict",
            ["bounce-ok", "backscatter"],
        );
        let [refused_transactions, monitored_transactions] = m.by(
            "batv_transactions",
            "Backscatter transactions, by what was done.",
            "action",
            ["refused", "monitored"],
        );
        Counters {
            bounce_ok,
            backscatter,
            refused_transactions,
            monitored_transactions,
            stripped: m.counter("batv_stripped", "Recipients judged with an authentic tag (stripped when relayed)."),
            per_key: m.family("batv_tags", "Authentic tags seen, by key id."),
            connections: m.counter("batv_connections", "Client connections accepted."),
            handoff_failures: m.counter(
                "batv_handoff_failures",
                "Front mode: connections refused because the MTA did not take XCLIENT or PROXY v2.",
            ),
            failed_tag_closes: m.counter("batv_failed_tag_closes", "Sessions closed for too many invalid tags."),
            data_checks: m.by(
                "batv_data_checks",
                "Messages from non-null senders to protected untagged recipients inspected at DATA, by verdict.",
                "verdict",
                DATA_CHECK_VERDICTS,
            ),
            relay_refusals: m.counter(
                "batv_relay_refusals",
                "Gateway mode: recipients refused by the relay control (554 5.7.1).",
            ),
            unknown_recipients: m.counter(
                "batv_unknown_recipients",
                "Gateway mode: recipients not in valid_recipients (550 5.1.1).",
            ),
        }
    }

    /// An authentic tag of key `id`.
    pub fn tag_of_key(&self, id: u8) {
        if let Some(k) = KEY_IDS.get(id as usize) {
            self.per_key.get_or_create(&[("key", k)]).inc();
        }
    }
}
