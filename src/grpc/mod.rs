//! gRPC ingest: the `fleetlake.v1.Ingest` service (`proto/fleetlake/v1/ingest.proto`), plus
//! the standard health and reflection services so stock tools (grpcurl, grpc_health_probe)
//! work without the `.proto` file.
//!
//! A request's points are checked ([`points::check`]: all or nothing), grouped into pipeline
//! messages ([`points::to_messages`]) and submitted through the same budget and WAL as MQTT;
//! the response waits for the WAL fsync.

pub mod codec;
pub mod incoming;
pub mod points;
pub mod server;
pub mod service;

/// Code generated from `proto/fleetlake/v1/ingest.proto` by `build.rs`.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod proto {
    tonic::include_proto!("fleetlake.v1");

    /// The encoded descriptor set of our protos, served by the reflection service.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/fleetlake_descriptor.bin"));
}
