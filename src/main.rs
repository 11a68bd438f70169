//! The `fleetlake` command: run the daemon, check a config, or print the default config.
//! Exit codes: 0 ok, 1 runtime failure, 69 (EX_UNAVAILABLE) `check-config --probe` failed,
//! 78 (EX_CONFIG) bad config, 130 forced stop.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use fleetlake::config::{ByteSize, Config, ConfigError, OutputTarget, RawConfig};
use fleetlake::sink::store;

const EX_CONFIG: u8 = 78;
/// `check-config --probe`: the object store is unreachable or refuses us.
const EX_UNAVAILABLE: u8 = 69;

/// `--version`: package version, git commit, target triple, and the optional features built in.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("FLEETLAKE_GIT_COMMIT"),
    "; target ",
    env!("FLEETLAKE_TARGET"),
    "; object stores: ",
    env!("FLEETLAKE_OBJECT_STORES"),
    ")"
);

/// Edge telemetry ingest: MQTT and gRPC in, Parquet out.
#[derive(Debug, Parser)]
#[command(name = "fleetlake", version = VERSION, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon (the default when no subcommand is given).
    Run(RunArgs),
    /// Validate a config file and the files it names; exit 0, or 78 naming what is wrong.
    CheckConfig(CheckArgs),
    /// Print the built-in default config as TOML.
    PrintDefaultConfig,
}

#[derive(Debug, Args)]
struct ConfigArg {
    /// Config file (TOML). Without it, the built-in default is used.
    #[arg(long, short, env = "FLEETLAKE_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct CheckArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// With an object-store output: write, read back and delete a small object under the
    /// prefix, to prove the bucket exists and the credentials may write (exit 69 if not).
    #[arg(long)]
    probe: bool,
    /// Also print the effective config (every key, defaults filled in) as TOML.
    #[arg(long)]
    print: bool,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Log format, overriding `[log] format`.
    #[arg(long, value_parser = ["text", "json"])]
    log_format: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::PrintDefaultConfig) => {
            println!("# fleetlake built-in default config (node.id empty = the host name)");
            print!("{}", RawConfig::builtin().to_toml());
            ExitCode::SUCCESS
        }
        Some(Command::CheckConfig(args)) => check_config(&args),
        Some(Command::Run(args)) => run(args),
        None => run(cli.run),
    }
}

/// `check-config`: the config, then the object store (built, and probed with `--probe`).
fn check_config(args: &CheckArgs) -> ExitCode {
    let config = match Config::load(args.config.config.as_deref()) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    if args.print {
        print!("{}", config.raw.to_toml());
    }
    if let Err(e) = fleetlake::app::load_security(&config) {
        eprintln!("fleetlake: {}", fleetlake::app::explain(&e));
        return ExitCode::from(EX_CONFIG);
    }
    for b in &config.bridges {
        if let Err(e) = fleetlake::bridge::check_files(b) {
            eprintln!("fleetlake: bridge `{}`: {e}", b.name);
            return ExitCode::from(EX_CONFIG);
        }
    }
    check_disk(&config);
    if let OutputTarget::Remote(remote) = &config.output {
        if let Err(e) = store::build(remote) {
            eprintln!("fleetlake: {e}");
            return ExitCode::from(EX_CONFIG);
        }
        eprintln!(
            "output {}: credentials from {}",
            remote.url,
            store::credential_source(remote)
        );
        if args.probe {
            let runtime = match runtime(tokio::runtime::Builder::new_current_thread()) {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            match runtime.block_on(store::probe(remote, &config.node_id)) {
                Ok(report) => {
                    eprintln!(
                        "probe ok: wrote, read back and deleted {} in {} ms",
                        report.key,
                        report.elapsed.as_millis()
                    );
                    if report.delete_refused {
                        eprintln!(
                            "warning: deleting the probe object was refused; it stays in the bucket"
                        );
                    }
                }
                Err(e) => {
                    eprintln!("fleetlake: probe failed: {e}");
                    return ExitCode::from(EX_UNAVAILABLE);
                }
            }
        }
    } else if args.probe {
        eprintln!("--probe: the output is not an object store; nothing to probe");
    }
    eprintln!("config ok");
    ExitCode::SUCCESS
}

/// Warns when the data volume is smaller than what the config lets fleetlake keep on it, and
/// when a local lake has no bound at all.
fn check_disk(config: &Config) {
    if let OutputTarget::Local(root) = &config.output
        && !config.retain_lake.any()
    {
        eprintln!(
            "warning: the lake {} has no bound (output.retain_bytes, output.retain_age): it grows until its volume is full",
            root.display()
        );
    }
    let bounds = config.disk_bounds();
    let total: u64 = bounds.iter().map(|(_, b)| b).sum();
    // The data dir may not exist yet: its nearest existing ancestor is on the same volume.
    let existing = config.data_dir.ancestors().find(|p| p.exists());
    let Some(volume) = existing.and_then(|p| rustix::fs::statvfs(p).ok()) else {
        return;
    };
    let size = volume.f_blocks.saturating_mul(volume.f_frsize);
    if total > size {
        let listed: Vec<String> = bounds
            .iter()
            .map(|(key, b)| format!("{key} {}", ByteSize(*b)))
            .collect();
        eprintln!(
            "warning: node.data_dir {} is on a volume of {}, less than its bounds add up to ({}: {})",
            config.data_dir.display(),
            ByteSize(size),
            ByteSize(total),
            listed.join(", ")
        );
    }
}

/// Builds a tokio runtime, or says why not.
fn runtime(mut builder: tokio::runtime::Builder) -> Result<tokio::runtime::Runtime, ExitCode> {
    builder.enable_all().build().map_err(|e| {
        eprintln!("fleetlake: cannot start the async runtime: {e}");
        ExitCode::FAILURE
    })
}

fn config_error(e: &ConfigError) -> ExitCode {
    eprintln!("fleetlake: {e}");
    ExitCode::from(EX_CONFIG)
}

fn run(args: RunArgs) -> ExitCode {
    let config = match Config::load(args.config.config.as_deref()) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    let json = args
        .log_format
        .as_deref()
        .map_or(config.log_json, |f| f == "json");
    fleetlake::telemetry::init_logging(json, &config.log_level);
    // Whatever the config names (data dir, security files) is checked before start: a problem
    // there exits 78 like a bad key, so systemd does not restart it in a loop.
    let security = match fleetlake::app::prepare(&config) {
        Ok(security) => security,
        Err(e) => {
            let error = fleetlake::app::explain(&e);
            tracing::error!(error, "fleetlake cannot start: fix the config");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let runtime = match runtime(tokio::runtime::Builder::new_multi_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = runtime.block_on(fleetlake::app::run(config, security));
    // After a forced stop, do not wait long for blocking work still running (an encode).
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(fleetlake::app::Exit::Clean) => ExitCode::SUCCESS,
        Ok(fleetlake::app::Exit::Forced) => ExitCode::from(130),
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "fleetlake failed");
            ExitCode::FAILURE
        }
    }
}
