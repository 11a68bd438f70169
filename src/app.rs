//! Wiring: builds every stage from the [`Config`], spawns them and shuts them down in order.
//! Sources stop first (listener, then each connection); the batcher sees its input close once
//! the last connection is gone and flushes every partial batch; the publisher ends after the
//! last file is published. All of that must finish within `node.shutdown_grace`.

use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};

use crate::batch::{Batcher, Batches, SeqAllocator};
use crate::buffer::{Budget, Ingest};
use crate::config::Config;
use crate::mqtt::Listener;
use crate::sink::LocalSink;
use crate::sink::publisher::Publisher;
use crate::telemetry::Stats;

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

/// Runs the daemon until SIGTERM/SIGINT.
pub async fn run(config: Config) -> Result<Exit> {
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating node.data_dir {}", config.data_dir.display()))?;
    let stats = Arc::new(Stats::default());
    let budget = Budget::new(config.memory_budget);

    let sink = Arc::new(LocalSink::new(
        config.output_root.clone(),
        config.node_id.clone(),
        config.parquet,
    ));
    let removed = sink
        .prepare()
        .with_context(|| format!("preparing output {}", config.output_root.display()))?;
    if removed > 0 {
        tracing::warn!(
            removed,
            "removed unfinished temp files left by an earlier crash"
        );
    }
    let seq = SeqAllocator::open(&config.data_dir)
        .with_context(|| format!("opening sequence state in {}", config.data_dir.display()))?;

    let (ingest_tx, ingest_rx) = mpsc::channel(INGEST_QUEUE);
    let (ready_tx, ready_rx) = mpsc::channel(READY_QUEUE);
    let publisher =
        tokio::spawn(Publisher::new(ready_rx, sink, budget.clone(), stats.clone()).run());
    let batches = Batches::new(config.batch, budget.total() / 2, stats.clone());
    let mut batcher =
        tokio::spawn(Batcher::new(ingest_rx, ready_tx, batches, seq, budget.clone()).run());

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let ingest = Ingest::new(ingest_tx, budget, stats.clone(), config.qos0_when_full);
    let listener = Listener::bind(
        &config.mqtt,
        &config.node_id,
        config.router(),
        ingest,
        stats.clone(),
        shutdown_rx,
    )
    .await
    .with_context(|| format!("binding mqtt.listen {}", config.mqtt.listen))?;
    let addr = listener.local_addr()?;
    tokio::spawn(listener.run());
    tracing::info!(
        mqtt_listen = %addr,
        output = %config.output_root.display(),
        node = %config.node_id,
        "fleetlake ready"
    );

    // The batcher only ends early on a fatal error (it logged why): then stop, and exit
    // non-zero so a supervisor restarts the process instead of it serving without intake.
    let mut failed = false;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        _ = &mut batcher => {
            tracing::error!("the batcher stopped on its own: shutting down");
            failed = true;
        }
    }
    let _ = shutdown_tx.send(true);
    let drained = async {
        if !failed {
            let _ = batcher.await;
        }
        let _ = publisher.await;
    };
    let exit = tokio::select! {
        () = drained => Exit::Clean,
        () = tokio::time::sleep(config.shutdown_grace) => {
            tracing::error!(grace = ?config.shutdown_grace, "shutdown grace period over; unflushed data is lost");
            Exit::Forced
        }
        _ = term.recv() => Exit::Forced,
        _ = int.recv() => Exit::Forced,
    };
    let (cpu_seconds, peak_rss_kib) = crate::telemetry::process_usage().unwrap_or_default();
    tracing::info!(stats = ?stats, cpu_seconds, peak_rss_kib, "fleetlake stopped");
    if failed {
        anyhow::bail!("the pipeline failed; messages it had not published are lost");
    }
    Ok(exit)
}
