//! Telemetry: log setup, the counters every stage updates, and systemd notification with a
//! watchdog fed by stage heartbeats ([`notify`]). Logs go to stderr (journald
//! friendly: no colour unless stderr is a terminal), human text or JSON; the filter comes from
//! `RUST_LOG` when set, else `[log] level`. Counters are plain atomics in [`Stats`], summed up
//! in the shutdown log line and served by the admin endpoint ([`admin`]).

pub mod admin;
pub mod notify;
mod stats;

use std::io::IsTerminal;

pub use notify::{Heartbeats, Notifier, Stage};
pub use stats::{Histogram, Stats, TableCounts, UploadErrorKind};
use tracing_subscriber::EnvFilter;

/// The filter for `log.level`: the Delta library logs each commit and snapshot at info level,
/// so it is held to warnings unless the level names it.
fn filter_directives(level: &str) -> String {
    match level.contains("delta_kernel") {
        true => level.to_string(),
        false => format!("{level},delta_kernel=warn"),
    }
}

/// Installs the global tracing subscriber.
pub fn init_logging(json: bool, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter_directives(level)))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let result = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    if let Err(e) = result {
        eprintln!("fleetlake: logging already initialised: {e}");
    }
}

/// CPU seconds (user + system) and peak RSS in KiB of this process, from `/proc/self`
/// (Linux; `None` elsewhere). Clock ticks are taken as 100 Hz, the Linux `USER_HZ`.
pub fn process_usage() -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let hwm = status_kib("VmHWM")?;
    Some((ticks as f64 / 100.0, hwm))
}

/// A `kB` field of `/proc/self/status` (e.g. `VmRSS`, `VmHWM`).
pub fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Seconds since the epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_delta_library_is_held_to_warnings_unless_named() {
        assert_eq!(super::filter_directives("info"), "info,delta_kernel=warn");
        assert_eq!(
            super::filter_directives("debug,delta_kernel=info"),
            "debug,delta_kernel=info"
        );
    }
}
