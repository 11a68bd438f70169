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

/// A will message from CONNECT.
#[derive(Clone, Debug)]
pub struct Will {
    /// Topic of the will.
    pub topic: String,
    /// Payload of the will.
    pub payload: Bytes,
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
    /// Topic name.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
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
    /// SUBSCRIBE with its number of filters.
    Subscribe {
        /// Packet id.
        pkid: u16,
        /// Filter count.
        filters: usize,
    },
    /// UNSUBSCRIBE with its number of filters.
    Unsubscribe {
        /// Packet id.
        pkid: u16,
        /// Filter count.
        filters: usize,
    },
    /// DISCONNECT; `with_will` for MQTT 5 reason 0x04.
    Disconnect {
        /// Publish the will anyway.
        with_will: bool,
    },
    /// A packet a server never expects from a client (acks for publishes we never send).
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
    /// SUBACK refusing every filter.
    SubAckRefused {
        /// Packet id.
        pkid: u16,
        /// Filter count.
        filters: usize,
    },
    /// UNSUBACK.
    UnsubAck {
        /// Packet id.
        pkid: u16,
        /// Filter count.
        filters: usize,
    },
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
}

const CONNECT: u8 = 1;

impl Codec {
    /// A codec for a new connection; MQTT 5 clients are told `receive_max` (QoS 1/2
    /// messages in flight) in CONNACK.
    pub fn new(max_packet_size: usize, receive_max: u16) -> Self {
        Self {
            protocol: None,
            max_packet_size,
            receive_max,
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
        match protocol {
            Protocol::V4 => decode_v4(buf, self.max_packet_size).map(Some),
            Protocol::V5 => decode_v5(buf, self.max_packet_size).map(Some),
        }
    }

    /// Appends `packet` to `buf` in the connection's protocol.
    pub fn encode(&self, packet: Outbound, buf: &mut BytesMut) {
        let result = match self.protocol {
            Some(Protocol::V5) => encode_v5(packet, buf, self.max_packet_size, self.receive_max),
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
            will: c.last_will.map(|w| Will {
                topic: w.topic,
                payload: w.message,
            }),
            username: c.login.as_ref().map(|l| l.username.clone()),
            password: c.login.map(|l| Bytes::from(l.password)),
        }),
        v4::Packet::Publish(p) => Inbound::Publish(PublishIn {
            qos: p.qos as u8,
            pkid: p.pkid,
            dup: p.dup,
            topic: p.topic,
            payload: detach(p.payload),
        }),
        v4::Packet::PubRel(p) => Inbound::PubRel(p.pkid),
        v4::Packet::PingReq => Inbound::PingReq,
        v4::Packet::Subscribe(s) => Inbound::Subscribe {
            pkid: s.pkid,
            filters: s.filters.len(),
        },
        v4::Packet::Unsubscribe(u) => Inbound::Unsubscribe {
            pkid: u.pkid,
            filters: u.topics.len(),
        },
        v4::Packet::Disconnect => Inbound::Disconnect { with_will: false },
        other => Inbound::Unexpected(v4_name(&other)),
    })
}

fn v4_name(p: &v4::Packet) -> &'static str {
    match p {
        v4::Packet::ConnAck(_) => "CONNACK",
        v4::Packet::PubAck(_) => "PUBACK",
        v4::Packet::PubRec(_) => "PUBREC",
        v4::Packet::PubComp(_) => "PUBCOMP",
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
        return Ok(Inbound::Disconnect { with_will: false });
    }
    let max = u32::try_from(max).unwrap_or(u32::MAX);
    Ok(match v5::Packet::read(buf, Some(max)).map_err(malformed)? {
        v5::Packet::Connect(c, will, login) => Inbound::Connect(ConnectInfo {
            username: login.as_ref().map(|l| l.username.clone()),
            password: login.map(|l| Bytes::from(l.password)),
            protocol: Protocol::V5,
            client_id: c.client_id,
            clean: c.clean_start,
            keep_alive: c.keep_alive,
            will: match will {
                Some(w) => Some(Will {
                    topic: utf8(w.topic)?,
                    payload: w.message,
                }),
                None => None,
            },
        }),
        v5::Packet::Publish(p) => Inbound::Publish(PublishIn {
            qos: p.qos as u8,
            pkid: p.pkid,
            dup: p.dup,
            topic: utf8(p.topic)?,
            payload: detach(p.payload),
        }),
        v5::Packet::PubRel(p) => Inbound::PubRel(p.pkid),
        v5::Packet::PingReq(_) => Inbound::PingReq,
        v5::Packet::Subscribe(s) => Inbound::Subscribe {
            pkid: s.pkid,
            filters: s.filters.len(),
        },
        v5::Packet::Unsubscribe(u) => Inbound::Unsubscribe {
            pkid: u.pkid,
            filters: u.filters.len(),
        },
        v5::Packet::Disconnect(d) => Inbound::Disconnect {
            with_will: d.reason_code == v5::DisconnectReasonCode::DisconnectWithWillMessage,
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
        Outbound::SubAckRefused { pkid, filters } => {
            v4::SubAck::new(pkid, vec![v4::SubscribeReasonCode::Failure; filters]).write(buf)
        }
        Outbound::UnsubAck { pkid, .. } => v4::UnsubAck::new(pkid).write(buf),
        Outbound::Disconnect(_) => Ok(0),
    }
}

fn encode_v5(
    packet: Outbound,
    buf: &mut BytesMut,
    max_packet_size: usize,
    receive_max: u16,
) -> Result<usize, String> {
    let packet = match packet {
        Outbound::ConnAck {
            code,
            session_present,
            assigned_id,
        } => {
            let accepted = code == ConnCode::Accepted;
            let code = match code {
                ConnCode::Accepted => v5::ConnectReturnCode::Success,
                ConnCode::BadProtocol => v5::ConnectReturnCode::UnsupportedProtocolVersion,
                ConnCode::BadClientId => v5::ConnectReturnCode::ClientIdentifierNotValid,
                ConnCode::NotAuthorized => v5::ConnectReturnCode::NotAuthorized,
            };
            let properties =
                accepted.then(|| connack_properties(assigned_id, max_packet_size, receive_max));
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
        Outbound::SubAckRefused { pkid, filters } => v5::Packet::SubAck(v5::SubAck {
            pkid,
            return_codes: vec![v5::SubscribeReasonCode::ImplementationSpecific; filters],
            properties: None,
        }),
        Outbound::UnsubAck { pkid, filters } => v5::Packet::UnsubAck(v5::UnsubAck {
            pkid,
            reasons: vec![v5::UnsubAckReason::NoSubscriptionExisted; filters],
            properties: None,
        }),
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
    max_packet_size: usize,
    receive_max: u16,
) -> v5::ConnAckProperties {
    v5::ConnAckProperties {
        session_expiry_interval: None,
        receive_max: (receive_max < u16::MAX).then_some(receive_max),
        max_qos: None,
        retain_available: None,
        max_packet_size: u32::try_from(max_packet_size).ok(),
        assigned_client_identifier: assigned_id,
        topic_alias_max: None,
        reason_string: None,
        user_properties: Vec::new(),
        wildcard_subscription_available: Some(0),
        subscription_identifiers_available: Some(0),
        shared_subscription_available: Some(0),
        server_keep_alive: None,
        response_information: None,
        server_reference: None,
        authentication_method: None,
        authentication_data: None,
    }
}

#[cfg(test)]
mod tests;
