//! The failed-tag limiter: online tag guessing, bounded per client and hour.
//!
//! Every invalid tag (forged, unknown key, malformed; not expired, which was once ours)
//! counts against the client, whatever else its transaction holds. Once a client has used
//! up `max_failed_tags` within the window, its tagged recipients are refused (421 4.7.0,
//! temporary) without being checked at all, so no guess is tried past the limit: a client
//! gets `max` guesses a window, however many connections it opens. IPv6 clients count by
//! their /64 (the block one host is usually given) and, so that a site holding a /48 does
//! not get 65 536 allowances, by their /48 too, which may fail [`SITE_FACTOR`] times more.
//!
//! Memory is bounded: at most [`CLIENTS`] entries. When the table is full, entries whose
//! window is over are dropped (at most once a second, so a flood of new addresses costs no
//! more); if it is still full, a new client's failed tag is not counted but refused: while
//! guessers fill the table, nobody new gets a guess (valid tags still pass).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;

/// How long failed tags are remembered.
pub const WINDOW: i64 = 3600;
/// Buckets remembered at once (about 48 octets each).
pub const CLIENTS: usize = 65_536;
/// An IPv6 /48 may fail this many times more than one of its /64s.
pub const SITE_FACTOR: u32 = 8;

#[derive(Debug, Clone, Copy)]
struct Entry {
    count: u32,
    since: i64,
}

#[derive(Debug, Default)]
struct Table {
    buckets: HashMap<IpAddr, Entry>,
    /// When expired entries were last dropped.
    purged: i64,
}

/// Failed tags per client, shared by every connection of a server.
#[derive(Debug)]
pub struct FailedTags {
    table: Mutex<Table>,
    capacity: usize,
}

impl Default for FailedTags {
    fn default() -> Self {
        FailedTags::with_capacity(CLIENTS)
    }
}

/// The buckets a client counts in, each with its limit's factor: IPv4 alone; IPv6 by /64
/// and by /48.
fn buckets(ip: IpAddr) -> Vec<(IpAddr, u32)> {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = |bits: usize| {
                let mut o = v6.octets();
                o[bits / 8..].fill(0);
                IpAddr::V6(Ipv6Addr::from(o))
            };
            vec![(prefix(64), 1), (prefix(48), SITE_FACTOR)]
        }
        v4 => vec![(v4, 1)],
    }
}

impl FailedTags {
    pub fn with_capacity(capacity: usize) -> Self {
        FailedTags {
            table: Mutex::new(Table::default()),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // A poisoned table is still a table of whole entries.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A tagged recipient from `client`, `failed` if its tag is invalid: is the client
    /// over its `max` failed tags (count it first if it failed)? Then the recipient gets
    /// no verdict at all.
    pub fn over_limit(&self, client: IpAddr, failed: bool, max: u32, now: i64) -> bool {
        let keys = buckets(client);
        let mut t = self.lock();
        let used_up = |e: Option<&Entry>, factor: u32| e.is_some_and(|e| now - e.since < WINDOW && e.count >= max.saturating_mul(factor));
        if keys.iter().any(|(k, f)| used_up(t.buckets.get(k), *f)) {
            return true;
        }
        if !failed {
            return false;
        }
        for (key, _) in &keys {
            if t.buckets.len() >= self.capacity && !t.buckets.contains_key(key) {
                if t.purged != now {
                    t.purged = now;
                    t.buckets.retain(|_, e| now - e.since < WINDOW);
                }
                if t.buckets.len() >= self.capacity {
                    // Full of guessers: this one is refused uncounted.
                    return true;
                }
            }
            let e = t.buckets.entry(*key).or_insert(Entry { count: 0, since: now });
            if now - e.since >= WINDOW {
                *e = Entry { count: 0, since: now };
            }
            e.count = e.count.saturating_add(1);
        }
        keys.iter()
            .any(|(k, f)| t.buckets.get(k).is_some_and(|e| e.count > max.saturating_mul(*f)))
    }

    /// Buckets remembered now.
    pub fn len(&self) -> usize {
        self.lock().buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_client_gets_max_guesses_a_window() {
        let f = FailedTags::default();
        let c = ip("192.0.2.7");
        for _ in 0..10 {
            assert!(!f.over_limit(c, true, 10, 100));
        }
        // Used up: the next failed tag, and any tag at all, gets no verdict.
        assert!(f.over_limit(c, true, 10, 100));
        assert!(f.over_limit(c, false, 10, 100 + WINDOW - 1));
        // A new window starts when the old one is over.
        assert!(!f.over_limit(c, false, 10, 100 + WINDOW));
        assert!(!f.over_limit(c, true, 10, 100 + WINDOW));
        assert!(!f.over_limit(ip("192.0.2.8"), true, 10, 100));
        // Valid tags are never counted.
        for _ in 0..100 {
            assert!(!f.over_limit(ip("192.0.2.9"), false, 10, 100));
        }
    }

    #[test]
    fn ipv6_counts_per_64_and_per_48() {
        let f = FailedTags::default();
        assert!(!f.over_limit(ip("2001:db8:1:2::1"), true, 2, 0));
        assert!(!f.over_limit(ip("2001:db8:1:2:ffff::9"), true, 2, 0));
        assert!(f.over_limit(ip("2001:db8:1:2::7"), true, 2, 0), "the /64 is one client");
        // Other /64s of the same /48 share its larger allowance (2 * 8 = 16 in all).
        let mut more = 0;
        for i in 3..20u16 {
            if !f.over_limit(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, i, 0, 0, 0, 1)), true, 2, 0) {
                more += 1;
            }
        }
        assert_eq!(more, 16 - 2, "the /48's allowance, less what the first /64 used");
        assert!(!f.over_limit(ip("2001:db8:2:1::1"), true, 2, 0), "another /48");
        // IPv4-mapped addresses are their IPv4 address.
        assert!(!f.over_limit(ip("192.0.2.1"), true, 1, 0));
        assert!(f.over_limit(ip("::ffff:192.0.2.1"), true, 1, 0));
    }

    #[test]
    fn a_full_table_refuses_new_guessers_and_keeps_the_old() {
        let f = FailedTags::with_capacity(100);
        for i in 0..100u32 {
            assert!(!f.over_limit(IpAddr::from(i.to_be_bytes()), true, 10, 0));
        }
        assert_eq!(f.len(), 100);
        // Full: a new client's failed tag is refused, uncounted; its valid tags pass.
        let new = IpAddr::from(1000u32.to_be_bytes());
        assert!(f.over_limit(new, true, 10, 1));
        assert!(!f.over_limit(new, false, 10, 1));
        assert_eq!(f.len(), 100);
        // Clients already counted go on being counted, and keep their counts.
        let old = IpAddr::from(5u32.to_be_bytes());
        for _ in 0..9 {
            assert!(!f.over_limit(old, true, 10, 2));
        }
        assert!(f.over_limit(old, true, 10, 2));
        // When the windows are over, the table makes room again.
        assert!(!f.over_limit(new, true, 10, WINDOW + 10));
    }
}
