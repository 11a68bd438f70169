//! Accept loop: one task per connection, at most `mqtt.max_connections` at once (a
//! semaphore: over the limit a connection is closed at once and counted, so a flood cannot
//! exhaust memory or file descriptors). Stops accepting when shutdown is signalled.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use std::collections::HashSet;

use super::connection::{ConnContext, Connection};
use super::session::SessionEnv;
use super::sessions::SessionStore;
use crate::buffer::Ingest;
use crate::config::MqttConfig;
use crate::decode::topic::Router;
use crate::telemetry::Stats;

/// The MQTT TCP listener.
#[derive(Debug)]
pub struct Listener {
    tcp: TcpListener,
    ctx: Arc<ConnContext>,
    ingest: Ingest,
    limit: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
}

impl Listener {
    /// Binds `cfg.listen`.
    pub async fn bind(
        cfg: &MqttConfig,
        node_id: &str,
        router: Router,
        ingest: Ingest,
        stats: Arc<Stats>,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<Self> {
        let tcp = TcpListener::bind(cfg.listen).await?;
        let ctx = Arc::new(ConnContext {
            router,
            stats,
            max_packet_size: cfg.max_packet_size,
            connect_timeout: cfg.connect_timeout,
            id_prefix: format!("fleetlake-{node_id}-"),
            next_id: AtomicU64::new(0),
            sessions: SessionStore::default(),
        });
        let limit = Arc::new(Semaphore::new(cfg.max_connections));
        Ok(Self {
            tcp,
            ctx,
            ingest,
            limit,
            shutdown,
        })
    }

    /// The bound address (the real port when configured with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Accepts until shutdown.
    pub async fn run(mut self) {
        loop {
            tokio::select! {
                // Cancel-safe: `accept` and `changed` lose nothing when the other branch wins.
                _ = self.shutdown.changed() => break,
                accepted = self.tcp.accept() => match accepted {
                    Ok((stream, peer)) => self.spawn(stream, peer),
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        tracing::debug!("mqtt listener stopped accepting");
    }

    fn spawn(&self, stream: tokio::net::TcpStream, peer: SocketAddr) {
        let Ok(permit) = self.limit.clone().try_acquire_owned() else {
            Stats::add(&self.ctx.stats.connections_refused, 1);
            tracing::warn!(%peer, "connection refused: mqtt.max_connections reached");
            return;
        };
        Stats::add(&self.ctx.stats.connections_accepted, 1);
        let _ = stream.set_nodelay(true);
        let conn = Connection::new(
            stream,
            peer,
            self.ctx.clone(),
            self.ingest.clone(),
            self.shutdown.clone(),
        );
        let stats = self.ctx.stats.clone();
        Stats::add(&stats.connections_open, 1);
        tokio::spawn(async move {
            conn.run().await;
            stats.connections_open.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}

impl SessionEnv for ConnContext {
    fn assign_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{}{n}", self.id_prefix)
    }

    fn resume(&self, client_id: &str) -> Option<HashSet<u16>> {
        self.sessions.take(client_id)
    }

    fn discard(&self, client_id: &str) {
        self.sessions.discard(client_id);
    }
}
