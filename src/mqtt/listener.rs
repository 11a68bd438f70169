//! Accept loops for the plain and the TLS listener. Each accepted socket passes the [`Gate`]
//! (total, per-IP and rate limits: over a limit it is closed at once and counted), then gets
//! its own task; the TLS handshake runs in that task under `mqtt.tls.handshake_timeout`, never
//! in the accept loop, so a slow or silent client delays nobody else. Stops accepting when
//! shutdown is signalled.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::connection::{ConnContext, Connection};
use super::gate::Gate;
use super::session::{Parked, SessionEnv};
use super::session_store::SessionStore;
use crate::admit::Ingest;
use crate::auth::{Authenticator, Credentials, Denied, Principal, Refused};
use crate::config::MqttConfig;
use crate::decode::topic::Router;
use crate::telemetry::Stats;
use crate::tls::ServerTls;
use crate::tls::Stream;

/// What every accept loop shares.
#[derive(Debug)]
struct Shared {
    ctx: Arc<ConnContext>,
    ingest: Ingest,
    gate: Mutex<Gate>,
    shutdown: watch::Receiver<bool>,
}

/// Where accepted messages go: the table routing and, in the broker role, the broker.
#[derive(Debug)]
pub struct Routes {
    /// Topic → table.
    pub router: Router,
    /// Subscriptions (`None`: `broker.enabled = false`).
    pub broker: Option<Arc<crate::broker::Broker>>,
    /// What clients published recently, found in the WAL at start.
    pub recent: HashMap<String, Parked>,
}

/// The MQTT listeners (plain and/or TLS), bound and not yet accepting.
#[derive(Debug)]
pub struct Listener {
    shared: Arc<Shared>,
    plain: Option<TcpListener>,
    tls: Option<(TcpListener, Arc<ServerTls>, Duration)>,
}

impl Listener {
    /// Binds `cfg.listen` and `cfg.tls.listen` (those set), loading the TLS files and the
    /// policy in `auth`.
    pub async fn bind(
        cfg: &MqttConfig,
        node_id: &str,
        routes: Routes,
        auth: Authenticator,
        ingest: Ingest,
        stats: Arc<Stats>,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<Self> {
        let plain = match cfg.listen {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        let tls = match &cfg.tls {
            Some(t) => {
                let config = Arc::new(ServerTls::new(t.files.clone(), &[])?);
                Some((
                    TcpListener::bind(t.listen).await?,
                    config,
                    t.handshake_timeout,
                ))
            }
            None => None,
        };
        // Clients with a verified certificate are authenticated: their device claims are checked.
        let mtls = cfg
            .tls
            .as_ref()
            .is_some_and(|t| t.files.client_ca.is_some());
        let checks_publishes = mtls || !auth.publishes_unchecked();
        let ctx = Arc::new(ConnContext {
            router: routes.router,
            broker: routes.broker,
            stats,
            auth,
            checks_publishes,
            max_packet_size: cfg.max_packet_size,
            max_inflight: cfg.max_inflight,
            connect_timeout: cfg.connect_timeout,
            max_keep_alive: cfg.max_keep_alive,
            id_prefix: format!("fleetlake-{node_id}-"),
            next_id: AtomicU64::new(0),
            sessions: SessionStore::seeded(routes.recent),
        });
        let gate = Mutex::new(Gate::new(
            cfg.max_connections,
            cfg.max_connections_per_ip,
            cfg.connect_rate,
        ));
        Ok(Self {
            shared: Arc::new(Shared {
                ctx,
                ingest,
                gate,
                shutdown,
            }),
            plain,
            tls,
        })
    }

    /// The plain listener's address (the real port when configured with port 0).
    pub fn plain_addr(&self) -> Option<SocketAddr> {
        self.plain.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The TLS listener's address.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().and_then(|(l, ..)| l.local_addr().ok())
    }

    /// The TLS config, to reload on SIGHUP.
    pub fn tls_config(&self) -> Option<Arc<ServerTls>> {
        self.tls.as_ref().map(|(_, c, _)| c.clone())
    }

    /// Starts the accept loops.
    pub fn spawn(self) {
        if let Some(tcp) = self.plain {
            tokio::spawn(accept_loop(tcp, None, self.shared.clone()));
        }
        if let Some((tcp, config, timeout)) = self.tls {
            tokio::spawn(accept_loop(tcp, Some((config, timeout)), self.shared));
        }
    }
}

async fn accept_loop(
    tcp: TcpListener,
    tls: Option<(Arc<ServerTls>, Duration)>,
    shared: Arc<Shared>,
) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        tokio::select! {
            // Cancel-safe: `accept` and `changed` lose nothing when the other branch wins.
            _ = shutdown.changed() => break,
            accepted = tcp.accept() => match accepted {
                Ok((stream, peer)) => admit(stream, peer, tls.clone(), &shared),
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

/// Releases a connection's place in the gate when its task ends.
struct Admitted {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Ok(mut gate) = self.shared.gate.lock() {
            gate.release(self.ip);
        }
        self.shared
            .ctx
            .stats
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

fn admit(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<(Arc<ServerTls>, Duration)>,
    shared: &Arc<Shared>,
) {
    let stats = &shared.ctx.stats;
    let admitted = match shared.gate.lock() {
        Ok(mut gate) => gate.admit(peer.ip(), Instant::now()),
        Err(_) => return,
    };
    if let Err(why) = admitted {
        let counter = match why {
            super::gate::Refusal::Full => &stats.connections_refused,
            super::gate::Refusal::PerIp => &stats.connections_refused_per_ip,
            super::gate::Refusal::Rate => &stats.connections_refused_rate,
        };
        Stats::add(counter, 1);
        tracing::debug!(%peer, limit = why.key(), "connection refused");
        return;
    }
    Stats::add(&stats.connections_accepted, 1);
    Stats::add(&stats.connections_open, 1);
    let guard = Admitted {
        shared: shared.clone(),
        ip: peer.ip(),
    };
    let _ = stream.set_nodelay(true);
    let shared = shared.clone();
    tokio::spawn(async move {
        let _guard = guard;
        let (stream, cert_cn) = match tls {
            None => (Stream::Plain(stream), None),
            Some((config, timeout)) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(config.current());
                let stats = &shared.ctx.stats;
                match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        Stats::add(&stats.tls_handshakes, 1);
                        let cn = crate::tls::peer_cn(tls.get_ref().1);
                        (Stream::Tls(Box::new(tls)), cn)
                    }
                    Ok(Err(e)) => {
                        Stats::add(&stats.tls_handshake_failures, 1);
                        tracing::info!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        Stats::add(&stats.tls_handshake_failures, 1);
                        tracing::debug!(%peer, "TLS handshake timed out (mqtt.tls.handshake_timeout)");
                        return;
                    }
                }
            }
        };
        let conn = Connection::new(
            stream,
            peer,
            cert_cn,
            shared.ctx.clone(),
            shared.ingest.clone(),
            shared.shutdown.clone(),
        );
        conn.run().await;
    });
}

impl SessionEnv for ConnContext {
    fn assign_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{}{n}", self.id_prefix)
    }

    fn resume(&self, client_id: &str) -> Option<Parked> {
        self.sessions.take(client_id)
    }

    fn resend_skipped(&self) {
        Stats::add(&self.stats.messages_resends_skipped, 1);
    }

    fn authenticate(&self, c: Credentials<'_>) -> Result<Principal, Refused> {
        let result = self.auth.connect(c);
        if let Err(why) = result {
            let counter = match why {
                Refused::BadCredentials => &self.stats.auth_refused_credentials,
                Refused::Anonymous => &self.stats.auth_refused_anonymous,
                Refused::NoIdentity => &self.stats.auth_refused_identity,
            };
            Stats::add(counter, 1);
            tracing::info!(
                client = c.client_id,
                username = c.username.unwrap_or(""),
                cert_cn = c.cert_cn.unwrap_or(""),
                reason = why.as_str(),
                "CONNECT refused: not authorized"
            );
        }
        result
    }

    fn checks_publishes(&self) -> bool {
        self.checks_publishes
    }

    fn max_keep_alive(&self) -> u16 {
        self.max_keep_alive
    }

    fn may_publish(&self, p: &Principal, client_id: &str, topic: &str) -> Result<(), Denied> {
        let topic_device = match self.router.route(topic) {
            Some(Ok(route)) => route.device_id,
            _ => None,
        };
        let result = self.auth.may_publish(p, client_id, topic, topic_device);
        if let Err(why) = result {
            let counter = match why {
                Denied::Acl => &self.stats.publish_denied_acl,
                Denied::DeviceClaim => &self.stats.publish_denied_device,
            };
            Stats::add(counter, 1);
            tracing::info!(client = client_id, topic, reason = ?why, "PUBLISH not authorized");
        }
        result
    }

    fn over_inflight(&self) {
        Stats::add(&self.stats.sessions_over_inflight, 1);
    }
}
