//! gRPC load generator: requests of `--batch` points, `--inflight` at a time on each of
//! `--conns` HTTP/2 connections, as fast as the server answers or paced to a total `--rate` in
//! points per second. Unary `Write` calls by default; with `--stream`, one `WriteStream` per
//! connection with `--inflight` requests pipelined. Every request is timed from send to
//! response (the response waits for the WAL fsync), so the latency percentiles are what a
//! client sees. Everything runs on ONE thread (a current-thread runtime): the generator takes
//! at most one core.
//!
//! ```sh
//! cargo bench --bench grpc_load -- --addr 127.0.0.1:50051 --points 1000000 --batch 1000
//! cargo bench --bench grpc_load -- --addr 127.0.0.1:50051 --points 200000 --batch 100 --rate 100000
//! cargo bench --bench grpc_load -- --addr 127.0.0.1:50051 --points 100000 --batch 1 --stream
//! ```

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use fleetlake::grpc::proto::field::Value;
use fleetlake::grpc::proto::ingest_client::IngestClient;
use fleetlake::grpc::proto::{Field, Point, WriteRequest, WriteStreamRequest};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;

struct Args {
    addr: String,
    points: u64,
    batch: u64,
    conns: u64,
    inflight: u64,
    /// Total points per second (0: as fast as possible).
    rate: f64,
    /// Distinct device ids.
    devices: u64,
    /// Pipelined `WriteStream` instead of unary calls.
    stream: bool,
}

fn parse_args() -> Args {
    let mut args = Args {
        addr: "127.0.0.1:50051".into(),
        points: 100_000,
        batch: 100,
        conns: 4,
        inflight: 8,
        rate: 0.0,
        devices: 1000,
        stream: false,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let value = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--addr" => args.addr = value,
            "--points" => args.points = value.parse().unwrap_or(args.points),
            "--batch" => args.batch = value.parse().unwrap_or(args.batch).max(1),
            "--conns" => args.conns = value.parse().unwrap_or(args.conns).max(1),
            "--inflight" => args.inflight = value.parse().unwrap_or(args.inflight).max(1),
            "--rate" => args.rate = value.parse().unwrap_or(args.rate),
            "--devices" => args.devices = value.parse().unwrap_or(args.devices).max(1),
            "--stream" => {
                args.stream = true;
                i += 1;
                continue;
            }
            // `cargo bench` passes --bench; ignore anything else unknown.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    args
}

/// The same reading as the MQTT bench: seq, temp, hum, ok, fw.
fn point(seq: u64, devices: u64, now_ns: i64) -> Point {
    let f = |name: &str, value: Value| Field {
        name: name.into(),
        value: Some(value),
    };
    Point {
        table: String::new(),
        device_id: format!("dev-{:04}", seq % devices),
        time_unix_nano: now_ns,
        fields: vec![
            f("seq", Value::IntValue(seq as i64)),
            f("temp", Value::DoubleValue(20.0 + (seq % 100) as f64 / 10.0)),
            f("hum", Value::IntValue(40 + (seq % 20) as i64)),
            f("ok", Value::BoolValue(true)),
            f("fw", Value::StringValue("1.2.0".into())),
        ],
    }
}

struct Shared {
    args: Args,
    next_request: Cell<u64>,
    requests: u64,
    latencies_us: RefCell<Vec<u32>>,
    errors: Cell<u64>,
    start: Instant,
}

impl Shared {
    /// The next request's points, once it is due; `None` when all are sent.
    async fn next(&self) -> Option<Vec<Point>> {
        let a = &self.args;
        let k = self.next_request.get();
        if k >= self.requests {
            return None;
        }
        self.next_request.set(k + 1);
        let first = k * a.batch;
        let n = a.batch.min(a.points - first);
        if a.rate > 0.0 {
            let due = self.start + Duration::from_secs_f64(first as f64 / a.rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let now_ns = chrono_ns();
        Some(
            (first..first + n)
                .map(|s| point(s, a.devices, now_ns))
                .collect(),
        )
    }

    fn error(&self, e: &tonic::Status) {
        if self.errors.get() == 0 {
            eprintln!("first error: {e}");
        }
        self.errors.set(self.errors.get() + 1);
    }
}

/// One pipelined stream: up to `inflight` requests sent ahead of their responses.
async fn stream_worker(shared: Rc<Shared>, mut client: IngestClient<Channel>) {
    let window = Rc::new(Semaphore::new(shared.args.inflight as usize));
    let sent_at: Rc<RefCell<VecDeque<Instant>>> = Rc::default();
    let (tx, rx) = mpsc::unbounded_channel();
    let sender = {
        let (shared, window, sent_at) = (shared.clone(), window.clone(), sent_at.clone());
        tokio::task::spawn_local(async move {
            let mut id = 0;
            while let Some(points) = shared.next().await {
                let Ok(permit) = window.acquire().await else {
                    return;
                };
                permit.forget();
                sent_at.borrow_mut().push_back(Instant::now());
                id += 1;
                if tx.send(WriteStreamRequest { id, points }).is_err() {
                    return;
                }
            }
        })
    };
    let mut responses = match client.write_stream(UnboundedReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(e) => return shared.error(&e),
    };
    loop {
        match responses.message().await {
            Ok(Some(r)) => {
                let sent = sent_at.borrow_mut().pop_front();
                if r.code != 0 {
                    shared.error(&tonic::Status::new(r.code.into(), r.message));
                } else if let Some(sent) = sent {
                    let us = sent.elapsed().as_micros().min(u32::MAX as u128) as u32;
                    shared.latencies_us.borrow_mut().push(us);
                }
                window.add_permits(1);
            }
            Ok(None) => break,
            Err(e) => {
                shared.error(&e);
                break;
            }
        }
    }
    let _ = sender.await;
}

async fn worker(shared: Rc<Shared>, mut client: IngestClient<Channel>) {
    while let Some(points) = shared.next().await {
        let sent = Instant::now();
        match client.write(WriteRequest { points }).await {
            Ok(_) => {
                let us = sent.elapsed().as_micros().min(u32::MAX as u128) as u32;
                shared.latencies_us.borrow_mut().push(us);
            }
            Err(e) => shared.error(&e),
        }
    }
}

fn chrono_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let url = format!("http://{}", args.addr);
        let mut clients = Vec::new();
        for _ in 0..args.conns {
            // One HTTP/2 connection per client; `inflight` calls multiplexed on each.
            let channel = Channel::from_shared(url.clone())?.connect().await?;
            clients.push(IngestClient::new(channel));
        }
        let requests = args.points.div_ceil(args.batch);
        let shared = Rc::new(Shared {
            args,
            next_request: Cell::new(0),
            requests,
            latencies_us: RefCell::new(Vec::with_capacity(requests as usize)),
            errors: Cell::new(0),
            start: Instant::now(),
        });
        let local = tokio::task::LocalSet::new();
        for client in &clients {
            if shared.args.stream {
                local.spawn_local(stream_worker(shared.clone(), client.clone()));
                continue;
            }
            for _ in 0..shared.args.inflight {
                local.spawn_local(worker(shared.clone(), client.clone()));
            }
        }
        local.await;
        let seconds = shared.start.elapsed().as_secs_f64();
        let mut lat = shared.latencies_us.take();
        lat.sort_unstable();
        let pct = |p: f64| {
            lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
                .map_or(0.0, |&us| us as f64 / 1000.0)
        };
        let ok = lat.len() as u64;
        let points_ok = (ok * shared.args.batch).min(shared.args.points);
        println!(
            "mode={} points={} batch={} conns={} inflight={} seconds={seconds:.2} points_per_s={:.0} requests_per_s={:.0} \
             latency_ms p50={:.2} p90={:.2} p99={:.2} p99.9={:.2} max={:.2} errors={}",
            if shared.args.stream { "stream" } else { "unary" },
            points_ok,
            shared.args.batch,
            shared.args.conns,
            shared.args.inflight,
            points_ok as f64 / seconds,
            ok as f64 / seconds,
            pct(0.50),
            pct(0.90),
            pct(0.99),
            pct(0.999),
            lat.last().map_or(0.0, |&us| us as f64 / 1000.0),
            shared.errors.get(),
        );
        Ok(())
    })
}
