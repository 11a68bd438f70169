//! One table's schema and Arrow builders. The schema only grows: a column once seen stays in
//! every later file (all-null where absent), with the type [`Kind::infer`] gave it when it
//! was first seen, or the one its stored schema says ([`super::schema`]).
//!
//! Bounded: at most `max_columns` payload columns (`batch.max_columns`) and field names of at
//! most [`MAX_FIELD_NAME`] bytes; a message past either is refused whole (it goes to
//! `_rejected`). The bytes [`TableBuilder::append`] reports include the columns a row leaves
//! absent (each still takes a null slot), so a wide table is charged what it really holds.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, ArrayRef, BinaryBuilder, BooleanBuilder, Float64Builder, Int64Builder,
    StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use super::schema::{ColumnSpec, Declared, UnknownFields};
use crate::decode::json::scalar_time;
use crate::decode::{DEVICE_TIME, MAX_FIELD_NAME, Message, RejectReason, Scalar};

/// Type of a payload column (and kind of a value). The names are those of the schema file
/// and of `check-config`'s messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub enum Kind {
    /// Int64: a column only a schema file (or a declaration) gives; inference never does.
    #[serde(rename = "int64")]
    Int,
    /// Float64: every number, unless its column is an Int64.
    #[serde(rename = "float64")]
    Float,
    /// Boolean.
    #[serde(rename = "bool")]
    Bool,
    /// Utf8.
    #[serde(rename = "string")]
    Str,
    /// Binary (a string value is kept as its UTF-8 bytes).
    #[serde(rename = "binary")]
    Bytes,
    /// Timestamp, µs, UTC: a column only a declaration gives. Takes epoch numbers (seconds,
    /// ms, µs or ns, told apart by magnitude, as `time_fields`) and RFC 3339 strings.
    #[serde(rename = "timestamp")]
    Timestamp,
}

impl Kind {
    /// The kind of a value.
    fn of(v: &Scalar) -> Self {
        match v {
            Scalar::Int(_) => Kind::Int,
            Scalar::Float(_) => Kind::Float,
            Scalar::Bool(_) => Kind::Bool,
            Scalar::Str(_) => Kind::Str,
            Scalar::Bytes(_) => Kind::Bytes,
            Scalar::Time(_) => Kind::Timestamp,
        }
    }

    /// The type of a new column whose first value is of kind `self`: numbers are Float64,
    /// integers too, so that no later value and no other node ever needs another type for
    /// the column (see [`super::schema`]).
    pub fn infer(self) -> Self {
        match self {
            Kind::Int => Kind::Float,
            kind => kind,
        }
    }

    /// Whether a column of `self` takes `v`: a value of its own kind; any number into Float64;
    /// an integral number into Int64; a string into Binary; an epoch number or an RFC 3339
    /// string into Timestamp.
    fn takes(self, v: &Scalar) -> bool {
        match (self, v) {
            (Kind::Float, Scalar::Int(_) | Scalar::Float(_))
            | (Kind::Int, Scalar::Int(_))
            | (Kind::Bool, Scalar::Bool(_))
            | (Kind::Str, Scalar::Str(_))
            | (Kind::Bytes, Scalar::Bytes(_) | Scalar::Str(_)) => true,
            (Kind::Int, Scalar::Float(f)) => float_to_int(*f).is_some(),
            (Kind::Timestamp, v) => scalar_time(v).is_some(),
            _ => false,
        }
    }

    /// The name used in schema files and messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Int => "int64",
            Kind::Float => "float64",
            Kind::Bool => "bool",
            Kind::Str => "string",
            Kind::Bytes => "binary",
            Kind::Timestamp => "timestamp",
        }
    }
}

/// An integral float as an integer (`5.0` → 5); `None` when it has a fraction or is out of
/// the Int64 range.
fn float_to_int(f: f64) -> Option<i64> {
    // -2^63 and 2^63 are exact in f64.
    (f.fract() == 0.0 && (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&f))
        .then_some(f as i64)
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a message cannot be appended (it goes to `_rejected`, whole).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// A value's type clashes with its column's.
    #[error(transparent)]
    Type(#[from] Conflict),
    /// The message would add columns past the table's bound.
    #[error(
        "field `{field}` would be column {} of the table, past batch.max_columns ({max})",
        max + 1
    )]
    TooManyColumns {
        /// The first field that would not fit.
        field: String,
        /// `batch.max_columns`.
        max: usize,
    },
    /// A field no declared column takes, in a table with `unknown_fields = "reject"`.
    #[error(
        "field `{field}` is not a declared column of table `{table}` (unknown_fields = \"reject\")"
    )]
    UnknownField {
        /// The field.
        field: String,
        /// The table.
        table: String,
    },
    /// A required column has no value in a row.
    #[error("required field `{field}` is missing or null")]
    MissingField {
        /// The column.
        field: String,
    },
    /// A field name with a character the table format forbids in column names.
    #[error(
        "field `{field}` has a character Delta Lake forbids in column names (space , ; {{ }} ( ) newline tab =)"
    )]
    FieldChars {
        /// The field name (its first characters).
        field: String,
    },
    /// A field name that cannot be a column name.
    #[error("a field name of {len} bytes (empty, or longer than {MAX_FIELD_NAME}): `{start}`")]
    FieldName {
        /// Its length in bytes.
        len: usize,
        /// Its first characters.
        start: String,
    },
}

impl Refused {
    /// The `_rejected` reason.
    pub fn reason(&self) -> RejectReason {
        match self {
            Self::Type(_) => RejectReason::TypeConflict,
            Self::TooManyColumns { .. } => RejectReason::TooManyColumns,
            Self::FieldName { .. } | Self::FieldChars { .. } => RejectReason::FieldName,
            Self::UnknownField { .. } => RejectReason::UnknownField,
            Self::MissingField { .. } => RejectReason::MissingField,
        }
    }
}

fn conflict(field: &str, column: Kind, value: Kind) -> Refused {
    let field = field.chars().take(MAX_FIELD_NAME).collect();
    Refused::Type(Conflict {
        field,
        column,
        value,
    })
}

/// A field whose value type clashes with its column's type.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("type conflict: column `{field}` is {column}, this value is {value}")]
pub struct Conflict {
    /// Field name.
    pub field: String,
    /// The column's type.
    pub column: Kind,
    /// The value's type.
    pub value: Kind,
}

#[derive(Debug)]
enum Data {
    Int(Int64Builder),
    Float(Float64Builder),
    Bool(BooleanBuilder),
    Str(StringBuilder),
    Bytes(BinaryBuilder),
    Timestamp(TimestampMicrosecondBuilder),
}

impl Data {
    fn new(kind: Kind) -> Self {
        match kind {
            Kind::Int => Data::Int(Int64Builder::new()),
            Kind::Float => Data::Float(Float64Builder::new()),
            Kind::Bool => Data::Bool(BooleanBuilder::new()),
            Kind::Str => Data::Str(StringBuilder::new()),
            Kind::Bytes => Data::Bytes(BinaryBuilder::new()),
            Kind::Timestamp => Data::Timestamp(timestamp_builder()),
        }
    }

    fn kind(&self) -> Kind {
        match self {
            Data::Int(_) => Kind::Int,
            Data::Float(_) => Kind::Float,
            Data::Bool(_) => Kind::Bool,
            Data::Str(_) => Kind::Str,
            Data::Bytes(_) => Kind::Bytes,
            Data::Timestamp(_) => Kind::Timestamp,
        }
    }

    fn len(&self) -> usize {
        match self {
            Data::Int(b) => b.len(),
            Data::Float(b) => b.len(),
            Data::Bool(b) => b.len(),
            Data::Str(b) => b.len(),
            Data::Bytes(b) => b.len(),
            Data::Timestamp(b) => b.len(),
        }
    }

    fn append_nulls(&mut self, n: usize) {
        match self {
            Data::Int(b) => b.append_nulls(n),
            Data::Float(b) => b.append_nulls(n),
            Data::Timestamp(b) => b.append_nulls(n),
            Data::Bool(b) => b.append_nulls(n),
            Data::Str(b) => (0..n).for_each(|_| b.append_null()),
            Data::Bytes(b) => (0..n).for_each(|_| b.append_null()),
        }
    }

    /// Appends `v`; the caller checked [`Kind::takes`].
    fn append(&mut self, v: &Scalar) {
        match (self, v) {
            (Data::Int(b), Scalar::Int(i)) => b.append_value(*i),
            (Data::Float(b), Scalar::Float(f)) => b.append_value(*f),
            (Data::Float(b), Scalar::Int(i)) => b.append_value(*i as f64),
            (Data::Int(b), Scalar::Float(f)) => b.append_option(float_to_int(*f)),
            (Data::Bytes(b), Scalar::Str(s)) => b.append_value(s.as_bytes()),
            (Data::Timestamp(b), v) => b.append_option(scalar_time(v)),
            (Data::Bool(b), Scalar::Bool(x)) => b.append_value(*x),
            (Data::Str(b), Scalar::Str(s)) => b.append_value(s),
            (Data::Bytes(b), Scalar::Bytes(x)) => b.append_value(x),
            (data, _) => data.append_nulls(1),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Data::Int(b) => Arc::new(b.finish()),
            Data::Float(b) => Arc::new(b.finish()),
            Data::Bool(b) => Arc::new(b.finish()),
            Data::Str(b) => Arc::new(b.finish()),
            Data::Bytes(b) => Arc::new(b.finish()),
            Data::Timestamp(b) => Arc::new(b.finish()),
        }
    }

    fn data_type(&self) -> DataType {
        match self {
            Data::Int(_) => DataType::Int64,
            Data::Float(_) => DataType::Float64,
            Data::Bool(_) => DataType::Boolean,
            Data::Str(_) => DataType::Utf8,
            Data::Bytes(_) => DataType::Binary,
            Data::Timestamp(_) => utc_micros(),
        }
    }
}

#[derive(Debug)]
struct Column {
    name: Arc<str>,
    data: Data,
    /// Declared in `[[tables]]` (its type is fixed by the operator).
    declared: bool,
}

/// A finished batch of one table, with the sequence number of each row's message.
#[derive(Clone, Debug)]
pub struct Batch {
    /// Table name.
    pub table: Arc<str>,
    /// The rows, in arrival order.
    pub records: RecordBatch,
    /// Message sequence number per row.
    pub seqs: Arc<[u64]>,
}

/// Builds one table's rows into Arrow arrays.
#[derive(Debug)]
pub struct TableBuilder {
    table: Arc<str>,
    time: TimestampMicrosecondBuilder,
    received_at: TimestampMicrosecondBuilder,
    device_id: StringBuilder,
    columns: Vec<Column>,
    index: HashMap<Arc<str>, usize>,
    /// Column index of each field position of the previous row: rows of one table usually
    /// carry the same fields in the same order, so a name compare replaces a hash lookup.
    hint: Vec<usize>,
    seqs: Vec<u64>,
    rows: usize,
    /// Most payload columns.
    max_columns: usize,
    /// Fixed bytes one row takes in every payload column, present or null.
    row_width: usize,
    /// Declared columns read from another payload field: field → column.
    renames: HashMap<Arc<str>, Arc<str>>,
    /// Declared columns every row must hold.
    required: Vec<Arc<str>>,
    /// What happens to a field no declared column takes.
    unknown: UnknownFields,
    /// Fields left out under `unknown_fields = "drop"`, not yet taken by [`Self::take_dropped`].
    dropped: u64,
    /// Characters a new column's name may not hold (the table format's rule).
    forbidden: &'static [char],
}

/// Characters a column name of a Delta Lake table (without column mapping) may not hold.
pub const DELTA_FORBIDDEN_CHARS: &[char] = &[' ', ',', ';', '{', '}', '(', ')', '\n', '\t', '='];

/// Fixed bytes of one slot of a column (a value or a null): the value width, or an offset.
fn slot_bytes(kind: Kind) -> usize {
    match kind {
        Kind::Int | Kind::Float | Kind::Timestamp => 8,
        Kind::Bool => 1,
        Kind::Str | Kind::Bytes => 4,
    }
}

/// Variable bytes of a value beyond its slot.
fn value_bytes(v: &Scalar) -> usize {
    match v {
        Scalar::Str(s) => s.len(),
        Scalar::Bytes(b) => b.len(),
        _ => 0,
    }
}

/// `batch.max_columns` when a builder is not told otherwise.
pub const DEFAULT_MAX_COLUMNS: usize = 1000;

fn timestamp_builder() -> TimestampMicrosecondBuilder {
    TimestampMicrosecondBuilder::new().with_timezone("UTC")
}

fn utc_micros() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

impl TableBuilder {
    /// An empty builder for `table`.
    pub fn new(table: Arc<str>) -> Self {
        Self {
            table,
            time: timestamp_builder(),
            received_at: timestamp_builder(),
            device_id: StringBuilder::new(),
            columns: Vec::new(),
            index: HashMap::new(),
            hint: Vec::new(),
            seqs: Vec::new(),
            rows: 0,
            max_columns: DEFAULT_MAX_COLUMNS,
            row_width: 0,
            renames: HashMap::new(),
            required: Vec::new(),
            unknown: UnknownFields::Accept,
            dropped: 0,
            forbidden: &[],
        }
    }

    /// Refuses new columns whose names hold any of `chars` (the table format's rule).
    pub fn with_forbidden_chars(mut self, chars: &'static [char]) -> Self {
        self.forbidden = chars;
        self
    }

    /// Bounds the payload columns at `max` (`batch.max_columns`).
    pub fn with_max_columns(mut self, max: usize) -> Self {
        self.max_columns = max;
        self
    }

    /// Payload columns so far.
    pub fn columns(&self) -> usize {
        self.columns.len()
    }

    /// The column named `name`, trying the previous row's column at position `pos` first.
    fn lookup(&self, name: &str, pos: usize) -> Option<usize> {
        match self.hint.get(pos) {
            Some(&i) if &*self.columns[i].name == name => Some(i),
            _ => self.index.get(name).copied(),
        }
    }

    /// Rows buffered since the last [`finish`](Self::finish).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The column name of payload field `name` (a declared column may read another field).
    fn column_name<'a>(&'a self, name: &'a str) -> &'a str {
        if self.renames.is_empty() {
            name
        } else {
            self.renames.get(name).map_or(name, |c| c)
        }
    }

    /// Whether field `name`, whose column is `found`, is one no declared column takes, in a
    /// table that does not accept those (`device_time`, which fleetlake adds, never is).
    fn is_unknown(&self, name: &str, found: Option<usize>) -> bool {
        self.unknown != UnknownFields::Accept
            && found.is_none_or(|i| !self.columns[i].declared)
            && name != DEVICE_TIME
    }

    /// Checks every field of `msg` against the schema, the declaration and the bounds; the
    /// message is appended whole or not at all.
    fn check(&self, msg: &Message) -> Result<(), Refused> {
        let mut new: Vec<(&str, Kind)> = Vec::new();
        for (pos, (name, _)) in msg.columns.iter().enumerate() {
            match self.lookup(name, pos) {
                Some(i) if self.columns[i].data.kind() != Kind::Str => {
                    let column = self.columns[i].data.kind();
                    return Err(conflict(name, column, Kind::Str));
                }
                Some(_) => {}
                None => self.admit(name, Kind::Str, &mut new)?,
            }
        }
        let offset = msg.columns.len();
        for row in &msg.rows {
            for (pos, (name, value)) in row.fields.iter().enumerate() {
                let name = self.column_name(name);
                let found = self.lookup(name, offset + pos);
                if self.is_unknown(name, found) {
                    if self.unknown == UnknownFields::Reject {
                        let field = name.chars().take(MAX_FIELD_NAME).collect();
                        let table = self.table.to_string();
                        return Err(Refused::UnknownField { field, table });
                    }
                    continue; // left out on append, and counted
                }
                let have = match found {
                    Some(i) => Some(self.columns[i].data.kind()),
                    None => new.iter().find(|(n, _)| *n == name).map(|(_, k)| *k),
                };
                match have {
                    Some(column) if !column.takes(value) => {
                        return Err(conflict(name, column, Kind::of(value)));
                    }
                    Some(_) => {}
                    None => self.admit(name, Kind::of(value).infer(), &mut new)?,
                }
            }
            for required in &self.required {
                if !row
                    .fields
                    .iter()
                    .any(|(n, _)| self.column_name(n) == &**required)
                {
                    let field = required.to_string();
                    return Err(Refused::MissingField { field });
                }
            }
        }
        Ok(())
    }

    /// Admits a new column `name` of `kind` into `new`, within the name and column bounds.
    fn admit<'m>(
        &self,
        name: &'m str,
        kind: Kind,
        new: &mut Vec<(&'m str, Kind)>,
    ) -> Result<(), Refused> {
        if name.is_empty() || name.len() > MAX_FIELD_NAME {
            let start = name.chars().take(40).collect();
            let len = name.len();
            return Err(Refused::FieldName { len, start });
        }
        if name.contains(self.forbidden) {
            let field = name.chars().take(MAX_FIELD_NAME).collect();
            return Err(Refused::FieldChars { field });
        }
        if self.columns.len() + new.len() >= self.max_columns {
            let field = name.chars().take(MAX_FIELD_NAME).collect();
            let max = self.max_columns;
            return Err(Refused::TooManyColumns { field, max });
        }
        new.push((name, kind));
        Ok(())
    }

    /// Appends every row of `msg` (message sequence `seq`), or refuses it whole. Returns the
    /// bytes the rows take in the builders: values and offsets of every column, the absent
    /// ones' null slots and validity bits included (not capacity slack).
    pub fn append(&mut self, msg: &Message, seq: u64) -> Result<usize, Refused> {
        self.check(msg)?;
        let mut bytes = 0;
        for row in &msg.rows {
            // time, received_at, seq, device id offset + text
            bytes += 28 + msg.device_id.len();
            self.time.append_value(row.time);
            self.received_at.append_value(msg.received_at);
            self.device_id.append_value(&msg.device_id);
            for (pos, (name, value)) in msg.columns.iter().enumerate() {
                bytes += value.len();
                if let Some(Data::Str(b)) = self.column_for(name, Kind::Str, pos) {
                    b.append_value(value);
                }
            }
            let offset = msg.columns.len();
            for (pos, (name, value)) in row.fields.iter().enumerate() {
                let renamed = match self.renames.is_empty() {
                    true => None,
                    false => self.renames.get(name.as_str()).cloned(),
                };
                let name = renamed.as_deref().unwrap_or(name);
                // (No lookup at all in a table that accepts every field: the common case.)
                if self.unknown != UnknownFields::Accept
                    && self.is_unknown(name, self.lookup(name, offset + pos))
                {
                    self.dropped += 1; // `check` refused the message if that was the policy
                    continue;
                }
                bytes += value_bytes(value);
                if let Some(data) = self.column_for(name, Kind::of(value), offset + pos) {
                    data.append(value);
                }
            }
            // Every payload column holds a slot for this row, and a validity bit.
            bytes += self.row_width + self.columns.len() / 8;
            self.rows += 1;
            for col in &mut self.columns {
                let missing = self.rows - col.data.len();
                if missing > 0 {
                    col.data.append_nulls(missing);
                }
            }
            self.seqs.push(seq);
        }
        Ok(bytes)
    }

    /// Fields left out under `unknown_fields = "drop"` since the last call.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    /// The builder for field `name` of the current row (created as [`Kind::infer`] says when
    /// new); `None` when the row already has a value for `name` (the
    /// same name twice in one row, e.g. `a.b` and `{"a":{"b"}}`: the first wins).
    fn column_for(&mut self, name: &str, kind: Kind, pos: usize) -> Option<&mut Data> {
        let i = match self.lookup(name, pos) {
            Some(i) => i,
            None => self.add_column(Arc::from(name), kind.infer()),
        };
        if pos >= self.hint.len() {
            self.hint.resize(pos + 1, i);
        }
        self.hint[pos] = i;
        let data = &mut self.columns[i].data;
        if data.len() > self.rows {
            return None;
        }
        Some(data)
    }

    /// Adds a column of `kind` (null in the rows so far); returns its index.
    fn add_column(&mut self, name: Arc<str>, kind: Kind) -> usize {
        let mut data = Data::new(kind);
        data.append_nulls(self.rows);
        self.row_width += slot_bytes(kind);
        self.columns.push(Column {
            name: name.clone(),
            data,
            declared: false,
        });
        self.index.insert(name, self.columns.len() - 1);
        self.columns.len() - 1
    }

    /// Starts with the declared columns (first, in their order), the renames, the required
    /// columns and the policy for other fields of `[[tables]]`.
    pub fn with_declared(mut self, declared: &Declared) -> Self {
        for c in &declared.columns {
            let i = self.add_column(c.name.clone(), c.kind);
            self.columns[i].declared = true;
            if c.required {
                self.required.push(c.name.clone());
            }
            if let Some(from) = &c.from {
                self.renames.insert(from.clone(), c.name.clone());
            }
        }
        self.unknown = declared.unknown_fields;
        self
    }

    /// Starts with the columns of a stored schema (they count against `max_columns`, but are
    /// all kept even past it: earlier files hold them).
    pub fn with_schema(mut self, columns: &[ColumnSpec]) -> Self {
        for c in columns {
            if !self.index.contains_key(&c.name) {
                self.add_column(c.name.clone(), c.kind);
            }
        }
        self
    }

    /// The payload columns, in file order.
    pub fn schema(&self) -> Vec<ColumnSpec> {
        self.columns
            .iter()
            .map(|c| ColumnSpec {
                name: c.name.clone(),
                kind: c.data.kind(),
            })
            .collect()
    }

    /// Takes the buffered rows as a batch; `None` when empty. The schema is kept.
    pub fn finish(&mut self) -> Result<Option<Batch>, ArrowError> {
        if self.rows == 0 {
            return Ok(None);
        }
        let mut fields = vec![
            Field::new("time", utc_micros(), false),
            Field::new("received_at", utc_micros(), false),
            Field::new("device_id", DataType::Utf8, false),
        ];
        let mut arrays: Vec<ArrayRef> = vec![
            Arc::new(self.time.finish()),
            Arc::new(self.received_at.finish()),
            Arc::new(self.device_id.finish()),
        ];
        for col in &mut self.columns {
            fields.push(Field::new(&*col.name, col.data.data_type(), true));
            arrays.push(col.data.finish());
        }
        self.rows = 0;
        let records = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?;
        let seqs = std::mem::take(&mut self.seqs).into();
        Ok(Some(Batch {
            table: self.table.clone(),
            records,
            seqs,
        }))
    }
}

#[cfg(test)]
mod tests;
