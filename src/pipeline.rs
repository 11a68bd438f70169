//! The pipeline's frame: builds every stage from the [`Config`] and owns their order.
//!
//! [`Pipeline::start`] starts the stages downstream first, so each finds its consumer
//! running: the output (and its uploader), the publisher, the batcher, the WAL replay into
//! the batcher ([`recovery`](crate::recovery)), the WAL writer on a new segment, then the
//! sources: the gRPC server, the bridges, the MQTT listener. [`Pipeline::stop`] goes the other
//! way: the sources stop (the listener and each connection; the gRPC server answers what it
//! has read); once the last source's handle is gone the WAL writer writes what it holds and
//! ends; the batcher sees its input close and flushes every partial batch; the publisher ends
//! after the last file; the uploader gets a few seconds; then the WAL segments the checkpoint
//! covers are deleted. In the broker role the broker (with its retained messages, from their
//! snapshot and the WAL) exists before the replay, and its fan-out thread starts with the WAL
//! writer and ends after it. A WAL write or fsync error, or a stage ending on its own, is a
//! [`Failure`]: the daemon exits non-zero and the restart replays the log.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::admit::Ingest;
use crate::auth::{Authenticator, GrpcPolicy};
use crate::batch::{Batcher, Batches};
use crate::bridge::{Bridge, Redelivery, redelivery};
use crate::broker::{Broker, fanout};
use crate::budget::Budget;
use crate::columnar::SchemaDir;
use crate::config::{Config, FileModes, OutputTarget};
use crate::grpc::server::GrpcServer;
use crate::mqtt::{Listener, Routes};
use crate::recovery::{Recovered, Replay};
use crate::sink::publisher::{Progress, Publisher, Retained};
use crate::sink::retention::RetainedDir;
use crate::sink::spool::{Spool, SpoolQueue};
use crate::sink::uploader::{self, Uploader, UploaderConfig};
use crate::sink::{LocalSink, Output, store};
use crate::telemetry::{Heartbeats, Notifier, Stats};
use crate::tls::ServerTls;
use crate::wal::writer::{WriterParts, WriterResult};
use crate::wal::{self, Admitted, Checkpoint, CheckpointFile, DiskFs, Log};

/// Messages queued between the WAL writer (and the replay) and the batcher; their bytes are
/// bounded by the budget.
const INGEST_QUEUE: usize = 4096;
/// Finished batches waiting for the publisher.
const READY_QUEUE: usize = 2;
/// Longest wait at shutdown for the uploader to send what the last batches spooled.
const UPLOAD_DRAIN: Duration = Duration::from_secs(5);

/// What the stages share: the budget, the counters, the watchdog's heartbeats.
#[derive(Debug, Clone)]
pub struct Shared {
    /// The memory budget.
    pub budget: Budget,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Stages beat here (watchdog).
    pub heartbeats: Arc<Heartbeats>,
    /// systemd notifications (the replay's progress).
    pub notifier: Arc<Notifier>,
}

/// The security a source needs, read before start (see `app::load_security`).
#[derive(Debug)]
pub struct Security {
    /// MQTT clients.
    pub mqtt: Authenticator,
    /// gRPC callers.
    pub grpc: GrpcPolicy,
}

/// Where the sources listen (`None`: off).
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    /// Plain MQTT.
    pub mqtt: Option<SocketAddr>,
    /// MQTT over TLS.
    pub mqtt_tls: Option<SocketAddr>,
    /// gRPC.
    pub grpc: Option<SocketAddr>,
}

/// Why the pipeline stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// A WAL write or fsync failed.
    #[error("WAL write or fsync failed: {0}")]
    Wal(std::io::Error),
    /// The WAL writer or the batcher ended without being asked to.
    #[error("the {0} stopped on its own")]
    Stage(&'static str),
}

/// The running stages, in start order.
#[derive(Debug)]
pub struct Pipeline {
    uploads: Option<Uploads>,
    /// Delta compaction and vacuum, and what stops it.
    compactor: Option<(watch::Sender<bool>, JoinHandle<()>)>,
    publisher: JoinHandle<()>,
    batcher: JoinHandle<()>,
    wal_end: oneshot::Receiver<WriterResult<DiskFs>>,
    low_water: Arc<AtomicU64>,
    /// The broker, its fan-out thread and its WAL hold (broker role only).
    fanout: Option<(Arc<Broker>, std::thread::JoinHandle<()>, Arc<AtomicU64>)>,
    shutdown: watch::Sender<bool>,
    /// Where the sources listen.
    pub addrs: Addrs,
    /// WAL records found at start.
    pub recovered_records: u64,
    /// TLS configs that SIGHUP reloads.
    pub tls: Vec<Arc<ServerTls>>,
    stats: Arc<Stats>,
}

impl Pipeline {
    /// Starts every stage in order (see the module docs); returns once the sources accept.
    pub async fn start(config: &Config, shared: Shared, security: Security) -> Result<Self> {
        let stats = shared.stats.clone();
        // 1. The output (and, for an object store, its uploader).
        let (sink, uploads) = output(config, &stats)?;
        let wal_dir = config.data_dir.join("wal");
        let fs = DiskFs::open(&wal_dir)
            .with_context(|| format!("opening the WAL directory {}", wal_dir.display()))?;
        let checkpoint_file = CheckpointFile::new(&wal_dir);
        let checkpoint = checkpoint_file
            .load()
            .context("reading the WAL checkpoint")?;
        let low_water = Arc::new(AtomicU64::new(checkpoint.low_water));
        let schemas = SchemaDir::open(&config.data_dir)?;
        let stored_schemas = schemas.load()?;
        // 2. The publisher.
        let (ready_tx, ready_rx) = mpsc::channel(READY_QUEUE);
        let progress = Progress {
            file: checkpoint_file,
            checkpoint: checkpoint.clone(),
            low_water: low_water.clone(),
            schemas,
        };
        let retained = {
            let (config, stats) = (config.clone(), stats.clone());
            tokio::task::spawn_blocking(move || retained(&config, &stats)).await??
        };
        #[cfg(feature = "delta")]
        let sink_root = match &sink {
            Output::Local(s) => Some(s.clone()),
            _ => None,
        };
        let publisher = Publisher::new(ready_rx, Arc::new(sink), stats.clone(), progress)
            .with_retention(retained);
        // Delta: a local lake's publisher commits; an object store's spools the commits for
        // the uploader.
        #[cfg(feature = "delta")]
        let lake = delta_lake(config, &stats)?;
        #[cfg(feature = "delta")]
        let publisher = match (&config.output, &lake) {
            (OutputTarget::Local(_), Some(lake)) => publisher.with_delta(lake.clone()),
            (OutputTarget::Remote(_), Some(_)) => publisher.with_pending_commits(),
            _ => publisher,
        };
        #[cfg(feature = "delta")]
        let compactor = compactor(config, lake, &sink_root, &shared, &stats);
        #[cfg(not(feature = "delta"))]
        let compactor = None;
        let publisher = tokio::spawn(publisher.run());
        // 3. The batcher, holding back the batch a crash may have cut.
        let (batch_tx, batch_rx) = mpsc::channel(INGEST_QUEUE);
        let mut batches = Batches::new(config.batch, shared.budget.total() / 2, stats.clone())
            .with_declared(&config.declared)
            .with_clock(config.clock)
            .with_schemas(stored_schemas);
        if config.table_format != crate::config::TableFormat::Parquet {
            batches = batches.with_forbidden_chars(crate::columnar::builder::DELTA_FORBIDDEN_CHARS);
        }
        if let Some(cut) = &checkpoint.in_progress {
            batches.hold(&Arc::from(cut.table.as_str()), cut.last_seq);
        }
        let batcher = Batcher::new(batch_rx, ready_tx, batches, shared.heartbeats.clone());
        let batcher = tokio::spawn(batcher.run());
        // 4. Recovery: the WAL replayed into the batcher (and retained messages into the broker).
        let broker = match config.broker.enabled {
            true => Some(Arc::new(
                start_broker(config, &stats)
                    .await?
                    .with_acl(security.mqtt.acl()),
            )),
            false => None,
        };
        let Recovered {
            fs,
            log: found,
            redelivery,
            recent,
        } = recover(
            config,
            &shared,
            &checkpoint,
            fs,
            batch_tx.clone(),
            broker.clone(),
        )
        .await?;
        let hold = Arc::new(AtomicU64::new(u64::MAX));
        let fanout = match &broker {
            Some(b) => {
                // What the replay added to the broker goes into new snapshots first.
                let (b2, dir) = (b.clone(), config.data_dir.clone());
                tokio::task::spawn_blocking(move || fanout::snapshot_now(&b2, &dir))
                    .await?
                    .context("writing the retained-message snapshot")?;
                let (feed, thread) = fanout::spawn(b.clone(), &config.data_dir, hold.clone())
                    .context("starting the broker's fan-out thread")?;
                Some((feed, thread))
            }
            None => None,
        };
        let (feed, fanout) = match (fanout, &broker) {
            (Some((feed, thread)), Some(b)) => {
                (Some(feed), Some((b.clone(), thread, hold.clone())))
            }
            _ => (None, None),
        };
        // 5. The WAL writer, on a new segment after everything found.
        let next_seq = found.next_seq().max(checkpoint.next_seq_floor());
        let log = Log::start(fs, found.segments, next_seq, config.wal.segment_size)
            .with_context(|| format!("starting a WAL segment in {}", wal_dir.display()))?;
        let parts = WriterParts {
            out: batch_tx,
            sync_interval: config.wal.sync_interval,
            low_water: low_water.clone(),
            // Published segments stay a while: their records seed the bridges' redelivery
            // filters and the MQTT clients' recent messages after a crash.
            release_grace: if config.bridges.is_empty()
                && config.mqtt.listen.is_none()
                && config.mqtt.tls.is_none()
            {
                Duration::ZERO
            } else {
                crate::bridge::SEGMENT_GRACE
            },
            stats: stats.clone(),
            heartbeats: shared.heartbeats.clone(),
            fanout: feed,
            hold,
        };
        let (wal, wal_end) =
            wal::writer::spawn(log, parts).context("starting the WAL writer thread")?;
        // 6. The sources, last.
        let ingest = Ingest::new(wal, shared.budget, stats.clone(), config.qos0_when_full);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let sources = Sources {
            ingest,
            stats: stats.clone(),
            shutdown: shutdown_rx,
        };
        let routes = Routes {
            router: config.router(),
            broker,
            recent,
        };
        let (addrs, tls) = sources.start(config, security, redelivery, routes).await?;
        Ok(Self {
            uploads,
            compactor,
            publisher,
            batcher,
            wal_end,
            low_water,
            fanout,
            shutdown,
            addrs,
            recovered_records: found.records,
            tls,
            stats,
        })
    }

    /// Resolves if the batcher or the WAL writer ends on its own (cancel-safe: the stages
    /// keep running when this future is dropped).
    pub async fn failed(&mut self) -> Failure {
        tokio::select! {
            _ = &mut self.batcher => Failure::Stage("batcher"),
            end = &mut self.wal_end => match end {
                Ok(Err(e)) => Failure::Wal(e),
                _ => Failure::Stage("WAL writer"),
            },
        }
    }

    /// Tells every source to stop, and lets the rest of the pipeline go (after a
    /// [`Failure`]: nothing more can be made durable, so nothing is flushed).
    pub fn abandon(self) {
        let _ = self.shutdown.send(true);
    }

    /// Stops the stages in reverse order (see the module docs) within `grace`. `interrupt`
    /// resolving (a second signal) forces the stop. Returns whether everything was flushed.
    pub async fn stop(self, grace: Duration, interrupt: impl Future<Output = ()>) -> bool {
        let Self {
            uploads,
            compactor,
            publisher,
            batcher,
            mut wal_end,
            low_water,
            fanout,
            shutdown,
            stats,
            ..
        } = self;
        let _ = shutdown.send(true);
        if let Some((stop, task)) = compactor {
            // It stops between two output files; a file being written is finished.
            let _ = stop.send(true);
            let _ = task.await;
        }
        let mut wal_log = None;
        let drained = async {
            match (&mut wal_end).await {
                Ok(Ok(log)) => wal_log = Some(log),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "WAL write or fsync failed during shutdown")
                }
                Err(_) => {}
            }
            let _ = batcher.await;
            let _ = publisher.await;
        };
        // The fan-out ends once the WAL writer dropped its feed (after its last snapshot).
        let hold = match fanout {
            Some((broker, thread, hold)) => {
                broker.close_feed();
                let _ = tokio::task::spawn_blocking(move || thread.join()).await;
                hold.load(Ordering::Acquire)
            }
            None => u64::MAX,
        };
        let started = Instant::now();
        let clean = tokio::select! {
            () = drained => true,
            () = tokio::time::sleep(grace) => {
                tracing::error!(?grace, "shutdown grace period over; unflushed data is lost");
                false
            }
            () = interrupt => false,
        };
        if let Some(uploads) = uploads {
            let left = grace.saturating_sub(started.elapsed());
            uploads.finish(left.min(UPLOAD_DRAIN)).await;
        }
        if let Some(mut log) = wal_log.filter(|_| clean) {
            match log.release(low_water.load(Ordering::Acquire).min(hold), true) {
                Ok(n) => Stats::add(&stats.wal_segments_released, n as u64),
                Err(e) => tracing::warn!(error = %e, "cannot delete published WAL segments"),
            }
        }
        clean
    }
}

/// What every source gets: the front door, the counters, the shutdown signal.
struct Sources {
    ingest: Ingest,
    stats: Arc<Stats>,
    shutdown: watch::Receiver<bool>,
}

impl Sources {
    /// Starts the gRPC server, the bridges and the MQTT listener; returns where they listen
    /// and the TLS configs SIGHUP reloads.
    async fn start(
        self,
        config: &Config,
        security: Security,
        mut redelivery: HashMap<String, Redelivery>,
        routes: Routes,
    ) -> Result<(Addrs, Vec<Arc<ServerTls>>)> {
        let mut tls = Vec::new();
        let grpc = match config.grpc.listen {
            Some(listen) => {
                let server = GrpcServer::bind(
                    listen,
                    &config.grpc,
                    security.grpc,
                    self.ingest.clone(),
                    self.stats.clone(),
                    self.shutdown.clone(),
                )
                .await
                .with_context(|| format!("binding grpc.listen {listen}"))?;
                let addr = server.local_addr()?;
                tls.extend(server.tls_config());
                tokio::spawn(async move {
                    if let Err(e) = server.run().await {
                        tracing::error!(error = %e, "the gRPC server failed");
                    }
                });
                Some(addr)
            }
            None => None,
        };
        for b in &config.bridges {
            let seen = redelivery
                .remove(&b.name)
                .unwrap_or_else(|| Redelivery::new(redelivery::window(b.max_inflight)));
            let bridge = Bridge::new(
                b.clone(),
                seen,
                config.router(),
                self.ingest.clone(),
                self.stats.clone(),
                self.shutdown.clone(),
            )
            .with_context(|| format!("starting bridge `{}`", b.name))?;
            tokio::spawn(bridge.run());
        }
        let listener = Listener::bind(
            &config.mqtt,
            &config.node_id,
            routes,
            security.mqtt,
            self.ingest,
            self.stats,
            self.shutdown,
        )
        .await
        .context("binding the MQTT listeners (mqtt.listen, mqtt.tls.listen)")?;
        let addrs = Addrs {
            mqtt: listener.plain_addr(),
            mqtt_tls: listener.tls_addr(),
            grpc,
        };
        tls.extend(listener.tls_config());
        listener.spawn();
        Ok((addrs, tls))
    }
}

/// The running uploader of an object-store output.
#[derive(Debug)]
struct Uploads {
    finish: watch::Sender<bool>,
    task: JoinHandle<()>,
    spool: Arc<Spool>,
}

impl Uploads {
    /// Lets the uploader send what is spooled for up to `wait`; what is left stays spooled
    /// (durable) for the next start.
    async fn finish(mut self, wait: Duration) {
        let _ = self.finish.send(true);
        if tokio::time::timeout(wait, &mut self.task).await.is_err() {
            self.task.abort();
        }
        if !self.spool.is_empty() {
            tracing::info!(
                spool = %self.spool.root().display(),
                "files stay in the spool; they are uploaded after the next start"
            );
        }
    }
}

/// Builds the output: a local directory, the spool and its uploader, or the discarding sink.
/// `{data_dir}/_rejected` with its sink, and the lake of a local output when retention bounds
/// it: indexed (one walk each), and brought within their bounds.
fn retained(config: &Config, stats: &Arc<Stats>) -> Result<Retained> {
    let lake = match &config.output {
        OutputTarget::Local(root) if config.retain_lake.any() => Some(
            RetainedDir::open(root.clone(), "lake", config.retain_lake, stats.clone())
                .with_context(|| format!("indexing the lake {} for retention", root.display()))?,
        ),
        _ => None,
    };
    let rejected = match &config.output {
        OutputTarget::Discard => None,
        OutputTarget::Local(_) | OutputTarget::Remote(_) => {
            let root = config.data_dir.join(crate::decode::REJECTED_TABLE);
            let sink = LocalSink::new(
                root.clone(),
                config.node_id.clone(),
                config.parquet,
                config.lake_modes,
            );
            sink.prepare()
                .with_context(|| format!("preparing {}", root.display()))?;
            let dir = RetainedDir::open(
                root.clone(),
                "_rejected",
                config.retain_rejected,
                stats.clone(),
            )
            .with_context(|| format!("indexing {}", root.display()))?;
            Some((sink, dir))
        }
    };
    for dir in lake.iter().chain(rejected.as_ref().map(|(_, d)| d)) {
        dir.enforce();
    }
    Ok(Retained { lake, rejected })
}

/// The Delta logs of the lake's tables, when `output.table_format = "delta"`: on the local
/// folder (which `output` made), or on the object store through the output's own client.
#[cfg(feature = "delta")]
fn delta_lake(
    config: &Config,
    stats: &Arc<Stats>,
) -> Result<Option<Arc<crate::sink::delta::DeltaLake>>> {
    use crate::config::TableFormat;
    let TableFormat::Delta {
        checkpoint_interval,
        ..
    } = config.table_format
    else {
        return Ok(None);
    };
    let (store, url): (Arc<dyn object_store::ObjectStore>, url::Url) = match &config.output {
        OutputTarget::Local(root) => {
            let abs = std::fs::canonicalize(root)
                .with_context(|| format!("resolving the output folder {}", root.display()))?;
            let url = url::Url::from_directory_path(&abs)
                .map_err(|()| anyhow::anyhow!("no file:// URL for {}", abs.display()))?;
            (Arc::new(object_store::local::LocalFileSystem::new()), url)
        }
        OutputTarget::Remote(remote) => {
            let scheme = match remote.kind {
                crate::config::StoreKind::S3 => "s3",
                crate::config::StoreKind::Gcs => "gs",
                crate::config::StoreKind::Azure => "az",
            };
            let prefix = match remote.prefix.is_empty() {
                true => String::new(),
                false => format!("{}/", remote.prefix),
            };
            let url = url::Url::parse(&format!("{scheme}://{}/{prefix}", remote.bucket))
                .with_context(|| format!("no URL for the Delta tables under {}", remote.url))?;
            (store::build(remote)?, url)
        }
        OutputTarget::Discard => return Ok(None),
    };
    tracing::info!(root = %url, checkpoint_interval, "delta output: every file is committed to its table's _delta_log");
    Ok(Some(Arc::new(crate::sink::delta::DeltaLake::new(
        store,
        url,
        &config.node_id,
        checkpoint_interval,
        tokio::runtime::Handle::current(),
        stats.clone(),
    ))))
}

/// The compaction task of a Delta lake whose `output.delta.compact_after` is set.
#[cfg(feature = "delta")]
fn compactor(
    config: &Config,
    lake: Option<Arc<crate::sink::delta::DeltaLake>>,
    sink: &Option<LocalSink>,
    shared: &Shared,
    stats: &Arc<Stats>,
) -> Option<(watch::Sender<bool>, JoinHandle<()>)> {
    use crate::config::TableFormat;
    let (
        TableFormat::Delta {
            compact: Some(opts),
            ..
        },
        Some(lake),
    ) = (config.table_format, lake)
    else {
        return None;
    };
    let (stop, stop_rx) = watch::channel(false);
    let task = crate::sink::compact::Compactor {
        lake,
        node: config.node_id.clone(),
        opts,
        parquet: config.parquet,
        budget: shared.budget.clone(),
        vacuum: config.data_dir.join("delta-vacuum.json"),
        stats: stats.clone(),
        sink: sink.clone(),
    };
    tracing::info!(
        after = ?opts.after,
        target_bytes = opts.target_bytes,
        vacuum_after = ?opts.vacuum_after,
        "delta compaction: closed hours' small files are rewritten"
    );
    Some((stop, tokio::spawn(task.run(stop_rx))))
}

fn output(config: &Config, stats: &Arc<Stats>) -> Result<(Output, Option<Uploads>)> {
    let local = |root: &std::path::Path, modes: FileModes| -> Result<LocalSink> {
        let sink = LocalSink::new(
            root.to_path_buf(),
            config.node_id.clone(),
            config.parquet,
            modes,
        );
        let removed = sink
            .prepare()
            .with_context(|| format!("preparing output {}", root.display()))?;
        if removed > 0 {
            tracing::warn!(
                removed,
                "removed unfinished temp files left by an earlier crash"
            );
        }
        Ok(sink)
    };
    match &config.output {
        OutputTarget::Local(root) => Ok((Output::Local(local(root, config.lake_modes)?), None)),
        OutputTarget::Remote(remote) => {
            let store = store::build(remote)?;
            let sink = local(&remote.spool_dir, FileModes::PRIVATE)?;
            let queue = SpoolQueue::new(remote.spool_max_bytes, remote.spool_full);
            let spool = Spool::open(remote.spool_dir.clone(), queue, stats.clone());
            tracing::info!(
                url = %remote.url,
                spool = %remote.spool_dir.display(),
                spooled_files = stats.spool_files.load(Ordering::Relaxed),
                spooled_bytes = stats.spool_bytes.load(Ordering::Relaxed),
                credentials = store::credential_source(remote),
                "object-store output: files are spooled, then uploaded"
            );
            let (finish, finish_rx) = watch::channel(false);
            let uploader = Uploader::new(
                store,
                spool.clone(),
                UploaderConfig {
                    prefix: remote.prefix.clone(),
                    conflicts: remote.spool_dir.with_file_name("spool-conflicts"),
                    multipart_threshold: remote.multipart_threshold,
                    first_backoff: uploader::FIRST_BACKOFF,
                    max_backoff: remote.retry_max_backoff,
                },
                stats.clone(),
                finish_rx,
            );
            #[cfg(feature = "delta")]
            let uploader = match delta_lake(config, stats)? {
                Some(lake) => uploader.with_delta(lake),
                None => uploader,
            };
            let task = tokio::spawn(uploader.run());
            let uploads = Uploads {
                finish,
                task,
                spool: spool.clone(),
            };
            Ok((Output::Spool(sink, spool), Some(uploads)))
        }
        OutputTarget::Discard => {
            tracing::warn!(
                "output.url = \"null:\": every row is counted and discarded (a benchmarking aid)"
            );
            Ok((Output::Discard, None))
        }
    }
}

/// Replays the WAL into the batcher (`out`), reporting progress to systemd meanwhile.
async fn recover(
    config: &Config,
    shared: &Shared,
    checkpoint: &Checkpoint,
    fs: DiskFs,
    out: mpsc::Sender<Admitted>,
    broker: Option<Arc<Broker>>,
) -> Result<Recovered> {
    let replay = Replay {
        bridges: config
            .bridges
            .iter()
            .map(|b| (b.name.clone(), redelivery::window(b.max_inflight)))
            .collect(),
        checkpoint: checkpoint.clone(),
        router: config.router(),
        out,
        budget: shared.budget.clone(),
        stats: shared.stats.clone(),
        broker,
    };
    let report = tokio::spawn(report_replay(shared.notifier.clone(), shared.stats.clone()));
    let replayed = replay.run(fs).await.context("replaying the WAL");
    report.abort();
    replayed
}

/// The broker with the retained messages of its snapshot (the WAL replay adds later ones).
async fn start_broker(config: &Config, stats: &Arc<Stats>) -> Result<Broker> {
    let limits = config.broker.limits.clone();
    let dir = config.data_dir.clone();
    let (max, max_bytes) = (limits.retained_max, limits.retained_max_bytes);
    let (retained, (covered, sessions)) = tokio::task::spawn_blocking(move || {
        anyhow::Ok((
            fanout::load_retained(&dir, max, max_bytes)?,
            fanout::load_sessions(&dir)?,
        ))
    })
    .await??;
    let broker = Broker::new(limits, retained, stats.clone());
    let stored = sessions.len();
    let expired = broker.restore(covered, sessions, &crate::broker::state::Now::get());
    if stored > 0 {
        tracing::info!(
            sessions = stored - expired,
            expired,
            "persistent MQTT sessions restored"
        );
    }
    Ok(broker)
}

/// While the WAL replays: a status line and more start time for systemd every few seconds.
async fn report_replay(notifier: Arc<Notifier>, stats: Arc<Stats>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let done = stats.wal_replayed.load(Ordering::Relaxed);
        notifier.extend_timeout(Duration::from_secs(30));
        notifier.status(&format!("replaying the WAL: {done} records so far"));
    }
}
