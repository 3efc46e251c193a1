//! The failed-tag limiter: online tag guessing, bounded per client and hour.
//!
//! Every invalid tag in a bounce (forged, unknown key, malformed; not expired, which was
//! once ours) counts against the client, whatever else its transaction holds. Once a
//! client has used up `max_failed_tags` within the window, its tagged bounce recipients
//! are refused (421 4.7.0, temporary) without being checked at all, so no guess is tried
//! past the limit: a client gets `max` guesses an hour, however many connections it
//! opens. IPv6 clients count per /64, the block one host is usually given.
//!
//! Memory is bounded: at most [`CLIENTS`] entries; when full, expired entries go first,
//! then the oldest window (a client evicted that way has spent its guesses long ago).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// How long failed tags are remembered.
pub const WINDOW: i64 = 3600;
/// Clients remembered at once (about 48 octets each).
pub const CLIENTS: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Entry {
    count: u32,
    since: i64,
}

/// Failed tags per client, shared by every connection of a server.
#[derive(Debug)]
pub struct FailedTags {
    clients: Mutex<HashMap<IpAddr, Entry>>,
    capacity: usize,
}

impl Default for FailedTags {
    fn default() -> Self {
        FailedTags::with_capacity(CLIENTS)
    }
}

/// The address a client is counted under: IPv4 as is, IPv6 by its /64.
fn bucket(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            o[8..].fill(0);
            IpAddr::V6(o.into())
        }
        v4 => v4,
    }
}

impl FailedTags {
    pub fn with_capacity(capacity: usize) -> Self {
        FailedTags {
            clients: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Entry>> {
        // A poisoned map is still a map of whole entries.
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Has `client` used up its `max` failed tags in the window? Then its tagged bounce
    /// recipients are not checked.
    pub fn exhausted(&self, client: IpAddr, max: u32, now: i64) -> bool {
        self.lock()
            .get(&bucket(client))
            .is_some_and(|e| now - e.since < WINDOW && e.count >= max)
    }

    /// Count one failed tag from `client`; returns its count in the current window.
    pub fn record(&self, client: IpAddr, now: i64) -> u32 {
        let key = bucket(client);
        let mut map = self.lock();
        if map.len() >= self.capacity && !map.contains_key(&key) {
            map.retain(|_, e| now - e.since < WINDOW);
            if map.len() >= self.capacity {
                if let Some(oldest) = map.iter().min_by_key(|(_, e)| e.since).map(|(k, _)| *k) {
                    map.remove(&oldest);
                }
            }
        }
        let e = map.entry(key).or_insert(Entry { count: 0, since: now });
        if now - e.since >= WINDOW {
            *e = Entry { count: 0, since: now };
        }
        e.count = e.count.saturating_add(1);
        e.count
    }

    /// A tagged recipient from `client`, `failed` if its tag is invalid: is the client
    /// over its `max` failed tags (count it first if it failed)? Then the recipient gets
    /// no verdict at all.
    pub fn over_limit(&self, client: IpAddr, failed: bool, max: u32, now: i64) -> bool {
        self.exhausted(client, max, now) || (failed && self.record(client, now) > max)
    }

    /// Clients remembered now (for tests and the counters).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_max_guesses_a_window() {
        let f = FailedTags::default();
        let c: IpAddr = "192.0.2.7".parse().unwrap();
        for n in 1..=10 {
            assert!(!f.exhausted(c, 10, 100));
            assert_eq!(f.record(c, 100), n);
        }
        assert!(f.exhausted(c, 10, 100));
        assert!(f.exhausted(c, 10, 100 + WINDOW - 1));
        // A new window starts when the old one is over.
        assert!(!f.exhausted(c, 10, 100 + WINDOW));
        assert_eq!(f.record(c, 100 + WINDOW), 1);
        assert!(!f.exhausted("192.0.2.8".parse().unwrap(), 10, 100));
    }

    #[test]
    fn ipv6_counts_per_64() {
        let f = FailedTags::default();
        f.record("2001:db8:1:2::1".parse().unwrap(), 0);
        assert_eq!(f.record("2001:db8:1:2:ffff::9".parse().unwrap(), 0), 2);
        assert_eq!(f.record("2001:db8:1:3::1".parse().unwrap(), 0), 1);
        // IPv4-mapped addresses are their IPv4 address.
        f.record("192.0.2.1".parse().unwrap(), 0);
        assert_eq!(f.record("::ffff:192.0.2.1".parse().unwrap(), 0), 2);
    }

    #[test]
    fn memory_is_bounded_and_a_full_table_keeps_the_newest() {
        let f = FailedTags::with_capacity(100);
        for i in 0..1000u32 {
            f.record(IpAddr::from(i.to_be_bytes()), i as i64);
        }
        assert_eq!(f.len(), 100);
        // The most recent client is still counted; the first ones are gone.
        assert_eq!(f.record(IpAddr::from(999u32.to_be_bytes()), 999), 2);
        assert_eq!(f.record(IpAddr::from(0u32.to_be_bytes()), 999), 1);
    }
}
