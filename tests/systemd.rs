//! The systemd notification protocol against the real daemon: a datagram socket stands in for
//! systemd (NOTIFY_SOCKET, WATCHDOG_USEC).

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::{Client, Daemon, TestResult};

/// Reads notifications until one contains `want`, or the deadline passes.
fn wait_for_message(sock: &UnixDatagram, want: &str, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 1024];
    while Instant::now() < deadline {
        let _ = sock.set_read_timeout(Some(deadline - Instant::now()));
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                if msg.contains(want) {
                    return Some(msg);
                }
            }
            Err(_) => return None,
        }
    }
    None
}

#[test]
fn ready_after_listening_watchdog_from_live_stages_and_stopping_on_sigterm() -> TestResult {
    let dir = tempfile::tempdir()?;
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path)?;
    let envs = [
        ("NOTIFY_SOCKET", sock_path.display().to_string()),
        ("WATCHDOG_USEC", "400000".to_string()),
        ("FLEETLAKE_TEST_STALL_TOPIC", "test/stall".to_string()),
    ];
    let daemon = Daemon::start_in_env(dir, "2s", "", "", &envs)?;

    let ready = wait_for_message(&sock, "READY=1", common::DEADLINE).ok_or("no READY=1")?;
    assert!(ready.contains("STATUS="), "{ready}");
    // READY means listening: a client connects at once.
    let mut c = Client::connect(daemon.addr, "dev")?;
    c.publish1("sensors/dev/t", r#"{"v": 1}"#, 1)?;
    for _ in 0..3 {
        wait_for_message(&sock, "WATCHDOG=1", Duration::from_secs(2)).ok_or("watchdog pings")?;
    }
    // Pings carry a live status line; the published message shows up in it.
    let status = wait_for_message(&sock, "1 MQTT messages", common::DEADLINE)
        .ok_or("no STATUS= with the message count")?;
    assert!(
        status.contains("WATCHDOG=1\nSTATUS=ready; 1 MQTT connections"),
        "{status}"
    );

    // Hang the WAL writer: the pings must stop (stall threshold 2.5 s).
    let mut p = rumqttc::mqttbytes::v4::Publish::new(
        "test/stall",
        rumqttc::mqttbytes::QoS::AtMostOnce,
        b"{}".to_vec(),
    );
    p.pkid = 0;
    c.send(rumqttc::mqttbytes::v4::Packet::Publish(p))?;
    common::wait_for("the stall to be reported", || {
        daemon.log_contains("a pipeline stage is stuck")
    })?;
    // Drain pings sent before the report, then expect silence.
    while wait_for_message(&sock, "WATCHDOG=1", Duration::from_millis(10)).is_some() {}
    assert_eq!(
        wait_for_message(&sock, "WATCHDOG=1", Duration::from_millis(1200)),
        None,
        "no watchdog ping while the WAL writer is stuck"
    );

    daemon.signal("TERM")?;
    wait_for_message(&sock, "STOPPING=1", common::DEADLINE).ok_or("no STOPPING=1")?;
    Ok(())
}

#[test]
fn status_follows_the_counters_without_a_watchdog_and_is_cleared_after_stop() -> TestResult {
    let dir = tempfile::tempdir()?;
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path)?;
    let envs = [("NOTIFY_SOCKET", sock_path.display().to_string())];
    let daemon = Daemon::start_in_env(dir, "2s", "", "", &envs)?;
    wait_for_message(&sock, "READY=1", common::DEADLINE).ok_or("no READY=1")?;
    let mut c = Client::connect(daemon.addr, "dev")?;
    c.publish1("sensors/dev/t", r#"{"v": 1}"#, 1)?;
    // Checked every second and sent when it changed (no watchdog ping carries it here).
    let status = wait_for_message(&sock, "1 MQTT messages", Duration::from_secs(5))
        .ok_or("STATUS= did not follow the published message")?;
    assert!(status.starts_with("STATUS=ready;"), "{status}");
    drop(c);
    daemon.signal("TERM")?;
    wait_for_message(&sock, "STOPPING=1", common::DEADLINE).ok_or("no STOPPING=1")?;
    let deadline = Instant::now() + common::DEADLINE;
    let mut buf = [0u8; 1024];
    loop {
        assert!(
            Instant::now() < deadline,
            "STATUS= was not cleared after the stop"
        );
        let _ = sock.set_read_timeout(Some(deadline - Instant::now()));
        let n = sock.recv(&mut buf)?;
        if &buf[..n] == b"STATUS=" {
            break;
        }
    }
    Ok(())
}
