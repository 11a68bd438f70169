//! `fleetlake-bench`: a load generator for fleetlake or any MQTT broker. N connections
//! (1 to 10,000) publish JSON readings at QoS 0, 1 or 2 over MQTT 3.1.1 or 5, as fast as the
//! server takes them or at a fixed total rate, for a message count or a duration; or hold N
//! idle connections open (`--idle`, for memory per connection). Every connection is a task on
//! ONE thread, so the generator takes at most one core. Acks are timed per packet id into an
//! HDR histogram (send → PUBACK, or → PUBCOMP for QoS 2); a one-line progress report goes to
//! stderr every second; the summary goes to stdout as `key=value` pairs.
//!
//! ```sh
//! fleetlake-bench mqtt --addr 127.0.0.1:1883 --conns 4 --qos 1 --messages 1000000
//! fleetlake-bench mqtt --conns 1000 --qos 1 --rate 50000 --duration 30s --protocol 5
//! fleetlake-bench mqtt --conns 10000 --idle --duration 20s      # ulimit -n 20000 first
//! ```

mod mqtt;
mod report;

use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};

/// Load generator for fleetlake (or any MQTT broker).
#[derive(Debug, Parser)]
#[command(name = "fleetlake-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// MQTT publishers (or idle connections).
    Mqtt(MqttArgs),
}

/// Payload templates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Payload {
    /// A ~60-byte reading: `{"ts":…,"seq":…,"temp":…,"hum":…,"ok":true}`.
    Reading,
    /// A ~1 KiB JSON document of 40 fields.
    Doc,
}

/// MQTT protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Protocol {
    /// MQTT 3.1.1.
    #[value(name = "3.1.1")]
    V4,
    /// MQTT 5.0.
    #[value(name = "5")]
    V5,
}

/// `fleetlake-bench mqtt`.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct MqttArgs {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub(crate) addr: String,
    /// Connections (each its own client id and device).
    #[arg(long, default_value_t = 4)]
    pub(crate) conns: u64,
    /// QoS 0, 1 or 2.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub(crate) qos: u8,
    /// MQTT version.
    #[arg(long, value_enum, default_value = "3.1.1")]
    pub(crate) protocol: Protocol,
    /// Messages in all (split over the connections); 0 with --duration: no limit.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) messages: u64,
    /// Stop sending after this long (e.g. 30s), whatever --messages says.
    #[arg(long, value_parser = humantime)]
    pub(crate) duration: Option<Duration>,
    /// Total messages per second over all connections (0: as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) rate: f64,
    /// With --rate: messages due within this many µs go out in one write.
    #[arg(long, default_value_t = 200)]
    pub(crate) burst_us: u64,
    /// QoS 1/2 messages in flight per connection (unacknowledged).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub(crate) window: u64,
    /// Payload template.
    #[arg(long, value_enum, default_value = "reading")]
    pub(crate) payload: Payload,
    /// Client ids and device ids are `{prefix}{n}`; topics `sensors/{prefix}{n}/telemetry`.
    #[arg(long, default_value = "load-")]
    pub(crate) prefix: String,
    /// Connect, then hold the connections open without publishing until --duration ends.
    #[arg(long)]
    pub(crate) idle: bool,
    /// No progress lines.
    #[arg(long)]
    pub(crate) quiet: bool,
}

fn humantime(s: &str) -> Result<Duration, String> {
    fleetlake::config::parse_duration(s)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let Command::Mqtt(args) = cli.command;
    if args.idle && args.duration.is_none() {
        eprintln!("fleetlake-bench: --idle needs --duration");
        return std::process::ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleetlake-bench: tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let totals = Rc::new(report::Totals::new(args.conns));
    let local = tokio::task::LocalSet::new();
    let start = Instant::now();
    let deadline = args.duration.map(|d| start + d);
    local.block_on(&runtime, async {
        let progress = (!args.quiet)
            .then(|| tokio::task::spawn_local(report::progress(totals.clone(), start)));
        let handles: Vec<_> = (0..args.conns)
            .map(|id| {
                let conn = mqtt::Conn::new(&args, id, deadline, totals.clone());
                tokio::task::spawn_local(conn.run())
            })
            .collect();
        for h in handles {
            if let Ok(Err(e)) = h.await {
                totals.failed(&e);
            }
        }
        if let Some(p) = progress {
            p.abort();
        }
    });
    let elapsed = start.elapsed();
    println!("{}", totals.summary(&args, elapsed));
    if totals.failed_conns() > 0 {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
