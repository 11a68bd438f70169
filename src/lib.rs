//! fleetlake: an edge telemetry ingest daemon. Devices publish small MQTT messages; fleetlake
//! decodes them into typed rows, batches them per table under one memory budget, and writes
//! sorted, compressed Parquet files that DuckDB, pyarrow, Polars, Spark or Trino read as one
//! Hive-partitioned dataset.
//!
//! ```text
//! devices ──MQTT──▶ mqtt::listener ─▶ mqtt::connection (session, decode) ─▶ buffer::Ingest (budget)
//! services ──gRPC──▶ grpc::service (check points, group into messages) ───────▶      │
//!                                                                              ▼
//!       wal::writer (own thread: append, group-commit fdatasync) ─▶ PUBACK / gRPC response
//!                                                                              │ in sequence order
//!                                                                              ▼
//!                    batch::Batcher (per-table columnar::TableBuilder, flush by rows/bytes/age)
//!                                                                              │
//!                                                                              ▼
//!        sink::publisher (blocking pool): columnar::encode (sort, hour parts, Parquet)
//!                                        → sink::LocalSink (tmp → fsync → rename → fsync dir)
//!                                        → wal::checkpoint (what is published; old segments go)
//! ```
//!
//! At start, `app` replays the WAL records the checkpoint does not cover before the listener
//! and the gRPC server bind. Not yet: S3 output.

pub mod app;
pub mod batch;
pub mod buffer;
pub mod columnar;
pub mod config;
pub mod decode;
pub mod grpc;
pub mod mqtt;
pub mod sink;
pub mod telemetry;
pub mod wal;
