//! The WAL writer: one OS thread (so `write` and `fdatasync` never block an async worker)
//! that owns the [`Log`]. Sources hand it groups of decoded messages through a [`WalHandle`];
//! it frames them, writes everything that is waiting in one `write`, and makes it durable with
//! one `fdatasync` (group commit). Only then are their senders told (so MQTT acks go out
//! after the fsync) and the groups passed on to the batcher, in sequence order.
//!
//! `wal.sync_interval` is the shortest time between the starts of two fsyncs: a record
//! arriving sooner waits for the interval to end, gathering others into the same sync. A
//! record arriving on an idle log is synced at once.
//!
//! A full volume (`ENOSPC` on write) is not an error for the senders: the partial write is cut
//! back, the records stay staged, nobody is told, and the write is retried every second until
//! it fits (MQTT connections meanwhile withhold acks and stop reading). While it is full,
//! groups whose sender can say "not stored" (MQTT 5: PUBACK 0x97) are handed back at once
//! instead of queueing. Any other write error
//! and every fsync error end the thread with the error: the daemon exits and a restart replays
//! the log. An fsync is never retried.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self as std_mpsc, RecvTimeoutError, SyncSender, TryRecvError};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::durable::{Admitted, Done, NotStored};
use super::fs::WalFs;
use super::log::Log;
use super::record;
use crate::decode::{Props, Source};
use crate::telemetry::{Heartbeats, Stage, Stats};
use bytes::Bytes;

/// Most bytes written per round, so one round's latency stays bounded under a flood.
const ROUND_BYTES: usize = 8 << 20;
/// How often a full disk is retried, and the idle wake-up for releasing segments.
const RETRY: Duration = Duration::from_secs(1);
/// A round that keeps the writer longer than this is logged (debug, `fleetlake::wal`) with
/// where its time went: the trace behind the tail of the ack latency.
const SLOW_ROUND: Duration = Duration::from_millis(4);

/// A group of messages from one client to make durable.
#[derive(Debug)]
pub struct Append {
    /// Client id of the sender (kept in each record, so replay decodes the same rows).
    pub client: Arc<str>,
    /// The messages and the budget they hold.
    pub group: Admitted,
    /// Told once the group is durable and passed on, or that it was refused (see
    /// `refuse_when_full`; the group, and its budget, are then dropped). `None` when nobody
    /// waits (QoS 0).
    pub done: Option<Done>,
    /// While the volume is full, hand the group back instead of holding it.
    pub refuse_when_full: bool,
}

/// A durable message on its way to subscribers.
#[derive(Clone, Debug)]
pub struct Routed {
    /// WAL sequence number.
    pub seq: u64,
    /// Client id of the publisher (for no-local).
    pub origin: Arc<str>,
    /// Topic.
    pub topic: Arc<str>,
    /// Payload.
    pub payload: Bytes,
    /// QoS it was published with.
    pub qos: u8,
    /// RETAIN flag.
    pub retain: bool,
    /// MQTT 5 properties.
    pub props: Option<Arc<Props>>,
}

/// The WAL writer's end: which messages to hand over, and the channel.
#[derive(Debug, Clone)]
pub struct Feed {
    tx: SyncSender<Vec<Routed>>,
    active: Arc<AtomicBool>,
    holds: Arc<AtomicBool>,
}

impl Feed {
    /// Whether a message with this RETAIN flag is to be handed over (retained ones always;
    /// others while any subscription exists).
    pub fn wants(&self, retain: bool) -> bool {
        retain || self.active.load(Ordering::Acquire)
    }

    /// A feed over `tx`, handing over while `active` is set (and retained messages always),
    /// holding every round handed over while `holds` is set.
    pub fn new(
        tx: SyncSender<Vec<Routed>>,
        active: Arc<AtomicBool>,
        holds: Arc<AtomicBool>,
    ) -> Self {
        Self { tx, active, holds }
    }

    /// Whether every round handed over is to be held in the WAL until the broker's snapshot
    /// covers it (persistent sessions subscribe: a crash replays the round into them).
    pub fn holds(&self) -> bool {
        self.holds.load(Ordering::Acquire)
    }

    /// Hands over one round; waits while the channel is full. `false` once the fan-out ended.
    pub fn send(&self, round: Vec<Routed>) -> bool {
        self.tx.send(round).is_ok()
    }
}

/// Cloneable handle to the writer thread. The thread ends once every handle is dropped and
/// everything sent is written.
#[derive(Clone, Debug)]
pub struct WalHandle {
    tx: std_mpsc::Sender<Append>,
}

impl WalHandle {
    /// Queues a group (never blocks). `Err` gives it back when the writer has stopped.
    pub fn append(&self, append: Append) -> Result<(), Append> {
        self.tx.send(append).map_err(|e| e.0)
    }
}

/// How the writer thread ended: the log back (for the final release), or the fatal error.
pub type WriterResult<F> = Result<Log<F>, io::Error>;

/// What the writer thread works with besides the log.
#[derive(Debug)]
pub struct WriterParts {
    /// Where durable groups go (the batcher).
    pub out: mpsc::Sender<Admitted>,
    /// `wal.sync_interval`.
    pub sync_interval: Duration,
    /// Set by the publisher: segments wholly below it may be deleted.
    pub low_water: Arc<AtomicU64>,
    /// A low water takes effect only this long after it was first seen (0: at once). With a
    /// bridge, a published segment is kept a while: its records seed the redelivery filter
    /// after a crash, and acks for them may still be queued in the MQTT client.
    pub release_grace: Duration,
    /// Counters.
    pub stats: Arc<Stats>,
    /// The writer beats here at least once a second while alive (watchdog).
    pub heartbeats: Arc<Heartbeats>,
    /// The broker's fan-out: MQTT messages go there once fsynced (`None`: no broker role).
    pub fanout: Option<Feed>,
    /// No segment holding a record at or above this is deleted (retained messages the
    /// broker's snapshot does not cover yet); `u64::MAX`: no hold.
    pub hold: Arc<AtomicU64>,
}

/// Starts the writer thread. The returned receiver resolves when the thread ends.
pub fn spawn<F: WalFs>(
    log: Log<F>,
    parts: WriterParts,
) -> io::Result<(WalHandle, oneshot::Receiver<WriterResult<F>>)> {
    let WriterParts {
        out,
        sync_interval,
        low_water,
        release_grace,
        stats,
        heartbeats,
        fanout,
        hold,
    } = parts;
    let (tx, rx) = std_mpsc::channel();
    let (end_tx, end_rx) = oneshot::channel();
    let writer = Writer {
        log,
        rx,
        out,
        sync_interval,
        low_water,
        delay: ReleaseDelay::new(release_grace),
        released: 0,
        stats,
        waiting: Vec::new(),
        closed: false,
        full: false,
        heartbeats,
        fanout,
        hold,
        #[cfg(debug_assertions)]
        stall: StallHook::from_env(),
    };
    std::thread::Builder::new()
        .name("fleetlake-wal".into())
        .spawn(move || {
            let _ = end_tx.send(writer.run());
        })?;
    Ok((WalHandle { tx }, end_rx))
}

/// Holds segment deletion back by a grace period (sans-IO: it is given the time): a low water
/// takes effect once it is `grace` old.
#[derive(Debug)]
struct ReleaseDelay {
    grace: Duration,
    /// Low waters seen, increasing, with when they were first seen.
    seen: VecDeque<(Instant, u64)>,
}

impl ReleaseDelay {
    fn new(grace: Duration) -> Self {
        Self {
            grace,
            seen: VecDeque::new(),
        }
    }

    /// The newest low water that is at least `grace` old at `now`, if one became so.
    fn effective(&mut self, low_water: u64, now: Instant) -> Option<u64> {
        if self.grace.is_zero() {
            return Some(low_water);
        }
        if self.seen.back().is_none_or(|&(_, l)| l < low_water) {
            self.seen.push_back((now, low_water));
        }
        let mut ready = None;
        while let Some(&(at, l)) = self.seen.front() {
            if now.saturating_duration_since(at) < self.grace {
                break;
            }
            ready = Some(l);
            self.seen.pop_front();
        }
        ready
    }
}

struct Writer<F: WalFs> {
    log: Log<F>,
    rx: std_mpsc::Receiver<Append>,
    out: mpsc::Sender<Admitted>,
    sync_interval: Duration,
    low_water: Arc<AtomicU64>,
    delay: ReleaseDelay,
    released: u64,
    stats: Arc<Stats>,
    waiting: Vec<(Admitted, Option<Done>, Arc<str>)>,
    closed: bool,
    /// The last write failed for lack of space.
    full: bool,
    heartbeats: Arc<Heartbeats>,
    fanout: Option<Feed>,
    hold: Arc<AtomicU64>,
    #[cfg(debug_assertions)]
    stall: StallHook,
}

/// Test hook of debug builds only (the integration tests of the watchdog and of a full budget
/// run the debug binary): a record on the topic in `FLEETLAKE_TEST_STALL_TOPIC` hangs the
/// writer like a disk that never returns from fsync. Release builds have no such check.
#[cfg(debug_assertions)]
#[derive(Debug)]
struct StallHook(Option<String>);

#[cfg(debug_assertions)]
impl StallHook {
    fn from_env() -> Self {
        Self(std::env::var("FLEETLAKE_TEST_STALL_TOPIC").ok())
    }

    fn check(&self, group: &Admitted) {
        let Some(topic) = &self.0 else { return };
        if group.msgs.iter().any(|m| m.topic == *topic) {
            tracing::warn!("test hook: the WAL writer hangs now");
            loop {
                std::thread::park();
            }
        }
    }
}

impl<F: WalFs> Writer<F> {
    fn run(mut self) -> WriterResult<F> {
        let mut last_sync: Option<Instant> = None;
        loop {
            self.heartbeats.beat(Stage::Wal);
            if self.waiting.is_empty() {
                if self.closed {
                    return Ok(self.log);
                }
                self.release();
                match self.rx.recv_timeout(RETRY) {
                    Ok(a) => self.stage(a),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return Ok(self.log),
                }
            }
            let due = last_sync.map(|t| t + self.sync_interval);
            self.gather(due);
            let round_started = Instant::now();
            let written = match self.log.write() {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::StorageFull => {
                    if !self.full {
                        self.full = true;
                        Stats::add(&self.stats.wal_disk_full, 1);
                        tracing::error!(
                            records = self
                                .waiting
                                .iter()
                                .map(|(g, _, _)| g.msgs.len())
                                .sum::<usize>(),
                            "WAL volume is full: acks are withheld and sources paused until space is freed"
                        );
                    }
                    if self.wait_while_full() {
                        tracing::error!(
                            groups = self.waiting.len(),
                            "shutting down with a full WAL volume: unwritten messages were never acknowledged"
                        );
                        return Ok(self.log);
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            if self.full {
                self.full = false;
                tracing::warn!("WAL volume has space again: acks resume");
            }
            // After a failed fsync the kernel may have dropped the dirty pages: exit, never retry.
            let sync_started = Instant::now();
            self.log.sync()?;
            let synced = Instant::now();
            self.stats.wal_sync_seconds.observe(synced - sync_started);
            last_sync = Some(sync_started);
            Stats::add(&self.stats.wal_syncs, 1);
            Stats::add(&self.stats.wal_bytes, written as u64);
            // The fan-out has the round before any publisher hears of it (a retained message
            // is queued for routing before its PUBACK); then the acks, which never wait on a
            // batcher that is busy building Arrow batches (its channel full).
            self.hand_to_broker()?;
            let handed = Instant::now();
            for (_, done, _) in &mut self.waiting {
                if let Some(done) = done.take() {
                    let _ = done.send(Ok(()));
                }
            }
            let acked = Instant::now();
            // One send to the batcher per sync, not per group: a busy round carries hundreds
            // of small groups, and each send may wake the batcher's thread.
            let mut merged: Option<Admitted> = None;
            for (mut group, _, _) in self.waiting.drain(..) {
                match &mut merged {
                    None => merged = Some(group),
                    Some(m) => {
                        m.msgs.append(&mut group.msgs);
                        m.held.merge(group.held);
                    }
                }
            }
            let records = merged.as_ref().map_or(0, |m| m.msgs.len());
            Stats::add(&self.stats.wal_records, records as u64);
            if let Some(merged) = merged
                && self.out.blocking_send(merged).is_err()
            {
                return Err(io::Error::other("the batcher stopped"));
            }
            let batched = Instant::now();
            let rotated = self.log.rotate_if_full()?;
            self.release();
            let ended = Instant::now();
            if ended - round_started >= SLOW_ROUND {
                let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
                tracing::debug!(
                    records,
                    bytes = written,
                    write_ms = ms(round_started, sync_started),
                    fsync_ms = ms(sync_started, synced),
                    fanout_ms = ms(synced, handed),
                    acks_ms = ms(handed, acked),
                    batcher_ms = ms(acked, batched),
                    rotate_release_ms = ms(batched, ended),
                    rotated,
                    "slow WAL round"
                );
            }
        }
    }

    fn stage(&mut self, a: Append) {
        let Append {
            client,
            mut group,
            done,
            refuse_when_full,
        } = a;
        if self.full
            && refuse_when_full
            && let Some(done) = done
        {
            drop(group); // and with it, its budget
            let _ = done.send(Err(NotStored::Full));
            return;
        }
        #[cfg(debug_assertions)]
        self.stall.check(&group);
        for msg in &mut group.msgs {
            // Allocated only for messages with MQTT 5 properties.
            let props = msg.mqtt.props.as_deref().map(crate::decode::props::encode);
            let head = match msg.source {
                Source::Mqtt | Source::Bridge => record::Head {
                    source: msg.source,
                    qos: msg.mqtt.qos,
                    retain: msg.mqtt.retain,
                    pkid: (msg.mqtt.pkid != 0).then_some(msg.mqtt.pkid),
                    props: props.as_deref(),
                },
                Source::Grpc => record::Head::of(Source::Grpc),
            };
            msg.seq = self
                .log
                .stage(head, msg.received_at, &client, &msg.topic, &msg.payload);
        }
        self.waiting.push((group, done, client));
    }

    /// Hands the fsynced MQTT messages to the broker's fan-out (in sequence order). A retained
    /// one holds its segment until the broker's snapshot has it.
    fn hand_to_broker(&mut self) -> io::Result<()> {
        let Some(feed) = &self.fanout else {
            return Ok(());
        };
        let mut round = Vec::new();
        for (group, _, client) in &self.waiting {
            for m in &group.msgs {
                if matches!(m.source, Source::Grpc) || !feed.wants(m.mqtt.retain) {
                    continue;
                }
                if m.mqtt.retain {
                    self.hold.fetch_min(m.seq, Ordering::AcqRel);
                }
                round.push(Routed {
                    seq: m.seq,
                    origin: client.clone(),
                    topic: Arc::from(m.topic.as_str()),
                    payload: m.payload.clone(),
                    qos: m.mqtt.qos,
                    retain: m.mqtt.retain,
                    props: m.mqtt.props.clone(),
                });
            }
        }
        if feed.holds()
            && let Some(first) = round.first()
        {
            self.hold.fetch_min(first.seq, Ordering::AcqRel);
        }
        if !round.is_empty() && !feed.send(round) {
            return Err(io::Error::other("the broker's fan-out stopped"));
        }
        Ok(())
    }

    /// Stages what else is queued, waiting until `due` (the earliest next sync) for more.
    fn gather(&mut self, due: Option<Instant>) {
        while self.log.staged_bytes() < ROUND_BYTES {
            match self.rx.try_recv() {
                Ok(a) => {
                    self.stage(a);
                    continue;
                }
                Err(TryRecvError::Disconnected) => {
                    self.closed = true;
                    return;
                }
                Err(TryRecvError::Empty) => {}
            }
            let now = Instant::now();
            let Some(due) = due.filter(|&d| d > now) else {
                return;
            };
            match self.rx.recv_timeout(due - now) {
                Ok(a) => self.stage(a),
                Err(RecvTimeoutError::Timeout) => return,
                Err(RecvTimeoutError::Disconnected) => {
                    self.closed = true;
                    return;
                }
            }
        }
    }

    /// Waits [`RETRY`] (staging what arrives); `true` when every source is gone, so waiting
    /// longer is pointless.
    fn wait_while_full(&mut self) -> bool {
        let until = Instant::now() + RETRY;
        loop {
            let now = Instant::now();
            if now >= until {
                return false;
            }
            match self.rx.recv_timeout(until - now) {
                Ok(a) => self.stage(a),
                Err(RecvTimeoutError::Timeout) => return false,
                Err(RecvTimeoutError::Disconnected) => return true,
            }
        }
    }

    /// Deletes segments the checkpoint no longer needs. A failed delete is retried with
    /// the next release (the records in it are skipped on replay anyway).
    fn release(&mut self) {
        let seen = self.low_water.load(Ordering::Acquire);
        let Some(lw) = self.delay.effective(seen, Instant::now()) else {
            return;
        };
        // Segments the broker still needs stay (a later release deletes them).
        let lw = lw.min(self.hold.load(Ordering::Acquire));
        if lw > self.released {
            match self.log.release(lw, false) {
                Ok(n) => {
                    self.released = lw;
                    Stats::add(&self.stats.wal_segments_released, n as u64);
                }
                Err(e) => tracing::warn!(error = %e, "cannot delete a released WAL segment"),
            }
        }
    }
}

#[cfg(test)]
mod delay_tests {
    use super::*;

    #[test]
    fn a_low_water_takes_effect_only_after_the_grace() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut d = ReleaseDelay::new(10 * s);
        assert_eq!(d.effective(5, t0), None);
        assert_eq!(d.effective(9, t0 + 4 * s), None);
        assert_eq!(
            d.effective(9, t0 + 10 * s),
            Some(5),
            "5 is 10 s old, 9 is not"
        );
        assert_eq!(
            d.effective(9, t0 + 11 * s),
            None,
            "nothing new became old enough"
        );
        assert_eq!(d.effective(12, t0 + 14 * s), Some(9));
        assert_eq!(d.effective(12, t0 + 30 * s), Some(12));
        let mut now = ReleaseDelay::new(Duration::ZERO);
        assert_eq!(now.effective(7, t0), Some(7), "no grace: at once");
    }
}
