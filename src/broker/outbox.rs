//! The outbound side of one session: messages routed to it wait in a queue bounded by bytes,
//! then go out as PUBLISH packets with packet ids, at most `receive maximum` of QoS 1/2 in
//! flight; PUBACK, PUBREC and PUBCOMP settle them. A persistent session keeps its outbox while
//! its client is away (routing goes on queueing into it) and resends what was in flight when
//! the client comes back (MQTT 3.1.1 §4.4, MQTT 5 §4.4).
//!
//! [`OutQueue`] is the sans-IO core; [`Outbox`] puts it behind a lock with a wake-up for the
//! connection task. Lock order: the broker's hub lock may be held while taking an outbox lock,
//! never the reverse.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::decode::Props;

/// A PUBLISH to a subscriber.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishOut {
    /// Topic.
    pub topic: Arc<str>,
    /// Payload.
    pub payload: Bytes,
    /// QoS.
    pub qos: u8,
    /// Packet id (0 for QoS 0).
    pub pkid: u16,
    /// RETAIN flag.
    pub retain: bool,
    /// DUP flag (a resend).
    pub dup: bool,
    /// MQTT 5 properties of the original PUBLISH.
    pub props: Option<Arc<Props>>,
    /// MQTT 5 subscription identifiers.
    pub sub_ids: Vec<u32>,
    /// MQTT 5 topic alias toward this connection (`topic` is empty when the alias alone
    /// stands for it); set by the connection, never by the outbox.
    pub alias: Option<u16>,
}

impl PublishOut {
    /// The size of its PUBLISH packet (MQTT 5).
    pub fn packet_len(&self) -> usize {
        let alias = if self.alias.is_some() { 3 } else { 0 };
        let qos = self.qos;
        publish_len(
            self.topic.len(),
            qos,
            self.props.as_deref(),
            &self.sub_ids,
            self.payload.len(),
        ) + alias
    }
}

/// The size of a PUBLISH packet (MQTT 5, the larger of the two versions) without a topic
/// alias: for the client's maximum packet size.
fn publish_len(
    topic: usize,
    qos: u8,
    props: Option<&Props>,
    sub_ids: &[u32],
    payload: usize,
) -> usize {
    let varint = |n: usize| match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    let mut len: usize = sub_ids.iter().map(|&id| 1 + varint(id as usize)).sum();
    if let Some(p) = props {
        len += p.payload_format_indicator.map_or(0, |_| 2);
        len += p.message_expiry_interval.map_or(0, |_| 5);
        len += p.content_type.as_ref().map_or(0, |s| 3 + s.len());
        len += p.response_topic.as_ref().map_or(0, |s| 3 + s.len());
        len += p.correlation_data.as_ref().map_or(0, |b| 3 + b.len());
        len += p
            .user_properties
            .iter()
            .map(|(k, v)| 5 + k.len() + v.len())
            .sum::<usize>();
    }
    let pkid = if qos > 0 { 2 } else { 0 };
    let remaining = 2 + topic + pkid + varint(len) + len + payload;
    1 + varint(remaining) + remaining
}

/// A packet the outbox has the connection send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    /// PUBLISH.
    Publish(Box<PublishOut>),
    /// PUBREL of a QoS 2 delivery.
    PubRel(u16),
}

/// Why a connection lost its session to a newer one ([`Outbox::check`]).
pub const TAKEN_OVER: &str = "session taken over by a new connection";

/// Bytes a queued delivery is counted for besides topic and payload.
const OVERHEAD: usize = 96;

/// A message routed to one session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Topic.
    pub topic: Arc<str>,
    /// Payload (shared with every other session it goes to).
    pub payload: Bytes,
    /// QoS it is delivered with: the lower of the published and the granted QoS.
    pub qos: u8,
    /// RETAIN flag as sent.
    pub retain: bool,
    /// MQTT 5 properties of the PUBLISH as received.
    pub props: Option<Arc<Props>>,
    /// Identifiers of the subscriptions it matched.
    pub sub_ids: Vec<u32>,
    /// When its MQTT 5 message expiry interval runs out (not kept across a restart).
    pub expires: Option<std::time::Instant>,
}

impl Delivery {
    /// The size of its PUBLISH packet (MQTT 5, the larger of the two versions), for the
    /// client's maximum packet size.
    fn packet_len(&self) -> usize {
        let (topic, payload) = (self.topic.len(), self.payload.len());
        publish_len(
            topic,
            self.qos,
            self.props.as_deref(),
            &self.sub_ids,
            payload,
        )
    }

    /// The same delivery carrying `left` (rounded up to seconds) as its message expiry.
    fn with_expiry(mut self, left: std::time::Duration) -> Self {
        let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        let mut props = self.props.as_deref().cloned().unwrap_or_default();
        props.message_expiry_interval = Some(u32::try_from(secs).unwrap_or(u32::MAX).max(1));
        self.props = Some(Arc::new(props));
        self
    }

    /// Bytes it counts against queue bounds.
    pub fn bytes(&self) -> usize {
        OVERHEAD + self.topic.len() + self.payload.len()
    }

    fn packet(&self, pkid: u16, dup: bool) -> Packet {
        Packet::Publish(Box::new(PublishOut {
            topic: self.topic.clone(),
            payload: self.payload.clone(),
            qos: self.qos,
            pkid,
            retain: self.retain,
            dup,
            props: self.props.clone(),
            sub_ids: self.sub_ids.clone(),
            alias: None,
        }))
    }
}

/// What happened to a pushed delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Queued.
    Queued,
    /// A QoS 0 delivery did not fit and was dropped.
    DroppedQos0,
    /// A QoS 1/2 delivery did not fit: dropped, and the session's client is to be disconnected.
    Overflow,
}

#[derive(Debug)]
enum Phase {
    /// PUBLISH sent, PUBACK (QoS 1) or PUBREC (QoS 2) awaited.
    Published,
    /// PUBREL sent, PUBCOMP awaited.
    Released,
}

#[derive(Debug)]
struct InFlight {
    pkid: u16,
    phase: Phase,
    msg: Delivery,
}

/// Queue bounds shared by every outbox.
#[derive(Debug)]
pub struct Bounds {
    /// Most bytes queued in one session.
    pub per_session: usize,
    /// Most bytes queued in all sessions.
    pub total: usize,
    /// Bytes queued in all sessions now.
    pub queued: AtomicUsize,
}

/// The sans-IO outbound state of one session.
#[derive(Debug)]
pub struct OutQueue {
    queue: VecDeque<Delivery>,
    queued_bytes: usize,
    inflight: VecDeque<InFlight>,
    next_pkid: u16,
    /// Most QoS 1/2 deliveries in flight (the client's receive maximum, capped by config).
    max_inflight: usize,
    /// The client's maximum packet size (MQTT 5), 0: none.
    max_packet: usize,
    /// Which connection owns the session; bumped when a connection takes it over.
    owner: u64,
    /// No connection owns it now.
    away: bool,
    /// Why its connection must close (slow subscriber), taken by that connection.
    kick: Option<&'static str>,
    /// Deliveries too large for the client's maximum packet size, not yet counted.
    too_large: u64,
    /// Deliveries whose message expiry passed while queued, not yet counted.
    expired: u64,
}

impl OutQueue {
    fn new() -> Self {
        Self {
            queue: VecDeque::new(),
            queued_bytes: 0,
            inflight: VecDeque::new(),
            next_pkid: 0,
            max_inflight: 1,
            max_packet: 0,
            owner: 0,
            away: true,
            kick: None,
            too_large: 0,
            expired: 0,
        }
    }

    /// Queues `d` within `bounds`. QoS 0 is not queued for a session whose client is away
    /// (MQTT 3.1.1 §3.1.2.4 leaves it to the server; counted as dropped).
    pub fn push(&mut self, d: Delivery, bounds: &Bounds) -> Pushed {
        if d.qos == 0 && self.away {
            return Pushed::DroppedQos0;
        }
        let n = d.bytes();
        let over_session = self.queued_bytes + n > bounds.per_session;
        let over_total = bounds.queued.load(Ordering::Relaxed) + n > bounds.total;
        if over_session || over_total {
            if d.qos == 0 {
                return Pushed::DroppedQos0;
            }
            // Make room by dropping queued QoS 0 first; if still no room, the client is too slow.
            if self.shed_qos0(n, bounds) {
                self.queue_one(d, n, bounds);
                return Pushed::Queued;
            }
            if !self.away {
                self.kick = Some("subscriber too slow: its queue is full");
            }
            return Pushed::Overflow;
        }
        self.queue_one(d, n, bounds);
        Pushed::Queued
    }

    fn queue_one(&mut self, d: Delivery, n: usize, bounds: &Bounds) {
        self.queued_bytes += n;
        bounds.queued.fetch_add(n, Ordering::Relaxed);
        self.queue.push_back(d);
    }

    /// Drops queued QoS 0 deliveries until `n` more bytes fit; `false` if they cannot.
    fn shed_qos0(&mut self, n: usize, bounds: &Bounds) -> bool {
        let qos0: usize = self
            .queue
            .iter()
            .filter(|d| d.qos == 0)
            .map(Delivery::bytes)
            .sum();
        let fits = |queued: usize, total: usize| {
            queued + n <= bounds.per_session && total + n <= bounds.total
        };
        let total = bounds.queued.load(Ordering::Relaxed);
        if !fits(self.queued_bytes - qos0, total - qos0.min(total)) {
            return false;
        }
        let mut freed = 0;
        self.queue.retain(|d| {
            let drop = d.qos == 0 && !fits(self.queued_bytes - freed, total - freed.min(total));
            if drop {
                freed += d.bytes();
            }
            !drop
        });
        self.queued_bytes -= freed;
        bounds.queued.fetch_sub(freed, Ordering::Relaxed);
        true
    }

    /// Moves queued deliveries into `out` as PUBLISH packets while the in-flight window allows.
    pub fn take(&mut self, bounds: &Bounds, out: &mut Vec<Packet>) {
        while self.inflight.len() < self.max_inflight
            || self.queue.front().is_some_and(|d| d.qos == 0)
        {
            let Some(d) = self.queue.pop_front() else {
                break;
            };
            let n = d.bytes();
            self.queued_bytes -= n;
            bounds.queued.fetch_sub(n, Ordering::Relaxed);
            if self.max_packet > 0 && d.packet_len() > self.max_packet {
                // MQTT 5 §3.1.2.11.4: never sent; it counts as delivered.
                self.too_large += 1;
                continue;
            }
            let d = match d.expires {
                None => d,
                Some(at) => match at.checked_duration_since(std::time::Instant::now()) {
                    // MQTT 5 §3.3.2.3.3: an expired message is not delivered ...
                    None => {
                        self.expired += 1;
                        continue;
                    }
                    // ... and the rest of its interval goes with it.
                    Some(left) => d.with_expiry(left),
                },
            };
            if d.qos == 0 {
                out.push(d.packet(0, false));
                continue;
            }
            let pkid = self.next_free_pkid();
            out.push(d.packet(pkid, false));
            self.inflight.push_back(InFlight {
                pkid,
                phase: Phase::Published,
                msg: d,
            });
        }
    }

    fn next_free_pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
            let id = self.next_pkid;
            if !self.inflight.iter().any(|f| f.pkid == id) {
                return id;
            }
        }
    }

    /// PUBACK from the client: `true` if it settled a QoS 1 delivery.
    pub fn puback(&mut self, pkid: u16) -> bool {
        self.settle(pkid, |f| {
            matches!(f.phase, Phase::Published) && f.msg.qos == 1
        })
    }

    /// PUBREC from the client: the delivery awaits PUBCOMP now. The caller answers with
    /// PUBREL either way (MQTT 5 answers an unknown id with PUBREL too, reason "packet
    /// identifier not found"; we answer plainly).
    pub fn pubrec(&mut self, pkid: u16) {
        if let Some(f) = self.inflight.iter_mut().find(|f| f.pkid == pkid) {
            f.phase = Phase::Released;
        }
    }

    /// PUBCOMP from the client: `true` if it settled a QoS 2 delivery.
    pub fn pubcomp(&mut self, pkid: u16) -> bool {
        self.settle(pkid, |f| matches!(f.phase, Phase::Released))
    }

    /// PUBCOMP, or a PUBREC whose reason code refused the message (MQTT 5 §4.3.3: that ends
    /// the exchange): the delivery is settled either way.
    pub fn pubcomp_or_refused(&mut self, pkid: u16) -> bool {
        self.settle(pkid, |f| f.msg.qos == 2)
    }

    fn settle(&mut self, pkid: u16, ok: impl Fn(&InFlight) -> bool) -> bool {
        match self.inflight.iter().position(|f| f.pkid == pkid && ok(f)) {
            Some(i) => {
                self.inflight.remove(i);
                true
            }
            None => false,
        }
    }

    /// On a resumed session: what was in flight, again (PUBLISH with DUP, or PUBREL).
    fn resend(&mut self, out: &mut Vec<Packet>) {
        for f in &self.inflight {
            out.push(match f.phase {
                Phase::Published => f.msg.packet(f.pkid, true),
                Phase::Released => Packet::PubRel(f.pkid),
            });
        }
    }

    /// The queue, the deliveries in flight (packet id, PUBREL sent, delivery) and the last
    /// packet id used: what a snapshot keeps.
    pub fn image(&self) -> (Vec<Delivery>, Vec<(u16, bool, Delivery)>, u16) {
        let inflight = self
            .inflight
            .iter()
            .map(|f| (f.pkid, matches!(f.phase, Phase::Released), f.msg.clone()))
            .collect();
        (
            self.queue.iter().cloned().collect(),
            inflight,
            self.next_pkid,
        )
    }

    /// Restores what a snapshot kept (the queue counts against `bounds` again).
    pub fn restore(
        &mut self,
        queue: Vec<Delivery>,
        inflight: Vec<(u16, bool, Delivery)>,
        next_pkid: u16,
        bounds: &Bounds,
    ) {
        for d in queue {
            let n = d.bytes();
            self.queue_one(d, n, bounds);
        }
        self.inflight = inflight
            .into_iter()
            .map(|(pkid, released, msg)| InFlight {
                pkid,
                phase: if released {
                    Phase::Released
                } else {
                    Phase::Published
                },
                msg,
            })
            .collect();
        self.next_pkid = next_pkid;
    }

    /// Bytes queued (not in flight).
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Deliveries in flight.
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    fn clear(&mut self, bounds: &Bounds) {
        bounds
            .queued
            .fetch_sub(self.queued_bytes, Ordering::Relaxed);
        self.queued_bytes = 0;
        self.queue.clear();
        self.inflight.clear();
    }
}

/// One session's outbound state, shared by the broker (which pushes) and the connection that
/// owns the session (which takes and settles).
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<OutQueue>,
    wake: Notify,
    /// Told when the owning connection must close (taken over, too slow), so a connection
    /// blocked writing to a client that stopped reading still notices.
    kicked: Notify,
}

/// A connection's claim on an outbox: only the current owner takes from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim(u64);

impl Default for Outbox {
    fn default() -> Self {
        Self {
            state: Mutex::new(OutQueue::new()),
            wake: Notify::new(),
            kicked: Notify::new(),
        }
    }
}

impl Outbox {
    /// The locked state. A poisoned lock (a panic while holding it) is taken over: the state
    /// is a queue that stays consistent between statements.
    pub fn lock(&self) -> MutexGuard<'_, OutQueue> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Wakes the owning connection.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Resolves when something was pushed or the session was taken over since the last call.
    /// Cancel-safe (a `Notify` permit is kept until consumed).
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Tells the owning connection to close (after a push overflowed its queue).
    pub fn kick(&self) {
        self.kicked.notify_one();
        self.wake.notify_one();
    }

    /// Resolves with the reason once `claim` must close: taken over, or too slow.
    /// Cancel-safe.
    pub async fn kicked(&self, claim: Claim) -> &'static str {
        loop {
            if let Err(reason) = self.check(claim) {
                return reason;
            }
            self.kicked.notified().await;
        }
    }

    /// A connection takes the session: earlier owners are told to close, the window is set
    /// from the client's receive maximum and maximum packet size, and what was in flight is
    /// resent into `out`.
    pub fn claim(&self, max_inflight: usize, max_packet: usize, out: &mut Vec<Packet>) -> Claim {
        let mut q = self.lock();
        q.owner += 1;
        q.away = false;
        q.kick = None;
        q.max_inflight = max_inflight.max(1);
        q.max_packet = max_packet;
        q.resend(out);
        let claim = Claim(q.owner);
        drop(q);
        // An earlier owner still waiting wakes, sees it lost the claim and closes.
        self.wake.notify_waiters();
        self.kicked.notify_waiters();
        claim
    }

    /// Whether `claim` still owns the session, and if so why it must close (if it must).
    pub fn check(&self, claim: Claim) -> Result<(), &'static str> {
        let mut q = self.lock();
        if q.owner != claim.0 {
            return Err(TAKEN_OVER);
        }
        q.kick.take().map_or(Ok(()), Err)
    }

    /// The connection of `claim` ended; the session stays (persistent) until it is claimed
    /// again or discarded.
    pub fn release(&self, claim: Claim) {
        let mut q = self.lock();
        if q.owner == claim.0 {
            q.away = true;
        }
    }

    /// Ends the session: queued deliveries are dropped (returned count) and any owner is told
    /// to close.
    pub fn discard(&self, bounds: &Bounds) -> usize {
        let mut q = self.lock();
        let n = q.queue.len();
        q.clear(bounds);
        q.owner += 1;
        q.away = true;
        drop(q);
        self.wake.notify_waiters();
        self.wake.notify_one();
        self.kicked.notify_one();
        n
    }

    /// Whether a connection owns the session now.
    pub fn is_online(&self) -> bool {
        !self.lock().away
    }

    /// Deliveries not sent since the last call: too large for the client's maximum packet
    /// size, and expired (MQTT 5 message expiry).
    pub fn take_unsent(&self) -> (u64, u64) {
        let mut q = self.lock();
        (
            std::mem::take(&mut q.too_large),
            std::mem::take(&mut q.expired),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(per_session: usize, total: usize) -> Bounds {
        Bounds {
            per_session,
            total,
            queued: AtomicUsize::new(0),
        }
    }

    fn d(qos: u8, payload: &str) -> Delivery {
        Delivery {
            topic: Arc::from("t"),
            payload: Bytes::from(payload.to_string()),
            qos,
            retain: false,
            props: None,
            sub_ids: Vec::new(),
            expires: None,
        }
    }

    fn pkids(out: &[Packet]) -> Vec<(u16, bool)> {
        out.iter()
            .map(|o| match o {
                Packet::Publish(p) => (p.pkid, p.dup),
                Packet::PubRel(id) => (*id, false),
            })
            .collect()
    }

    #[test]
    fn the_in_flight_window_holds_back_qos1_but_not_qos0() {
        let b = bounds(1 << 20, 1 << 20);
        let ob = Outbox::default();
        let claim = ob.claim(2, 0, &mut Vec::new());
        let mut q = ob.lock();
        for p in ["a", "b", "c"] {
            assert_eq!(q.push(d(1, p), &b), Pushed::Queued);
        }
        q.push(d(0, "z"), &b);
        let mut out = Vec::new();
        q.take(&b, &mut out);
        assert_eq!(pkids(&out), [(1, false), (2, false)], "window of 2");
        out.clear();
        assert!(q.puback(1));
        assert!(!q.puback(1), "settled once");
        q.take(&b, &mut out);
        assert_eq!(pkids(&out), [(3, false), (0, false)]);
        assert_eq!(q.queued_bytes(), 0);
        assert_eq!(b.queued.load(Ordering::Relaxed), 0);
        drop(q);
        assert_eq!(ob.check(claim), Ok(()));
    }

    #[test]
    fn qos2_goes_through_pubrec_and_pubcomp() {
        let b = bounds(1 << 20, 1 << 20);
        let ob = Outbox::default();
        ob.claim(10, 0, &mut Vec::new());
        let mut q = ob.lock();
        q.push(d(2, "x"), &b);
        let mut out = Vec::new();
        q.take(&b, &mut out);
        assert!(!q.puback(1), "a PUBACK does not settle QoS 2");
        q.pubrec(1);
        assert!(q.pubcomp(1));
        assert_eq!(q.inflight(), 0);
    }

    #[test]
    fn a_resumed_session_resends_what_was_in_flight_with_dup() {
        let b = bounds(1 << 20, 1 << 20);
        let ob = Outbox::default();
        let first = ob.claim(10, 0, &mut Vec::new());
        {
            let mut q = ob.lock();
            q.push(d(1, "a"), &b);
            q.push(d(2, "b"), &b);
            let mut out = Vec::new();
            q.take(&b, &mut out);
            q.pubrec(2);
            q.push(d(1, "queued while away"), &b);
        }
        ob.release(first);
        assert!(!ob.is_online());
        let mut out = Vec::new();
        let second = ob.claim(10, 0, &mut out);
        assert_eq!(pkids(&out), [(1, true), (2, false)]);
        assert!(matches!(out[1], Packet::PubRel(2)));
        assert_eq!(ob.check(first), Err(TAKEN_OVER));
        assert_eq!(ob.check(second), Ok(()));
        out.clear();
        ob.lock().take(&b, &mut out);
        assert_eq!(pkids(&out), [(3, false)]);
    }

    #[test]
    fn a_full_queue_drops_qos0_first_then_kicks_the_slow_client() {
        let one = d(1, "x").bytes();
        let b = bounds(3 * one, 1 << 20);
        let ob = Outbox::default();
        let claim = ob.claim(1, 0, &mut Vec::new());
        let mut q = ob.lock();
        assert_eq!(q.push(d(0, "x"), &b), Pushed::Queued);
        assert_eq!(q.push(d(1, "x"), &b), Pushed::Queued);
        assert_eq!(q.push(d(1, "x"), &b), Pushed::Queued);
        assert_eq!(q.push(d(0, "x"), &b), Pushed::DroppedQos0);
        assert_eq!(
            q.push(d(1, "x"), &b),
            Pushed::Queued,
            "the queued QoS 0 made room"
        );
        assert_eq!(q.push(d(1, "x"), &b), Pushed::Overflow);
        drop(q);
        assert_eq!(
            ob.check(claim),
            Err("subscriber too slow: its queue is full")
        );
        assert_eq!(b.queued.load(Ordering::Relaxed), 3 * one);
        assert_eq!(ob.discard(&b), 3);
        assert_eq!(b.queued.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_total_bound_holds_across_sessions() {
        let one = d(1, "x").bytes();
        let b = bounds(10 * one, 2 * one);
        let (x, y) = (Outbox::default(), Outbox::default());
        assert_eq!(x.lock().push(d(1, "x"), &b), Pushed::Queued);
        assert_eq!(y.lock().push(d(1, "x"), &b), Pushed::Queued);
        assert_eq!(
            y.lock().push(d(1, "x"), &b),
            Pushed::Overflow,
            "away: counted, no kick"
        );
    }

    #[test]
    fn an_expired_message_is_not_delivered_and_a_live_one_carries_what_is_left() {
        let b = bounds(1 << 20, 1 << 20);
        let ob = Outbox::default();
        ob.claim(10, 0, &mut Vec::new());
        let now = std::time::Instant::now();
        let mut q = ob.lock();
        let mut gone = d(1, "old");
        gone.expires = now.checked_sub(std::time::Duration::from_secs(1));
        let mut live = d(1, "new");
        live.expires = Some(now + std::time::Duration::from_millis(90_500));
        q.push(gone, &b);
        q.push(live, &b);
        let mut out = Vec::new();
        q.take(&b, &mut out);
        let [Packet::Publish(p)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(&p.payload[..], b"new");
        let left = p.props.as_ref().and_then(|p| p.message_expiry_interval);
        assert!(matches!(left, Some(90 | 91)), "{left:?}");
        drop(q);
        assert_eq!(ob.take_unsent(), (0, 1));
    }

    #[test]
    fn deliveries_over_the_clients_packet_limit_are_skipped() {
        let b = bounds(1 << 20, 1 << 20);
        let ob = Outbox::default();
        ob.claim(10, 100, &mut Vec::new());
        let mut q = ob.lock();
        q.push(d(1, &"x".repeat(200)), &b);
        q.push(d(1, "small"), &b);
        // PUBLISH of topic "t", QoS 1: 8 bytes + payload; 92 fit in 100, 93 do not.
        q.push(d(1, &"x".repeat(92)), &b);
        q.push(d(1, &"x".repeat(93)), &b);
        let mut out = Vec::new();
        q.take(&b, &mut out);
        assert_eq!(pkids(&out), [(1, false), (2, false)]);
        drop(q);
        assert_eq!(ob.take_unsent(), (2, 0));
    }
}
