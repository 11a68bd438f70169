//! Retained messages (MQTT 3.1.1 §3.3.1.3): the last retained PUBLISH of each topic, handed to
//! every new matching subscription; an empty retained payload deletes it. Bounded by count and
//! bytes (a retained message past either bound is not kept, and counted).
//!
//! Durability: a retained PUBLISH is in the WAL before anyone sees it (its record carries the
//! retain flag). The store is written as a snapshot file (`{data_dir}/broker/retained`,
//! temp + fsync + rename) at most once a second while it changes; the snapshot names the last
//! WAL sequence number it covers, and WAL segments holding later retained records are kept
//! until a snapshot covers them. A start loads the snapshot and applies the retained records
//! of the WAL above it: a SIGKILL loses no retained message that was acknowledged.
//!
//! A retained message with an MQTT 5 message expiry interval is delivered with what is left of
//! it and dropped once it runs out (MQTT 5 §3.3.2.3.3); the time fleetlake was stopped counts.
//!
//! Snapshot format (little-endian): `FLRET\0\0\x02` | covered seq u64 | count u32 | entries
//! (`topic_len u16 | topic | qos u8 | payload_len u32 | payload | MQTT 5 properties and expiry
//! as in` [`super::state`]) | CRC32C u32 of all before. Version 1 (no properties, no expiry)
//! is read too.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::state::{self, Damaged, Now, Reader};
use crate::decode::{Props, filter};

const MAGIC: &[u8; 8] = b"FLRET\x00\x00\x02";
const MAGIC_V1: &[u8; 8] = b"FLRET\x00\x00\x01";

/// One retained message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetainedMsg {
    /// Payload.
    pub payload: Bytes,
    /// QoS it was published with.
    pub qos: u8,
    /// Its MQTT 5 properties.
    pub props: Option<Arc<Props>>,
    /// When its MQTT 5 message expiry interval runs out.
    pub expires: Option<Instant>,
}

/// The retained messages by topic.
#[derive(Debug, Default)]
pub struct Retained {
    map: BTreeMap<Arc<str>, RetainedMsg>,
    bytes: usize,
    max_count: usize,
    max_bytes: usize,
    /// Highest WAL sequence number applied.
    applied: u64,
}

/// What [`Retained::set`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Set {
    /// Stored (or replaced).
    Stored,
    /// An empty payload deleted the topic's message (or there was none).
    Deleted,
    /// Over `broker.retained_max` / `broker.retained_max_bytes`: not kept.
    Full,
}

fn cost(topic: &str, payload: &[u8]) -> usize {
    64 + topic.len() + payload.len()
}

impl Retained {
    /// An empty store holding at most `max_count` messages and `max_bytes`.
    pub fn new(max_count: usize, max_bytes: usize) -> Self {
        Self {
            max_count,
            max_bytes,
            ..Self::default()
        }
    }

    /// Retained messages held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes held (topics, payloads, overhead).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The highest WAL sequence number applied (a snapshot covers up to it).
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Applies the retained PUBLISH with WAL sequence number `seq`. Records at or below
    /// [`applied`](Self::applied) are already in (a replay after a snapshot): ignored.
    pub fn set(&mut self, seq: u64, topic: &str, payload: Bytes, qos: u8) -> Set {
        self.set_with(seq, topic, payload, qos, None)
    }

    /// [`Retained::set`] with the PUBLISH's MQTT 5 properties (delivered with it); its
    /// message expiry interval runs from now.
    pub fn set_with(
        &mut self,
        seq: u64,
        topic: &str,
        payload: Bytes,
        qos: u8,
        props: Option<Arc<Props>>,
    ) -> Set {
        if seq <= self.applied && seq != 0 {
            return Set::Stored;
        }
        self.applied = self.applied.max(seq);
        let expires = props
            .as_ref()
            .and_then(|p| p.message_expiry_interval)
            .map(|secs| Instant::now() + Duration::from_secs(secs.into()));
        self.put(topic, payload, qos, props, expires)
    }

    fn put(
        &mut self,
        topic: &str,
        payload: Bytes,
        qos: u8,
        props: Option<Arc<Props>>,
        expires: Option<Instant>,
    ) -> Set {
        if let Some(old) = self.map.get(topic) {
            self.bytes -= cost(topic, &old.payload);
        }
        if payload.is_empty() {
            self.map.remove(topic);
            return Set::Deleted;
        }
        let n = cost(topic, &payload);
        let replaces = self.map.contains_key(topic);
        if self.bytes + n > self.max_bytes || (!replaces && self.map.len() >= self.max_count) {
            // The old value (if any) was already uncounted: remove it too, so the store never
            // hands out a value older than one it refused.
            self.map.remove(topic);
            return Set::Full;
        }
        self.bytes += n;
        self.map.insert(
            Arc::from(topic),
            RetainedMsg {
                payload,
                qos,
                props,
                expires,
            },
        );
        Set::Stored
    }

    /// Calls `f` with every retained message whose topic matches the valid `filter` and that
    /// has not expired.
    pub fn matching(&self, filter: &str, mut f: impl FnMut(&Arc<str>, &RetainedMsg)) {
        let now = Instant::now();
        let mut f = |topic, msg: &RetainedMsg| {
            if msg.expires.is_none_or(|t| t > now) {
                f(topic, msg);
            }
        };
        // A filter without wildcards names one topic.
        if !filter.contains(['+', '#']) {
            if let Some((topic, msg)) = self.map.get_key_value(filter) {
                f(topic, msg);
            }
            return;
        }
        // Topics under the filter's literal prefix only (sorted map): `a/b/+` scans `a/b/…`.
        let literal = filter.find(['+', '#']).map_or(filter, |i| &filter[..i]);
        let from: Arc<str> = Arc::from(literal);
        for (topic, msg) in self.map.range(from..) {
            if !topic.starts_with(literal) {
                break;
            }
            if filter::matches(filter, topic) {
                f(topic, msg);
            }
        }
    }

    /// Drops the messages whose expiry interval ran out by `now`; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.map.len();
        let mut freed = 0;
        self.map.retain(|topic, msg| {
            let keep = msg.expires.is_none_or(|t| t > now);
            if !keep {
                freed += cost(topic, &msg.payload);
            }
            keep
        });
        self.bytes -= freed;
        before - self.map.len()
    }

    /// The snapshot bytes at `now` (see the module docs).
    pub fn encode(&self, now: &Now) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.bytes);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.applied.to_le_bytes());
        out.extend_from_slice(&(self.map.len() as u32).to_le_bytes());
        for (topic, msg) in &self.map {
            out.extend_from_slice(&(topic.len() as u16).to_le_bytes());
            out.extend_from_slice(topic.as_bytes());
            out.push(msg.qos);
            out.extend_from_slice(&(msg.payload.len() as u32).to_le_bytes());
            out.extend_from_slice(&msg.payload);
            state::props_and_expiry(&mut out, msg.props.as_deref(), msg.expires, now);
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Loads a snapshot into this (empty) store at `now`, keeping its bounds.
    pub fn decode(&mut self, bytes: &[u8], now: &Now) -> Result<(), Damaged> {
        let (mut r, v1) = match Reader::open(bytes, MAGIC) {
            Ok(r) => (r, false),
            Err(_) => (Reader::open(bytes, MAGIC_V1)?, true),
        };
        let applied = u64::from_le_bytes(r.array()?);
        let count = u32::from_le_bytes(r.array()?);
        for _ in 0..count {
            let topic = r.string()?;
            let qos = r.take(1)?[0];
            let len = u32::from_le_bytes(r.array()?) as usize;
            let payload = Bytes::copy_from_slice(r.take(len)?);
            let (props, expires) = if v1 {
                (None, None)
            } else {
                r.props_and_expiry(now)?
            };
            if expires.is_some_and(|t| t <= now.at) {
                continue;
            }
            // Bounds may have shrunk since: what no longer fits is not loaded.
            let _ = self.put(&topic, payload, qos, props, expires);
        }
        self.applied = applied;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(r: &Retained, filter: &str) -> Vec<String> {
        let mut v = Vec::new();
        r.matching(filter, |t, _| v.push(t.to_string()));
        v
    }

    #[test]
    fn the_last_retained_message_wins_and_an_empty_one_deletes() {
        let mut r = Retained::new(100, 1 << 20);
        assert_eq!(r.set(1, "a/b", Bytes::from("1"), 1), Set::Stored);
        assert_eq!(r.set(2, "a/b", Bytes::from("2"), 0), Set::Stored);
        r.set(3, "a/c", Bytes::from("3"), 0);
        r.set(4, "ab", Bytes::from("4"), 0);
        r.set(5, "$SYS/x", Bytes::from("5"), 0);
        assert_eq!(topics(&r, "a/+"), ["a/b", "a/c"]);
        assert_eq!(topics(&r, "a/b"), ["a/b"]);
        assert_eq!(topics(&r, "#"), ["a/b", "a/c", "ab"]);
        assert_eq!(topics(&r, "$SYS/#"), ["$SYS/x"]);
        assert_eq!(r.set(6, "a/b", Bytes::new(), 0), Set::Deleted);
        assert_eq!(topics(&r, "a/#"), ["a/c"]);
        assert_eq!(r.applied(), 6);
    }

    #[test]
    fn bounds_refuse_new_topics_and_oversized_values() {
        let mut r = Retained::new(2, 1 << 20);
        r.set(1, "a", Bytes::from("1"), 0);
        r.set(2, "b", Bytes::from("1"), 0);
        assert_eq!(r.set(3, "c", Bytes::from("1"), 0), Set::Full);
        assert_eq!(
            r.set(4, "a", Bytes::from("2"), 0),
            Set::Stored,
            "replacing fits"
        );
        let mut small = Retained::new(10, 100);
        assert_eq!(small.set(1, "a", Bytes::from(vec![0; 200]), 0), Set::Full);
        assert!(small.is_empty());
    }

    #[test]
    fn a_snapshot_round_trips_and_replay_skips_what_it_covers() {
        let mut r = Retained::new(100, 1 << 20);
        r.set(7, "a/b", Bytes::from("x"), 1);
        r.set(9, "c", Bytes::from(vec![0, 1, 2]), 2);
        let now = Now::get();
        let bytes = r.encode(&now);
        let mut back = Retained::new(100, 1 << 20);
        back.decode(&bytes, &now).expect("a snapshot reads back");
        assert_eq!(back.applied(), 9);
        assert_eq!(topics(&back, "#"), ["a/b", "c"]);
        back.set(8, "a/b", Bytes::new(), 0);
        assert_eq!(
            topics(&back, "#"),
            ["a/b", "c"],
            "seq 8 is in the snapshot already"
        );
        let mut damaged = bytes.clone();
        damaged[12] ^= 1;
        assert!(Retained::new(1, 1).decode(&damaged, &now).is_err());
    }

    #[test]
    fn an_expiring_message_keeps_its_properties_and_expires_across_a_restart() {
        let props = Props {
            message_expiry_interval: Some(60),
            content_type: Some("application/json".into()),
            ..Props::default()
        };
        let mut r = Retained::new(100, 1 << 20);
        r.set_with(1, "cfg/a", Bytes::from("1"), 1, Some(Arc::new(props)));
        r.set(2, "cfg/b", Bytes::from("2"), 1);
        let now = Now::get();
        let bytes = r.encode(&now);
        let restart = |secs_down: u64| {
            let later = Now {
                at: Instant::now(),
                unix: now.unix + secs_down,
            };
            let mut back = Retained::new(100, 1 << 20);
            back.decode(&bytes, &later).expect("reads back");
            back
        };
        let soon = restart(10);
        let mut seen = Vec::new();
        soon.matching("cfg/a", |_, m| seen.push(m.clone()));
        let m = &seen[0];
        assert_eq!(
            m.props.as_ref().and_then(|p| p.content_type.as_deref()),
            Some("application/json")
        );
        let left = m.expires.expect("still expires") - Instant::now();
        assert!(
            left <= Duration::from_secs(51),
            "{left:?}: the 10 s down count"
        );
        let late = restart(61);
        assert_eq!(
            topics(&late, "#"),
            ["cfg/b"],
            "expired while fleetlake was down"
        );
        let mut live = soon;
        assert_eq!(live.expire(Instant::now() + Duration::from_secs(52)), 1);
        assert_eq!(topics(&live, "#"), ["cfg/b"]);
        assert_eq!(live.bytes(), cost("cfg/b", b"2"));
    }
}
