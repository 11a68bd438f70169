//! The redelivery filter: fingerprints of the messages a bridge stored most recently, so that
//! a message the broker delivers again (DUP set) after its ack was lost is acknowledged without
//! being stored twice. Seeded at start from the bridge records still in the WAL.

use std::collections::{HashSet, VecDeque};
use std::hash::{DefaultHasher, Hasher};

/// A 64-bit fingerprint of a message: its topic and payload.
pub fn fingerprint(topic: &str, payload: &[u8]) -> u64 {
    // Fixed keys: the same message gives the same value in every process of this build
    // (fingerprints are never stored, only recomputed from the WAL).
    let mut h = DefaultHasher::new();
    h.write(topic.as_bytes());
    h.write_u8(0xff);
    h.write(payload);
    h.finish()
}

/// How many fingerprints a bridge keeps (8 bytes each, twice, plus the hash table's slack:
/// an estimated 1.7 MiB at the floor, not measured). Far more than `max_inflight`: a broker resuming a session
/// sends its whole offline queue at once — Mosquitto ignores its in-flight limit for it — and
/// rumqttc writes at most one queued ack per turn of its event loop while it reads up to ten
/// incoming publishes, so during such a backlog thousands of stored messages can still be
/// unacknowledged when the process dies, and all of them come back with DUP set.
pub fn window(max_inflight: usize) -> usize {
    (max_inflight * 10).max(65_536)
}

/// The last `cap` fingerprints stored, oldest first out.
#[derive(Debug, Clone)]
pub struct Redelivery {
    set: HashSet<u64>,
    order: VecDeque<u64>,
    cap: usize,
}

impl Redelivery {
    /// An empty filter keeping `cap` fingerprints.
    pub fn new(cap: usize) -> Self {
        Self {
            set: HashSet::with_capacity(cap.min(4096)),
            order: VecDeque::with_capacity(cap.min(4096)),
            cap: cap.max(1),
        }
    }

    /// Remembers a stored message.
    pub fn insert(&mut self, fp: u64) {
        if self.set.insert(fp) {
            self.order.push_back(fp);
            if self.order.len() > self.cap
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }

    /// Whether a message with this fingerprint was stored recently.
    pub fn contains(&self, fp: u64) -> bool {
        self.set.contains(&fp)
    }

    /// Fingerprints held.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_last_cap_messages() {
        let mut r = Redelivery::new(3);
        for i in 0..5u8 {
            r.insert(fingerprint("t", &[i]));
        }
        assert_eq!(r.len(), 3);
        assert!(!r.contains(fingerprint("t", &[1])), "evicted");
        assert!(r.contains(fingerprint("t", &[4])));
        assert_ne!(
            fingerprint("a", b"bc"),
            fingerprint("ab", b"c"),
            "topic and payload are kept apart"
        );
        assert_eq!(fingerprint("t", b"x"), fingerprint("t", b"x"));
        assert_eq!(window(100), 65_536);
        assert_eq!(window(10_000), 100_000);
    }
}
