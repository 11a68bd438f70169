//! Sink: where finished parts become files. [`file_name`] and [`relative_path`] derive the name
//! from the node id and the message sequence range (`{node}-{first:020}-{last:020}.parquet`),
//! so a replay of the same range writes the same name. [`LocalSink::publish`] makes the file
//! appear atomically: temp file in the target folder → fsync → rename → fsync folder; readers
//! globbing `*.parquet` never see the hidden `.…tmp` file. With an object-store output the
//! same sink writes into the spool ([`spool`]), and the [`uploader`] sends the files on.

pub mod compact;
#[cfg(feature = "delta")]
pub mod delta;
pub mod publisher;
pub mod retention;
pub mod spool;
pub mod store;
pub mod uploader;

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::BufWriter;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::columnar::encode::{Part, write_parquet};
use crate::config::{FileModes, ParquetOptions};

/// Why a file could not be published.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// Parquet encoding failed.
    #[error("encoding {path}: {source}")]
    Encode {
        /// The file being written.
        path: PathBuf,
        /// The encoder's error.
        source: parquet::errors::ParquetError,
    },
}

/// `{node}-{first_seq}-{last_seq}.parquet`, sequence numbers zero-padded to 20 digits.
pub fn file_name(node: &str, first_seq: u64, last_seq: u64) -> String {
    format!("{node}-{first_seq:020}-{last_seq:020}.parquet")
}

/// `{table}/date=YYYY-MM-DD/hour=HH/{file_name}` relative to the output root.
pub fn relative_path(table: &str, part: &Part, node: &str) -> PathBuf {
    PathBuf::from(table)
        .join(format!("date={}", part.date))
        .join(format!("hour={}", part.hour))
        .join(file_name(node, part.first_seq, part.last_seq))
}

/// The schema file in each table's folder of a local output (see
/// [`LocalSink::publish_schema`]).
pub const SCHEMA_FILE: &str = "_common_metadata";

/// The hive partition columns of the layout, as pyarrow and Polars type them.
const PARTITION_COLUMNS: [(&str, DataType); 2] =
    [("date", DataType::Utf8), ("hour", DataType::Int32)];

/// The Arrow schema of a Parquet file; `None` when it is missing or unreadable.
fn read_schema(path: &Path) -> Option<SchemaRef> {
    let file = File::open(path).ok()?;
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).ok()?;
    Some(reader.schema().clone())
}

/// The Arrow schema of a Parquet file held in memory; `None` when it is not one.
pub fn schema_of(bytes: bytes::Bytes) -> Option<SchemaRef> {
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes).ok()?;
    Some(reader.schema().clone())
}

/// A schema file: a Parquet file with `schema` and no rows.
pub fn schema_file(schema: Schema) -> Result<Vec<u8>, parquet::errors::ParquetError> {
    parquet::arrow::ArrowWriter::try_new(Vec::new(), Arc::new(schema), None)?.into_inner()
}

/// The columns of a table's schema file `before` (another node's, or an earlier run's) with
/// the columns of `schema` added, then `date` and `hour`; `None` when that is what `before`
/// holds already. A column `before` holds with another type keeps that type (logged).
pub fn merge_schema(before: Option<&Schema>, schema: &Schema, table: &str) -> Option<Schema> {
    let before: Vec<Arc<Field>> = before
        .map(|s| s.fields().iter().cloned().collect())
        .unwrap_or_default();
    let partition = |name: &str| PARTITION_COLUMNS.iter().any(|(p, _)| *p == name);
    let mut fields: Vec<Arc<Field>> = before
        .iter()
        .filter(|f| !partition(f.name()))
        .cloned()
        .collect();
    for f in schema.fields().iter().filter(|f| !partition(f.name())) {
        match fields.iter().find(|g| g.name() == f.name()) {
            Some(g) if g.data_type() != f.data_type() => tracing::warn!(
                table,
                column = %f.name(),
                kept = %g.data_type(),
                this_node = %f.data_type(),
                "the lake's schema file holds this column with another type (declared differently on another node?)"
            ),
            Some(_) => {}
            None => fields.push(Arc::new(f.as_ref().clone().with_nullable(true))),
        }
    }
    for (name, data_type) in PARTITION_COLUMNS {
        fields.push(Arc::new(Field::new(name, data_type, true)));
    }
    (fields != before).then(|| Schema::new(fields))
}

/// A published file.
#[derive(Clone, Debug)]
pub struct Published {
    /// Final path.
    pub path: PathBuf,
    /// Rows in the file.
    pub rows: usize,
    /// First message sequence number in the file.
    pub first_seq: u64,
    /// Last message sequence number in the file.
    pub last_seq: u64,
    /// File size.
    pub bytes: u64,
}

/// Where finished batches go.
#[derive(Debug)]
pub enum Output {
    /// Parquet files under a local directory.
    Local(LocalSink),
    /// Parquet files into the spool, for the uploader.
    Spool(LocalSink, std::sync::Arc<spool::Spool>),
    /// Nowhere: each batch is counted as published and dropped, without sorting or encoding
    /// (`output.url = "null:"`, to measure the ingest path alone).
    Discard,
}

/// Publishes files under a local root directory.
#[derive(Clone, Debug)]
pub struct LocalSink {
    root: PathBuf,
    node: String,
    opts: ParquetOptions,
    modes: FileModes,
}

fn set_mode(path: &Path, mode: u32) -> Result<(), SinkError> {
    fs::set_permissions(path, Permissions::from_mode(mode)).map_err(io("chmod", path))
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SinkError + 'a {
    move |source| SinkError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Makes the written temp file `tmp` durable and gives it its name `path`: fsync, rename,
/// fsync of the folder.
fn settle(file: File, tmp: &Path, path: &Path) -> Result<(), SinkError> {
    file.sync_all().map_err(io("fsync", tmp))?;
    drop(file);
    fs::rename(tmp, path).map_err(io("rename", tmp))?;
    fsync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn fsync_dir(dir: &Path) -> Result<(), SinkError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync dir", dir))
}

impl LocalSink {
    /// A sink writing under `root` with file names for `node`, creating files and folders
    /// with exactly `modes` (whatever the umask).
    pub fn new(root: PathBuf, node: String, opts: ParquetOptions, modes: FileModes) -> Self {
        Self {
            root,
            node,
            opts,
            modes,
        }
    }

    /// The folder the lake is written under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The node id in file names.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Writes `bytes` as `{root}/{rel}` atomically and durably, like a data file (blocking).
    pub fn publish_bytes(&self, rel: &Path, bytes: &[u8]) -> Result<PathBuf, SinkError> {
        let path = self.root.join(rel);
        self.create_dirs(path.parent().unwrap_or(&self.root))?;
        let (tmp, mut file) = self.create_temp(&path)?;
        std::io::Write::write_all(&mut file, bytes).map_err(io("write", &tmp))?;
        settle(file, &tmp, &path)?;
        Ok(path)
    }

    /// Creates the root (with the folder mode, when it is new) and removes temp files a crash
    /// left behind; returns how many.
    pub fn prepare(&self) -> Result<usize, SinkError> {
        if !self.root.is_dir() {
            fs::create_dir_all(&self.root).map_err(io("create", &self.root))?;
            set_mode(&self.root, self.modes.dir)?;
        }
        Ok(remove_temp_files(&self.root))
    }

    /// Writes `part` of `table` atomically and durably (blocking).
    pub fn publish(&self, table: &str, part: &Part) -> Result<Published, SinkError> {
        let path = self.root.join(relative_path(table, part, &self.node));
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        self.create_dirs(&dir)?;
        let (tmp, file) = self.create_temp(&path)?;
        let writer = write_parquet(part, &self.opts, BufWriter::with_capacity(256 * 1024, file))
            .map_err(|source| SinkError::Encode {
                path: tmp.clone(),
                source,
            })?;
        let file = writer.into_inner().map_err(|e| SinkError::Io {
            op: "write",
            path: tmp.clone(),
            source: e.into_error(),
        })?;
        let bytes = file.metadata().map_err(io("stat", &tmp))?.len();
        settle(file, &tmp, &path)?;
        Ok(Published {
            path,
            rows: part.records.num_rows(),
            first_seq: part.first_seq,
            last_seq: part.last_seq,
            bytes,
        })
    }

    /// Makes `{root}/{table}/_common_metadata` (a Parquet file with no rows: the Parquet
    /// convention for a dataset's schema) hold every column of `schema` and of what it held
    /// before (another node's columns), then the hive partition columns `date` (string) and
    /// `hour` (int32), so a reader given it reads every column of every file; replaced
    /// atomically, and only when it changes. Returns the file and its size when written. (With
    /// an object store, the uploader merges it with the bucket's likewise.)
    pub fn publish_schema(
        &self,
        table: &str,
        schema: &Schema,
    ) -> Result<Option<(PathBuf, u64)>, SinkError> {
        let dir = self.root.join(table);
        let path = dir.join(SCHEMA_FILE);
        let before = read_schema(&path);
        let Some(merged) = merge_schema(before.as_deref(), schema, table) else {
            return Ok(None);
        };
        self.create_dirs(&dir)?;
        let (tmp, mut file) = self.create_temp(&path)?;
        let bytes = schema_file(merged).map_err(|source| SinkError::Encode {
            path: tmp.clone(),
            source,
        })?;
        std::io::Write::write_all(&mut file, &bytes).map_err(io("write", &tmp))?;
        settle(file, &tmp, &path)?;
        Ok(Some((path, bytes.len() as u64)))
    }

    /// Creates the hidden temp file `.{name}.tmp` beside `path`, with exactly the configured
    /// mode (the umask may have taken bits away).
    fn create_temp(&self, path: &Path) -> Result<(PathBuf, File), SinkError> {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let tmp = path.with_file_name(format!(".{name}.tmp"));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(self.modes.file)
            .open(&tmp)
            .map_err(io("create", &tmp))?;
        set_mode(&tmp, self.modes.file)?;
        Ok((tmp, file))
    }

    /// Creates `dir` and its missing parents below the root, fsyncing each new entry's parent.
    fn create_dirs(&self, dir: &Path) -> Result<(), SinkError> {
        if dir.is_dir() {
            return Ok(());
        }
        let mut missing = Vec::new();
        let mut cur = dir;
        while !cur.is_dir() && cur.starts_with(&self.root) {
            missing.push(cur.to_path_buf());
            match cur.parent() {
                Some(p) => cur = p,
                None => break,
            }
        }
        for d in missing.iter().rev() {
            match fs::create_dir(d) {
                Ok(()) => set_mode(d, self.modes.dir)?,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io("create", d)(e)),
            }
            fsync_dir(d.parent().unwrap_or(&self.root))?;
        }
        Ok(())
    }
}

/// Deletes `.*.tmp` files below `dir` (left by a crash mid-write); returns how many.
fn remove_temp_files(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path.is_dir() {
            removed += remove_temp_files(&path);
        } else if name.starts_with('.') && name.ends_with(".tmp") && fs::remove_file(&path).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests;
