//! Wiring: builds every stage from the [`Config`], spawns them and shuts them down in order.
//!
//! Start: the publisher and batcher start first, then the WAL is replayed into the batcher
//! (records the checkpoint does not cover), then the WAL writer starts on a new segment, and
//! only then do the MQTT listener and the gRPC server bind. Stop: sources stop first (the
//! listener and each connection; the gRPC server answers what it has read, then closes);
//! once the last source is gone the WAL writer writes what it holds and ends; the batcher sees its input close and flushes every partial batch; the publisher ends
//! after the last file is published; then the WAL segments it covers are deleted. All of that
//! must finish within `node.shutdown_grace`. A WAL write or fsync error stops the daemon with
//! a failure exit: a restart replays the log.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};

use crate::auth::{Authenticator, GrpcPolicy};
use crate::batch::{Batcher, Batches};
use crate::bridge::{Bridge, Redelivery, redelivery};
use crate::buffer::{Admitted, Budget, Ingest};
use crate::config::{Config, OutputTarget};
use crate::decode::decode_publish;
use crate::decode::topic::Router;
use crate::grpc;
use crate::grpc::server::GrpcServer;
use crate::mqtt::Listener;
use crate::sink::publisher::{Progress, Publisher};
use crate::sink::spool::{Spool, SpoolQueue};
use crate::sink::uploader::{self, Uploader, UploaderConfig};
use crate::sink::{LocalSink, Output, store};
use crate::telemetry::admin::{Admin, AdminState};
use crate::telemetry::{Heartbeats, Notifier, Stats};
use crate::wal::record::Kind;
use crate::wal::writer::WriterParts;
use crate::wal::{self, Checkpoint, CheckpointFile, DiskFs, Log, Recovery};

/// Messages queued between the sources and the batcher (bytes are bounded by the budget).
const INGEST_QUEUE: usize = 4096;
/// Finished batches waiting for the publisher.
const READY_QUEUE: usize = 2;

/// How a run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// Clean shutdown: everything flushed.
    Clean,
    /// A second signal or the grace period ran out before everything was flushed.
    Forced,
}

/// Reads the security files of `[mqtt.auth]`, `[mqtt.tls]`, `[grpc.auth]` and `[grpc.tls]`
/// (a bad file stops the start, naming it).
pub fn load_security(config: &Config) -> Result<(Authenticator, GrpcPolicy)> {
    let a = &config.mqtt.auth;
    let auth = Authenticator::load(
        a.password_file.as_deref(),
        a.acl_file.as_deref(),
        a.allow_anonymous,
        a.identity,
    )
    .context("reading mqtt.auth")?;
    if let Some(tls) = &config.mqtt.tls {
        tls.files
            .build()
            .context("reading mqtt.tls (cert, key, client_ca)")?;
    }
    let g = &config.grpc.auth;
    let tokens = match &g.tokens_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading grpc.auth.tokens_file {}", path.display()))?;
            let tokens = crate::auth::Tokens::parse(&text)
                .with_context(|| format!("grpc.auth.tokens_file {}", path.display()))?;
            Some(tokens)
        }
        None => None,
    };
    if let Some(files) = &config.grpc.tls {
        files
            .build()
            .context("reading grpc.tls (cert, key, client_ca)")?;
    }
    let policy = GrpcPolicy::new(tokens, g.services.clone(), g.allow_anonymous);
    Ok((auth, policy))
}

/// On each SIGHUP, reads the TLS certificates, keys and client CAs again: new handshakes use
/// them, open connections keep theirs. A bad file is logged and the old config kept. Without
/// TLS, SIGHUP is logged and ignored (never the default: ending the process).
fn reload_on_sighup(
    configs: Vec<Arc<crate::tls::ServerTls>>,
) -> Result<impl std::future::Future<Output = ()>> {
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    Ok(async move {
        while hup.recv().await.is_some() {
            if configs.is_empty() {
                tracing::info!("SIGHUP: nothing to reload (no mqtt.tls, no grpc.tls)");
            }
            for tls in &configs {
                match tls.reload() {
                    Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: TLS files unusable; keeping the old certificate");
                    }
                }
            }
        }
    })
}

/// Runs the daemon until SIGTERM/SIGINT.
pub async fn run(config: Config) -> Result<Exit> {
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating node.data_dir {}", config.data_dir.display()))?;
    let (auth, grpc_policy) = load_security(&config)?;
    let stats = Arc::new(Stats::default());
    let notifier = Arc::new(Notifier::from_env());
    let heartbeats = Heartbeats::new();
    let budget = Budget::new(config.memory_budget);

    let admin_state = Arc::new(AdminState {
        stats: stats.clone(),
        budget: budget.clone(),
        ready: std::sync::atomic::AtomicBool::new(false),
    });
    let admin_addr = match config.admin_listen {
        Some(listen) => {
            let admin = Admin::bind(listen, admin_state.clone())
                .await
                .with_context(|| format!("binding admin.listen {listen}"))?;
            let addr = admin.local_addr()?;
            tokio::spawn(admin.run());
            // Up before the WAL replay: /healthz answers and /readyz says 503 until ready.
            tracing::info!(admin_listen = %addr, "admin endpoint listening");
            Some(addr)
        }
        None => None,
    };
    let (sink, uploads) = output(&config, &stats)?;
    let sink = Arc::new(sink);
    let wal_dir = config.data_dir.join("wal");
    let fs = DiskFs::open(&wal_dir)
        .with_context(|| format!("opening the WAL directory {}", wal_dir.display()))?;
    let checkpoint_file = CheckpointFile::new(&wal_dir);
    let checkpoint = checkpoint_file
        .load()
        .context("reading the WAL checkpoint")?;
    let low_water = Arc::new(AtomicU64::new(checkpoint.low_water));

    let (batch_tx, batch_rx) = mpsc::channel(INGEST_QUEUE);
    let (ready_tx, ready_rx) = mpsc::channel(READY_QUEUE);
    let progress = Progress {
        file: checkpoint_file,
        checkpoint: checkpoint.clone(),
        low_water: low_water.clone(),
    };
    let publisher =
        tokio::spawn(Publisher::new(ready_rx, sink, budget.clone(), stats.clone(), progress).run());
    let mut batches = Batches::new(config.batch, budget.total() / 2, stats.clone());
    if let Some(cut) = &checkpoint.in_progress {
        batches.hold(&Arc::from(cut.table.as_str()), cut.last_seq);
    }
    let batcher = Batcher::new(
        batch_rx,
        ready_tx,
        batches,
        budget.clone(),
        heartbeats.clone(),
    );
    let mut batcher = tokio::spawn(batcher.run());

    let replay = Replay {
        bridges: config
            .bridges
            .iter()
            .map(|b| (b.name.clone(), redelivery::window(b.max_inflight)))
            .collect(),
        checkpoint: checkpoint.clone(),
        router: config.router(),
        out: batch_tx.clone(),
        budget: budget.clone(),
        stats: stats.clone(),
    };
    let progress = tokio::spawn(report_replay(notifier.clone(), stats.clone()));
    let replayed = replay.run(fs).await.context("replaying the WAL");
    progress.abort();
    let (fs, recovery, mut recent) = replayed?;
    let next_seq = recovery.next_seq().max(checkpoint.next_seq_floor());
    let recovery_records = recovery.records;
    let log = Log::start(fs, recovery.segments, next_seq, config.wal.segment_size)
        .with_context(|| format!("starting a WAL segment in {}", wal_dir.display()))?;
    let parts = WriterParts {
        out: batch_tx,
        sync_interval: config.wal.sync_interval,
        low_water: low_water.clone(),
        release_grace: if config.bridges.is_empty() {
            Duration::ZERO
        } else {
            crate::bridge::SEGMENT_GRACE
        },
        budget: budget.clone(),
        stats: stats.clone(),
        heartbeats: heartbeats.clone(),
    };
    let (wal, mut wal_end) =
        wal::writer::spawn(log, parts).context("starting the WAL writer thread")?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let ingest = Ingest::new(wal, budget.clone(), stats.clone(), config.qos0_when_full);
    let mut reloadable = Vec::new();
    let grpc_addr = match config.grpc.listen {
        Some(listen) => {
            let server = GrpcServer::bind(
                listen,
                &config.grpc,
                grpc_policy,
                ingest.clone(),
                stats.clone(),
                shutdown_rx.clone(),
            )
            .await
            .with_context(|| format!("binding grpc.listen {listen}"))?;
            let addr = server.local_addr()?;
            reloadable.extend(server.tls_config());
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
        let seen = recent
            .remove(&b.name)
            .unwrap_or_else(|| Redelivery::new(redelivery::window(b.max_inflight)));
        let bridge = Bridge::new(
            b.clone(),
            seen,
            config.router(),
            ingest.clone(),
            stats.clone(),
            shutdown_rx.clone(),
        )
        .with_context(|| format!("starting bridge `{}`", b.name))?;
        tokio::spawn(bridge.run());
    }
    let listener = Listener::bind(
        &config.mqtt,
        &config.node_id,
        config.router(),
        auth,
        ingest,
        stats.clone(),
        shutdown_rx,
    )
    .await
    .context("binding the MQTT listeners (mqtt.listen, mqtt.tls.listen)")?;
    let off =
        |a: Option<std::net::SocketAddr>| a.map_or_else(|| "off".to_string(), |a| a.to_string());
    let (addr, tls_addr) = (off(listener.plain_addr()), off(listener.tls_addr()));
    reloadable.extend(listener.tls_config());
    tokio::spawn(reload_on_sighup(reloadable)?);
    listener.spawn();
    admin_state.ready.store(true, Ordering::Relaxed);
    let grpc_listen = grpc_addr.map_or_else(|| "off".to_string(), |a| a.to_string());
    notifier.ready(&format!(
        "recovered {recovery_records} WAL records; MQTT on {addr}, TLS on {tls_addr}; gRPC on {grpc_listen}"
    ));
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let summary = {
        let (stats, budget) = (stats.clone(), budget.clone());
        move || status_line(&stats, &budget)
    };
    match notifier.watchdog_timeout() {
        Some(timeout) => {
            tokio::spawn(feed_watchdog(
                notifier.clone(),
                heartbeats.clone(),
                timeout,
                stopping.clone(),
                summary,
            ));
        }
        None => {
            let notifier = notifier.clone();
            let stopping = stopping.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(STATUS_EVERY);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    if !stopping.load(Ordering::Relaxed) {
                        notifier.status(&summary());
                    }
                }
            });
        }
    }
    let admin_listen = admin_addr.map_or_else(|| "off".to_string(), |a| a.to_string());
    tracing::info!(
        mqtt_listen = %addr,
        mqtt_tls_listen = %tls_addr,
        grpc_listen,
        admin_listen,
        output = %config.output.describe(),
        node = %config.node_id,
        "fleetlake ready"
    );

    // The batcher and the WAL writer only end early on a fatal error: then stop, and exit
    // non-zero so a supervisor restarts the process (and the restart replays the WAL).
    let mut failed = false;
    let mut wal_log = None;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        _ = &mut batcher => {
            tracing::error!("the batcher stopped on its own: shutting down");
            failed = true;
        }
        end = &mut wal_end => {
            match end {
                Ok(Err(e)) => tracing::error!(error = %e, "WAL write or fsync failed: exiting so that a restart replays the log"),
                _ => tracing::error!("the WAL writer stopped on its own: shutting down"),
            }
            failed = true;
        }
    }
    stopping.store(true, Ordering::Relaxed);
    admin_state.ready.store(false, Ordering::Relaxed);
    notifier.stopping();
    let _ = shutdown_tx.send(true);
    if failed {
        let (cpu_seconds, peak_rss_kib) = crate::telemetry::process_usage().unwrap_or_default();
        tracing::info!(stats = ?stats, cpu_seconds, peak_rss_kib, "fleetlake stopped");
        anyhow::bail!(
            "the pipeline failed; unacknowledged messages were not stored, acknowledged ones are in the WAL"
        );
    }
    let drained = async {
        match (&mut wal_end).await {
            Ok(Ok(log)) => wal_log = Some(log),
            Ok(Err(e)) => tracing::error!(error = %e, "WAL write or fsync failed during shutdown"),
            Err(_) => {}
        }
        let _ = batcher.await;
        let _ = publisher.await;
    };
    let stop_started = Instant::now();
    let exit = tokio::select! {
        () = drained => Exit::Clean,
        () = tokio::time::sleep(config.shutdown_grace) => {
            tracing::error!(grace = ?config.shutdown_grace, "shutdown grace period over; unflushed data is lost");
            Exit::Forced
        }
        _ = term.recv() => Exit::Forced,
        _ = int.recv() => Exit::Forced,
    };
    if let Some(uploads) = uploads {
        let left = config.shutdown_grace.saturating_sub(stop_started.elapsed());
        uploads.finish(left.min(UPLOAD_DRAIN)).await;
    }
    if let Some(mut log) = wal_log.filter(|_| exit == Exit::Clean) {
        let lw = low_water.load(Ordering::Acquire);
        match log.release(lw, true) {
            Ok(n) => Stats::add(&stats.wal_segments_released, n as u64),
            Err(e) => tracing::warn!(error = %e, "cannot delete published WAL segments"),
        }
    }
    let (cpu_seconds, peak_rss_kib) = crate::telemetry::process_usage().unwrap_or_default();
    tracing::info!(stats = ?stats, cpu_seconds, peak_rss_kib, "fleetlake stopped");
    Ok(exit)
}

/// Longest wait at shutdown for the uploader to send what the last batches spooled.
const UPLOAD_DRAIN: Duration = Duration::from_secs(5);

/// The running uploader of an object-store output.
struct Uploads {
    finish: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
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
fn output(config: &Config, stats: &Arc<Stats>) -> Result<(Output, Option<Uploads>)> {
    let local = |root: &std::path::Path| -> Result<LocalSink> {
        let sink = LocalSink::new(root.to_path_buf(), config.node_id.clone(), config.parquet);
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
        OutputTarget::Local(root) => Ok((Output::Local(local(root)?), None)),
        OutputTarget::Remote(remote) => {
            let store = store::build(remote)?;
            let sink = local(&remote.spool_dir)?;
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

/// How often `STATUS=` is refreshed when no watchdog ping carries it.
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// The `STATUS=` line after startup: a summary for `systemctl status`.
fn status_line(stats: &Stats, budget: &Budget) -> String {
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let mqtt = load(&stats.messages_qos0) + load(&stats.messages_qos1) + load(&stats.messages_qos2);
    let spooled = match load(&stats.spool_files) {
        0 => String::new(),
        n => format!("; {n} files waiting for upload"),
    };
    format!(
        "ready; {} MQTT connections; {mqtt} MQTT messages, {} gRPC points; {} files ({} rows) published{spooled}; memory budget {}% used",
        load(&stats.connections_open),
        load(&stats.grpc_points),
        load(&stats.files_published),
        load(&stats.rows_published),
        budget.in_use() * 100 / budget.total().max(1),
    )
}

/// Beats older than this mean a stage is stuck (stages beat at least once a second).
const STALL: Duration = Duration::from_millis(2500);

/// Sends `WATCHDOG=1` (with a fresh `STATUS=` line) every half `timeout` while every stage
/// beats; stops (so systemd restarts the service) when one is stuck. During shutdown stages
/// end on purpose: keep feeding then.
async fn feed_watchdog(
    notifier: Arc<Notifier>,
    heartbeats: Arc<Heartbeats>,
    timeout: Duration,
    stopping: Arc<std::sync::atomic::AtomicBool>,
    summary: impl Fn() -> String,
) {
    let mut tick = tokio::time::interval(timeout / 2);
    let mut reported = false;
    loop {
        tick.tick().await;
        match heartbeats.stalled(STALL) {
            Some((stage, age)) if !stopping.load(Ordering::Relaxed) => {
                if !reported {
                    reported = true;
                    tracing::error!(
                        stage,
                        stalled_ms = age.as_millis() as u64,
                        "a pipeline stage is stuck: watchdog pings stop, systemd will restart fleetlake"
                    );
                }
            }
            _ => {
                reported = false;
                // The status rides along: `systemctl status` shows live figures.
                notifier.send(&format!("WATCHDOG=1\nSTATUS={}", summary()));
            }
        }
    }
}

/// Feeds WAL records the checkpoint does not cover back into the batcher, through the budget.
struct Replay {
    /// Bridge name → size of its redelivery filter.
    bridges: HashMap<String, usize>,
    checkpoint: Checkpoint,
    router: Router,
    out: mpsc::Sender<Admitted>,
    budget: Budget,
    stats: Arc<Stats>,
}

impl Replay {
    /// Replays on the blocking pool; gives the file system back with what was found.
    /// Also returns, per bridge, the fingerprints of its records still in the WAL.
    async fn run(self, fs: DiskFs) -> Result<(DiskFs, Recovery, HashMap<String, Redelivery>)> {
        let handle = tokio::runtime::Handle::current();
        let started = Instant::now();
        let stats = self.stats.clone();
        let (fs, recovery, replayed, recent) =
            tokio::task::spawn_blocking(move || self.replay(fs, &handle)).await??;
        Stats::add(&stats.wal_damaged_segments, recovery.damaged);
        tracing::info!(
            segments = recovery.segments.len(),
            records = recovery.records,
            replayed,
            damaged_segments = recovery.damaged,
            mib = recovery.bytes >> 20,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "WAL recovered"
        );
        Ok((fs, recovery, recent))
    }

    fn replay(
        self,
        fs: DiskFs,
        handle: &tokio::runtime::Handle,
    ) -> std::io::Result<(DiskFs, Recovery, u64, HashMap<String, Redelivery>)> {
        let mut recent: HashMap<String, Redelivery> = self
            .bridges
            .iter()
            .map(|(name, cap)| (name.clone(), Redelivery::new(*cap)))
            .collect();
        let group_limit = (self.budget.total() / 8).min(1 << 20);
        let mut group = Vec::new();
        let mut cost = 0;
        let mut replayed = 0u64;
        let send = |msgs: Vec<crate::decode::Message>, cost: usize| {
            let cost = handle.block_on(self.budget.acquire(cost));
            self.out
                .blocking_send(Admitted { msgs, cost })
                .map_err(|_| std::io::Error::other("the batcher stopped during replay"))
        };
        let recovery = wal::replay(&fs, |entry| {
            if entry.kind == Kind::Bridge
                && let Some(r) = recent.get_mut(&*entry.client)
            {
                // Published or not: a redelivery of it must not be stored again.
                r.insert(redelivery::fingerprint(&entry.topic, &entry.payload));
            }
            if entry.seq < self.checkpoint.low_water {
                return Ok(());
            }
            let mut msg = match entry.kind {
                Kind::Mqtt | Kind::Bridge => decode_publish(
                    &self.router,
                    entry.topic,
                    entry.payload,
                    &entry.client,
                    entry.received_at,
                ),
                Kind::Grpc => {
                    grpc::points::from_record(entry.payload, &entry.client, entry.received_at)
                }
            };
            if self.checkpoint.covers(&msg.table, entry.seq) {
                return Ok(());
            }
            msg.seq = entry.seq;
            cost += msg.cost();
            group.push(msg);
            replayed += 1;
            Stats::add(&self.stats.wal_replayed, 1);
            if cost >= group_limit {
                send(std::mem::take(&mut group), std::mem::take(&mut cost))?;
            }
            Ok(())
        })?;
        if !group.is_empty() {
            send(group, cost)?;
        }
        Ok((fs, recovery, replayed, recent))
    }
}
