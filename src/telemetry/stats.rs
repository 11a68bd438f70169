//! Process-wide counters. Each is a monotonic `AtomicU64` (relaxed: they are statistics, not
//! synchronisation). Names follow `fleetlake_<name>_<unit>_total` once exported. Beside them:
//! latency histograms, the open-connections gauge, rejections by reason and per-table output
//! counts (exported with labels).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::decode::RejectReason;

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident),* $(,)?) => {
        /// Counters of the whole daemon, with histograms, gauges and labelled counts.
        pub struct Stats {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
            /// Duration of WAL fsyncs.
            pub wal_sync_seconds: Histogram,
            /// MQTT: from reading a group of QoS 1/2 messages to writing their acks.
            pub mqtt_ack_seconds: Histogram,
            /// Time to sort, encode and write one batch's Parquet files.
            pub encode_seconds: Histogram,
            /// Time to commit one batch's files to its Delta table (log replay included).
            pub delta_commit_seconds: Histogram,
            /// MQTT connections open now (a gauge).
            pub connections_open: AtomicU64,
            /// Bytes of files waiting in the spool (a gauge).
            pub spool_bytes: AtomicU64,
            /// Files waiting in the spool (a gauge).
            pub spool_files: AtomicU64,
            /// When the oldest spooled file entered the spool, seconds since the epoch; 0: none.
            pub spool_oldest_unix: AtomicU64,
            /// Broker subscriptions held (a gauge).
            pub broker_subscriptions: AtomicU64,
            /// Broker sessions: connected ones and persistent ones whose client is away (a gauge).
            pub broker_sessions: AtomicU64,
            /// Retained messages held (a gauge).
            pub broker_retained: AtomicU64,
            /// Bytes queued for subscribers (a gauge).
            pub broker_queued_bytes: AtomicU64,
            /// Failed uploads by [`UploadErrorKind`] (in `UploadErrorKind::ALL` order).
            upload_errors: [AtomicU64; UploadErrorKind::ALL.len()],
            /// Messages sent to `_rejected`, by [`RejectReason`] (in `RejectReason::ALL` order).
            rejected: [AtomicU64; RejectReason::ALL.len()],
            /// Files, rows and bytes published per table.
            tables: Mutex<BTreeMap<String, TableCounts>>,
        }

        impl Default for Stats {
            fn default() -> Self {
                Self {
                    $($name: AtomicU64::new(0),)*
                    wal_sync_seconds: Histogram::new(&SYNC_BUCKETS),
                    mqtt_ack_seconds: Histogram::new(&SYNC_BUCKETS),
                    encode_seconds: Histogram::new(&ENCODE_BUCKETS),
                    delta_commit_seconds: Histogram::new(&ENCODE_BUCKETS),
                    connections_open: AtomicU64::new(0),
                    spool_bytes: AtomicU64::new(0),
                    spool_files: AtomicU64::new(0),
                    spool_oldest_unix: AtomicU64::new(0),
                    broker_subscriptions: AtomicU64::new(0),
                    broker_sessions: AtomicU64::new(0),
                    broker_retained: AtomicU64::new(0),
                    broker_queued_bytes: AtomicU64::new(0),
                    upload_errors: Default::default(),
                    rejected: Default::default(),
                    tables: Mutex::default(),
                }
            }
        }

        impl Stats {
            /// Calls `f(name, help, value)` for every counter.
            pub fn each(&self, mut f: impl FnMut(&'static str, &'static str, u64)) {
                $(f(stringify!($name), concat!($($doc),*).trim_ascii(), self.$name.load(Ordering::Relaxed));)*
            }
        }

        impl fmt::Debug for Stats {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut s = f.debug_struct("Stats");
                $(s.field(stringify!($name), &self.$name.load(Ordering::Relaxed));)*
                s.finish()
            }
        }
    };
}

/// What one table has published.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableCounts {
    /// Parquet files.
    pub files: u64,
    /// Rows in them.
    pub rows: u64,
    /// Bytes of them.
    pub bytes: u64,
}

counters! {
    /// TCP connections accepted.
    connections_accepted,
    /// Connections closed at once because `mqtt.max_connections` was reached.
    connections_refused,
    /// Connections closed at once because `mqtt.max_connections_per_ip` was reached.
    connections_refused_per_ip,
    /// Connections closed at once because of `mqtt.connect_rate`.
    connections_refused_rate,
    /// TLS handshakes completed (MQTT TLS listener and gRPC with TLS).
    tls_handshakes,
    /// TLS handshakes failed or timed out (`mqtt.tls.handshake_timeout`).
    tls_handshake_failures,
    /// CONNECT refused: unknown user or wrong password.
    auth_refused_credentials,
    /// CONNECT refused: no credentials and anonymous access off.
    auth_refused_anonymous,
    /// CONNECT refused: the identity chosen by `mqtt.auth.identity` was missing.
    auth_refused_identity,
    /// PUBLISH refused by the ACL (MQTT 5: reason 0x87; 3.1.1: disconnected).
    publish_denied_acl,
    /// PUBLISH refused: its topic names another device (authenticated, no ACL).
    publish_denied_device,
    /// Sessions disconnected for more QoS 2 messages awaiting PUBREL than `mqtt.max_inflight`.
    sessions_over_inflight,
    /// Connections ended by a protocol error, timeout or oversized packet.
    connections_failed,
    /// PUBLISH packets received with QoS 0.
    messages_qos0,
    /// PUBLISH packets received with QoS 1.
    messages_qos1,
    /// PUBLISH packets received with QoS 2.
    messages_qos2,
    /// QoS 1/2 PUBLISH resends of a message already stored (after a lost ack, a dropped
    /// connection or a crash): acknowledged, not stored twice.
    messages_resends_skipped,
    /// Will messages ingested.
    messages_will,
    /// QoS 0 messages dropped because the budget was full and `qos0_when_full = "shed"`.
    messages_shed,
    /// QoS 1/2 messages refused with MQTT 5 reason 0x97 because the WAL volume was full.
    messages_refused_disk_full,
    /// gRPC write requests received (unary, and each request of a stream).
    grpc_requests,
    /// gRPC requests refused with INVALID_ARGUMENT for bad points (nothing stored).
    grpc_requests_invalid,
    /// gRPC requests refused with RESOURCE_EXHAUSTED: budget or WAL volume full.
    grpc_requests_busy,
    /// gRPC requests refused with UNAUTHENTICATED (unknown token, no credentials).
    grpc_unauthenticated,
    /// gRPC requests refused with PERMISSION_DENIED (points of another device).
    grpc_permission_denied,
    /// gRPC points stored (durable and acknowledged).
    grpc_points,
    /// Payload bytes received.
    payload_bytes,
    /// Messages stored in `_rejected` (bad payload, unknown topic, type conflict).
    messages_rejected,
    /// Payload fields left out of their rows because no declared column takes them, in tables
    /// with `unknown_fields = "drop"`.
    fields_dropped,
    /// Rows whose time was outside the `[clock]` window (re-timed, rejected or accepted, as
    /// `clock.out_of_range` says).
    rows_out_of_range,
    /// Files deleted by retention (`output.retain_*`, `output.rejected_max_bytes`).
    files_expired,
    /// Bytes of the files deleted by retention.
    bytes_expired,
    /// Rows put into the per-table buffers (Arrow builders) by the batcher.
    buffer_rows_pushed,
    /// Rows taken out of the buffers in finished batches (pushed − popped = buffered now).
    buffer_rows_popped,
    /// Parquet files published.
    files_published,
    /// Rows in published files.
    rows_published,
    /// Bytes of published files.
    bytes_published,
    /// Failed publish attempts (retried).
    publish_errors,
    /// Delta commits made (`output.table_format = "delta"`): one per batch, with its files.
    delta_commits,
    /// Batches whose commit the Delta log already held (a replay after a crash): nothing added.
    delta_commits_skipped,
    /// Delta commits that lost the race for a version to another writer (retried on top of it).
    delta_commit_conflicts,
    /// Delta log checkpoints written.
    delta_checkpoints,
    /// Compaction commits: an hour's small files of this node replaced by one file.
    delta_compactions,
    /// Files replaced by compaction (removed from their table; deleted at vacuum).
    delta_files_compacted,
    /// Bytes of files read back by compaction (from the disk or the object store).
    delta_compaction_bytes_read,
    /// Bytes of files written by compaction.
    delta_compaction_bytes_written,
    /// Replaced files deleted by vacuum (`output.delta.vacuum_after` after their removal).
    delta_files_vacuumed,
    /// Files uploaded to the object store (or found there already, same size) and removed from the spool.
    files_uploaded,
    /// Bytes of uploaded files.
    upload_bytes,
    /// Spooled files deleted unsent by `output.spool_full = "drop_oldest"`.
    spool_files_dropped,
    /// Bytes of spooled files deleted unsent.
    spool_bytes_dropped,
    /// Rows in spooled files deleted unsent.
    spool_rows_dropped,
    /// Times the spool reached its quota with `output.spool_full = "pause"` and new data waited.
    spool_pauses,
    /// Messages received from external brokers (`[[bridge]]`).
    bridge_messages,
    /// Bridge connections established (first connects and reconnects).
    bridge_connections,
    /// Failed or lost bridge connections (each is retried with backoff).
    bridge_connection_errors,
    /// Messages a broker delivered again (DUP) that the bridge had already stored: acknowledged, not stored twice.
    bridge_redeliveries_skipped,
    /// Subscriptions granted (SUBSCRIBE filters accepted, re-subscriptions included).
    broker_subscribes,
    /// SUBSCRIBE filters refused (invalid, denied by the ACL, over `broker.max_subscriptions`).
    broker_subscribes_refused,
    /// Messages delivered to subscribers with QoS 0.
    broker_delivered_qos0,
    /// Messages delivered to subscribers with QoS 1.
    broker_delivered_qos1,
    /// Messages delivered to subscribers with QoS 2.
    broker_delivered_qos2,
    /// QoS 0 deliveries dropped because the subscriber's queue was full or it was away.
    broker_dropped_qos0,
    /// QoS 1/2 deliveries dropped because the subscriber's queue was full (its client is disconnected).
    broker_dropped_qos12,
    /// Deliveries not sent because they exceed the subscriber's maximum packet size (MQTT 5).
    broker_dropped_too_large,
    /// Deliveries not sent because their MQTT 5 message expiry passed while they were queued.
    broker_dropped_expired,
    /// Subscribers disconnected because their queue was full (too slow).
    broker_slow_disconnects,
    /// Deliveries not made because the ACL denies the subscriber reading the topic (a
    /// wildcard subscription granted by a read rule, with a `deny` rule inside it).
    broker_denied_acl,
    /// Queued deliveries dropped with a session that ended (clean session, takeover with clean start).
    broker_messages_discarded,
    /// Retained messages not kept: `broker.retained_max` or `broker.retained_max_bytes` reached.
    broker_retained_refused,
    /// Records appended to the WAL.
    wal_records,
    /// Bytes appended to the WAL.
    wal_bytes,
    /// WAL fsyncs (each makes every record written before it durable).
    wal_syncs,
    /// Times an append failed because the WAL volume was full (acks withheld meanwhile).
    wal_disk_full,
    /// WAL segments deleted once every record in them was in a published file.
    wal_segments_released,
    /// Records replayed from the WAL at start.
    wal_replayed,
    /// Segments whose replay stopped early at a torn or corrupt record.
    wal_damaged_segments,
}

impl Stats {
    /// Sets a gauge.
    pub fn set_gauge(&self, gauge: &AtomicU64, value: usize) {
        gauge.store(value as u64, Ordering::Relaxed);
    }

    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one message sent to `_rejected` (in total and by reason).
    pub fn reject(&self, why: RejectReason) {
        Self::add(&self.messages_rejected, 1);
        if let Some(i) = RejectReason::ALL.iter().position(|&r| r == why) {
            Self::add(&self.rejected[i], 1);
        }
    }

    /// Rejections by reason, every reason listed.
    pub fn rejected_by_reason(&self) -> Vec<(RejectReason, u64)> {
        RejectReason::ALL
            .iter()
            .zip(&self.rejected)
            .map(|(&r, n)| (r, n.load(Ordering::Relaxed)))
            .collect()
    }

    /// Counts one published file of `table` (once per file: a map lookup is cheap there).
    pub fn published(&self, table: &str, rows: u64, bytes: u64) {
        Self::add(&self.files_published, 1);
        Self::add(&self.rows_published, rows);
        Self::add(&self.bytes_published, bytes);
        let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        let t = match tables.get_mut(table) {
            Some(t) => t,
            None => tables.entry(table.to_string()).or_default(),
        };
        t.files += 1;
        t.rows += rows;
        t.bytes += bytes;
    }

    /// Counts one failed upload.
    pub fn upload_failed(&self, kind: UploadErrorKind) {
        if let Some(i) = UploadErrorKind::ALL.iter().position(|&k| k == kind) {
            Self::add(&self.upload_errors[i], 1);
        }
    }

    /// Failed uploads by kind, every kind listed.
    pub fn upload_errors(&self) -> Vec<(UploadErrorKind, u64)> {
        UploadErrorKind::ALL
            .iter()
            .zip(&self.upload_errors)
            .map(|(&k, n)| (k, n.load(Ordering::Relaxed)))
            .collect()
    }

    /// Output per table, sorted by table name.
    pub fn tables(&self) -> Vec<(String, TableCounts)> {
        let tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        tables.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// Why an upload failed (the label of `fleetlake_upload_errors_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadErrorKind {
    /// The store did not answer in time, refused the connection, or answered 5xx.
    Unavailable,
    /// Credentials missing or refused, or the action is not allowed.
    Auth,
    /// The bucket (or container) does not exist.
    NotFound,
    /// An object of another size already has the file's name (moved aside, not overwritten).
    Conflict,
    /// The spooled file could not be read.
    LocalIo,
    /// Anything else the store answered.
    Other,
}

impl UploadErrorKind {
    /// Every kind, in metrics order.
    pub const ALL: [Self; 6] = [
        Self::Unavailable,
        Self::Auth,
        Self::NotFound,
        Self::Conflict,
        Self::LocalIo,
        Self::Other,
    ];

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Unavailable => "unavailable",
            Self::Auth => "auth",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::LocalIo => "local_io",
            Self::Other => "other",
        }
    }
}

/// Upper bounds (seconds) of the fsync latency histogram's buckets.
const SYNC_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];
/// Upper bounds (seconds) of the batch encode histogram's buckets.
const ENCODE_BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// A fixed-bucket latency histogram (Prometheus style: cumulative on export).
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds of the buckets, in seconds.
    bounds: &'static [f64],
    /// Observations per bucket, plus one for everything above the last bound.
    counts: Box<[AtomicU64]>,
    /// Sum of all observations, in nanoseconds.
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// An empty histogram with buckets up to each of `bounds` (ascending, seconds).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        self.observe_n(d, 1);
    }

    /// Records `n` observations of one duration (e.g. every message of a group).
    pub fn observe_n(&self, d: Duration, n: u64) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(n, Ordering::Relaxed);
        let nanos = d.as_nanos().min(u64::MAX as u128) as u64;
        self.sum_nanos
            .fetch_add(nanos.saturating_mul(n), Ordering::Relaxed);
    }

    /// Cumulative counts per bucket bound (`None` = +Inf), and the sum in seconds.
    pub fn snapshot(&self) -> (Vec<(Option<f64>, u64)>, f64) {
        let mut total = 0;
        let mut out = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            total += c.load(Ordering::Relaxed);
            out.push((self.bounds.get(i).copied(), total));
        }
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        (out, sum)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn rejections_and_tables_are_counted_with_their_label() {
        let stats = Stats::default();
        stats.reject(RejectReason::TypeConflict);
        stats.reject(RejectReason::TypeConflict);
        stats.reject(RejectReason::Payload);
        assert_eq!(stats.messages_rejected.load(Ordering::Relaxed), 3);
        let by: Vec<(&str, u64)> = stats
            .rejected_by_reason()
            .into_iter()
            .map(|(r, n)| (r.label(), n))
            .filter(|&(_, n)| n > 0)
            .collect();
        assert_eq!(by, [("payload", 1), ("type_conflict", 2)]);
        stats.published("b", 10, 100);
        stats.published("a", 1, 5);
        stats.published("b", 5, 50);
        let t = stats.tables();
        assert_eq!(t[0].0, "a");
        assert_eq!(
            t[1].1,
            TableCounts {
                files: 2,
                rows: 15,
                bytes: 150
            }
        );
        assert_eq!(stats.rows_published.load(Ordering::Relaxed), 16);
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_sum_in_seconds() {
        let h = Histogram::new(&SYNC_BUCKETS);
        h.observe(Duration::from_micros(80));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(2));
        let (buckets, sum) = h.snapshot();
        assert_eq!(buckets[0], (Some(0.0001), 1));
        assert_eq!(buckets[5], (Some(0.005), 2));
        assert_eq!(buckets.last(), Some(&(None, 3)));
        assert!((sum - 2.00308).abs() < 1e-9);
    }
}
