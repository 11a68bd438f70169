//! The publisher task: takes finished batches from the batcher, encodes and publishes them on
//! the blocking pool (never on the async workers), logs one line per file, and gives the
//! batch's memory budget back. A failed publish (disk full, permissions) is retried with a
//! capped backoff while the batch keeps its budget, so sources slow down instead of data
//! being dropped.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{LocalSink, Published, SinkError};
use crate::batch::Ready;
use crate::buffer::Budget;
use crate::columnar::encode;
use crate::telemetry::Stats;

/// Publishes finished batches.
#[derive(Debug)]
pub struct Publisher {
    rx: mpsc::Receiver<Ready>,
    sink: Arc<LocalSink>,
    budget: Budget,
    stats: Arc<Stats>,
}

#[derive(Debug, thiserror::Error)]
enum PublishError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("encoder task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl Publisher {
    /// A publisher reading `rx`.
    pub fn new(
        rx: mpsc::Receiver<Ready>,
        sink: Arc<LocalSink>,
        budget: Budget,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            rx,
            sink,
            budget,
            stats,
        }
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
            self.budget.release(ready.cost);
        }
        tracing::debug!("publisher finished");
    }

    async fn publish(&self, ready: &Ready) -> Result<Vec<Published>, PublishError> {
        let sink = self.sink.clone();
        let batch = ready.batch.clone();
        tokio::task::spawn_blocking(move || {
            let parts = encode::partition(&batch)?;
            let mut files = Vec::with_capacity(parts.len());
            for part in &parts {
                files.push(sink.publish(&batch.table, part)?);
            }
            Ok(files)
        })
        .await?
    }

    fn record(&self, ready: &Ready, files: &[Published]) {
        for f in files {
            Stats::add(&self.stats.files_published, 1);
            Stats::add(&self.stats.rows_published, f.rows as u64);
            Stats::add(&self.stats.bytes_published, f.bytes);
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
