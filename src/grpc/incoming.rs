//! The gRPC server's connections: accepted here (not by tonic) so that TLS, when configured,
//! is the same reloadable rustls config as MQTT's, the handshake runs in each connection's own
//! task under `grpc.tls.handshake_timeout` (never in the accept loop), and the verified client
//! certificate's CN reaches the service as [`PeerInfo`] in each request's extensions.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::telemetry::Stats;
use crate::tls::{ServerTls, Stream};

/// Who is on the other end of a connection.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// Remote address.
    pub addr: SocketAddr,
    /// CN of the client certificate rustls verified (mTLS).
    pub cert_cn: Option<Arc<str>>,
}

/// One accepted (and, with TLS, handshaken) connection.
#[derive(Debug)]
pub struct Conn {
    stream: Stream,
    info: PeerInfo,
}

impl Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Connections ready for HTTP/2, handshaken in their own tasks when `tls` is set. Accepting
/// stops when the server drops the stream. (Not at shutdown by itself: a stream that ended
/// first would make tonic stop accepting without ever running its shutdown signal, and the
/// service would keep its ingest handle.)
pub fn incoming(
    listener: TcpListener,
    tls: Option<(Arc<ServerTls>, Duration)>,
    stats: Arc<Stats>,
) -> ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, addr) = tokio::select! {
                // Cancel-safe: `accept` and `closed` lose nothing.
                () = tx.closed() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "gRPC accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let Some((config, timeout)) = &tls else {
                let info = PeerInfo {
                    addr,
                    cert_cn: None,
                };
                let conn = Conn {
                    stream: Stream::Plain(tcp),
                    info,
                };
                if tx.send(Ok(conn)).await.is_err() {
                    break;
                }
                continue;
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(config.current());
            let (tx, stats, timeout) = (tx.clone(), stats.clone(), *timeout);
            tokio::spawn(async move {
                match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        Stats::add(&stats.tls_handshakes, 1);
                        let cert_cn = crate::tls::peer_cn(tls.get_ref().1);
                        let conn = Conn {
                            stream: Stream::Tls(Box::new(tls)),
                            info: PeerInfo { addr, cert_cn },
                        };
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Ok(Err(e)) => {
                        Stats::add(&stats.tls_handshake_failures, 1);
                        tracing::info!(peer = %addr, error = %e, "gRPC TLS handshake failed");
                    }
                    Err(_) => {
                        Stats::add(&stats.tls_handshake_failures, 1);
                        tracing::debug!(peer = %addr, "gRPC TLS handshake timed out");
                    }
                }
            });
        }
        tracing::debug!("gRPC listener stopped accepting");
    });
    ReceiverStream::new(rx)
}
