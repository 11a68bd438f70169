//! Process-wide counters. Each is a monotonic `AtomicU64` (relaxed: they are statistics, not
//! synchronisation). Names follow `fleetlake_<name>_<unit>_total` once exported.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident),* $(,)?) => {
        /// Counters of the whole daemon.
        #[derive(Default)]
        pub struct Stats {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
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
