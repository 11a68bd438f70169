//! JSON payloads → typed rows. A payload is one JSON object (one row) or an array of objects
//! (one row each). Nested objects flatten to `a.b`; arrays inside a row are kept as their JSON
//! text; `null` means absent. The row time comes from the first of the table's `time_fields`
//! that holds epoch seconds/ms/µs/ns (told apart by magnitude) or an RFC 3339 string; that
//! field is then not stored again. Without one, the row time is the receive time.
//!
//! Cost: parsing goes through `serde_json::Value` (about 1 µs for a 60-byte reading); parsing
//! straight into column builders is the known next step (see ARCHITECTURE.md cost budget).

use bytes::Bytes;
use serde_json::{Map, Value};

/// A typed field value.
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    /// JSON integer that fits i64.
    Int(i64),
    /// JSON number with a fraction, or too large for i64.
    Float(f64),
    /// JSON boolean.
    Bool(bool),
    /// JSON string (or an array's JSON text).
    Str(String),
    /// Raw bytes (only the `_rejected` payload).
    Bytes(Bytes),
}

/// One decoded row.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// Row time, µs since the epoch, UTC.
    pub time: i64,
    /// `(flattened name, value)` in payload order.
    pub fields: Vec<(String, Scalar)>,
}

/// Why a payload is not rows.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not UTF-8 text.
    #[error("payload is not valid UTF-8")]
    NotUtf8,
    /// Not JSON.
    #[error("payload is not valid JSON: {0}")]
    NotJson(String),
    /// JSON, but not an object or an array of objects.
    #[error("payload is JSON {0}, expected an object or an array of objects")]
    NotAnObject(&'static str),
    /// An empty array.
    #[error("payload is an empty JSON array")]
    EmptyArray,
}

/// Columns fleetlake writes itself; a payload field with one of these names is stored as
/// `payload_<name>`.
const RESERVED: [&str; 5] = ["time", "received_at", "device_id", "date", "hour"];

/// Decodes a payload into rows; `reserved` adds column names taken by topic levels.
pub fn decode(
    payload: &[u8],
    time_fields: &[String],
    reserved: &[&str],
    received_at: i64,
) -> Result<Vec<Row>, DecodeError> {
    let text = std::str::from_utf8(payload).map_err(|_| DecodeError::NotUtf8)?;
    let value: Value =
        serde_json::from_str(text).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    match value {
        Value::Object(map) => Ok(vec![row(map, time_fields, reserved, received_at)]),
        Value::Array(items) if items.is_empty() => Err(DecodeError::EmptyArray),
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::Object(map) => Ok(row(map, time_fields, reserved, received_at)),
                other => Err(DecodeError::NotAnObject(kind(&other))),
            })
            .collect(),
        other => Err(DecodeError::NotAnObject(kind(&other))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array of non-objects",
        Value::Object(_) => "object",
    }
}

fn row(
    mut map: Map<String, Value>,
    time_fields: &[String],
    reserved: &[&str],
    received_at: i64,
) -> Row {
    let mut time = None;
    for name in time_fields {
        if let Some(t) = map.get(name).and_then(parse_time) {
            map.remove(name);
            time = Some(t);
            break;
        }
    }
    let mut fields = Vec::with_capacity(map.len());
    for (key, value) in map {
        let key = if RESERVED.contains(&key.as_str()) || reserved.contains(&key.as_str()) {
            format!("payload_{key}")
        } else {
            key
        };
        flatten(key, value, &mut fields);
    }
    Row {
        time: time.unwrap_or(received_at),
        fields,
    }
}

fn flatten(key: String, value: Value, out: &mut Vec<(String, Scalar)>) {
    let scalar = match value {
        Value::Null => return,
        Value::Bool(b) => Scalar::Bool(b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Scalar::Int(i),
            None => Scalar::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Scalar::Str(s),
        Value::Array(_) => Scalar::Str(value.to_string()),
        Value::Object(map) => {
            for (k, v) in map {
                flatten(format!("{key}.{k}"), v, out);
            }
            return;
        }
    };
    out.push((key, scalar));
}

/// Epoch magnitude limits: below 1e11 is seconds (until year 5138), below 1e14 milliseconds,
/// below 1e17 microseconds, else nanoseconds.
fn epoch_to_micros(x: f64) -> Option<i64> {
    let a = x.abs();
    let us = if a < 1e11 {
        x * 1e6
    } else if a < 1e14 {
        x * 1e3
    } else if a < 1e17 {
        x
    } else {
        x / 1e3
    };
    us.is_finite().then(|| us.round() as i64)
}

/// A time value in µs: an epoch number (any of s/ms/µs/ns) or an RFC 3339 string.
pub fn parse_time(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => match n.as_i64() {
            // Integers are scaled exactly so nanosecond stamps keep their µs digits.
            Some(i) => Some(match i.unsigned_abs() {
                a if a < 100_000_000_000 => i.checked_mul(1_000_000)?,
                a if a < 100_000_000_000_000 => i.checked_mul(1_000)?,
                a if a < 100_000_000_000_000_000 => i,
                _ => i / 1_000,
            }),
            None => epoch_to_micros(n.as_f64()?),
        },
        Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.timestamp_micros()),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
