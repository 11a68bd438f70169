//! fleetlake: an edge telemetry ingest daemon. Devices publish small MQTT messages; fleetlake
//! decodes them into typed rows, batches them per table under one memory budget, and writes
//! sorted, compressed Parquet files that DuckDB, pyarrow, Polars, Spark or Trino read as one
//! Hive-partitioned dataset.
//!
//! ```text
//! devices ──MQTT──▶ mqtt::listener ─▶ mqtt::connection (session, decode) ─▶ admit::Ingest (budget)
//! brokers ◀─MQTT── bridge (rumqttc subscriber, manual acks) ───────────────────▶      │
//! services ──gRPC──▶ grpc::service (check points, group into messages) ───────▶      │
//!                                                                              ▼
//!       wal::writer (own thread: append, group-commit fdatasync) ─▶ PUBACK / gRPC response
//!                                                                              │ in sequence order
//!                                                                              ▼
//!                    batch::Batcher (per-table columnar::TableBuilder, flush by rows/bytes/age)
//!                                                                              │
//!                                                                              ▼
//!        sink::publisher (blocking pool): columnar::encode (sort, hour parts, Parquet)
//!                                        → sink::LocalSink (tmp → fsync → rename → fsync dir),
//!                                          into the output or into sink::spool
//!                                        → wal::checkpoint (what is published; old segments go)
//!                    sink::uploader: spool → object store (create-only PUT / multipart), in order
//! ```
//!
//! `pipeline` starts these stages in order and stops them in reverse; at start, `recovery`
//! replays the WAL records the checkpoint does not cover before any source starts.
//! ARCHITECTURE.md has the module map and the design.

pub mod admit;
pub mod app;
pub mod auth;
pub mod batch;
pub mod bridge;
pub mod broker;
pub mod budget;
pub mod columnar;
pub mod config;
pub mod decode;
pub mod fault;
pub mod fuzzing;
pub mod grpc;
pub mod mqtt;
pub mod pipeline;
pub mod recovery;
pub mod sink;
pub mod telemetry;
pub mod tls;
pub mod wal;
