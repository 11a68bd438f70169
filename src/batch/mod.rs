//! Batching: admitted messages accumulate per table in [`Batches`] (sans-IO: it is given the
//! time) until a table reaches `batch.max_rows`, `batch.max_bytes` (bytes of its rows in the
//! Arrow builders), or `batch.max_age` since its first row (the timer starts at the first
//! row), or until the budget is under pressure (buffered bytes past half the budget: the
//! largest table is flushed so admission can go on).
//!
//! Budget accounting: a message is admitted holding its [`Message::cost`] (decoded form, with
//! its network buffer). Once its rows are in the builders its table keeps three times their
//! columnar size of that holding (builder capacity slack up to 2x, plus the sorted copy made
//! while encoding); what the group holds beyond that is given back when the group's holding
//! is dropped, once per group. A flushed batch carries its table's holding ([`Ready::held`]).
//! [`Batcher`] is the task around it: it feeds durable messages in (in WAL sequence order)
//! and hands finished batches to the publisher. When its input closes it flushes every partial
//! batch.
//!
//! Replay: each [`Ready`] carries a `low_water` (every message below it is in this or an
//! earlier batch), which the checkpoint stores once the batch is published. A batch whose
//! files may have appeared before a crash is rebuilt exactly by [`Batches::hold`]: its table
//! is exempt from every flush rule until its last sequence number, then flushed.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::budget::Held;
use crate::columnar::{Batch, Declared, Refused, TableBuilder, TableSchema};
use crate::config::{BatchLimits, ClockPolicy, OutOfRange};
use crate::decode::{DEVICE_TIME, Message, REJECTED_TABLE, RejectReason, Scalar};
use crate::telemetry::{Heartbeats, Stage, Stats};
use crate::wal::Admitted;

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
    /// Rebuilding a batch that was being published when the last run stopped.
    Replay,
}

/// A finished batch and the budget it holds.
#[derive(Debug)]
pub struct Ready {
    /// The rows.
    pub batch: Batch,
    /// The budget its rows hold, given back when the `Ready` is dropped (once published).
    pub held: Held,
    /// Why it was flushed.
    pub reason: FlushReason,
    /// Every message below this sequence number is in this batch or an earlier one.
    pub low_water: u64,
    /// The table's columns when they grew since its last batch: stored (durably) before the
    /// batch's files are published, so every column of every file is in the stored schema.
    pub schema: Option<TableSchema>,
}

impl Ready {
    /// Highest sequence number in the batch.
    pub fn last_seq(&self) -> u64 {
        self.batch.seqs.iter().copied().max().unwrap_or(0)
    }
}

#[derive(Debug)]
struct Pending {
    table: Arc<str>,
    builder: TableBuilder,
    /// Columnar bytes of the buffered rows.
    bytes: usize,
    /// The budget held by the buffered rows.
    held: Held,
    first_at: Option<Instant>,
    /// Sequence number of the first buffered message.
    first_seq: Option<u64>,
    /// Whether the table's column bound was reported (once per table and run).
    full_reported: bool,
    /// Whether a dropped field was reported (once per table and run).
    dropped_reported: bool,
    /// Payload columns in the stored schema (or in the last batch's, once it is stored).
    stored_columns: usize,
}

impl Pending {
    /// Logs, once, that the table's schema is full.
    fn warn_full(&mut self, refused: &Refused) {
        if !std::mem::replace(&mut self.full_reported, true) {
            tracing::warn!(
                table = %self.table,
                columns = self.builder.columns(),
                first = %refused,
                "table has batch.max_columns columns: messages with new fields go to _rejected (logged once)"
            );
        }
    }
}

impl Pending {
    /// Logs, once, that fields of the table's messages are being dropped.
    fn warn_dropped(&mut self, msg: &Message) {
        if !std::mem::replace(&mut self.dropped_reported, true) {
            tracing::warn!(
                table = %self.table,
                topic = %msg.topic,
                "fields no declared column takes are dropped (unknown_fields = \"drop\"), counted in fleetlake_fields_dropped_total (logged once)"
            );
        }
    }
}

/// Per-table buffers and the flush rules.
#[derive(Debug)]
pub struct Batches {
    tables: Vec<Pending>,
    limits: BatchLimits,
    buffered: usize,
    pressure: usize,
    stats: Arc<Stats>,
    /// One past the last sequence number pushed.
    next_seq: u64,
    /// A table rebuilding a batch up to this sequence number (see [`Batches::hold`]).
    rebuilding: Option<(usize, u64)>,
    /// The stored schemas of tables not buffered yet, by name.
    stored: HashMap<String, TableSchema>,
    /// The `[[tables]]` declarations, by table name.
    declared: HashMap<String, Declared>,
    /// What rows with a time far from their receive time do.
    clock: ClockPolicy,
    /// Characters new column names may not hold (the table format's rule).
    forbidden: &'static [char],
}

impl Batches {
    /// Empty buffers; a flush for pressure starts when buffered bytes reach `pressure`.
    pub fn new(limits: BatchLimits, pressure: usize, stats: Arc<Stats>) -> Self {
        Self {
            tables: Vec::new(),
            limits,
            buffered: 0,
            pressure,
            stats,
            next_seq: 0,
            rebuilding: None,
            stored: HashMap::new(),
            declared: HashMap::new(),
            clock: ClockPolicy::default(),
            forbidden: &[],
        }
    }

    /// Sends messages whose new fields hold any of `chars` to `_rejected` (`field_name`).
    pub fn with_forbidden_chars(mut self, chars: &'static [char]) -> Self {
        self.forbidden = chars;
        self
    }

    /// Applies `clock` to rows whose time is far from their receive time.
    pub fn with_clock(mut self, clock: ClockPolicy) -> Self {
        self.clock = clock;
        self
    }

    /// Applies the clock policy to `msg`'s rows (counting those out of range); `Err` with the
    /// reason when the message must go to `_rejected`.
    fn check_clock(&self, msg: &mut Message) -> Result<(), String> {
        let clock = self.clock;
        let received_at = msg.received_at;
        let out = msg
            .rows
            .iter()
            .filter(|r| clock.out_of_range(r.time, received_at))
            .count();
        if out == 0 {
            return Ok(());
        }
        Stats::add(&self.stats.rows_out_of_range, out as u64);
        match clock.action {
            OutOfRange::Accept => Ok(()),
            OutOfRange::Reject => {
                let time = msg
                    .rows
                    .iter()
                    .map(|r| r.time)
                    .find(|&t| clock.out_of_range(t, received_at))
                    .unwrap_or_default();
                Err(format!(
                    "row time {} is outside the clock window of its receive time {} (clock.max_ahead, clock.max_behind)",
                    rfc3339(time),
                    rfc3339(received_at)
                ))
            }
            OutOfRange::ReceiveTime => {
                for row in &mut msg.rows {
                    if clock.out_of_range(row.time, received_at) {
                        row.fields
                            .push((DEVICE_TIME.into(), Scalar::Time(row.time)));
                        row.time = received_at;
                    }
                }
                Ok(())
            }
        }
    }

    /// Starts each declared table with its declared columns and rules (`[[tables]]`
    /// `columns`, `unknown_fields`).
    pub fn with_declared(mut self, declared: &[Declared]) -> Self {
        self.declared = declared
            .iter()
            .map(|d| (d.table.clone(), d.clone()))
            .collect();
        self
    }

    /// Starts each table with its stored columns (see [`crate::columnar::schema`]).
    pub fn with_schemas(mut self, stored: HashMap<String, TableSchema>) -> Self {
        self.stored = stored;
        self
    }

    /// Rebuilds `table`'s batch ending at `last_seq` exactly: no flush rule applies to the
    /// table until a message at or past `last_seq` arrives; then the table is flushed (reason
    /// [`FlushReason::Replay`]) right after `last_seq`.
    pub fn hold(&mut self, table: &Arc<str>, last_seq: u64) {
        if let Ok(t) = self.index_of(table) {
            self.rebuilding = Some((t, last_seq));
        }
    }

    fn is_held(&self, t: usize) -> bool {
        self.rebuilding.is_some_and(|(h, _)| h == t)
    }

    /// Bytes held by buffered messages.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Adds a message (sequence `seq`) whose share of `group`'s holding is `cost` bytes: its
    /// table keeps what its rows need of that share, the rest stays in `group` (given back when
    /// the caller drops it). Batches that became ready are pushed to `out`.
    pub fn push(
        &mut self,
        mut msg: Message,
        cost: usize,
        group: &mut Held,
        now: Instant,
        out: &mut Vec<Ready>,
    ) {
        let seq = msg.seq;
        self.next_seq = self.next_seq.max(seq + 1);
        if let Some((h, last)) = self.rebuilding
            && seq > last
        {
            // The held batch's last message never came (it was rejected or lost): close it.
            self.rebuilding = None;
            self.flush(h, FlushReason::Replay, out);
        }
        if msg.mqtt.route_only {
            // For subscribers only: no rows (its budget share goes back with the group's).
            return;
        }
        let appended = match self
            .check_clock(&mut msg)
            .map_err(|reason| (RejectReason::TimeRange, reason))
            .and_then(|()| {
                self.index_of(&msg.table)
                    .map_err(|reason| (RejectReason::TooManyTables, reason))
            }) {
            Ok(t) => {
                let pending = &mut self.tables[t];
                let appended = pending.builder.append(&msg, seq);
                if let Err(refused @ Refused::TooManyColumns { .. }) = &appended {
                    pending.warn_full(refused);
                }
                let dropped = pending.builder.take_dropped();
                if dropped > 0 {
                    Stats::add(&self.stats.fields_dropped, dropped);
                    pending.warn_dropped(&msg);
                }
                appended
                    .map(|bytes| (t, bytes))
                    .map_err(|refused| (refused.reason(), refused.to_string()))
            }
            Err(rejected) => Err(rejected),
        };
        let (t, bytes) = match appended {
            Ok(appended) => {
                Stats::add(&self.stats.buffer_rows_pushed, msg.rows.len() as u64);
                appended
            }
            Err((why, reason)) => {
                self.stats.reject(why);
                Stats::add(&self.stats.buffer_rows_pushed, 1);
                let rejected = Message::rejected(
                    why,
                    reason,
                    msg.topic,
                    msg.payload,
                    msg.device_id,
                    msg.received_at,
                );
                // `_rejected` is exempt from `max_tables` and has a fixed schema: no error here.
                let t = self.index_of(&rejected.table).unwrap_or_default();
                (
                    t,
                    self.tables[t].builder.append(&rejected, seq).unwrap_or(0),
                )
            }
        };
        let limits = self.limits;
        let pending = &mut self.tables[t];
        let kept = group.move_to(&mut pending.held, (KEPT_FACTOR * bytes).min(cost));
        self.buffered += kept;
        pending.bytes += bytes;
        pending.first_at.get_or_insert(now);
        pending.first_seq.get_or_insert(seq);
        if let Some((h, last)) = self.rebuilding {
            if h == t && seq >= last {
                self.rebuilding = None;
                self.flush(t, FlushReason::Replay, out);
            }
        } else if pending.builder.rows() >= limits.max_rows {
            self.flush(t, FlushReason::Rows, out);
        } else if pending.bytes >= limits.max_bytes {
            self.flush(t, FlushReason::Bytes, out);
        }
        if self.buffered >= self.pressure {
            let largest = (0..self.tables.len())
                .filter(|&i| !self.is_held(i))
                .max_by_key(|&i| self.tables[i].held.bytes());
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
        let mut builder = TableBuilder::new(table.clone())
            .with_max_columns(self.limits.max_columns)
            .with_forbidden_chars(self.forbidden);
        if let Some(declared) = self.declared.get(&**table) {
            builder = builder.with_declared(declared);
        }
        let mut stored_columns = 0;
        if let Some(schema) = self.stored.remove(&**table) {
            builder = builder.with_schema(&schema.columns);
            stored_columns = schema.columns.len();
        }
        self.tables.push(Pending {
            table: table.clone(),
            // Declared columns the stored schema lacks make the first batch store it again.
            stored_columns,
            builder,
            bytes: 0,
            held: Held::default(),
            first_at: None,
            first_seq: None,
            full_reported: false,
            dropped_reported: false,
        });
        Ok(self.tables.len() - 1)
    }

    fn flush(&mut self, t: usize, reason: FlushReason, out: &mut Vec<Ready>) {
        let pending = &mut self.tables[t];
        let held = std::mem::take(&mut pending.held);
        pending.bytes = 0;
        pending.first_at = None;
        pending.first_seq = None;
        self.buffered -= held.bytes();
        let finished = pending.builder.finish();
        let low_water = self
            .tables
            .iter()
            .filter_map(|p| p.first_seq)
            .fold(self.next_seq, u64::min);
        let pending = &mut self.tables[t];
        let table = pending.table.clone();
        let columns = pending.builder.columns();
        let schema = (columns > pending.stored_columns && &*table != REJECTED_TABLE)
            .then(|| TableSchema::new(&table, pending.builder.schema()));
        pending.stored_columns = columns;
        if let Some(ready) = ready(&table, finished, held, reason, low_water, schema) {
            let rows = ready.batch.records.num_rows() as u64;
            Stats::add(&self.stats.buffer_rows_popped, rows);
            out.push(ready);
        }
    }

    /// When the oldest buffered table is due for an age flush.
    pub fn next_deadline(&self) -> Option<Instant> {
        let oldest = (0..self.tables.len())
            .filter(|&i| !self.is_held(i))
            .filter_map(|i| self.tables[i].first_at)
            .min();
        oldest.map(|t| t + self.limits.max_age)
    }

    /// Flushes every table whose first row is older than `max_age`.
    pub fn flush_due(&mut self, now: Instant, out: &mut Vec<Ready>) {
        for t in 0..self.tables.len() {
            if !self.is_held(t)
                && self.tables[t]
                    .first_at
                    .is_some_and(|at| at + self.limits.max_age <= now)
            {
                self.flush(t, FlushReason::Age, out);
            }
        }
    }

    /// Flushes everything (shutdown).
    pub fn flush_all(&mut self, out: &mut Vec<Ready>) {
        self.rebuilding = None;
        for t in 0..self.tables.len() {
            self.flush(t, FlushReason::Shutdown, out);
        }
    }
}

/// A table's finished rows with the budget they hold, ready to publish; `None` when there are
/// no rows or they could not be finished, and then `held` is dropped here (given back).
fn ready(
    table: &str,
    finished: Result<Option<Batch>, arrow::error::ArrowError>,
    held: Held,
    reason: FlushReason,
    low_water: u64,
    schema: Option<TableSchema>,
) -> Option<Ready> {
    match finished {
        Ok(Some(batch)) => Some(Ready {
            batch,
            held,
            reason,
            low_water,
            schema,
        }),
        // No rows: nothing to publish; `held` (nothing, or a rounding rest) goes back.
        Ok(None) => None,
        // Arrays built by our own builders always agree with their schema, so this is not
        // expected; if it happens, the error is logged and `held` still goes back.
        Err(e) => {
            tracing::error!(table, error = %e, "cannot finish a batch");
            None
        }
    }
}

/// `µs` since the epoch as an RFC 3339 UTC time.
fn rfc3339(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros).map_or_else(
        || format!("{micros} µs"),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
    )
}

/// The batching task.
#[derive(Debug)]
pub struct Batcher {
    rx: mpsc::Receiver<Admitted>,
    out: mpsc::Sender<Ready>,
    batches: Batches,
    heartbeats: Arc<Heartbeats>,
}

/// How often the batcher beats while idle or waiting (see [`Heartbeats`]).
const BEAT: std::time::Duration = std::time::Duration::from_secs(1);

impl Batcher {
    /// A batcher reading `rx` and sending finished batches to `out`.
    pub fn new(
        rx: mpsc::Receiver<Admitted>,
        out: mpsc::Sender<Ready>,
        batches: Batches,
        heartbeats: Arc<Heartbeats>,
    ) -> Self {
        Self {
            rx,
            out,
            batches,
            heartbeats,
        }
    }

    /// Runs until the input closes, then flushes all partial batches.
    pub async fn run(mut self) {
        let mut ready = Vec::new();
        let mut beat = tokio::time::interval(BEAT);
        loop {
            self.heartbeats.beat(Stage::Batcher);
            let deadline = self.batches.next_deadline();
            tokio::select! {
                _ = beat.tick() => continue,
                // Cancel-safe: `recv` loses nothing when the timer branch wins.
                msg = self.rx.recv() => match msg {
                    Some(admitted) => push_group(&mut self.batches, admitted, Instant::now(), &mut ready),
                    None => break,
                },
                () = sleep_until(deadline) => self.batches.flush_due(Instant::now(), &mut ready),
            }
            if !self.send(&mut ready, &mut beat).await {
                return;
            }
        }
        self.rx.close();
        self.batches.flush_all(&mut ready);
        self.send(&mut ready, &mut beat).await;
        tracing::debug!("batcher finished");
    }

    /// Hands finished batches to the publisher, beating while it waits for room.
    async fn send(&mut self, ready: &mut Vec<Ready>, beat: &mut tokio::time::Interval) -> bool {
        for r in ready.drain(..) {
            let send = self.out.send(r);
            tokio::pin!(send);
            loop {
                tokio::select! {
                    sent = &mut send => {
                        if sent.is_err() {
                            tracing::error!("publisher stopped; buffered batches are lost");
                            return false;
                        }
                        break;
                    }
                    _ = beat.tick() => self.heartbeats.beat(Stage::Batcher),
                }
            }
        }
        true
    }
}

/// Buffers each message of `admitted` in `batches`, sharing out the group's holding by message
/// cost; what the tables do not keep goes back to the budget when the group's holding is
/// dropped at the end (one semaphore call per group).
fn push_group(batches: &mut Batches, admitted: Admitted, now: Instant, ready: &mut Vec<Ready>) {
    let Admitted { msgs, mut held } = admitted;
    let mut remaining = held.bytes();
    let last = msgs.len().saturating_sub(1);
    for (i, msg) in msgs.into_iter().enumerate() {
        let cost = if i == last {
            remaining
        } else {
            msg.cost().min(remaining)
        };
        remaining -= cost;
        batches.push(msg, cost, &mut held, now, ready);
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
