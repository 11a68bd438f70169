//! Retention: bounds a local folder of hour-partitioned Parquet files (the lake of a local
//! output, and `{data_dir}/_rejected`) by total bytes and by the age of its hours, deleting
//! whole files, oldest hour first, never one written less than `min_age` ago.
//!
//! [`Retention`] is the sans-IO core: an index of the files by partition hour with their
//! sizes and write times, and the decision of which ones go. [`RetainedDir`] is the IO around
//! it: one scan of the folder at start, then the publisher adds each file it writes and
//! deletes what [`Retention::due`] returns (and the folders that leaves empty).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::telemetry::Stats;

/// How a folder is bounded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetainLimits {
    /// Most bytes of files (`None`: no bound).
    pub max_bytes: Option<u64>,
    /// Files of hours that ended longer ago than this go (`None`: no bound).
    pub max_age: Option<Duration>,
    /// No file written less than this long ago is ever deleted.
    pub min_age: Duration,
}

impl RetainLimits {
    /// Whether any bound is set.
    pub fn any(&self) -> bool {
        self.max_bytes.is_some() || self.max_age.is_some()
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    bytes: u64,
    /// Seconds since the epoch.
    written: u64,
}

/// The files of a folder by (partition hour, path), oldest hour first.
#[derive(Debug, Default)]
pub struct Retention {
    files: BTreeMap<(String, PathBuf), Entry>,
    bytes: u64,
    limits: RetainLimits,
}

/// `YYYY-MM-DDTHH` of a path `…/date=YYYY-MM-DD/hour=HH/name`; `None` for other paths.
pub fn partition_hour(path: &Path) -> Option<String> {
    let mut parts = path.iter().rev().skip(1);
    let hour = parts.next()?.to_str()?.strip_prefix("hour=")?;
    let date = parts.next()?.to_str()?.strip_prefix("date=")?;
    let valid = hour.len() == 2
        && hour.bytes().all(|b| b.is_ascii_digit())
        && date.len() == 10
        && chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").is_ok();
    valid.then(|| format!("{date}T{hour}"))
}

/// Seconds since the epoch at which the hour `YYYY-MM-DDTHH` ends.
fn hour_end(hour: &str) -> Option<u64> {
    let start =
        chrono::NaiveDateTime::parse_from_str(&format!("{hour}:00:00"), "%Y-%m-%dT%H:%M:%S")
            .ok()?
            .and_utc()
            .timestamp();
    u64::try_from(start + 3600).ok()
}

impl Retention {
    /// An empty index with `limits`.
    pub fn new(limits: RetainLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Adds (or, for a path rewritten by a replay, updates) a file written at `written`
    /// (seconds since the epoch). Paths outside the hour layout are not indexed.
    pub fn add(&mut self, path: PathBuf, bytes: u64, written: u64) {
        let Some(hour) = partition_hour(&path) else {
            return;
        };
        if let Some(old) = self.files.insert((hour, path), Entry { bytes, written }) {
            self.bytes -= old.bytes;
        }
        self.bytes += bytes;
    }

    /// Bytes of the indexed files.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Indexed files.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.files.len()
    }

    /// The files to delete at `now` (seconds since the epoch), oldest hour first, taken out
    /// of the index: every file of an hour past `max_age`, then the oldest files while the
    /// total is over `max_bytes`; never a file written less than `min_age` ago.
    pub fn due(&mut self, now: u64) -> Vec<(PathBuf, u64)> {
        let limits = self.limits;
        let settled = |e: &Entry| e.written.saturating_add(limits.min_age.as_secs()) <= now;
        let mut bytes = self.bytes;
        let mut due = Vec::new();
        for ((hour, path), entry) in &self.files {
            let expired = limits.max_age.is_some_and(|age| {
                hour_end(hour).is_some_and(|end| end.saturating_add(age.as_secs()) <= now)
            });
            let over = limits.max_bytes.is_some_and(|max| bytes > max);
            if !expired && !over {
                // Later hours are younger: only the byte bound could still pick them, and it
                // is met.
                break;
            }
            if settled(entry) {
                bytes -= entry.bytes;
                due.push(((hour.clone(), path.clone()), entry.bytes));
            }
        }
        for (key, _) in &due {
            self.files.remove(key);
        }
        self.bytes = bytes;
        due.into_iter().map(|((_, path), b)| (path, b)).collect()
    }
}

/// A folder under retention: the index, kept by the publisher.
#[derive(Debug)]
pub struct RetainedDir {
    root: PathBuf,
    what: &'static str,
    index: Mutex<Retention>,
    stats: Arc<Stats>,
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl RetainedDir {
    /// Indexes every `*.parquet` file under `root` (one walk; `what` names the folder in logs:
    /// "lake" or "_rejected").
    pub fn open(
        root: PathBuf,
        what: &'static str,
        limits: RetainLimits,
        stats: Arc<Stats>,
    ) -> std::io::Result<Self> {
        let mut index = Retention::new(limits);
        let mut dirs = vec![root.clone()];
        while let Some(dir) = dirs.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                let meta = entry.metadata()?;
                let path = entry.path();
                if meta.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "parquet") {
                    let written = meta.modified().map_or(0, unix_secs);
                    index.add(path, meta.len(), written);
                }
            }
        }
        Ok(Self {
            root,
            what,
            index: Mutex::new(index),
            stats,
        })
    }

    /// Bytes of the indexed files.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Retention> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a file just published (written now).
    pub fn add(&self, path: &Path, bytes: u64) {
        self.lock()
            .add(path.to_path_buf(), bytes, unix_secs(SystemTime::now()));
    }

    /// Deletes the files due now, and the hour and date folders that leaves empty; logs one
    /// line per run and counts files and bytes. A file that cannot be deleted is logged and
    /// left (it is out of the index; the next start indexes it again).
    pub fn enforce(&self) {
        let due = self.lock().due(unix_secs(SystemTime::now()));
        if due.is_empty() {
            return;
        }
        let (mut files, mut bytes) = (0u64, 0u64);
        for (path, size) in &due {
            match std::fs::remove_file(path) {
                Ok(()) => {
                    files += 1;
                    bytes += size;
                    self.remove_empty_parents(path);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "retention: cannot delete file")
                }
            }
        }
        Stats::add(&self.stats.files_expired, files);
        Stats::add(&self.stats.bytes_expired, bytes);
        tracing::info!(
            folder = self.what,
            files,
            bytes,
            oldest = %due[0].0.display(),
            kept_bytes = self.bytes(),
            "retention deleted the oldest files"
        );
    }

    /// Removes `hour=…` and `date=…` folders left empty (never the root or a table folder).
    fn remove_empty_parents(&self, file: &Path) {
        for dir in file.ancestors().skip(1).take(2) {
            if dir == self.root || std::fs::remove_dir(dir).is_err() {
                break; // not empty (or gone): its parents are not empty either
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(table: &str, date: &str, hour: &str, name: &str) -> PathBuf {
        PathBuf::from(format!(
            "/lake/{table}/date={date}/hour={hour}/{name}.parquet"
        ))
    }

    const H: u64 = 3600;
    /// 2026-01-02T00:00:00Z
    const NOW: u64 = 1_767_312_000;

    #[test]
    fn the_byte_bound_deletes_the_oldest_hours_first_across_tables() {
        let mut r = Retention::new(RetainLimits {
            max_bytes: Some(250),
            min_age: Duration::from_secs(H),
            ..RetainLimits::default()
        });
        r.add(file("b", "2026-01-01", "05", "n-2"), 100, NOW - 10 * H);
        r.add(file("a", "2026-01-01", "03", "n-1"), 100, NOW - 10 * H);
        r.add(file("a", "2026-01-01", "07", "n-3"), 100, NOW - 10 * H);
        r.add(PathBuf::from("/lake/a/stray.parquet"), 1000, 0); // not in the layout: ignored
        assert_eq!((r.len(), r.bytes()), (3, 300));
        assert_eq!(r.due(NOW), [(file("a", "2026-01-01", "03", "n-1"), 100)]);
        assert_eq!(r.bytes(), 200);
        assert!(r.due(NOW).is_empty());
        // A replay rewriting a file updates its size, not the count.
        r.add(file("a", "2026-01-01", "07", "n-3"), 160, NOW - H);
        assert_eq!((r.len(), r.bytes()), (2, 260));
        assert_eq!(r.due(NOW), [(file("b", "2026-01-01", "05", "n-2"), 100)]);
    }

    #[test]
    fn a_file_younger_than_min_age_is_never_deleted_the_next_oldest_goes_instead() {
        let mut r = Retention::new(RetainLimits {
            max_bytes: Some(100),
            min_age: Duration::from_secs(H),
            ..RetainLimits::default()
        });
        // A backfill: the oldest hour, written a minute ago.
        r.add(file("a", "2025-06-01", "00", "young"), 100, NOW - 60);
        r.add(file("a", "2026-01-01", "10", "old"), 100, NOW - 5 * H);
        r.add(file("a", "2026-01-01", "23", "new"), 100, NOW - 60);
        assert_eq!(r.due(NOW), [(file("a", "2026-01-01", "10", "old"), 100)]);
        // Still over the bound, but only young files are left.
        assert!(r.due(NOW).is_empty());
        assert_eq!(r.due(NOW + H).len(), 1);
    }

    #[test]
    fn the_age_bound_deletes_whole_hours_that_ended_long_enough_ago() {
        let mut r = Retention::new(RetainLimits {
            max_age: Some(Duration::from_secs(24 * H)),
            min_age: Duration::from_secs(H),
            ..RetainLimits::default()
        });
        r.add(file("a", "2026-01-01", "00", "x"), 10, NOW - 30 * H); // ended 23 h before NOW
        r.add(file("a", "2025-12-31", "23", "y"), 10, NOW - 30 * H); // ended 24 h before NOW
        r.add(file("a", "2026-01-01", "12", "z"), 10, NOW - 2 * H);
        let due: Vec<_> = r.due(NOW).into_iter().map(|(p, _)| p).collect();
        assert_eq!(due, [file("a", "2025-12-31", "23", "y")]);
        assert_eq!(r.due(NOW + H), [(file("a", "2026-01-01", "00", "x"), 10)]);
    }

    #[test]
    fn partition_hours_are_read_from_the_layout_only() {
        assert_eq!(
            partition_hour(&file("t", "2026-11-30", "09", "n")).as_deref(),
            Some("2026-11-30T09")
        );
        for bad in [
            "/l/t/date=2026-13-01/hour=09/n.parquet",
            "/l/t/hour=09/n.parquet",
            "/l/t/date=2026-01-01/hour=9/n.parquet",
        ] {
            assert_eq!(partition_hour(Path::new(bad)), None, "{bad}");
        }
    }

    #[test]
    fn a_folder_is_indexed_at_open_and_enforce_deletes_files_and_empty_folders()
    -> std::io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let lake = tmp.path().join("lake");
        let old = lake.join("t/date=2020-01-01/hour=00/n-1.parquet");
        let new = lake.join("t/date=2020-01-01/hour=01/n-2.parquet");
        for p in [&old, &new] {
            std::fs::create_dir_all(p.parent().unwrap_or(&lake))?;
            std::fs::write(p, [0u8; 100])?;
        }
        let limits = RetainLimits {
            max_bytes: Some(150),
            min_age: Duration::ZERO,
            ..RetainLimits::default()
        };
        let stats = Arc::new(Stats::default());
        let dir = RetainedDir::open(lake.clone(), "lake", limits, stats.clone())?;
        assert_eq!(dir.bytes(), 200);
        dir.enforce();
        assert!(!old.exists() && new.exists());
        assert!(!lake.join("t/date=2020-01-01/hour=00").exists());
        assert!(lake.join("t/date=2020-01-01").exists() && lake.join("t").exists());
        let expired = stats
            .files_expired
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!((expired, dir.bytes()), (1, 100));
        Ok(())
    }
}
