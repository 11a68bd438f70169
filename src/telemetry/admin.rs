//! The admin HTTP endpoint (`[admin] listen`, loopback by default): `/metrics` in the
//! Prometheus text format, `/healthz` (the process answers), `/readyz` (200 once the WAL is
//! recovered and the listener accepts, 503 before that and while stopping). A deliberately
//! tiny HTTP/1.1 server: GET only, one request per connection, a 5 s deadline and an 8 KiB
//! limit on the request head, so a slow or hostile client costs one short-lived task.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{Histogram, Stats, TableCounts};
use crate::budget::Budget;

/// Longest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What the endpoint reports on.
#[derive(Debug)]
pub struct AdminState {
    /// Counters.
    pub stats: Arc<Stats>,
    /// The memory budget (bytes in use and total).
    pub budget: Budget,
    /// Recovered and accepting connections (and not stopping).
    pub ready: AtomicBool,
}

/// A bound admin endpoint.
#[derive(Debug)]
pub struct Admin {
    listener: TcpListener,
    state: Arc<AdminState>,
}

impl Admin {
    /// Binds `addr`.
    pub async fn bind(addr: SocketAddr, state: Arc<AdminState>) -> std::io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(addr).await?,
            state,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the task is dropped.
    pub async fn run(self) {
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    let state = self.state.clone();
                    tokio::spawn(async move {
                        let served = tokio::time::timeout(REQUEST_TIMEOUT, serve(stream, &state));
                        if let Ok(Err(e)) = served.await {
                            tracing::debug!(error = %e, "admin request failed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

async fn serve(mut stream: TcpStream, state: &AdminState) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
        if head.len() > MAX_HEAD {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            )
            .await;
        }
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" && method != "HEAD" {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n",
        )
        .await;
    }
    match path {
        "/metrics" => {
            let body = render_metrics(state);
            respond(
                &mut stream,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                &body,
            )
            .await
        }
        "/healthz" => respond(&mut stream, "200 OK", "text/plain", "ok\n").await,
        "/readyz" if state.ready.load(Ordering::Relaxed) => {
            respond(&mut stream, "200 OK", "text/plain", "ready\n").await
        }
        "/readyz" => {
            respond(
                &mut stream,
                "503 Service Unavailable",
                "text/plain",
                "not ready\n",
            )
            .await
        }
        _ => {
            respond(
                &mut stream,
                "404 Not Found",
                "text/plain",
                "try /metrics, /healthz, /readyz\n",
            )
            .await
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    kind: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Writes one metric family: `fleetlake_{name}{labels} value` per entry.
fn family(out: &mut String, name: &str, kind: &str, help: &str, values: &[(String, u64)]) {
    let _ = writeln!(out, "# HELP fleetlake_{name} {help}");
    let _ = writeln!(out, "# TYPE fleetlake_{name} {kind}");
    for (labels, value) in values {
        let _ = writeln!(out, "fleetlake_{name}{{{labels}}} {value}");
    }
}

/// Writes a histogram family (cumulative buckets, sum, count).
fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    let (buckets, sum) = h.snapshot();
    let _ = writeln!(out, "# HELP fleetlake_{name} {help}");
    let _ = writeln!(out, "# TYPE fleetlake_{name} histogram");
    for (le, count) in &buckets {
        match le {
            Some(le) => {
                let _ = writeln!(out, "fleetlake_{name}_bucket{{le=\"{le}\"}} {count}");
            }
            None => {
                let _ = writeln!(out, "fleetlake_{name}_bucket{{le=\"+Inf\"}} {count}");
            }
        }
    }
    let total = buckets.last().map_or(0, |b| b.1);
    let _ = writeln!(out, "fleetlake_{name}_sum {sum}");
    let _ = writeln!(out, "fleetlake_{name}_count {total}");
}

/// A label value in the text format (table names are safe already; this is belt and braces).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The Prometheus text exposition of every counter and gauge. Counter names are
/// `fleetlake_<counter>_total`; no label carries a device id or topic.
pub fn render_metrics(state: &AdminState) -> String {
    let mut out = String::with_capacity(4096);
    state.stats.each(|name, help, value| {
        let _ = writeln!(out, "# HELP fleetlake_{name}_total {help}");
        let _ = writeln!(out, "# TYPE fleetlake_{name}_total counter");
        let _ = writeln!(out, "fleetlake_{name}_total {value}");
    });
    histogram(
        &mut out,
        "wal_sync_seconds",
        "Duration of WAL fsyncs.",
        &state.stats.wal_sync_seconds,
    );
    histogram(
        &mut out,
        "mqtt_ack_seconds",
        "MQTT: time from reading a QoS 1/2 message to writing its PUBACK/PUBREC (WAL fsync \
         included; the messages of one read share one observation each).",
        &state.stats.mqtt_ack_seconds,
    );
    histogram(
        &mut out,
        "encode_seconds",
        "Time to sort, encode and write one batch's Parquet files (fsync and rename included).",
        &state.stats.encode_seconds,
    );
    histogram(
        &mut out,
        "delta_commit_seconds",
        "Time to commit one batch's files to its Delta table (output.table_format = \"delta\"; \
         log replay, and the checkpoint when one is due, included).",
        &state.stats.delta_commit_seconds,
    );
    let stats = &state.stats;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    family(
        &mut out,
        "messages_received_total",
        "counter",
        "Messages received, by source and MQTT QoS (gRPC: points stored).",
        &[
            (
                "source=\"mqtt\",qos=\"0\"".into(),
                load(&stats.messages_qos0),
            ),
            (
                "source=\"mqtt\",qos=\"1\"".into(),
                load(&stats.messages_qos1),
            ),
            (
                "source=\"mqtt\",qos=\"2\"".into(),
                load(&stats.messages_qos2),
            ),
            ("source=\"grpc\"".into(), load(&stats.grpc_points)),
        ],
    );
    let rejected: Vec<(String, u64)> = stats
        .rejected_by_reason()
        .into_iter()
        .map(|(r, n)| (format!("reason=\"{}\"", r.label()), n))
        .collect();
    family(
        &mut out,
        "messages_rejected_by_reason_total",
        "counter",
        "Messages stored in _rejected, by reason.",
        &rejected,
    );
    let upload_errors: Vec<(String, u64)> = stats
        .upload_errors()
        .into_iter()
        .map(|(k, n)| (format!("kind=\"{}\"", k.label()), n))
        .collect();
    family(
        &mut out,
        "upload_errors_total",
        "counter",
        "Failed uploads to the object store, by kind (each is retried, or moved aside on conflict).",
        &upload_errors,
    );
    let tables = stats.tables();
    for (name, help, pick) in [
        (
            "table_files_published_total",
            "Parquet files published, by table.",
            (|t: &TableCounts| t.files) as fn(&TableCounts) -> u64,
        ),
        (
            "table_rows_published_total",
            "Rows published, by table.",
            |t| t.rows,
        ),
        (
            "table_bytes_published_total",
            "Bytes of Parquet published, by table.",
            |t| t.bytes,
        ),
    ] {
        let values: Vec<(String, u64)> = tables
            .iter()
            .map(|(table, counts)| (format!("table=\"{}\"", escape(table)), pick(counts)))
            .collect();
        family(&mut out, name, "counter", help, &values);
    }
    let mut gauge = |name: &str, help: &str, value: f64| {
        let _ = writeln!(out, "# HELP fleetlake_{name} {help}");
        let _ = writeln!(out, "# TYPE fleetlake_{name} gauge");
        let _ = writeln!(out, "fleetlake_{name} {value}");
    };
    gauge(
        "memory_budget_bytes",
        "memory.budget: bytes buffered data may hold.",
        state.budget.total() as f64,
    );
    gauge(
        "memory_budget_used_bytes",
        "Bytes of the memory budget held by admitted messages, buffered rows and batches being published.",
        state.budget.in_use() as f64,
    );
    let (cpu_seconds, peak_rss_kib) = super::process_usage().unwrap_or_default();
    gauge(
        "process_peak_resident_memory_bytes",
        "Peak resident set size of the process.",
        (peak_rss_kib * 1024) as f64,
    );
    gauge(
        "process_resident_memory_bytes",
        "Resident set size of the process now.",
        (super::status_kib("VmRSS").unwrap_or(0) * 1024) as f64,
    );
    gauge(
        "connections_open",
        "MQTT connections open now.",
        state.stats.connections_open.load(Ordering::Relaxed) as f64,
    );
    gauge(
        "spool_bytes",
        "Bytes of Parquet files waiting in the spool for upload.",
        load(&stats.spool_bytes) as f64,
    );
    gauge(
        "spool_files",
        "Parquet files waiting in the spool for upload.",
        load(&stats.spool_files) as f64,
    );
    for (name, help, g) in [
        (
            "broker_subscriptions",
            "Broker subscriptions held.",
            &stats.broker_subscriptions,
        ),
        (
            "broker_sessions",
            "Broker sessions (connected, and persistent ones whose client is away).",
            &stats.broker_sessions,
        ),
        (
            "broker_retained_messages",
            "Retained messages held.",
            &stats.broker_retained,
        ),
        (
            "broker_queued_bytes",
            "Bytes queued for subscribers.",
            &stats.broker_queued_bytes,
        ),
    ] {
        gauge(name, help, load(g) as f64);
    }
    let oldest = load(&stats.spool_oldest_unix);
    gauge(
        "upload_lag_seconds",
        "Age of the oldest file waiting in the spool (0 when it is empty).",
        if oldest == 0 {
            0.0
        } else {
            super::unix_now().saturating_sub(oldest) as f64
        },
    );
    gauge(
        "ready",
        "1 once the WAL is recovered and the listener accepts; 0 before and while stopping.",
        if state.ready.load(Ordering::Relaxed) {
            1.0
        } else {
            0.0
        },
    );
    let _ = writeln!(
        out,
        "# HELP fleetlake_process_cpu_seconds_total CPU time used by the process (user + system).\n\
         # TYPE fleetlake_process_cpu_seconds_total counter\n\
         fleetlake_process_cpu_seconds_total {cpu_seconds}"
    );
    out
}
