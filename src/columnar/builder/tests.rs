use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, Int64Type};
use bytes::Bytes;

use super::*;
use crate::columnar::{ColumnSpec, Declared, DeclaredColumn, UnknownFields};
use crate::decode::Row;

fn msg(device: &str, fields: Vec<(&str, Scalar)>) -> Message {
    Message {
        table: Arc::from("t"),
        device_id: Arc::from(device),
        received_at: 5,
        columns: Vec::new(),
        rows: vec![Row {
            time: 1,
            fields: fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        }],
        topic: "a".into(),
        payload: Bytes::new(),
        seq: 0,
        source: crate::decode::Source::Mqtt,
        rejected: None,
        mqtt: crate::decode::MqttMeta::default(),
    }
}

fn finish(b: &mut TableBuilder) -> Batch {
    b.finish()
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("no batch"))
}

fn column_names(batch: &Batch) -> Vec<String> {
    batch
        .records
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect()
}

#[test]
fn a_field_first_seen_later_becomes_a_nullable_column_with_nulls_before() {
    let mut b = TableBuilder::new(Arc::from("t"));
    b.append(&msg("d1", vec![("a", Scalar::Int(1))]), 0)
        .unwrap_or_else(|e| panic!("{e}"));
    b.append(
        &msg(
            "d2",
            vec![("a", Scalar::Int(2)), ("b", Scalar::Str("x".into()))],
        ),
        1,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let batch = finish(&mut b);
    assert_eq!(
        column_names(&batch),
        ["time", "received_at", "device_id", "a", "b"]
    );
    let col_b = batch.records.column(4).as_string::<i32>();
    assert!(col_b.is_null(0));
    assert_eq!(col_b.value(1), "x");
    assert_eq!(&*batch.seqs, &[0, 1]);
}

#[test]
fn every_number_is_float64_whatever_comes_first_so_the_type_never_changes() {
    // Int first, then a fraction; and the other way round: the same column type.
    for order in [
        [Scalar::Int(40), Scalar::Float(40.5)],
        [Scalar::Float(40.5), Scalar::Int(40)],
    ] {
        let mut b = TableBuilder::new(Arc::from("t"));
        for (seq, v) in order.iter().enumerate() {
            b.append(&msg("d", vec![("v", v.clone())]), seq as u64)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        b.append(&msg("d", vec![]), 2)
            .unwrap_or_else(|e| panic!("{e}"));
        let batch = finish(&mut b);
        let v = batch.records.column(3).as_primitive::<Float64Type>();
        let values: Vec<Option<f64>> = v.iter().collect();
        let want: Vec<Option<f64>> = order
            .iter()
            .map(|s| match s {
                Scalar::Int(i) => Some(*i as f64),
                Scalar::Float(f) => Some(*f),
                _ => None,
            })
            .chain([None])
            .collect();
        assert_eq!(values, want);
        assert_eq!(b.schema()[0].kind, Kind::Float);
    }
}

#[test]
fn a_stored_schema_gives_its_columns_and_types_before_any_row() {
    let stored = [
        ColumnSpec {
            name: Arc::from("count"),
            kind: Kind::Int,
        },
        ColumnSpec {
            name: Arc::from("fw"),
            kind: Kind::Str,
        },
    ];
    let mut b = TableBuilder::new(Arc::from("t")).with_schema(&stored);
    // An integer into the stored Int64 column stays exact; a fraction does not fit it.
    b.append(&msg("d", vec![("count", Scalar::Int((1 << 53) + 1))]), 0)
        .unwrap_or_else(|e| panic!("{e}"));
    let err = b.append(&msg("d", vec![("count", Scalar::Float(1.5))]), 1);
    assert_eq!(
        err.map_err(|e| e.to_string()),
        Err("type conflict: column `count` is int64, this value is float64".to_string())
    );
    let batch = finish(&mut b);
    assert_eq!(
        column_names(&batch),
        ["time", "received_at", "device_id", "count", "fw"]
    );
    let count = batch.records.column(3).as_primitive::<Int64Type>();
    assert_eq!(count.value(0), (1 << 53) + 1);
    assert!(batch.records.column(4).is_null(0));
    assert_eq!(b.schema(), stored);
}

#[test]
fn a_conflicting_type_refuses_the_whole_message_and_leaves_the_builder_unchanged() {
    let mut b = TableBuilder::new(Arc::from("t"));
    b.append(&msg("d", vec![("v", Scalar::Int(1))]), 0)
        .unwrap_or_else(|e| panic!("{e}"));
    let err = b.append(
        &msg(
            "d",
            vec![("w", Scalar::Int(1)), ("v", Scalar::Str("x".into()))],
        ),
        1,
    );
    assert_eq!(
        err,
        Err(Refused::Type(Conflict {
            field: "v".into(),
            column: Kind::Float,
            value: Kind::Str
        }))
    );
    assert_eq!(b.rows(), 1);
    let batch = finish(&mut b);
    assert_eq!(
        column_names(&batch),
        ["time", "received_at", "device_id", "v"]
    );
}

#[test]
fn a_conflict_inside_one_array_message_is_caught_before_appending() {
    let mut b = TableBuilder::new(Arc::from("t"));
    let mut m = msg("d", vec![("v", Scalar::Int(1))]);
    m.rows.push(Row {
        time: 2,
        fields: vec![("v".into(), Scalar::Bool(true))],
    });
    assert!(b.append(&m, 0).is_err());
    assert_eq!(b.rows(), 0);
}

#[test]
fn the_schema_outlives_a_flush_so_types_stay_stable_across_files() {
    let mut b = TableBuilder::new(Arc::from("t"));
    b.append(&msg("d", vec![("v", Scalar::Float(1.5))]), 0)
        .unwrap_or_else(|e| panic!("{e}"));
    finish(&mut b);
    b.append(&msg("d", vec![("v", Scalar::Int(2))]), 1)
        .unwrap_or_else(|e| panic!("{e}"));
    let batch = finish(&mut b);
    assert_eq!(
        batch
            .records
            .column(3)
            .as_primitive::<Float64Type>()
            .value(0),
        2.0
    );
    assert!(b.finish().ok().flatten().is_none());
}

#[test]
fn topic_columns_are_strings_on_every_row() {
    let mut b = TableBuilder::new(Arc::from("t"));
    let mut m = msg("d", vec![("n", Scalar::Int(3))]);
    m.columns.push((Arc::from("site"), "north".into()));
    b.append(&m, 0).unwrap_or_else(|e| panic!("{e}"));
    let batch = finish(&mut b);
    assert_eq!(
        column_names(&batch),
        ["time", "received_at", "device_id", "site", "n"]
    );
    assert_eq!(
        batch
            .records
            .column(4)
            .as_primitive::<Float64Type>()
            .value(0),
        3.0
    );
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    fn scalar() -> impl Strategy<Value = Scalar> {
        prop_oneof![
            any::<i64>().prop_map(Scalar::Int),
            (-1e6f64..1e6).prop_map(Scalar::Float),
            any::<bool>().prop_map(Scalar::Bool),
            "[a-z]{0,4}".prop_map(Scalar::Str),
        ]
    }

    fn message() -> impl Strategy<Value = Vec<(String, Scalar)>> {
        prop::collection::vec(("[abcd]", scalar()), 0..4)
    }

    proptest! {
        #[test]
        fn any_message_sequence_keeps_columns_aligned_and_conflicts_change_nothing(msgs in prop::collection::vec(message(), 1..60)) {
            let mut b = TableBuilder::new(Arc::from("t"));
            let mut accepted = 0;
            for (seq, fields) in msgs.into_iter().enumerate() {
                let before = b.rows();
                let fields = fields.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
                match b.append(&msg("d", fields), seq as u64) {
                    Ok(_) => { accepted += 1; prop_assert_eq!(b.rows(), before + 1); }
                    Err(_) => prop_assert_eq!(b.rows(), before),
                }
                for col in &b.columns {
                    prop_assert_eq!(col.data.len(), b.rows());
                }
            }
            let rows = b.finish().map_err(|e| TestCaseError::fail(e.to_string()))?.map_or(0, |batch| batch.records.num_rows());
            prop_assert_eq!(rows, accepted);
        }
    }
}

#[test]
fn a_message_past_max_columns_is_refused_whole_and_the_schema_stays_bounded() {
    let mut b = TableBuilder::new(Arc::from("t")).with_max_columns(3);
    let two = msg("d", vec![("a", Scalar::Int(1)), ("b", Scalar::Int(2))]);
    assert!(b.append(&two, 0).is_ok());
    let three = msg("d", vec![("c", Scalar::Int(3)), ("d", Scalar::Int(4))]);
    let refused = b.append(&three, 1);
    assert!(
        matches!(&refused, Err(Refused::TooManyColumns { field, max: 3 }) if field == "d"),
        "{refused:?}"
    );
    assert_eq!(
        refused.err().map(|r| r.reason()),
        Some(RejectReason::TooManyColumns)
    );
    assert_eq!(
        (b.columns(), b.rows()),
        (2, 1),
        "nothing of the refused message"
    );
    let known = msg("d", vec![("a", Scalar::Int(5)), ("c", Scalar::Int(6))]);
    assert!(b.append(&known, 2).is_ok(), "one more column still fits");
    assert_eq!(b.columns(), 3);
}

#[test]
fn an_empty_or_overlong_field_name_is_refused() {
    let mut b = TableBuilder::new(Arc::from("t"));
    let long = "k".repeat(crate::decode::MAX_FIELD_NAME + 1);
    for name in ["", long.as_str()] {
        let refused = b.append(&msg("d", vec![(name, Scalar::Int(1))]), 0);
        assert_eq!(
            refused.err().map(|r| r.reason()),
            Some(RejectReason::FieldName)
        );
    }
    let longest = "k".repeat(crate::decode::MAX_FIELD_NAME);
    assert!(
        b.append(&msg("d", vec![(&longest, Scalar::Int(1))]), 0)
            .is_ok()
    );
}

#[test]
fn a_delta_table_refuses_new_column_names_delta_forbids() {
    let mut b = TableBuilder::new(Arc::from("t")).with_forbidden_chars(DELTA_FORBIDDEN_CHARS);
    for name in ["temp C", "a=b", "x(1)", "tab\there"] {
        let refused = b.append(&msg("d", vec![(name, Scalar::Int(1))]), 0);
        let refused = refused.expect_err(name);
        assert_eq!(refused.reason(), RejectReason::FieldName);
        assert!(
            refused.to_string().contains("Delta Lake forbids"),
            "{refused}"
        );
    }
    assert!(
        b.append(&msg("d", vec![("a.b-c_d", Scalar::Int(1))]), 1)
            .is_ok()
    );
    assert_eq!(b.columns(), 1);
    // Without the rule (plain Parquet) the same names are columns.
    let mut plain = TableBuilder::new(Arc::from("t"));
    assert!(
        plain
            .append(&msg("d", vec![("temp C", Scalar::Int(1))]), 0)
            .is_ok()
    );
}

#[test]
fn a_row_is_charged_for_every_column_it_leaves_null() {
    let mut b = TableBuilder::new(Arc::from("t"));
    let wide: Vec<(String, Scalar)> = (0..100)
        .map(|i| (format!("k{i}"), Scalar::Float(1.0)))
        .collect();
    let wide: Vec<(&str, Scalar)> = wide.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let first = b.append(&msg("d", wide), 0).unwrap_or_default();
    // time, received_at, seq (24) + device id offset and text (4 + 1) + 100 x 8 + 100 bits.
    assert_eq!(first, 29 + 800 + 12);
    let narrow = b.append(&msg("d", vec![("k0", Scalar::Float(2.0))]), 1);
    assert_eq!(
        narrow.ok(),
        Some(first),
        "the 99 absent columns still take their slots"
    );
}

fn declared(unknown_fields: UnknownFields) -> Declared {
    let column = |name: &str, kind, required, from: Option<&str>| DeclaredColumn {
        name: Arc::from(name),
        kind,
        required,
        from: from.map(Arc::from),
    };
    Declared {
        table: "t".into(),
        columns: vec![
            column("temp", Kind::Float, true, None),
            column("count", Kind::Int, false, None),
            column("at", Kind::Timestamp, false, None),
            column("a_b", Kind::Str, false, Some("a.b")),
            column("raw", Kind::Bytes, false, None),
        ],
        unknown_fields,
    }
}

#[test]
fn declared_columns_convert_what_fits_and_refuse_the_rest() {
    let mut b = TableBuilder::new(Arc::from("t")).with_declared(&declared(UnknownFields::Accept));
    let fields = vec![
        ("temp", Scalar::Int(21)),
        ("count", Scalar::Int(i64::MAX)),
        ("at", Scalar::Str("2026-01-01T00:00:01Z".into())),
        ("a.b", Scalar::Str("renamed".into())),
        ("raw", Scalar::Str("kept as bytes".into())),
        ("extra", Scalar::Int(1)),
    ];
    b.append(&msg("d", fields), 0)
        .unwrap_or_else(|e| panic!("{e}"));
    // An integral float fits Int64; an epoch in ms fits a timestamp.
    let fields = vec![
        ("temp", Scalar::Float(20.5)),
        ("count", Scalar::Float(5.0)),
        ("at", Scalar::Int(1_767_225_601_000)),
    ];
    b.append(&msg("d", fields), 1)
        .unwrap_or_else(|e| panic!("{e}"));
    let refused =
        |b: &mut TableBuilder, fields| b.append(&msg("d", fields), 2).map_err(|e| e.to_string());
    assert_eq!(
        refused(
            &mut b,
            vec![("temp", Scalar::Int(1)), ("count", Scalar::Float(1.5))]
        ),
        Err("type conflict: column `count` is int64, this value is float64".into())
    );
    assert_eq!(
        refused(
            &mut b,
            vec![("temp", Scalar::Int(1)), ("at", Scalar::Str("soon".into()))]
        ),
        Err("type conflict: column `at` is timestamp, this value is string".into())
    );
    assert_eq!(
        refused(&mut b, vec![("count", Scalar::Int(1))]),
        Err("required field `temp` is missing or null".into())
    );
    let batch = finish(&mut b);
    assert_eq!(
        column_names(&batch),
        [
            "time",
            "received_at",
            "device_id",
            "temp",
            "count",
            "at",
            "a_b",
            "raw",
            "extra"
        ]
    );
    let r = &batch.records;
    assert_eq!(
        r.column(4).as_primitive::<Int64Type>().values(),
        &[i64::MAX, 5]
    );
    let at = r
        .column(5)
        .as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
    assert_eq!(at.values(), &[1_767_225_601_000_000, 1_767_225_601_000_000]);
    assert_eq!(r.column(6).as_string::<i32>().value(0), "renamed");
    assert_eq!(r.column(7).as_binary::<i32>().value(0), b"kept as bytes");
    assert_eq!(
        r.column(8).data_type(),
        &arrow::datatypes::DataType::Float64
    );
}

#[test]
fn unknown_fields_are_refused_or_dropped_and_counted_as_declared() {
    let mut b = TableBuilder::new(Arc::from("t")).with_declared(&declared(UnknownFields::Reject));
    let err = b.append(
        &msg("d", vec![("temp", Scalar::Int(1)), ("x", Scalar::Int(1))]),
        0,
    );
    assert_eq!(
        err.map_err(|e| e.to_string()),
        Err("field `x` is not a declared column of table `t` (unknown_fields = \"reject\")".into())
    );
    let mut b = TableBuilder::new(Arc::from("t")).with_declared(&declared(UnknownFields::Drop));
    let fields = vec![
        ("x", Scalar::Int(1)),
        ("temp", Scalar::Int(1)),
        ("y", Scalar::Bool(true)),
    ];
    b.append(&msg("d", fields), 0)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(b.take_dropped(), 2);
    assert_eq!(b.take_dropped(), 0);
    assert_eq!(b.columns(), 5, "no column for dropped fields");
}
