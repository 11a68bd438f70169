//! The sans-IO MQTT session state machine: one per connection, fed decoded [`Inbound`]
//! packets, answering with [`Step`]s for the connection task to carry out in order. It owns
//! the protocol rules: CONNECT first and once, client id assignment, QoS 1/2 acknowledgement
//! (a resend of a stored message is acked without a second row, see [`super::recent`]),
//! MQTT 5 topic aliases, keep-alive timing, and whether the will is published when the
//! connection ends.
//!
//! The order of steps is the contract: a `Deliver` always comes before the ack of the same
//! packet, so the connection task sends the ack only after the message was accepted.
//!
//! What a client published recently (its QoS 2 ids awaiting PUBREL, its last QoS 1 messages)
//! is parked when the connection ends and taken back by its next connection (through
//! [`SessionEnv`]); a start rebuilds it from the WAL. Whether a session is *persistent*
//! (3.1.1 without clean session, MQTT 5 with a session expiry) decides CONNACK's session
//! present and what the broker keeps.

use std::sync::Arc;
use std::time::Duration;

use super::codec::{
    ConnCode, ConnectInfo, Inbound, Outbound, Protocol, PublishIn, Subscribe, TOPIC_ALIAS_MAX,
    Unsubscribe, Will,
};
use super::recent::{Recent, fingerprint};
use crate::auth::{Credentials, Denied, Principal, Refused};

/// What the connection task must do next.
#[derive(Debug)]
pub enum Step {
    /// Send a packet.
    Reply(Outbound),
    /// Hand a publish to the pipeline (before any ack that follows).
    Deliver(PublishIn),
    /// Close the connection. The will, if still held ([`Session::take_will`]), is published.
    Close(&'static str),
    /// Subscribe (the broker answers with the SUBACK).
    Subscribe(Subscribe),
    /// Unsubscribe (the broker answers with the UNSUBACK).
    Unsubscribe(Unsubscribe),
    /// The client acknowledged a delivery (PUBACK, PUBREC with whether it took it, PUBCOMP).
    Settle(Settle),
}

/// A subscriber's acknowledgement of a delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle {
    /// PUBACK.
    PubAck(u16),
    /// PUBREC; `false` when its reason code refused the message.
    PubRec(u16, bool),
    /// PUBCOMP.
    PubComp(u16),
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    AwaitingConnect,
    Connected,
    Closed,
}

/// What a session needs from the rest of the server.
pub trait SessionEnv {
    /// A fresh client id for a client that sent none.
    fn assign_id(&self) -> String;
    /// Takes what was parked for `client_id` (`None`: nothing).
    fn resume(&self, client_id: &str) -> Option<Parked>;
    /// A resend of a stored message was acknowledged without storing it again.
    fn resend_skipped(&self) {}
    /// Decides a CONNECT (the default: everyone, device id = client id).
    fn authenticate(&self, c: Credentials<'_>) -> Result<Principal, Refused> {
        Ok(Principal {
            user: None,
            device: Arc::from(c.client_id),
            authenticated: false,
        })
    }
    /// Whether PUBLISH topics must be checked with [`SessionEnv::may_publish`].
    fn checks_publishes(&self) -> bool {
        false
    }
    /// Decides a PUBLISH topic.
    fn may_publish(&self, _p: &Principal, _client_id: &str, _topic: &str) -> Result<(), Denied> {
        Ok(())
    }
    /// A session exceeded `mqtt.max_inflight` (for the counters).
    fn over_inflight(&self) {}
    /// `mqtt.max_keep_alive` in seconds (0: the client's keep-alive stands).
    fn max_keep_alive(&self) -> u16 {
        0
    }
}

/// What a connection leaves for the next one of its client id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parked {
    /// The session was persistent (the next CONNECT without clean session resumes it).
    pub persistent: bool,
    /// What the client published recently.
    pub recent: Recent,
}

/// Session state of one connection.
#[derive(Debug)]
pub struct Session {
    state: State,
    client_id: String,
    persistent: bool,
    protocol: Protocol,
    keep_alive: u16,
    will: Option<Will>,
    /// QoS 2 ids awaiting PUBREL and the last QoS 1 messages stored.
    recent: Recent,
    /// Most QoS 2 ids awaiting PUBREL.
    max_inflight: u16,
    /// CN of the client certificate (mTLS).
    cert_cn: Option<Arc<str>>,
    /// Who CONNECT proved to be.
    principal: Option<Principal>,
    /// Whether each PUBLISH topic is checked.
    check_publishes: bool,
    /// The last topic found writable (most devices publish to one topic).
    allowed_topic: String,
    /// CONNECT asked for a clean session / clean start.
    clean: bool,
    /// Session expiry interval, seconds (MQTT 5; 3.1.1 without clean session: `u32::MAX`).
    expiry: u32,
    /// MQTT 5 topic aliases set by the client (index = alias − 1).
    aliases: Vec<Option<String>>,
    /// What the client takes from us (MQTT 5 CONNECT properties).
    client_limits: ClientLimits,
}

/// What a client takes from us, from its CONNECT (MQTT 5; 3.1.1: no limits, no aliases).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientLimits {
    /// QoS 1/2 deliveries in flight (Receive Maximum).
    pub receive_max: u16,
    /// Maximum packet size, 0: none.
    pub max_packet: u32,
    /// Topic Alias Maximum, 0: no aliases.
    pub topic_alias_max: u16,
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

impl Session {
    /// A session waiting for CONNECT.
    pub fn new() -> Self {
        Self {
            state: State::AwaitingConnect,
            client_id: String::new(),
            persistent: false,
            protocol: Protocol::V4,
            keep_alive: 0,
            will: None,
            recent: Recent::default(),
            max_inflight: u16::MAX,
            cert_cn: None,
            principal: None,
            check_publishes: false,
            allowed_topic: String::new(),
            clean: true,
            expiry: 0,
            aliases: Vec::new(),
            client_limits: ClientLimits {
                receive_max: u16::MAX,
                max_packet: 0,
                topic_alias_max: 0,
            },
        }
    }

    /// A session for a connection whose client certificate has `cert_cn`, allowing `max_inflight`
    /// QoS 2 messages awaiting PUBREL.
    pub fn with(cert_cn: Option<Arc<str>>, max_inflight: u16) -> Self {
        Self {
            cert_cn,
            max_inflight,
            ..Self::new()
        }
    }

    /// The device id of rows whose topic names none (set by CONNECT).
    pub fn device(&self) -> Option<&Arc<str>> {
        self.principal.as_ref().map(|p| &p.device)
    }

    /// Who CONNECT proved to be.
    pub fn principal(&self) -> Option<&Principal> {
        self.principal.as_ref()
    }

    /// The client id (assigned when the client sent none).
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Whether CONNECT was accepted.
    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// Whether the session outlives the connection (3.1.1 without clean session, MQTT 5 with
    /// a session expiry interval).
    pub fn is_persistent(&self) -> bool {
        self.persistent
    }

    /// How long the session outlives the connection, in seconds (`u32::MAX`: for ever; 0: it
    /// ends with the connection).
    pub fn expiry(&self) -> u32 {
        if self.persistent { self.expiry } else { 0 }
    }

    /// Whether a stored session may be resumed (CONNECT without clean session / clean start).
    pub fn resumable(&self) -> bool {
        !self.clean
    }

    /// The protocol of CONNECT.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// What the client takes from us, from CONNECT.
    pub fn client_limits(&self) -> ClientLimits {
        self.client_limits
    }

    /// What to keep for the client's next connection, once the connection ends (taken once;
    /// `None` when there is nothing to keep).
    pub fn park(&mut self) -> Option<(String, Parked)> {
        let parked = Parked {
            persistent: self.persistent && self.state != State::AwaitingConnect,
            recent: std::mem::take(&mut self.recent),
        };
        if self.client_id.is_empty() || (!parked.persistent && parked.recent.is_empty()) {
            return None;
        }
        Some((self.client_id.clone(), parked))
    }

    /// The will to publish when the connection ends abnormally, taken once.
    pub fn take_will(&mut self) -> Option<Will> {
        self.will.take()
    }

    /// How long the connection may stay silent: 1.5 × keep-alive (MQTT 3.1.2.10), `None` = off.
    pub fn idle_timeout(&self) -> Option<Duration> {
        (self.keep_alive > 0).then(|| Duration::from_millis(u64::from(self.keep_alive) * 1500))
    }

    /// Forgets a QoS 1/2 message that was refused (not stored; for QoS 2 a PUBREC with an
    /// error reason ends its exchange), so a later resend of it is delivered again.
    pub fn refused(&mut self, pkid: u16, qos: u8) {
        if qos == 2 {
            self.recent.qos2_release(pkid);
        } else {
            self.recent.qos1_refused(pkid);
        }
    }

    /// Handles one packet, pushing what to do to `out`.
    pub fn handle(&mut self, packet: Inbound, env: &impl SessionEnv, out: &mut Vec<Step>) {
        match (&self.state, packet) {
            (State::AwaitingConnect, Inbound::Connect(info)) => self.connect(info, env, out),
            (State::AwaitingConnect, _) => self.close("first packet is not CONNECT", out),
            (State::Closed, _) => {}
            (State::Connected, Inbound::Connect(_)) => self.close("second CONNECT", out),
            (State::Connected, Inbound::Publish(p)) => self.publish(p, env, out),
            (State::Connected, Inbound::PubRel(pkid)) => {
                self.recent.qos2_release(pkid);
                out.push(Step::Reply(Outbound::PubComp(pkid)));
            }
            (State::Connected, Inbound::PingReq) => out.push(Step::Reply(Outbound::PingResp)),
            (State::Connected, Inbound::Subscribe(s)) => out.push(Step::Subscribe(s)),
            (State::Connected, Inbound::Unsubscribe(u)) => out.push(Step::Unsubscribe(u)),
            (State::Connected, Inbound::PubAck(pkid)) => {
                out.push(Step::Settle(Settle::PubAck(pkid)))
            }
            (State::Connected, Inbound::PubRec(pkid, ok)) => {
                out.push(Step::Settle(Settle::PubRec(pkid, ok)));
            }
            (State::Connected, Inbound::PubComp(pkid)) => {
                out.push(Step::Settle(Settle::PubComp(pkid)));
            }
            (
                State::Connected,
                Inbound::Disconnect {
                    with_will,
                    session_expiry,
                },
            ) => {
                if !with_will {
                    self.will = None;
                }
                // MQTT 5 §3.14.2.2.2: a client may shorten or end its session on the way out
                // (not create one it did not ask for at CONNECT).
                match session_expiry {
                    Some(0) => self.persistent = false,
                    Some(e) if self.persistent => self.expiry = e,
                    _ => {}
                }
                self.close("client disconnected", out);
            }
            (State::Connected, Inbound::Unexpected(_)) => {}
        }
    }

    fn connect(&mut self, info: ConnectInfo, env: &impl SessionEnv, out: &mut Vec<Step>) {
        self.protocol = info.protocol;
        let mut assigned = None;
        if info.client_id.is_empty() {
            if info.protocol == Protocol::V4 && !info.clean {
                // MQTT 3.1.1 §3.1.3.1: an empty id needs clean session.
                let code = ConnCode::BadClientId;
                out.push(Step::Reply(Outbound::ConnAck {
                    code,
                    session_present: false,
                    assigned_id: None,
                    server_keep_alive: None,
                }));
                return self.close("empty client id without clean session", out);
            }
            let id = env.assign_id();
            assigned = (info.protocol == Protocol::V5).then(|| id.clone());
            self.client_id = id;
        } else {
            self.client_id = info.client_id;
        }
        let creds = Credentials {
            client_id: &self.client_id,
            username: info.username.as_deref(),
            password: info.password.as_deref(),
            cert_cn: self.cert_cn.as_deref(),
        };
        match env.authenticate(creds) {
            Ok(p) => self.principal = Some(p),
            Err(refused) => {
                out.push(Step::Reply(Outbound::ConnAck {
                    code: ConnCode::NotAuthorized,
                    session_present: false,
                    assigned_id: None,
                    server_keep_alive: None,
                }));
                return self.close(refused.as_str(), out);
            }
        }
        self.check_publishes = env.checks_publishes();
        let mut session_present = false;
        self.persistent = info.session_expiry > 0;
        self.expiry = info.session_expiry;
        self.clean = info.clean;
        // A clean session starts without the old one; what the client published recently is
        // kept either way (many clients resend unacknowledged messages after any reconnect).
        if let Some(parked) = env.resume(&self.client_id) {
            session_present = parked.persistent && !info.clean;
            self.recent = parked.recent;
        }
        self.client_limits = ClientLimits {
            receive_max: info.receive_max,
            max_packet: info.max_packet,
            topic_alias_max: info.topic_alias_max,
        };
        // A keep-alive above the cap, or none, becomes the cap (MQTT 5 §3.2.2.3.14 tells the
        // client; a 3.1.1 client cannot be told, and MQTT 3.1.1 §3.1.2.10 lets a server drop an
        // inactive client whatever its keep-alive).
        let cap = env.max_keep_alive();
        let capped = cap > 0 && (info.keep_alive == 0 || info.keep_alive > cap);
        self.keep_alive = if capped { cap } else { info.keep_alive };
        let server_keep_alive = (capped && info.protocol == Protocol::V5).then_some(cap);
        self.will = info.will;
        self.state = State::Connected;
        let code = ConnCode::Accepted;
        out.push(Step::Reply(Outbound::ConnAck {
            code,
            session_present,
            assigned_id: assigned,
            server_keep_alive,
        }));
    }

    /// Resolves an MQTT 5 topic alias into `p.topic`; `Err` closes the connection.
    fn resolve_alias(&mut self, p: &mut PublishIn, out: &mut Vec<Step>) -> Result<(), ()> {
        let Some(alias) = p.alias.take() else {
            return Ok(());
        };
        if alias == 0 || alias > TOPIC_ALIAS_MAX {
            // MQTT 5 §3.3.2.3.4: "Topic Alias invalid".
            out.push(Step::Reply(Outbound::Disconnect(0x94)));
            self.close("topic alias outside 1..=Topic Alias Maximum", out);
            return Err(());
        }
        let slot = usize::from(alias - 1);
        if self.aliases.len() <= slot {
            self.aliases.resize(slot + 1, None);
        }
        if p.topic.is_empty() {
            match &self.aliases[slot] {
                Some(topic) => p.topic.clone_from(topic),
                None => {
                    out.push(Step::Reply(Outbound::Disconnect(0x82)));
                    self.close("PUBLISH with an unknown topic alias and no topic", out);
                    return Err(());
                }
            }
        } else {
            self.aliases[slot] = Some(p.topic.clone());
        }
        Ok(())
    }

    fn publish(&mut self, mut p: PublishIn, env: &impl SessionEnv, out: &mut Vec<Step>) {
        if self.resolve_alias(&mut p, out).is_err() {
            return;
        }
        if p.topic.is_empty() || p.topic.contains(['+', '#', '\0']) {
            return self.close("invalid topic name in PUBLISH", out);
        }
        if self.check_publishes && p.topic != self.allowed_topic {
            let allowed = match &self.principal {
                Some(principal) => env.may_publish(principal, &self.client_id, &p.topic),
                None => Err(Denied::Acl),
            };
            if allowed.is_err() {
                if self.protocol == Protocol::V4 {
                    // MQTT 3.1.1 has no negative ack: the only refusal is to disconnect.
                    return self.close("PUBLISH not authorized", out);
                }
                if p.qos > 0 {
                    let (pkid, qos) = (p.pkid, p.qos);
                    out.push(Step::Reply(Outbound::NotAuthorized { pkid, qos }));
                }
                return;
            }
            self.allowed_topic.clone_from(&p.topic);
        }
        match p.qos {
            0 => out.push(Step::Deliver(p)),
            1 => {
                let pkid = p.pkid;
                let fp = fingerprint(&p.topic, &p.payload);
                if p.dup && self.recent.qos1_resend(pkid, fp) {
                    // Stored before; its PUBACK was lost (a dropped connection or a crash).
                    env.resend_skipped();
                } else {
                    self.recent.qos1_stored(pkid, fp);
                    out.push(Step::Deliver(p));
                }
                out.push(Step::Reply(Outbound::PubAck(pkid)));
            }
            _ => {
                let pkid = p.pkid;
                if self.recent.qos2_pending() >= usize::from(self.max_inflight)
                    && !self.recent.qos2_has(pkid)
                {
                    env.over_inflight();
                    if self.protocol == Protocol::V5 {
                        // Receive Maximum exceeded.
                        out.push(Step::Reply(Outbound::Disconnect(0x93)));
                    }
                    return self.close(
                        "more QoS 2 messages awaiting PUBREL than mqtt.max_inflight",
                        out,
                    );
                }
                // A retransmission before PUBREL was already delivered: ack again, no new row.
                if self
                    .recent
                    .qos2_resend(pkid, fingerprint(&p.topic, &p.payload))
                {
                    env.resend_skipped();
                } else {
                    out.push(Step::Deliver(p));
                }
                out.push(Step::Reply(Outbound::PubRec(pkid)));
            }
        }
    }

    fn close(&mut self, reason: &'static str, out: &mut Vec<Step>) {
        self.state = State::Closed;
        out.push(Step::Close(reason));
    }
}

#[cfg(test)]
mod tests;
