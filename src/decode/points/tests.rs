use bytes::Bytes;

use super::*;
use crate::decode::proto::field::Value;

fn field(name: &str, value: Value) -> Field {
    Field {
        name: name.into(),
        value: Some(value),
    }
}

fn point(table: &str, device: &str, t: i64, fields: Vec<Field>) -> Point {
    Point {
        table: table.into(),
        device_id: device.into(),
        time_unix_nano: t,
        fields,
    }
}

#[test]
fn good_points_pass_the_check() {
    let p = point("", "d1", 0, vec![field("temp", Value::DoubleValue(1.5))]);
    assert!(check(&[p]).is_empty());
}

#[test]
fn every_bad_point_is_named() {
    let points = vec![
        point("", "", 0, vec![]),
        point("_x", "d", 0, vec![]),
        point("t", "d", -1, vec![]),
        point(
            "t",
            "d",
            0,
            vec![
                field("", Value::IntValue(1)),
                field("time", Value::IntValue(1)),
                field("a", Value::IntValue(1)),
                field("a", Value::IntValue(2)),
            ],
        ),
        point("t", "good", 5, vec![field("a", Value::BoolValue(true))]),
    ];
    let errors: Vec<(u32, String)> = check(&points)
        .into_iter()
        .map(|e| (e.index, e.field))
        .collect();
    assert_eq!(
        errors,
        vec![
            (0, "device_id".to_string()),
            (1, "table".into()),
            (2, "time_unix_nano".into()),
            (3, "fields[0].name".into()),
            (3, "fields[1].name".into()),
            (3, "fields[3].name".into()),
        ]
    );
}

#[test]
fn errors_are_capped() {
    let points: Vec<Point> = (0..500).map(|_| point("", "", 0, vec![])).collect();
    assert_eq!(check(&points).len(), MAX_ERRORS);
}

#[test]
fn consecutive_points_of_one_device_and_table_share_a_message() {
    let default: Arc<str> = Arc::from("telemetry");
    let points = vec![
        point("", "d1", 2_000, vec![field("a", Value::IntValue(1))]),
        point(
            "telemetry",
            "d1",
            3_999,
            vec![field("a", Value::IntValue(2))],
        ),
        point(
            "",
            "d2",
            0,
            vec![field("s", Value::StringValue("x".into()))],
        ),
        point(
            "other",
            "d2",
            0,
            vec![field("b", Value::BytesValue(Bytes::from_static(b"\0\x01")))],
        ),
        point(
            "",
            "d1",
            0,
            vec![Field {
                name: "n".into(),
                value: None,
            }],
        ),
    ];
    let msgs = to_messages(points, &default, 77);
    let shape: Vec<(&str, &str, usize)> = msgs
        .iter()
        .map(|m| (&*m.table, &*m.device_id, m.rows.len()))
        .collect();
    assert_eq!(
        shape,
        vec![
            ("telemetry", "d1", 2),
            ("telemetry", "d2", 1),
            ("other", "d2", 1),
            ("telemetry", "d1", 1),
        ]
    );
    assert_eq!(msgs[0].rows[0].time, 2);
    assert_eq!(msgs[0].rows[1].time, 3, "ns become µs, rounding down");
    assert_eq!(msgs[1].rows[0].time, 77, "no time: the receive time");
    assert_eq!(
        msgs[0].rows[1].fields,
        vec![("a".to_string(), Scalar::Int(2))]
    );
    assert_eq!(
        msgs[2].rows[0].fields,
        vec![(
            "b".to_string(),
            Scalar::Bytes(Bytes::from_static(b"\0\x01"))
        )]
    );
    assert!(
        msgs[3].rows[0].fields.is_empty(),
        "a field without a value is null"
    );
    assert!(
        msgs.iter()
            .all(|m| m.source == Source::Grpc && m.topic.is_empty())
    );
}

#[test]
fn a_record_replays_into_the_same_message() {
    let default: Arc<str> = Arc::from("telemetry");
    let points = vec![
        point("", "d1", 1_000, vec![field("a", Value::DoubleValue(0.5))]),
        point("", "d1", 2_000, vec![field("b", Value::BoolValue(false))]),
        point(
            "x",
            "d9",
            0,
            vec![field("c", Value::StringValue("é".into()))],
        ),
    ];
    let msgs = to_messages(points, &default, 55);
    let client: Arc<str> = Arc::from("grpc:test");
    for m in &msgs {
        // Replayed with another default table: the record names its own.
        let again = from_record(m.payload.clone(), &client, 55);
        assert_eq!(again.table, m.table);
        assert_eq!(again.device_id, m.device_id);
        assert_eq!(again.rows, m.rows);
        assert_eq!(again.payload, m.payload);
        assert_eq!(again.source, Source::Grpc);
    }
}

#[test]
fn a_damaged_record_becomes_a_rejected_row() {
    let client: Arc<str> = Arc::from("grpc:test");
    let msg = from_record(Bytes::from_static(b"\xff\xff\xff"), &client, 1);
    assert!(msg.is_rejected());
    let two = to_messages(
        vec![point("a", "d", 0, vec![]), point("b", "d", 0, vec![])],
        &Arc::from("t"),
        1,
    );
    let mut both = two[0].payload.to_vec();
    both.extend_from_slice(&two[1].payload);
    assert!(from_record(Bytes::from(both), &client, 1).is_rejected());
}
