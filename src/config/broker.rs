//! `[broker]`: the broker role (devices subscribe on the MQTT listeners).

use serde::{Deserialize, Serialize};

use super::{ByteSize, ConfigError, invalid, positive};
use crate::decode::filter;

/// `[broker]`: subscriptions, retained messages and their bounds.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBroker {
    /// Accept SUBSCRIBE on the MQTT listeners and deliver messages (after their WAL fsync).
    pub enabled: bool,
    /// Topic filters whose messages are only delivered to subscribers, never stored as rows
    /// (commands, set-points, configuration).
    pub route_only: Vec<String>,
    /// Most QoS 1/2 deliveries in flight to one subscriber (its MQTT 5 receive maximum may be lower).
    pub max_inflight: u16,
    /// Most subscriptions of one client.
    pub max_subscriptions: usize,
    /// Longest topic filter, in bytes.
    pub max_filter_len: usize,
    /// Most bytes queued for one subscriber (past it QoS 0 deliveries are dropped, then a
    /// connected subscriber is disconnected); counted.
    pub session_queue_bytes: ByteSize,
    /// Most bytes queued for all subscribers together (outside `memory.budget`).
    pub queue_bytes: ByteSize,
    /// Most retained messages.
    pub retained_max: usize,
    /// Most bytes of retained messages (topics and payloads).
    pub retained_max_bytes: ByteSize,
}

impl Default for RawBroker {
    fn default() -> Self {
        Self {
            enabled: true,
            route_only: Vec::new(),
            max_inflight: 32,
            max_subscriptions: 100,
            max_filter_len: 1024,
            session_queue_bytes: ByteSize(1 << 20),
            queue_bytes: ByteSize(32 << 20),
            retained_max: 10_000,
            retained_max_bytes: ByteSize(16 << 20),
        }
    }
}

/// `[broker]` limits.
#[derive(Clone, Debug)]
pub struct BrokerLimits {
    /// Most bytes queued for one session.
    pub session_queue_bytes: usize,
    /// Most bytes queued for all sessions.
    pub queue_bytes: usize,
    /// Most QoS 1/2 deliveries in flight to one subscriber (its receive maximum may be lower).
    pub max_inflight: u16,
    /// Most subscriptions of one session.
    pub max_subscriptions: usize,
    /// Longest topic filter, bytes.
    pub max_filter_len: usize,
    /// Most retained messages.
    pub retained_max: usize,
    /// Most bytes of retained messages.
    pub retained_max_bytes: usize,
}

/// The validated `[broker]` section.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// `broker.enabled`.
    pub enabled: bool,
    /// `broker.route_only` filters.
    pub route_only: Vec<String>,
    /// The bounds.
    pub limits: BrokerLimits,
}

impl RawBroker {
    /// Checks the section.
    pub fn validate(&self) -> Result<BrokerConfig, ConfigError> {
        for (i, f) in self.route_only.iter().enumerate() {
            match filter::parse(f, self.max_filter_len) {
                Ok(p) if p.group.is_none() => {}
                Ok(_) => {
                    return Err(invalid(
                        format!("broker.route_only[{i}]"),
                        "cannot be a shared subscription",
                    ));
                }
                Err(e) => return Err(invalid(format!("broker.route_only[{i}]"), e.to_string())),
            }
        }
        if self.max_inflight == 0 {
            return Err(invalid("broker.max_inflight", "must be greater than 0"));
        }
        let session_queue_bytes = positive(
            "broker.session_queue_bytes",
            self.session_queue_bytes.as_usize(),
        )?;
        let queue_bytes = positive("broker.queue_bytes", self.queue_bytes.as_usize())?;
        if session_queue_bytes > queue_bytes {
            return Err(invalid(
                "broker.session_queue_bytes",
                "must be at most broker.queue_bytes",
            ));
        }
        Ok(BrokerConfig {
            enabled: self.enabled,
            route_only: self.route_only.clone(),
            limits: BrokerLimits {
                session_queue_bytes,
                queue_bytes,
                max_inflight: self.max_inflight,
                max_subscriptions: positive("broker.max_subscriptions", self.max_subscriptions)?,
                max_filter_len: positive("broker.max_filter_len", self.max_filter_len)?,
                retained_max: self.retained_max,
                retained_max_bytes: self.retained_max_bytes.as_usize(),
            },
        })
    }
}
