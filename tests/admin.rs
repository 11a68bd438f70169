//! The admin HTTP endpoint of the real daemon.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use common::{Client, Daemon, TestResult};

/// `GET path` → (status code, body).
fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), Box<dyn std::error::Error>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(common::DEADLINE))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("no status code")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

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
    Ok(())
}
