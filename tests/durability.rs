//! Durability of the real daemon: what a SIGKILL leaves behind is replayed on restart, and a
//! batch caught between publishing and checkpointing is rebuilt into the same file.

mod common;

use std::collections::BTreeMap;

use common::{Client, Daemon, TestResult, parquet_files, read_rows, wait_for};

const TABLES: &str = r#"
[[tables]]
name = "a"
topics = ["a/{device_id}"]
[[tables]]
name = "b"
topics = ["b/{device_id}"]
"#;

/// `(table, v)` of every row in the lake, with how often each occurs.
fn rows_by_value(
    daemon: &Daemon,
) -> Result<BTreeMap<(String, String), usize>, Box<dyn std::error::Error>> {
    let mut seen = BTreeMap::new();
    for table in ["a", "b"] {
        for row in read_rows(&daemon.lake().join(table))? {
            let v = row["v"].as_str().unwrap_or_default().to_string();
            *seen.entry((table.to_string(), v)).or_insert(0) += 1;
        }
    }
    Ok(seen)
}

#[test]
fn acknowledged_messages_survive_sigkill_and_are_published_after_restart() -> TestResult {
    let daemon = Daemon::start(TABLES)?;
    let mut c = Client::connect(daemon.addr, "dev")?;
    for i in 1..=20u16 {
        c.publish1(
            if i % 2 == 0 { "a/d1" } else { "b/d2" },
            &format!(r#"{{"v": {i}}}"#),
            i,
        )?;
    }
    let dir = daemon.kill()?;
    let daemon = Daemon::start_in(dir, "10s", "", TABLES)?;
    assert!(
        daemon.log_contains("\"replayed\":20"),
        "replay count in the log"
    );
    let (status, daemon) = daemon.stop()?;
    assert!(status.success());
    let seen = rows_by_value(&daemon)?;
    assert_eq!(seen.len(), 20);
    assert!(seen.values().all(|&n| n == 1), "{seen:?}");
    let wal: Vec<_> = std::fs::read_dir(daemon.data().join("wal"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".wal"))
        .collect();
    assert!(
        wal.is_empty(),
        "a clean stop deletes published segments: {wal:?}"
    );
    Ok(())
}

#[test]
fn a_batch_cut_before_a_crash_is_rebuilt_into_the_same_file_without_duplicates() -> TestResult {
    let config = format!("{TABLES}\n[batch]\nmax_rows = 3\n");
    let daemon = Daemon::start(&config)?;
    let mut c = Client::connect(daemon.addr, "dev")?;
    // seq 0: table b keeps a row pending, so the low-water mark stays at 0.
    c.publish1("b/d", r#"{"v": 0}"#, 1)?;
    // seqs 1-3 in table a, published as one file (max_rows).
    for i in 1..=3u16 {
        c.publish1("a/d", &format!(r#"{{"v": {i}}}"#), i + 1)?;
    }
    let lake_a = daemon.lake().join("a");
    wait_for("table a's first file", || parquet_files(&lake_a).len() == 1)?;
    let checkpoint = daemon.data().join("wal").join("checkpoint.json");
    wait_for("the checkpoint to record it", || {
        std::fs::read_to_string(&checkpoint).is_ok_and(|t| t.contains("\"a\":3"))
    })?;
    let first = parquet_files(&lake_a);
    // seqs 4-5 in table a: pending at the crash.
    for i in 4..=5u16 {
        c.publish1("a/d", &format!(r#"{{"v": {i}}}"#), i + 1)?;
    }
    let dir = daemon.kill()?;
    // What a crash after the file's rename but before its checkpoint leaves.
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        dir.path().join("data/wal/checkpoint.json"),
    )?)?;
    assert_eq!(
        state["low_water"], 0,
        "b's pending row holds the mark: {state}"
    );
    std::fs::write(
        dir.path().join("data/wal/checkpoint.json"),
        r#"{"low_water":0,"published":{},"in_progress":{"table":"a","last_seq":3}}"#,
    )?;
    let daemon = Daemon::start_in(dir, "10s", "", &config)?;
    let (status, daemon) = daemon.stop()?;
    assert!(status.success());
    let files = parquet_files(&daemon.lake().join("a"));
    assert!(
        files.contains(&first[0]),
        "the same file name was rewritten"
    );
    let seen = rows_by_value(&daemon)?;
    let expected: BTreeMap<(String, String), usize> =
        [("b", 0), ("a", 1), ("a", 2), ("a", 3), ("a", 4), ("a", 5)]
            .into_iter()
            .map(|(t, v)| ((t.to_string(), format!("{v}.0")), 1)) // numbers are Float64
            .collect();
    assert_eq!(seen, expected, "every row once; files {files:?}");
    Ok(())
}

/// Unmounts the test volume even when the test fails.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_wal_volume_withholds_acks_until_space_is_freed() -> TestResult {
    use rumqttc::mqttbytes::QoS;
    use rumqttc::mqttbytes::v4::{Packet, Publish};

    let vol = tempfile::tempdir()?;
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "fleetlake-test"])
        .arg(vol.path())
        .stderr(std::process::Stdio::null())
        .status();
    if !mounted.is_ok_and(|s| s.success()) {
        eprintln!(
            "SKIPPED a_full_wal_volume_withholds_acks_until_space_is_freed: cannot mount a 4 MiB \
             tmpfs here (needs root or CAP_SYS_ADMIN)"
        );
        return Ok(());
    }
    let _unmount = Mounted(vol.path().to_path_buf());
    let lake = tempfile::tempdir()?;
    let extra = format!("[output]\nurl = \"{}\"\n", lake.path().display());
    let daemon = Daemon::start_in(vol, "10s", "", &extra)?;
    let mut c = Client::connect(daemon.addr, "dev")?;
    c.publish1("t", r#"{"v": 1}"#, 1)?;

    // Fill the volume.
    let filler = daemon.dir.path().join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler)?;
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
    }
    // Larger than a page, so it cannot fit in the segment's last allocated page.
    let big = format!(r#"{{"v": 2, "pad": "{}"}}"#, "x".repeat(16 * 1024));
    let mut p = Publish::new("t", QoS::AtLeastOnce, big.into_bytes());
    p.pkid = 2;
    c.send(Packet::Publish(p))?;
    wait_for("the daemon to report the full volume", || {
        daemon.log_contains("WAL volume is full")
    })?;
    c.stream
        .set_read_timeout(Some(std::time::Duration::from_millis(300)))?;
    assert!(
        c.recv().is_err(),
        "no PUBACK while the record is not on disk"
    );
    assert_eq!(
        v5_publish_reason(daemon.addr, big_v5())?,
        rumqttc::v5::mqttbytes::v5::PubAckReason::QuotaExceeded,
        "MQTT 5 is told at once that the message was not stored"
    );
    // So is a gRPC client: RESOURCE_EXHAUSTED, nothing stored.
    let grpc = grpc_write(&daemon, "full")?;
    assert_eq!(grpc.code(), tonic::Code::ResourceExhausted, "{grpc:?}");
    assert!(grpc.message().contains("WAL volume is full"), "{grpc:?}");

    std::fs::remove_file(&filler)?;
    c.stream.set_read_timeout(Some(common::DEADLINE))?;
    match c.recv()? {
        Packet::PubAck(ack) => assert_eq!(ack.pkid, 2),
        other => return Err(format!("expected PUBACK 2, got {other:?}").into()),
    }
    // The writer logs after it resolved the acks: wait for the line, do not race it.
    wait_for("the log to say acks resume", || {
        daemon.log_contains("acks resume")
    })?;
    assert_eq!(grpc_write(&daemon, "after")?.code(), tonic::Code::Ok);
    c.disconnect()?;
    let (status, _daemon) = daemon.stop()?;
    assert!(status.success());
    let rows = read_rows(&lake.path().join("telemetry"))?;
    assert_eq!(
        rows.len(),
        3,
        "both MQTT messages and the later gRPC point, once each"
    );
    Ok(())
}

/// One gRPC write of a point from `device`; its status (`Ok` for success).
fn grpc_write(daemon: &Daemon, device: &str) -> Result<tonic::Status, Box<dyn std::error::Error>> {
    use fleetlake::grpc::proto::ingest_client::IngestClient;
    use fleetlake::grpc::proto::{Field, Point, WriteRequest, field::Value};
    let url = format!("http://{}", daemon.grpc.ok_or("gRPC is off")?);
    let point = Point {
        table: String::new(),
        device_id: device.into(),
        time_unix_nano: 0,
        fields: vec![Field {
            name: "v".into(),
            value: Some(Value::IntValue(3)),
        }],
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut client = IngestClient::connect(url).await?;
        Ok(
            match client
                .write(WriteRequest {
                    points: vec![point],
                })
                .await
            {
                Ok(_) => tonic::Status::ok(""),
                Err(status) => status,
            },
        )
    })
}

fn big_v5() -> Vec<u8> {
    format!(r#"{{"v": 3, "pad": "{}"}}"#, "y".repeat(16 * 1024)).into_bytes()
}

/// Connects with MQTT 5, publishes `payload` at QoS 1, returns the PUBACK's reason code.
fn v5_publish_reason(
    addr: std::net::SocketAddr,
    payload: Vec<u8>,
) -> Result<rumqttc::v5::mqttbytes::v5::PubAckReason, Box<dyn std::error::Error>> {
    use std::io::{Read, Write};

    use bytes::BytesMut;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::{Connect, Packet, Publish};

    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(common::DEADLINE))?;
    let connect = Connect {
        keep_alive: 30,
        client_id: "dev-v5".into(),
        clean_start: true,
        properties: None,
    };
    let mut publish = Publish::new("t", QoS::AtLeastOnce, payload, None);
    publish.pkid = 7;
    let mut out = BytesMut::new();
    Packet::Connect(connect, None, None).write(&mut out, None)?;
    Packet::Publish(publish).write(&mut out, None)?;
    stream.write_all(&out)?;
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 4096];
    loop {
        match Packet::read(&mut buf, None) {
            Ok(Packet::PubAck(ack)) => return Ok(ack.reason),
            Ok(_) => continue,
            Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err("connection closed before PUBACK".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
