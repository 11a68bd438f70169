//! The two MQTT versions behind one face: rumqttc has separate clients for 3.1.1 and 5; the
//! bridge sees [`Client`], [`Loop`] and [`Delivery`] and never which version it speaks.

use std::sync::Arc;

use bytes::Bytes;
use rumqttc::v5;
use rumqttc::{TlsConfiguration, Transport};

use crate::config::BridgeConfig;

/// A received message and what it takes to acknowledge it.
#[derive(Debug)]
pub(super) struct Delivery {
    pub(super) topic: String,
    pub(super) payload: Bytes,
    /// 0, 1 or 2.
    pub(super) qos: u8,
    /// Sent before (the broker redelivers it).
    pub(super) dup: bool,
    /// Packet id, for the ack.
    pkid: u16,
}

/// What one turn of the event loop produced.
#[derive(Debug)]
pub(super) enum Polled {
    /// Connected; the broker kept our session or not.
    ConnAck { session_present: bool },
    /// Subscriptions answered: how many were refused.
    SubAck { refused: usize, filters: usize },
    /// A message.
    Publish(Delivery),
    /// Our DISCONNECT went out.
    Disconnected,
    /// Anything else (pings, acks going out).
    Other,
    /// The connection failed or dropped; the next turn reconnects.
    Error(String),
}

/// The client half: requests to the event loop.
#[derive(Clone, Debug)]
pub(super) enum Client {
    V4(rumqttc::AsyncClient),
    V5(v5::AsyncClient),
}

/// The event-loop half (owns the socket).
pub(super) enum Loop {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<v5::EventLoop>),
}

impl std::fmt::Debug for Loop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::V4(_) => "Loop::V4",
            Self::V5(_) => "Loop::V5",
        })
    }
}

/// Connection settings common to both versions, already validated and read.
#[derive(Clone, Debug)]
pub(super) struct Settings {
    pub(super) password: Option<String>,
    pub(super) tls: Option<Arc<rustls::ClientConfig>>,
    /// Capacity of the request queue.
    pub(super) requests: usize,
}

/// A client and its event loop: persistent session, manual acks.
pub(super) fn connect(config: &BridgeConfig, settings: Settings) -> (Client, Loop) {
    let transport = settings
        .tls
        .map(|c| Transport::tls_with_config(TlsConfiguration::Rustls(c)));
    let password = settings.password.unwrap_or_default();
    let has_credentials = !config.username.is_empty();
    if config.mqtt5 {
        let mut o = v5::MqttOptions::new(&config.client_id, &config.host, config.port);
        o.set_clean_start(false)
            // The broker keeps the session (and what it could not deliver) for a week.
            .set_session_expiry_interval(Some(7 * 24 * 3600))
            .set_manual_acks(true)
            .set_keep_alive(config.keep_alive)
            .set_max_packet_size(Some(16 << 20))
            // Receive Maximum: an MQTT 5 broker (Mosquitto among them) sends at most this many
            // unacknowledged messages; without it, up to 65,535. It bounds what a crash leaves
            // for the broker to redeliver to what the redelivery filter remembers.
            .set_receive_maximum(Some(config.max_inflight.clamp(1, 65_535) as u16));
        if has_credentials {
            o.set_credentials(&config.username, password);
        }
        if let Some(t) = transport {
            o.set_transport(t);
        }
        let (client, eventloop) = v5::AsyncClient::new(o, settings.requests);
        (Client::V5(client), Loop::V5(Box::new(eventloop)))
    } else {
        let mut o = rumqttc::MqttOptions::new(&config.client_id, &config.host, config.port);
        o.set_clean_session(false)
            .set_manual_acks(true)
            .set_keep_alive(config.keep_alive)
            .set_max_packet_size(16 << 20, 64 << 10);
        if has_credentials {
            o.set_credentials(&config.username, password);
        }
        if let Some(t) = transport {
            o.set_transport(t);
        }
        let (client, eventloop) = rumqttc::AsyncClient::new(o, settings.requests);
        (Client::V4(client), Loop::V4(Box::new(eventloop)))
    }
}

fn qos4(q: u8) -> rumqttc::QoS {
    match q {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

fn qos5(q: u8) -> v5::mqttbytes::QoS {
    match q {
        0 => v5::mqttbytes::QoS::AtMostOnce,
        1 => v5::mqttbytes::QoS::AtLeastOnce,
        _ => v5::mqttbytes::QoS::ExactlyOnce,
    }
}

impl Client {
    /// Queues the PUBACK / PUBREC of a stored message.
    /// (rumqttc builds the ack from the QoS and packet id alone.)
    pub(super) fn try_ack(&self, d: &Delivery) -> Result<(), String> {
        match self {
            Self::V4(c) => c
                .try_ack(&rumqttc::Publish {
                    dup: false,
                    qos: qos4(d.qos),
                    retain: false,
                    topic: String::new(),
                    pkid: d.pkid,
                    payload: Bytes::new(),
                })
                .map_err(|e| e.to_string()),
            Self::V5(c) => c
                .try_ack(&v5::mqttbytes::v5::Publish {
                    dup: false,
                    qos: qos5(d.qos),
                    retain: false,
                    topic: Bytes::new(),
                    pkid: d.pkid,
                    payload: Bytes::new(),
                    properties: None,
                })
                .map_err(|e| e.to_string()),
        }
    }

    /// Queues a SUBSCRIBE.
    pub(super) fn try_subscribe(&self, filter: &str, qos: u8) -> Result<(), String> {
        match self {
            Self::V4(c) => c
                .try_subscribe(filter, qos4(qos))
                .map_err(|e| e.to_string()),
            Self::V5(c) => c
                .try_subscribe(filter, qos5(qos))
                .map_err(|e| e.to_string()),
        }
    }

    /// Queues a DISCONNECT.
    pub(super) fn try_disconnect(&self) {
        let _ = match self {
            Self::V4(c) => c.try_disconnect().map_err(|e| e.to_string()),
            Self::V5(c) => c.try_disconnect().map_err(|e| e.to_string()),
        };
    }
}

/// A SUBACK: how many of its return codes are not a grant.
fn suback<T>(codes: &[T], granted: impl Fn(&T) -> bool) -> Polled {
    Polled::SubAck {
        refused: codes.iter().filter(|c| !granted(c)).count(),
        filters: codes.len(),
    }
}

fn refused(code: impl std::fmt::Debug) -> Polled {
    Polled::Error(format!("the broker refused the connection: {code:?}"))
}

impl Loop {
    /// One turn of the event loop (never cancelled by the bridge).
    pub(super) async fn next(&mut self) -> Polled {
        match self {
            Self::V4(l) => {
                use rumqttc::{Event, Outgoing, Packet};
                match l.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(a))) => Polled::ConnAck {
                        session_present: a.session_present,
                    },
                    Ok(Event::Incoming(Packet::SubAck(a))) => suback(&a.return_codes, |c| {
                        !matches!(c, rumqttc::SubscribeReasonCode::Failure)
                    }),
                    Ok(Event::Incoming(Packet::Publish(p))) => Polled::Publish(Delivery {
                        qos: p.qos as u8,
                        dup: p.dup,
                        pkid: p.pkid,
                        topic: p.topic,
                        payload: p.payload,
                    }),
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => Polled::Disconnected,
                    Ok(_) => Polled::Other,
                    Err(rumqttc::ConnectionError::ConnectionRefused(code)) => refused(code),
                    Err(e) => Polled::Error(e.to_string()),
                }
            }
            Self::V5(l) => {
                use v5::Event;
                use v5::mqttbytes::v5::Packet;
                match l.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(a))) => Polled::ConnAck {
                        session_present: a.session_present,
                    },
                    Ok(Event::Incoming(Packet::SubAck(a))) => suback(&a.return_codes, |c| {
                        matches!(c, v5::mqttbytes::v5::SubscribeReasonCode::Success(_))
                    }),
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        match String::from_utf8(p.topic.to_vec()) {
                            Ok(topic) => Polled::Publish(Delivery {
                                topic,
                                qos: p.qos as u8,
                                dup: p.dup,
                                pkid: p.pkid,
                                payload: p.payload,
                            }),
                            // The protocol requires UTF-8 topics: a broker that breaks that
                            // gets no ack, and the message is not stored.
                            Err(_) => {
                                tracing::warn!(
                                    "the broker sent a PUBLISH with a non-UTF-8 topic: ignored"
                                );
                                Polled::Other
                            }
                        }
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => Polled::Disconnected,
                    Ok(_) => Polled::Other,
                    Err(v5::ConnectionError::ConnectionRefused(code)) => refused(code),
                    Err(e) => Polled::Error(e.to_string()),
                }
            }
        }
    }
}
