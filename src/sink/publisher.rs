//! The publisher task: takes finished batches from the batcher, encodes and publishes them on
//! the blocking pool (never on the async workers), logs one line per file, and drops the
//! batch (and with it the memory budget it holds). A failed publish (disk full, permissions) is retried with a
//! capped backoff while the batch keeps its budget, so sources slow down instead of data
//! being dropped.
//!
//! Before a batch whose table has new columns, it stores the table's schema
//! ([`crate::columnar::schema`]). Around each batch it keeps the WAL checkpoint: the batch is marked in progress (durably)
//! before its first file appears, and published after its last, with the batch's low-water
//! mark; the WAL writer then deletes the segments below that mark.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;

use super::LocalSink;
use super::retention::RetainedDir;
use super::{Output, Published, SinkError};
use crate::batch::Ready;
use crate::columnar::{SchemaDir, encode};
use crate::decode::REJECTED_TABLE;
use crate::telemetry::Stats;
use crate::wal::{Checkpoint, CheckpointFile, Cut};

/// Publishes finished batches.
#[derive(Debug)]
pub struct Publisher {
    rx: mpsc::Receiver<Ready>,
    sink: Arc<Output>,
    stats: Arc<Stats>,
    checkpoint: Arc<(CheckpointFile, std::sync::Mutex<Checkpoint>)>,
    low_water: Arc<AtomicU64>,
    schemas: SchemaDir,
    retention: Arc<Retained>,
    /// Tables whose lake schema file was brought up to date in this run.
    lake_schemas: Arc<Mutex<HashSet<Arc<str>>>>,
    /// The Delta logs of a local lake (`output.table_format = "delta"`).
    #[cfg(feature = "delta")]
    delta: Option<Arc<super::delta::DeltaLake>>,
    /// With an object store and Delta: each batch's commit goes into the spool after its files,
    /// for the uploader to commit once they are in the store.
    #[cfg(feature = "delta")]
    pending_commits: bool,
}

/// The folders the publisher bounds as it writes into them.
#[derive(Debug, Default)]
pub struct Retained {
    /// The lake of a local output, when `output.retain_*` bounds it.
    pub lake: Option<RetainedDir>,
    /// `{data_dir}/_rejected` and its sink (`None` with `output.url = "null:"`).
    pub rejected: Option<(LocalSink, RetainedDir)>,
}

#[derive(Debug, thiserror::Error)]
enum PublishError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("encoder task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("writing the WAL checkpoint: {0}")]
    Checkpoint(#[from] std::io::Error),
    #[error("storing the table's schema: {0}")]
    Schema(std::io::Error),
    #[cfg(feature = "delta")]
    #[error(transparent)]
    Delta(#[from] super::delta::DeltaError),
}

/// Where the publisher keeps its progress.
#[derive(Debug)]
pub struct Progress {
    /// The checkpoint file.
    pub file: CheckpointFile,
    /// Its content as last loaded.
    pub checkpoint: Checkpoint,
    /// Shared with the WAL writer: segments below it may be deleted.
    pub low_water: Arc<AtomicU64>,
    /// Where each table's columns are stored before a file holds a new one.
    pub schemas: SchemaDir,
}

impl Publisher {
    /// A publisher reading `rx`.
    pub fn new(
        rx: mpsc::Receiver<Ready>,
        sink: Arc<Output>,
        stats: Arc<Stats>,
        progress: Progress,
    ) -> Self {
        Self {
            rx,
            sink,
            stats,
            checkpoint: Arc::new((progress.file, std::sync::Mutex::new(progress.checkpoint))),
            low_water: progress.low_water,
            schemas: progress.schemas,
            retention: Arc::default(),
            lake_schemas: Arc::default(),
            #[cfg(feature = "delta")]
            delta: None,
            #[cfg(feature = "delta")]
            pending_commits: false,
        }
    }

    /// Commits every file of the local lake to its table's Delta log before the batch counts
    /// as published.
    #[cfg(feature = "delta")]
    pub fn with_delta(mut self, delta: Arc<super::delta::DeltaLake>) -> Self {
        self.delta = Some(delta);
        self
    }

    /// Spools each batch's Delta commit after its files (an object-store output): the uploader
    /// commits it once the files are in the store.
    #[cfg(feature = "delta")]
    pub fn with_pending_commits(mut self) -> Self {
        self.pending_commits = true;
        self
    }

    /// Writes `_rejected` and bounds the folders as `retained` says.
    pub fn with_retention(mut self, retained: Retained) -> Self {
        self.retention = Arc::new(retained);
        self
    }

    /// Runs until the batcher is done and every batch is published.
    pub async fn run(mut self) {
        while let Some(ready) = self.rx.recv().await {
            let mut backoff = Duration::from_millis(100);
            loop {
                match self.publish(&ready).await {
                    Ok(files) => {
                        self.record(&ready, &files);
                        break;
                    }
                    Err(e) => {
                        Stats::add(&self.stats.publish_errors, 1);
                        tracing::error!(table = %ready.batch.table, error = %e, retry_in = ?backoff, "cannot publish batch");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
            self.low_water.fetch_max(ready.low_water, Ordering::AcqRel);
            // Dropping `ready` gives its budget back.
        }
        tracing::debug!("publisher finished");
    }

    /// Marks the batch in progress, publishes its files, marks it published (all on the
    /// blocking pool). A retry after an error rewrites the same file names. With a spool under
    /// `spool_full = "pause"`, first waits for room.
    async fn publish(&self, ready: &Ready) -> Result<Vec<Published>, PublishError> {
        if let Output::Spool(_, spool) = &*self.sink {
            spool.wait_for_room().await;
        }
        let sink = self.sink.clone();
        let batch = ready.batch.clone();
        let checkpoint = self.checkpoint.clone();
        let (last_seq, low_water) = (ready.last_seq(), ready.low_water);
        let stats = self.stats.clone();
        let schema = ready.schema.clone();
        let schemas = self.schemas.clone();
        let retained = self.retention.clone();
        let lake_schemas = self.lake_schemas.clone();
        #[cfg(feature = "delta")]
        let (delta, pending_commits) = (self.delta.clone(), self.pending_commits);
        tokio::task::spawn_blocking(move || {
            if let Some(schema) = &schema {
                schemas.store(schema).map_err(PublishError::Schema)?;
            }
            let (file, cp) = &*checkpoint;
            let mut cp = cp.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            cp.begin(Cut {
                table: batch.table.to_string(),
                last_seq,
            });
            file.store(&cp)?;
            let started = std::time::Instant::now();
            let write = |sink: &LocalSink,
                         table: &str|
             -> Result<(Vec<encode::Part>, Vec<Published>), PublishError> {
                let parts = encode::partition(&batch)?;
                let mut files = Vec::with_capacity(parts.len());
                for part in &parts {
                    files.push(sink.publish(table, part)?);
                }
                Ok((parts, files))
            };
            // The table's schema file goes first (its first batch in this run, and whenever
            // columns were added), so it holds every column of every file.
            let lake_schema = |sink: &LocalSink| -> Result<Option<(PathBuf, u64)>, PublishError> {
                let mut done = lake_schemas.lock().unwrap_or_else(PoisonError::into_inner);
                if schema.is_none() && done.contains(&batch.table) {
                    return Ok(None);
                }
                let written = sink.publish_schema(&batch.table, &batch.records.schema())?;
                done.insert(batch.table.clone());
                Ok(written)
            };
            // The Delta commit of this batch's files, written below `sink`.
            #[cfg(feature = "delta")]
            let pending_commit = |sink: &LocalSink, parts: &[encode::Part], files: &[Published]| {
                super::delta::PendingCommit::of_batch(
                    &batch.table,
                    &batch.records.schema(),
                    parts,
                    files,
                    &sink.root().join(&*batch.table),
                    last_seq,
                )
            };
            let rejected = &*batch.table == REJECTED_TABLE;
            let kept = |files: &[Published], dir: &RetainedDir| {
                for f in files {
                    dir.add(&f.path, f.bytes);
                }
                dir.enforce();
            };
            let files = match (&*sink, &retained.rejected) {
                // `{data_dir}/_rejected` is its root: the table folder is the root itself.
                (Output::Local(_) | Output::Spool(..), Some((sink, dir))) if rejected => {
                    let (_, files) = write(sink, "")?;
                    kept(&files, dir);
                    files
                }
                (Output::Local(sink), _) => {
                    lake_schema(sink)?;
                    let (_parts, files) = write(sink, &batch.table)?;
                    // Into the table's log before the batch counts as published: a crash
                    // before this line replays the batch, which rewrites the same files.
                    #[cfg(feature = "delta")]
                    if let Some(delta) = &delta {
                        let pending = pending_commit(sink, &_parts, &files)?;
                        crate::fault::point("delta-before-commit");
                        let done = delta.commit_pending(&pending)?;
                        tracing::debug!(table = %batch.table, files = files.len(), ?done, "delta commit");
                        crate::fault::point("delta-after-commit");
                    }
                    if let Some(dir) = &retained.lake {
                        kept(&files, dir);
                    }
                    files
                }
                (Output::Spool(sink, spool), _) => {
                    if let Some((path, bytes)) = lake_schema(sink)? {
                        let dropped = spool.add(&path, bytes);
                        spool.evict(&dropped);
                    }
                    let (_parts, files) = write(sink, &batch.table)?;
                    for f in &files {
                        let dropped = spool.add(&f.path, f.bytes);
                        spool.evict(&dropped);
                    }
                    #[cfg(feature = "delta")]
                    if pending_commits {
                        let pending = pending_commit(sink, &_parts, &files)?;
                        let rel = super::delta::pending_path(&batch.table, sink.node(), last_seq);
                        let path = sink.publish_bytes(&rel, &pending.to_parquet()?)?;
                        let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                        let dropped = spool.add(&path, bytes);
                        spool.evict(&dropped);
                    }
                    files
                }
                (Output::Discard, _) => vec![Published {
                    path: "null:".into(),
                    rows: batch.records.num_rows(),
                    first_seq: batch.seqs.first().copied().unwrap_or_default(),
                    last_seq,
                    bytes: 0,
                }],
            };
            stats.encode_seconds.observe(started.elapsed());
            cp.done(&batch.table, last_seq, low_water);
            file.store(&cp)?;
            Ok(files)
        })
        .await?
    }

    fn record(&self, ready: &Ready, files: &[Published]) {
        for f in files {
            self.stats
                .published(&ready.batch.table, f.rows as u64, f.bytes);
            tracing::info!(
                table = %ready.batch.table,
                rows = f.rows,
                bytes = f.bytes,
                first_seq = f.first_seq,
                last_seq = f.last_seq,
                reason = ?ready.reason,
                path = %f.path.display(),
                "published parquet file"
            );
        }
    }
}
