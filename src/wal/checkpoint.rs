//! The checkpoint: a small JSON file `{data_dir}/wal/checkpoint.json`, replaced atomically
//! (temp file → fsync → rename → fsync dir), that says which WAL records are already in
//! published files:
//!
//! - `low_water`: every record below it is in a published file (WAL segments wholly below it
//!   are deleted);
//! - `published`: per table, the last sequence number of its last published batch (records of
//!   that table up to it are skipped on replay; tables at or below `low_water` are pruned);
//! - `in_progress`: the batch being published right now. It is written *before* the batch's
//!   files appear, so a crash between publishing and checkpointing makes recovery rebuild
//!   exactly that batch (the table's records after its `published` mark up to `last_seq`) and
//!   rewrite the same file names with the same rows, instead of new files that duplicate them.
//!
//! Batches are published one at a time, in the order they were cut, so one `in_progress`
//! entry is enough.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A batch whose files may or may not have appeared.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Cut {
    /// Its table.
    pub table: String,
    /// Highest sequence number in it; the batch is the table's records after its
    /// `published` mark up to here.
    pub last_seq: u64,
}

/// What is published, and what may be.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Checkpoint {
    /// Every record below this is in a published file.
    pub low_water: u64,
    /// Per table: last sequence number of its last published batch.
    pub published: BTreeMap<String, u64>,
    /// The batch being published, if a crash may have left its files behind.
    pub in_progress: Option<Cut>,
}

impl Checkpoint {
    /// Whether a replayed record of `table` is already in a published file.
    pub fn covers(&self, table: &str, seq: u64) -> bool {
        seq < self.low_water || self.published.get(table).is_some_and(|&hw| seq <= hw)
    }

    /// Records that `cut` is about to be published.
    pub fn begin(&mut self, cut: Cut) {
        self.in_progress = Some(cut);
    }

    /// Records that `table`'s batch up to `last_seq` is published and that every record below
    /// `low_water` now is.
    pub fn done(&mut self, table: &str, last_seq: u64, low_water: u64) {
        self.in_progress = None;
        self.low_water = self.low_water.max(low_water);
        let hw = self.published.entry(table.to_string()).or_insert(last_seq);
        *hw = (*hw).max(last_seq);
        let lw = self.low_water;
        self.published.retain(|_, hw| *hw >= lw);
    }

    /// The first sequence number that no published file can contain.
    pub fn next_seq_floor(&self) -> u64 {
        let after_published = self.published.values().max().map_or(0, |m| m + 1);
        let after_cut = self.in_progress.as_ref().map_or(0, |c| c.last_seq + 1);
        self.low_water.max(after_published).max(after_cut)
    }
}

/// The checkpoint file.
#[derive(Debug)]
pub struct CheckpointFile {
    path: PathBuf,
}

impl CheckpointFile {
    /// The file in `wal_dir`.
    pub fn new(wal_dir: &Path) -> Self {
        Self {
            path: wal_dir.join("checkpoint.json"),
        }
    }

    /// Reads it; a missing file is an empty checkpoint. A file that does not parse is an
    /// error: guessing could duplicate or lose rows.
    pub fn load(&self) -> io::Result<Checkpoint> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is not a valid checkpoint: {e}", self.path.display()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Checkpoint::default()),
            Err(e) => Err(e),
        }
    }

    /// Replaces it atomically and durably.
    pub fn store(&self, cp: &Checkpoint) -> io::Result<()> {
        replace_durably(
            &self.path,
            &serde_json::to_vec(cp).map_err(io::Error::other)?,
        )
    }
}

/// Replaces the file at `path` with `bytes` (mode 0600), atomically and durably: a temp file
/// beside it, fsync, rename, fsync of the directory. A crash leaves the old or the new file.
pub fn replace_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_moves_the_marks_and_prunes_old_tables() {
        let mut cp = Checkpoint::default();
        cp.begin(Cut {
            table: "a".into(),
            last_seq: 10,
        });
        assert_eq!(cp.next_seq_floor(), 11);
        cp.done("a", 10, 5);
        assert_eq!(cp.in_progress, None);
        assert!(cp.covers("a", 10));
        assert!(cp.covers("b", 4));
        assert!(!cp.covers("b", 6));
        assert!(!cp.covers("a", 11));
        cp.done("b", 20, 12);
        assert!(
            !cp.published.contains_key("a"),
            "a's mark is below low_water"
        );
        assert!(cp.covers("a", 11));
        assert_eq!(cp.next_seq_floor(), 21);
    }

    #[test]
    fn the_file_round_trips_and_a_missing_one_is_empty() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let file = CheckpointFile::new(dir.path());
        assert_eq!(file.load()?, Checkpoint::default());
        let mut cp = Checkpoint::default();
        cp.done("t", 3, 2);
        cp.begin(Cut {
            table: "u".into(),
            last_seq: 9,
        });
        file.store(&cp)?;
        assert_eq!(file.load()?, cp);
        fs::write(dir.path().join("checkpoint.json"), b"{not json")?;
        assert!(file.load().is_err());
        Ok(())
    }
}
