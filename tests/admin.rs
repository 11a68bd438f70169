//! The admin HTTP endpoint of the real daemon.

mod common;

use std::net::SocketAddr;

use common::{Client, Daemon, TestResult, get, metric};

#[test]
fn health_readiness_and_counters_that_move() -> TestResult {
    let daemon = Daemon::start("")?;
    let admin = daemon.admin.ok_or("admin endpoint not in the ready line")?;
    assert_eq!(get(admin, "/healthz")?.0, 200);
    assert_eq!(
        get(admin, "/readyz")?.0,
        200,
        "ready once the listener accepts"
    );
    assert_eq!(get(admin, "/nope")?.0, 404);
    let (_, before) = get(admin, "/metrics")?;
    assert_eq!(metric(&before, "fleetlake_messages_qos1_total"), Some(0.0));
    assert_eq!(metric(&before, "fleetlake_ready"), Some(1.0));
    assert!(metric(&before, "fleetlake_process_resident_memory_bytes").is_some_and(|v| v > 0.0));
    let mut c = Client::connect(daemon.addr, "dev")?;
    c.publish1("sensors/dev/t", r#"{"v": 1}"#, 1)?;
    c.publish1("sensors/dev/t", r#"{"v": 2}"#, 2)?;
    let (_, after) = get(admin, "/metrics")?;
    assert_eq!(metric(&after, "fleetlake_messages_qos1_total"), Some(2.0));
    assert!(metric(&after, "fleetlake_wal_syncs_total").is_some_and(|v| v >= 1.0));
    assert!(after.contains("# TYPE fleetlake_wal_records_total counter"));
    let syncs = metric(&after, "fleetlake_wal_sync_seconds_count").ok_or("no fsync histogram")?;
    assert_eq!(
        metric(&after, "fleetlake_wal_sync_seconds_bucket{le=\"+Inf\"}"),
        Some(syncs)
    );
    // One ack-latency observation per QoS 1 message, each below the last finite bound (1 s).
    assert_eq!(
        metric(&after, "fleetlake_mqtt_ack_seconds_count"),
        Some(2.0)
    );
    assert_eq!(
        metric(&after, "fleetlake_mqtt_ack_seconds_bucket{le=\"1\"}"),
        Some(2.0)
    );
    Ok(())
}

#[test]
fn readyz_is_503_while_the_wal_replays_and_200_after() -> TestResult {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    // A WAL that takes a while to replay.
    let fs = fleetlake::wal::DiskFs::open(&data.join("wal"))?;
    let mut log = fleetlake::wal::Log::start(fs, Vec::new(), 0, 64 << 20)?;
    for i in 0..200_000u32 {
        let payload = format!(r#"{{"seq": {i}, "temp": 21.5}}"#);
        log.stage(
            fleetlake::wal::record::Head::of(fleetlake::decode::Source::Mqtt),
            1_767_225_600_000_000,
            "dev",
            "sensors/dev/t",
            payload.as_bytes(),
        );
        if i % 10_000 == 0 {
            log.write()?;
        }
    }
    log.write()?;
    log.sync()?;
    drop(log);
    let config = dir.path().join("fleetlake.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nid = \"t\"\ndata_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[mqtt]\nlisten = \"127.0.0.1:0\"\n",
            data.display()
        ),
    )?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_fleetlake"))
        .args(["run", "--log-format", "json", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let mut lines = std::io::BufReader::new(stderr).lines();
    let result = (|| -> TestResult {
        let mut admin: Option<SocketAddr> = None;
        let mut during = None;
        for line in lines.by_ref() {
            let line = line?;
            if line.contains("admin endpoint listening") {
                let json: serde_json::Value = serde_json::from_str(&line)?;
                let addr: SocketAddr =
                    json["admin_listen"].as_str().ok_or("no address")?.parse()?;
                admin = Some(addr);
                during = Some((get(addr, "/readyz")?.0, get(addr, "/healthz")?.0));
            }
            if line.contains("fleetlake ready") {
                break;
            }
        }
        let admin = admin.ok_or("no admin line before ready")?;
        assert_eq!(
            during,
            Some((503, 200)),
            "not ready, but alive, while replaying"
        );
        assert_eq!(get(admin, "/readyz")?.0, 200);
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

#[test]
fn a_null_output_counts_rows_as_published_and_writes_no_file() -> TestResult {
    let daemon = Daemon::start("[output]\nurl = \"null:\"\n[batch]\nmax_rows = 1")?;
    let admin = daemon.admin.ok_or("admin endpoint not in the ready line")?;
    assert!(daemon.log_contains("every row is counted and discarded"));
    let mut c = Client::connect(daemon.addr, "dev")?;
    for i in 1..=3 {
        c.publish1("sensors/dev/t", &format!(r#"{{"v": {i}}}"#), i)?;
    }
    common::wait_for("3 rows published", || {
        get(admin, "/metrics")
            .ok()
            .and_then(|(_, body)| metric(&body, "fleetlake_rows_published_total"))
            == Some(3.0)
    })?;
    let (_, body) = get(admin, "/metrics")?;
    assert_eq!(metric(&body, "fleetlake_bytes_published_total"), Some(0.0));
    c.disconnect()?;
    let (status, daemon) = daemon.stop()?;
    assert!(status.success());
    assert!(common::parquet_files(&daemon.data()).is_empty());
    // Discarded rows still count as published: the WAL is released as usual.
    let segments = std::fs::read_dir(daemon.data().join("wal"))?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".wal"))
        .count();
    assert_eq!(segments, 0, "every segment released after a clean stop");
    Ok(())
}
