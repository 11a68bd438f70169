//! Delta Lake commits (`output.table_format = "delta"`): each table folder of the lake is also
//! a Delta table, `{root}/{table}/_delta_log/`. After a batch's files are durable, one commit
//! adds them all (partition values `date` and `hour`, size, row count, min/max/null-count
//! statistics) with the application transaction `fleetlake-{node}` at the batch's last WAL
//! sequence number: a batch replayed after a crash rewrites the same files and finds its
//! version already in the log, so a file enters the table once (promise 9). A column the table
//! does not hold yet is added to its schema in the same commit.
//!
//! With an object store the commit cannot wait for the upload inside the publisher: the batch's
//! [`PendingCommit`] (files, partitions, statistics) is spooled after its files, and the
//! uploader commits it when it reaches it, the files being in the store by then.
//!
//! The log is read and written by `delta_kernel` (log replay, the transaction id, schema
//! changes, the put-if-absent commit, checkpoints) through its default engine on the object
//! store of the output (a local folder is a `file://` store). Two writers committing the same
//! version conflict; the loser re-reads the log and commits again on top.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use arrow::array::{Array, RecordBatch, StructArray};
use arrow::datatypes::{DataType as ArrowType, Schema, TimeUnit};
use delta_kernel::committer::FileSystemCommitter;
use delta_kernel::expressions::{ColumnName, Scalar};
use delta_kernel::object_store::DynObjectStore;
use delta_kernel::schema::{DataType, StructField, StructType};
use delta_kernel::transaction::create_table::create_table;
use delta_kernel::transaction::data_layout::DataLayout;
use delta_kernel::transaction::{CommitResult, UpdateTableOperation};
use delta_kernel::{FileMeta, Snapshot, SnapshotRef};
use delta_kernel_default_engine::executor::tokio::TokioMultiThreadExecutor;
use delta_kernel_default_engine::parquet::DataFileMetadata;
use delta_kernel_default_engine::stats::collect_stats;
use delta_kernel_default_engine::{DefaultEngine, build_add_file_metadata};
use url::Url;

use super::spool::PENDING_COMMIT_SUFFIX as PENDING_SUFFIX;
use crate::columnar::builder::DELTA_FORBIDDEN_CHARS as FORBIDDEN;

/// Written into each commit's `commitInfo.engineInfo`.
const ENGINE_INFO: &str = concat!("fleetlake/", env!("CARGO_PKG_VERSION"));

/// Most attempts at one commit when other writers keep winning the race for the next version.
const MAX_ATTEMPTS: usize = 64;

/// Why a commit failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeltaError {
    /// The Delta library refused or failed.
    #[error("delta table {table}: {source}")]
    Kernel {
        /// The table.
        table: String,
        /// The library's error.
        source: Box<delta_kernel::KernelError>,
    },
    /// A column cannot be written to a Delta table as it is.
    #[error("delta table {table}: {reason}")]
    Schema {
        /// The table.
        table: String,
        /// What is wrong.
        reason: String,
    },
    /// Other writers won every attempt.
    #[error("delta table {table}: gave up after {MAX_ATTEMPTS} conflicting commits")]
    Contended {
        /// The table.
        table: String,
    },
}

/// One data file to add: where it is below the table, its partition and statistics.
#[derive(Debug, Clone)]
pub struct DataFile {
    /// Path below the table folder, `/`-separated (`date=…/hour=…/{name}.parquet`).
    pub path: String,
    /// `YYYY-MM-DD`.
    pub date: String,
    /// `HH`.
    pub hour: String,
    /// Size in bytes.
    pub size: u64,
    /// Its statistics ([`file_stats`]): one row of `numRecords`, `nullCount`, `minValues`,
    /// `maxValues`, `tightBounds`.
    pub stats: StructArray,
}

/// Columns with statistics: Delta's default (`delta.dataSkippingNumIndexedCols`), the first 32.
const STATS_COLUMNS: usize = 32;

/// The statistics of a file holding `records` (columns of `table`), as the table's default
/// settings ask for them: computed from the rows, without the table's log (so a spooled file's
/// statistics are ready before the store is reachable).
pub fn file_stats(records: &RecordBatch, table: &str) -> Result<StructArray, DeltaError> {
    let mut fields = table_columns(&records.schema(), table)?;
    fields.truncate(records.num_columns());
    let physical = StructType::try_new(fields.iter().cloned()).map_err(DeltaLake::kernel(table))?;
    let columns: Vec<ColumnName> = fields
        .iter()
        .take(STATS_COLUMNS)
        .map(|f| ColumnName::new([f.name().clone()]))
        .collect();
    collect_stats(records, &columns, &physical).map_err(DeltaLake::kernel(table))
}

/// A batch's commit waiting in the spool for its files to reach the object store: the table,
/// its columns, the files with their statistics and the transaction version. Stored as a small
/// Parquet file (one row per data file; the rest in its key-value metadata), written after the
/// batch's files and durable like them, so the commit survives a restart with the spool.
#[derive(Debug, Clone)]
pub struct PendingCommit {
    /// The table.
    pub table: String,
    /// Its columns ([`table_columns`]).
    pub columns: Vec<StructField>,
    /// The batch's files.
    pub files: Vec<DataFile>,
    /// The transaction version: the batch's last WAL sequence number.
    pub version: u64,
}

/// Where a batch's [`PendingCommit`] waits in the spool:
/// `{table}/_delta_commits/{node}-{version}-{version}.delta-commit`, named after the batch's
/// last sequence number so that a restart queues it after the batch's files.
pub fn pending_path(table: &str, node: &str, version: u64) -> std::path::PathBuf {
    std::path::Path::new(table)
        .join("_delta_commits")
        .join(format!(
            "{node}-{version:020}-{version:020}{PENDING_SUFFIX}"
        ))
}

const META_TABLE: &str = "fleetlake.delta.table";
const META_COLUMNS: &str = "fleetlake.delta.columns";
const META_VERSION: &str = "fleetlake.delta.version";

impl PendingCommit {
    /// The commit of a batch of `table` (columns `schema`) whose `parts` were written as
    /// `files` (same order) below `dir`, the table's folder.
    pub fn of_batch(
        table: &str,
        schema: &Schema,
        parts: &[crate::columnar::encode::Part],
        files: &[super::Published],
        dir: &std::path::Path,
        version: u64,
    ) -> Result<Self, DeltaError> {
        let files = parts
            .iter()
            .zip(files)
            .map(|(part, f)| {
                Ok(DataFile {
                    path: relative_url_path(&f.path, dir),
                    date: part.date.clone(),
                    hour: part.hour.clone(),
                    size: f.bytes,
                    stats: file_stats(&part.records, table)?,
                })
            })
            .collect::<Result<_, DeltaError>>()?;
        Ok(Self {
            table: table.to_string(),
            columns: table_columns(schema, table)?,
            files,
            version,
        })
    }

    fn malformed(what: impl std::fmt::Display) -> DeltaError {
        DeltaError::Schema {
            table: String::new(),
            reason: format!("a pending commit file is malformed: {what}"),
        }
    }

    /// The Parquet bytes of this commit.
    pub fn to_parquet(&self) -> Result<Vec<u8>, DeltaError> {
        use arrow::array::{ArrayRef, StringArray, UInt64Array};
        let strings = |f: fn(&DataFile) -> &str| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(self.files.iter().map(f)))
        };
        let stats: Vec<&dyn Array> = self.files.iter().map(|f| &f.stats as &dyn Array).collect();
        let stats = arrow::compute::concat(&stats).map_err(Self::malformed)?;
        let sizes: ArrayRef = Arc::new(UInt64Array::from_iter_values(
            self.files.iter().map(|f| f.size),
        ));
        let batch = RecordBatch::try_from_iter([
            ("path", strings(|f| &f.path)),
            ("date", strings(|f| &f.date)),
            ("hour", strings(|f| &f.hour)),
            ("size", sizes),
            ("stats", stats),
        ])
        .map_err(Self::malformed)?;
        let columns = serde_json::to_string(&self.columns).map_err(Self::malformed)?;
        let meta = [
            (META_TABLE, self.table.clone()),
            (META_COLUMNS, columns),
            (META_VERSION, self.version.to_string()),
        ]
        .map(|(k, v)| parquet::file::metadata::KeyValue::new(k.to_string(), v));
        let props = parquet::file::properties::WriterProperties::builder()
            .set_key_value_metadata(Some(meta.to_vec()))
            .build();
        let mut writer =
            parquet::arrow::ArrowWriter::try_new(Vec::new(), batch.schema(), Some(props))
                .map_err(Self::malformed)?;
        writer.write(&batch).map_err(Self::malformed)?;
        writer.into_inner().map_err(Self::malformed)
    }

    /// Reads a commit written by [`Self::to_parquet`].
    pub fn from_parquet(bytes: bytes::Bytes) -> Result<Self, DeltaError> {
        use arrow::array::{AsArray, StringArray};
        use arrow::datatypes::UInt64Type;
        let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
            .map_err(Self::malformed)?;
        let kv = builder
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .cloned()
            .unwrap_or_default();
        let get = |k: &str| {
            kv.iter()
                .find(|e| e.key == k)
                .and_then(|e| e.value.clone())
                .ok_or_else(|| Self::malformed(format!("no {k}")))
        };
        let table = get(META_TABLE)?;
        let columns: Vec<StructField> =
            serde_json::from_str(&get(META_COLUMNS)?).map_err(Self::malformed)?;
        let version = get(META_VERSION)?.parse().map_err(Self::malformed)?;
        let mut files = Vec::new();
        for batch in builder.build().map_err(Self::malformed)? {
            let batch = batch.map_err(Self::malformed)?;
            let col = |name: &str| {
                batch
                    .column_by_name(name)
                    .cloned()
                    .ok_or_else(|| Self::malformed(format!("no column {name}")))
            };
            let (path, date, hour) = (col("path")?, col("date")?, col("hour")?);
            let strings = |a: &Arc<dyn Array>| a.as_string_opt::<i32>().cloned();
            let (Some(path), Some(date), Some(hour)): (
                Option<StringArray>,
                Option<StringArray>,
                Option<StringArray>,
            ) = (strings(&path), strings(&date), strings(&hour)) else {
                return Err(Self::malformed("path, date and hour are not strings"));
            };
            let size = col("size")?;
            let size = size
                .as_primitive_opt::<UInt64Type>()
                .ok_or_else(|| Self::malformed("size is not a u64"))?;
            let stats = col("stats")?;
            let stats = stats
                .as_struct_opt()
                .ok_or_else(|| Self::malformed("stats is not a struct"))?;
            for i in 0..batch.num_rows() {
                files.push(DataFile {
                    path: path.value(i).to_string(),
                    date: date.value(i).to_string(),
                    hour: hour.value(i).to_string(),
                    size: size.value(i),
                    stats: stats.slice(i, 1),
                });
            }
        }
        Ok(Self {
            table,
            columns,
            files,
            version,
        })
    }
}

/// What a commit did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Committed {
    /// The files were added in this table version.
    Version(u64),
    /// The log holds this transaction already (a replay): nothing was written.
    Already,
}

/// The Delta side of a lake: one log per table folder below `root`.
pub struct DeltaLake {
    engine: DefaultEngine<TokioMultiThreadExecutor>,
    store: Arc<DynObjectStore>,
    runtime: tokio::runtime::Handle,
    stats: Arc<crate::telemetry::Stats>,
    root: Url,
    app_id: String,
    checkpoint_interval: u64,
    /// The last snapshot seen of each table.
    snapshots: Mutex<HashMap<String, SnapshotRef>>,
}

impl std::fmt::Debug for DeltaLake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeltaLake")
            .field("root", &self.root.as_str())
            .field("app_id", &self.app_id)
            .field("checkpoint_interval", &self.checkpoint_interval)
            .finish_non_exhaustive()
    }
}

/// The application id of a node's commits.
pub fn app_id(node: &str) -> String {
    format!("fleetlake-{node}")
}

/// The Delta type of a column of ours; `None` for a type we never write.
fn delta_type(t: &ArrowType) -> Option<DataType> {
    Some(match t {
        ArrowType::Utf8 => DataType::STRING,
        ArrowType::Int64 => DataType::LONG,
        ArrowType::Int32 => DataType::INTEGER,
        ArrowType::Float64 => DataType::DOUBLE,
        ArrowType::Boolean => DataType::BOOLEAN,
        ArrowType::Binary => DataType::BINARY,
        ArrowType::Date32 => DataType::DATE,
        ArrowType::Timestamp(TimeUnit::Microsecond, Some(_)) => DataType::TIMESTAMP,
        _ => return None,
    })
}

/// `path` below `dir` as a `/`-separated relative URL path, each segment percent-encoded as
/// Delta's `add.path` wants it; the file name alone when `path` is not below `dir`.
pub fn relative_url_path(path: &std::path::Path, dir: &std::path::Path) -> String {
    let rel = path
        .strip_prefix(dir)
        .unwrap_or_else(|_| std::path::Path::new(path.file_name().unwrap_or_default()));
    let mut out = String::new();
    for (i, seg) in rel.iter().enumerate() {
        if i > 0 {
            out.push('/');
        }
        for b in seg.to_string_lossy().bytes() {
            if b.is_ascii_alphanumeric() || b"-_.=".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

/// The Delta columns of `schema` (every one nullable), then the partition columns `date` (a
/// date) and `hour` (an integer).
pub fn table_columns(schema: &Schema, table: &str) -> Result<Vec<StructField>, DeltaError> {
    let mut fields = Vec::with_capacity(schema.fields().len() + 2);
    for f in schema.fields() {
        if f.name().contains(FORBIDDEN) {
            return Err(DeltaError::Schema {
                table: table.into(),
                reason: format!(
                    "column `{}` has a character Delta forbids in column names (space , ; {{ }} ( ) newline tab =)",
                    f.name()
                ),
            });
        }
        let t = delta_type(f.data_type()).ok_or_else(|| DeltaError::Schema {
            table: table.into(),
            reason: format!(
                "column `{}` has type {} (no Delta type)",
                f.name(),
                f.data_type()
            ),
        })?;
        fields.push(StructField::nullable(f.name(), t));
    }
    fields.push(StructField::nullable("date", DataType::DATE));
    fields.push(StructField::nullable("hour", DataType::INTEGER));
    Ok(fields)
}

/// The partition values of a file: `date` as days since 1970-01-01, `hour` as a number.
fn partition_values(date: &str, hour: &str) -> Option<HashMap<String, Scalar>> {
    let day = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
    let days = i32::try_from((day - epoch).num_days()).ok()?;
    let hour: i32 = hour.parse().ok()?;
    Some(HashMap::from([
        ("date".to_string(), Scalar::Date(days)),
        ("hour".to_string(), Scalar::Integer(hour)),
    ]))
}

impl DeltaLake {
    /// The tables below `root` (a `file://` or object-store URL ending in `/`) in `store`,
    /// committing as node `node`, a checkpoint every `checkpoint_interval` versions. Kernel IO
    /// runs on `runtime`; call [`Self::commit`] from a blocking thread.
    pub fn new(
        store: Arc<DynObjectStore>,
        root: Url,
        node: &str,
        checkpoint_interval: u64,
        runtime: tokio::runtime::Handle,
        stats: Arc<crate::telemetry::Stats>,
    ) -> Self {
        let engine = DefaultEngine::builder(store.clone())
            .with_task_executor(Arc::new(TokioMultiThreadExecutor::new(runtime.clone())))
            .build();
        Self {
            engine,
            store,
            runtime,
            stats,
            root,
            app_id: app_id(node),
            checkpoint_interval: checkpoint_interval.max(1),
            snapshots: Mutex::default(),
        }
    }

    fn table_url(&self, table: &str) -> Result<Url, DeltaError> {
        self.root
            .join(&format!("{table}/"))
            .map_err(|e| DeltaError::Schema {
                table: table.into(),
                reason: format!("no URL for the table folder: {e}"),
            })
    }

    pub(crate) fn kernel(table: &str) -> impl FnOnce(delta_kernel::KernelError) -> DeltaError + '_ {
        move |e| DeltaError::Kernel {
            table: table.into(),
            source: Box::new(e),
        }
    }

    /// The latest snapshot of `table`, creating the table (schema `columns`, partitioned by
    /// date and hour) when it has no log yet.
    fn latest(&self, table: &str, columns: &[StructField]) -> Result<SnapshotRef, DeltaError> {
        let cached = self.cached(table);
        let url = self.table_url(table)?;
        let snapshot = match cached {
            Some(s) => Snapshot::builder_from(s).build(&self.engine),
            None => {
                // Asked first: the library logs a missing log as an error.
                if !self.has_log(&url)? {
                    self.create(table, &url, columns)?;
                }
                Snapshot::builder_for(url.as_str()).build(&self.engine)
            }
        }
        .map_err(Self::kernel(table))?;
        Ok(snapshot)
    }

    /// Whether the table folder has a `_delta_log` with anything in it.
    fn has_log(&self, url: &Url) -> Result<bool, DeltaError> {
        let log = url.join("_delta_log/").map_err(|e| DeltaError::Schema {
            table: url.to_string(),
            reason: e.to_string(),
        })?;
        use delta_kernel::Engine;
        match self.engine.storage_handler().list_from(&log) {
            Ok(mut files) => match files.next() {
                Some(Ok(_)) => Ok(true),
                Some(Err(delta_kernel::KernelError::FileNotFound(_))) | None => Ok(false),
                Some(Err(e)) => Err(Self::kernel(url.as_str())(e)),
            },
            Err(delta_kernel::KernelError::FileNotFound(_)) => Ok(false),
            Err(e) => Err(Self::kernel(url.as_str())(e)),
        }
    }

    /// Commits version 0 of `table`: its protocol and schema. Another writer creating it at the
    /// same time is no error.
    fn create(&self, table: &str, url: &Url, columns: &[StructField]) -> Result<(), DeltaError> {
        let schema =
            Arc::new(StructType::try_new(columns.iter().cloned()).map_err(Self::kernel(table))?);
        let txn = create_table(url.as_str(), schema, ENGINE_INFO, true)
            .with_data_layout(DataLayout::partitioned(["date", "hour"]))
            .build(&self.engine, Box::new(FileSystemCommitter::new()));
        let txn = match txn {
            Ok(t) => t,
            Err(delta_kernel::KernelError::TableAlreadyExistsAtPath(_)) => return Ok(()),
            Err(e) => return Err(Self::kernel(table)(e)),
        };
        match txn.commit(&self.engine).map_err(Self::kernel(table))? {
            CommitResult::Committed(_) | CommitResult::Conflicted(_) => Ok(()),
            CommitResult::Retryable(_) => Err(DeltaError::Contended {
                table: table.into(),
            }),
        }
    }

    /// Adds `files` of `table` (whose columns are `columns`, [`table_columns`]) in one commit
    /// with transaction version `version` (the batch's last WAL sequence number): skipped when
    /// the log holds this node's transaction at that version or later. Blocking.
    pub fn commit(
        &self,
        table: &str,
        columns: &[StructField],
        files: &[DataFile],
        version: u64,
    ) -> Result<Committed, DeltaError> {
        use crate::telemetry::Stats;
        let started = std::time::Instant::now();
        let done = self.try_commit(table, columns, files, version);
        self.stats.delta_commit_seconds.observe(started.elapsed());
        match &done {
            Ok(Committed::Version(_)) => Stats::add(&self.stats.delta_commits, 1),
            Ok(Committed::Already) => Stats::add(&self.stats.delta_commits_skipped, 1),
            Err(_) => {}
        }
        done
    }

    fn try_commit(
        &self,
        table: &str,
        columns: &[StructField],
        files: &[DataFile],
        version: u64,
    ) -> Result<Committed, DeltaError> {
        let url = self.table_url(table)?;
        let txn_version = i64::try_from(version).unwrap_or(i64::MAX);
        for _ in 0..MAX_ATTEMPTS {
            let snapshot = self.latest(table, columns)?;
            let done = snapshot
                .get_app_id_version(&self.app_id, &self.engine)
                .map_err(Self::kernel(table))?;
            if done.is_some_and(|v| v >= txn_version) {
                self.remember(table, snapshot);
                return Ok(Committed::Already);
            }
            let current = snapshot.schema();
            let mut builder = snapshot
                .clone()
                .update_table(UpdateTableOperation::Write, ENGINE_INFO, true)
                .with_transaction_id(self.app_id.clone(), txn_version);
            for c in columns {
                match current.field(c.name()) {
                    None => builder = builder.add_column(c.clone()),
                    Some(had) if had.data_type() != c.data_type() => {
                        return Err(DeltaError::Schema {
                            table: table.into(),
                            reason: format!(
                                "column `{}` is {} in the table's schema but {} in this node's files",
                                c.name(),
                                had.data_type(),
                                c.data_type()
                            ),
                        });
                    }
                    Some(_) => {}
                }
            }
            let mut txn = builder
                .build(&self.engine, Box::new(FileSystemCommitter::new()))
                .map_err(Self::kernel(table))?;
            self.stage_adds(table, &url, &mut txn, files)?;
            // `None`: another writer took this version; read on and try again on top of it.
            if let Some(v) = self.finish(table, txn)? {
                return Ok(Committed::Version(v));
            }
        }
        Err(DeltaError::Contended {
            table: table.into(),
        })
    }

    /// Stages an add action for each of `files` (below the table at `url`) in `txn`.
    fn stage_adds(
        &self,
        table: &str,
        url: &Url,
        txn: &mut delta_kernel::transaction::Transaction,
        files: &[DataFile],
    ) -> Result<(), DeltaError> {
        let state = txn.write_state().map_err(Self::kernel(table))?;
        let now = chrono::Utc::now().timestamp_millis();
        for f in files {
            let values = partition_values(&f.date, &f.hour).ok_or_else(|| DeltaError::Schema {
                table: table.into(),
                reason: format!("partition date={} hour={} is malformed", f.date, f.hour),
            })?;
            let context = state
                .write_context_builder()
                .with_partition_values(values)
                .build()
                .map_err(Self::kernel(table))?;
            let location = url.join(&f.path).map_err(|e| DeltaError::Schema {
                table: table.into(),
                reason: format!("no URL for {}: {e}", f.path),
            })?;
            let meta = FileMeta {
                location,
                last_modified: now,
                size: f.size,
            };
            let add =
                build_add_file_metadata(DataFileMetadata::new(meta, f.stats.clone()), &context)
                    .map_err(Self::kernel(table))?;
            txn.add_files(add);
        }
        Ok(())
    }

    /// Commits `txn`: the new version (after a checkpoint when one is due), or `None` when
    /// another writer took the version first (counted; the caller reads on and retries).
    fn finish(
        &self,
        table: &str,
        txn: delta_kernel::transaction::Transaction,
    ) -> Result<Option<u64>, DeltaError> {
        match txn.commit(&self.engine).map_err(Self::kernel(table))? {
            CommitResult::Committed(done) => {
                if let Some(s) = done.post_commit_snapshot() {
                    self.checkpoint_if_due(table, s);
                    self.remember(table, s.clone());
                }
                Ok(Some(done.commit_version()))
            }
            CommitResult::Conflicted(_) => {
                crate::telemetry::Stats::add(&self.stats.delta_commit_conflicts, 1);
                Ok(None)
            }
            CommitResult::Retryable(_) => Err(DeltaError::Contended {
                table: table.into(),
            }),
        }
    }

    /// Commits a [`PendingCommit`] (see [`Self::commit`]).
    pub fn commit_pending(&self, pending: &PendingCommit) -> Result<Committed, DeltaError> {
        self.commit(
            &pending.table,
            &pending.columns,
            &pending.files,
            pending.version,
        )
    }

    /// The object path of `rel` (a path below the table folder) in the store.
    fn object_path(&self, table: &str, rel: &str) -> Result<object_store::path::Path, DeltaError> {
        let url = self
            .table_url(table)?
            .join(rel)
            .map_err(|e| DeltaError::Schema {
                table: table.into(),
                reason: format!("no URL for {rel}: {e}"),
            })?;
        object_store::path::Path::from_url_path(url.path()).map_err(|e| DeltaError::Schema {
            table: table.into(),
            reason: format!("no object path for {rel}: {e}"),
        })
    }

    fn store_error(table: &str) -> impl FnOnce(object_store::Error) -> DeltaError + '_ {
        move |e| DeltaError::Schema {
            table: table.into(),
            reason: format!("object store: {e}"),
        }
    }

    /// The tables below the root: folders holding a `_delta_log`. Blocking.
    pub fn tables(&self) -> Result<Vec<String>, DeltaError> {
        let root = object_store::path::Path::from_url_path(self.root.path())
            .map_err(|e| Self::store_error("")(e.into()))?;
        let listed = self
            .runtime
            .block_on(self.store.list_with_delimiter(Some(&root)))
            .map_err(Self::store_error(""))?;
        let mut tables = Vec::new();
        for dir in listed.common_prefixes {
            let Some(name) = dir.filename() else { continue };
            let name = name.to_string();
            if name.starts_with('_') || name.starts_with('.') {
                continue;
            }
            if self.has_log(&self.table_url(&name)?)? {
                tables.push(name);
            }
        }
        Ok(tables)
    }

    /// The files `table` lists now.
    pub fn files(&self, table: &str) -> Result<Vec<super::compact::TableFile>, DeltaError> {
        use super::compact::TableFile;
        fn visit(out: &mut Vec<TableFile>, f: delta_kernel::scan::state::ScanFile) {
            let part = |k: &str| f.partition_values.get(k).cloned().unwrap_or_default();
            out.push(TableFile {
                date: part("date"),
                hour: part("hour"),
                path: f.path.clone(),
                size: u64::try_from(f.size).unwrap_or_default(),
            });
        }
        let snapshot = self.existing(table)?;
        let scan = snapshot
            .scan_builder()
            .build()
            .map_err(Self::kernel(table))?;
        let mut out = Vec::new();
        for meta in scan
            .scan_metadata(&self.engine)
            .map_err(Self::kernel(table))?
        {
            let meta = meta.map_err(Self::kernel(table))?;
            out = meta
                .visit_scan_files(out, visit)
                .map_err(Self::kernel(table))?;
        }
        Ok(out)
    }

    /// The latest snapshot of a table that exists.
    fn existing(&self, table: &str) -> Result<SnapshotRef, DeltaError> {
        let cached = self.cached(table);
        let snapshot = match cached {
            Some(s) => Snapshot::builder_from(s).build(&self.engine),
            None => Snapshot::builder_for(self.table_url(table)?.as_str()).build(&self.engine),
        }
        .map_err(Self::kernel(table))?;
        self.remember(table, snapshot.clone());
        Ok(snapshot)
    }

    /// Replaces the files `removed` of `table` by `added` in one commit (`dataChange` false: the
    /// rows are the same). `Ok(false)` when the table no longer lists every one of `removed`
    /// (someone else rewrote them): nothing is committed. Blocking.
    pub fn replace(
        &self,
        table: &str,
        removed: &[String],
        added: &DataFile,
    ) -> Result<bool, DeltaError> {
        use arrow::array::AsArray;
        use delta_kernel::engine::arrow_data::ArrowEngineData;
        use delta_kernel::engine_data::FilteredEngineData;
        let wanted: std::collections::HashSet<&str> = removed.iter().map(String::as_str).collect();
        let url = self.table_url(table)?;
        for _ in 0..MAX_ATTEMPTS {
            let snapshot = self.existing(table)?;
            let mut txn = snapshot
                .clone()
                .update_table(UpdateTableOperation::Write, ENGINE_INFO, false)
                .build(&self.engine, Box::new(FileSystemCommitter::new()))
                .map_err(Self::kernel(table))?;
            let scan = snapshot
                .clone()
                .scan_builder()
                .build()
                .map_err(Self::kernel(table))?;
            let mut found = 0;
            for meta in scan
                .scan_metadata(&self.engine)
                .map_err(Self::kernel(table))?
            {
                let (data, selected) = meta.map_err(Self::kernel(table))?.scan_files.into_parts();
                let data =
                    ArrowEngineData::try_from_engine_data(data).map_err(Self::kernel(table))?;
                let Some(paths) = data
                    .record_batch()
                    .column_by_name("path")
                    .and_then(|c| c.as_string_opt::<i32>().cloned())
                else {
                    return Err(DeltaError::Schema {
                        table: table.into(),
                        reason: "scan metadata without a path column".into(),
                    });
                };
                let pick: Vec<bool> = (0..paths.len())
                    .map(|i| {
                        selected.get(i).copied().unwrap_or(true)
                            && paths.is_valid(i)
                            && wanted.contains(paths.value(i))
                    })
                    .collect();
                let n = pick.iter().filter(|p| **p).count();
                if n > 0 {
                    found += n;
                    let chosen =
                        FilteredEngineData::try_new(data, pick).map_err(Self::kernel(table))?;
                    txn.remove_files(chosen);
                }
            }
            if found != wanted.len() {
                return Ok(false);
            }
            self.stage_adds(table, &url, &mut txn, std::slice::from_ref(added))?;
            if self.finish(table, txn)?.is_some() {
                return Ok(true);
            }
        }
        Err(DeltaError::Contended {
            table: table.into(),
        })
    }

    /// The bytes of a file of `table`. Blocking.
    pub fn read_file(&self, table: &str, rel: &str) -> Result<bytes::Bytes, DeltaError> {
        use object_store::ObjectStoreExt;
        let path = self.object_path(table, rel)?;
        self.runtime
            .block_on(async { self.store.get(&path).await?.bytes().await })
            .map_err(Self::store_error(table))
    }

    /// Puts a new file of `table` (never over another object). Blocking.
    pub fn put_file(&self, table: &str, rel: &str, bytes: Vec<u8>) -> Result<(), DeltaError> {
        use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
        let path = self.object_path(table, rel)?;
        let size = bytes.len() as u64;
        let put = self.runtime.block_on(self.store.put_opts(
            &path,
            PutPayload::from(bytes),
            PutOptions::from(PutMode::Create),
        ));
        match put {
            Ok(_) => Ok(()),
            // A compaction redone after a crash: the same inputs made the same file.
            Err(object_store::Error::AlreadyExists { .. }) => {
                let meta = self
                    .runtime
                    .block_on(self.store.head(&path))
                    .map_err(Self::store_error(table))?;
                match meta.size == size {
                    true => Ok(()),
                    false => Err(DeltaError::Schema {
                        table: table.into(),
                        reason: format!("{rel} exists with another size"),
                    }),
                }
            }
            Err(e) => Err(Self::store_error(table)(e)),
        }
    }

    /// Deletes a file of `table` (gone already is no error). Blocking.
    pub fn delete_file(&self, table: &str, rel: &str) -> Result<(), DeltaError> {
        use object_store::ObjectStoreExt;
        let path = self.object_path(table, rel)?;
        match self.runtime.block_on(self.store.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Self::store_error(table)(e)),
        }
    }

    /// The last snapshot seen of `table`.
    fn cached(&self, table: &str) -> Option<SnapshotRef> {
        let snapshots = self
            .snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        snapshots.get(table).cloned()
    }

    fn remember(&self, table: &str, snapshot: SnapshotRef) {
        self.snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(table.to_string(), snapshot);
    }

    /// Writes a checkpoint at every `checkpoint_interval`-th version; a failure only costs
    /// readers time, so it is logged, not returned.
    fn checkpoint_if_due(&self, table: &str, snapshot: &SnapshotRef) {
        let v = snapshot.version();
        if v == 0 || !v.is_multiple_of(self.checkpoint_interval) {
            return;
        }
        match snapshot.checkpoint(&self.engine, None) {
            Ok(_) => crate::telemetry::Stats::add(&self.stats.delta_checkpoints, 1),
            Err(e) => {
                tracing::warn!(table, version = v, error = %e, "cannot write the delta checkpoint");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Field;

    #[test]
    fn columns_map_to_delta_types_then_partitions() {
        let schema = Schema::new(vec![
            Field::new("device_id", ArrowType::Utf8, false),
            Field::new(
                "time",
                ArrowType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new("n", ArrowType::Int64, true),
            Field::new("temp", ArrowType::Float64, true),
            Field::new("ok", ArrowType::Boolean, true),
            Field::new("raw", ArrowType::Binary, true),
        ]);
        let cols = table_columns(&schema, "t").expect("columns");
        let got: Vec<(String, DataType)> = cols
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("device_id".into(), DataType::STRING),
                ("time".into(), DataType::TIMESTAMP),
                ("n".into(), DataType::LONG),
                ("temp".into(), DataType::DOUBLE),
                ("ok".into(), DataType::BOOLEAN),
                ("raw".into(), DataType::BINARY),
                ("date".into(), DataType::DATE),
                ("hour".into(), DataType::INTEGER),
            ]
        );
        assert!(cols.iter().all(StructField::is_nullable));
    }

    #[test]
    fn forbidden_names_and_types_are_refused_by_name() {
        let spaced = Schema::new(vec![Field::new("temp C", ArrowType::Float64, true)]);
        let e = table_columns(&spaced, "t").expect_err("space");
        assert!(e.to_string().contains("`temp C`"), "{e}");
        let odd = Schema::new(vec![Field::new("x", ArrowType::UInt8, true)]);
        let e = table_columns(&odd, "t").expect_err("uint8");
        assert!(e.to_string().contains("`x` has type UInt8"), "{e}");
    }

    #[test]
    fn a_pending_commit_survives_its_parquet_round_trip() {
        use arrow::array::{Float64Array, StringArray, TimestampMicrosecondArray};
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "time",
                ArrowType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new("device_id", ArrowType::Utf8, false),
            Field::new("temp", ArrowType::Float64, true),
        ]));
        let records = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(
                    TimestampMicrosecondArray::from(vec![1_000_000, 3_000_000])
                        .with_timezone("UTC"),
                ),
                Arc::new(StringArray::from(vec!["a", "b"])),
                Arc::new(Float64Array::from(vec![Some(1.5), None])),
            ],
        )
        .expect("batch");
        let stats = file_stats(&records, "t").expect("stats");
        let file = |path: &str, size| DataFile {
            path: path.into(),
            date: "2026-12-01".into(),
            hour: "07".into(),
            size,
            stats: stats.clone(),
        };
        let pending = PendingCommit {
            table: "t".into(),
            columns: table_columns(&schema, "t").expect("columns"),
            files: vec![
                file("date=2026-12-01/hour=07/a.parquet", 10),
                file("b.parquet", 20),
            ],
            version: 42,
        };
        let back =
            PendingCommit::from_parquet(pending.to_parquet().expect("write").into()).expect("read");
        assert_eq!(back.table, "t");
        assert_eq!(back.version, 42);
        assert_eq!(back.columns, pending.columns);
        assert_eq!(back.files.len(), 2);
        for (a, b) in back.files.iter().zip(&pending.files) {
            assert_eq!(
                (&a.path, &a.date, &a.hour, a.size),
                (&b.path, &b.date, &b.hour, b.size)
            );
            assert_eq!(a.stats, b.stats);
        }
        assert_eq!(stats.len(), 1);
        assert!(PendingCommit::from_parquet(bytes::Bytes::from_static(b"nope")).is_err());
    }

    #[test]
    fn pending_commits_sort_after_their_batch() {
        let p = pending_path("env", "n1", 7);
        assert_eq!(
            p,
            std::path::Path::new(
                "env/_delta_commits/n1-00000000000000000007-00000000000000000007.delta-commit"
            )
        );
        assert!(crate::sink::spool::is_pending_commit(&p));
    }

    #[test]
    fn partition_values_are_typed() {
        let v = partition_values("1970-01-02", "07").expect("values");
        assert_eq!(v["date"], Scalar::Date(1));
        assert_eq!(v["hour"], Scalar::Integer(7));
        assert!(partition_values("2026-13-01", "07").is_none());
        assert!(partition_values("2026-11-30", "x").is_none());
    }
}
