//! The `fleetlake` command: run the daemon, check a config, or print the default config.
//! Exit codes: 0 ok, 1 runtime failure, 78 (EX_CONFIG) bad config, 130 forced stop.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use fleetlake::config::{Config, ConfigError, RawConfig};

const EX_CONFIG: u8 = 78;

/// `--version`: package version, git commit, and the optional features built in.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("FLEETLAKE_GIT_COMMIT"),
    "; features: none)"
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
    /// Validate a config file and print the effective config; exit 0, or 78 naming the bad key.
    CheckConfig(ConfigArg),
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
        Some(Command::CheckConfig(arg)) => match Config::load(arg.config.as_deref()) {
            Ok(config) => {
                print!("{}", config.raw.to_toml());
                eprintln!("config ok");
                ExitCode::SUCCESS
            }
            Err(e) => config_error(&e),
        },
        Some(Command::Run(args)) => run(args),
        None => run(cli.run),
    }
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleetlake: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(fleetlake::app::run(config));
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
