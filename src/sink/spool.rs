//! The spool: finished Parquet files waiting in `{data_dir}/spool` (the output layout) for the
//! uploader. [`SpoolQueue`] is the sans-IO core: upload order, byte accounting and the quota
//! policy. [`Spool`] shares it between the publisher (adds files, waits for room) and the
//! uploader (takes the oldest file, removes it once uploaded), and keeps the gauges current.
//!
//! A spooled file is already durable (written like a local output file: temp, fsync, rename,
//! fsync folder), so the WAL checkpoint advances when a file enters the spool, not when it is
//! uploaded: during a long outage the disk holds compressed Parquet, not the WAL's raw
//! payloads, and a restart does not re-encode days of data.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::UNIX_EPOCH;

use tokio::sync::Notify;

use crate::config::SpoolFull;
use crate::telemetry::Stats;

/// File name suffix of a Delta commit waiting in the spool for its batch's files to be uploaded
/// (`sink::delta::PendingCommit`): queued after them, committed by the uploader.
pub const PENDING_COMMIT_SUFFIX: &str = ".delta-commit";

/// Whether a spooled file is a pending Delta commit rather than a file to upload.
pub fn is_pending_commit(rel: &Path) -> bool {
    rel.to_string_lossy().ends_with(PENDING_COMMIT_SUFFIX)
}

/// One file in the spool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spooled {
    /// Path below the spool root, which is also the object key below the prefix.
    pub rel: PathBuf,
    /// File size.
    pub bytes: u64,
    /// When it entered the spool (seconds since the epoch).
    pub since: u64,
}

/// Upload order, sizes and the quota, without IO.
#[derive(Debug)]
pub struct SpoolQueue {
    files: VecDeque<Spooled>,
    bytes: u64,
    in_flight: bool,
    max_bytes: u64,
    policy: SpoolFull,
}

impl SpoolQueue {
    /// An empty queue with a quota.
    pub fn new(max_bytes: u64, policy: SpoolFull) -> Self {
        Self {
            files: VecDeque::new(),
            bytes: 0,
            in_flight: false,
            max_bytes,
            policy,
        }
    }

    /// Adds a file at the back (a file already queued under the same path, rewritten by a WAL
    /// replay, keeps its place with the new size). Under `drop_oldest`, returns the oldest
    /// files (never the one being uploaded, never the new one) whose removal brings the spool
    /// back under the quota; the caller deletes them.
    pub fn push(&mut self, file: Spooled) -> Vec<Spooled> {
        if let Some(old) = self.files.iter_mut().find(|f| f.rel == file.rel) {
            self.bytes = self.bytes - old.bytes + file.bytes;
            old.bytes = file.bytes;
        } else {
            self.bytes += file.bytes;
            self.files.push_back(file);
        }
        let mut dropped = Vec::new();
        if self.policy == SpoolFull::DropOldest {
            let first = usize::from(self.in_flight);
            while self.bytes > self.max_bytes && self.files.len() > first + 1 {
                if let Some(old) = self.files.remove(first) {
                    self.bytes -= old.bytes;
                    dropped.push(old);
                }
            }
        }
        dropped
    }

    /// True when the policy is `pause` and the spool has reached its quota.
    pub fn paused(&self) -> bool {
        self.policy == SpoolFull::Pause && self.bytes >= self.max_bytes
    }

    /// The oldest file, marked as being uploaded; `None` when empty or already taken.
    pub fn take_oldest(&mut self) -> Option<Spooled> {
        if self.in_flight {
            return None;
        }
        let front = self.files.front()?.clone();
        self.in_flight = true;
        Some(front)
    }

    /// The file taken by [`take_oldest`](Self::take_oldest) is gone (uploaded, or moved aside).
    pub fn done(&mut self) {
        if self.in_flight {
            self.in_flight = false;
            if let Some(f) = self.files.pop_front() {
                self.bytes -= f.bytes;
            }
        }
    }

    /// The upload of the file taken by [`take_oldest`](Self::take_oldest) failed: it stays first.
    pub fn failed(&mut self) {
        self.in_flight = false;
    }

    /// Bytes spooled.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Files spooled.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// When the oldest file entered the spool.
    pub fn oldest_since(&self) -> Option<u64> {
        self.files.front().map(|f| f.since)
    }
}

/// The queue shared by the publisher and the uploader.
#[derive(Debug)]
pub struct Spool {
    root: PathBuf,
    queue: Mutex<SpoolQueue>,
    changed: Notify,
    stats: Arc<Stats>,
}

impl Spool {
    /// A spool over `root` holding the files already there (oldest first by their WAL
    /// sequence numbers, which every file name ends with).
    pub fn open(root: PathBuf, queue: SpoolQueue, stats: Arc<Stats>) -> Arc<Self> {
        let spool = Arc::new(Self {
            root,
            queue: Mutex::new(queue),
            changed: Notify::new(),
            stats,
        });
        let mut found = Vec::new();
        scan(&spool.root, &spool.root, &mut found);
        // A pending commit is named after its batch's last sequence number: after the files
        // that start at or before it.
        found.sort_by_key(|f| (seq_of(&f.rel), is_pending_commit(&f.rel), f.rel.clone()));
        for f in found {
            let dropped = spool.lock().push(f);
            spool.evict(&dropped);
        }
        remove_empty_dirs(&spool.root);
        spool.update_gauges();
        spool
    }

    /// Deletes files the quota evicted (`drop_oldest`): counted and logged at warn level.
    pub fn evict(&self, dropped: &[Spooled]) {
        for f in dropped {
            let path = self.root.join(&f.rel);
            // A pending commit's rows are its files, not data rows.
            let rows = parquet_rows(&path).filter(|_| !is_pending_commit(&f.rel));
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    Stats::add(&self.stats.spool_files_dropped, 1);
                    Stats::add(&self.stats.spool_bytes_dropped, f.bytes);
                    Stats::add(&self.stats.spool_rows_dropped, rows.unwrap_or(0));
                    tracing::warn!(
                        file = %f.rel.display(),
                        bytes = f.bytes,
                        rows,
                        "spool full (output.spool_max_bytes, policy drop_oldest): deleted the oldest file unsent"
                    );
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot delete an evicted spool file");
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SpoolQueue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The spool directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Queues a file just published below the root; returns the files the quota evicts
    /// (already removed from the queue; the caller deletes them).
    pub fn add(&self, path: &Path, bytes: u64) -> Vec<Spooled> {
        let rel = path.strip_prefix(&self.root).unwrap_or(path).to_path_buf();
        let dropped = self.lock().push(Spooled {
            rel,
            bytes,
            since: crate::telemetry::unix_now(),
        });
        self.update_gauges();
        self.changed.notify_waiters();
        dropped
    }

    /// Waits while the quota pauses new files; says so once per pause.
    pub async fn wait_for_room(&self) {
        let mut logged = false;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let q = self.lock();
                if !q.paused() {
                    if logged {
                        tracing::info!(spool_bytes = q.bytes(), "spool below its quota: resuming");
                    }
                    return;
                }
                if !logged {
                    logged = true;
                    Stats::add(&self.stats.spool_pauses, 1);
                    tracing::warn!(
                        spool_bytes = q.bytes(),
                        files = q.len(),
                        "spool full (output.spool_max_bytes, policy pause): new data is not acknowledged until uploads make room"
                    );
                }
            }
            changed.await;
        }
    }

    /// The oldest file, reserved for upload; waits for one.
    pub async fn take_oldest(&self) -> Spooled {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(f) = self.lock().take_oldest() {
                return f;
            }
            changed.await;
        }
    }

    /// The reserved file is uploaded (or moved aside) and deleted.
    pub fn done(&self) {
        self.lock().done();
        self.update_gauges();
        self.changed.notify_waiters();
    }

    /// The reserved file's upload failed; it stays first.
    pub fn failed(&self) {
        self.lock().failed();
    }

    /// True when no file waits.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn update_gauges(&self) {
        let q = self.lock();
        self.stats.spool_bytes.store(q.bytes(), Ordering::Relaxed);
        self.stats
            .spool_files
            .store(q.len() as u64, Ordering::Relaxed);
        self.stats
            .spool_oldest_unix
            .store(q.oldest_since().unwrap_or(0), Ordering::Relaxed);
    }
}

/// The first WAL sequence number in a file name `{node}-{first:020}-{last:020}.parquet`.
fn seq_of(rel: &Path) -> u64 {
    let name = rel.file_stem().unwrap_or_default().to_string_lossy();
    let mut parts = name.rsplitn(3, '-');
    let _last = parts.next();
    parts
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(u64::MAX)
}

/// Rows in a Parquet file, from its footer.
fn parquet_rows(path: &Path) -> Option<u64> {
    let file = std::fs::File::open(path).ok()?;
    let reader = parquet::file::reader::SerializedFileReader::new(file).ok()?;
    let rows = parquet::file::reader::FileReader::metadata(&reader)
        .file_metadata()
        .num_rows();
    u64::try_from(rows).ok()
}

/// Removes empty folders below `root` (hour and date folders of uploaded files), bottom up.
fn remove_empty_dirs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            remove_empty_dirs(&path);
            // Fails (and is left alone) when not empty.
            let _ = std::fs::remove_dir(&path);
        }
    }
}

/// Collects `*.parquet` files and tables' schema files below `dir` (temp files start with `.`
/// and are skipped).
fn scan(root: &Path, dir: &Path, out: &mut Vec<Spooled>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if meta.is_dir() {
            scan(root, &path, out);
        } else if (name.ends_with(".parquet")
            || name == super::SCHEMA_FILE
            || name.ends_with(PENDING_COMMIT_SUFFIX))
            && !name.starts_with('.')
        {
            let since = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            out.push(Spooled {
                rel: path.strip_prefix(root).unwrap_or(&path).to_path_buf(),
                bytes: meta.len(),
                since,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, bytes: u64) -> Spooled {
        Spooled {
            rel: PathBuf::from(name),
            bytes,
            since: 0,
        }
    }

    #[test]
    fn uploads_in_order_and_accounts_bytes() {
        let mut q = SpoolQueue::new(1000, SpoolFull::Pause);
        q.push(file("a", 100));
        q.push(file("b", 200));
        assert_eq!((q.len(), q.bytes()), (2, 300));
        assert_eq!(q.take_oldest().map(|f| f.rel), Some(PathBuf::from("a")));
        assert_eq!(q.take_oldest(), None, "one upload at a time");
        q.failed();
        assert_eq!(
            q.take_oldest().map(|f| f.rel),
            Some(PathBuf::from("a")),
            "a failed file stays first"
        );
        q.done();
        assert_eq!((q.len(), q.bytes()), (1, 200));
        assert_eq!(q.take_oldest().map(|f| f.rel), Some(PathBuf::from("b")));
        q.done();
        assert!(q.is_empty());
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn a_rewritten_file_keeps_its_place() {
        let mut q = SpoolQueue::new(1000, SpoolFull::Pause);
        q.push(file("a", 100));
        q.push(file("b", 100));
        q.push(file("a", 150));
        assert_eq!((q.len(), q.bytes()), (2, 250));
        assert_eq!(q.take_oldest().map(|f| f.rel), Some(PathBuf::from("a")));
    }

    #[test]
    fn pause_at_the_quota() {
        let mut q = SpoolQueue::new(300, SpoolFull::Pause);
        assert!(q.push(file("a", 200)).is_empty());
        assert!(!q.paused());
        assert!(q.push(file("b", 100)).is_empty(), "pause never deletes");
        assert!(q.paused());
        q.take_oldest();
        q.done();
        assert!(!q.paused());
    }

    #[test]
    fn drop_oldest_spares_the_upload_and_the_new_file() {
        let mut q = SpoolQueue::new(300, SpoolFull::DropOldest);
        for name in ["a", "b", "c"] {
            assert!(q.push(file(name, 100)).is_empty());
        }
        assert!(!q.paused(), "drop_oldest never pauses");
        assert_eq!(q.take_oldest().map(|f| f.rel), Some(PathBuf::from("a")));
        let dropped = q.push(file("d", 150));
        let names: Vec<_> = dropped.iter().map(|f| f.rel.clone()).collect();
        assert_eq!(names, [PathBuf::from("b"), PathBuf::from("c")]);
        assert_eq!((q.len(), q.bytes()), (2, 250));
        // A file bigger than the quota alone still stays: it is the newest data.
        q.done();
        assert_eq!(q.push(file("e", 500)).len(), 1);
        assert_eq!((q.len(), q.bytes()), (1, 500));
    }

    #[test]
    fn sequence_from_file_names() {
        let rel =
            PathBuf::from("t/date=2026-01-01/hour=00").join(crate::sink::file_name("gw-1", 42, 99));
        assert_eq!(seq_of(&rel), 42);
        assert_eq!(seq_of(Path::new("stray.parquet")), u64::MAX);
    }
}
