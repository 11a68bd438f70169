//! gRPC points → pipeline messages (sans-IO): checking a request's points, grouping them into
//! [`Message`]s, and turning a WAL record of a gRPC group back into the same message.
//!
//! Consecutive points of one table and one device form one message (one WAL record, one
//! sequence number): a batch from one device costs one record, a batch from many devices one
//! record per run of points. The record's payload is the protobuf encoding of a
//! `WriteRequest` holding exactly the group's points, with the table filled in, so a replay
//! rebuilds the same rows even if `grpc.default_table` changed meanwhile.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use prost::Message as _;
use prost::encoding::{self, WireType};

use super::proto::{Field, Point, PointError, WriteRequest, field};
use crate::decode::{Message, RejectReason, Row, Scalar, Source};

/// Most point errors reported for one request.
pub const MAX_ERRORS: usize = 100;
/// Longest device id, in bytes.
const MAX_DEVICE_ID: usize = 1024;
/// Longest field name, in bytes.
const MAX_FIELD_NAME: usize = 256;
/// Most fields in one point.
const MAX_FIELDS: usize = 1024;
/// Column names fleetlake writes itself.
const RESERVED: [&str; 4] = ["time", "received_at", "device_id", super::DEVICE_TIME];

/// Checks every point of a request. Returns the problems found (at most [`MAX_ERRORS`]);
/// empty means every point may be stored.
pub fn check(points: &[Point]) -> Vec<PointError> {
    let mut errors = Vec::new();
    for (i, p) in points.iter().enumerate() {
        if errors.len() >= MAX_ERRORS {
            break;
        }
        let mut bad = |field: String, description: &str| {
            errors.push(PointError {
                index: i as u32,
                field,
                description: description.to_string(),
            });
        };
        if p.device_id.is_empty() {
            bad("device_id".into(), "required");
        } else if p.device_id.len() > MAX_DEVICE_ID {
            bad("device_id".into(), "longer than 1024 bytes");
        }
        let table_ok = p.table.is_empty()
            || (crate::decode::topic::is_safe_name(&p.table) && p.table.len() <= 64);
        if !table_ok {
            bad(
                "table".into(),
                "use 1-64 letters, digits, `_`, `-` or `.`, not starting with `.` or `_`",
            );
        }
        if p.time_unix_nano < 0 {
            bad("time_unix_nano".into(), "before 1970 (negative)");
        }
        if p.fields.len() > MAX_FIELDS {
            bad("fields".into(), "more than 1024 fields");
            continue;
        }
        for (j, f) in p.fields.iter().enumerate() {
            let problem = if f.name.is_empty() {
                Some("empty name")
            } else if f.name.len() > MAX_FIELD_NAME {
                Some("name longer than 256 bytes")
            } else if RESERVED.contains(&f.name.as_str()) {
                Some(
                    "reserved name (time, received_at, device_id and device_time are fleetlake's columns)",
                )
            } else if p.fields[..j].iter().any(|g| g.name == f.name) {
                Some("duplicate name")
            } else {
                None
            };
            if let Some(description) = problem {
                bad(format!("fields[{j}].name"), description);
            }
        }
    }
    errors.truncate(MAX_ERRORS);
    errors
}

/// Turns checked points into messages, in order. `default_table` takes points without a
/// table; `received_at` (µs) is the row time of points without one.
pub fn to_messages(points: Vec<Point>, default_table: &Arc<str>, received_at: i64) -> Vec<Message> {
    // A point without a table is stored with `default_table` appended as a second `table`
    // field (protobuf keeps the last value of a singular field): no copy of the point needed.
    let extra = table_field_len(default_table);
    let lens: Vec<usize> = points
        .iter()
        .map(|p| p.encoded_len() + if p.table.is_empty() { extra } else { 0 })
        .collect();
    let mut buf = BytesMut::with_capacity(lens.iter().map(|len| len + 6).sum());
    let mut msgs: Vec<Message> = Vec::new();
    let mut table = default_table.clone();
    for (point, len) in points.into_iter().zip(lens) {
        let point_table: &str = if point.table.is_empty() {
            default_table
        } else {
            &point.table
        };
        if *table != *point_table {
            table = Arc::from(point_table);
        }
        let same = msgs
            .last()
            .is_some_and(|m| Arc::ptr_eq(&m.table, &table) && *m.device_id == *point.device_id);
        if !same {
            if let Some(last) = msgs.last_mut() {
                last.payload = buf.split().freeze();
            }
            msgs.push(Message {
                table: table.clone(),
                device_id: Arc::from(point.device_id.as_str()),
                received_at,
                columns: Vec::new(),
                rows: Vec::new(),
                topic: String::new(),
                payload: Bytes::new(),
                seq: 0,
                source: Source::Grpc,
                rejected: None,
                mqtt: crate::decode::MqttMeta::default(),
            });
        }
        encoding::encode_key(1, WireType::LengthDelimited, &mut buf);
        encoding::encode_varint(len as u64, &mut buf);
        point.encode_raw(&mut buf);
        if point.table.is_empty() {
            put_table_field(default_table, &mut buf);
        }
        let msg = msgs
            .last_mut()
            .unwrap_or_else(|| unreachable!("pushed above"));
        msg.rows.push(row(point, received_at));
    }
    if let Some(last) = msgs.last_mut() {
        last.payload = buf.split().freeze();
    }
    msgs
}

/// Bytes of `Point.table` (field 1) holding `table`.
fn table_field_len(table: &str) -> usize {
    encoding::key_len(1) + encoding::encoded_len_varint(table.len() as u64) + table.len()
}

fn put_table_field(table: &str, buf: &mut BytesMut) {
    encoding::encode_key(1, WireType::LengthDelimited, buf);
    encoding::encode_varint(table.len() as u64, buf);
    buf.extend_from_slice(table.as_bytes());
}

fn row(point: Point, received_at: i64) -> Row {
    let time = if point.time_unix_nano == 0 {
        received_at
    } else {
        point.time_unix_nano.div_euclid(1000)
    };
    let fields = point
        .fields
        .into_iter()
        .filter_map(|Field { name, value }| {
            let value = match value? {
                field::Value::DoubleValue(v) => Scalar::Float(v),
                field::Value::IntValue(v) => Scalar::Int(v),
                field::Value::BoolValue(v) => Scalar::Bool(v),
                field::Value::StringValue(v) => Scalar::Str(v),
                field::Value::BytesValue(v) => Scalar::Bytes(v),
            };
            Some((name, value))
        })
        .collect();
    Row { time, fields }
}

/// Rebuilds the message of one WAL record written by [`to_messages`]. A payload that no
/// longer decodes or checks (a damaged or foreign record) becomes a `_rejected` message.
pub fn from_record(payload: Bytes, client: &Arc<str>, received_at: i64) -> Message {
    let reject = |reason: String, payload: Bytes| {
        let why = RejectReason::BadRecord;
        let mut msg = Message::rejected(
            why,
            reason,
            String::new(),
            payload,
            client.clone(),
            received_at,
        );
        msg.source = Source::Grpc;
        msg
    };
    let points = match WriteRequest::decode(payload.clone()) {
        Ok(req) => req.points,
        Err(e) => return reject(format!("gRPC WAL record does not decode: {e}"), payload),
    };
    if points.is_empty() || !check(&points).is_empty() {
        return reject("gRPC WAL record holds invalid points".into(), payload);
    }
    let table: Arc<str> = Arc::from(points[0].table.as_str());
    let mut msgs = to_messages(points, &table, received_at);
    if msgs.len() != 1 {
        return reject("gRPC WAL record holds more than one group".into(), payload);
    }
    let mut msg = msgs.remove(0);
    // Keep the record's own bytes (what `to_messages` re-encoded is the same).
    msg.payload = payload;
    msg
}

#[cfg(test)]
mod tests;
