//! Columnar: decoded messages → Arrow → Parquet. [`builder::TableBuilder`] keeps one table's
//! evolving schema and Arrow builders (new fields become new nullable columns with the type
//! [`builder::Kind::infer`] gives, a value of another type is refused so the message can go to
//! `_rejected`); [`schema`] keeps each table's columns under `node.data_dir` across restarts;
//! [`encode`] sorts a finished batch by (`device_id`, `time`), splits it by hour partition and
//! writes Parquet with the configured codec, dictionaries, page statistics and a bloom filter
//! on `device_id`.

pub mod builder;
pub mod encode;
pub mod schema;

pub use builder::{Batch, Conflict, Kind, Refused, TableBuilder};
pub use encode::ParquetOptions;
pub use schema::{ColumnSpec, Declared, DeclaredColumn, SchemaDir, TableSchema, UnknownFields};
