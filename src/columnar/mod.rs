//! Columnar: decoded messages → Arrow → Parquet. [`builder::TableBuilder`] keeps one table's
//! evolving schema and Arrow builders (new fields become new nullable columns, Int64 widens to
//! Float64, other type conflicts are refused so the message can go to `_rejected`);
//! [`encode`] sorts a finished batch by (`device_id`, `time`), splits it by hour partition and
//! writes Parquet with the configured codec, dictionaries, page statistics and a bloom filter
//! on `device_id`.

pub mod builder;
pub mod encode;

pub use builder::{Batch, Conflict, Refused, TableBuilder};
pub use encode::ParquetOptions;
