//! Upload throughput: fills a spool with files and times the uploader sending them to an
//! S3-compatible endpoint. `benches/run_upload.sh` starts a moto server on 127.0.0.1 and runs
//! it with small (single PUT) and large (multipart) files.
//!
//! ```sh
//! cargo bench --bench upload -- --endpoint http://127.0.0.1:PORT --bucket b --files 50 --size 4MiB
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetlake::config::{RemoteOutput, SpoolFull, StoreKind, parse_bytes};
use fleetlake::sink::spool::{Spool, SpoolQueue};
use fleetlake::sink::store;
use fleetlake::sink::uploader::{FIRST_BACKOFF, Uploader, UploaderConfig};
use fleetlake::telemetry::Stats;

fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str| {
        argv.iter()
            .position(|a| a == name)
            .and_then(|i| argv.get(i + 1).cloned())
    };
    let Some(endpoint) = arg("--endpoint") else {
        println!(
            "usage: cargo bench --bench upload -- --endpoint http://127.0.0.1:PORT --bucket B --files 50 --size 4MiB"
        );
        return Ok(());
    };
    let bucket = arg("--bucket").unwrap_or_else(|| "bench".into());
    let files: u64 = arg("--files").map_or(Ok(50), |s| s.parse())?;
    let size =
        parse_bytes(&arg("--size").unwrap_or_else(|| "4MiB".into())).map_err(anyhow::Error::msg)?;
    let threshold = 16 << 20;
    let dir = tempfile::tempdir()?;
    let spool_dir = dir.path().join("spool");
    // Distinct, incompressible-looking content per file (xorshift).
    let mut x = 0x9E37_79B9_7F4A_7C15_u64;
    for i in 0..files {
        let rel = format!(
            "bench/date=2026-11-27/hour=08/{}",
            fleetlake::sink::file_name("bench", i * 1000, i * 1000 + 999)
        );
        let path = spool_dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap_or(&spool_dir))?;
        let data: Vec<u8> = (0..size)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(path, data)?;
    }
    let remote = RemoteOutput {
        url: format!("s3://{bucket}/upload-bench"),
        kind: StoreKind::S3,
        bucket,
        prefix: format!("upload-bench/{}", std::process::id()),
        spool_dir: spool_dir.clone(),
        spool_max_bytes: u64::MAX,
        spool_full: SpoolFull::Pause,
        multipart_threshold: threshold,
        request_timeout: Duration::from_secs(30),
        retry_max_backoff: Duration::from_secs(5),
        endpoint: Some(endpoint),
        region: None,
        allow_http: true,
        virtual_hosted_style: false,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let stats = Arc::new(Stats::default());
    let store = store::build(&remote)?;
    let spool = Spool::open(
        spool_dir,
        SpoolQueue::new(u64::MAX, SpoolFull::Pause),
        stats.clone(),
    );
    let (_finish, finish_rx) = tokio::sync::watch::channel(true);
    let uploader = Uploader::new(
        store,
        spool,
        UploaderConfig {
            prefix: remote.prefix.clone(),
            conflicts: dir.path().join("conflicts"),
            multipart_threshold: threshold,
            first_backoff: FIRST_BACKOFF,
            max_backoff: remote.retry_max_backoff,
        },
        stats.clone(),
        finish_rx,
    );
    let started = Instant::now();
    runtime.block_on(uploader.run());
    let secs = started.elapsed().as_secs_f64();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let sent = load(&stats.files_uploaded);
    let bytes = load(&stats.upload_bytes);
    println!(
        "uploaded {sent}/{files} files of {size} bytes ({}) in {secs:.2} s: {:.1} MB/s, {:.1} files/s",
        if size > threshold {
            "multipart"
        } else {
            "single PUT"
        },
        bytes as f64 / secs / 1e6,
        sent as f64 / secs
    );
    anyhow::ensure!(sent == files, "not every file was uploaded");
    Ok(())
}
