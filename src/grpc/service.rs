//! The `fleetlake.v1.Ingest` service: `Write` (unary) and `WriteStream` (pipelined). Both
//! answer only once every point of a request is in the fsynced WAL.
//!
//! A stream is two tasks joined by a bounded queue: the reader checks and submits requests as
//! they arrive (so a client can pipeline up to [`PIPELINE`] requests), the responder waits for
//! each in order and sends its response. A full queue stops the reader, and HTTP/2 flow
//! control then stops the client.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt as _};

use super::incoming::PeerInfo;
use super::points;
use super::proto::ingest_server::Ingest as IngestApi;
use super::proto::{
    Point, PointError, WriteRequest, WriteResponse, WriteStreamRequest, WriteStreamResponse,
};
use crate::admit::{Ingest, Submit};
use crate::auth::{Caller, GrpcPolicy, GrpcRefused};
use crate::telemetry::Stats;
use crate::wal::{Durable, NotStored};

/// How long a request waits for memory budget before RESOURCE_EXHAUSTED.
pub const BUDGET_WAIT: Duration = Duration::from_secs(2);
/// Requests of one stream read ahead of their responses.
pub const PIPELINE: usize = 64;

/// Why a request was not stored.
#[derive(Debug)]
enum Refused {
    /// Bad points; nothing stored.
    Invalid(Vec<PointError>),
    /// Budget or disk full; nothing stored, retry later.
    Busy(&'static str),
    /// Shutting down (or the pipeline stopped); nothing more is stored.
    Unavailable,
    /// The caller may not write a point's device; nothing stored.
    Denied(String),
}

impl Refused {
    fn code(&self) -> Code {
        match self {
            Self::Invalid(_) => Code::InvalidArgument,
            Self::Busy(_) => Code::ResourceExhausted,
            Self::Unavailable => Code::Unavailable,
            Self::Denied(_) => Code::PermissionDenied,
        }
    }

    fn message(&self) -> String {
        match self {
            Self::Invalid(errors) => {
                let mut m = format!(
                    "{} invalid point(s), nothing stored",
                    if errors.len() >= points::MAX_ERRORS {
                        format!("{}+", errors.len())
                    } else {
                        errors.len().to_string()
                    }
                );
                for e in errors.iter().take(3) {
                    m.push_str(&format!(
                        "; points[{}].{}: {}",
                        e.index, e.field, e.description
                    ));
                }
                m
            }
            Self::Busy(why) => format!("{why}: nothing stored, retry later"),
            Self::Unavailable => "fleetlake is shutting down".into(),
            Self::Denied(why) => format!("{why}: nothing stored"),
        }
    }

    /// The unary answer: INVALID_ARGUMENT carries a `google.rpc.BadRequest`.
    fn into_status(self) -> Status {
        let message = self.message();
        match self {
            Self::Invalid(errors) => {
                let violations: Vec<FieldViolation> = errors
                    .into_iter()
                    .map(|e| {
                        FieldViolation::new(
                            format!("points[{}].{}", e.index, e.field),
                            e.description,
                        )
                    })
                    .collect();
                Status::with_error_details(
                    Code::InvalidArgument,
                    message,
                    ErrorDetails::with_bad_request(violations),
                )
            }
            other => Status::new(other.code(), message),
        }
    }
}

/// What every request handler shares.
#[derive(Debug)]
struct Shared {
    /// `None` once shutdown began: see [`IngestService::close`].
    ingest: Mutex<Option<Ingest>>,
    default_table: Arc<str>,
    policy: GrpcPolicy,
    stats: Arc<Stats>,
    shutdown: watch::Receiver<bool>,
}

impl Shared {
    /// Who sent `request` (UNAUTHENTICATED when the policy does not know them).
    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .map(tonic::metadata::MetadataValue::as_bytes);
        let cert_cn = request
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.cert_cn.as_deref());
        self.policy.identify(header, cert_cn).map_err(|GrpcRefused::Unauthenticated(why)| {
            Stats::add(&self.stats.grpc_unauthenticated, 1);
            tracing::info!(peer = %client_of(request), why, "gRPC request refused: unauthenticated");
            Status::unauthenticated(why)
        })
    }

    fn closing(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Checks the points and queues them for the WAL: returns the point count and what to
    /// wait on before answering.
    async fn admit(
        &self,
        client: &Arc<str>,
        caller: &Caller,
        points: Vec<Point>,
    ) -> Result<(u32, Durable), Refused> {
        if self.closing() {
            return Err(Refused::Unavailable);
        }
        Stats::add(&self.stats.grpc_requests, 1);
        let errors = points::check(&points);
        if !errors.is_empty() {
            Stats::add(&self.stats.grpc_requests_invalid, 1);
            return Err(Refused::Invalid(errors));
        }
        if let Some(i) = points.iter().position(|p| !caller.may_write(&p.device_id)) {
            Stats::add(&self.stats.grpc_permission_denied, 1);
            let name = caller.name().map_or("", |n| &**n);
            tracing::info!(caller = name, device = %points[i].device_id, "gRPC points refused: another device");
            return Err(Refused::Denied(format!(
                "points[{i}].device_id `{}`: caller `{name}` may write only its own device",
                points[i].device_id
            )));
        }
        let n = points.len() as u32;
        let ingest = self
            .ingest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(Refused::Unavailable)?;
        let msgs = points::to_messages(points, &self.default_table, crate::decode::now_micros());
        let cost = msgs.iter().map(crate::decode::Message::cost).sum();
        let submit = ingest.submit(
            client,
            msgs,
            cost,
            Submit {
                unacknowledged: false,
                refuse_when_full: true,
            },
        );
        // Cancel-safe: a submit cancelled while waiting for budget holds nothing.
        match tokio::time::timeout(BUDGET_WAIT, submit).await {
            Ok(Ok(durable)) => Ok((n, durable)),
            Ok(Err(_closed)) => Err(Refused::Unavailable),
            Err(_elapsed) => {
                Stats::add(&self.stats.grpc_requests_busy, 1);
                Err(Refused::Busy("the memory budget is full"))
            }
        }
    }

    /// Waits until admitted points are durable.
    async fn settle(&self, n: u32, mut durable: Durable) -> Result<u32, Refused> {
        match durable.wait().await {
            Ok(()) => {
                Stats::add(&self.stats.grpc_points, u64::from(n));
                Ok(n)
            }
            Err(NotStored::Full) => {
                Stats::add(&self.stats.grpc_requests_busy, 1);
                Err(Refused::Busy("the WAL volume is full"))
            }
            Err(NotStored::Closed) => Err(Refused::Unavailable),
        }
    }
}

/// The service handed to tonic.
#[derive(Clone, Debug)]
pub struct IngestService(Arc<Shared>);

impl IngestService {
    /// A service submitting to `ingest`; `shutdown` turning true makes it refuse new work.
    pub fn new(
        ingest: Ingest,
        default_table: &str,
        policy: GrpcPolicy,
        stats: Arc<Stats>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self(Arc::new(Shared {
            ingest: Mutex::new(Some(ingest)),
            default_table: Arc::from(default_table),
            policy,
            stats,
            shutdown,
        }))
    }
}

impl IngestService {
    /// Drops the service's ingest handle (at shutdown; later requests get UNAVAILABLE). Open
    /// connections keep the service alive, but no longer the WAL writer.
    pub fn close(&self) {
        self.0
            .ingest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }
}

/// The WAL's client id for a request: `grpc:` and the peer address.
fn client_of<T>(request: &Request<T>) -> Arc<str> {
    let addr = request
        .extensions()
        .get::<PeerInfo>()
        .map(|p| p.addr)
        .or_else(|| request.remote_addr());
    match addr {
        Some(addr) => Arc::from(format!("grpc:{addr}")),
        None => Arc::from("grpc"),
    }
}

/// One stream request, read and admitted, on its way to the responder.
enum Pending {
    Request(u64, Result<(u32, Durable), Refused>),
    /// The reader stopped: end the stream with this status.
    End(Status),
}

#[tonic::async_trait]
impl IngestApi for IngestService {
    async fn write(
        &self,
        request: Request<WriteRequest>,
    ) -> Result<Response<WriteResponse>, Status> {
        let caller = self.0.caller(&request)?;
        let client = client_of(&request);
        let points = request.into_inner().points;
        let result = match self.0.admit(&client, &caller, points).await {
            Ok((n, durable)) => self.0.settle(n, durable).await,
            Err(refused) => Err(refused),
        };
        match result {
            Ok(points) => Ok(Response::new(WriteResponse { points })),
            Err(refused) => Err(refused.into_status()),
        }
    }

    type WriteStreamStream = ReceiverStream<Result<WriteStreamResponse, Status>>;

    async fn write_stream(
        &self,
        request: Request<Streaming<WriteStreamRequest>>,
    ) -> Result<Response<Self::WriteStreamStream>, Status> {
        if self.0.closing() {
            return Err(Refused::Unavailable.into_status());
        }
        let caller = self.0.caller(&request)?;
        let client = client_of(&request);
        let mut inbound = request.into_inner();
        let (pending_tx, mut pending_rx) = mpsc::channel(PIPELINE);
        let (out_tx, out_rx) = mpsc::channel(PIPELINE);

        let shared = self.0.clone();
        tokio::spawn(async move {
            let mut shutdown = shared.shutdown.clone();
            loop {
                let next = tokio::select! {
                    biased;
                    _ = shutdown.wait_for(|closing| *closing) => {
                        Err(Refused::Unavailable.into_status())
                    }
                    next = inbound.message() => next,
                };
                let pending = match next {
                    Ok(Some(req)) => {
                        Pending::Request(req.id, shared.admit(&client, &caller, req.points).await)
                    }
                    Ok(None) => break,
                    Err(status) => Pending::End(status),
                };
                let end = matches!(pending, Pending::End(_));
                if pending_tx.send(pending).await.is_err() || end {
                    break;
                }
            }
        });

        let shared = self.0.clone();
        tokio::spawn(async move {
            while let Some(pending) = pending_rx.recv().await {
                let item = match pending {
                    Pending::Request(id, Ok((n, durable))) => {
                        respond(id, shared.settle(n, durable).await)
                    }
                    Pending::Request(id, Err(refused)) => respond(id, Err(refused)),
                    Pending::End(status) => Err(status),
                };
                let end = item.is_err();
                if out_tx.send(item).await.is_err() || end {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(out_rx)))
    }
}

/// The stream response for one request; UNAVAILABLE ends the stream instead.
fn respond(id: u64, result: Result<u32, Refused>) -> Result<WriteStreamResponse, Status> {
    match result {
        Ok(points) => Ok(WriteStreamResponse {
            id,
            points,
            ..Default::default()
        }),
        Err(Refused::Unavailable) => Err(Refused::Unavailable.into_status()),
        Err(refused) => {
            let message = refused.message();
            let code = refused.code() as i32;
            let errors = match refused {
                Refused::Invalid(errors) => errors,
                _ => Vec::new(),
            };
            Ok(WriteStreamResponse {
                id,
                code,
                message,
                points: 0,
                errors,
            })
        }
    }
}
