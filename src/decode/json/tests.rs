use super::*;

const RX: i64 = 1_700_000_000_000_000;

fn ts() -> Vec<String> {
    vec!["ts".into(), "time".into(), "timestamp".into()]
}

fn one(payload: &str) -> Row {
    let rows = decode(payload.as_bytes(), &ts(), &[], RX).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rows.len(), 1);
    rows.into_iter().next().unwrap_or_else(|| unreachable!())
}

#[test]
fn a_reading_becomes_typed_fields_and_its_ts_becomes_the_row_time() {
    let row = one(r#"{"ts": 1767225600123, "temp": 21.5, "hum": 40, "ok": true, "fw": "1.2.0"}"#);
    assert_eq!(row.time, 1_767_225_600_123_000);
    let get = |k: &str| {
        row.fields
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(get("temp"), Some(Scalar::Float(21.5)));
    assert_eq!(get("hum"), Some(Scalar::Int(40)));
    assert_eq!(get("ok"), Some(Scalar::Bool(true)));
    assert_eq!(get("fw"), Some(Scalar::Str("1.2.0".into())));
    assert_eq!(get("ts"), None);
}

#[test]
fn epoch_units_are_told_apart_by_magnitude() {
    let want = 1_767_225_600_000_000;
    for stamp in [
        "1767225600",
        "1767225600000",
        "1767225600000000",
        "1767225600000000000",
        "1767225600.0",
    ] {
        assert_eq!(one(&format!(r#"{{"ts": {stamp}}}"#)).time, want, "{stamp}");
    }
    assert_eq!(one(r#"{"time": "2026-01-01T00:00:00Z"}"#).time, want);
}

#[test]
fn an_unparsable_time_field_stays_a_column_and_receive_time_is_used() {
    let row = one(r#"{"ts": "yesterday", "v": 1}"#);
    assert_eq!(row.time, RX);
    assert!(
        row.fields
            .iter()
            .any(|(n, v)| n == "ts" && *v == Scalar::Str("yesterday".into()))
    );
}

#[test]
fn nested_objects_flatten_with_dots_and_nulls_are_absent() {
    let row = one(r#"{"a": {"b": 1, "c": {"d": false}}, "n": null, "l": [1,2]}"#);
    let names: Vec<&str> = row.fields.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["a.b", "a.c.d", "l"]);
    assert_eq!(row.fields[2].1, Scalar::Str("[1,2]".into()));
}

#[test]
fn reserved_names_are_kept_with_a_payload_prefix() {
    let rows =
        decode(br#"{"device_id": "x", "site": "y"}"#, &ts(), &["site"], RX).unwrap_or_default();
    let names: Vec<&str> = rows[0].fields.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["payload_device_id", "payload_site"]);
}

#[test]
fn an_array_of_objects_gives_one_row_each() {
    let rows = decode(br#"[{"v": 1}, {"v": 2}, {"v": 3}]"#, &ts(), &[], RX).unwrap_or_default();
    assert_eq!(rows.len(), 3);
}

#[test]
fn bad_payloads_say_why() {
    let err = |p: &[u8]| decode(p, &ts(), &[], RX).err();
    assert_eq!(err(b"\xff\xfe"), Some(DecodeError::NotUtf8));
    assert!(matches!(err(b"{not json"), Some(DecodeError::NotJson(_))));
    assert_eq!(err(b"42"), Some(DecodeError::NotAnObject("number")));
    assert_eq!(err(b"[1]"), Some(DecodeError::ArrayItem("number")));
    assert_eq!(
        err(br#"[{"a": 1}, "x"]"#).map(|e| e.to_string()).as_deref(),
        Some("payload is a JSON array holding strings, expected an object or an array of objects")
    );
    assert_eq!(err(b"[]"), Some(DecodeError::EmptyArray));
}

#[test]
fn huge_integers_become_floats() {
    let row = one(r#"{"big": 18446744073709551615}"#);
    assert!(matches!(row.fields[0].1, Scalar::Float(_)));
}

#[test]
fn the_first_time_field_in_config_order_wins_wherever_it_stands_in_the_payload() {
    let row = one(r#"{"time": "2020-01-01T00:00:00Z", "ts": 1767225600, "v": 1}"#);
    assert_eq!(row.time, 1_767_225_600_000_000);
    let names: Vec<&str> = row.fields.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["payload_time", "v"],
        "the losing time field is kept, renamed as reserved"
    );
    let row = one(r#"{"ts": "bad", "time": 1767225600}"#);
    assert_eq!(row.time, 1_767_225_600_000_000);
    assert_eq!(row.fields, [("ts".to_string(), Scalar::Str("bad".into()))]);
}

#[test]
fn trailing_bytes_after_the_json_value_are_an_error() {
    let err = decode(br#"{"a": 1} x"#, &ts(), &[], RX).err();
    assert!(matches!(err, Some(DecodeError::NotJson(_))), "{err:?}");
}

#[test]
fn fields_keep_payload_order_and_escaped_strings_decode() {
    let row = one(r#"{"z": 1, "a": "line\nbreak", "m": -5}"#);
    let names: Vec<&str> = row.fields.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["z", "a", "m"]);
    assert_eq!(row.fields[1].1, Scalar::Str("line\nbreak".into()));
    assert_eq!(row.fields[2].1, Scalar::Int(-5));
}

#[test]
fn floats_parse_to_the_nearest_double() {
    // Without serde_json's `float_roundtrip`, this came out one unit in the last place off.
    let row = one(r#"{"v": 90.83333333433333, "w": 2.2250738585072014e-308}"#);
    assert_eq!(row.fields[0].1, Scalar::Float(90.833_333_334_333_33));
    assert_eq!(row.fields[1].1, Scalar::Float(f64::MIN_POSITIVE));
}

#[test]
fn nesting_past_128_levels_is_refused_with_a_reason() {
    let deep = |n: usize| format!("{}1{}", r#"{"a":"#.repeat(n), "}".repeat(n));
    assert!(decode(deep(100).as_bytes(), &ts(), &[], 0).is_ok());
    let err = decode(deep(200).as_bytes(), &ts(), &[], 0).map(|_| ());
    let text = err.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(text.contains("recursion limit"), "{text}");
}
