//! systemd's notification protocol (`sd_notify`): datagrams like `READY=1` to the socket named
//! by `NOTIFY_SOCKET` (a path, or `@name` for an abstract socket). Without that variable every
//! call is a no-op, so the daemon runs the same outside systemd.
//!
//! The watchdog is fed from [`Heartbeats`]: the stages that must keep moving for acks to flow
//! (the WAL writer, the batcher) each beat at least once a second while alive — idle or busy —
//! and `WATCHDOG=1` is sent only while every beat is fresh. A stage hung in a syscall (a disk
//! that never returns from fsync) or deadlocked stops the pings, and systemd restarts the
//! service; the restart replays the WAL.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Sends notifications to systemd (or nowhere).
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From `NOTIFY_SOCKET` and `WATCHDOG_USEC` (honoured only when `WATCHDOG_PID` is unset or
    /// names this process).
    pub fn from_env() -> Self {
        let target = std::env::var("NOTIFY_SOCKET").ok().and_then(|name| {
            let addr = match name.strip_prefix('@') {
                Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name.as_bytes()),
                None => SocketAddr::from_pathname(&name),
            };
            match (UnixDatagram::unbound(), addr) {
                (Ok(sock), Ok(addr)) => Some((sock, addr)),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(socket = %name, error = %e, "NOTIFY_SOCKET unusable; not notifying systemd");
                    None
                }
            }
        });
        let for_us = std::env::var("WATCHDOG_PID")
            .map(|pid| pid.trim() == std::process::id().to_string())
            .unwrap_or(true);
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.trim().parse::<u64>().ok())
            .filter(|&usec| usec > 0 && for_us && target.is_some())
            .map(Duration::from_micros);
        Self { target, watchdog }
    }

    /// The watchdog timeout systemd set, if any.
    pub fn watchdog_timeout(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends `state` (newline-separated `KEY=value` lines); best effort.
    pub fn send(&self, state: &str) {
        if let Some((sock, addr)) = &self.target
            && let Err(e) = sock.send_to_addr(state.as_bytes(), addr)
        {
            tracing::debug!(error = %e, "sd_notify failed");
        }
    }

    /// Startup is done: recovered and listening.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// A one-line status for `systemctl status`.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}"));
    }

    /// Asks systemd for more time to start or stop.
    pub fn extend_timeout(&self, by: Duration) {
        self.send(&format!("EXTEND_TIMEOUT_USEC={}", by.as_micros()));
    }

    /// Shutdown has begun.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping: flushing buffered rows");
    }
}

/// A stage that must keep beating for the watchdog to be fed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The WAL writer thread.
    Wal = 0,
    /// The batcher task.
    Batcher = 1,
}

const STAGES: [(Stage, &str); 2] = [(Stage::Wal, "wal writer"), (Stage::Batcher, "batcher")];

/// Last beat of each stage, in ms since `start`.
#[derive(Debug)]
pub struct Heartbeats {
    start: Instant,
    last: [AtomicU64; 2],
}

impl Heartbeats {
    /// All stages alive now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            last: [AtomicU64::new(0), AtomicU64::new(0)],
        })
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// `stage` is alive.
    pub fn beat(&self, stage: Stage) {
        self.last[stage as usize].store(self.now_ms(), Ordering::Relaxed);
    }

    /// The first stage whose last beat is older than `max_age`, with that age.
    pub fn stalled(&self, max_age: Duration) -> Option<(&'static str, Duration)> {
        let now = self.now_ms();
        STAGES.iter().find_map(|&(stage, name)| {
            let age = Duration::from_millis(
                now.saturating_sub(self.last[stage as usize].load(Ordering::Relaxed)),
            );
            (age > max_age).then_some((name, age))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_that_stops_beating_is_reported() {
        let hb = Heartbeats {
            start: Instant::now() - Duration::from_secs(10),
            last: [AtomicU64::new(0), AtomicU64::new(0)],
        };
        hb.beat(Stage::Wal);
        let (name, age) = hb
            .stalled(Duration::from_secs(5))
            .unwrap_or(("none", Duration::ZERO));
        assert_eq!(name, "batcher");
        assert!(age >= Duration::from_secs(10));
        hb.beat(Stage::Batcher);
        assert_eq!(hb.stalled(Duration::from_secs(5)), None);
    }

    #[test]
    fn notifications_reach_the_socket_named_by_the_environment() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path)?;
        let notifier = Notifier {
            target: Some((UnixDatagram::unbound()?, SocketAddr::from_pathname(&path)?)),
            watchdog: None,
        };
        notifier.ready("up");
        let mut buf = [0u8; 256];
        let n = listener.recv(&mut buf)?;
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=up");
        Ok(())
    }
}
