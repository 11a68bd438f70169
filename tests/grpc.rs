//! gRPC ingest end to end: a tonic client against the real daemon; rows read back from the
//! Parquet it writes.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::{Daemon, TestResult, read_rows};
use fleetlake::grpc::proto::field::Value;
use fleetlake::grpc::proto::ingest_client::IngestClient;
use fleetlake::grpc::proto::{Field, Point, WriteRequest, WriteStreamRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::codec::CompressionEncoding;
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

async fn client(daemon: &Daemon) -> Result<IngestClient<Channel>, Box<dyn std::error::Error>> {
    let addr = daemon.grpc.ok_or("gRPC is off")?;
    Ok(IngestClient::connect(format!("http://{addr}")).await?)
}

fn field(name: &str, value: Value) -> Field {
    Field {
        name: name.into(),
        value: Some(value),
    }
}

fn reading(device: &str, seq: i64) -> Point {
    Point {
        table: String::new(),
        device_id: device.into(),
        time_unix_nano: 1_767_225_600_000_000_000 + seq * 1_000_000,
        fields: vec![
            field("seq", Value::IntValue(seq)),
            field("temp", Value::DoubleValue(20.5)),
        ],
    }
}

/// `(device_id, seq)` of every row of `table` in the daemon's output.
fn seqs(daemon: &Daemon, table: &str) -> Result<Vec<(String, i64)>, Box<dyn std::error::Error>> {
    let mut out = Vec::new();
    for row in read_rows(&daemon.lake().join(table))? {
        let device = row["device_id"].as_str().unwrap_or_default().to_string();
        // Numbers are Float64 columns (see columnar::schema): "7.0".
        let seq = row["seq"].as_str().ok_or("no seq")?.parse::<f64>()? as i64;
        out.push((device, seq));
    }
    out.sort();
    Ok(out)
}

/// Column name → Arrow type of the first Parquet file under `dir`.
fn schema(dir: &std::path::Path) -> Result<BTreeMap<String, String>, Box<dyn std::error::Error>> {
    let file = common::parquet_files(dir)
        .into_iter()
        .next()
        .ok_or("no parquet file")?;
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(file)?,
    )?;
    Ok(builder
        .schema()
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().to_string()))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_int64_column_keeps_grpc_integers_exact() -> TestResult {
    // A table with no topics only declares columns: here for points written over gRPC.
    let daemon = Daemon::start(
        "[[tables]]\nname = \"machines\"\ncolumns = [{ name = \"cycles\", type = \"int64\" }]\n",
    )?;
    let mut c = client(&daemon).await?;
    let big = (1_i64 << 53) + 1;
    let point = |value| Point {
        table: "machines".into(),
        device_id: "press-1".into(),
        time_unix_nano: 0,
        fields: vec![field("cycles", value), field("load", Value::IntValue(3))],
    };
    let points = vec![point(Value::IntValue(big))];
    c.write(WriteRequest { points }).await?;
    // A fraction does not fit an int64: the point goes to `_rejected`.
    let points = vec![point(Value::DoubleValue(0.5))];
    c.write(WriteRequest { points }).await?;
    let (status, daemon) = daemon.stop()?;
    assert!(status.success());
    let rows = read_rows(&daemon.lake().join("machines"))?;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["cycles"], big.to_string());
    let types = schema(&daemon.lake().join("machines"))?;
    assert_eq!(
        (types["cycles"].as_str(), types["load"].as_str()),
        ("Int64", "Float64")
    );
    let rejected = read_rows(&daemon.data().join("_rejected"))?;
    assert_eq!(rejected.len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_writes_become_typed_rows() -> TestResult {
    let daemon = Daemon::start("")?;
    let mut c = client(&daemon).await?;
    let points = vec![
        Point {
            table: "machines".into(),
            device_id: "press-1".into(),
            time_unix_nano: 1_767_225_600_123_456_789,
            fields: vec![
                field("pressure", Value::DoubleValue(1.25)),
                field("cycles", Value::IntValue(42)),
                field("running", Value::BoolValue(true)),
                field("mode", Value::StringValue("auto".into())),
                field("raw", Value::BytesValue(Bytes::from_static(b"\x00\xff"))),
            ],
        },
        reading("dev-a", 1),
        reading("dev-b", 2),
    ];
    let reply = c.write(WriteRequest { points }).await?.into_inner();
    assert_eq!(reply.points, 3);
    let empty = c.write(WriteRequest { points: vec![] }).await?.into_inner();
    assert_eq!(empty.points, 0);

    let (status, daemon) = daemon.stop()?;
    assert!(status.success());
    let rows = read_rows(&daemon.lake().join("machines"))?;
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row["device_id"], "press-1");
    assert_eq!(row["time"], "2026-01-01T00:00:00.123456Z");
    assert_eq!(row["pressure"], "1.25");
    assert_eq!(row["cycles"], "42.0");
    assert_eq!(row["running"], "true");
    assert_eq!(row["mode"], "auto");
    assert_eq!(row["raw"], "00ff");
    let types = schema(&daemon.lake().join("machines"))?;
    assert_eq!(types["pressure"], "Float64");
    // An int64 value is a number like any other: Float64 unless the table declares the column.
    assert_eq!(types["cycles"], "Float64");
    assert_eq!(types["running"], "Boolean");
    assert!(types["mode"].contains("Utf8"), "{types:?}");
    assert!(types["raw"].contains("Binary"), "{types:?}");
    assert_eq!(
        seqs(&daemon, "telemetry")?,
        vec![("dev-a".into(), 1), ("dev-b".into(), 2)]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_pipelines_requests_and_answers_each_in_order() -> TestResult {
    let daemon = Daemon::start("")?;
    let mut c = client(&daemon).await?;
    let (tx, rx) = mpsc::channel(128);
    // Every request is sent before any response is read.
    for id in 0..100u64 {
        let points = if id == 50 {
            vec![Point {
                device_id: String::new(),
                ..reading("x", 9_999)
            }]
        } else {
            (0..10)
                .map(|i| reading("dev", (id * 10 + i) as i64))
                .collect()
        };
        tx.send(WriteStreamRequest { id, points }).await?;
    }
    let mut responses = c.write_stream(ReceiverStream::new(rx)).await?.into_inner();
    for id in 0..100u64 {
        let r = responses.message().await?.ok_or("stream ended early")?;
        assert_eq!(r.id, id, "responses come in request order");
        if id == 50 {
            assert_eq!(r.code, Code::InvalidArgument as i32);
            assert_eq!(r.points, 0);
            assert_eq!(r.errors.len(), 1);
            assert_eq!(r.errors[0].field, "device_id");
            assert!(r.message.contains("points[0].device_id"), "{}", r.message);
        } else {
            assert_eq!((r.code, r.points), (0, 10), "{}", r.message);
        }
    }
    // The stream stays usable after a refused request.
    tx.send(WriteStreamRequest {
        id: 100,
        points: vec![reading("dev", 5_000)],
    })
    .await?;
    let r = responses.message().await?.ok_or("no response")?;
    assert_eq!((r.id, r.code, r.points), (100, 0, 1));
    drop(tx);
    assert!(
        responses.message().await?.is_none(),
        "half-close ends the stream"
    );

    let (_, daemon) = daemon.stop()?;
    let got = seqs(&daemon, "telemetry")?;
    let mut want: Vec<(String, i64)> = (0..1000)
        .filter(|s| s / 10 != 50)
        .map(|s| ("dev".to_string(), s))
        .collect();
    want.push(("dev".into(), 5_000));
    want.sort();
    assert_eq!(
        got, want,
        "every acknowledged point once, nothing of the refused one"
    );
    Ok(())
}

/// A point whose `device_id` is raw bytes, to send what a correct client cannot: invalid
/// UTF-8 in a string field.
#[derive(Clone, PartialEq, prost::Message)]
struct RawPoint {
    #[prost(bytes = "vec", tag = "2")]
    device_id: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RawRequest {
    #[prost(message, repeated, tag = "1")]
    points: Vec<RawPoint>,
}

async fn write_raw(addr: SocketAddr, req: RawRequest) -> Result<(), tonic::Status> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .map_err(|e| tonic::Status::unknown(e.to_string()))?
        .connect()
        .await
        .map_err(|e| tonic::Status::unknown(e.to_string()))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unknown(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<RawRequest, RawRequest>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/fleetlake.v1.Ingest/Write");
    grpc.unary(tonic::Request::new(req), path, codec)
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_codes_store_nothing_and_the_server_keeps_serving() -> TestResult {
    let daemon = Daemon::start("[grpc]\nlisten = \"127.0.0.1:0\"\nmax_message_size = \"64KiB\"")?;
    let addr = daemon.grpc.ok_or("gRPC is off")?;
    let mut c = client(&daemon).await?;

    // A point with no device id: the whole request is refused, every bad point named.
    let mut points = vec![reading("ok", 1), reading("", 2), reading("ok", 3)];
    points[2].fields.push(field("time", Value::IntValue(1)));
    let err = c
        .write(WriteRequest { points })
        .await
        .err()
        .ok_or("accepted")?;
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let bad = err
        .get_details_bad_request()
        .ok_or("no BadRequest details")?;
    let fields: Vec<&str> = bad
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert_eq!(fields, ["points[1].device_id", "points[2].fields[2].name"]);

    // Invalid UTF-8 in a string field: not a valid message.
    let raw = RawRequest {
        points: vec![RawPoint {
            device_id: b"dev-\xff\xfe".to_vec(),
        }],
    };
    let err = write_raw(addr, raw).await.err().ok_or("accepted")?;
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // Over the size limit as sent.
    let big = Point {
        fields: vec![field(
            "blob",
            Value::BytesValue(Bytes::from(vec![7u8; 100_000])),
        )],
        ..reading("big", 4)
    };
    let err = c
        .write(WriteRequest {
            points: vec![big.clone()],
        })
        .await
        .err()
        .ok_or("accepted")?;
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");

    // A zstd bomb: a few KiB on the wire, 32 MiB once decompressed.
    let bomb = Point {
        fields: vec![field(
            "blob",
            Value::BytesValue(Bytes::from(vec![0u8; 32 << 20])),
        )],
        ..reading("bomb", 5)
    };
    let mut zc = client(&daemon)
        .await?
        .send_compressed(CompressionEncoding::Zstd);
    let err = zc
        .write(WriteRequest { points: vec![bomb] })
        .await
        .err()
        .ok_or("accepted")?;
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");

    // Compressed requests within the limit are fine (zstd and gzip).
    zc.write(WriteRequest {
        points: vec![reading("zstd", 6)],
    })
    .await?;
    let mut gc = client(&daemon)
        .await?
        .send_compressed(CompressionEncoding::Gzip);
    gc.write(WriteRequest {
        points: vec![reading("gzip", 7)],
    })
    .await?;
    // And the first client still works.
    c.write(WriteRequest {
        points: vec![reading("plain", 8)],
    })
    .await?;

    let (_, daemon) = daemon.stop()?;
    assert_eq!(
        seqs(&daemon, "telemetry")?,
        vec![("gzip".into(), 7), ("plain".into(), 8), ("zstd".into(), 6)]
    );
    assert!(
        common::parquet_files(&daemon.data().join("_rejected")).is_empty(),
        "refused requests leave no rows anywhere"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_memory_budget_answers_resource_exhausted() -> TestResult {
    // The WAL writer hangs on a record for topic `stall`: nothing becomes durable, so the
    // budget never comes back.
    let envs = [("FLEETLAKE_TEST_STALL_TOPIC", "stall".to_string())];
    let daemon = Daemon::start_in_env(
        tempfile::tempdir()?,
        "2s",
        "max_packet_size = \"64KiB\"",
        "[grpc]\nlisten = \"127.0.0.1:0\"\nmax_message_size = \"256KiB\"\n[memory]\nbudget = \"1MiB\"",
        &envs,
    )?;
    let mut mqtt = common::Client::connect(daemon.addr, "staller")?;
    mqtt.send(rumqttc::mqttbytes::v4::Packet::Publish(
        rumqttc::mqttbytes::v4::Publish::new("stall", rumqttc::mqttbytes::QoS::AtMostOnce, "{}"),
    ))?;
    common::wait_for("the WAL writer to hang", || {
        daemon.log_contains("the WAL writer hangs now")
    })?;
    // 20 requests of ~150 KB at once: at most 6 fit in the 1 MiB budget and then wait for a
    // WAL that never syncs; the others wait for budget, then give up.
    let mut calls = Vec::new();
    for _ in 0..20 {
        let mut c = client(&daemon).await?;
        let point = Point {
            fields: vec![field(
                "blob",
                Value::BytesValue(Bytes::from(vec![1u8; 150_000])),
            )],
            ..reading("heavy", 1)
        };
        calls.push(tokio::spawn(async move {
            c.write(WriteRequest {
                points: vec![point],
            })
            .await
        }));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while calls.iter().filter(|c| c.is_finished()).count() < 14 {
        assert!(
            std::time::Instant::now() < deadline,
            "requests were not refused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut pending = 0;
    for call in calls {
        if !call.is_finished() {
            pending += 1;
            continue;
        }
        let err = call.await?.err().ok_or("a write was acknowledged")?;
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        assert!(err.message().contains("memory budget"), "{err:?}");
    }
    assert!(pending >= 1, "some requests fitted in the budget first");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_streams_with_unavailable_after_answering() -> TestResult {
    let daemon = Daemon::start("")?;
    let mut c = client(&daemon).await?;
    let (tx, rx) = mpsc::channel(8);
    let mut responses = c.write_stream(ReceiverStream::new(rx)).await?.into_inner();
    tx.send(WriteStreamRequest {
        id: 1,
        points: vec![reading("s", 1)],
    })
    .await?;
    let r = responses.message().await?.ok_or("no response")?;
    assert_eq!((r.id, r.code, r.points), (1, 0, 1));
    // SIGTERM (once: a second one would force the exit) while the stream is open.
    let stopping = tokio::task::spawn_blocking(move || daemon.stop().map_err(|e| e.to_string()));
    let end = tokio::time::timeout(Duration::from_secs(10), responses.message()).await?;
    let status = end.err().ok_or("the stream did not end with an error")?;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let (status, daemon) = stopping.await??;
    assert!(status.success());
    assert_eq!(seqs(&daemon, "telemetry")?, vec![("s".into(), 1)]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_answer_for_stock_tools() -> TestResult {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let daemon = Daemon::start("")?;
    let url = format!("http://{}", daemon.grpc.ok_or("gRPC is off")?);
    let channel = Channel::from_shared(url)?.connect().await?;
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "fleetlake.v1.Ingest"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await?
            .into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
    }

    let mut reflection = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([req]))
        .await?
        .into_inner();
    let answer = answers.message().await?.ok_or("no reflection answer")?;
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        return Err("not a service list".into());
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in ["fleetlake.v1.Ingest", "grpc.health.v1.Health"] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_points_survive_sigkill() -> TestResult {
    // Batches stay in memory (no flush by size or age) until the crash.
    let extra = "[batch]\nmax_age = \"1h\"";
    let daemon = Daemon::start(extra)?;
    let mut c = client(&daemon).await?;
    for batch in 0..10i64 {
        // Several devices and two tables per request: several WAL records each.
        let points = (0..100)
            .map(|i| {
                let mut p = reading(&format!("dev-{}", i % 3), batch * 100 + i);
                if i % 10 == 0 {
                    p.table = "other".into();
                }
                p
            })
            .collect();
        assert_eq!(
            c.write(WriteRequest { points }).await?.into_inner().points,
            100
        );
    }
    drop(c);
    let dir = daemon.kill()?;
    assert!(common::parquet_files(&dir.path().join("data/lake")).is_empty());
    let daemon = Daemon::start_in(dir, "10s", "", extra)?;
    let (status, daemon) = daemon.stop()?;
    assert!(status.success());
    let mut got = seqs(&daemon, "telemetry")?;
    got.extend(seqs(&daemon, "other")?);
    got.sort_by_key(|(_, s)| *s);
    let want: Vec<(String, i64)> = (0..1000)
        .map(|s| (format!("dev-{}", s % 100 % 3), s))
        .collect();
    assert_eq!(got, want, "every acknowledged point exactly once");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_conflict_sends_the_point_group_to_rejected_with_its_protobuf() -> TestResult {
    use prost::Message as _;

    let daemon = Daemon::start("")?;
    let mut c = client(&daemon).await?;
    let with = |device: &str, value: Value| Point {
        table: String::new(),
        device_id: device.into(),
        time_unix_nano: 1_767_225_600_000_000_000,
        fields: vec![field("x", value)],
    };
    let points = vec![
        with("a", Value::IntValue(1)),
        with("a", Value::DoubleValue(2.5)),
        with("b", Value::StringValue("three".into())),
        with("b", Value::IntValue(4)),
    ];
    assert_eq!(
        c.write(WriteRequest { points }).await?.into_inner().points,
        4
    );
    let (_, daemon) = daemon.stop()?;
    let rows = read_rows(&daemon.lake().join("telemetry"))?;
    let xs: Vec<&str> = rows.iter().filter_map(|r| r["x"].as_str()).collect();
    assert_eq!(
        xs,
        ["1.0", "2.5"],
        "int and double mix into a double column"
    );
    let rejected = common::parquet_files(&daemon.data().join("_rejected"));
    let file = rejected.first().ok_or("nothing in _rejected")?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(file)?,
    )?
    .build()?;
    let mut found = Vec::new();
    for batch in reader {
        use arrow::array::AsArray;
        let batch = batch?;
        let reason = batch
            .column_by_name("reason")
            .ok_or("no reason")?
            .as_string::<i32>();
        let payload = batch
            .column_by_name("payload")
            .ok_or("no payload")?
            .as_binary::<i32>();
        for i in 0..batch.num_rows() {
            let req = WriteRequest::decode(payload.value(i))?;
            found.push((reason.value(i).to_string(), req.points));
        }
    }
    assert_eq!(
        found.len(),
        1,
        "one row for the conflicting group: {found:?}"
    );
    let (reason, points) = &found[0];
    assert!(reason.contains("type conflict"), "{reason}");
    assert_eq!(points.len(), 2, "the whole run of device b's points");
    assert!(
        points
            .iter()
            .all(|p| p.device_id == "b" && p.table == "telemetry")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_does_not_hold_up_shutdown() -> TestResult {
    let daemon = Daemon::start_full("20s", "", "")?;
    let url = format!("http://{}", daemon.grpc.ok_or("gRPC is off")?);
    // A tiny receive window: the server can send only a few responses before it must wait.
    let channel = Channel::from_shared(url)?
        .initial_stream_window_size(Some(1024))
        .initial_connection_window_size(Some(1024))
        .connect()
        .await?;
    let mut c = IngestClient::new(channel);
    let (tx, rx) = mpsc::channel(4096);
    for id in 0..2000u64 {
        tx.send(WriteStreamRequest {
            id,
            points: vec![reading("slow-reader", id as i64)],
        })
        .await?;
    }
    // Responses are never read.
    let responses = c.write_stream(ReceiverStream::new(rx)).await?.into_inner();
    // Wait until the server is stuck: responses fill the client's window, the stream's
    // response queue and its read-ahead queue, and it stops reading requests.
    let admin = daemon.admin.ok_or("no admin endpoint")?;
    let requests = || {
        common::get(admin, "/metrics")
            .ok()
            .and_then(|(_, body)| common::metric(&body, "fleetlake_grpc_requests_total"))
            .unwrap_or(0.0)
    };
    common::wait_for("the server to read 150 requests", || requests() >= 150.0)?;
    let mut last = requests();
    common::wait_for("the server to stop reading", || {
        std::thread::sleep(Duration::from_millis(200));
        let now = requests();
        std::mem::replace(&mut last, now) == now
    })?;
    assert!(
        last < 2000.0,
        "the server read every request: nothing was held up"
    );
    let started = std::time::Instant::now();
    let (status, daemon) =
        tokio::task::spawn_blocking(move || daemon.stop().map_err(|e| e.to_string())).await??;
    assert!(status.success(), "a clean stop, not a forced one");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "stopped within {:?}, before node.shutdown_grace (20s) ran out",
        started.elapsed()
    );
    drop((responses, tx));
    // Whatever the server read was stored (each request is one durable point or none).
    let stored = seqs(&daemon, "telemetry")?.len();
    assert!(stored > 0, "some requests were read and stored");
    Ok(())
}
