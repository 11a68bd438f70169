//! Compaction of closed hours of a Delta table, and vacuum of what it replaced.
//!
//! A node writes up to one file per table and hour for each batch (sixty an hour at the default
//! `batch.max_age`). Once an hour has been closed for `output.delta.compact_after`, the node
//! rewrites its own small files of that hour into as few files as `target_file_size` allows
//! (read, merged, sorted by device and time, written with the lake's encoder), and commits the
//! swap — the new files added, the old ones removed — in one Delta commit: a reader sees either
//! the small files or the big ones, never both. The old files are deleted only
//! `output.delta.vacuum_after` later, so a reader still holding an older snapshot can read them.
//!
//! [`plan`] is the sans-IO core: which files of which hours go into which output file. The
//! [`Compactor`] task does the IO, one output file at a time, holding the memory budget for the
//! rows it has in memory (so it waits while ingest needs the memory, and never exceeds it).
//!
//! Crash safety: the output file's name is derived from its inputs' sequence ranges, so a
//! compaction redone after a crash rewrites the same name; the vacuum list is written (fsynced)
//! before the commit, and an entry is acted on only if the table no longer lists the file — a
//! crash between the rewrite and the commit leaves the inputs in the table and the entry void.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How compaction and vacuum behave (`[output.delta]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompactOptions {
    /// An hour is compacted this long after it ended.
    pub after: Duration,
    /// Most bytes of a compacted file (its inputs' sizes on disk, added up).
    pub target_bytes: u64,
    /// Replaced files are deleted this long after the commit that removed them.
    pub vacuum_after: Duration,
}

/// A file of the table, as the compaction planner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableFile {
    /// Path below the table folder (`date=…/hour=…/{node}-{first}-{last}.parquet`).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Partition `date` (`YYYY-MM-DD`).
    pub date: String,
    /// Partition `hour` (`HH` or `H`).
    pub hour: String,
}

/// One output file to write: its inputs (all of one hour, of this node) and its sequence range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// Partition `date`.
    pub date: String,
    /// Partition `hour`, two digits.
    pub hour: String,
    /// The files merged into it.
    pub inputs: Vec<TableFile>,
    /// Smallest first sequence number of the inputs.
    pub first_seq: u64,
    /// Largest last sequence number of the inputs.
    pub last_seq: u64,
}

/// `(node, first_seq, last_seq)` of a file named `{node}-{first}-{last}.parquet`.
pub fn parse_name(path: &str) -> Option<(&str, u64, u64)> {
    let name = path.rsplit('/').next()?.strip_suffix(".parquet")?;
    let mut parts = name.rsplitn(3, '-');
    let last = parts.next()?.parse().ok()?;
    let first = parts.next()?.parse().ok()?;
    Some((parts.next()?, first, last))
}

/// Seconds since the epoch at which the hour `date`/`hour` ends.
fn hour_end(date: &str, hour: &str) -> Option<i64> {
    let day = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
    let hour: u32 = hour.parse().ok().filter(|h| *h < 24)?;
    Some(day.and_hms_opt(hour, 0, 0)?.and_utc().timestamp() + 3600)
}

/// A candidate file with its first and last sequence numbers.
type Small<'a> = (&'a TableFile, u64, u64);

/// The output files to write now: for each hour that ended at least `opts.after` before `now`
/// (seconds since the epoch), this node's files smaller than half the target, when there are
/// at least two, cut into groups of at most `opts.target_bytes` (a group of one is left alone).
/// Oldest hours first.
pub fn plan(files: &[TableFile], node: &str, now: i64, opts: &CompactOptions) -> Vec<Group> {
    let after = i64::try_from(opts.after.as_secs()).unwrap_or(i64::MAX);
    let mut hours: BTreeMap<(String, u32), Vec<Small<'_>>> = BTreeMap::new();
    for f in files {
        let Some((owner, first, last)) = parse_name(&f.path) else {
            continue;
        };
        let Some(end) = hour_end(&f.date, &f.hour) else {
            continue;
        };
        if owner != node || f.size * 2 >= opts.target_bytes || end.saturating_add(after) > now {
            continue;
        }
        let hour: u32 = f.hour.parse().unwrap_or_default();
        hours
            .entry((f.date.clone(), hour))
            .or_default()
            .push((f, first, last));
    }
    let mut groups = Vec::new();
    for ((date, hour), mut small) in hours {
        small.sort_by_key(|(_, first, _)| *first);
        let mut current: Vec<Small<'_>> = Vec::new();
        let mut bytes = 0;
        let mut close = |current: &mut Vec<Small<'_>>| {
            if current.len() >= 2 {
                groups.push(Group {
                    date: date.clone(),
                    hour: format!("{hour:02}"),
                    inputs: current.iter().map(|(f, ..)| (*f).clone()).collect(),
                    first_seq: current.iter().map(|c| c.1).min().unwrap_or_default(),
                    last_seq: current.iter().map(|c| c.2).max().unwrap_or_default(),
                });
            }
            current.clear();
        };
        for file in small {
            if bytes + file.0.size > opts.target_bytes && !current.is_empty() {
                close(&mut current);
                bytes = 0;
            }
            bytes += file.0.size;
            current.push(file);
        }
        close(&mut current);
    }
    groups
}

/// A file to delete once due, if the table no longer lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VacuumEntry {
    /// The table.
    pub table: String,
    /// Path below the table folder.
    pub path: String,
    /// Seconds since the epoch from which it may be deleted.
    pub due: i64,
}

/// The files waiting for vacuum, kept in `{data_dir}/delta-vacuum.json` (written atomically
/// and fsynced before each compaction commit).
#[derive(Debug)]
pub struct VacuumList {
    path: PathBuf,
    entries: Vec<VacuumEntry>,
}

impl VacuumList {
    /// The list stored at `path` (empty when there is none; an unreadable file is logged and
    /// taken as empty: its files stay on disk, unreferenced).
    pub fn load(path: PathBuf) -> Self {
        let entries = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::error!(path = %path.display(), error = %e, "unreadable vacuum list: its files are not deleted");
                Vec::new()
            }),
            Err(_) => Vec::new(),
        };
        Self { path, entries }
    }

    /// Entries waiting.
    pub fn entries(&self) -> &[VacuumEntry] {
        &self.entries
    }

    /// Adds entries and stores the list durably.
    pub fn add(&mut self, more: impl IntoIterator<Item = VacuumEntry>) -> std::io::Result<()> {
        self.entries.extend(more);
        self.store()
    }

    /// Takes the entries due at `now` out of the list (stored by the next [`Self::store`]).
    pub fn take_due(&mut self, now: i64) -> Vec<VacuumEntry> {
        let (due, wait) = self.entries.drain(..).partition(|e| e.due <= now);
        self.entries = wait;
        due
    }

    /// Writes the list: temp file, fsync, rename, fsync of the folder.
    pub fn store(&self) -> std::io::Result<()> {
        let dir = self.path.parent().unwrap_or(std::path::Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(&self.entries).map_err(std::io::Error::other)?;
        let file = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut &file, &bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        std::fs::File::open(dir)?.sync_all()
    }
}

/// Files named in `entries` that a table still lists are not deleted: their removal was never
/// committed.
pub fn deletable<'a>(
    entries: &'a [VacuumEntry],
    active: &HashSet<(String, String)>,
) -> Vec<&'a VacuumEntry> {
    entries
        .iter()
        .filter(|e| !active.contains(&(e.table.clone(), e.path.clone())))
        .collect()
}

#[cfg(feature = "delta")]
pub use task::Compactor;

#[cfg(feature = "delta")]
mod task {
    use super::*;
    use std::sync::Arc;

    use crate::budget::Budget;
    use crate::columnar::builder::Batch;
    use crate::columnar::encode;
    use crate::config::ParquetOptions;
    use crate::sink::delta::{DataFile, DeltaLake, file_stats};
    use crate::telemetry::Stats;
    use arrow::array::{RecordBatch, new_null_array};
    use arrow::datatypes::{Field, Schema};

    /// Compacts and vacuums the tables of a Delta lake, one output file at a time.
    #[derive(Debug)]
    pub struct Compactor {
        /// The tables.
        pub lake: Arc<DeltaLake>,
        /// This node's id (only its own files are rewritten).
        pub node: String,
        /// Settings.
        pub opts: CompactOptions,
        /// Encoding of the output files.
        pub parquet: ParquetOptions,
        /// The memory budget the rows in memory are charged to.
        pub budget: Budget,
        /// Where the vacuum list lives.
        pub vacuum: PathBuf,
        /// Counters.
        pub stats: Arc<Stats>,
        /// A local lake's sink (files written like every data file: fsync, rename); `None`:
        /// output files are put into the object store.
        pub sink: Option<crate::sink::LocalSink>,
    }

    impl Compactor {
        /// Runs until `stop` turns true: a round every `opts.after / 4` (1 s to 60 s).
        pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
            let every =
                (self.opts.after / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
            let this = Arc::new(self);
            let mut vacuum = {
                let path = this.vacuum.clone();
                tokio::task::spawn_blocking(move || VacuumList::load(path))
                    .await
                    .unwrap_or_else(|_| VacuumList::load(PathBuf::new()))
            };
            loop {
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    _ = stop.changed() => {}
                }
                if *stop.borrow() {
                    break;
                }
                let (me, list, stopping) = (this.clone(), vacuum, stop.clone());
                match tokio::task::spawn_blocking(move || me.round(list, &stopping)).await {
                    Ok(list) => vacuum = list,
                    Err(e) => {
                        tracing::error!(error = %e, "compaction round panicked");
                        vacuum = VacuumList::load(this.vacuum.clone());
                    }
                }
            }
        }

        /// One round (blocking): every table's due hours, then the due vacuum.
        fn round(
            &self,
            mut vacuum: VacuumList,
            stop: &tokio::sync::watch::Receiver<bool>,
        ) -> VacuumList {
            let now = chrono::Utc::now().timestamp();
            let tables = match self.lake.tables() {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, "compaction: cannot list the tables");
                    return vacuum;
                }
            };
            // What each table lists after this round; a table that failed is left out, and its
            // due entries wait (whether their removal was committed is unknown).
            let mut active = HashSet::new();
            let mut known = HashSet::new();
            for table in &tables {
                match self.compact_table(table, now, &mut vacuum, stop) {
                    Ok(files) => {
                        known.insert(table.clone());
                        active.extend(files.into_iter().map(|f| (table.clone(), f)));
                    }
                    Err(e) => {
                        tracing::warn!(table, error = %e, "compaction failed; retried next round");
                    }
                }
            }
            let due = vacuum.take_due(now);
            let (due, mut keep): (Vec<_>, Vec<_>) =
                due.into_iter().partition(|e| known.contains(&e.table));
            for entry in deletable(&due, &active) {
                match self.lake.delete_file(&entry.table, &entry.path) {
                    Ok(()) => Stats::add(&self.stats.delta_files_vacuumed, 1),
                    Err(e) => {
                        tracing::warn!(table = entry.table, path = entry.path, error = %e, "vacuum: cannot delete; retried");
                        keep.push(entry.clone());
                    }
                }
            }
            if let Err(e) = vacuum.add(keep) {
                tracing::warn!(error = %e, "cannot store the vacuum list");
            }
            vacuum
        }

        /// Compacts the due hours of `table`; returns the paths it lists afterwards.
        fn compact_table(
            &self,
            table: &str,
            now: i64,
            vacuum: &mut VacuumList,
            stop: &tokio::sync::watch::Receiver<bool>,
        ) -> Result<Vec<String>, String> {
            let files = self.lake.files(table).map_err(|e| e.to_string())?;
            let groups = plan(&files, &self.node, now, &self.opts);
            let mut listed: HashSet<String> = files.into_iter().map(|f| f.path).collect();
            for group in groups {
                if *stop.borrow() {
                    break;
                }
                let added = self.rewrite(table, &group)?;
                let removed: Vec<String> = group.inputs.iter().map(|f| f.path.clone()).collect();
                let due =
                    now + i64::try_from(self.opts.vacuum_after.as_secs()).unwrap_or(i64::MAX / 2);
                vacuum
                    .add(removed.iter().map(|path| VacuumEntry {
                        table: table.to_string(),
                        path: path.clone(),
                        due,
                    }))
                    .map_err(|e| format!("storing the vacuum list: {e}"))?;
                crate::fault::point("compact-before-commit");
                let done = self
                    .lake
                    .replace(table, &removed, &added)
                    .map_err(|e| e.to_string())?;
                crate::fault::point("compact-after-commit");
                if done {
                    Stats::add(&self.stats.delta_compactions, 1);
                    Stats::add(&self.stats.delta_files_compacted, removed.len() as u64);
                    for r in &removed {
                        listed.remove(r);
                    }
                    listed.insert(added.path.clone());
                    tracing::info!(
                        table,
                        date = group.date,
                        hour = group.hour,
                        files = removed.len(),
                        into = added.path,
                        bytes = added.size,
                        "compacted an hour"
                    );
                }
            }
            Ok(listed.into_iter().collect())
        }

        /// Reads `group`'s files, merges and sorts their rows, writes the output file and
        /// returns it (with its statistics).
        fn rewrite(&self, table: &str, group: &Group) -> Result<DataFile, String> {
            let mut batches = Vec::new();
            let mut held = Vec::new();
            for input in &group.inputs {
                let bytes = self
                    .lake
                    .read_file(table, &input.path)
                    .map_err(|e| e.to_string())?;
                Stats::add(&self.stats.delta_compaction_bytes_read, bytes.len() as u64);
                let reader =
                    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
                        .map_err(|e| e.to_string())?;
                let decoded: usize = reader
                    .metadata()
                    .row_groups()
                    .iter()
                    .map(|g| usize::try_from(g.total_byte_size()).unwrap_or(usize::MAX))
                    .sum();
                // Waits while ingest holds the budget: compaction never pushes it over, and
                // holds at most half of it in all (a group's inputs add up; asking for more
                // while holding the rest could wait forever and starve ingest).
                let held_now: usize = held.iter().map(crate::budget::Held::bytes).sum();
                let want = decoded.min((self.budget.total() / 2).saturating_sub(held_now));
                held.push(tokio::runtime::Handle::current().block_on(self.budget.acquire(want)));
                for b in reader.build().map_err(|e| e.to_string())? {
                    batches.push(b.map_err(|e| e.to_string())?);
                }
            }
            let records = merge(&batches).map_err(|e| e.to_string())?;
            drop(batches);
            let rows = records.num_rows();
            let seqs: Arc<[u64]> = vec![group.first_seq; rows].into();
            let batch = Batch {
                table: Arc::from(table),
                records,
                seqs,
            };
            let mut parts = encode::partition(&batch).map_err(|e| e.to_string())?;
            if parts.len() != 1 {
                return Err(format!("{} hours in the files of one hour", parts.len()));
            }
            let mut part = parts.remove(0);
            part.first_seq = group.first_seq;
            part.last_seq = group.last_seq;
            let written = self.write(table, &part)?;
            Stats::add(&self.stats.delta_compaction_bytes_written, written.1);
            let stats = file_stats(&part.records, table).map_err(|e| e.to_string())?;
            drop(held);
            Ok(DataFile {
                path: written.0,
                date: part.date.clone(),
                hour: part.hour.clone(),
                size: written.1,
                stats,
            })
        }
    }

    impl Compactor {
        /// Writes `part` as a file of `table`: `(path below the table, size)`.
        fn write(&self, table: &str, part: &encode::Part) -> Result<(String, u64), String> {
            match &self.sink {
                Some(sink) => {
                    let f = sink.publish(table, part).map_err(|e| e.to_string())?;
                    let dir = sink.root().join(table);
                    Ok((
                        crate::sink::delta::relative_url_path(&f.path, &dir),
                        f.bytes,
                    ))
                }
                None => {
                    let bytes = encode::write_parquet(part, &self.parquet, Vec::new())
                        .map_err(|e| e.to_string())?;
                    let rel = format!(
                        "date={}/hour={}/{}",
                        part.date,
                        part.hour,
                        crate::sink::file_name(&self.node, part.first_seq, part.last_seq)
                    );
                    let size = bytes.len() as u64;
                    self.lake
                        .put_file(table, &rel, bytes)
                        .map_err(|e| e.to_string())?;
                    Ok((rel, size))
                }
            }
        }
    }

    /// The rows of `batches` in one batch whose columns are the union of theirs (first seen
    /// first); a column a batch lacks is null in its rows.
    fn merge(batches: &[RecordBatch]) -> Result<RecordBatch, arrow::error::ArrowError> {
        let mut fields: Vec<Arc<Field>> = Vec::new();
        for b in batches {
            for f in b.schema().fields() {
                if !fields.iter().any(|g| g.name() == f.name()) {
                    fields.push(Arc::new(f.as_ref().clone().with_nullable(true)));
                }
            }
        }
        let schema = Arc::new(Schema::new(fields));
        let aligned = batches
            .iter()
            .map(|b| {
                let columns = schema
                    .fields()
                    .iter()
                    .map(|f| match b.column_by_name(f.name()) {
                        Some(c) => c.clone(),
                        None => new_null_array(f.data_type(), b.num_rows()),
                    })
                    .collect();
                RecordBatch::try_new(schema.clone(), columns)
            })
            .collect::<Result<Vec<_>, _>>()?;
        arrow::compute::concat_batches(&schema, &aligned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, size: u64) -> TableFile {
        let mut parts = path.split('/');
        let date = parts.next().unwrap_or_default().trim_start_matches("date=");
        let hour = parts.next().unwrap_or_default().trim_start_matches("hour=");
        TableFile {
            path: path.into(),
            size,
            date: date.into(),
            hour: hour.trim_start_matches('0').to_string(),
        }
    }

    const OPTS: CompactOptions = CompactOptions {
        after: Duration::from_secs(600),
        target_bytes: 1000,
        vacuum_after: Duration::from_secs(3600),
    };

    fn at(date_hour: &str) -> i64 {
        chrono::NaiveDateTime::parse_from_str(date_hour, "%Y-%m-%d %H:%M")
            .map(|t| t.and_utc().timestamp())
            .unwrap_or_default()
    }

    #[test]
    fn names_give_node_and_range() {
        assert_eq!(
            parse_name(
                "date=2026-12-01/hour=07/gw-7-00000000000000000005-00000000000000000009.parquet"
            ),
            Some(("gw-7", 5, 9))
        );
        assert_eq!(parse_name("x.parquet"), None);
        assert_eq!(parse_name("a-1-2.json"), None);
    }

    #[test]
    fn only_closed_hours_of_this_node_with_two_small_files_are_compacted() {
        let files = vec![
            file(
                "date=2026-12-01/hour=07/n-00000000000000000001-00000000000000000010.parquet",
                100,
            ),
            file(
                "date=2026-12-01/hour=07/n-00000000000000000011-00000000000000000020.parquet",
                100,
            ),
            file(
                "date=2026-12-01/hour=07/other-00000000000000000001-00000000000000000010.parquet",
                100,
            ),
            file(
                "date=2026-12-01/hour=07/n-00000000000000000030-00000000000000000040.parquet",
                600,
            ),
            file(
                "date=2026-12-01/hour=08/n-00000000000000000050-00000000000000000060.parquet",
                100,
            ),
            file(
                "date=2026-12-01/hour=08/n-00000000000000000061-00000000000000000070.parquet",
                100,
            ),
            file(
                "date=2026-12-01/hour=06/n-00000000000000000071-00000000000000000072.parquet",
                100,
            ),
        ];
        // 08:09: hour 07 ended 9 minutes ago (not yet), nothing.
        assert!(plan(&files, "n", at("2026-12-01 08:09"), &OPTS).is_empty());
        let groups = plan(&files, "n", at("2026-12-01 08:10"), &OPTS);
        assert_eq!(groups.len(), 1, "{groups:?}");
        let g = &groups[0];
        assert_eq!((g.date.as_str(), g.hour.as_str()), ("2026-12-01", "07"));
        assert_eq!((g.first_seq, g.last_seq), (1, 20));
        assert_eq!(g.inputs.len(), 2, "the big file and the other node's stay");
        // Later, hour 08 is due too; hour 06 has one small file only.
        let groups = plan(&files, "n", at("2026-12-01 09:10"), &OPTS);
        assert_eq!(
            groups.iter().map(|g| g.hour.as_str()).collect::<Vec<_>>(),
            ["07", "08"]
        );
    }

    #[test]
    fn groups_stay_under_the_target_size() {
        let files: Vec<TableFile> = (0..10u64)
            .map(|i| {
                file(
                    &format!(
                        "date=2026-12-01/hour=07/n-{:020}-{:020}.parquet",
                        i * 10,
                        i * 10 + 9
                    ),
                    300,
                )
            })
            .collect();
        let groups = plan(&files, "n", at("2026-12-02 00:00"), &OPTS);
        // 3 files of 300 per group of at most 1000: 3 + 3 + 3 + (1 left alone).
        assert_eq!(
            groups.iter().map(|g| g.inputs.len()).collect::<Vec<_>>(),
            [3, 3, 3]
        );
        assert_eq!((groups[1].first_seq, groups[1].last_seq), (30, 59));
    }

    #[test]
    fn the_vacuum_list_is_durable_and_spares_what_the_table_still_lists() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("delta-vacuum.json");
        let mut list = VacuumList::load(path.clone());
        let entry = |p: &str, due| VacuumEntry {
            table: "t".into(),
            path: p.into(),
            due,
        };
        list.add([entry("a", 10), entry("b", 10), entry("c", 99)])
            .expect("store");
        let mut again = VacuumList::load(path);
        assert_eq!(again.entries().len(), 3);
        let due = again.take_due(50);
        assert_eq!(due.len(), 2);
        assert_eq!(again.entries(), &[entry("c", 99)]);
        let active = HashSet::from([("t".to_string(), "b".to_string())]);
        let gone: Vec<&str> = deletable(&due, &active)
            .iter()
            .map(|e| e.path.as_str())
            .collect();
        assert_eq!(gone, ["a"]);
    }
}
