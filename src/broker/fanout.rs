//! The fan-out thread: the WAL writer hands it each fsynced round of routable messages (in
//! sequence order); it routes them through the [`Broker`] and keeps the broker's durable state
//! on disk: the retained messages (`{data_dir}/broker/retained`) and the persistent sessions
//! (`{data_dir}/broker/sessions`), written (temp + fsync + rename) at most once per
//! [`SNAPSHOT_EVERY`] while they change, and at once when a persistent session's SUBACK waits
//! (an empty round asks for that).
//!
//! Until a snapshot covers a record it needs, the WAL keeps it: the writer lowers `hold` to the
//! record's sequence number before handing it over (retained records always; every record
//! while a persistent session subscribes), a written snapshot raises it again, and the writer
//! deletes no segment at or above it. An OS thread of its own: snapshot writes are blocking
//! file IO, and routing never waits on a subscriber (outboxes are bounded queues).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::persist::Snapshot;
use super::retained::Retained;
use super::state::{self, Now, SessionImage};
use super::{Broker, Routed};
use crate::wal::checkpoint::replace_durably;
use crate::wal::{Feed, NotStored};

/// Shortest time between two snapshots (unless a SUBACK waits for one).
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);
/// Rounds the writer may queue ahead of the fan-out before it waits.
pub const ROUNDS: usize = 64;

fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("broker")
}

fn read_optional(path: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    }
}

/// Loads the retained snapshot (an empty store when there is none).
pub fn load_retained(
    data_dir: &Path,
    max_count: usize,
    max_bytes: usize,
) -> anyhow::Result<Retained> {
    let path = dir(data_dir).join("retained");
    let mut store = Retained::new(max_count, max_bytes);
    if let Some(bytes) = read_optional(&path)? {
        store
            .decode(&bytes, &Now::get())
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    Ok(store)
}

/// Loads the session snapshot: the WAL sequence number it covers and the sessions.
pub fn load_sessions(data_dir: &Path) -> anyhow::Result<(u64, Vec<SessionImage>)> {
    let path = dir(data_dir).join("sessions");
    match read_optional(&path)? {
        Some(bytes) => state::decode(&bytes, &Now::get())
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display())),
        None => Ok((0, Vec::new())),
    }
}

/// Starts the fan-out thread; it ends (after a last snapshot) once every [`Feed`] is dropped
/// and [`Broker::close_feed`] was called.
pub fn spawn(
    broker: Arc<Broker>,
    data_dir: &Path,
    hold: Arc<AtomicU64>,
) -> io::Result<(Feed, JoinHandle<()>)> {
    let (tx, rx) = mpsc::sync_channel(ROUNDS);
    broker.set_kick(tx.clone());
    let feed = Feed::new(tx, broker.active(), broker.holds());
    let dir = dir(data_dir);
    std::fs::create_dir_all(&dir)?;
    let handle = std::thread::Builder::new()
        .name("fleetlake-fanout".into())
        .spawn(move || run(&broker, &rx, &dir, &hold))?;
    Ok((feed, handle))
}

fn run(broker: &Broker, rx: &Receiver<Vec<Routed>>, dir: &Path, hold: &AtomicU64) {
    let mut last_snapshot = Instant::now();
    loop {
        let round = rx.recv_timeout(SNAPSHOT_EVERY);
        let closed = matches!(round, Err(RecvTimeoutError::Disconnected));
        let asked = match round {
            Ok(round) if round.is_empty() => true,
            Ok(round) => {
                broker.route(&round);
                false
            }
            Err(_) => false,
        };
        if asked || closed || last_snapshot.elapsed() >= SNAPSHOT_EVERY {
            last_snapshot = Instant::now();
            let expired = broker.expire(last_snapshot);
            if expired > 0 {
                tracing::info!(sessions = expired, "persistent MQTT sessions expired");
            }
            if let Some(s) = broker.snapshot() {
                write(s, dir, hold);
            }
        }
        if closed {
            return;
        }
    }
}

/// Writes the snapshots now if they changed (at start, after the WAL replay).
pub fn snapshot_now(broker: &Broker, data_dir: &Path) -> io::Result<()> {
    let dir = dir(data_dir);
    std::fs::create_dir_all(&dir)?;
    match broker.snapshot() {
        Some(s) => write_files(&s, &dir),
        None => Ok(()),
    }
}

fn write_files(s: &Snapshot, dir: &Path) -> io::Result<()> {
    if let Some(bytes) = &s.retained {
        replace_durably(&dir.join("retained"), bytes)?;
    }
    if let Some(bytes) = &s.sessions {
        replace_durably(&dir.join("sessions"), bytes)?;
    }
    Ok(())
}

fn write(s: Snapshot, dir: &Path, hold: &AtomicU64) {
    let covered = s.covered;
    match write_files(&s, dir) {
        // The WAL no longer needs the records the snapshots cover (the writer lowered `hold`
        // to the first it handed over; a later one it lowered it for stays held).
        Ok(()) => {
            let _ = hold.fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                (h <= covered).then_some(u64::MAX)
            });
            for done in s.waiters {
                let _ = done.send(Ok(()));
            }
        }
        Err(e) => {
            // The WAL keeps the records: a restart replays them. Retried with the next change;
            // a waiting SUBACK is not sent (its connection ends).
            tracing::error!(dir = %dir.display(), error = %e, covered, "cannot write the broker's snapshot");
            for done in s.waiters {
                let _ = done.send(Err(NotStored::Closed));
            }
        }
    }
}
