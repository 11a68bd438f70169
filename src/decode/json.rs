//! JSON payloads → typed rows. A payload is one JSON object (one row) or an array of objects
//! (one row each). Nested objects flatten to `a.b`; arrays inside a row are kept as their JSON
//! text; `null` means absent. The row time comes from the first of the table's `time_fields`
//! that holds epoch seconds/ms/µs/ns (told apart by magnitude) or an RFC 3339 string; that
//! field is then not stored again. Without one, the row time is the receive time.
//!
//! Cost: the payload is parsed in one pass by serde visitors straight into the row's field
//! list: no intermediate `serde_json::Value` tree or map per message.

use std::fmt;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

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
    /// Raw bytes (the `_rejected` payload, gRPC bytes values).
    Bytes(Bytes),
    /// A time, µs since the epoch: the device's time of a row the clock policy re-timed.
    Time(i64),
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
    /// An array holding something other than objects.
    #[error("payload is a JSON array holding {0}s, expected an object or an array of objects")]
    ArrayItem(&'static str),
    /// An empty array.
    #[error("payload is an empty JSON array")]
    EmptyArray,
}

/// Columns fleetlake writes itself; a payload field with one of these names is stored as
/// `payload_<name>`.
const RESERVED: [&str; 6] = [
    "time",
    "received_at",
    "device_id",
    "date",
    "hour",
    super::DEVICE_TIME,
];

/// What every row of one payload shares.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    time_fields: &'a [String],
    reserved: &'a [&'a str],
    received_at: i64,
}

/// Decodes a payload into rows; `reserved` adds column names taken by topic levels.
pub fn decode(
    payload: &[u8],
    time_fields: &[String],
    reserved: &[&str],
    received_at: i64,
) -> Result<Vec<Row>, DecodeError> {
    let text = std::str::from_utf8(payload).map_err(|_| DecodeError::NotUtf8)?;
    let mut de = serde_json::Deserializer::from_str(text);
    let ctx = Ctx {
        time_fields,
        reserved,
        received_at,
    };
    let rows = Payload(ctx)
        .deserialize(&mut de)
        .map_err(|e| DecodeError::NotJson(e.to_string()))?;
    de.end().map_err(|e| DecodeError::NotJson(e.to_string()))?;
    rows
}

/// The whole payload: an object or an array of objects. Shape errors are returned as values
/// (the inner `Result`) so they keep their own [`DecodeError`] instead of a parser message.
struct Payload<'a>(Ctx<'a>);

impl<'de> DeserializeSeed<'de> for Payload<'_> {
    type Value = Result<Vec<Row>, DecodeError>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Payload<'_> {
    type Value = Result<Vec<Row>, DecodeError>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object or an array of objects")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Ok(Ok(vec![row(self.0, map)?]))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut rows = Vec::with_capacity(seq.size_hint().unwrap_or(4));
        let mut shape = None;
        while let Some(item) = seq.next_element_seed(Element(self.0))? {
            match item {
                Ok(row) => rows.push(row),
                Err(kind) => shape = shape.or(Some(kind)),
            }
        }
        Ok(match shape {
            Some(kind) => Err(DecodeError::ArrayItem(kind)),
            None if rows.is_empty() => Err(DecodeError::EmptyArray),
            None => Ok(rows),
        })
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Err(DecodeError::NotAnObject("boolean")))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Err(DecodeError::NotAnObject("number")))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Err(DecodeError::NotAnObject("number")))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Err(DecodeError::NotAnObject("number")))
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Err(DecodeError::NotAnObject("string")))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Err(DecodeError::NotAnObject("null")))
    }
}

/// One element of a top-level array: a row, or the kind of JSON that is not an object.
struct Element<'a>(Ctx<'a>);

impl<'de> DeserializeSeed<'de> for Element<'_> {
    type Value = Result<Row, &'static str>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Element<'_> {
    type Value = Result<Row, &'static str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Ok(Ok(row(self.0, map)?))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Err("array of non-objects"))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Err("boolean"))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Err("number"))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Err("number"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Err("number"))
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Err("string"))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Err("null"))
    }
}

/// Reads one JSON object into a row: fields in payload order, the row time picked from the
/// time fields (the first one in `time_fields` order that parses).
fn row<'de, A: MapAccess<'de>>(ctx: Ctx<'_>, mut map: A) -> Result<Row, A::Error> {
    let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
    // (priority in time_fields, µs, index in `fields`)
    let mut time: Option<(usize, i64, usize)> = None;
    while let Some(key) = map.next_key::<String>()? {
        let priority = ctx.time_fields.iter().position(|f| *f == key);
        let key = if RESERVED.contains(&key.as_str()) || ctx.reserved.contains(&key.as_str()) {
            format!("payload_{key}")
        } else {
            key
        };
        let before = fields.len();
        map.next_value_seed(Field {
            key,
            out: &mut fields,
        })?;
        let Some(priority) = priority else { continue };
        if fields.len() != before + 1 || time.is_some_and(|(p, _, _)| p < priority) {
            continue;
        }
        if let Some(micros) = scalar_time(&fields[before].1) {
            time = Some((priority, micros, before));
        }
    }
    let time = match time {
        Some((_, micros, index)) => {
            fields.remove(index);
            micros
        }
        None => ctx.received_at,
    };
    // Buffered until its batch is published: give back the unused slots (an in-place shrink).
    fields.shrink_to_fit();
    Ok(Row { time, fields })
}

/// One field value, flattened into `out` under `key`.
struct Field<'a> {
    key: String,
    out: &'a mut Vec<(String, Scalar)>,
}

impl<'de> DeserializeSeed<'de> for Field<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Field<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.out.push((self.key, Scalar::Bool(v)));
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.out.push((self.key, Scalar::Int(v)));
        Ok(())
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        let value = i64::try_from(v).map_or(Scalar::Float(v as f64), Scalar::Int);
        self.out.push((self.key, value));
        Ok(())
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.out.push((self.key, Scalar::Float(v)));
        Ok(())
    }
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        self.out.push((self.key, Scalar::Str(v.to_owned())));
        Ok(())
    }
    fn visit_string<E>(self, v: String) -> Result<(), E> {
        self.out.push((self.key, Scalar::Str(v)));
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let out = self.out;
        while let Some(k) = map.next_key::<String>()? {
            map.next_value_seed(Field {
                key: format!("{}.{k}", self.key),
                out: &mut *out,
            })?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        let value = Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
        self.out.push((self.key, Scalar::Str(value.to_string())));
        Ok(())
    }
}

/// A value as a time in µs since the epoch: an epoch number in s, ms, µs or ns (told apart by
/// magnitude), or an RFC 3339 string.
pub fn scalar_time(v: &Scalar) -> Option<i64> {
    match v {
        Scalar::Int(i) => int_to_micros(*i),
        Scalar::Float(f) => epoch_to_micros(*f),
        Scalar::Str(s) => chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.timestamp_micros()),
        Scalar::Time(t) => Some(*t),
        Scalar::Bool(_) | Scalar::Bytes(_) => None,
    }
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

/// Integer epoch → µs, scaled exactly so nanosecond stamps keep their µs digits.
fn int_to_micros(i: i64) -> Option<i64> {
    match i.unsigned_abs() {
        a if a < 100_000_000_000 => i.checked_mul(1_000_000),
        a if a < 100_000_000_000_000 => i.checked_mul(1_000),
        a if a < 100_000_000_000_000_000 => Some(i),
        _ => Some(i / 1_000),
    }
}

#[cfg(test)]
mod tests;
