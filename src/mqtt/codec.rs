//! Framing: bytes ↔ MQTT packets through rumqttc's `mqttbytes` v4 (3.1.1) and v5 codecs, mapped
//! to one protocol-neutral vocabulary ([`Inbound`], [`Outbound`]) so the session state machine
//! is written once. The protocol is chosen by the CONNECT packet's protocol level. Sizes are
//! checked from the fixed header, before the body is buffered.

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::{self as mb, v4};
use rumqttc::v5::mqttbytes::v5;

/// MQTT protocol version of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// MQTT 3.1.1.
    V4,
    /// MQTT 5.0.
    V5,
}

pub use crate::broker::outbox::PublishOut;
pub use crate::broker::{SubCode, SubFilter};
pub use crate::decode::Props;

/// A will message from CONNECT.
#[derive(Clone, Debug)]
pub struct Will {
    /// Topic of the will.
    pub topic: String,
    /// Payload of the will.
    pub payload: Bytes,
    /// QoS of the will.
    pub qos: u8,
    /// Publish it retained.
    pub retain: bool,
    /// MQTT 5 will delay interval, seconds (0: at once).
    pub delay: u32,
    /// MQTT 5 will properties, as PUBLISH properties.
    pub props: Option<Box<Props>>,
}

/// The fields of CONNECT the session needs.
#[derive(Clone, Debug)]
pub struct ConnectInfo {
    /// Protocol version.
    pub protocol: Protocol,
    /// Client id (may be empty).
    pub client_id: String,
    /// Clean session (3.1.1) / clean start (5).
    pub clean: bool,
    /// Keep-alive in seconds, 0 = off.
    pub keep_alive: u16,
    /// Will message.
    pub will: Option<Will>,
    /// User name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<Bytes>,
    /// MQTT 5 session expiry interval in seconds (0: the session ends with the connection).
    /// MQTT 3.1.1 without clean session: `u32::MAX` (never expires).
    pub session_expiry: u32,
    /// The client's receive maximum: QoS 1/2 deliveries it takes in flight (MQTT 5).
    pub receive_max: u16,
    /// The client's maximum packet size (MQTT 5), 0: none.
    pub max_packet: u32,
    /// Topic aliases the client takes from us (MQTT 5 Topic Alias Maximum), 0: none.
    pub topic_alias_max: u16,
}

/// A received PUBLISH.
#[derive(Clone, Debug)]
pub struct PublishIn {
    /// 0, 1 or 2.
    pub qos: u8,
    /// Packet id (0 for QoS 0).
    pub pkid: u16,
    /// Retransmission flag.
    pub dup: bool,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name (empty when an MQTT 5 topic alias stands for it).
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// MQTT 5 topic alias.
    pub alias: Option<u16>,
    /// MQTT 5 properties (without the topic alias), if any.
    pub props: Option<Box<Props>>,
}

/// A SUBSCRIBE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet id.
    pub pkid: u16,
    /// The filters.
    pub filters: Vec<SubFilter>,
    /// MQTT 5 subscription identifier.
    pub id: Option<u32>,
}

/// An UNSUBSCRIBE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet id.
    pub pkid: u16,
    /// The filters.
    pub filters: Vec<String>,
}

/// A packet from the client.
#[derive(Debug)]
pub enum Inbound {
    /// CONNECT.
    Connect(ConnectInfo),
    /// PUBLISH.
    Publish(PublishIn),
    /// PUBREL for a QoS 2 packet id.
    PubRel(u16),
    /// PINGREQ.
    PingReq,
    /// SUBSCRIBE.
    Subscribe(Subscribe),
    /// UNSUBSCRIBE.
    Unsubscribe(Unsubscribe),
    /// PUBACK for a QoS 1 delivery to this client.
    PubAck(u16),
    /// PUBREC for a QoS 2 delivery; `false` when its reason code refuses the message.
    PubRec(u16, bool),
    /// PUBCOMP for a QoS 2 delivery.
    PubComp(u16),
    /// DISCONNECT; `with_will` for MQTT 5 reason 0x04.
    Disconnect {
        /// Publish the will anyway.
        with_will: bool,
        /// MQTT 5: a new session expiry interval.
        session_expiry: Option<u32>,
    },
    /// A packet a server never expects from a client.
    Unexpected(&'static str),
}

/// CONNACK outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnCode {
    /// Accepted.
    Accepted,
    /// Protocol level not supported.
    BadProtocol,
    /// Client id refused.
    BadClientId,
    /// Credentials refused or missing.
    NotAuthorized,
}

/// A packet to the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outbound {
    /// CONNACK.
    ConnAck {
        /// Result.
        code: ConnCode,
        /// A stored session was resumed.
        session_present: bool,
        /// Id given to a client that sent an empty one (MQTT 5 tells it).
        assigned_id: Option<String>,
        /// The keep-alive the server holds the client to, when not its own (MQTT 5 tells it).
        server_keep_alive: Option<u16>,
    },
    /// PUBACK.
    PubAck(u16),
    /// PUBREC.
    PubRec(u16),
    /// PUBCOMP.
    PubComp(u16),
    /// MQTT 5 PUBACK (QoS 1) or PUBREC (QoS 2) with reason 0x97 "quota exceeded": the message
    /// was not stored (the WAL volume is full); the client may send it again later. MQTT 3.1.1
    /// has no negative ack: encoding this for a 3.1.1 client writes nothing.
    QuotaExceeded {
        /// Packet id.
        pkid: u16,
        /// QoS of the refused PUBLISH (1: PUBACK, 2: PUBREC).
        qos: u8,
    },
    /// MQTT 5 PUBACK (QoS 1) or PUBREC (QoS 2) with reason 0x87 "not authorized": the ACL
    /// refused the topic; nothing was stored. Not sent on 3.1.1 (that connection is closed).
    NotAuthorized {
        /// Packet id.
        pkid: u16,
        /// QoS of the refused PUBLISH.
        qos: u8,
    },
    /// PINGRESP.
    PingResp,
    /// SUBACK.
    SubAck {
        /// Packet id.
        pkid: u16,
        /// One per filter.
        codes: Vec<SubCode>,
    },
    /// UNSUBACK.
    UnsubAck {
        /// Packet id.
        pkid: u16,
        /// Per filter, whether a subscription existed (MQTT 5 reason codes).
        found: Vec<bool>,
    },
    /// PUBLISH to a subscriber.
    Publish(Box<PublishOut>),
    /// PUBREL for a QoS 2 delivery.
    PubRel(u16),
    /// MQTT 5 DISCONNECT from the server with a reason code (not sent on 3.1.1).
    Disconnect(u8),
}

/// Why bytes could not be framed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The first packet was not CONNECT.
    #[error("first packet is not CONNECT (byte 0x{0:02x})")]
    NotConnect(u8),
    /// The protocol name/level is not MQTT 3.1.1 or 5.
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocol(u8),
    /// Larger than `mqtt.max_packet_size`.
    #[error("packet of {0} bytes exceeds mqtt.max_packet_size")]
    TooLarge(usize),
    /// Malformed packet.
    #[error("malformed packet: {0}")]
    Malformed(String),
}

/// Frames packets for one connection.
#[derive(Debug)]
pub struct Codec {
    protocol: Option<Protocol>,
    max_packet_size: usize,
    receive_max: u16,
    broker: bool,
}

/// Topic aliases a client may use toward us (CONNACK Topic Alias Maximum, MQTT 5).
pub const TOPIC_ALIAS_MAX: u16 = 64;

const CONNECT: u8 = 1;

impl Codec {
    /// A codec for a new connection; MQTT 5 clients are told `receive_max` (QoS 1/2
    /// messages in flight) in CONNACK, and whether subscriptions are available (`broker`).
    pub fn new(max_packet_size: usize, receive_max: u16, broker: bool) -> Self {
        Self {
            protocol: None,
            max_packet_size,
            receive_max,
            broker,
        }
    }

    /// The protocol, once CONNECT was read.
    pub fn protocol(&self) -> Option<Protocol> {
        self.protocol
    }

    /// Takes one whole packet off `buf`, or `None` when more bytes are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Inbound>, CodecError> {
        if buf.is_empty() {
            return Ok(None);
        }
        if self.protocol.is_none() && buf[0] >> 4 != CONNECT {
            return Err(CodecError::NotConnect(buf[0]));
        }
        let header = match mb::check(buf.iter(), self.max_packet_size) {
            Ok(h) => h,
            Err(mb::Error::InsufficientBytes(_)) => return Ok(None),
            Err(mb::Error::PayloadSizeLimitExceeded(n)) => return Err(CodecError::TooLarge(n)),
            Err(e) => return Err(CodecError::Malformed(e.to_string())),
        };
        let protocol = match self.protocol {
            Some(p) => p,
            None => {
                let p = sniff_protocol(buf, header.frame_length())?;
                self.protocol = Some(p);
                p
            }
        };
        let packet = match protocol {
            Protocol::V4 => decode_v4(buf, self.max_packet_size)?,
            Protocol::V5 => decode_v5(buf, self.max_packet_size)?,
        };
        // MQTT 3.1.1 §2.3.1-1, MQTT 5 §2.2.1: these carry a non-zero packet identifier.
        let zero = match &packet {
            Inbound::Publish(p) => p.qos > 0 && p.pkid == 0,
            Inbound::Subscribe(s) => s.pkid == 0,
            Inbound::Unsubscribe(u) => u.pkid == 0,
            _ => false,
        };
        if zero {
            return Err(CodecError::Malformed("packet identifier 0".into()));
        }
        Ok(Some(packet))
    }

    /// Appends `packet` to `buf` in the connection's protocol.
    pub fn encode(&self, packet: Outbound, buf: &mut BytesMut) {
        let result = match self.protocol {
            Some(Protocol::V5) => encode_v5(packet, buf, self),
            _ => encode_v4(packet, buf).map_err(|e| e.to_string()),
        };
        // Our packets are small and well-formed; a failure here is a bug worth a log line.
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot encode an MQTT reply");
        }
    }
}

/// Reads the protocol level from a complete CONNECT frame of `len` bytes.
fn sniff_protocol(buf: &[u8], len: usize) -> Result<Protocol, CodecError> {
    let frame = &buf[..len];
    let mut i = 1;
    while i < frame.len() && frame[i] & 0x80 != 0 {
        i += 1;
    }
    let body = frame.get(i + 1..).unwrap_or_default();
    match body {
        [0, 4, b'M', b'Q', b'T', b'T', 4, ..] => Ok(Protocol::V4),
        [0, 4, b'M', b'Q', b'T', b'T', 5, ..] => Ok(Protocol::V5),
        [0, 4, b'M', b'Q', b'T', b'T', level, ..] => Err(CodecError::UnsupportedProtocol(*level)),
        [0, 6, b'M', b'Q', b'I', b's', b'd', b'p', level, ..] => {
            Err(CodecError::UnsupportedProtocol(*level))
        }
        _ => Err(CodecError::Malformed(
            "CONNECT without the MQTT protocol name".into(),
        )),
    }
}

fn malformed(e: impl std::fmt::Display) -> CodecError {
    CodecError::Malformed(e.to_string())
}

fn decode_v4(buf: &mut BytesMut, max: usize) -> Result<Inbound, CodecError> {
    Ok(match v4::Packet::read(buf, max).map_err(malformed)? {
        v4::Packet::Connect(c) => Inbound::Connect(ConnectInfo {
            protocol: Protocol::V4,
            client_id: c.client_id,
            clean: c.clean_session,
            keep_alive: c.keep_alive,
            session_expiry: if c.clean_session { 0 } else { u32::MAX },
            receive_max: u16::MAX,
            max_packet: 0,
            topic_alias_max: 0,
            will: c.last_will.map(|w| Will {
                topic: w.topic,
                payload: w.message,
                qos: w.qos as u8,
                retain: w.retain,
                delay: 0,
                props: None,
            }),
            username: c.login.as_ref().map(|l| l.username.clone()),
            password: c.login.map(|l| Bytes::from(l.password)),
        }),
        v4::Packet::Publish(p) => Inbound::Publish(PublishIn {
            qos: p.qos as u8,
            pkid: p.pkid,
            dup: p.dup,
            retain: p.retain,
            topic: p.topic,
            payload: detach(p.payload),
            alias: None,
            props: None,
        }),
        v4::Packet::PubRel(p) => Inbound::PubRel(p.pkid),
        v4::Packet::PubAck(p) => Inbound::PubAck(p.pkid),
        v4::Packet::PubRec(p) => Inbound::PubRec(p.pkid, true),
        v4::Packet::PubComp(p) => Inbound::PubComp(p.pkid),
        v4::Packet::PingReq => Inbound::PingReq,
        v4::Packet::Subscribe(s) => Inbound::Subscribe(Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| SubFilter {
                    filter: f.path,
                    qos: f.qos as u8,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: 0,
                })
                .collect(),
            id: None,
        }),
        v4::Packet::Unsubscribe(u) => Inbound::Unsubscribe(Unsubscribe {
            pkid: u.pkid,
            filters: u.topics,
        }),
        v4::Packet::Disconnect => Inbound::Disconnect {
            with_will: false,
            session_expiry: None,
        },
        other => Inbound::Unexpected(v4_name(&other)),
    })
}

fn v4_name(p: &v4::Packet) -> &'static str {
    match p {
        v4::Packet::ConnAck(_) => "CONNACK",
        v4::Packet::SubAck(_) => "SUBACK",
        v4::Packet::UnsubAck(_) => "UNSUBACK",
        v4::Packet::PingResp => "PINGRESP",
        _ => "unexpected packet",
    }
}

fn decode_v5(buf: &mut BytesMut, max: usize) -> Result<Inbound, CodecError> {
    // An MQTT 5 DISCONNECT may have no body (reason 0, no properties); mqttbytes wants one.
    if buf.len() >= 2 && buf[0] == 0xE0 && buf[1] == 0 {
        let _ = buf.split_to(2);
        return Ok(Inbound::Disconnect {
            with_will: false,
            session_expiry: None,
        });
    }
    let max = u32::try_from(max).unwrap_or(u32::MAX);
    Ok(match v5::Packet::read(buf, Some(max)).map_err(malformed)? {
        v5::Packet::Connect(c, will, login) => {
            let props = c.properties.as_ref();
            Inbound::Connect(ConnectInfo {
                username: login.as_ref().map(|l| l.username.clone()),
                password: login.map(|l| Bytes::from(l.password)),
                protocol: Protocol::V5,
                session_expiry: props.and_then(|p| p.session_expiry_interval).unwrap_or(0),
                receive_max: props.and_then(|p| p.receive_maximum).unwrap_or(u16::MAX),
                max_packet: props.and_then(|p| p.max_packet_size).unwrap_or(0),
                topic_alias_max: props.and_then(|p| p.topic_alias_max).unwrap_or(0),
                client_id: c.client_id,
                clean: c.clean_start,
                keep_alive: c.keep_alive,
                will: match will {
                    Some(w) => Some(Will {
                        topic: utf8(w.topic)?,
                        payload: w.message,
                        qos: w.qos as u8,
                        retain: w.retain,
                        delay: w
                            .properties
                            .as_ref()
                            .and_then(|p| p.delay_interval)
                            .unwrap_or(0),
                        props: w.properties.map(|p| {
                            Box::new(Props {
                                payload_format_indicator: p.payload_format_indicator,
                                message_expiry_interval: p.message_expiry_interval,
                                content_type: p.content_type,
                                response_topic: p.response_topic,
                                correlation_data: p.correlation_data,
                                user_properties: p.user_properties,
                                ..Props::default()
                            })
                        }),
                    }),
                    None => None,
                },
            })
        }
        v5::Packet::Publish(p) => {
            let mut props = p.properties;
            let alias = props.as_mut().and_then(|p| p.topic_alias.take());
            let props = props.filter(|p| *p != Props::default()).map(Box::new);
            Inbound::Publish(PublishIn {
                qos: p.qos as u8,
                pkid: p.pkid,
                dup: p.dup,
                retain: p.retain,
                topic: utf8(p.topic)?,
                payload: detach(p.payload),
                alias,
                props,
            })
        }
        v5::Packet::PubRel(p) => Inbound::PubRel(p.pkid),
        v5::Packet::PubAck(p) => Inbound::PubAck(p.pkid),
        v5::Packet::PubRec(p) => Inbound::PubRec(p.pkid, (p.reason as u8) < 0x80),
        v5::Packet::PubComp(p) => Inbound::PubComp(p.pkid),
        v5::Packet::PingReq(_) => Inbound::PingReq,
        v5::Packet::Subscribe(s) => Inbound::Subscribe(Subscribe {
            pkid: s.pkid,
            id: s
                .properties
                .and_then(|p| p.id)
                .and_then(|id| u32::try_from(id).ok()),
            filters: s
                .filters
                .into_iter()
                .map(|f| SubFilter {
                    filter: f.path,
                    qos: f.qos as u8,
                    no_local: f.nolocal,
                    retain_as_published: f.preserve_retain,
                    retain_handling: match f.retain_forward_rule {
                        v5::RetainForwardRule::OnEverySubscribe => 0,
                        v5::RetainForwardRule::OnNewSubscribe => 1,
                        v5::RetainForwardRule::Never => 2,
                    },
                })
                .collect(),
        }),
        v5::Packet::Unsubscribe(u) => Inbound::Unsubscribe(Unsubscribe {
            pkid: u.pkid,
            filters: u.filters,
        }),
        v5::Packet::Disconnect(d) => Inbound::Disconnect {
            with_will: d.reason_code == v5::DisconnectReasonCode::DisconnectWithWillMessage,
            session_expiry: d.properties.and_then(|p| p.session_expiry_interval),
        },
        v5::Packet::Auth(_) => Inbound::Unexpected("AUTH"),
        _ => Inbound::Unexpected("server-bound ack or response packet"),
    })
}

/// Payloads up to this size are copied out of the read buffer.
const DETACH_MAX: usize = 2048;

/// A small payload gets its own allocation: otherwise it would keep the connection's whole
/// read buffer (16 KiB or more) alive until its rows are built, and the next read would have
/// to allocate a fresh buffer instead of reusing the old one.
fn detach(payload: Bytes) -> Bytes {
    if payload.len() <= DETACH_MAX {
        Bytes::copy_from_slice(&payload)
    } else {
        payload
    }
}

fn utf8(bytes: Bytes) -> Result<String, CodecError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| CodecError::Malformed("topic is not UTF-8".into()))
}

fn encode_v4(packet: Outbound, buf: &mut BytesMut) -> Result<usize, mb::Error> {
    match packet {
        Outbound::ConnAck {
            code,
            session_present,
            ..
        } => {
            let code = match code {
                ConnCode::Accepted => v4::ConnectReturnCode::Success,
                ConnCode::BadProtocol => v4::ConnectReturnCode::RefusedProtocolVersion,
                ConnCode::BadClientId => v4::ConnectReturnCode::BadClientId,
                ConnCode::NotAuthorized => v4::ConnectReturnCode::NotAuthorized,
            };
            v4::ConnAck::new(code, session_present).write(buf)
        }
        Outbound::PubAck(id) => v4::PubAck::new(id).write(buf),
        Outbound::PubRec(id) => v4::PubRec::new(id).write(buf),
        Outbound::PubComp(id) => v4::PubComp::new(id).write(buf),
        Outbound::QuotaExceeded { .. } | Outbound::NotAuthorized { .. } => Ok(0),
        Outbound::PingResp => v4::PingResp.write(buf),
        Outbound::SubAck { pkid, codes } => {
            let codes = codes
                .into_iter()
                .map(|c| match c {
                    SubCode::Granted(q) => v4::SubscribeReasonCode::Success(qos(q)),
                    _ => v4::SubscribeReasonCode::Failure,
                })
                .collect();
            v4::SubAck::new(pkid, codes).write(buf)
        }
        Outbound::UnsubAck { pkid, .. } => v4::UnsubAck::new(pkid).write(buf),
        Outbound::Publish(p) => v4::Publish {
            dup: p.dup,
            qos: qos(p.qos),
            retain: p.retain,
            topic: p.topic.to_string(),
            pkid: p.pkid,
            payload: p.payload,
        }
        .write(buf),
        Outbound::PubRel(id) => v4::PubRel::new(id).write(buf),
        Outbound::Disconnect(_) => Ok(0),
    }
}

fn qos(q: u8) -> mb::QoS {
    match q {
        0 => mb::QoS::AtMostOnce,
        1 => mb::QoS::AtLeastOnce,
        _ => mb::QoS::ExactlyOnce,
    }
}

fn qos5(q: u8) -> rumqttc::v5::mqttbytes::QoS {
    use rumqttc::v5::mqttbytes::QoS;
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn encode_v5(packet: Outbound, buf: &mut BytesMut, codec: &Codec) -> Result<usize, String> {
    let packet = match packet {
        Outbound::ConnAck {
            code,
            session_present,
            assigned_id,
            server_keep_alive,
        } => {
            let accepted = code == ConnCode::Accepted;
            let code = match code {
                ConnCode::Accepted => v5::ConnectReturnCode::Success,
                ConnCode::BadProtocol => v5::ConnectReturnCode::UnsupportedProtocolVersion,
                ConnCode::BadClientId => v5::ConnectReturnCode::ClientIdentifierNotValid,
                ConnCode::NotAuthorized => v5::ConnectReturnCode::NotAuthorized,
            };
            let properties =
                accepted.then(|| connack_properties(assigned_id, server_keep_alive, codec));
            v5::Packet::ConnAck(v5::ConnAck {
                session_present,
                code,
                properties,
            })
        }
        Outbound::PubAck(id) => v5::Packet::PubAck(v5::PubAck::new(id, None)),
        Outbound::PubRec(id) => v5::Packet::PubRec(v5::PubRec::new(id, None)),
        Outbound::PubComp(id) => v5::Packet::PubComp(v5::PubComp::new(id, None)),
        Outbound::QuotaExceeded { pkid, qos: 1 } => v5::Packet::PubAck(v5::PubAck {
            pkid,
            reason: v5::PubAckReason::QuotaExceeded,
            properties: None,
        }),
        Outbound::QuotaExceeded { pkid, .. } => v5::Packet::PubRec(v5::PubRec {
            pkid,
            reason: v5::PubRecReason::QuotaExceeded,
            properties: None,
        }),
        Outbound::NotAuthorized { pkid, qos: 1 } => v5::Packet::PubAck(v5::PubAck {
            pkid,
            reason: v5::PubAckReason::NotAuthorized,
            properties: None,
        }),
        Outbound::NotAuthorized { pkid, .. } => v5::Packet::PubRec(v5::PubRec {
            pkid,
            reason: v5::PubRecReason::NotAuthorized,
            properties: None,
        }),
        Outbound::PingResp => v5::Packet::PingResp(v5::PingResp),
        Outbound::SubAck { pkid, codes } => v5::Packet::SubAck(v5::SubAck {
            pkid,
            return_codes: codes
                .into_iter()
                .map(|c| match c {
                    SubCode::Granted(q) => v5::SubscribeReasonCode::Success(qos5(q)),
                    SubCode::InvalidFilter => v5::SubscribeReasonCode::TopicFilterInvalid,
                    SubCode::NotAuthorized => v5::SubscribeReasonCode::NotAuthorized,
                    SubCode::Quota => v5::SubscribeReasonCode::QuotaExceeded,
                    SubCode::Unspecified => v5::SubscribeReasonCode::Unspecified,
                })
                .collect(),
            properties: None,
        }),
        Outbound::UnsubAck { pkid, found } => v5::Packet::UnsubAck(v5::UnsubAck {
            pkid,
            reasons: found
                .into_iter()
                .map(|f| {
                    if f {
                        v5::UnsubAckReason::Success
                    } else {
                        v5::UnsubAckReason::NoSubscriptionExisted
                    }
                })
                .collect(),
            properties: None,
        }),
        Outbound::Publish(p) => {
            let PublishOut {
                topic,
                payload,
                qos,
                pkid,
                retain,
                dup,
                props,
                sub_ids,
                alias,
            } = *p;
            let properties = if props.is_none() && sub_ids.is_empty() && alias.is_none() {
                None
            } else {
                let mut pr = props.map(|p| (*p).clone()).unwrap_or_default();
                pr.subscription_identifiers = sub_ids.into_iter().map(|i| i as usize).collect();
                pr.topic_alias = alias;
                Some(pr)
            };
            v5::Packet::Publish(v5::Publish {
                dup,
                qos: qos5(qos),
                retain,
                topic: Bytes::copy_from_slice(topic.as_bytes()),
                pkid,
                payload,
                properties,
            })
        }
        Outbound::PubRel(id) => v5::Packet::PubRel(v5::PubRel::new(id, None)),
        Outbound::Disconnect(reason) => {
            // 3-byte packet: type, remaining length 1, reason code.
            buf.extend_from_slice(&[0xE0, 1, reason]);
            return Ok(3);
        }
    };
    packet.write(buf, None).map_err(|e| e.to_string())
}

fn connack_properties(
    assigned_id: Option<String>,
    server_keep_alive: Option<u16>,
    codec: &Codec,
) -> v5::ConnAckProperties {
    let broker = u8::from(codec.broker);
    v5::ConnAckProperties {
        session_expiry_interval: None,
        receive_max: (codec.receive_max < u16::MAX).then_some(codec.receive_max),
        max_qos: None,
        retain_available: Some(broker),
        max_packet_size: u32::try_from(codec.max_packet_size).ok(),
        assigned_client_identifier: assigned_id,
        topic_alias_max: Some(TOPIC_ALIAS_MAX),
        reason_string: None,
        user_properties: Vec::new(),
        wildcard_subscription_available: Some(broker),
        subscription_identifiers_available: Some(broker),
        shared_subscription_available: Some(broker),
        server_keep_alive,
        response_information: None,
        server_reference: None,
        authentication_method: None,
        authentication_data: None,
    }
}

#[cfg(test)]
mod tests;
