//! The gRPC server: binds `grpc.listen` and serves the ingest service with health checking
//! (`grpc.health.v1`) and server reflection (v1 and v1alpha) beside it.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::codec::CompressionEncoding;
use tonic::transport::Server;

use super::proto::FILE_DESCRIPTOR_SET;
use super::proto::ingest_server::IngestServer;
use super::service::IngestService;
use crate::admit::Ingest;
use crate::auth::GrpcPolicy;
use crate::config::GrpcConfig;
use crate::telemetry::Stats;
use crate::tls::ServerTls;

/// HTTP/2 flow-control window per request stream.
const STREAM_WINDOW: u32 = 1 << 20;
/// HTTP/2 flow-control window per connection (what one client may have unread at once).
const CONNECTION_WINDOW: u32 = 4 << 20;

/// A bound, not yet serving, gRPC server.
#[derive(Debug)]
pub struct GrpcServer {
    listener: TcpListener,
    tls: Option<(Arc<ServerTls>, std::time::Duration)>,
    service: IngestService,
    stats: Arc<Stats>,
    max_message_size: usize,
    shutdown: watch::Receiver<bool>,
}

impl GrpcServer {
    /// Binds `addr` (with TLS when `config.tls` is set, reading its files); requests go to
    /// `ingest` when `policy` lets them. `shutdown` turning true stops the server: new
    /// requests get UNAVAILABLE, open streams end after answering what they read.
    pub async fn bind(
        addr: SocketAddr,
        config: &GrpcConfig,
        policy: GrpcPolicy,
        ingest: Ingest,
        stats: Arc<Stats>,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<Self> {
        let tls = match &config.tls {
            Some(files) => Some((
                Arc::new(ServerTls::new(files.clone(), &[b"h2"])?),
                config.handshake_timeout,
            )),
            None => None,
        };
        let listener = TcpListener::bind(addr).await?;
        let service = IngestService::new(
            ingest,
            &config.default_table,
            policy,
            stats.clone(),
            shutdown.clone(),
        );
        Ok(Self {
            listener,
            tls,
            service,
            stats,
            max_message_size: config.max_message_size,
            shutdown,
        })
    }

    /// The TLS config, to reload on SIGHUP.
    pub fn tls_config(&self) -> Option<Arc<ServerTls>> {
        self.tls.as_ref().map(|(c, _)| c.clone())
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until shutdown and every open request is answered.
    pub async fn run(self) -> anyhow::Result<()> {
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter.set_serving::<IngestServer<IngestService>>().await;
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;
        let service = self.service.clone();
        let ingest = IngestServer::new(self.service)
            .max_decoding_message_size(self.max_message_size)
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Zstd);
        let incoming = super::incoming::incoming(self.listener, self.tls, self.stats);
        let mut shutdown = self.shutdown;
        let stop = async move {
            let _ = shutdown.wait_for(|closing| *closing).await;
            // The WAL writer ends once every ingest handle is gone; a connection that stays
            // open (a client not reading its responses) must not keep ours alive.
            service.close();
            reporter
                .set_not_serving::<IngestServer<IngestService>>()
                .await;
        };
        Server::builder()
            // Room for a whole batch in flight: h2's 64 KiB default window makes a client wait
            // for a WINDOW_UPDATE round trip in the middle of every large request.
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(ingest)
            .serve_with_incoming_shutdown(incoming, stop)
            .await?;
        Ok(())
    }
}
