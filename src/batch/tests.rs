use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::decode::{Row, Scalar};

fn limits() -> BatchLimits {
    BatchLimits {
        max_rows: 3,
        max_tables: 2,
        max_columns: 4,
        max_bytes: 1_000,
        max_age: Duration::from_secs(5),
    }
}

fn admitted(table: &str, value: Scalar, seq: u64) -> Message {
    Message {
        table: Arc::from(table),
        device_id: Arc::from("d"),
        received_at: 0,
        columns: Vec::new(),
        rows: vec![Row {
            time: 0,
            fields: vec![("v".into(), value)],
        }],
        topic: "t/x".into(),
        payload: Bytes::from_static(b"{\"v\":\"x\"}"),
        seq,
        source: crate::decode::Source::Mqtt,
        rejected: None,
        mqtt: crate::decode::MqttMeta::default(),
    }
}

/// One budget for every test (holdings only move within one budget).
static BUDGET: std::sync::LazyLock<crate::budget::Budget> =
    std::sync::LazyLock::new(|| crate::budget::Budget::new(1 << 30));

/// Pushes `msg` holding `cost` bytes of [`BUDGET`]; returns what the table did not keep
/// (given back when the group's holding drops).
fn push(b: &mut Batches, msg: Message, cost: usize, now: Instant, out: &mut Vec<Ready>) -> usize {
    let budget = &*BUDGET;
    let mut group = budget.try_acquire(cost).unwrap_or_default();
    b.push(msg, cost, &mut group, now, out);
    group.bytes()
}

fn batches() -> Batches {
    Batches::new(limits(), 1_000_000, Arc::new(Stats::default()))
}

#[test]
fn a_table_is_flushed_when_it_reaches_max_rows() {
    let mut b = batches();
    let now = Instant::now();
    let mut out = Vec::new();
    for seq in 0..3 {
        push(
            &mut b,
            admitted("t", Scalar::Int(1), seq),
            10,
            now,
            &mut out,
        );
    }
    assert_eq!(out.len(), 1);
    assert_eq!(
        (
            out[0].reason,
            out[0].held.bytes(),
            out[0].batch.records.num_rows()
        ),
        (FlushReason::Rows, 30, 3)
    );
    assert_eq!(b.buffered(), 0);
}

#[test]
fn a_table_is_flushed_when_its_columnar_bytes_reach_max_bytes() {
    let limits = BatchLimits {
        max_bytes: 60,
        ..limits()
    };
    let mut b = Batches::new(limits, 1_000_000, Arc::new(Stats::default()));
    let mut out = Vec::new();
    // One row takes 37 bytes (time, received_at, seq, device id "d", one Int64).
    push(
        &mut b,
        admitted("t", Scalar::Int(1), 0),
        10_000,
        Instant::now(),
        &mut out,
    );
    assert!(out.is_empty());
    push(
        &mut b,
        admitted("t", Scalar::Int(1), 1),
        10_000,
        Instant::now(),
        &mut out,
    );
    assert_eq!(out.first().map(|r| r.reason), Some(FlushReason::Bytes));
}

#[test]
fn budget_beyond_three_times_the_columnar_size_is_freed_on_append() {
    let mut b = batches();
    let mut out = Vec::new();
    let freed = push(
        &mut b,
        admitted("t", Scalar::Int(1), 0),
        1_000,
        Instant::now(),
        &mut out,
    );
    assert_eq!((freed, b.buffered()), (1_000 - 111, 111));
    b.flush_all(&mut out);
    assert_eq!(
        out[0].held.bytes(),
        111,
        "the batch gives back what it still holds when published"
    );
}

#[tokio::test(start_paused = true)]
async fn the_age_timer_starts_at_the_first_row_of_a_batch() {
    let mut b = batches();
    let mut out = Vec::new();
    assert_eq!(b.next_deadline(), None);
    let t0 = Instant::now();
    push(&mut b, admitted("t", Scalar::Int(1), 0), 10, t0, &mut out);
    tokio::time::advance(Duration::from_secs(3)).await;
    push(
        &mut b,
        admitted("t", Scalar::Int(1), 1),
        10,
        Instant::now(),
        &mut out,
    );
    assert_eq!(b.next_deadline(), Some(t0 + Duration::from_secs(5)));
    b.flush_due(t0 + Duration::from_secs(4), &mut out);
    assert!(out.is_empty());
    b.flush_due(t0 + Duration::from_secs(5), &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].reason, FlushReason::Age);
    assert_eq!(b.next_deadline(), None);
}

#[test]
fn a_type_conflict_sends_the_message_to_rejected_with_the_reason() {
    let mut b = batches();
    let mut out = Vec::new();
    let now = Instant::now();
    push(&mut b, admitted("t", Scalar::Int(1), 0), 10, now, &mut out);
    push(
        &mut b,
        admitted("t", Scalar::Str("x".into()), 1),
        10,
        now,
        &mut out,
    );
    b.flush_all(&mut out);
    let mut tables: Vec<(String, usize)> = out
        .iter()
        .map(|r| (r.batch.table.to_string(), r.batch.records.num_rows()))
        .collect();
    tables.sort();
    assert_eq!(tables, [("_rejected".into(), 1), ("t".into(), 1)]);
}

#[test]
fn budget_pressure_flushes_the_largest_table() {
    let mut b = Batches::new(limits(), 80, Arc::new(Stats::default()));
    let mut out = Vec::new();
    let now = Instant::now();
    push(
        &mut b,
        admitted("small", Scalar::Int(1), 0),
        10,
        now,
        &mut out,
    );
    let freed = push(
        &mut b,
        admitted("big", Scalar::Int(1), 1),
        95,
        now,
        &mut out,
    );
    assert_eq!(out.len(), 1);
    assert_eq!(
        (&*out[0].batch.table, out[0].reason),
        ("big", FlushReason::Budget)
    );
    assert_eq!(b.buffered(), 10);
    assert_eq!(freed, 0, "rows worth more than their cost keep all of it");
}

#[test]
fn tables_past_max_tables_go_to_rejected_with_the_reason() {
    let mut b = batches();
    let mut out = Vec::new();
    let now = Instant::now();
    for (seq, table) in ["a", "b", "c"].into_iter().enumerate() {
        push(
            &mut b,
            admitted(table, Scalar::Int(1), seq as u64),
            10,
            now,
            &mut out,
        );
    }
    b.flush_all(&mut out);
    let mut tables: Vec<String> = out.iter().map(|r| r.batch.table.to_string()).collect();
    tables.sort();
    assert_eq!(tables, ["_rejected", "a", "b"]);
    let rejected = out
        .iter()
        .find(|r| &*r.batch.table == "_rejected")
        .map(|r| r.batch.records.clone());
    let reason = rejected.map(|r| {
        let col = r.column_by_name("reason").cloned();
        col.map(|c| {
            arrow::array::AsArray::as_string::<i32>(&*c)
                .value(0)
                .to_string()
        })
    });
    assert!(
        reason
            .flatten()
            .is_some_and(|r| r.contains("batch.max_tables"))
    );
}

#[test]
fn low_water_is_the_oldest_message_still_buffered() {
    let mut b = batches();
    let mut out = Vec::new();
    let now = Instant::now();
    push(&mut b, admitted("b", Scalar::Int(1), 0), 10, now, &mut out);
    for seq in 1..=3 {
        push(
            &mut b,
            admitted("a", Scalar::Int(1), seq),
            10,
            now,
            &mut out,
        );
    }
    assert_eq!(out.len(), 1, "a reached max_rows");
    assert_eq!(
        (out[0].last_seq(), out[0].low_water),
        (3, 0),
        "b still holds 0"
    );
    b.flush_all(&mut out);
    assert_eq!(
        out[1].low_water, 4,
        "nothing buffered: everything up to the last seq"
    );
}

#[tokio::test(start_paused = true)]
async fn a_held_table_ignores_every_flush_rule_until_its_last_seq() {
    let mut b = Batches::new(limits(), 40, Arc::new(Stats::default()));
    let mut out = Vec::new();
    let t0 = Instant::now();
    b.hold(&Arc::from("a"), 5);
    // Five rows: past max_rows (3) and the pressure mark (40), and older than max_age.
    for seq in 1..=4 {
        push(&mut b, admitted("a", Scalar::Int(1), seq), 10, t0, &mut out);
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    b.flush_due(Instant::now(), &mut out);
    assert!(
        out.is_empty(),
        "held: {:?}",
        out.iter().map(|r| r.reason).collect::<Vec<_>>()
    );
    push(&mut b, admitted("a", Scalar::Int(1), 5), 10, t0, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(
        (
            out[0].reason,
            out[0].batch.records.num_rows(),
            out[0].last_seq()
        ),
        (FlushReason::Replay, 5, 5)
    );
    push(&mut b, admitted("a", Scalar::Int(1), 6), 10, t0, &mut out);
    assert_eq!(out.len(), 1, "the hold is over: normal rules again");
}

#[test]
fn a_hold_whose_last_message_never_comes_ends_at_the_first_later_message() {
    let mut b = batches();
    let mut out = Vec::new();
    let now = Instant::now();
    b.hold(&Arc::from("a"), 2);
    push(&mut b, admitted("a", Scalar::Int(1), 1), 10, now, &mut out);
    push(&mut b, admitted("b", Scalar::Int(1), 7), 10, now, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(
        (&*out[0].batch.table, out[0].reason),
        ("a", FlushReason::Replay)
    );
}

#[test]
fn the_budget_returns_to_zero_whether_a_batch_is_published_rejected_or_dropped_unpublished() {
    let budget = crate::budget::Budget::new(1 << 20);
    let mut b = batches();
    let mut out = Vec::new();
    let msgs = vec![
        admitted("t", Scalar::Int(1), 0),
        admitted("t", Scalar::Int(2), 1),
        // A type conflict: stored in `_rejected`, holding its share there.
        admitted("t", Scalar::Str("x".into()), 2),
    ];
    let cost: usize = msgs.iter().map(Message::cost).sum();
    let held = budget.try_acquire(cost).unwrap_or_default();
    push_group(&mut b, Admitted { msgs, held }, Instant::now(), &mut out);
    let buffered = budget.in_use();
    assert!(
        buffered > 0 && buffered < cost,
        "the tables keep part of the group's {cost} bytes, the rest went back: {buffered}"
    );
    assert_eq!(buffered, b.buffered());
    b.flush_all(&mut out);
    assert_eq!(out.len(), 2, "`t` and `_rejected`");
    assert_eq!(out.iter().map(|r| r.held.bytes()).sum::<usize>(), buffered);
    // Published: the publisher drops the batch after its last file.
    let published = out.remove(0);
    drop(published);
    assert!(budget.in_use() > 0);
    // Never published (shutdown past the grace, a failed pipeline): dropped all the same.
    drop(out);
    assert_eq!(budget.in_use(), 0);
    // A flush of a table with no rows hands nothing on and holds nothing.
    let mut none = Vec::new();
    b.flush_all(&mut none);
    assert!(none.is_empty());
    assert_eq!(budget.in_use(), 0);
}

#[test]
fn a_batch_that_cannot_be_finished_gives_its_budget_back() {
    let budget = crate::budget::Budget::new(1_000);
    let held = budget.try_acquire(400).unwrap_or_default();
    let failed = Err(arrow::error::ArrowError::ComputeError("test".into()));
    assert!(ready("t", failed, held, FlushReason::Age, 0, None).is_none());
    assert_eq!(budget.in_use(), 0);
}

#[test]
fn messages_past_max_columns_go_to_rejected_with_the_reason_and_are_counted() {
    let stats = Arc::new(Stats::default());
    let mut b = Batches::new(limits(), 1_000_000, stats.clone());
    let mut out = Vec::new();
    let now = Instant::now();
    for seq in 0..6 {
        let mut msg = admitted("t", Scalar::Int(1), seq);
        msg.rows[0].fields = vec![(format!("k{seq}"), Scalar::Float(1.0))];
        push(&mut b, msg, 10, now, &mut out);
    }
    b.flush_all(&mut out);
    let rows = |table: &str| {
        out.iter()
            .filter(|r| &*r.batch.table == table)
            .map(|r| r.batch.records.num_rows())
            .sum::<usize>()
    };
    assert_eq!((rows("t"), rows("_rejected")), (4, 2), "max_columns is 4");
    let widest = out
        .iter()
        .filter(|r| &*r.batch.table == "t")
        .map(|r| r.batch.records.num_columns())
        .max();
    assert_eq!(widest, Some(3 + 4));
    let counted = stats
        .rejected_by_reason()
        .into_iter()
        .find(|(why, _)| *why == RejectReason::TooManyColumns);
    assert_eq!(counted, Some((RejectReason::TooManyColumns, 2)));
}

#[test]
fn a_batch_carries_its_tables_schema_only_when_columns_were_added() {
    let stored = TableSchema::new(
        "t",
        vec![crate::columnar::ColumnSpec {
            name: Arc::from("v"),
            kind: crate::columnar::Kind::Str,
        }],
    );
    let mut b = batches().with_schemas(HashMap::from([("t".to_string(), stored.clone())]));
    let now = Instant::now();
    let mut out = Vec::new();
    // The stored column is there from the first row: a number for it is a type conflict.
    push(&mut b, admitted("t", Scalar::Int(1), 0), 10, now, &mut out);
    push(
        &mut b,
        admitted("t", Scalar::Str("a".into()), 1),
        10,
        now,
        &mut out,
    );
    b.flush_all(&mut out);
    let t = out.iter().find(|r| &*r.batch.table == "t");
    assert_eq!(
        t.map(|r| (r.batch.records.num_rows(), r.schema.is_none())),
        Some((1, true))
    );
    let rejected = out.iter().find(|r| &*r.batch.table == REJECTED_TABLE);
    assert!(rejected.is_some_and(|r| r.schema.is_none()));
    out.clear();
    // A new column: the next batch carries the grown schema, the one after it does not.
    let mut m = admitted("t", Scalar::Str("b".into()), 2);
    m.rows[0].fields.push(("w".into(), Scalar::Bool(true)));
    push(&mut b, m, 10, now, &mut out);
    b.flush_all(&mut out);
    push(
        &mut b,
        admitted("t", Scalar::Str("c".into()), 3),
        10,
        now,
        &mut out,
    );
    b.flush_all(&mut out);
    let schemas: Vec<Option<Vec<String>>> = out
        .iter()
        .map(|r| {
            r.schema.as_ref().map(|s| {
                s.columns
                    .iter()
                    .map(|c| format!("{}:{}", c.name, c.kind))
                    .collect()
            })
        })
        .collect();
    assert_eq!(
        schemas,
        [
            Some(vec!["v:string".to_string(), "w:bool".to_string()]),
            None
        ]
    );
}

#[test]
fn declared_columns_missing_from_the_stored_schema_are_stored_with_the_first_batch() {
    let declared = Declared {
        table: "t".into(),
        columns: vec![crate::columnar::DeclaredColumn {
            name: Arc::from("n"),
            kind: crate::columnar::Kind::Int,
            required: false,
            from: None,
        }],
        unknown_fields: crate::columnar::UnknownFields::Accept,
    };
    let mut b = batches().with_declared(&[declared]);
    let now = Instant::now();
    let mut out = Vec::new();
    push(&mut b, admitted("t", Scalar::Int(1), 0), 10, now, &mut out);
    b.flush_all(&mut out);
    let schema = out[0].schema.as_ref().map(|s| {
        s.columns
            .iter()
            .map(|c| format!("{}:{}", c.name, c.kind))
            .collect::<Vec<_>>()
    });
    assert_eq!(
        schema,
        Some(vec!["n:int64".to_string(), "v:float64".to_string()])
    );
}

#[test]
fn rows_outside_the_clock_window_are_retimed_rejected_or_accepted_and_counted() {
    let now_us = 1_767_225_600_000_000; // 2026-01-01
    let at = |time: i64, seq| {
        let mut m = admitted("t", Scalar::Int(1), seq);
        m.received_at = now_us;
        m.rows[0].time = time;
        m
    };
    let year_2100 = 4_102_444_800_000_000;
    let in_window = now_us - 3_600_000_000;
    let run = |action| {
        let clock = ClockPolicy {
            action,
            ..ClockPolicy::default()
        };
        let mut b = batches().with_clock(clock);
        let mut out = Vec::new();
        for (seq, time) in [0, year_2100, in_window].into_iter().enumerate() {
            push(&mut b, at(time, seq as u64), 10, Instant::now(), &mut out);
        }
        b.flush_all(&mut out);
        let counted = b
            .stats
            .rows_out_of_range
            .load(std::sync::atomic::Ordering::Relaxed);
        (out, counted)
    };
    let times = |r: &Ready| -> Vec<i64> {
        let t = r.batch.records.column(0);
        let t =
            arrow::array::AsArray::as_primitive::<arrow::datatypes::TimestampMicrosecondType>(t);
        t.values().to_vec()
    };

    // receive_time: the row time becomes the receive time, the device's is kept.
    let (out, counted) = run(OutOfRange::ReceiveTime);
    assert_eq!((out.len(), counted), (1, 2));
    assert_eq!(times(&out[0]), [now_us, now_us, in_window]);
    let schema = out[0].batch.records.schema();
    let device_time = schema
        .index_of(DEVICE_TIME)
        .unwrap_or_else(|e| panic!("{e}"));
    let kept = out[0].batch.records.column(device_time);
    let kept =
        arrow::array::AsArray::as_primitive::<arrow::datatypes::TimestampMicrosecondType>(kept);
    assert_eq!(
        kept.iter().collect::<Vec<_>>(),
        [Some(0), Some(year_2100), None]
    );

    // reject: both go to `_rejected` with the reason.
    let (out, counted) = run(OutOfRange::Reject);
    assert_eq!(counted, 2);
    let rejected = out.iter().find(|r| &*r.batch.table == REJECTED_TABLE);
    let reasons = rejected.map(|r| {
        let i = r
            .batch
            .records
            .schema()
            .index_of("reason")
            .unwrap_or_default();
        let col = arrow::array::AsArray::as_string::<i32>(r.batch.records.column(i));
        col.iter()
            .map(|s| s.unwrap_or_default().to_string())
            .collect::<Vec<_>>()
    });
    assert_eq!(
        reasons.unwrap_or_default(),
        [
            "row time 1970-01-01T00:00:00Z is outside the clock window of its receive time 2026-01-01T00:00:00Z (clock.max_ahead, clock.max_behind)",
            "row time 2100-01-01T00:00:00Z is outside the clock window of its receive time 2026-01-01T00:00:00Z (clock.max_ahead, clock.max_behind)",
        ]
    );

    // accept: written as they are, counted.
    let (out, counted) = run(OutOfRange::Accept);
    assert_eq!(counted, 2);
    assert_eq!(times(&out[0]), [0, year_2100, in_window]);
}
