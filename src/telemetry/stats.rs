//! Process-wide counters. Each is a monotonic `AtomicU64` (relaxed: they are statistics, not
//! synchronisation). Names follow `fleetlake_<name>_<unit>_total` once exported.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident),* $(,)?) => {
        /// Counters of the whole daemon, and the WAL fsync latency histogram.
        #[derive(Default)]
        pub struct Stats {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
            /// Duration of WAL fsyncs.
            pub wal_sync_seconds: Histogram,
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

counters! {
    /// TCP connections accepted.
    connections_accepted,
    /// Connections closed at once because `mqtt.max_connections` was reached.
    connections_refused,
    /// Connections ended by a protocol error, timeout or oversized packet.
    connections_failed,
    /// PUBLISH packets received with QoS 0.
    messages_qos0,
    /// PUBLISH packets received with QoS 1.
    messages_qos1,
    /// PUBLISH packets received with QoS 2.
    messages_qos2,
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
    /// gRPC points stored (durable and acknowledged).
    grpc_points,
    /// Payload bytes received.
    payload_bytes,
    /// Messages stored in `_rejected` (bad payload, unknown topic, type conflict).
    messages_rejected,
    /// Parquet files published.
    files_published,
    /// Rows in published files.
    rows_published,
    /// Bytes of published files.
    bytes_published,
    /// Failed publish attempts (retried).
    publish_errors,
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
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Upper bounds (seconds) of the fsync latency histogram's buckets.
const SYNC_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// A fixed-bucket latency histogram (Prometheus style: cumulative on export).
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket of [`SYNC_BUCKETS`], plus one for everything above.
    counts: [AtomicU64; 13],
    /// Sum of all observations, in nanoseconds.
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        let i = SYNC_BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(SYNC_BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    /// Cumulative counts per bucket bound (`None` = +Inf), and the sum in seconds.
    pub fn snapshot(&self) -> (Vec<(Option<f64>, u64)>, f64) {
        let mut total = 0;
        let mut out = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            total += c.load(Ordering::Relaxed);
            out.push((SYNC_BUCKETS.get(i).copied(), total));
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
    fn histogram_buckets_are_cumulative_and_sum_in_seconds() {
        let h = Histogram::default();
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
