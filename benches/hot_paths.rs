//! Criterion micro-benchmarks of the per-message hot paths, each over 10,000 readings
//! `{"ts":…,"seq":…,"temp":…,"hum":…,"ok":true,"fw":"1.2.0"}` from 1,000 devices (the cost
//! budget's workload in ARCHITECTURE.md). Throughput is in messages (or rows) per second.
//!
//! ```sh
//! cargo bench --bench hot_paths            # all; add a name filter, e.g. -- json
//! ```

use std::hint::black_box;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use fleetlake::columnar::TableBuilder;
use fleetlake::columnar::encode::{partition, write_parquet};
use fleetlake::config::Config;
use fleetlake::decode::Source;
use fleetlake::decode::{Message, decode_publish};
use fleetlake::grpc::points;
use fleetlake::grpc::proto::{Field, Point, WriteRequest, field::Value};
use fleetlake::mqtt::codec::Codec;
use fleetlake::wal::record;
use prost::Message as _;
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{Connect, Packet, Publish};

const N: u64 = 10_000;
const T0_MS: u64 = 1_767_225_600_000;

fn reading(i: u64) -> (String, Bytes) {
    let device = format!("dev-{:04}", i % 1000);
    let payload = format!(
        r#"{{"ts":{},"seq":{i},"temp":{:.1},"hum":{},"ok":true,"fw":"1.2.0"}}"#,
        T0_MS + i,
        20.0 + (i % 100) as f64 / 10.0,
        40 + i % 20
    );
    (format!("sensors/{device}/telemetry"), Bytes::from(payload))
}

fn messages() -> Vec<Message> {
    let router = Config::builtin().router();
    let client: Arc<str> = Arc::from("bench");
    (0..N)
        .map(|i| {
            let (topic, payload) = reading(i);
            let mut m = decode_publish(&router, topic, payload, &client, 0);
            m.seq = i;
            m
        })
        .collect()
}

fn hot_paths(c: &mut Criterion) {
    let mut g = c.benchmark_group("per_message");
    g.throughput(Throughput::Elements(N));

    // MQTT: one socket buffer holding CONNECT and 10k QoS 1 PUBLISH packets.
    let mut wire = BytesMut::new();
    let write = |p: Packet, out: &mut BytesMut| {
        if let Err(e) = p.write(out, usize::MAX) {
            panic!("encode: {e}");
        }
    };
    write(Packet::Connect(Connect::new("bench")), &mut wire);
    for i in 0..N {
        let (topic, payload) = reading(i);
        let mut p = Publish::new(topic, QoS::AtLeastOnce, payload.to_vec());
        p.pkid = (i % 60_000 + 1) as u16;
        write(Packet::Publish(p), &mut wire);
    }
    g.bench_function("mqtt_decode", |b| {
        b.iter_batched(
            || wire.clone(),
            |mut buf| {
                let mut codec = Codec::new(1 << 20, u16::MAX, true);
                let mut n = 0;
                while let Ok(Some(p)) = codec.decode(&mut buf) {
                    black_box(p);
                    n += 1;
                }
                assert_eq!(n, N + 1);
            },
            BatchSize::LargeInput,
        )
    });

    let router = Config::builtin().router();
    let client: Arc<str> = Arc::from("bench");
    let raw: Vec<(String, Bytes)> = (0..N).map(reading).collect();
    g.bench_function("json_to_rows", |b| {
        b.iter_batched(
            || raw.clone(),
            |raw| {
                for (topic, payload) in raw {
                    black_box(decode_publish(&router, topic, payload, &client, 0));
                }
            },
            BatchSize::LargeInput,
        )
    });

    let msgs = messages();
    g.bench_function("arrow_build", |b| {
        b.iter(|| {
            let mut t = TableBuilder::new(Arc::from("telemetry"));
            for m in &msgs {
                let _ = black_box(t.append(m, m.seq));
            }
            black_box(t.finish())
        })
    });

    let mut t = TableBuilder::new(Arc::from("telemetry"));
    for m in &msgs {
        let _ = t.append(m, m.seq);
    }
    let batch = match t.finish() {
        Ok(Some(batch)) => batch,
        other => panic!("no batch: {other:?}"),
    };
    let opts = Config::builtin().parquet;
    g.bench_function("sort_and_parquet_zstd", |b| {
        b.iter(|| {
            let parts = partition(&batch).unwrap_or_else(|e| panic!("{e}"));
            for part in &parts {
                let out = write_parquet(part, &opts, Vec::with_capacity(256 << 10));
                black_box(out.map(|v| v.len()).unwrap_or_else(|e| panic!("{e}")));
            }
        })
    });

    g.bench_function("wal_frame", |b| {
        let mut out = Vec::with_capacity(2 << 20);
        b.iter(|| {
            out.clear();
            for m in &msgs {
                record::encode(
                    &mut out,
                    m.seq,
                    record::Head::of(Source::Mqtt),
                    0,
                    "bench",
                    &m.topic,
                    &m.payload,
                );
            }
            black_box(out.len())
        })
    });

    // gRPC: one request of 1,000 points x 10 (decode, check, group).
    let req = WriteRequest {
        points: (0..1000)
            .map(|i| Point {
                table: String::new(),
                device_id: format!("dev-{:04}", i % 1000),
                time_unix_nano: (T0_MS + i) as i64 * 1_000_000,
                fields: vec![
                    Field {
                        name: "seq".into(),
                        value: Some(Value::IntValue(i as i64)),
                    },
                    Field {
                        name: "temp".into(),
                        value: Some(Value::DoubleValue(21.5)),
                    },
                    Field {
                        name: "hum".into(),
                        value: Some(Value::IntValue(40)),
                    },
                    Field {
                        name: "ok".into(),
                        value: Some(Value::BoolValue(true)),
                    },
                    Field {
                        name: "fw".into(),
                        value: Some(Value::StringValue("1.2.0".into())),
                    },
                ],
            })
            .collect(),
    };
    let encoded = Bytes::from(req.encode_to_vec());
    let table: Arc<str> = Arc::from("telemetry");
    g.bench_function("grpc_points_decode_check_group", |b| {
        b.iter(|| {
            for _ in 0..10 {
                let points = WriteRequest::decode(encoded.clone())
                    .unwrap_or_else(|e| panic!("{e}"))
                    .points;
                assert!(points::check(&points).is_empty());
                black_box(points::to_messages(points, &table, 0));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, hot_paths);
criterion_main!(benches);
