//! End-to-end behaviour of the real daemon: MQTT in over TCP, Parquet out.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::{Client, Daemon, TestResult, read_rows, wait_for};
use rumqttc::mqttbytes::v4::{Connect, Packet};

#[test]
fn qos1_messages_from_several_clients_are_in_parquet_after_sigterm() -> TestResult {
    let daemon = Daemon::start("")?;
    for dev in ["th-1", "th-2", "th-3"] {
        let mut c = Client::connect(daemon.addr, dev)?;
        for i in 1..=10u16 {
            c.publish1(
                "sensors/x/telemetry",
                &format!(r#"{{"ts": 1767225600000, "seq": {i}, "temp": 20.5}}"#),
                i,
            )?;
        }
        c.disconnect()?;
    }
    let (status, daemon) = daemon.stop()?;
    assert!(status.success(), "exit status {status}");
    let rows = read_rows(&daemon.lake().join("telemetry"))?;
    assert_eq!(rows.len(), 30);
    let mut devices: Vec<&str> = rows
        .iter()
        .filter_map(|r| r["device_id"].as_str())
        .collect();
    devices.dedup();
    assert_eq!(
        devices,
        ["th-1", "th-2", "th-3"],
        "sorted by device within the file"
    );
    assert_eq!(rows[0]["time"], "2026-01-01T00:00:00Z");
    assert!(daemon.log_contains("published parquet file"));
    Ok(())
}

#[test]
fn a_table_is_published_by_age_while_the_daemon_keeps_running() -> TestResult {
    let daemon = Daemon::start("[batch]\nmax_age = \"300ms\"")?;
    let mut c = Client::connect(daemon.addr, "dev")?;
    c.publish1("a", r#"{"v": 1}"#, 1)?;
    let lake = daemon.lake();
    wait_for("a file published by age", || {
        !common::parquet_files(&lake).is_empty()
    })?;
    c.disconnect()?;
    Ok(())
}

#[test]
fn a_retransmitted_qos2_publish_becomes_one_row() -> TestResult {
    let daemon = Daemon::start("")?;
    let mut c = Client::connect(daemon.addr, "dev")?;
    c.publish2("a", r#"{"v": 1}"#, 5, 3)?;
    c.disconnect()?;
    let (status, daemon) = daemon.stop()?;
    assert!(status.success());
    assert_eq!(read_rows(&daemon.lake().join("telemetry"))?.len(), 1);
    Ok(())
}

#[test]
fn a_qos2_publish_resent_after_a_dropped_connection_is_stored_once() -> TestResult {
    use rumqttc::mqttbytes::{QoS, v4::Publish};
    let daemon = Daemon::start("")?;
    let (mut c, present) = Client::connect_persistent(daemon.addr, "flaky")?;
    assert!(!present);
    let mut p = Publish::new("a", QoS::ExactlyOnce, br#"{"v": 1}"#.to_vec());
    p.pkid = 9;
    c.send(Packet::Publish(p.clone()))?;
    assert!(matches!(c.recv()?, Packet::PubRec(r) if r.pkid == 9));
    drop(c); // the PUBREC "got lost": the client will resend the PUBLISH
    wait_for("the first connection to end", || {
        daemon.log_contains("client closed the connection")
    })?;

    let (mut c, present) = Client::connect_persistent(daemon.addr, "flaky")?;
    assert!(present, "the session was kept");
    p.dup = true;
    c.send(Packet::Publish(p))?;
    assert!(matches!(c.recv()?, Packet::PubRec(r) if r.pkid == 9));
    c.send(Packet::PubRel(rumqttc::mqttbytes::v4::PubRel::new(9)))?;
    assert!(matches!(c.recv()?, Packet::PubComp(r) if r.pkid == 9));
    c.disconnect()?;
    let (_, daemon) = daemon.stop()?;
    assert_eq!(read_rows(&daemon.lake().join("telemetry"))?.len(), 1);
    Ok(())
}

#[test]
fn the_will_is_stored_when_a_client_vanishes_but_not_after_disconnect() -> TestResult {
    let daemon = Daemon::start("")?;
    let vanished =
        Client::connect_with_will(daemon.addr, "gone", "status/gone", r#"{"online": false}"#)?;
    drop(vanished);
    wait_for("the will to be published", || {
        daemon.log_contains("will published")
    })?;
    let polite = Client::connect_with_will(
        daemon.addr,
        "polite",
        "status/polite",
        r#"{"online": false}"#,
    )?;
    polite.disconnect()?;
    let (_, daemon) = daemon.stop()?;
    let rows = read_rows(&daemon.lake().join("telemetry"))?;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["device_id"], "gone");
    assert_eq!(rows[0]["online"], "false");
    Ok(())
}

#[test]
fn bad_clients_are_dropped_while_a_good_client_keeps_being_served() -> TestResult {
    let daemon = Daemon::start_with("connect_timeout = \"500ms\"", "")?;
    let mut good = Client::connect(daemon.addr, "good")?;

    // Bytes that are not MQTT.
    let mut junk = TcpStream::connect(daemon.addr)?;
    junk.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")?;
    assert!(Client::closed_by_server(&mut junk));

    // A PUBLISH announcing 10 MiB, over the 1 MiB default limit.
    let mut big = Client::connect(daemon.addr, "big")?;
    big.stream
        .write_all(&[0x30, 0x80, 0x80, 0x80, 0x05, 0, 1, b'a'])?;
    assert!(Client::closed_by_server(&mut big.stream));

    // A CONNECT that never comes.
    let mut silent = TcpStream::connect(daemon.addr)?;
    assert!(Client::closed_by_server(&mut silent));

    // A client that disconnects mid-packet.
    let mut half = Client::connect(daemon.addr, "half")?;
    half.stream.write_all(&[0x32, 50, 0, 1, b'a'])?;
    drop(half);

    // A payload that is not JSON, and the good client still served.
    good.publish1("sensors/good", "{not json", 1)?;
    good.publish1("sensors/good", r#"{"v": 2}"#, 2)?;
    good.send(Packet::PingReq)?;
    assert_eq!(good.recv()?, Packet::PingResp);
    good.disconnect()?;

    let (status, daemon) = daemon.stop()?;
    assert!(status.success());
    assert_eq!(read_rows(&daemon.lake().join("telemetry"))?.len(), 1);
    let rejected = read_rows(&daemon.data().join("_rejected"))?;
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0]["topic"], "sensors/good");
    assert!(
        rejected[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("not valid JSON"))
    );
    assert!(!daemon.log_contains("panicked"));
    Ok(())
}

#[test]
fn without_the_broker_role_a_subscribe_is_refused_with_a_failure_code() -> TestResult {
    let daemon = Daemon::start("[broker]\nenabled = false\n")?;
    let mut c = Client::connect(daemon.addr, "sub")?;
    let mut subscribe =
        rumqttc::mqttbytes::v4::Subscribe::new("#", rumqttc::mqttbytes::QoS::AtMostOnce);
    subscribe.pkid = 1;
    c.send(Packet::Subscribe(subscribe))?;
    match c.recv()? {
        Packet::SubAck(ack) => assert_eq!(
            ack.return_codes,
            [rumqttc::mqttbytes::v4::SubscribeReasonCode::Failure]
        ),
        other => return Err(format!("expected SUBACK, got {other:?}").into()),
    }
    Ok(())
}

#[test]
fn connections_over_the_limit_are_closed_at_once() -> TestResult {
    let daemon = Daemon::start_with("max_connections = 1", "")?;
    let _first = Client::connect(daemon.addr, "first")?;
    let mut second = TcpStream::connect(daemon.addr)?;
    second.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut out = bytes::BytesMut::new();
    Packet::Connect(Connect::new("second")).write(&mut out, usize::MAX)?;
    let _ = second.write_all(&out);
    assert!(Client::closed_by_server(&mut second));
    Ok(())
}

#[test]
fn more_data_than_the_memory_budget_all_lands_through_budget_flushes() -> TestResult {
    // Budget 64 KiB (4 x 16 KiB packets); ~1 KiB messages; no age or row flush would fire.
    let daemon = Daemon::start_with(
        "max_packet_size = \"16KiB\"",
        "[memory]\nbudget = \"64KiB\"\n[batch]\nmax_age = \"1h\"\nmax_rows = 1000000\n[grpc]\nlisten = \"\"",
    )?;
    let filler = "x".repeat(900);
    let mut c = Client::connect(daemon.addr, "bulk")?;
    for i in 1..=500u16 {
        c.publish1("bulk", &format!(r#"{{"seq": {i}, "pad": "{filler}"}}"#), i)?;
    }
    c.disconnect()?;
    let (status, daemon) = daemon.stop()?;
    assert!(status.success());
    let rows = read_rows(&daemon.lake().join("telemetry"))?;
    assert_eq!(rows.len(), 500);
    let files = common::parquet_files(&daemon.lake().join("telemetry")).len();
    assert!(
        files > 5,
        "expected many budget-pressure flushes, got {files} files"
    );
    assert!(daemon.log_contains("Budget"));
    Ok(())
}

/// A daemon holding one acknowledged row it can never publish: a plain file stands where the
/// table's folder must go, so every publish attempt fails.
fn daemon_with_an_unpublishable_row(grace: &str) -> Result<Daemon, Box<dyn std::error::Error>> {
    let daemon = Daemon::start_full(grace, "", "")?;
    std::fs::write(daemon.lake().join("telemetry"), b"in the way")?;
    let mut c = Client::connect(daemon.addr, "dev")?;
    c.publish1("a", r#"{"v": 1}"#, 1)?;
    Ok(daemon)
}

#[test]
fn shutdown_gives_up_after_the_grace_period_when_a_file_cannot_be_written() -> TestResult {
    let daemon = daemon_with_an_unpublishable_row("1s")?;
    let (status, daemon) = daemon.stop()?;
    assert_eq!(status.code(), Some(130), "forced stop exit code");
    assert!(daemon.log_contains("cannot publish batch"));
    assert!(daemon.log_contains("shutdown grace period over"));
    Ok(())
}

#[test]
fn a_second_signal_during_a_stuck_shutdown_exits_at_once() -> TestResult {
    let daemon = daemon_with_an_unpublishable_row("1h")?;
    daemon.signal("INT")?;
    wait_for("the first signal to start the shutdown", || {
        daemon.log_contains("SIGINT: shutting down")
    })?;
    let (status, _) = daemon.stop()?;
    assert_eq!(status.code(), Some(130));
    Ok(())
}
