//! Decode: an MQTT PUBLISH (topic, payload, client id) becomes a [`Message`] for one table:
//! routed by topic ([`topic::Router`]), payload decoded into typed rows ([`json`]). A payload
//! that cannot be decoded, or a topic no table takes, becomes a message for the `_rejected`
//! table with the reason and the raw bytes: nothing is dropped silently.

pub mod json;
pub mod topic;

use std::sync::Arc;

use bytes::Bytes;

use crate::config::REJECTED_TABLE;
pub use json::{Row, Scalar};
use topic::Router;

/// Where a message came from; the WAL records it so a replay decodes it the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Source {
    /// An MQTT PUBLISH (or will): the payload is as published.
    Mqtt = 1,
    /// A group of gRPC points: the payload is a protobuf `WriteRequest` with those points.
    Grpc = 2,
    /// An MQTT PUBLISH received by a `[[bridge]]` from an external broker (the record's client
    /// is the bridge's name); decoded like `Mqtt`, and seeds the bridge's redelivery filter.
    Bridge = 3,
}

/// Why a message went to the `_rejected` table (the `reason` label of
/// `fleetlake_messages_rejected_by_reason_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// The payload is not valid JSON rows.
    Payload,
    /// A named topic level holds a value that cannot be used (a bad `{table}` name, say).
    Topic,
    /// No `[[tables]]` filter takes the topic.
    NoTable,
    /// A field's type conflicts with its column.
    TypeConflict,
    /// The table would be one more than `batch.max_tables`.
    TooManyTables,
    /// A WAL record that no longer decodes.
    BadRecord,
}

impl RejectReason {
    /// Every reason, in label order.
    pub const ALL: [Self; 6] = [
        Self::Payload,
        Self::Topic,
        Self::NoTable,
        Self::TypeConflict,
        Self::TooManyTables,
        Self::BadRecord,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Payload => "payload",
            Self::Topic => "topic",
            Self::NoTable => "no_table",
            Self::TypeConflict => "type_conflict",
            Self::TooManyTables => "too_many_tables",
            Self::BadRecord => "bad_record",
        }
    }
}

/// Decoded rows of one published message, all bound for one table.
#[derive(Debug)]
pub struct Message {
    /// Destination table.
    pub table: Arc<str>,
    /// Device id for every row (topic level or client id).
    pub device_id: Arc<str>,
    /// Receive time, µs since the epoch.
    pub received_at: i64,
    /// String columns taken from named topic levels.
    pub columns: Vec<(Arc<str>, String)>,
    /// The rows (a JSON array gives several).
    pub rows: Vec<Row>,
    /// Original topic, kept so a later schema conflict can still reject the message whole.
    pub topic: String,
    /// Original payload (shares the network buffer; no copy).
    pub payload: Bytes,
    /// WAL sequence number, set when the message is appended to the WAL (0 before).
    pub seq: u64,
    /// The source, which says how to read `payload` again.
    pub source: Source,
    /// Why it is bound for `_rejected` (`None`: it is not).
    pub rejected: Option<RejectReason>,
}

/// Now, in µs since the epoch (the `received_at` of a message).
pub fn now_micros() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_micros()).unwrap_or(i64::MAX)
}

/// Bytes one message is charged against the memory budget: payload, topic, the message and
/// its row, and per field the decoded `(name, value)` pair with the name's own allocation.
/// Calibrated with heaptrack (peak heap against the budget in use while it is full, QoS 0
/// readings): the charge must not be less than what the heap really holds, or the budget
/// would not bound memory.
pub fn message_cost(payload_len: usize, topic_len: usize, fields: usize) -> usize {
    384 + payload_len + topic_len + fields * 80
}

impl Message {
    /// What this message is charged against the memory budget.
    pub fn cost(&self) -> usize {
        let fields =
            self.rows.iter().map(|r| r.fields.len() + 3).sum::<usize>() + self.columns.len();
        message_cost(self.payload.len(), self.topic.len(), fields)
    }

    /// A `_rejected` row keeping `topic`, `reason` and the raw `payload`.
    pub fn rejected(
        why: RejectReason,
        reason: String,
        topic: String,
        payload: Bytes,
        device_id: Arc<str>,
        received_at: i64,
    ) -> Self {
        let fields = vec![
            ("topic".to_string(), Scalar::Str(topic.clone())),
            ("reason".to_string(), Scalar::Str(reason)),
            ("payload".to_string(), Scalar::Bytes(payload.clone())),
        ];
        Self {
            table: Arc::from(REJECTED_TABLE),
            device_id,
            received_at,
            columns: Vec::new(),
            rows: vec![Row {
                time: received_at,
                fields,
            }],
            topic,
            payload,
            seq: 0,
            source: Source::Mqtt,
            rejected: Some(why),
        }
    }

    /// Whether this message is bound for the `_rejected` table.
    pub fn is_rejected(&self) -> bool {
        &*self.table == REJECTED_TABLE
    }
}

/// Routes and decodes one PUBLISH. Never fails: problems become a `_rejected` message.
pub fn decode_publish(
    router: &Router,
    topic: String,
    payload: Bytes,
    client_id: &Arc<str>,
    received_at: i64,
) -> Message {
    let route = match router.route(&topic) {
        Some(Ok(route)) => route,
        Some(Err(reason)) => {
            let why = RejectReason::Topic;
            return Message::rejected(why, reason, topic, payload, client_id.clone(), received_at);
        }
        None => {
            let reason = "no table takes this topic".to_string();
            let why = RejectReason::NoTable;
            return Message::rejected(why, reason, topic, payload, client_id.clone(), received_at);
        }
    };
    let reserved: Vec<&str> = route.columns.iter().map(|(name, _)| &**name).collect();
    match json::decode(&payload, &route.time_fields, &reserved, received_at) {
        Ok(rows) => {
            let device_id = route.device_id.map_or_else(|| client_id.clone(), Arc::from);
            let columns = route
                .columns
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect();
            let table = route.table;
            Message {
                table,
                device_id,
                received_at,
                columns,
                rows,
                topic,
                payload,
                seq: 0,
                source: Source::Mqtt,
                rejected: None,
            }
        }
        Err(e) => Message::rejected(
            RejectReason::Payload,
            e.to_string(),
            topic,
            payload,
            client_id.clone(),
            received_at,
        ),
    }
}
