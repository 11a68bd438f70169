//! Bridge mode: fleetlake subscribes to an external MQTT broker (rumqttc, MQTT 3.1.1 or 5, plain
//! or TLS with rustls, optionally with a client certificate) and
//! ingests what it receives through the same topic → table mapping as its own listener.
//!
//! At-least-once end to end: the session is persistent (`clean_session = false`, or MQTT 5
//! `clean_start = false` with a session expiry; a stable client id) and acks are manual. A QoS 1/2 message is acknowledged to the broker (PUBACK /
//! PUBREC) only once it is in the fsynced WAL, in arrival order, so a crash or a lost
//! connection makes the broker deliver again whatever was not acknowledged. Acks still pending
//! when the connection drops are never sent on the next connection (the broker may have reused
//! those packet ids); the broker redelivers those messages instead, which can store them twice
//! (see config/README.md, "Bridge").
//!
//! Two tasks per bridge: the *poller* drives rumqttc's event loop (never cancelled: it owns
//! the socket) and forwards publishes through a small channel; the *consumer* admits them into
//! the pipeline in groups, waits until each group is durable and acks it. When the consumer
//! holds `max_inflight` unacknowledged messages it stops taking from the channel, the poller
//! stops reading the socket, and TCP pushes back on the broker.

mod backoff;
pub mod redelivery;
mod session;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

pub use backoff::Backoff;
pub use redelivery::Redelivery;
use session::{Client, Delivery, Loop, Polled, Settings};

use crate::admit::{Ingest, Submit};
use crate::config::{BridgeConfig, BridgeTls, Password};
use crate::decode::topic::Router;
use crate::decode::{Source, decode_publish};
use crate::telemetry::Stats;
use crate::wal::Durable;

/// Publishes handed from the poller to the consumer at once.
const CHANNEL: usize = 64;
/// Capacity of rumqttc's request queue: every packet id, plus subscribes and a disconnect.
const REQUEST_QUEUE: usize = 65_536 + 64;
/// How long a published WAL segment is kept when bridges run. Its bridge records seed the
/// redelivery filter after a crash; an ack for one of them can still be queued in rumqttc
/// (which writes one queued request per turn of its event loop while reading up to ten
/// publishes), so a segment deleted at once could let a crash soon after store the broker's
/// redelivery twice. Costs disk: what the WAL takes in during this time, kept a little longer.
pub const SEGMENT_GRACE: Duration = Duration::from_secs(10);
/// Longest wait at shutdown for stored messages to be acknowledged to the broker.
const ACK_DRAIN: Duration = Duration::from_secs(3);

/// What the poller tells the consumer.
#[derive(Debug)]
enum Seen {
    /// Connected (again); acks of earlier connections are void.
    Connected,
    /// A message, from the connection of this epoch.
    Message(Delivery),
}

/// A running bridge.
#[derive(Debug)]
pub struct Bridge {
    config: BridgeConfig,
    settings: Settings,
    recent: Redelivery,
    router: Router,
    ingest: Ingest,
    stats: Arc<Stats>,
    shutdown: watch::Receiver<bool>,
}

/// Reads the password of a bridge (at each connect, so a rotated file is picked up).
fn password(config: &BridgeConfig) -> std::io::Result<Option<String>> {
    match &config.password {
        Password::None => Ok(None),
        Password::File(path) => std::fs::read_to_string(path)
            .map(|s| Some(s.trim_end_matches(['\r', '\n']).to_string()))
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        Password::Env(var) => std::env::var(var).map(Some).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("environment variable {var} is not set"),
            )
        }),
    }
}

/// Reads what a bridge needs to connect (password, TLS files) now, so a missing or bad file
/// stops the start with its name.
fn settings(config: &BridgeConfig) -> std::io::Result<Settings> {
    Ok(Settings {
        password: password(config)?,
        tls: match &config.tls {
            Some(tls) => Some(Arc::new(tls_client(tls)?)),
            None => None,
        },
        requests: REQUEST_QUEUE,
    })
}

/// Reads a bridge's password and TLS files as a start would (for `check-config`).
pub fn check_files(config: &BridgeConfig) -> std::io::Result<()> {
    settings(config).map(|_| ())
}

/// A rustls client (ring provider) trusting `ca_file` or the system's CA certificates, with a
/// client certificate for mutual TLS when configured.
fn tls_client(tls: &BridgeTls) -> std::io::Result<rustls::ClientConfig> {
    let roots = match &tls.ca_file {
        Some(path) => crate::tls::load_roots(path)?,
        None => {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no system CA certificates found: set ca_file",
                ));
            }
            roots
        }
    };
    crate::tls::install_provider();
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    match &tls.client {
        Some((cert, key)) => builder
            .with_client_auth_cert(crate::tls::load_certs(cert)?, crate::tls::load_key(key)?)
            .map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", cert.display()),
                )
            }),
        None => Ok(builder.with_no_client_auth()),
    }
}

impl Bridge {
    /// A bridge feeding `ingest`; it stops when `shutdown` turns true. `recent` holds the
    /// fingerprints of what it stored before (from the WAL). Fails when the password or a TLS
    /// file cannot be read.
    pub fn new(
        config: BridgeConfig,
        recent: Redelivery,
        router: Router,
        ingest: Ingest,
        stats: Arc<Stats>,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<Self> {
        Ok(Self {
            settings: settings(&config)?,
            recent,
            config,
            router,
            ingest,
            stats,
            shutdown,
        })
    }

    /// Runs until shutdown; then acks what is stored, disconnects and drops its ingest handle.
    pub async fn run(mut self) {
        // The request queue has room for every ack we can owe (see REQUEST_QUEUE), so
        // `try_ack` never finds it full.
        let (client, eventloop) = session::connect(&self.config, self.settings.clone());
        let (tx, mut rx) = mpsc::channel(CHANNEL);
        let stopping = Arc::new(AtomicU64::new(0));
        let poller = tokio::spawn(poll(
            eventloop,
            client.clone(),
            self.config.clone(),
            tx,
            self.stats.clone(),
            stopping.clone(),
        ));
        let mut pending: VecDeque<(Durable, Vec<Delivery>, u64)> = VecDeque::new();
        let mut owed = 0usize;
        let mut epoch = 0u64;
        let name: Arc<str> = Arc::from(self.config.name.as_str());
        loop {
            let step = tokio::select! {
                biased;
                _ = self.shutdown.wait_for(|s| *s) => Step::Stop,
                done = async { pending.front_mut().map(|p| &mut p.0).expect("pending").wait().await },
                    if !pending.is_empty() => Step::Stored(done.is_ok()),
                seen = rx.recv(), if owed < self.config.max_inflight => match seen {
                    Some(seen) => Step::Seen(seen),
                    None => Step::Stop,
                },
            };
            match step {
                Step::Stop => break,
                Step::Stored(false) => {
                    // The pipeline stopped: nothing after this may be acknowledged.
                    pending.clear();
                    break;
                }
                Step::Stored(true) => {
                    let (_, publishes, at) = pending.pop_front().expect("pending");
                    owed -= publishes.len();
                    if at == epoch {
                        ack(&client, &publishes);
                    }
                }
                Step::Seen(first) => {
                    let mut batch = vec![first];
                    while batch.len() < CHANNEL {
                        match rx.try_recv() {
                            Ok(s) => batch.push(s),
                            Err(_) => break,
                        }
                    }
                    let (group, acks, cost) = self.decode(batch, &name, &mut epoch);
                    let how = Submit {
                        unacknowledged: acks.is_empty(),
                        refuse_when_full: false,
                    };
                    let durable = tokio::select! {
                        biased;
                        _ = self.shutdown.wait_for(|s| *s) => break,
                        d = self.ingest.submit(&name, group, cost, how) => d,
                    };
                    match durable {
                        Ok(d) => {
                            owed += acks.len();
                            pending.push_back((d, acks, epoch));
                        }
                        Err(_) => break,
                    }
                }
            }
        }
        // Stop taking messages (the poller drops what it still reads: never acked, so the
        // broker keeps them), ack what became durable, then disconnect.
        rx.close();
        let drain = async {
            while let Some((mut d, publishes, at)) = pending.pop_front() {
                if d.wait().await.is_err() {
                    break;
                }
                if at == epoch {
                    ack(&client, &publishes);
                }
            }
        };
        let _ = tokio::time::timeout(ACK_DRAIN, drain).await;
        drop(self.ingest);
        stopping.store(1, Ordering::Relaxed);
        client.try_disconnect();
        if tokio::time::timeout(Duration::from_secs(2), poller)
            .await
            .is_err()
        {
            tracing::debug!(bridge = %self.config.name, "bridge poller did not end in time");
        }
        tracing::info!(bridge = %self.config.name, "bridge stopped");
    }
}

/// Acknowledges stored messages to the broker (PUBACK, or PUBREC for QoS 2).
fn ack(client: &Client, deliveries: &[Delivery]) {
    for d in deliveries {
        if let Err(e) = client.try_ack(d) {
            // Cannot happen while the request queue has room for every owed ack; the broker
            // then redelivers the message on the next session.
            tracing::warn!(error = %e, "cannot queue an ack");
        }
    }
}

/// One turn of the consumer loop.
enum Step {
    Stop,
    /// The oldest pending group settled (stored, or not).
    Stored(bool),
    Seen(Seen),
}

impl Bridge {
    /// Decodes a batch into one group; returns it with the publishes to ack once it is stored
    /// and its budget cost. A `Connected` in the batch starts a new epoch.
    fn decode(
        &mut self,
        batch: Vec<Seen>,
        name: &Arc<str>,
        epoch: &mut u64,
    ) -> (Vec<crate::decode::Message>, Vec<Delivery>, usize) {
        let mut group = Vec::with_capacity(batch.len());
        let mut acks = Vec::new();
        let mut cost = 0;
        for s in batch {
            let mut p = match s {
                Seen::Connected => {
                    // Acks owed on the old connection are void: the broker redelivers those
                    // messages on this one. (Messages of the old connection still in this
                    // batch are stored; their acks are void too.)
                    *epoch += 1;
                    acks.clear();
                    continue;
                }
                Seen::Message(p) => p,
            };
            Stats::add(&self.stats.bridge_messages, 1);
            Stats::add(&self.stats.payload_bytes, p.payload.len() as u64);
            if p.qos > 0 {
                let fp = redelivery::fingerprint(&p.topic, &p.payload);
                if p.dup && self.recent.contains(fp) {
                    // Stored before; its ack was lost. Acked (in order, once everything
                    // before it is stored), not stored again.
                    Stats::add(&self.stats.bridge_redeliveries_skipped, 1);
                    acks.push(p);
                    continue;
                }
                self.recent.insert(fp);
            }
            let mut msg = decode_publish(
                &self.router,
                std::mem::take(&mut p.topic),
                p.payload.clone(),
                name,
                crate::decode::now_micros(),
            );
            msg.source = Source::Bridge;
            if let Some(why) = msg.rejected {
                self.stats.reject(why);
            }
            cost += msg.cost();
            group.push(msg);
            if p.qos > 0 {
                acks.push(p);
            }
        }
        (group, acks, cost)
    }
}

/// Drives the event loop: (re)connects with backoff, subscribes when the broker has no
/// session for us, forwards publishes.
async fn poll(
    mut eventloop: Loop,
    client: Client,
    config: BridgeConfig,
    tx: mpsc::Sender<Seen>,
    stats: Arc<Stats>,
    stopping: Arc<AtomicU64>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), config.reconnect_max_backoff);
    let mut connected = false;
    loop {
        match eventloop.next().await {
            Polled::ConnAck { session_present } => {
                backoff.reset();
                connected = true;
                Stats::add(&stats.bridge_connections, 1);
                tracing::info!(
                    bridge = %config.name,
                    broker = %format!("{}:{}", config.host, config.port),
                    client_id = %config.client_id,
                    mqtt = if config.mqtt5 { "5" } else { "3.1.1" },
                    session_present,
                    "bridge connected"
                );
                if !session_present {
                    for (filter, q) in &config.subscriptions {
                        if let Err(e) = client.try_subscribe(filter, *q) {
                            tracing::error!(bridge = %config.name, error = %e, "cannot subscribe");
                        }
                    }
                }
                if tx.send(Seen::Connected).await.is_err() && stopping.load(Ordering::Relaxed) == 0
                {
                    return;
                }
            }
            Polled::SubAck { refused, filters } => {
                if refused > 0 {
                    tracing::error!(bridge = %config.name, refused, "the broker refused subscriptions (ACL?)");
                } else {
                    tracing::info!(bridge = %config.name, filters, "bridge subscribed");
                }
            }
            Polled::Publish(d) => {
                // After shutdown began the consumer is gone: the message stays unacked and
                // the broker keeps it for the next session.
                let _ = tx.send(Seen::Message(d)).await;
            }
            Polled::Disconnected => {
                if stopping.load(Ordering::Relaxed) != 0 {
                    return;
                }
            }
            Polled::Other => {}
            Polled::Error(e) => {
                if stopping.load(Ordering::Relaxed) != 0 {
                    return;
                }
                let wait = backoff.next(jitter());
                Stats::add(&stats.bridge_connection_errors, 1);
                if connected {
                    tracing::warn!(bridge = %config.name, error = %e, retry_in = ?wait, "bridge connection lost");
                } else {
                    tracing::warn!(bridge = %config.name, error = %e, retry_in = ?wait, "bridge cannot connect");
                }
                connected = false;
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// A number in [0, 1) that differs between calls and processes (for reconnect jitter).
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}
