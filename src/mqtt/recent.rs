//! What one client published recently, so that a message it sends again is acknowledged
//! without being stored twice (sans-IO):
//!
//! - QoS 2: each packet id delivered and awaiting PUBREL, with the fingerprint of its message.
//!   A PUBLISH with a pending id and the same fingerprint is a resend (acked again, no row); a
//!   different message under that id is new (its PUBREL was lost, e.g. in a crash).
//! - QoS 1: the last [`QOS1_WINDOW`] messages stored, as (packet id, fingerprint). A PUBLISH
//!   with DUP set that matches one is a resend whose PUBACK was lost: acked, no second row.
//!
//! Kept per client id across reconnects (the session store) and rebuilt at start from the
//! WAL records still on disk (records carry their packet id), so a crash between storing a
//! message and its ack reaching the client leaves no duplicate row. The cost: a CRC32C of
//! topic and payload per QoS 1/2 message (hardware-accelerated on x86_64 and aarch64; not
//! measured on its own).

use std::collections::{HashMap, VecDeque};

/// QoS 1 messages remembered per client: more than a client keeps in flight (paho: 20;
/// MQTT 5 clients here: up to `mqtt.max_inflight`, but resends come from the tail).
pub const QOS1_WINDOW: usize = 128;

/// A 64-bit fingerprint of a message: CRC32C of its topic and of its payload.
pub fn fingerprint(topic: &str, payload: &[u8]) -> u64 {
    (u64::from(crc32c::crc32c(topic.as_bytes())) << 32) | u64::from(crc32c::crc32c(payload))
}

/// One client's recent messages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recent {
    qos2: HashMap<u16, u64>,
    qos1: VecDeque<(u16, u64)>,
}

impl Recent {
    /// Nothing remembered.
    pub fn is_empty(&self) -> bool {
        self.qos2.is_empty() && self.qos1.is_empty()
    }

    /// QoS 2 ids awaiting PUBREL.
    pub fn qos2_pending(&self) -> usize {
        self.qos2.len()
    }

    /// Whether `pkid` awaits PUBREL.
    pub fn qos2_has(&self, pkid: u16) -> bool {
        self.qos2.contains_key(&pkid)
    }

    /// A QoS 2 PUBLISH: `true` when it is a resend of the pending message with this id (no new
    /// row); otherwise it is remembered as pending.
    pub fn qos2_resend(&mut self, pkid: u16, fp: u64) -> bool {
        self.qos2.insert(pkid, fp) == Some(fp)
    }

    /// PUBREL (or a refused QoS 2 message): the id is free again.
    pub fn qos2_release(&mut self, pkid: u16) {
        self.qos2.remove(&pkid);
    }

    /// Whether a QoS 1 PUBLISH with DUP set is a resend of a stored message.
    pub fn qos1_resend(&self, pkid: u16, fp: u64) -> bool {
        self.qos1.iter().rev().any(|&(id, f)| id == pkid && f == fp)
    }

    /// A QoS 1 message is stored.
    pub fn qos1_stored(&mut self, pkid: u16, fp: u64) {
        if self.qos1.len() == QOS1_WINDOW {
            self.qos1.pop_front();
        }
        self.qos1.push_back((pkid, fp));
    }

    /// A QoS 1 message was refused (not stored): a resend must be stored.
    pub fn qos1_refused(&mut self, pkid: u16) {
        if let Some(i) = self.qos1.iter().rposition(|&(id, _)| id == pkid) {
            self.qos1.remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_qos2_resend_is_recognised_by_id_and_content() {
        let mut r = Recent::default();
        let (a, b) = (fingerprint("t", b"a"), fingerprint("t", b"b"));
        assert!(!r.qos2_resend(1, a), "first time: new");
        assert!(r.qos2_resend(1, a), "same id, same message: resend");
        assert!(
            !r.qos2_resend(1, b),
            "same id, another message: new (its PUBREL was lost)"
        );
        r.qos2_release(1);
        assert!(!r.qos2_resend(1, b), "after PUBREL the id is new");
        assert_eq!(r.qos2_pending(), 1);
    }

    #[test]
    fn the_qos1_window_keeps_the_last_messages() {
        let mut r = Recent::default();
        for i in 0..(QOS1_WINDOW as u16 + 10) {
            r.qos1_stored(i, fingerprint("t", &i.to_le_bytes()));
        }
        let fp = |i: u16| fingerprint("t", &i.to_le_bytes());
        assert!(!r.qos1_resend(3, fp(3)), "fell out of the window");
        let last = QOS1_WINDOW as u16 + 9;
        assert!(r.qos1_resend(last, fp(last)));
        assert!(!r.qos1_resend(last, fp(1)), "same id, other content: new");
        r.qos1_refused(last);
        assert!(
            !r.qos1_resend(last, fp(last)),
            "a refused message is stored when resent"
        );
    }

    #[test]
    fn fingerprints_tell_topic_and_payload_apart() {
        assert_ne!(fingerprint("a", b"b"), fingerprint("b", b"a"));
        assert_eq!(fingerprint("a", b"b"), fingerprint("a", b"b"));
    }
}
