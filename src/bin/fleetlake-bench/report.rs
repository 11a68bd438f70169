//! Counters shared by the connection tasks (one thread: `Cell`s), the HDR latency histogram,
//! the per-second progress line and the summary.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// What all connections did so far.
pub(crate) struct Totals {
    conns: u64,
    pub(crate) connected: Cell<u64>,
    pub(crate) sent: Cell<u64>,
    pub(crate) acked: Cell<u64>,
    /// Acks with an error reason (MQTT 5) or connections that failed.
    pub(crate) errors: Cell<u64>,
    failed_conns: Cell<u64>,
    first_error: RefCell<Option<String>>,
    /// Ack latency in µs.
    latency: RefCell<Histogram<u64>>,
    /// The generator's clock: publishers stamp payloads, subscribers time deliveries with it.
    pub(crate) epoch: Instant,
    /// Subscribers whose SUBACK came.
    pub(crate) subscribed: Cell<u64>,
    /// Every publisher finished.
    pub(crate) publishers_done: Cell<bool>,
    /// Deliveries to subscribers (stamped ones).
    pub(crate) delivered: Cell<u64>,
    /// First message sent and last delivery (the span deliveries/s is over).
    pub(crate) first_sent: Cell<Option<Instant>>,
    last_delivered: Cell<Option<Instant>>,
    /// Publish → deliver latency in µs.
    deliver_latency: RefCell<Histogram<u64>>,
}

fn add(c: &Cell<u64>, n: u64) {
    c.set(c.get() + n);
}

impl Totals {
    pub(crate) fn new(conns: u64) -> Self {
        let latency = Histogram::new_with_bounds(1, 60_000_000, 3)
            .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()));
        Self {
            conns,
            connected: Cell::new(0),
            sent: Cell::new(0),
            acked: Cell::new(0),
            errors: Cell::new(0),
            failed_conns: Cell::new(0),
            first_error: RefCell::new(None),
            deliver_latency: RefCell::new(latency.clone()),
            latency: RefCell::new(latency),
            epoch: Instant::now(),
            subscribed: Cell::new(0),
            publishers_done: Cell::new(false),
            delivered: Cell::new(0),
            first_sent: Cell::new(None),
            last_delivered: Cell::new(None),
        }
    }

    /// One delivery to a subscriber, `micros` after its publisher sent it.
    pub(crate) fn delivered(&self, micros: u64) {
        add(&self.delivered, 1);
        self.last_delivered.set(Some(Instant::now()));
        let _ = self.deliver_latency.borrow_mut().record(micros.max(1));
    }

    pub(crate) fn sent(&self, n: u64) {
        add(&self.sent, n);
        if self.first_sent.get().is_none() {
            self.first_sent.set(Some(Instant::now()));
        }
    }

    /// One ack after `micros`.
    pub(crate) fn acked(&self, micros: u64) {
        self.acked_many(1, micros);
    }

    /// One ack covering `n` messages (a gRPC batch) after `micros`.
    pub(crate) fn acked_many(&self, n: u64, micros: u64) {
        add(&self.acked, n);
        let _ = self.latency.borrow_mut().record(micros.max(1));
    }

    /// `n` messages refused (a gRPC error, an MQTT 5 error reason).
    pub(crate) fn errors(&self, n: u64) {
        add(&self.errors, n);
    }

    /// A failure that is not a connection's end (e.g. a refused gRPC call): kept as the first error.
    pub(crate) fn note_error(&self, e: impl std::fmt::Display) {
        let mut first = self.first_error.borrow_mut();
        if first.is_none() {
            *first = Some(e.to_string());
        }
    }

    pub(crate) fn failed(&self, e: impl std::fmt::Display) {
        add(&self.failed_conns, 1);
        self.note_error(e);
    }

    pub(crate) fn failed_conns(&self) -> u64 {
        self.failed_conns.get()
    }

    fn ms(&self, q: f64) -> f64 {
        self.latency.borrow().value_at_quantile(q) as f64 / 1000.0
    }

    /// The final `key=value` line: `head` (the run's settings), then the same keys for every
    /// kind of run (messages are points for gRPC; latency is per request there).
    pub(crate) fn summary(&self, head: &str, elapsed: Duration) -> String {
        let secs = elapsed.as_secs_f64().max(1e-6);
        let mut line = format!(
            "{head} conns={} connected={} messages={} acked={} errors={} failed_conns={} \
             seconds={secs:.2} msgs_per_s={:.0} acked_per_s={:.0}",
            self.conns,
            self.connected.get(),
            self.sent.get(),
            self.acked.get(),
            self.errors.get(),
            self.failed_conns.get(),
            self.sent.get() as f64 / secs,
            self.acked.get() as f64 / secs,
        );
        if self.acked.get() > 0 {
            line.push_str(&format!(
                " ack_ms_p50={:.2} p90={:.2} p99={:.2} p99.9={:.2} max={:.2}",
                self.ms(0.5),
                self.ms(0.9),
                self.ms(0.99),
                self.ms(0.999),
                self.latency.borrow().max() as f64 / 1000.0
            ));
        }
        if self.delivered.get() > 0 {
            let h = self.deliver_latency.borrow();
            let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            // From the first message sent to the last delivery (not the subscribers' idle end).
            let span = match (self.first_sent.get(), self.last_delivered.get()) {
                (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64().max(1e-6),
                _ => secs,
            };
            line.push_str(&format!(
                " delivered={} delivered_per_s={:.0} deliver_ms_p50={:.2} deliver_ms_p99={:.2} deliver_ms_max={:.2}",
                self.delivered.get(),
                self.delivered.get() as f64 / span,
                ms(0.5),
                ms(0.99),
                h.max() as f64 / 1000.0
            ));
        }
        if let Some(e) = &*self.first_error.borrow() {
            line.push_str(&format!(" first_error={e:?}"));
        }
        line
    }
}

/// Prints one line a second: totals and the last second's rates.
pub(crate) async fn progress(t: Rc<Totals>, start: Instant) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let (mut sent, mut acked) = (0, 0);
    loop {
        tick.tick().await;
        let (s, a) = (t.sent.get(), t.acked.get());
        eprintln!(
            "t={:.0}s connected={}/{} sent={s} (+{}/s) acked={a} (+{}/s) errors={} failed_conns={} p99={:.2}ms",
            start.elapsed().as_secs_f64(),
            t.connected.get(),
            t.conns,
            s - sent,
            a - acked,
            t.errors.get(),
            t.failed_conns.get(),
            t.ms(0.99),
        );
        (sent, acked) = (s, a);
    }
}
