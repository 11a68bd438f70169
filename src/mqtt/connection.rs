//! One device connection: a task that reads bytes, frames packets, feeds the session state
//! machine and carries out its steps in order. Every complete packet already in the read
//! buffer is handled first: decoded messages gather into one group and acks into one write
//! buffer. Then the group is admitted into the pipeline (memory budget, then the WAL queue)
//! and its acks are set aside until the WAL says the group is fsynced; they are written then,
//! in order, in one syscall. Meanwhile the task goes on reading (pipelining: up to
//! [`MAX_INFLIGHT`] groups wait for their fsync), so one busy client is not held to one fsync
//! round trip per read. When the memory budget is spent, too many groups wait, or the WAL
//! volume is full, this task stops reading its socket and sends no acks.
//!
//! In the broker role the task also owns its session's outbox while connected: it wakes when
//! the fan-out queued deliveries, takes them (within the client's in-flight window) as PUBLISH
//! packets behind the replies already waiting, and settles them on PUBACK/PUBREC/PUBCOMP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use std::collections::VecDeque;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{Instant, timeout_at};
use tracing::Instrument;

use super::aliases::OutAliases;
use super::codec::{Codec, CodecError, Inbound, Outbound, Protocol, PublishIn, SubCode};
use super::session::{Session, Settle, Step};
use super::session_store::SessionStore;
use crate::admit::{Ingest, Submit};
use crate::broker::outbox::{Claim, Outbox, Packet};
use crate::broker::{Broker, table::SessionId};
use crate::decode::{Message, decode_publish, topic::Router};
use crate::telemetry::Stats;
use crate::tls::Stream;
use crate::wal::{Durable, NotStored};

/// Read buffer growth per read.
const READ_CHUNK: usize = 16 * 1024;
/// Groups of one connection that may wait for their WAL fsync while it reads on.
const MAX_INFLIGHT: usize = 32;
/// Longest wait, after a DISCONNECT with a reason, for the client to close first.
const LINGER: Duration = Duration::from_millis(500);

/// Replies held back until their group is durable.
#[derive(Debug)]
struct Held {
    durable: Durable,
    replies: Vec<Outbound>,
    /// `(qos, packet id)` of the group's QoS 1/2 messages, whose acks turn into MQTT 5
    /// "quota exceeded" when the group is refused.
    delivered: Vec<(u8, u16)>,
    /// When the bytes of the group's messages were read (for `mqtt_ack_seconds`).
    read_at: Instant,
}

/// What every connection shares.
#[derive(Debug)]
pub(crate) struct ConnContext {
    pub(crate) router: Router,
    pub(crate) stats: Arc<Stats>,
    pub(crate) auth: crate::auth::Authenticator,
    /// `!auth.publishes_unchecked()`, computed once.
    pub(crate) checks_publishes: bool,
    pub(crate) max_packet_size: usize,
    pub(crate) max_inflight: u16,
    pub(crate) connect_timeout: Duration,
    /// `mqtt.max_keep_alive`, seconds (0: no cap).
    pub(crate) max_keep_alive: u16,
    pub(crate) id_prefix: String,
    pub(crate) next_id: AtomicU64,
    pub(crate) sessions: SessionStore,
    /// The broker role (`None`: `broker.enabled = false`, SUBSCRIBE is refused).
    pub(crate) broker: Option<Arc<Broker>>,
}

/// A connection's hold on its broker session.
#[derive(Debug)]
struct BrokerSession {
    id: SessionId,
    outbox: Arc<Outbox>,
    claim: Claim,
    /// Topic aliases toward this connection.
    aliases: OutAliases,
}

/// How a connection ended without an error.
#[derive(Debug)]
enum End {
    /// The session closed it (DISCONNECT or a protocol rule).
    Closed(&'static str),
    /// fleetlake is shutting down.
    Shutdown,
    /// The pipeline no longer accepts messages.
    PipelineClosed,
    /// The broker ended the connection: its session was taken over, or it reads too slowly.
    Kicked(&'static str),
}

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("no CONNECT within mqtt.connect_timeout")]
    ConnectTimeout,
    #[error("keep-alive expired")]
    KeepAlive,
    #[error("peer closed the connection without DISCONNECT")]
    PeerClosed,
}

/// A connection task.
#[derive(Debug)]
pub(crate) struct Connection {
    stream: Stream,
    peer: SocketAddr,
    ctx: Arc<ConnContext>,
    ingest: Ingest,
    shutdown: watch::Receiver<bool>,
    codec: Codec,
    session: Session,
    client_id: Arc<str>,
    /// Device id of rows whose topic names none (the identity `[mqtt.auth]` chose).
    device: Arc<str>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    steps: Vec<Step>,
    /// Admitted groups whose acks wait for the WAL, oldest first.
    held: VecDeque<Held>,
    /// Replies to packets since the last admitted group.
    replies: Vec<Outbound>,
    /// QoS 1/2 messages of the group being gathered.
    delivered: Vec<(u8, u16)>,
    /// Decoded messages not yet admitted; their acks wait in `wbuf`.
    group: Vec<Message>,
    group_cost: usize,
    group_qos0_only: bool,
    /// The broker session, once connected (broker role only).
    bsession: Option<BrokerSession>,
    /// Deliveries a resumed session had in flight, sent again after CONNACK.
    /// Scratch for packets taken from the outbox.
    taken: Vec<Packet>,
    /// When the last read returned.
    read_at: Instant,
    /// A DISCONNECT with a reason code was written (MQTT 5): linger before closing.
    disconnect_sent: bool,
}

/// Resolves once shutdown is signalled (or its sender is gone).
async fn shutdown_signalled(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

impl Connection {
    pub(crate) fn new(
        stream: Stream,
        peer: SocketAddr,
        cert_cn: Option<Arc<str>>,
        ctx: Arc<ConnContext>,
        ingest: Ingest,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let codec = Codec::new(ctx.max_packet_size, ctx.max_inflight, ctx.broker.is_some());
        let session = Session::with(cert_cn, ctx.max_inflight);
        Self {
            stream,
            peer,
            ctx,
            ingest,
            shutdown,
            codec,
            session,
            client_id: Arc::from(""),
            device: Arc::from(""),
            rbuf: BytesMut::with_capacity(4096),
            wbuf: BytesMut::with_capacity(1024),
            steps: Vec::with_capacity(4),
            held: VecDeque::new(),
            replies: Vec::new(),
            delivered: Vec::new(),
            group: Vec::new(),
            group_cost: 0,
            group_qos0_only: true,
            bsession: None,
            taken: Vec::new(),
            read_at: Instant::now(),
            disconnect_sent: false,
        }
    }

    /// Serves the connection to its end, then publishes the will if the session still holds one.
    pub(crate) async fn run(mut self) {
        let span = tracing::debug_span!("mqtt", peer = %self.peer);
        async move {
            let result = self.serve().await;
            // Parked before anything is logged: a log line about this connection's end means
            // its session is already back in the store (and the broker's).
            self.leave_broker();
            if let Some((client_id, qos2_pending)) = self.session.park()
                && !self.ctx.sessions.park(client_id, qos2_pending)
            {
                tracing::warn!(client = %self.client_id, "session store full: session not kept");
            }
            let will = match &result {
                Ok(End::Closed(reason)) => {
                    tracing::debug!(client = %self.client_id, reason, "connection closed");
                    true
                }
                Ok(End::Kicked(reason)) => {
                    let _ = self.write_acks(0).await;
                    if self.codec.protocol() == Some(Protocol::V5) {
                        let code = if reason.starts_with("session taken over") { 0x8E } else { 0x97 };
                        self.codec.encode(Outbound::Disconnect(code), &mut self.wbuf);
                self.disconnect_sent = true;
                        let _ = self.flush().await;
                    }
                    tracing::info!(client = %self.client_id, reason, "connection closed by the broker");
                    true
                }
                Ok(End::Shutdown) => {
                    // Acks of groups already durable still go out; the rest never do.
                    let _ = self.write_acks(usize::MAX).await;
                    if self.codec.protocol() == Some(Protocol::V5) && self.session.is_connected() {
                        self.codec
                            .encode(Outbound::Disconnect(0x8B), &mut self.wbuf);
                        let _ = self.flush().await;
                    }
                    false
                }
                Ok(End::PipelineClosed) => false,
                Err(e) => {
                    // Whole messages read before the error are kept (and then acked).
                    let admitted = self.admit_group().await.is_none();
                    self.on_error(e).await;
                    admitted
                }
            };
            if will {
                self.publish_will().await;
            }
            if self.disconnect_sent {
                self.linger().await;
            }
        }
        .instrument(span)
        .await;
    }

    /// After a DISCONNECT with a reason code: closes the sending side and reads (discarding)
    /// until the client closes or [`LINGER`] passes. Closing a socket with unread bytes sends
    /// a TCP reset, which can reach the client before the DISCONNECT it should read (a client
    /// that flooded us, say, would see "connection reset" instead of 0x93).
    async fn linger(&mut self) {
        let deadline = Instant::now() + LINGER;
        // Bounded too: a TLS close_notify waits for room in a full send buffer.
        let _ = timeout_at(deadline, self.stream.shutdown()).await;
        let mut scratch = BytesMut::with_capacity(READ_CHUNK);
        loop {
            scratch.clear();
            match timeout_at(deadline, self.stream.read_buf(&mut scratch)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
        }
    }

    async fn on_error(&mut self, e: &ConnError) {
        // Acks for what was admitted before the error go out first (once durable).
        let _ = self.write_acks(0).await;
        match e {
            ConnError::PeerClosed if self.rbuf.is_empty() => {
                tracing::debug!(client = %self.client_id, "client closed the connection");
                return;
            }
            ConnError::Codec(CodecError::UnsupportedProtocol(_)) => {
                let refuse = Outbound::ConnAck {
                    code: super::codec::ConnCode::BadProtocol,
                    session_present: false,
                    assigned_id: None,
                    server_keep_alive: None,
                };
                self.codec.encode(refuse, &mut self.wbuf);
            }
            ConnError::Codec(CodecError::TooLarge(_))
                if self.codec.protocol() == Some(Protocol::V5) =>
            {
                self.codec
                    .encode(Outbound::Disconnect(0x95), &mut self.wbuf);
                self.disconnect_sent = true;
            }
            ConnError::Codec(CodecError::Malformed(_))
                if self.codec.protocol() == Some(Protocol::V5) =>
            {
                self.codec
                    .encode(Outbound::Disconnect(0x81), &mut self.wbuf);
                self.disconnect_sent = true;
            }
            _ => {}
        }
        let _ = self.flush().await;
        Stats::add(&self.ctx.stats.connections_failed, 1);
        tracing::info!(client = %self.client_id, error = %e, "connection dropped");
    }

    async fn serve(&mut self) -> Result<End, ConnError> {
        let connect_deadline = Instant::now() + self.ctx.connect_timeout;
        loop {
            while let Some(packet) = self.codec.decode(&mut self.rbuf)? {
                if let Some(end) = self.handle(packet).await? {
                    if let Some(end) = self.admit_group().await {
                        return Ok(end);
                    }
                    if !self.write_acks(0).await? {
                        return Ok(End::PipelineClosed);
                    }
                    return Ok(end);
                }
            }
            if let Some(end) = self.admit_group().await {
                return Ok(end);
            }
            if !self.write_acks(MAX_INFLIGHT - 1).await? {
                return Ok(End::PipelineClosed);
            }
            let deadline = if self.session.is_connected() {
                self.session.idle_timeout().map(|t| Instant::now() + t)
            } else {
                Some(connect_deadline)
            };
            self.rbuf.reserve(READ_CHUNK);
            let Self {
                stream,
                rbuf,
                shutdown,
                session,
                held,
                bsession,
                ..
            } = self;
            // Resolves when the fan-out queued deliveries or the session was taken over.
            let woken = async {
                match bsession {
                    Some(b) => b.outbox.woken().await,
                    None => std::future::pending().await,
                }
            };
            // Resolves when the oldest held group is durable (or never will be).
            let oldest_durable = async {
                match held.front_mut() {
                    Some(h) => {
                        let _ = h.durable.wait().await;
                    }
                    None => std::future::pending().await,
                }
            };
            let read = async {
                match deadline {
                    Some(d) => timeout_at(d, stream.read_buf(rbuf)).await.map_err(|_| {
                        if session.is_connected() {
                            ConnError::KeepAlive
                        } else {
                            ConnError::ConnectTimeout
                        }
                    })?,
                    None => stream.read_buf(rbuf).await,
                }
                .map_err(ConnError::from)
            };
            tokio::select! {
                biased;
                // Cancel-safe: `read_buf` keeps what it read in `rbuf`; a cancelled read loses nothing.
                () = shutdown_signalled(shutdown) => return Ok(End::Shutdown),
                // Cancel-safe: `Durable::wait` keeps its receiver when cancelled.
                () = oldest_durable => {}
                // Cancel-safe: a `Notify` permit stays stored until a wait consumes it.
                () = woken => {
                    if let Err(reason) = self.take_deliveries() {
                        return Ok(End::Kicked(reason));
                    }
                }
                n = read => {
                    if n? == 0 {
                        return Err(ConnError::PeerClosed);
                    }
                    self.read_at = Instant::now();
                },
            }
        }
    }

    /// Writes the held replies of every group that is settled, oldest first, stopping at the
    /// first that is not; waits while more than `keep` groups are held. A group refused for a
    /// full WAL volume (MQTT 5 only) gets "quota exceeded" acks. `Ok(false)` when the WAL
    /// stopped or shutdown came while waiting (those acks are never sent).
    async fn write_acks(&mut self, keep: usize) -> std::io::Result<bool> {
        loop {
            let held = self.held.len();
            let Some(front) = self.held.front_mut() else {
                break;
            };
            let mut settled = front.durable.try_done();
            if matches!(settled, Ok(false)) {
                if held <= keep {
                    break;
                }
                // A full WAL volume can make this wait long: shutdown must still get through.
                settled = tokio::select! {
                    biased;
                    () = shutdown_signalled(&mut self.shutdown) => return Ok(false),
                    r = front.durable.wait() => r.map(|()| true),
                };
            }
            let Some(mut h) = self.held.pop_front() else {
                break;
            };
            match settled {
                Ok(_) => {}
                Err(NotStored::Closed) => return Ok(false),
                Err(NotStored::Full) => self.refuse(&mut h),
            }
            if !h.delivered.is_empty() {
                let n = h.delivered.len() as u64;
                self.ctx
                    .stats
                    .mqtt_ack_seconds
                    .observe_n(h.read_at.elapsed(), n);
            }
            for reply in h.replies {
                self.disconnect_sent |= matches!(reply, Outbound::Disconnect(_));
                self.codec.encode(reply, &mut self.wbuf);
            }
        }
        self.flush().await?;
        Ok(true)
    }

    /// A group the WAL refused (volume full): its messages' acks become "quota exceeded",
    /// and their QoS 2 ids are forgotten so a resend is stored.
    fn refuse(&mut self, h: &mut Held) {
        Stats::add(
            &self.ctx.stats.messages_refused_disk_full,
            h.delivered.len() as u64,
        );
        tracing::debug!(client = %self.client_id, messages = h.delivered.len(), "refused: WAL volume full");
        for reply in &mut h.replies {
            let (qos, pkid) = match *reply {
                Outbound::PubAck(pkid) => (1, pkid),
                Outbound::PubRec(pkid) => (2, pkid),
                _ => continue,
            };
            if h.delivered.contains(&(qos, pkid)) {
                *reply = Outbound::QuotaExceeded { pkid, qos };
                self.session.refused(pkid, qos);
            }
        }
    }

    /// Writes `wbuf`. A subscriber that stops reading blocks this write; if the broker
    /// kicks it meanwhile (its queue overflowed, or a new connection took the session), the
    /// write is abandoned and the connection ends.
    async fn flush(&mut self) -> std::io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let Self {
            stream,
            wbuf,
            bsession,
            ctx,
            ..
        } = self;
        let write = async {
            stream.write_all(wbuf).await?;
            stream.flush().await
        };
        match bsession {
            None => write.await?,
            Some(b) => tokio::select! {
                // Not cancel-safe (a partial write), which is fine: a kicked connection closes.
                r = write => r?,
                reason = b.outbox.kicked(b.claim) => {
                    if reason != crate::broker::outbox::TAKEN_OVER {
                        Stats::add(&ctx.stats.broker_slow_disconnects, 1);
                    }
                    return Err(std::io::Error::other(reason));
                }
            },
        }
        wbuf.clear();
        Ok(())
    }

    async fn handle(&mut self, packet: Inbound) -> Result<Option<End>, ConnError> {
        let was_connected = self.session.is_connected();
        let mut steps = std::mem::take(&mut self.steps);
        let ctx = self.ctx.clone();
        self.session.handle(packet, &*ctx, &mut steps);
        if !was_connected && self.session.is_connected() {
            self.client_id = Arc::from(self.session.client_id());
            self.device = self
                .session
                .device()
                .cloned()
                .unwrap_or_else(|| self.client_id.clone());
            tracing::debug!(client = %self.client_id, "client connected");
        }
        let mut end = None;
        for step in steps.drain(..) {
            match step {
                Step::Reply(Outbound::ConnAck {
                    code,
                    session_present,
                    assigned_id,
                    server_keep_alive,
                }) => {
                    let resumed = self.join_broker(code == super::codec::ConnCode::Accepted);
                    // In the broker role the broker's session decides (it may have expired).
                    let session_present = match self.ctx.broker {
                        Some(_) => resumed,
                        None => session_present,
                    };
                    self.replies.push(Outbound::ConnAck {
                        code,
                        session_present,
                        assigned_id,
                        server_keep_alive,
                    });
                    // What was in flight to a resumed session goes again, after CONNACK.
                    self.queue_taken();
                }
                Step::Reply(packet) => self.replies.push(packet),
                Step::Subscribe(s) => {
                    end = self.subscribe(s).await;
                    if end.is_some() {
                        break;
                    }
                }
                Step::Unsubscribe(super::codec::Unsubscribe { pkid, filters }) => {
                    let found = match (&self.ctx.broker, &self.bsession) {
                        (Some(broker), Some(b)) => broker.unsubscribe(b.id, &filters),
                        _ => vec![false; filters.len()],
                    };
                    self.replies.push(Outbound::UnsubAck { pkid, found });
                }
                Step::Settle(settle) => self.settle(settle),
                Step::Deliver(publish) => {
                    end = self.deliver(publish).await;
                    if end.is_some() {
                        break;
                    }
                }
                Step::Close(reason) => {
                    end = Some(End::Closed(reason));
                    break;
                }
            }
        }
        steps.clear();
        self.steps = steps;
        if end.is_none()
            && let Err(reason) = self.take_deliveries()
        {
            end = Some(End::Kicked(reason));
        }
        Ok(end)
    }

    /// Attaches the connection to its broker session after CONNECT was accepted; `true` when
    /// a stored session was resumed (its in-flight deliveries are then in `self.taken`).
    fn join_broker(&mut self, accepted: bool) -> bool {
        let Some(broker) = self.ctx.broker.as_ref().filter(|_| accepted) else {
            return false;
        };
        let clean = !self.session.resumable();
        let user = self.session.principal().and_then(|p| p.user.clone());
        let attached = broker.attach(&self.client_id, user, clean, self.session.expiry());
        let limits = self.session.client_limits();
        let window = usize::from(limits.receive_max.min(broker.max_inflight()));
        let claim = attached
            .outbox
            .claim(window, limits.max_packet as usize, &mut self.taken);
        self.bsession = Some(BrokerSession {
            id: attached.id,
            outbox: attached.outbox,
            claim,
            aliases: OutAliases::new(limits.topic_alias_max, limits.max_packet),
        });
        attached.present
    }

    /// Gives the broker session back when the connection ends.
    fn leave_broker(&mut self) {
        let (Some(broker), Some(b)) = (&self.ctx.broker, self.bsession.take()) else {
            return;
        };
        let still_owner = b.outbox.check(b.claim) != Err(crate::broker::outbox::TAKEN_OVER);
        b.outbox.release(b.claim);
        broker.detach(b.id, still_owner, self.session.expiry());
    }

    /// SUBSCRIBE: the broker decides each filter. The SUBACK of a persistent session waits
    /// for the broker's next snapshot (a SIGKILL after it keeps the subscription); `Some` when
    /// the connection must end instead.
    async fn subscribe(&mut self, s: super::codec::Subscribe) -> Option<End> {
        let super::codec::Subscribe { pkid, filters, id } = s;
        let mut codes = Vec::with_capacity(filters.len());
        let ctx = self.ctx.clone();
        let persist = match (&ctx.broker, &self.bsession) {
            (Some(broker), Some(b)) => {
                let (auth, principal) = (&ctx.auth, self.session.principal());
                let may_read = |filter: &str| {
                    principal.is_some_and(|p| auth.may_subscribe(p, &self.client_id, filter))
                };
                broker.subscribe(b.id, &filters, id, may_read, &mut codes)
            }
            _ => {
                codes.resize(filters.len(), SubCode::Unspecified);
                false
            }
        };
        let refused = codes
            .iter()
            .filter(|c| !matches!(c, SubCode::Granted(_)))
            .count();
        if refused > 0 {
            Stats::add(&self.ctx.stats.broker_subscribes_refused, refused as u64);
            tracing::info!(client = %self.client_id, refused, "SUBSCRIBE filters refused");
        }
        let ack = Outbound::SubAck { pkid, codes };
        let Some(broker) = ctx.broker.as_ref().filter(|_| persist) else {
            self.replies.push(ack);
            return None;
        };
        // Earlier replies keep their place in front of it.
        if let Some(end) = self.admit_group().await {
            return Some(end);
        }
        let (done, durable) = Durable::pending();
        broker.after_snapshot(done);
        self.held.push_back(Held {
            durable,
            replies: vec![ack],
            delivered: Vec::new(),
            read_at: self.read_at,
        });
        None
    }

    /// A subscriber's ack settles a delivery (and may open its in-flight window).
    fn settle(&mut self, settle: Settle) {
        let Some(b) = &self.bsession else {
            return;
        };
        let mut q = b.outbox.lock();
        match settle {
            Settle::PubAck(pkid) => {
                q.puback(pkid);
            }
            Settle::PubRec(pkid, true) => {
                q.pubrec(pkid);
                drop(q);
                self.replies.push(Outbound::PubRel(pkid));
            }
            // A refusing PUBREC ends the exchange (MQTT 5 §4.3.3).
            Settle::PubRec(pkid, false) | Settle::PubComp(pkid) => {
                q.pubcomp_or_refused(pkid);
            }
        }
    }

    /// Takes what the outbox lets go now into the replies (behind earlier acks). `Err` when
    /// the connection must close: the session was taken over, or it read too slowly.
    fn take_deliveries(&mut self) -> Result<(), &'static str> {
        let (Some(broker), Some(b)) = (&self.ctx.broker, &self.bsession) else {
            return Ok(());
        };
        if let Err(reason) = b.outbox.check(b.claim) {
            if reason != crate::broker::outbox::TAKEN_OVER {
                Stats::add(&self.ctx.stats.broker_slow_disconnects, 1);
            }
            return Err(reason);
        }
        b.outbox.lock().take(broker.bounds(), &mut self.taken);
        if !self.taken.is_empty() {
            broker.note_queued();
        }
        let stats = &self.ctx.stats;
        for r in &self.taken {
            if let Packet::Publish(p) = r {
                let counter = match p.qos {
                    0 => &stats.broker_delivered_qos0,
                    1 => &stats.broker_delivered_qos1,
                    _ => &stats.broker_delivered_qos2,
                };
                Stats::add(counter, 1);
            }
        }
        let (too_large, expired) = b.outbox.take_unsent();
        Stats::add(&stats.broker_dropped_too_large, too_large);
        Stats::add(&stats.broker_dropped_expired, expired);
        self.queue_taken();
        Ok(())
    }

    /// Moves the packets taken from the outbox into the replies, with topic aliases.
    fn queue_taken(&mut self) {
        let Some(b) = self.bsession.as_mut() else {
            self.taken.clear();
            return;
        };
        self.replies.extend(self.taken.drain(..).map(|p| match p {
            Packet::Publish(mut p) => {
                b.aliases.apply(&mut p);
                Outbound::Publish(p)
            }
            Packet::PubRel(id) => Outbound::PubRel(id),
        }));
    }

    /// Decodes one message into the group; admits the group once it is large.
    async fn deliver(&mut self, p: PublishIn) -> Option<End> {
        let stats = &self.ctx.stats;
        let counter = match p.qos {
            0 => &stats.messages_qos0,
            1 => &stats.messages_qos1,
            _ => &stats.messages_qos2,
        };
        Stats::add(counter, 1);
        Stats::add(&stats.payload_bytes, p.payload.len() as u64);
        if p.qos > 0 {
            self.delivered.push((p.qos, p.pkid));
        }
        let meta = crate::decode::MqttMeta {
            qos: p.qos,
            retain: p.retain,
            pkid: if p.qos > 0 { p.pkid } else { 0 },
            route_only: false,
            props: p.props.map(|b| Arc::new(*b)),
        };
        self.add_to_group(p.topic, p.payload, meta);
        if self.group_cost >= self.ingest.group_limit() {
            return self.admit_group().await;
        }
        None
    }

    fn add_to_group(
        &mut self,
        topic: String,
        payload: bytes::Bytes,
        meta: crate::decode::MqttMeta,
    ) {
        let qos = meta.qos;
        let mut msg = decode_publish(
            &self.ctx.router,
            topic,
            payload,
            &self.device,
            crate::decode::now_micros(),
        );
        if let Some(why) = msg.rejected {
            self.ctx.stats.reject(why);
            tracing::debug!(client = %self.client_id, topic = %msg.topic, "payload rejected");
        }
        msg.mqtt.qos = meta.qos;
        msg.mqtt.retain = meta.retain;
        msg.mqtt.pkid = meta.pkid;
        msg.mqtt.props = meta.props;
        crate::decode::property_columns(&self.ctx.router, &mut msg);
        self.group_cost += msg.cost();
        self.group_qos0_only &= qos == 0;
        self.group.push(msg);
    }

    /// Admits the gathered group and holds the acks written since the last group behind it
    /// until it is durable; `Some` when the connection must end instead (those acks are then
    /// never sent).
    async fn admit_group(&mut self) -> Option<End> {
        let durable = if self.group.is_empty() {
            Ok(Durable::done())
        } else {
            let group = std::mem::take(&mut self.group);
            let cost = std::mem::take(&mut self.group_cost);
            let qos0_only = std::mem::replace(&mut self.group_qos0_only, true);
            // MQTT 5 can say "not stored" (0x97); 3.1.1 can only withhold the ack.
            let how = Submit {
                unacknowledged: qos0_only,
                refuse_when_full: self.codec.protocol() == Some(Protocol::V5),
            };
            tokio::select! {
                biased;
                // Cancel-safe: a cancelled submit holds no budget and nothing was acked.
                () = shutdown_signalled(&mut self.shutdown) => Err(End::Shutdown),
                admitted = self.ingest.submit(&self.client_id, group, cost, how) => {
                    admitted.map_err(|_| End::PipelineClosed)
                }
            }
        };
        let durable = match durable {
            Ok(durable) => durable,
            Err(end) => {
                // Those messages are not in the pipeline: their acks must never go out.
                self.replies.clear();
                self.delivered.clear();
                return Some(end);
            }
        };
        if !self.replies.is_empty() || !durable.is_done() {
            // Even replies to no message (PINGRESP, PUBCOMP) queue behind earlier groups.
            self.held.push_back(Held {
                durable,
                replies: std::mem::take(&mut self.replies),
                delivered: std::mem::take(&mut self.delivered),
                read_at: self.read_at,
            });
        } else {
            self.delivered.clear();
        }
        None
    }

    async fn publish_will(&mut self) {
        if let Some(will) = self.session.take_will() {
            if will.delay > 0 && !self.wait_will_delay(will.delay).await {
                return;
            }
            Stats::add(&self.ctx.stats.messages_will, 1);
            let topic = will.topic.clone();
            let meta = crate::decode::MqttMeta {
                qos: will.qos,
                retain: will.retain,
                props: will.props.map(|p| Arc::new(*p)),
                ..crate::decode::MqttMeta::default()
            };
            self.add_to_group(will.topic, will.payload, meta);
            // Stored like QoS 1 whatever its QoS: never shed.
            self.group_qos0_only = false;
            if self.admit_group().await.is_none() {
                tracing::info!(client = %self.client_id, %topic, "will published");
            }
        }
    }

    /// MQTT 5 will delay (§3.1.3.2.2): waits `secs` (at most the session's expiry); `false`
    /// when the will is not to be published: the client came back (its session is connected
    /// again) or fleetlake is shutting down.
    async fn wait_will_delay(&mut self, secs: u32) -> bool {
        let wait = Duration::from_secs(u64::from(secs.min(self.session.expiry())));
        // Buffers are not needed while waiting.
        self.rbuf = BytesMut::new();
        self.wbuf = BytesMut::new();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown_signalled(&mut self.shutdown) => return false,
        }
        match &self.ctx.broker {
            Some(broker) => !broker.is_connected(&self.client_id),
            None => true,
        }
    }
}
