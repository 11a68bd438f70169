//! Batch → Parquet files. A batch is sorted by (hour, `device_id`, `time`), cut into one part
//! per UTC hour of the row time (the Hive partition `date=…/hour=…`), and each part is written
//! with the configured codec, dictionary encoding, page-level statistics (page index), a bloom
//! filter on `device_id` sized to the part, sorting-column metadata and the fleetlake version
//! in the key-value metadata. Pure CPU: the caller runs it off the async workers.

use std::io::Write;
use std::sync::Arc;

use arrow::array::{AsArray, Int64Array};
use arrow::compute::{SortColumn, lexsort_to_indices, take_record_batch};
use arrow::datatypes::TimestampMicrosecondType;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::errors::ParquetError;
use parquet::file::metadata::{KeyValue, SortingColumn};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::Batch;
use crate::config::ParquetOptions;

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

/// Sorts `batch` and cuts it into hour parts.
pub fn partition(batch: &Batch) -> Result<Vec<Part>, ArrowError> {
    let records = &batch.records;
    let time = records.column(0).as_primitive::<TimestampMicrosecondType>();
    let hours: Int64Array = time.unary(|t: i64| t.div_euclid(MICROS_PER_HOUR));
    let sort = [
        SortColumn {
            values: Arc::new(hours.clone()),
            options: None,
        },
        SortColumn {
            values: records.column(2).clone(),
            options: None,
        },
        SortColumn {
            values: records.column(0).clone(),
            options: None,
        },
    ];
    let indices = lexsort_to_indices(&sort, None)?;
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

/// Writer properties for a part.
fn properties(opts: &ParquetOptions, devices: usize) -> WriterProperties {
    let device = ColumnPath::from("device_id");
    let sorted_by = |column_idx| SortingColumn {
        column_idx,
        descending: false,
        nulls_first: false,
    };
    WriterProperties::builder()
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
        )]))
        .build()
}

/// Writes `part` as a complete Parquet file into `out` and returns `out`.
pub fn write_parquet<W: Write + Send>(
    part: &Part,
    opts: &ParquetOptions,
    out: W,
) -> Result<W, ParquetError> {
    let props = properties(opts, part.devices);
    let mut writer = ArrowWriter::try_new(out, part.records.schema(), Some(props))?;
    writer.write(&part.records)?;
    writer.into_inner()
}

#[cfg(test)]
mod tests;
