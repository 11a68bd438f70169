//! The uploader against a fault-injecting store: failed first calls, every Nth put failing,
//! lost responses (the write happened, the answer did not arrive), failed multipart
//! completions, and name conflicts. No file may be lost and no object written twice.

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
    PutMultipartOptions, PutResult, UploadPart,
};

use super::*;
use crate::config::SpoolFull;
use crate::sink::spool::SpoolQueue;

/// What the store does wrong, decided per call.
#[derive(Debug, Default)]
struct Faults {
    /// Fail the first N puts (nothing written).
    fail_first: usize,
    /// Fail every Nth put (nothing written); 0: never.
    fail_every: usize,
    /// Of the puts that succeed, lose the answer of the first N (written, error returned).
    lose_answer: usize,
    /// Fail the first N multipart completions (nothing written).
    fail_complete: usize,
    /// Lose the answer of the first N multipart completions (written, error returned).
    lose_complete: usize,
}

#[derive(Debug)]
struct FaultyStore {
    inner: Arc<InMemory>,
    faults: Mutex<Faults>,
    puts: AtomicUsize,
    writes: AtomicUsize,
    aborts: Arc<AtomicUsize>,
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

fn injected(what: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "faulty",
        source: format!("injected fault: {what}").into(),
    }
}

impl FaultyStore {
    fn new(faults: Faults) -> Arc<Self> {
        Arc::new(Self {
            inner: Arc::new(InMemory::new()),
            faults: Mutex::new(faults),
            puts: AtomicUsize::new(0),
            writes: AtomicUsize::new(0),
            aborts: Arc::new(AtomicUsize::new(0)),
        })
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn objects(&self) -> Vec<(String, u64)> {
        let mut all: Vec<_> = self
            .inner
            .list(None)
            .map(|m| m.map(|m| (m.location.to_string(), m.size)))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()
            .expect("list");
        all.sort();
        all
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let n = self.puts.fetch_add(1, Ordering::SeqCst) + 1;
        let lose = {
            let mut f = self.faults();
            if f.fail_first > 0 {
                f.fail_first -= 1;
                return Err(injected("first calls fail"));
            }
            if f.fail_every > 0 && n.is_multiple_of(f.fail_every) {
                return Err(injected("every Nth put fails"));
            }
            let lose = f.lose_answer > 0;
            f.lose_answer = f.lose_answer.saturating_sub(1);
            lose
        };
        let result = self.inner.put_opts(location, payload, opts).await?;
        self.writes.fetch_add(1, Ordering::SeqCst);
        if lose {
            return Err(injected("answer lost after the write"));
        }
        Ok(result)
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let (fail, lose) = {
            let mut f = self.faults();
            let fail = f.fail_complete > 0;
            f.fail_complete = f.fail_complete.saturating_sub(1);
            let lose = !fail && f.lose_complete > 0;
            if lose {
                f.lose_complete -= 1;
            }
            (fail, lose)
        };
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(FaultyUpload {
            inner,
            fail,
            lose,
            aborts: self.aborts.clone(),
        }))
    }

    async fn get_opts(
        &self,
        location: &ObjectPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjectPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjectPath>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[derive(Debug)]
struct FaultyUpload {
    inner: Box<dyn MultipartUpload>,
    fail: bool,
    lose: bool,
    aborts: Arc<AtomicUsize>,
}

#[async_trait]
impl MultipartUpload for FaultyUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        if self.fail {
            return Err(injected("multipart completion fails"));
        }
        let result = self.inner.complete().await?;
        if self.lose {
            return Err(injected("multipart completion answer lost"));
        }
        Ok(result)
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.aborts.fetch_add(1, Ordering::SeqCst);
        self.inner.abort().await
    }
}

/// The spool path of the test file holding sequence numbers `first ..= first + 9`.
fn rel(first: u64) -> PathBuf {
    PathBuf::from("t/date=2026-11-27/hour=08").join(crate::sink::file_name("gw", first, first + 9))
}

async fn read(store: &FaultyStore, key: &ObjectPath) -> Vec<u8> {
    let got = store.inner.get(key).await.expect("get");
    got.bytes().await.expect("bytes").to_vec()
}

/// A spool with `n` files of distinct sizes (`t/date=…/hour=…/gw-{seq}-{seq}.parquet`).
fn spool_with(dir: &Path, n: u64, size: impl Fn(u64) -> usize) -> (Arc<Spool>, Vec<Vec<u8>>) {
    let mut contents = Vec::new();
    for i in 0..n {
        let path = dir.join(rel(i * 10));
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        let data: Vec<u8> = (0..size(i)).map(|b| (b as u64 * 31 + i) as u8).collect();
        std::fs::write(&path, &data).expect("write");
        contents.push(data);
    }
    let spool = Spool::open(
        dir.to_path_buf(),
        SpoolQueue::new(u64::MAX, SpoolFull::Pause),
        Arc::new(Stats::default()),
    );
    (spool, contents)
}

/// Runs an uploader told to finish: it ends when the spool is empty or at its first failure.
async fn drain(store: &Arc<FaultyStore>, spool: &Arc<Spool>, dir: &Path) -> Arc<Stats> {
    let stats = Arc::new(Stats::default());
    let (_tx, rx) = watch::channel(true);
    let uploader = Uploader::new(
        store.clone(),
        spool.clone(),
        UploaderConfig {
            prefix: "lake/v1".into(),
            conflicts: dir.join("conflicts"),
            multipart_threshold: 1 << 20,
            first_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(4),
        },
        stats.clone(),
        rx,
    );
    // finish = true from the start: it ends when the spool is empty or at the first failure
    // (as at shutdown); callers run it again, the way the daemon's next start would.
    tokio::time::timeout(Duration::from_secs(30), uploader.run())
        .await
        .expect("uploader finishes");
    stats
}

#[tokio::test]
async fn faults_lose_nothing_and_write_nothing_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, contents) = spool_with(dir.path(), 12, |i| 1000 + i as usize);
    let store = FaultyStore::new(Faults {
        fail_first: 2,
        fail_every: 3,
        lose_answer: 3,
        ..Faults::default()
    });
    let stats = Arc::new(Stats::default());
    let (finish_tx, finish_rx) = watch::channel(false);
    let uploader = Uploader::new(
        store.clone(),
        spool.clone(),
        UploaderConfig {
            prefix: "lake/v1".into(),
            conflicts: dir.path().join("conflicts"),
            multipart_threshold: 1 << 20,
            first_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(4),
        },
        stats.clone(),
        finish_rx,
    );
    let task = tokio::spawn(uploader.run());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !spool.is_empty() {
        assert!(Instant::now() < deadline, "spool never emptied");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    finish_tx.send(true).expect("uploader alive");
    task.await.expect("uploader");

    let objects = store.objects().await;
    assert_eq!(objects.len(), 12, "one object per file: {objects:?}");
    for (i, data) in contents.iter().enumerate() {
        let key = object_key("lake/v1", &rel(i as u64 * 10));
        assert_eq!(
            &read(&store, &key).await,
            data,
            "object {key} holds the file's bytes"
        );
    }
    assert_eq!(
        store.writes.load(Ordering::SeqCst),
        12,
        "no object was written twice"
    );
    assert_eq!(stats.files_uploaded.load(Ordering::Relaxed), 12);
    let failed: u64 = stats.upload_errors().iter().map(|(_, n)| n).sum();
    assert!(failed >= 5, "the injected faults were seen: {failed}");
    assert_eq!(
        spool_files(dir.path()),
        0,
        "every uploaded file left the spool"
    );
}

fn spool_files(dir: &Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = entry.path();
        if p.is_dir() {
            n += spool_files(&p);
        } else if p.extension().is_some_and(|e| e == "parquet") {
            n += 1;
        }
    }
    n
}

#[tokio::test]
async fn multipart_failures_abort_and_a_lost_completion_is_not_repeated() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 2.5 parts each, above the 1 MiB threshold used here.
    let (spool, contents) = spool_with(dir.path(), 2, |_| PART_SIZE * 2 + PART_SIZE / 2);
    let store = FaultyStore::new(Faults {
        fail_complete: 1,
        lose_complete: 1,
        ..Faults::default()
    });
    let mut stats = Vec::new();
    // Each run ends at its first failure (finish is set): like restarts after errors.
    for _ in 0..4 {
        if spool.is_empty() {
            break;
        }
        stats.push(drain(&store, &spool, dir.path()).await);
    }
    assert!(spool.is_empty(), "everything uploaded within 4 runs");
    let objects = store.objects().await;
    assert_eq!(objects.len(), 2, "{objects:?}");
    for (i, (_, size)) in objects.iter().enumerate() {
        assert_eq!(*size as usize, contents[i].len());
    }
    assert!(
        store.aborts.load(Ordering::SeqCst) >= 1,
        "the failed upload was aborted"
    );
    let uploaded: u64 = stats
        .iter()
        .map(|s| s.files_uploaded.load(Ordering::Relaxed))
        .sum();
    assert_eq!(uploaded, 2);
}

#[tokio::test]
async fn a_different_object_under_the_name_is_never_overwritten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, contents) = spool_with(dir.path(), 2, |_| 500);
    let store = FaultyStore::new(Faults::default());
    let rel0 = rel(0);
    let key0 = object_key("lake/v1", &rel0);
    store
        .inner
        .put(&key0, PutPayload::from_static(b"someone else's file"))
        .await
        .expect("put");
    let stats = drain(&store, &spool, dir.path()).await;
    assert!(spool.is_empty());
    assert_eq!(
        read(&store, &key0).await,
        b"someone else's file",
        "not overwritten"
    );
    let aside = dir.path().join("conflicts").join(&rel0);
    assert_eq!(std::fs::read(&aside).expect("moved aside"), contents[0]);
    let conflicts = stats
        .upload_errors()
        .into_iter()
        .find(|(k, _)| *k == UploadErrorKind::Conflict)
        .map(|(_, n)| n);
    assert_eq!(conflicts, Some(1));
    assert_eq!(
        stats.files_uploaded.load(Ordering::Relaxed),
        1,
        "the other file went up"
    );
}

#[tokio::test]
async fn a_same_size_object_counts_as_sent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, contents) = spool_with(dir.path(), 1, |_| 700);
    let store = FaultyStore::new(Faults::default());
    store
        .inner
        .put(
            &object_key("lake/v1", &rel(0)),
            PutPayload::from(contents[0].clone()),
        )
        .await
        .expect("put");
    let stats = drain(&store, &spool, dir.path()).await;
    assert!(spool.is_empty());
    assert_eq!(stats.files_uploaded.load(Ordering::Relaxed), 1);
    assert_eq!(store.objects().await.len(), 1);
}

#[tokio::test]
async fn a_schema_file_is_merged_into_the_buckets_and_put_only_when_it_adds_columns()
-> Result<(), Box<dyn std::error::Error>> {
    use arrow::datatypes::{DataType, Field, Schema};
    let store = InMemory::new();
    let key = ObjectPath::from("p/t/_common_metadata");
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("_common_metadata");
    let schema = |names: &[&str]| {
        Schema::new(
            names
                .iter()
                .map(|n| Field::new(*n, DataType::Float64, true))
                .collect::<Vec<_>>(),
        )
    };
    let names = |bytes: bytes::Bytes| -> Vec<String> {
        crate::sink::schema_of(bytes)
            .map(|s| s.fields().iter().map(|f| f.name().clone()).collect())
            .unwrap_or_default()
    };
    // Another node put `a`; this one knows `b`.
    let theirs = crate::sink::schema_file(schema(&["a"]))?;
    store.put(&key, PutPayload::from(theirs)).await?;
    std::fs::write(&path, crate::sink::schema_file(schema(&["b"]))?)?;
    assert_eq!(upload_schema(&store, &key, &path).await?, Sent::Uploaded);
    let merged = store.get(&key).await?.bytes().await?;
    assert_eq!(names(merged), ["a", "b", "date", "hour"]);
    // Nothing new: left as it is.
    assert_eq!(
        upload_schema(&store, &key, &path).await?,
        Sent::AlreadyThere
    );
    // An empty bucket takes the file as it is.
    let fresh = ObjectPath::from("p/u/_common_metadata");
    assert_eq!(upload_schema(&store, &fresh, &path).await?, Sent::Uploaded);
    assert_eq!(names(store.get(&fresh).await?.bytes().await?), ["b"]);
    Ok(())
}
