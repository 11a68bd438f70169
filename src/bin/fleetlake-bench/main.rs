//! `fleetlake-bench`: a load generator for fleetlake or any MQTT broker.
//!
//! `mqtt`: N connections (1 to 10,000) publish JSON readings at QoS 0, 1 or 2 over MQTT 3.1.1
//! or 5, as fast as the server takes them or at a fixed total rate, for a message count or a
//! duration; or hold N idle connections open (`--idle`, for memory per connection). Acks are
//! timed per packet id (send → PUBACK, or → PUBCOMP for QoS 2).
//! `grpc`: batches of points over unary `Write` calls or a pipelined `WriteStream`, timed per
//! request.
//!
//! Every connection is a task on ONE thread, so the generator takes at most one core. Latency
//! goes into an HDR histogram; a one-line progress report goes to stderr every second; the
//! summary goes to stdout as `key=value` pairs (the same keys for both kinds of run).
//!
//! ```sh
//! fleetlake-bench mqtt --addr 127.0.0.1:1883 --conns 4 --qos 1 --messages 1000000
//! fleetlake-bench mqtt --conns 1000 --qos 1 --rate 50000 --duration 30s --protocol 5
//! fleetlake-bench mqtt --conns 10000 --idle --duration 20s      # ulimit -n 20000 first
//! fleetlake-bench grpc --addr 127.0.0.1:50051 --points 1000000 --batch 1000
//! ```

mod grpc;
mod mqtt;
mod report;
mod sub;

use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};

/// Load generator for fleetlake (MQTT, gRPC), usable against any MQTT broker.
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
    /// gRPC clients writing batches of points.
    Grpc(GrpcArgs),
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
    /// Client ids and device ids are this prefix and the connection number (`load-0`, `load-1`,
    /// …); topics `sensors/<id>/telemetry`.
    #[arg(long, default_value = "load-")]
    pub(crate) prefix: String,
    /// Connect, then hold the connections open without publishing until --duration ends.
    #[arg(long)]
    pub(crate) idle: bool,
    /// Subscriber connections (the broker role), subscribed before anyone publishes; payloads
    /// then carry their send time and deliveries are timed.
    #[arg(long, default_value_t = 0)]
    pub(crate) subscribers: u64,
    /// The subscribers' topic filter (publishers send to `sensors/<id>/telemetry`).
    #[arg(long, default_value = "sensors/#")]
    pub(crate) sub_filter: String,
    /// The subscribers' QoS (default: --qos).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub(crate) sub_qos: Option<u8>,
    /// No progress lines.
    #[arg(long)]
    pub(crate) quiet: bool,
}

/// `fleetlake-bench grpc`.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct GrpcArgs {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub(crate) addr: String,
    /// HTTP/2 connections.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub(crate) conns: u64,
    /// Points per request.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) batch: u64,
    /// Requests in flight per connection (unary calls, or pipelined on the stream).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub(crate) inflight: u64,
    /// Points in all; 0 with --duration: no limit.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) points: u64,
    /// Stop sending after this long (e.g. 30s), whatever --points says.
    #[arg(long, value_parser = humantime)]
    pub(crate) duration: Option<Duration>,
    /// Total points per second (0: as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) rate: f64,
    /// Distinct device ids (the prefix and a number: `load-0`, `load-1`, …), round robin over
    /// the points.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) devices: u64,
    /// Device id prefix.
    #[arg(long, default_value = "load-")]
    pub(crate) prefix: String,
    /// One pipelined `WriteStream` per connection instead of unary `Write` calls.
    #[arg(long)]
    pub(crate) stream: bool,
    /// Bearer token (`authorization: Bearer …`), for a server with `grpc.auth.tokens_file`.
    #[arg(long, env = "FLEETLAKE_BENCH_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// No progress lines.
    #[arg(long)]
    pub(crate) quiet: bool,
}

fn humantime(s: &str) -> Result<Duration, String> {
    fleetlake::config::parse_duration(s)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Command::Mqtt(a) = &cli.command
        && a.idle
        && a.duration.is_none()
    {
        eprintln!("fleetlake-bench: --idle needs --duration");
        return std::process::ExitCode::from(2);
    }
    if let Command::Mqtt(MqttArgs {
        messages: 0,
        duration: None,
        idle: false,
        ..
    })
    | Command::Grpc(GrpcArgs {
        points: 0,
        duration: None,
        ..
    }) = &cli.command
    {
        eprintln!("fleetlake-bench: a count of 0 (no limit) needs --duration");
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
    let (conns, quiet, duration) = match &cli.command {
        Command::Mqtt(a) => (a.conns, a.quiet, a.duration),
        Command::Grpc(a) => (a.conns, a.quiet, a.duration),
    };
    let totals = Rc::new(report::Totals::new(conns));
    let local = tokio::task::LocalSet::new();
    let start = Instant::now();
    let deadline = duration.map(|d| start + d);
    let head = match &cli.command {
        Command::Mqtt(a) => format!(
            "kind=mqtt qos={} protocol={}",
            a.qos,
            match a.protocol {
                Protocol::V4 => "3.1.1",
                Protocol::V5 => "5",
            }
        ),
        Command::Grpc(a) => format!(
            "kind=grpc mode={} batch={} inflight={}",
            if a.stream { "stream" } else { "unary" },
            a.batch,
            a.inflight
        ),
    };
    local.block_on(&runtime, async {
        let progress =
            (!quiet).then(|| tokio::task::spawn_local(report::progress(totals.clone(), start)));
        match cli.command {
            Command::Mqtt(args) => {
                let subs: Vec<_> = (0..args.subscribers)
                    .map(|i| {
                        let s = sub::Sub::new(&args, i, deadline, totals.clone());
                        tokio::task::spawn_local(s.run())
                    })
                    .collect();
                // Everyone subscribed before the first message (or a subscriber failed).
                while totals.subscribed.get() + totals.failed_conns() < args.subscribers
                    && subs.iter().any(|h| !h.is_finished())
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let handles: Vec<_> = (0..args.conns)
                    .map(|id| {
                        let conn = mqtt::Conn::new(&args, id, deadline, totals.clone());
                        tokio::task::spawn_local(conn.run())
                    })
                    .collect();
                for h in handles {
                    if let Ok(Err(e)) = h.await {
                        totals.failed(e);
                    }
                }
                totals.publishers_done.set(true);
                for h in subs {
                    if let Ok(Err(e)) = h.await {
                        totals.failed(e);
                    }
                }
            }
            Command::Grpc(args) => grpc::run(args, deadline, totals.clone()).await,
        }
        if let Some(p) = progress {
            p.abort();
        }
    });
    println!("{}", totals.summary(&head, start.elapsed()));
    // Exit 1 when a connection failed or a message was refused: the summary says which.
    if totals.failed_conns() > 0 || totals.errors.get() > 0 {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
