//! gRPC load: requests of `--batch` points, `--inflight` at a time on each of `--conns` HTTP/2
//! connections (tonic clients), as fast as the server answers or paced to a total `--rate` in
//! points per second. Unary `Write` calls by default; with `--stream`, one `WriteStream` per
//! connection with `--inflight` requests pipelined. Each request is timed from send to its
//! response (fleetlake answers after the WAL fsync), so the percentiles are what a client sees.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use fleetlake::grpc::proto::field::Value;
use fleetlake::grpc::proto::ingest_client::IngestClient;
use fleetlake::grpc::proto::{Field, Point, WriteRequest, WriteStreamRequest};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::GrpcArgs;
use crate::report::Totals;

/// The reading every point carries (the same fields as the MQTT `reading` payload plus `fw`).
fn point(seq: u64, device: &str, now_ns: i64) -> Point {
    let f = |name: &str, value: Value| Field {
        name: name.into(),
        value: Some(value),
    };
    Point {
        table: String::new(),
        device_id: device.to_owned(),
        time_unix_nano: now_ns,
        fields: vec![
            f("seq", Value::IntValue(seq as i64)),
            f("temp", Value::DoubleValue(20.0 + (seq % 100) as f64 / 10.0)),
            f("hum", Value::IntValue(30 + (seq % 40) as i64)),
            f("ok", Value::BoolValue(true)),
            f("fw", Value::StringValue("1.2.0".into())),
        ],
    }
}

fn unix_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// The request schedule all workers draw from (one thread: `Cell`s).
struct Plan {
    args: GrpcArgs,
    devices: Vec<String>,
    next: Cell<u64>,
    requests: u64,
    deadline: Option<Instant>,
    start: Instant,
    totals: Rc<Totals>,
}

impl Plan {
    /// The next request's points once it is due; `None` when all are sent or time is up.
    async fn next(&self) -> Option<Vec<Point>> {
        let a = &self.args;
        let k = self.next.get();
        if k >= self.requests || self.deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        self.next.set(k + 1);
        let first = k * a.batch;
        let n = if a.points == 0 {
            a.batch
        } else {
            a.batch.min(a.points - first)
        };
        if a.rate > 0.0 {
            let due = self.start + Duration::from_secs_f64(first as f64 / a.rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let now_ns = unix_ns();
        let devices = self.devices.len() as u64;
        let points = (first..first + n)
            .map(|s| point(s, &self.devices[(s % devices) as usize], now_ns))
            .collect();
        self.totals.sent(n);
        Some(points)
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        if let Some(token) = &self.args.token
            && let Ok(v) = MetadataValue::try_from(format!("Bearer {token}"))
        {
            r.metadata_mut().insert("authorization", v);
        }
        r
    }

    fn refused(&self, points: u64, e: impl std::fmt::Display) {
        self.totals.errors(points);
        self.totals.note_error(e);
    }
}

/// Unary calls, one at a time (a connection runs `--inflight` of these).
async fn unary(plan: Rc<Plan>, mut client: IngestClient<Channel>) {
    while let Some(points) = plan.next().await {
        let n = points.len() as u64;
        let sent = Instant::now();
        match client.write(plan.request(WriteRequest { points })).await {
            Ok(_) => plan.totals.acked_many(n, sent.elapsed().as_micros() as u64),
            Err(e) => plan.refused(n, e),
        }
    }
}

/// One pipelined stream: up to `--inflight` requests ahead of their responses.
async fn stream(plan: Rc<Plan>, mut client: IngestClient<Channel>) -> Result<(), tonic::Status> {
    let window = Rc::new(Semaphore::new(plan.args.inflight as usize));
    let sent_at: Rc<RefCell<VecDeque<(Instant, u64)>>> = Rc::default();
    let (tx, rx) = mpsc::unbounded_channel();
    let sender = {
        let (plan, window, sent_at) = (plan.clone(), window.clone(), sent_at.clone());
        tokio::task::spawn_local(async move {
            let mut id = 0;
            while let Some(points) = plan.next().await {
                let Ok(permit) = window.acquire().await else {
                    return;
                };
                permit.forget();
                sent_at
                    .borrow_mut()
                    .push_back((Instant::now(), points.len() as u64));
                id += 1;
                if tx.send(WriteStreamRequest { id, points }).is_err() {
                    return;
                }
            }
        })
    };
    let mut responses = client
        .write_stream(plan.request(UnboundedReceiverStream::new(rx)))
        .await?
        .into_inner();
    while let Some(r) = responses.message().await? {
        let Some((sent, n)) = sent_at.borrow_mut().pop_front() else {
            break;
        };
        if r.code == 0 {
            plan.totals.acked_many(n, sent.elapsed().as_micros() as u64);
        } else {
            plan.refused(n, tonic::Status::new(r.code.into(), r.message));
        }
        window.add_permits(1);
    }
    let _ = sender.await;
    Ok(())
}

/// Connects `--conns` channels and runs the load; the caller prints `totals`.
pub(crate) async fn run(args: GrpcArgs, deadline: Option<Instant>, totals: Rc<Totals>) {
    let url = format!("http://{}", args.addr);
    let mut clients = Vec::new();
    for _ in 0..args.conns {
        // One HTTP/2 connection per client; `--inflight` calls multiplexed on each.
        let channel = match Channel::from_shared(url.clone()) {
            Ok(c) => c.connect().await,
            Err(e) => return totals.failed(e),
        };
        match channel {
            Ok(c) => {
                totals.connected.set(totals.connected.get() + 1);
                clients.push(IngestClient::new(c));
            }
            Err(e) => totals.failed(format!("{url}: {e}")),
        }
    }
    if clients.is_empty() {
        return;
    }
    let devices = (0..args.devices)
        .map(|d| format!("{}{d}", args.prefix))
        .collect();
    let requests = if args.points == 0 {
        u64::MAX
    } else {
        args.points.div_ceil(args.batch)
    };
    let plan = Rc::new(Plan {
        args,
        devices,
        next: Cell::new(0),
        requests,
        deadline,
        start: Instant::now(),
        totals: totals.clone(),
    });
    let mut tasks = Vec::new();
    for client in &clients {
        if plan.args.stream {
            let (plan, client) = (plan.clone(), client.clone());
            let totals = totals.clone();
            tasks.push(tokio::task::spawn_local(async move {
                if let Err(e) = stream(plan, client).await {
                    totals.failed(e);
                }
            }));
            continue;
        }
        for _ in 0..plan.args.inflight {
            tasks.push(tokio::task::spawn_local(unary(
                plan.clone(),
                client.clone(),
            )));
        }
    }
    for t in tasks {
        let _ = t.await;
    }
}
