//! The uploader task: sends spooled files to the object store, oldest first, one at a time, and
//! deletes each from the spool once the store has it. [`upload_file`] never overwrites: files
//! up to `output.multipart_threshold` go in one PUT with `PutMode::Create`; larger ones as a
//! multipart upload (aborted on failure) after a HEAD. An object already there with the same
//! size is a retry after a lost response and counts as sent; another size is a conflict (two
//! nodes with one node id?): the file is moved to `spool-conflicts/`, never lost, never
//! overwriting.
//!
//! Failures are retried with a capped exponential backoff (object_store retries each request
//! briefly; this loop covers outages of hours or days). The ingest path never waits on it;
//! only a full spool under `spool_full = "pause"` does.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use super::spool::{Spool, Spooled};
use super::store::{classify, object_key};
use crate::telemetry::{Stats, UploadErrorKind};

/// Size of each part of a multipart upload (S3 wants at least 5 MiB but for the last).
pub const PART_SIZE: usize = 8 << 20;
/// Parts in flight at once (memory: this many × [`PART_SIZE`]).
const PARTS_IN_FLIGHT: usize = 2;
/// First wait after a failed upload (the daemon's value).
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// How a file reached the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// Uploaded now.
    Uploaded,
    /// An object of the same size was already there (an earlier attempt succeeded but its
    /// answer was lost).
    AlreadyThere,
}

/// Why an upload failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The store refused or did not answer.
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    /// The spooled file could not be read.
    #[error("reading {path}: {source}")]
    Local {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// A Delta commit failed (the commit stays in the spool and is retried).
    #[error("delta commit: {0}")]
    Delta(String),
    /// Another object already has this name.
    #[error(
        "{key} already exists with {remote} bytes but the spooled file has {local}: is node.id shared by two nodes?"
    )]
    Conflict {
        /// The object key.
        key: String,
        /// Size in the store.
        remote: u64,
        /// Size of the spooled file.
        local: u64,
    },
}

impl UploadError {
    /// The metrics label.
    pub fn kind(&self) -> UploadErrorKind {
        match self {
            Self::Store(e) => classify(e),
            Self::Local { .. } => UploadErrorKind::LocalIo,
            Self::Delta(_) => UploadErrorKind::Other,
            Self::Conflict { .. } => UploadErrorKind::Conflict,
        }
    }
}

/// Sends the file at `path` to `key` without ever overwriting another object.
pub async fn upload_file(
    store: &dyn ObjectStore,
    key: &ObjectPath,
    path: &Path,
    multipart_threshold: u64,
) -> Result<Sent, UploadError> {
    let local = |source| UploadError::Local {
        path: path.to_path_buf(),
        source,
    };
    let size = tokio::fs::metadata(path).await.map_err(local)?.len();
    if size <= multipart_threshold {
        let data = tokio::fs::read(path).await.map_err(local)?;
        let opts = PutOptions::from(PutMode::Create);
        return match store.put_opts(key, PutPayload::from(data), opts).await {
            Ok(_) => Ok(Sent::Uploaded),
            Err(object_store::Error::AlreadyExists { .. }) => same_size(store, key, size).await,
            Err(e) => Err(e.into()),
        };
    }
    // Multipart uploads have no create-only mode everywhere: look first.
    match store.head(key).await {
        Ok(meta) => return compare(key, meta.size, size),
        Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let mut upload = store.put_multipart(key).await?;
    let sent = send_parts(upload.as_mut(), path, size).await;
    match sent {
        Ok(()) => match upload.complete().await {
            Ok(_) => Ok(Sent::Uploaded),
            Err(e) => {
                let _ = upload.abort().await;
                Err(e.into())
            }
        },
        Err(e) => {
            if let Err(abort) = upload.abort().await {
                tracing::debug!(error = %abort, "aborting a failed multipart upload");
            }
            Err(e)
        }
    }
}

/// Puts a table's spooled schema file (`_common_metadata`) at `key`, merged with the one the
/// bucket holds (another node's columns stay). Unlike data files it is replaced: a
/// read-modify-write, so two nodes putting it at the same instant may drop the other's new
/// column until either adds a column again or restarts.
pub async fn upload_schema(
    store: &dyn ObjectStore,
    key: &ObjectPath,
    path: &Path,
) -> Result<Sent, UploadError> {
    let local = |source| UploadError::Local {
        path: path.to_path_buf(),
        source,
    };
    let ours = tokio::fs::read(path).await.map_err(local)?;
    let Some(schema) = super::schema_of(bytes::Bytes::from(ours.clone())) else {
        let bad = std::io::Error::new(std::io::ErrorKind::InvalidData, "not a schema file");
        return Err(local(bad));
    };
    let theirs = match store.get(key).await {
        Ok(found) => super::schema_of(found.bytes().await?),
        Err(object_store::Error::NotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let data = match theirs {
        Some(theirs) => match super::merge_schema(Some(&theirs), &schema, key.as_ref()) {
            Some(merged) => {
                super::schema_file(merged).map_err(|e| local(std::io::Error::other(e)))?
            }
            None => return Ok(Sent::AlreadyThere),
        },
        None => ours,
    };
    let opts = PutOptions::from(PutMode::Overwrite);
    store.put_opts(key, PutPayload::from(data), opts).await?;
    Ok(Sent::Uploaded)
}

/// Reads the file in [`PART_SIZE`] parts and uploads them, a few at a time.
async fn send_parts(
    upload: &mut dyn object_store::MultipartUpload,
    path: &Path,
    size: u64,
) -> Result<(), UploadError> {
    let local = |source| UploadError::Local {
        path: path.to_path_buf(),
        source,
    };
    let mut file = tokio::fs::File::open(path).await.map_err(local)?;
    let mut pending = std::collections::VecDeque::new();
    let mut left = size;
    while left > 0 {
        let len = PART_SIZE.min(usize::try_from(left).unwrap_or(PART_SIZE));
        let mut buf = vec![0; len];
        file.read_exact(&mut buf).await.map_err(local)?;
        left -= len as u64;
        pending.push_back(tokio::spawn(upload.put_part(PutPayload::from(buf))));
        if pending.len() >= PARTS_IN_FLIGHT {
            await_part(pending.pop_front()).await?;
        }
    }
    while let Some(part) = pending.pop_front() {
        await_part(Some(part)).await?;
    }
    Ok(())
}

async fn await_part(
    part: Option<tokio::task::JoinHandle<object_store::Result<()>>>,
) -> Result<(), UploadError> {
    let Some(part) = part else { return Ok(()) };
    match part.await {
        Ok(result) => result.map_err(UploadError::from),
        Err(join) => Err(UploadError::Store(object_store::Error::JoinError {
            source: join,
        })),
    }
}

async fn same_size(
    store: &dyn ObjectStore,
    key: &ObjectPath,
    size: u64,
) -> Result<Sent, UploadError> {
    let meta = store.head(key).await?;
    compare(key, meta.size, size)
}

fn compare(key: &ObjectPath, remote: u64, local: u64) -> Result<Sent, UploadError> {
    if remote == local {
        Ok(Sent::AlreadyThere)
    } else {
        Err(UploadError::Conflict {
            key: key.to_string(),
            remote,
            local,
        })
    }
}

/// Uploads spooled files until told to finish and the spool is empty.
#[derive(Debug)]
pub struct Uploader {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    spool: Arc<Spool>,
    conflicts: PathBuf,
    multipart_threshold: u64,
    first_backoff: Duration,
    max_backoff: Duration,
    stats: Arc<Stats>,
    finish: watch::Receiver<bool>,
    /// The Delta tables the spooled commits go to (`output.table_format = "delta"`).
    #[cfg(feature = "delta")]
    delta: Option<Arc<super::delta::DeltaLake>>,
}

/// What the uploader needs besides the store and the spool.
#[derive(Debug)]
pub struct UploaderConfig {
    /// Key prefix.
    pub prefix: String,
    /// Where conflicting files are moved.
    pub conflicts: PathBuf,
    /// Single PUT up to this size.
    pub multipart_threshold: u64,
    /// First retry wait ([`FIRST_BACKOFF`]).
    pub first_backoff: Duration,
    /// Retry backoff cap.
    pub max_backoff: Duration,
}

impl Uploader {
    /// An uploader; it ends once `finish` is true and the spool is empty (or at the first
    /// failure after `finish`: what is left stays spooled for the next start).
    pub fn new(
        store: Arc<dyn ObjectStore>,
        spool: Arc<Spool>,
        config: UploaderConfig,
        stats: Arc<Stats>,
        finish: watch::Receiver<bool>,
    ) -> Self {
        Self {
            store,
            prefix: config.prefix,
            spool,
            conflicts: config.conflicts,
            multipart_threshold: config.multipart_threshold,
            first_backoff: config.first_backoff,
            max_backoff: config.max_backoff,
            stats,
            finish,
            #[cfg(feature = "delta")]
            delta: None,
        }
    }

    /// Commits the spooled Delta commits into `delta`'s tables once their files are uploaded.
    #[cfg(feature = "delta")]
    pub fn with_delta(mut self, delta: Arc<super::delta::DeltaLake>) -> Self {
        self.delta = Some(delta);
        self
    }

    /// Runs the upload loop.
    pub async fn run(mut self) {
        let mut backoff = self.first_backoff;
        let mut failing_since: Option<Instant> = None;
        loop {
            if *self.finish.borrow() && self.spool.is_empty() {
                break;
            }
            let file = tokio::select! {
                f = self.spool.take_oldest() => f,
                changed = self.finish.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    continue;
                }
            };
            match self.upload(&file).await {
                Ok(()) => {
                    if let Some(since) = failing_since.take() {
                        tracing::info!(
                            outage_secs = since.elapsed().as_secs(),
                            "object store reachable again: uploading the backlog"
                        );
                    }
                    backoff = self.first_backoff;
                }
                Err(e) => {
                    self.spool.failed();
                    self.stats.upload_failed(e.kind());
                    failing_since.get_or_insert_with(Instant::now);
                    tracing::warn!(
                        file = %file.rel.display(),
                        kind = e.kind().label(),
                        error = %e,
                        retry_in = ?backoff,
                        "upload failed; the file stays in the spool"
                    );
                    if *self.finish.borrow() {
                        break;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = self.finish.changed() => {}
                    }
                    backoff = (backoff * 2).min(self.max_backoff);
                }
            }
        }
        tracing::debug!(left = self.spool.is_empty(), "uploader finished");
    }

    /// Moves a spooled file to the conflicts folder (never deleted, never uploaded).
    fn move_aside(&self, file: &Spooled) -> std::io::Result<PathBuf> {
        let aside = self.conflicts.join(&file.rel);
        aside
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::rename(self.spool.root().join(&file.rel), &aside))?;
        Ok(aside)
    }

    /// Commits a spooled Delta commit: the files it lists that the store holds (all of them,
    /// unless `drop_oldest` deleted some unsent) go into the table in one commit, then the
    /// commit leaves the spool. Files come before their commit in the spool, so they are up.
    #[cfg(feature = "delta")]
    async fn commit(&self, file: &Spooled, path: &Path) -> Result<(), UploadError> {
        use super::delta::PendingCommit;
        let Some(delta) = self.delta.clone() else {
            let aside = self.move_aside(file);
            tracing::error!(file = %file.rel.display(), moved_to = ?aside, "a Delta commit waits in the spool but output.table_format is not \"delta\": moved aside, not committed");
            self.spool.done();
            return Ok(());
        };
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|source| UploadError::Local {
                path: path.to_path_buf(),
                source,
            })?;
        let mut pending = match PendingCommit::from_parquet(bytes.into()) {
            Ok(p) => p,
            Err(e) => {
                let aside = self.move_aside(file);
                tracing::error!(file = %file.rel.display(), error = %e, moved_to = ?aside, "an unreadable Delta commit in the spool: moved aside");
                self.spool.done();
                return Ok(());
            }
        };
        let mut present = Vec::with_capacity(pending.files.len());
        for f in pending.files.drain(..) {
            let key = object_key(&self.prefix, &Path::new(&pending.table).join(&f.path));
            match self.store.head(&key).await {
                Ok(meta) if meta.size == f.size => present.push(f),
                Ok(meta) => {
                    tracing::error!(key = %key, store_bytes = meta.size, file_bytes = f.size, "the store holds another object under this name: not added to the Delta table")
                }
                Err(object_store::Error::NotFound { .. }) => {
                    tracing::warn!(key = %key, "not in the store (deleted from the spool unsent): not added to the Delta table")
                }
                Err(e) => return Err(e.into()),
            }
        }
        pending.files = present;
        crate::fault::point("delta-upload-before-commit");
        let started = Instant::now();
        let files = pending.files.len();
        let done = match files {
            0 => None,
            _ => Some(
                tokio::task::spawn_blocking(move || delta.commit_pending(&pending))
                    .await
                    .map_err(|e| UploadError::Delta(e.to_string()))?
                    .map_err(|e| UploadError::Delta(e.to_string()))?,
            ),
        };
        crate::fault::point("delta-upload-after-commit");
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot delete a committed Delta commit from the spool");
        }
        self.spool.done();
        tracing::info!(file = %file.rel.display(), files, ?done, elapsed_ms = started.elapsed().as_millis() as u64, "delta commit");
        Ok(())
    }

    /// Uploads one file and takes it out of the spool; a conflict moves it aside.
    async fn upload(&self, file: &Spooled) -> Result<(), UploadError> {
        let path = self.spool.root().join(&file.rel);
        if super::spool::is_pending_commit(&file.rel) {
            #[cfg(feature = "delta")]
            return self.commit(file, &path).await;
            #[cfg(not(feature = "delta"))]
            {
                let aside = self.move_aside(file);
                tracing::error!(file = %file.rel.display(), moved_to = ?aside, "a Delta commit waits in the spool but this build has no Delta support: moved aside");
                self.spool.done();
                return Ok(());
            }
        }
        let key = object_key(&self.prefix, &file.rel);
        let started = Instant::now();
        let schema = file.rel.file_name() == Some(std::ffi::OsStr::new(super::SCHEMA_FILE));
        let sent = if schema {
            upload_schema(&*self.store, &key, &path).await
        } else {
            upload_file(&*self.store, &key, &path, self.multipart_threshold).await
        };
        match sent {
            Ok(sent) => {
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot delete an uploaded file from the spool");
                }
                self.spool.done();
                if schema {
                    // Not a data file: not counted in files_uploaded_total.
                    let changed = sent == Sent::Uploaded;
                    tracing::info!(key = %key, changed, "table schema file merged into the bucket's");
                    return Ok(());
                }
                Stats::add(&self.stats.files_uploaded, 1);
                Stats::add(&self.stats.upload_bytes, file.bytes);
                tracing::info!(
                    key = %key,
                    bytes = file.bytes,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    already_there = sent == Sent::AlreadyThere,
                    multipart = file.bytes > self.multipart_threshold,
                    "uploaded"
                );
                Ok(())
            }
            Err(UploadError::Local { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                // Deleted by hand: nothing to send, nothing to keep.
                tracing::warn!(path = %path.display(), "a spooled file vanished before its upload");
                self.spool.done();
                Ok(())
            }
            Err(e @ UploadError::Conflict { .. }) => match self.move_aside(file) {
                Ok(aside) => {
                    self.spool.done();
                    self.stats.upload_failed(e.kind());
                    tracing::error!(error = %e, moved_to = %aside.display(), "upload conflict: the file was moved aside, not uploaded");
                    Ok(())
                }
                Err(io) => {
                    tracing::error!(error = %e, move_error = %io, "upload conflict, and the file cannot be moved aside");
                    Err(e)
                }
            },
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests;
