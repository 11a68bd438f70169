//! Batching: admitted messages accumulate per table in [`Batches`] (sans-IO: it is given the
//! time) until a table reaches `batch.max_rows`, `batch.max_bytes` (bytes of its rows in the
//! Arrow builders), or `batch.max_age` since its first row (the timer starts at the first
//! row), or until the budget is under pressure (buffered bytes past half the budget: the
//! largest table is flushed so admission can go on).
//!
//! Budget accounting: a message is admitted holding its [`Message::cost`] (decoded form, with
//! its network buffer). Once its rows are in the builders it holds three times their columnar
//! size instead (builder capacity slack up to 2x, plus the sorted copy made while encoding);
//! the difference is handed back at once through [`Batches::take_freed`].
//! [`Batcher`] is the task around it: it numbers messages, feeds them in, and hands finished
//! batches to the publisher. When its input closes it flushes every partial batch.

mod seq;

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;

pub use seq::SeqAllocator;

use crate::buffer::{Admitted, Budget};
use crate::columnar::{Batch, TableBuilder};
use crate::config::{BatchLimits, REJECTED_TABLE};
use crate::decode::Message;
use crate::telemetry::Stats;

/// Budget held per columnar byte of buffered rows (see the module docs).
const KEPT_FACTOR: usize = 3;

/// Why a batch was flushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushReason {
    /// `batch.max_rows`.
    Rows,
    /// `batch.max_bytes`.
    Bytes,
    /// `batch.max_age`.
    Age,
    /// Memory budget pressure.
    Budget,
    /// Shutdown.
    Shutdown,
}

/// A finished batch and the budget bytes it holds.
#[derive(Debug)]
pub struct Ready {
    /// The rows.
    pub batch: Batch,
    /// Budget bytes to release once published.
    pub cost: usize,
    /// Why it was flushed.
    pub reason: FlushReason,
}

#[derive(Debug)]
struct Pending {
    table: Arc<str>,
    builder: TableBuilder,
    /// Columnar bytes of the buffered rows.
    bytes: usize,
    /// Budget bytes held by the buffered rows.
    cost: usize,
    first_at: Option<Instant>,
}

/// Per-table buffers and the flush rules.
#[derive(Debug)]
pub struct Batches {
    tables: Vec<Pending>,
    limits: BatchLimits,
    buffered: usize,
    pressure: usize,
    freed: usize,
    stats: Arc<Stats>,
}

impl Batches {
    /// Empty buffers; a flush for pressure starts when buffered bytes reach `pressure`.
    pub fn new(limits: BatchLimits, pressure: usize, stats: Arc<Stats>) -> Self {
        Self {
            tables: Vec::new(),
            limits,
            buffered: 0,
            pressure,
            freed: 0,
            stats,
        }
    }

    /// Budget bytes no longer needed since the last call (to give back to the budget).
    pub fn take_freed(&mut self) -> usize {
        std::mem::take(&mut self.freed)
    }

    /// Bytes held by buffered messages.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Adds a message (sequence `seq`) holding `cost` budget bytes; batches that became ready
    /// are pushed to `out`.
    pub fn push(
        &mut self,
        msg: Message,
        cost: usize,
        seq: u64,
        now: Instant,
        out: &mut Vec<Ready>,
    ) {
        let appended = match self.index_of(&msg.table) {
            Ok(t) => self.tables[t]
                .builder
                .append(&msg, seq)
                .map(|bytes| (t, bytes))
                .map_err(|c| c.to_string()),
            Err(reason) => Err(reason),
        };
        let (t, bytes) = match appended {
            Ok(appended) => appended,
            Err(reason) => {
                let rejected = Message::rejected(
                    reason,
                    msg.topic,
                    msg.payload,
                    msg.device_id,
                    msg.received_at,
                );
                Stats::add(&self.stats.messages_rejected, 1);
                // `_rejected` is exempt from `max_tables` and has a fixed schema: no error here.
                let t = self.index_of(&rejected.table).unwrap_or_default();
                (
                    t,
                    self.tables[t].builder.append(&rejected, seq).unwrap_or(0),
                )
            }
        };
        let kept = (KEPT_FACTOR * bytes).min(cost);
        self.freed += cost - kept;
        self.buffered += kept;
        let limits = self.limits;
        let pending = &mut self.tables[t];
        pending.cost += kept;
        pending.bytes += bytes;
        pending.first_at.get_or_insert(now);
        if pending.builder.rows() >= limits.max_rows {
            self.flush(t, FlushReason::Rows, out);
        } else if pending.bytes >= limits.max_bytes {
            self.flush(t, FlushReason::Bytes, out);
        }
        if self.buffered >= self.pressure {
            let largest = (0..self.tables.len()).max_by_key(|&i| self.tables[i].cost);
            if let Some(i) = largest {
                self.flush(i, FlushReason::Budget, out);
            }
        }
    }

    /// Index of `table`'s buffer, created on first use. Tables are few, and a message's table
    /// name is usually the very `Arc` the router handed out, so this is a pointer compare.
    /// `Err` when a new table would pass `batch.max_tables` (`_rejected` does not count).
    fn index_of(&mut self, table: &Arc<str>) -> Result<usize, String> {
        let found = self
            .tables
            .iter()
            .position(|p| Arc::ptr_eq(&p.table, table));
        if let Some(i) = found.or_else(|| self.tables.iter().position(|p| p.table == *table)) {
            return Ok(i);
        }
        let is_rejected = &**table == REJECTED_TABLE;
        let user_tables = self
            .tables
            .iter()
            .filter(|p| &*p.table != REJECTED_TABLE)
            .count();
        if !is_rejected && user_tables >= self.limits.max_tables {
            let max = self.limits.max_tables;
            return Err(format!(
                "table `{table}` would pass batch.max_tables ({max})"
            ));
        }
        self.tables.push(Pending {
            table: table.clone(),
            builder: TableBuilder::new(table.clone()),
            bytes: 0,
            cost: 0,
            first_at: None,
        });
        Ok(self.tables.len() - 1)
    }

    fn flush(&mut self, t: usize, reason: FlushReason, out: &mut Vec<Ready>) {
        let pending = &mut self.tables[t];
        let cost = std::mem::take(&mut pending.cost);
        pending.bytes = 0;
        pending.first_at = None;
        self.buffered -= cost;
        match pending.builder.finish() {
            Ok(Some(batch)) => out.push(Ready {
                batch,
                cost,
                reason,
            }),
            Ok(None) => {}
            // Arrays built by our own builders always agree with their schema.
            Err(e) => tracing::error!(table = %pending.table, error = %e, "cannot finish a batch"),
        }
    }

    /// When the oldest buffered table is due for an age flush.
    pub fn next_deadline(&self) -> Option<Instant> {
        let oldest = self.tables.iter().filter_map(|p| p.first_at).min();
        oldest.map(|t| t + self.limits.max_age)
    }

    /// Flushes every table whose first row is older than `max_age`.
    pub fn flush_due(&mut self, now: Instant, out: &mut Vec<Ready>) {
        for t in 0..self.tables.len() {
            if self.tables[t]
                .first_at
                .is_some_and(|at| at + self.limits.max_age <= now)
            {
                self.flush(t, FlushReason::Age, out);
            }
        }
    }

    /// Flushes everything (shutdown).
    pub fn flush_all(&mut self, out: &mut Vec<Ready>) {
        for t in 0..self.tables.len() {
            self.flush(t, FlushReason::Shutdown, out);
        }
    }
}

/// The batching task.
#[derive(Debug)]
pub struct Batcher {
    rx: mpsc::Receiver<Admitted>,
    out: mpsc::Sender<Ready>,
    batches: Batches,
    seq: SeqAllocator,
    budget: Budget,
}

impl Batcher {
    /// A batcher reading `rx` and sending finished batches to `out`.
    pub fn new(
        rx: mpsc::Receiver<Admitted>,
        out: mpsc::Sender<Ready>,
        batches: Batches,
        seq: SeqAllocator,
        budget: Budget,
    ) -> Self {
        Self {
            rx,
            out,
            batches,
            seq,
            budget,
        }
    }

    /// Runs until the input closes, then flushes all partial batches.
    pub async fn run(mut self) {
        let mut ready = Vec::new();
        loop {
            let deadline = self.batches.next_deadline();
            tokio::select! {
                // Cancel-safe: `recv` loses nothing when the timer branch wins.
                msg = self.rx.recv() => match msg {
                    Some(admitted) => if let Err(e) = self.push(admitted, &mut ready).await {
                        tracing::error!(error = %e, "cannot reserve sequence numbers; stopping intake");
                        break;
                    },
                    None => break,
                },
                () = sleep_until(deadline) => self.batches.flush_due(Instant::now(), &mut ready),
            }
            if !self.send(&mut ready).await {
                return;
            }
        }
        self.rx.close();
        self.batches.flush_all(&mut ready);
        self.send(&mut ready).await;
        tracing::debug!("batcher finished");
    }

    /// Numbers and buffers each message of a group, sharing out the group's budget bytes so
    /// that what the batches give back adds up to exactly what was taken.
    async fn push(&mut self, admitted: Admitted, ready: &mut Vec<Ready>) -> std::io::Result<()> {
        let now = Instant::now();
        let mut remaining = admitted.cost;
        let last = admitted.msgs.len().saturating_sub(1);
        for (i, msg) in admitted.msgs.into_iter().enumerate() {
            let seq = self.seq.next().await?;
            let cost = if i == last {
                remaining
            } else {
                msg.cost().min(remaining)
            };
            remaining -= cost;
            self.batches.push(msg, cost, seq, now, ready);
        }
        self.budget.release(self.batches.take_freed());
        Ok(())
    }

    async fn send(&mut self, ready: &mut Vec<Ready>) -> bool {
        for r in ready.drain(..) {
            if self.out.send(r).await.is_err() {
                tracing::error!("publisher stopped; buffered batches are lost");
                return false;
            }
        }
        true
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
