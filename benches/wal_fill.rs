//! Writes a WAL full of readings, as a crash under load would leave it, to measure recovery:
//! `benches/run_recovery.sh` runs it, then times a daemon start that replays it.
//!
//! ```sh
//! cargo bench --bench wal_fill -- --dir /tmp/x/data/wal --bytes 1GiB
//! ```

use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use fleetlake::config::parse_bytes;
use fleetlake::wal::{DiskFs, Log};

fn main() -> std::io::Result<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str| {
        argv.iter()
            .position(|a| a == name)
            .and_then(|i| argv.get(i + 1).cloned())
    };
    let Some(dir) = arg("--dir").map(PathBuf::from) else {
        println!("usage: cargo bench --bench wal_fill -- --dir DATA_DIR/wal --bytes 1GiB");
        return Ok(());
    };
    let bytes = parse_bytes(&arg("--bytes").unwrap_or_else(|| "1GiB".into()))
        .map_err(std::io::Error::other)?;
    let devices = 1000u64;
    let fs = DiskFs::open(&dir)?;
    let mut log = Log::start(fs, Vec::new(), 0, 64 << 20)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as i64;
    let started = Instant::now();
    let (mut written, mut records) = (0u64, 0u64);
    let clients: Vec<String> = (0..devices).map(|d| format!("dev-{d}")).collect();
    let topics: Vec<String> = (0..devices)
        .map(|d| format!("sensors/dev-{d}/telemetry"))
        .collect();
    while written < bytes {
        for _ in 0..10_000 {
            let d = (records % devices) as usize;
            let seq = records / devices;
            let payload = format!(
                r#"{{"ts":{},"seq":{seq},"temp":{:.1},"hum":{},"ok":true,"fw":"1.2.0"}}"#,
                now / 1000 + seq as i64,
                20.0 + (seq % 100) as f64 / 10.0,
                30 + seq % 40
            );
            log.stage(
                fleetlake::wal::record::Head::of(fleetlake::decode::Source::Mqtt),
                now,
                &clients[d],
                &topics[d],
                payload.as_bytes(),
            );
            records += 1;
        }
        written += log.write()? as u64;
        log.sync()?;
        log.rotate_if_full()?;
    }
    println!(
        "wal_fill records={records} bytes={written} seconds={:.1}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
