//! Batch → Parquet files. A batch is sorted by (hour, `device_id`, `time`), cut into one part
//! per UTC hour of the row time (the Hive partition `date=…/hour=…`), and each part is written
//! with the configured codec, dictionary encoding, page-level statistics (page index), a bloom
//! filter on `device_id` sized to the part, sorting-column metadata and the fleetlake version
//! in the key-value metadata. Pure CPU: the caller runs it off the async workers.

use std::collections::HashMap;
use std::io::Write;

use arrow::array::{Array, AsArray, Float64Array, Int64Array, StringArray, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::{DataType, Int64Type, TimestampMicrosecondType};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::Encoding;
use parquet::errors::ParquetError;
use parquet::file::metadata::{KeyValue, SortingColumn};
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterPropertiesBuilder};
use parquet::schema::types::ColumnPath;

use super::Batch;

const MICROS_PER_HOUR: i64 = 3_600_000_000;

/// One output file's rows: a single hour partition, sorted.
#[derive(Clone, Debug)]
pub struct Part {
    /// `YYYY-MM-DD` of the partition.
    pub date: String,
    /// `HH` of the partition.
    pub hour: String,
    /// Smallest message sequence number in the part.
    pub first_seq: u64,
    /// Largest message sequence number in the part.
    pub last_seq: u64,
    /// Distinct device ids (sizes the bloom filter).
    pub devices: usize,
    /// The rows.
    pub records: RecordBatch,
}

/// Row order by (hour, `device_id`, `time`, arrival): device ids are ranked once (a hash per
/// row, then one sort of the distinct ids), so the row sort compares integers, never strings.
/// Arrival order breaks ties, so a batch rebuilt from the WAL sorts exactly as before.
fn sort_order(
    hours: &Int64Array,
    device: &StringArray,
    time: &arrow::array::TimestampMicrosecondArray,
) -> UInt32Array {
    let n = device.len();
    let mut ids: HashMap<&str, u32> = HashMap::new();
    let id_of: Vec<u32> = (0..n)
        .map(|i| {
            let next = ids.len() as u32;
            *ids.entry(device.value(i)).or_insert(next)
        })
        .collect();
    let mut names: Vec<(&str, u32)> = ids.into_iter().collect();
    names.sort_unstable();
    let mut rank = vec![0u32; names.len()];
    for (r, (_, id)) in names.iter().enumerate() {
        rank[*id as usize] = r as u32;
    }
    let mut keys: Vec<(i64, u32, i64, u32)> = (0..n)
        .map(|i| {
            (
                hours.value(i),
                rank[id_of[i] as usize],
                time.value(i),
                i as u32,
            )
        })
        .collect();
    keys.sort_unstable();
    UInt32Array::from_iter_values(keys.into_iter().map(|k| k.3))
}

/// Sorts `batch` and cuts it into hour parts.
pub fn partition(batch: &Batch) -> Result<Vec<Part>, ArrowError> {
    let records = &batch.records;
    let time = records.column(0).as_primitive::<TimestampMicrosecondType>();
    let hours: Int64Array = time.unary(|t: i64| t.div_euclid(MICROS_PER_HOUR));
    let device = records.column(2).as_string::<i32>();
    let indices = sort_order(&hours, device, time);
    let sorted = take_record_batch(records, &indices)?;
    let device = sorted.column(2).as_string::<i32>();
    let order = indices.values();
    let hour_at = |i: usize| hours.value(order[i] as usize);
    let mut parts = Vec::new();
    let mut start = 0;
    while start < order.len() {
        let hour = hour_at(start);
        let mut end = start + 1;
        let mut devices = 1;
        while end < order.len() && hour_at(end) == hour {
            devices += usize::from(device.value(end) != device.value(end - 1));
            end += 1;
        }
        let seqs = order[start..end].iter().map(|&i| batch.seqs[i as usize]);
        let (first_seq, last_seq) = seqs.fold((u64::MAX, 0), |(lo, hi), s| (lo.min(s), hi.max(s)));
        let stamp = chrono::DateTime::from_timestamp(hour * 3600, 0).unwrap_or_default();
        parts.push(Part {
            date: stamp.format("%Y-%m-%d").to_string(),
            hour: stamp.format("%H").to_string(),
            first_seq,
            last_seq,
            devices,
            records: sorted.slice(start, end - start),
        });
        start = end;
    }
    Ok(parts)
}

/// Values of a column sampled to choose its encoding.
const SAMPLE: usize = 4096;

/// Whether most sampled values are distinct (a dictionary would hardly repeat an entry).
fn mostly_distinct<T: Copy>(values: impl Iterator<Item = T>, key: impl Fn(T) -> u64) -> bool {
    let mut sample: Vec<u64> = values.take(SAMPLE).map(key).collect();
    let n = sample.len();
    sample.sort_unstable();
    sample.dedup();
    n >= 64 && sample.len() * 4 > n
}

/// Most dictionary-encoded columns in one file. Each costs the writer a fixed ~60 KiB (its
/// dictionary's hash table) whatever the rows, so a 1,000-column table with every column on a
/// dictionary took ~60 MiB to write a 10-row file; past this many, columns are written
/// without one (plain, delta or byte-stream-split).
pub const MAX_DICTIONARY_COLUMNS: usize = 64;

/// Encodings per column, from the data: integer and timestamp columns whose values are mostly
/// distinct (times, counters, sequence numbers) skip the dictionary and are delta-encoded
/// (sorted by device and time, their deltas are small and regular); such float columns are
/// byte-stream-split, which ZSTD compresses far better than plain doubles. Low-cardinality
/// columns keep the dictionary (with the delta encoding as its fallback for integers), the
/// first [`MAX_DICTIONARY_COLUMNS`] of them in file order (`device_id` among them).
fn encodings(mut b: WriterPropertiesBuilder, records: &RecordBatch) -> WriterPropertiesBuilder {
    let mut dictionaries = 0;
    for (field, column) in records.schema().fields().iter().zip(records.columns()) {
        let path = ColumnPath::from(field.name().as_str());
        let (distinct, encoding) = match field.data_type() {
            DataType::Int64 => (
                mostly_distinct(column.as_primitive::<Int64Type>().iter().flatten(), |v| {
                    v as u64
                }),
                Some(Encoding::DELTA_BINARY_PACKED),
            ),
            DataType::Timestamp(_, _) => (
                mostly_distinct(
                    column
                        .as_primitive::<TimestampMicrosecondType>()
                        .iter()
                        .flatten(),
                    |v| v as u64,
                ),
                Some(Encoding::DELTA_BINARY_PACKED),
            ),
            DataType::Float64 => match column.as_any().downcast_ref::<Float64Array>() {
                Some(f) => (
                    mostly_distinct(f.iter().flatten(), f64::to_bits),
                    Some(Encoding::BYTE_STREAM_SPLIT),
                ),
                None => continue,
            },
            // Parquet has no dictionary for booleans.
            DataType::Boolean => continue,
            _ => (false, None),
        };
        if let Some(encoding) = encoding {
            b = b.set_column_encoding(path.clone(), encoding);
        }
        if distinct || dictionaries >= MAX_DICTIONARY_COLUMNS {
            b = b.set_column_dictionary_enabled(path, false);
        } else {
            dictionaries += 1;
        }
    }
    b
}

/// Writer properties for a part.
/// How files are written (validated `[parquet]`).
#[derive(Clone, Copy, Debug)]
pub struct ParquetOptions {
    /// Codec with level.
    pub compression: parquet::basic::Compression,
    /// Rows per row group.
    pub row_group_rows: usize,
}

fn properties(opts: &ParquetOptions, records: &RecordBatch, devices: usize) -> WriterProperties {
    let device = ColumnPath::from("device_id");
    let sorted_by = |column_idx| SortingColumn {
        column_idx,
        descending: false,
        nulls_first: false,
    };
    let b = WriterProperties::builder()
        .set_compression(opts.compression)
        .set_dictionary_enabled(true)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(opts.row_group_rows))
        .set_column_bloom_filter_enabled(device.clone(), true)
        .set_column_bloom_filter_max_ndv(device, devices.max(1) as u64)
        .set_sorting_columns(Some(vec![sorted_by(2), sorted_by(0)]))
        .set_key_value_metadata(Some(vec![KeyValue::new(
            "fleetlake.version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        )]));
    encodings(b, records).build()
}

/// Writes `part` as a complete Parquet file into `out` and returns `out`.
pub fn write_parquet<W: Write + Send>(
    part: &Part,
    opts: &ParquetOptions,
    out: W,
) -> Result<W, ParquetError> {
    let props = properties(opts, &part.records, part.devices);
    let mut writer = ArrowWriter::try_new(out, part.records.schema(), Some(props))?;
    writer.write(&part.records)?;
    writer.into_inner()
}

#[cfg(test)]
mod tests;
