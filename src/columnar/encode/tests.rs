use std::sync::Arc;

use arrow::array::AsArray;
use arrow::datatypes::TimestampMicrosecondType;
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};

use super::*;
use crate::columnar::TableBuilder;
use crate::decode::{Message, Row, Scalar};

const HOUR: i64 = 3_600_000_000;

fn batch(rows: &[(&str, i64, u64)]) -> Batch {
    let mut b = TableBuilder::new(Arc::from("t"));
    for (device, time, seq) in rows {
        let m = Message {
            table: Arc::from("t"),
            device_id: Arc::from(*device),
            received_at: 0,
            columns: Vec::new(),
            rows: vec![Row {
                time: *time,
                fields: vec![("v".into(), Scalar::Int(*time))],
            }],
            topic: String::new(),
            payload: Bytes::new(),
            seq: 0,
            source: crate::decode::Source::Mqtt,
            rejected: None,
            mqtt: crate::decode::MqttMeta::default(),
        };
        b.append(&m, *seq).unwrap_or_else(|e| panic!("{e}"));
    }
    b.finish().ok().flatten().unwrap_or_else(|| panic!("empty"))
}

fn opts() -> ParquetOptions {
    ParquetOptions {
        compression: Compression::ZSTD(ZstdLevel::default()),
        row_group_rows: 2,
    }
}

#[test]
fn rows_are_split_by_hour_and_sorted_by_device_then_time() {
    let b = batch(&[
        ("b", HOUR + 5, 10),
        ("a", 7, 11),
        ("b", 3, 12),
        ("a", 1, 13),
        ("c", HOUR, 14),
    ]);
    let parts = partition(&b).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(parts.len(), 2);
    let first = &parts[0];
    assert_eq!(
        (first.date.as_str(), first.hour.as_str()),
        ("1970-01-01", "00")
    );
    assert_eq!(
        (first.first_seq, first.last_seq, first.devices),
        (11, 13, 2)
    );
    let devices: Vec<&str> = first
        .records
        .column(2)
        .as_string::<i32>()
        .iter()
        .flatten()
        .collect();
    assert_eq!(devices, ["a", "a", "b"]);
    let times: Vec<i64> = first
        .records
        .column(0)
        .as_primitive::<TimestampMicrosecondType>()
        .values()
        .to_vec();
    assert_eq!(times, [1, 7, 3]);
    assert_eq!(
        (
            parts[1].hour.as_str(),
            parts[1].first_seq,
            parts[1].last_seq
        ),
        ("01", 10, 14)
    );
    assert_eq!(parts.iter().map(|p| p.records.num_rows()).sum::<usize>(), 5);
}

#[test]
fn a_written_file_reads_back_with_its_rows_row_groups_and_metadata() {
    let b = batch(&[("a", 1, 0), ("b", 2, 1), ("c", 3, 2)]);
    let parts = partition(&b).unwrap_or_else(|e| panic!("{e}"));
    let bytes = write_parquet(&parts[0], &opts(), Vec::new()).unwrap_or_else(|e| panic!("{e}"));
    let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(bytes))
        .unwrap_or_else(|e| panic!("{e}"));
    let meta = reader.metadata().clone();
    assert_eq!(meta.num_row_groups(), 2);
    let kv = meta
        .file_metadata()
        .key_value_metadata()
        .cloned()
        .unwrap_or_default();
    assert!(kv.iter().any(|k| k.key == "fleetlake.version"));
    let rg = meta.row_group(0);
    assert!(
        rg.column(2).bloom_filter_offset().is_some(),
        "device_id has a bloom filter"
    );
    assert!(
        rg.column(0).column_index_offset().is_some(),
        "page index written"
    );
    let total: usize = reader
        .build()
        .into_iter()
        .flatten()
        .flatten()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(total, 3);
}

/// A batch of `n` rows from one device: `counter` distinct and increasing, `level` one of 3
/// values, `reading` a distinct float.
fn mixed_batch(n: i64) -> Batch {
    // Integer columns are Int64 only when a schema says so (inference makes numbers Float64).
    let ints = ["counter", "level"].map(|name| crate::columnar::ColumnSpec {
        name: Arc::from(name),
        kind: crate::columnar::Kind::Int,
    });
    let mut b = TableBuilder::new(Arc::from("t")).with_schema(&ints);
    for i in 0..n {
        let fields = vec![
            ("counter".into(), Scalar::Int(i * 3)),
            ("level".into(), Scalar::Int(i % 3)),
            ("reading".into(), Scalar::Float(20.0 + i as f64 / 7.0)),
        ];
        let m = one_row(i * 1000, 1_000_000 + i * 7, fields);
        b.append(&m, i as u64).unwrap_or_else(|e| panic!("{e}"));
    }
    b.finish().ok().flatten().unwrap_or_else(|| panic!("empty"))
}

/// A message of device `d` with one row at `time`.
fn one_row(time: i64, received_at: i64, fields: Vec<(String, Scalar)>) -> Message {
    Message {
        table: Arc::from("t"),
        device_id: Arc::from("d"),
        received_at,
        columns: Vec::new(),
        rows: vec![Row { time, fields }],
        topic: String::new(),
        payload: Bytes::new(),
        seq: 0,
        source: crate::decode::Source::Mqtt,
        rejected: None,
        mqtt: crate::decode::MqttMeta::default(),
    }
}

#[test]
fn distinct_numbers_are_delta_or_byte_stream_split_encoded_and_read_back_exactly() {
    use parquet::basic::Encoding;
    let b = mixed_batch(1000);
    let parts = partition(&b).unwrap_or_else(|e| panic!("{e}"));
    let opts = ParquetOptions {
        row_group_rows: 1 << 20,
        ..opts()
    };
    let bytes = write_parquet(&parts[0], &opts, Vec::new()).unwrap_or_else(|e| panic!("{e}"));
    let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(bytes))
        .unwrap_or_else(|e| panic!("{e}"));
    let meta = reader.metadata().clone();
    let rg = meta.row_group(0);
    let encodings = |name: &str| {
        let c = (0..rg.num_columns())
            .find(|&c| rg.column(c).column_path().string() == name)
            .unwrap_or_else(|| panic!("no column {name}"));
        rg.column(c).encodings().collect::<Vec<_>>()
    };
    for name in ["time", "received_at", "counter"] {
        let e = encodings(name);
        assert!(e.contains(&Encoding::DELTA_BINARY_PACKED), "{name}: {e:?}");
        assert!(!e.contains(&Encoding::RLE_DICTIONARY), "{name}: {e:?}");
    }
    assert!(encodings("reading").contains(&Encoding::BYTE_STREAM_SPLIT));
    assert!(encodings("level").contains(&Encoding::RLE_DICTIONARY));
    assert!(encodings("device_id").contains(&Encoding::RLE_DICTIONARY));
    let read: Vec<RecordBatch> = reader
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{e}"));
    let read =
        arrow::compute::concat_batches(&read[0].schema(), &read).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(read, parts[0].records);
}

#[test]
fn few_rows_keep_the_dictionary() {
    let b = mixed_batch(10);
    let parts = partition(&b).unwrap_or_else(|e| panic!("{e}"));
    let bytes = write_parquet(&parts[0], &opts(), Vec::new()).unwrap_or_else(|e| panic!("{e}"));
    let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(bytes))
        .unwrap_or_else(|e| panic!("{e}"));
    let rg = reader.metadata().row_group(0);
    assert!(
        rg.column(0)
            .encodings()
            .any(|e| e == parquet::basic::Encoding::RLE_DICTIONARY)
    );
}

#[test]
fn the_integer_sort_orders_rows_like_a_string_sort_and_ties_by_arrival() {
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let names = ["dev-10", "dev-9", "a", "dev-1", "Z", "dev-100", ""];
    let rows: Vec<(String, i64)> = (0..5000)
        .map(|_| {
            let d = names[(next() % names.len() as u64) as usize].to_string();
            (d, (next() % (3 * HOUR as u64)) as i64 / 1000 * 1000)
        })
        .collect();
    let device = StringArray::from_iter_values(rows.iter().map(|r| r.0.as_str()));
    let time = arrow::array::TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.1));
    let hours = Int64Array::from_iter_values(rows.iter().map(|r| r.1.div_euclid(HOUR)));
    let got: Vec<u32> = sort_order(&hours, &device, &time).values().to_vec();
    let mut want: Vec<u32> = (0..rows.len() as u32).collect();
    want.sort_by(|&a, &b| {
        let (ra, rb) = (&rows[a as usize], &rows[b as usize]);
        (ra.1.div_euclid(HOUR), &ra.0, ra.1, a).cmp(&(rb.1.div_euclid(HOUR), &rb.0, rb.1, b))
    });
    assert_eq!(got, want);
}

#[test]
fn at_most_max_dictionary_columns_of_a_wide_file_get_a_dictionary() {
    use parquet::basic::Encoding;
    let mut b = TableBuilder::new(Arc::from("t"));
    for i in 0..10_i64 {
        let fields = (0..100)
            .map(|c| (format!("c{c}"), Scalar::Str(format!("{}", i % 2))))
            .collect();
        let m = one_row(i, 0, fields);
        b.append(&m, i as u64).unwrap_or_else(|e| panic!("{e}"));
    }
    let batch = b.finish().ok().flatten().unwrap_or_else(|| panic!("empty"));
    let parts = partition(&batch).unwrap_or_else(|e| panic!("{e}"));
    let bytes = write_parquet(&parts[0], &opts(), Vec::new()).unwrap_or_else(|e| panic!("{e}"));
    let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(bytes))
        .unwrap_or_else(|e| panic!("{e}"));
    let rg = reader.metadata().row_group(0);
    let with_dictionary = (0..rg.num_columns())
        .filter(|&c| {
            rg.column(c)
                .encodings()
                .any(|e| e == Encoding::RLE_DICTIONARY)
        })
        .count();
    assert_eq!(with_dictionary, MAX_DICTIONARY_COLUMNS);
    assert!(
        rg.column(2)
            .encodings()
            .any(|e| e == Encoding::RLE_DICTIONARY),
        "device_id keeps one"
    );
}
