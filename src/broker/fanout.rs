//! The fan-out thread: the WAL writer hands it each fsynced round of routable messages (in
//! sequence order); it routes them through the [`Broker`] and keeps the retained store durable:
//! at most once per [`SNAPSHOT_EVERY`] while retained messages change it writes the snapshot
//! (temp + fsync + rename). Until a snapshot covers a retained record, its WAL segment is held:
//! the writer lowers `hold` to the record's sequence number before handing it over, the
//! snapshot raises it again, and the writer deletes no segment at or above it.
//! An OS thread of its own: snapshot writes are blocking file IO, and routing never waits on a
//! subscriber (outboxes are bounded queues).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::retained::Retained;
use super::{Broker, Routed};
use crate::wal::Feed;

/// Shortest time between two retained snapshots.
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);
/// Rounds the writer may queue ahead of the fan-out before it waits.
pub const ROUNDS: usize = 64;

/// The snapshot file under `data_dir`.
pub fn snapshot_path(data_dir: &Path) -> PathBuf {
    data_dir.join("broker").join("retained")
}

/// Loads the retained snapshot (an empty store when there is none).
pub fn load_retained(
    data_dir: &Path,
    max_count: usize,
    max_bytes: usize,
) -> anyhow::Result<Retained> {
    let path = snapshot_path(data_dir);
    let mut store = Retained::new(max_count, max_bytes);
    match std::fs::read(&path) {
        Ok(bytes) => store
            .decode(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    }
    Ok(store)
}

/// Starts the fan-out thread; it ends (after a last snapshot) once every [`Feed`] is dropped.
pub fn spawn(
    broker: Arc<Broker>,
    data_dir: &Path,
    hold: Arc<AtomicU64>,
) -> io::Result<(Feed, JoinHandle<()>)> {
    let (tx, rx) = mpsc::sync_channel(ROUNDS);
    let feed = Feed::new(tx, broker.active());
    let path = snapshot_path(data_dir);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let handle = std::thread::Builder::new()
        .name("fleetlake-fanout".into())
        .spawn(move || run(&broker, &rx, &path, &hold))?;
    Ok((feed, handle))
}

fn run(broker: &Broker, rx: &Receiver<Vec<Routed>>, path: &Path, hold: &AtomicU64) {
    let mut last_snapshot = Instant::now();
    loop {
        let round = rx.recv_timeout(SNAPSHOT_EVERY);
        let closed = matches!(round, Err(RecvTimeoutError::Disconnected));
        if let Ok(round) = round {
            broker.route(&round);
        }
        if closed || last_snapshot.elapsed() >= SNAPSHOT_EVERY {
            last_snapshot = Instant::now();
            snapshot(broker, path, hold);
        }
        if closed {
            return;
        }
    }
}

/// Writes the snapshot now if the store changed (at start, after the WAL replay).
pub fn snapshot_now(broker: &Broker, data_dir: &Path) -> io::Result<()> {
    let path = snapshot_path(data_dir);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match broker.retained_snapshot() {
        Some((_, bytes)) => crate::wal::checkpoint::replace_durably(&path, &bytes),
        None => Ok(()),
    }
}

fn snapshot(broker: &Broker, path: &Path, hold: &AtomicU64) {
    let Some((covered, bytes)) = broker.retained_snapshot() else {
        return;
    };
    match crate::wal::checkpoint::replace_durably(path, &bytes) {
        // The WAL no longer needs the retained records it covers (the writer lowered `hold`
        // to the first one it handed over; a later one it lowered it for stays held).
        Ok(()) => {
            let _ = hold.fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                (h <= covered).then_some(u64::MAX)
            });
        }
        Err(e) => {
            // The WAL keeps the records: a restart replays them. Retried after the next change.
            tracing::error!(path = %path.display(), error = %e, covered, "cannot write the retained-message snapshot");
        }
    }
}
