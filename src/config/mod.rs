//! Configuration: one TOML file parsed into raw serde structs ([`RawConfig`], every key with a
//! default in one place, unknown keys refused), then validated into typed values ([`Config`]).
//! Errors name the offending key so `fleetlake check-config` (which systemd runs before start)
//! can tell the operator exactly what to fix.

mod bridge;
mod broker;
mod grpc;
mod mqtt;
mod output;
mod tables;
mod units;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use parquet::basic::{Compression, GzipLevel, ZstdLevel};
use serde::{Deserialize, Serialize};

use crate::decode::topic::{Router, TableRule};
use crate::sink::retention::RetainLimits;
pub use bridge::{BridgeConfig, BridgeTls, Password, RawBridge, RawSubscription};
pub use broker::{BrokerConfig, BrokerLimits, RawBroker};
pub use grpc::{GrpcAuth, GrpcConfig, RawGrpc, RawGrpcAuth, RawGrpcTls};
pub use mqtt::{MqttAuth, MqttConfig, MqttTls, RawMqtt, RawMqttAuth, RawMqttTls};
pub use output::{
    FileModes, OutputTarget, RawDelta, RawOutput, RawS3, RemoteOutput, SpoolFull, StoreKind,
    TableFormat,
};
pub use tables::{RawColumn, RawTable};
use tables::{default_time_fields, default_unknown_fields, validate_declared, validate_tables};
pub use units::{ByteSize, HumanDuration, parse_bytes, parse_duration};

pub use crate::columnar::ParquetOptions;
pub use crate::decode::REJECTED_TABLE;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file's path.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown key or a value of the wrong type.
    #[error("invalid config {origin}: {message}")]
    Parse {
        /// Where the text came from.
        origin: String,
        /// The TOML parser's message, which names the key and line.
        message: String,
    },
    /// A value parsed but is not usable.
    #[error("invalid value for `{key}`: {message}")]
    Invalid {
        /// The dotted key, e.g. `batch.max_rows`.
        key: String,
        /// What is wrong and what is expected.
        message: String,
    },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The config file as written, with defaults filled in. Printing it gives the effective config.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// `[node]`
    pub node: RawNode,
    /// `[mqtt]`
    pub mqtt: RawMqtt,
    /// `[broker]`
    pub broker: RawBroker,
    /// `[grpc]`
    pub grpc: RawGrpc,
    /// `[output]`
    pub output: RawOutput,
    /// `[batch]`
    pub batch: RawBatch,
    /// `[clock]`
    pub clock: RawClock,
    /// `[parquet]`
    pub parquet: RawParquet,
    /// `[memory]`
    pub memory: RawMemory,
    /// `[wal]`
    pub wal: RawWal,
    /// `[admin]`
    pub admin: RawAdmin,
    /// `[log]`
    pub log: RawLog,
    /// `[[tables]]`
    pub tables: Vec<RawTable>,
    /// `[[bridge]]`: external brokers to subscribe to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bridge: Vec<RawBridge>,
}

/// `[node]`: identity and local state.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawNode {
    /// Node id, part of every file name; defaults to the host name.
    pub id: String,
    /// Directory for local state (and the default output).
    pub data_dir: PathBuf,
    /// How long shutdown may take to flush before the process gives up.
    pub shutdown_grace: HumanDuration,
}

impl Default for RawNode {
    fn default() -> Self {
        Self {
            id: String::new(),
            data_dir: PathBuf::from("./fleetlake-data"),
            shutdown_grace: HumanDuration(Duration::from_secs(30)),
        }
    }
}

/// `[batch]`: when a table's buffered rows become a file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBatch {
    /// Flush a table when it holds this many rows.
    pub max_rows: usize,
    /// Flush a table when its buffered rows take this many bytes in the Arrow builders.
    pub max_bytes: ByteSize,
    /// Flush a table this long after its first buffered row.
    pub max_age: HumanDuration,
    /// Most tables (besides `_rejected`); messages for more go to `_rejected`. Bounds what
    /// `{table}` topic levels can create.
    pub max_tables: usize,
    /// Most payload columns per table; a message that would add more goes to `_rejected`.
    /// Bounds the memory of devices that invent a field name per message.
    pub max_columns: usize,
}

impl Default for RawBatch {
    fn default() -> Self {
        Self {
            max_rows: 500_000,
            max_bytes: ByteSize(16 << 20),
            max_age: HumanDuration(Duration::from_secs(60)),
            max_tables: 256,
            max_columns: 1000,
        }
    }
}

/// `[clock]`: rows whose time is far from their receive time (bad device clocks).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawClock {
    /// A row time later than its receive time by more than this is out of range.
    pub max_ahead: HumanDuration,
    /// A row time earlier than its receive time by more than this is out of range.
    pub max_behind: HumanDuration,
    /// What an out-of-range row does: `receive_time`, `reject` or `accept`.
    pub out_of_range: String,
}

impl Default for RawClock {
    fn default() -> Self {
        Self {
            max_ahead: HumanDuration(Duration::from_secs(86_400)),
            max_behind: HumanDuration(Duration::from_secs(3650 * 86_400)),
            out_of_range: "receive_time".into(),
        }
    }
}

/// `[parquet]`: file encoding.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawParquet {
    /// `zstd`, `snappy`, `lz4`, `gzip` or `none`.
    pub compression: String,
    /// Level for zstd (1-22) or gzip (0-10); 0 means the codec's default.
    pub compression_level: i32,
    /// Most rows per row group.
    pub row_group_rows: usize,
}

impl Default for RawParquet {
    fn default() -> Self {
        Self {
            compression: "zstd".into(),
            compression_level: 3,
            row_group_rows: 128 * 1024,
        }
    }
}

/// `[memory]`: the byte budget for buffered data.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMemory {
    /// Bytes for ring buffers, Arrow builders and batches being encoded.
    pub budget: ByteSize,
    /// What QoS 0 messages do when the budget is full: `backpressure` or `shed`.
    pub qos0_when_full: String,
}

impl Default for RawMemory {
    fn default() -> Self {
        Self {
            budget: ByteSize(64 << 20),
            qos0_when_full: "backpressure".into(),
        }
    }
}

/// `[wal]`: the write-ahead log under `{data_dir}/wal`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawWal {
    /// Shortest time between two fsyncs; records arriving meanwhile share the next one.
    /// `0s` syncs as soon as the previous sync ends.
    pub sync_interval: HumanDuration,
    /// A segment file is closed and a new one started past this size.
    pub segment_size: ByteSize,
}

impl Default for RawWal {
    fn default() -> Self {
        Self {
            sync_interval: HumanDuration(Duration::ZERO),
            segment_size: ByteSize(64 << 20),
        }
    }
}

/// `[admin]`: the HTTP endpoint for metrics and health checks.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    /// Address for `/metrics`, `/healthz` and `/readyz`; empty turns the endpoint off.
    pub listen: String,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

/// `[log]`: logging.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    /// `text` or `json`.
    pub format: String,
    /// A `RUST_LOG`-style filter; the `RUST_LOG` environment variable wins when set.
    pub level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            format: "text".into(),
            level: "info".into(),
        }
    }
}

impl RawConfig {
    /// The built-in default: every topic into one table `telemetry`.
    pub fn builtin() -> Self {
        Self {
            tables: vec![RawTable {
                name: "telemetry".into(),
                topics: vec!["#".into()],
                time_fields: default_time_fields(),
                columns: Vec::new(),
                unknown_fields: default_unknown_fields(),
                strict: None,
                properties: Vec::new(),
            }],
            ..Self::default()
        }
    }

    /// Parses TOML text; `origin` names the source in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let mut raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        if raw.tables.is_empty() {
            raw.tables = Self::builtin().tables;
        }
        Ok(raw)
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The effective config as TOML (no secrets exist in it yet; future ones are redacted here).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }
}

/// `log.format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum LogFormat {
    Text,
    Json,
}

/// `parquet.compression`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Codec {
    Zstd,
    Snappy,
    Lz4,
    Gzip,
    None,
}

/// Reads a string setting into its enum (the serde names of its variants), naming `key` and
/// the accepted values when it is none of them.
fn choice<T: serde::de::DeserializeOwned>(key: &str, text: &str) -> Result<T, ConfigError> {
    use serde::de::IntoDeserializer;
    let de: serde::de::value::StrDeserializer<'_, serde::de::value::Error> =
        text.into_deserializer();
    T::deserialize(de).map_err(|e| invalid(key, e.to_string()))
}

/// What QoS 0 messages do when the memory budget is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Qos0WhenFull {
    /// Stop reading the socket like for QoS 1/2 (nothing is lost).
    Backpressure,
    /// Drop the message and count it in `messages_shed`.
    Shed,
}

/// The validated configuration the daemon runs with.
#[derive(Clone, Debug)]
pub struct Config {
    /// Node id used in file names.
    pub node_id: String,
    /// Local state directory.
    pub data_dir: PathBuf,
    /// Shutdown flush deadline.
    pub shutdown_grace: Duration,
    /// MQTT listener settings.
    pub mqtt: MqttConfig,
    /// The broker role.
    pub broker: BrokerConfig,
    /// gRPC service settings.
    pub grpc: GrpcConfig,
    /// Where Parquet files go.
    pub output: OutputTarget,
    /// Plain Parquet, or Parquet committed to a Delta log per table.
    pub table_format: TableFormat,
    /// Topic → table routing.
    pub tables: Vec<TableRule>,
    /// Declared columns and rules of tables (`[[tables]] columns`).
    pub declared: Vec<crate::columnar::Declared>,
    /// External brokers to subscribe to.
    pub bridges: Vec<BridgeConfig>,
    /// Batch flush limits.
    pub batch: BatchLimits,
    /// What rows with a time far from their receive time do.
    pub clock: ClockPolicy,
    /// Parquet encoding options.
    pub parquet: ParquetOptions,
    /// Permission bits of a local output's files and folders.
    pub lake_modes: FileModes,
    /// Retention of a local output's lake.
    pub retain_lake: RetainLimits,
    /// Retention of `{data_dir}/_rejected`.
    pub retain_rejected: RetainLimits,
    /// Memory budget in bytes.
    pub memory_budget: usize,
    /// QoS 0 policy when the budget is full.
    pub qos0_when_full: Qos0WhenFull,
    /// Write-ahead log settings.
    pub wal: WalConfig,
    /// Admin HTTP listen address (`None`: off).
    pub admin_listen: Option<SocketAddr>,
    /// Log format is JSON.
    pub log_json: bool,
    /// Log filter.
    pub log_level: String,
    /// The raw form, for printing.
    pub raw: RawConfig,
}

/// Validated `[wal]`.
#[derive(Clone, Copy, Debug)]
pub struct WalConfig {
    /// Shortest time between fsyncs (0: back to back).
    pub sync_interval: Duration,
    /// Segment rotation size in bytes.
    pub segment_size: u64,
}

/// Validated `[clock]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockPolicy {
    /// Most µs a row time may be after its receive time.
    pub max_ahead_us: i64,
    /// Most µs a row time may be before its receive time.
    pub max_behind_us: i64,
    /// What an out-of-range row does.
    pub action: OutOfRange,
}

impl Default for ClockPolicy {
    /// The policy of the default `[clock]` (one place holds the defaults: [`RawClock`]).
    fn default() -> Self {
        Config::builtin().clock
    }
}

impl ClockPolicy {
    /// Whether a row time of `time` (µs) received at `received_at` (µs) is out of range.
    pub fn out_of_range(&self, time: i64, received_at: i64) -> bool {
        let skew = time.saturating_sub(received_at);
        skew > self.max_ahead_us || skew < -self.max_behind_us
    }
}

/// `clock.out_of_range`: what a row whose time is out of range does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutOfRange {
    /// Its `time` (and partition) becomes its receive time; the device's time is kept in
    /// the `device_time` column.
    ReceiveTime,
    /// The message goes to `_rejected` (reason `time_range`).
    Reject,
    /// Written as it is (counted).
    Accept,
}

/// Validated `[batch]`.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    /// Rows per table before a flush.
    pub max_rows: usize,
    /// Buffered bytes per table before a flush.
    pub max_bytes: usize,
    /// Age of the first buffered row before a flush.
    pub max_age: Duration,
    /// Most tables besides `_rejected`.
    pub max_tables: usize,
    /// Most payload columns per table.
    pub max_columns: usize,
}

impl Config {
    /// The built-in default configuration.
    pub fn builtin() -> Self {
        Self::validate(RawConfig::builtin())
            .unwrap_or_else(|e| unreachable!("builtin config is valid: {e}"))
    }

    /// Loads `path`, or the built-in default when `None`.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        match path {
            Some(p) => Self::validate(RawConfig::load(p)?),
            None => Self::validate(RawConfig::builtin()),
        }
    }

    /// Checks every value and builds the typed config.
    pub fn validate(mut raw: RawConfig) -> Result<Self, ConfigError> {
        if raw.node.id.is_empty() {
            raw.node.id = default_node_id();
        }
        validate_name("node.id", &raw.node.id, 128)?;
        let mqtt = raw.mqtt.validate()?;
        if mqtt.max_packet_size > 256 << 20 {
            return Err(invalid(
                "mqtt.max_packet_size",
                "must be at most 256MiB (the MQTT limit)",
            ));
        }
        let grpc = raw.grpc.validate()?;
        let broker = raw.broker.validate()?;
        let output = output::output_target(&raw)?;
        let lake_modes = output::file_modes(&raw.output)?;
        let (retain_lake, retain_rejected) = output::retention(&raw.output, &output)?;
        let table_format = output::table_format(&raw.output, &output, &retain_lake)?;
        let tables = validate_tables(&raw.tables)?;
        let declared = validate_declared(&raw.tables)?;
        let batch = BatchLimits {
            max_rows: positive("batch.max_rows", raw.batch.max_rows)?,
            max_bytes: positive("batch.max_bytes", raw.batch.max_bytes.as_usize())?,
            max_age: nonzero("batch.max_age", raw.batch.max_age)?,
            max_tables: positive("batch.max_tables", raw.batch.max_tables)?,
            max_columns: positive("batch.max_columns", raw.batch.max_columns)?,
        };
        let clock = ClockPolicy {
            max_ahead_us: micros("clock.max_ahead", raw.clock.max_ahead.0)?,
            max_behind_us: micros("clock.max_behind", raw.clock.max_behind.0)?,
            action: choice("clock.out_of_range", &raw.clock.out_of_range)?,
        };
        let parquet = ParquetOptions {
            compression: compression(&raw.parquet)?,
            row_group_rows: positive("parquet.row_group_rows", raw.parquet.row_group_rows)?,
        };
        let memory_budget = raw.memory.budget.as_usize();
        // The budget is a semaphore of bytes: 512MiB at most on a 32-bit build (armv7), more
        // than any 64-bit machine has. Refused by name rather than quietly lowered.
        let max_budget = ByteSize(tokio::sync::Semaphore::MAX_PERMITS as u64);
        if raw.memory.budget > max_budget {
            return Err(invalid(
                "memory.budget",
                format!(
                    "must be at most {max_budget} on this {}-bit build",
                    usize::BITS
                ),
            ));
        }
        if memory_budget < 4 * mqtt.max_packet_size {
            return Err(invalid(
                "memory.budget",
                format!(
                    "must be at least 4 x mqtt.max_packet_size ({})",
                    ByteSize(4 * mqtt.max_packet_size as u64)
                ),
            ));
        }
        if grpc.listen.is_some() && memory_budget < 4 * grpc.max_message_size {
            return Err(invalid(
                "memory.budget",
                format!(
                    "must be at least 4 x grpc.max_message_size ({}); lower that, or turn gRPC off with grpc.listen = \"\"",
                    ByteSize(4 * grpc.max_message_size as u64)
                ),
            ));
        }
        let qos0_when_full = choice("memory.qos0_when_full", &raw.memory.qos0_when_full)?;
        let wal = WalConfig {
            sync_interval: raw.wal.sync_interval.0,
            segment_size: raw.wal.segment_size.0,
        };
        if wal.sync_interval > Duration::from_secs(1) {
            return Err(invalid(
                "wal.sync_interval",
                "must be at most 1s (every ack waits for it)",
            ));
        }
        if wal.segment_size < 1 << 20 {
            return Err(invalid("wal.segment_size", "must be at least 1MiB"));
        }
        let admin_listen = optional_addr("admin.listen", &raw.admin.listen, "127.0.0.1:9464")?;
        let log_json = choice::<LogFormat>("log.format", &raw.log.format)? == LogFormat::Json;
        Ok(Self {
            node_id: raw.node.id.clone(),
            data_dir: raw.node.data_dir.clone(),
            shutdown_grace: nonzero("node.shutdown_grace", raw.node.shutdown_grace)?,
            mqtt,
            broker,
            grpc,
            output,
            table_format,
            bridges: bridge::validate_bridges(&raw.bridge, &raw.node.id)?,
            tables,
            declared,
            batch,
            clock,
            parquet,
            lake_modes,
            retain_lake,
            retain_rejected,
            memory_budget,
            qos0_when_full,
            wal,
            admin_listen,
            log_json,
            log_level: raw.log.level.clone(),
            raw,
        })
    }

    /// The byte bounds of what fleetlake keeps under `node.data_dir`, by key (the WAL is not
    /// listed: it holds what is not yet in files, bounded by the memory budget's pace).
    pub fn disk_bounds(&self) -> Vec<(&'static str, u64)> {
        let mut bounds = vec![(
            "output.rejected_max_bytes",
            self.raw.output.rejected_max_bytes.0,
        )];
        match &self.output {
            OutputTarget::Remote(remote) => {
                bounds.push(("output.spool_max_bytes", remote.spool_max_bytes));
            }
            OutputTarget::Local(root) if root.starts_with(&self.data_dir) => {
                if let Some(max) = self.retain_lake.max_bytes {
                    bounds.push(("output.retain_bytes", max));
                }
            }
            OutputTarget::Local(_) | OutputTarget::Discard => {}
        }
        bounds
    }

    /// A router over the configured tables.
    pub fn router(&self) -> Router {
        Router::new(self.tables.clone()).with_route_only(&self.broker.route_only)
    }
}

/// A window of the clock policy in µs: at least one minute (device clocks drift by seconds).
fn micros(key: &str, d: Duration) -> Result<i64, ConfigError> {
    if d < Duration::from_secs(60) {
        return Err(invalid(key, "must be at least 1m"));
    }
    i64::try_from(d.as_micros()).map_err(|_| invalid(key, "is too long"))
}

fn positive(key: &str, value: usize) -> Result<usize, ConfigError> {
    if value == 0 {
        return Err(invalid(key, "must be greater than 0"));
    }
    Ok(value)
}

/// An address, or `None` for an empty value (off).
fn optional_addr(key: &str, text: &str, example: &str) -> Result<Option<SocketAddr>, ConfigError> {
    match text.trim() {
        "" => Ok(None),
        text => text.parse().map(Some).map_err(|_| {
            invalid(
                key,
                format!("`{text}` is not an address like \"{example}\" (empty: off)"),
            )
        }),
    }
}

fn nonzero(key: &str, value: HumanDuration) -> Result<Duration, ConfigError> {
    if value.0.is_zero() {
        return Err(invalid(key, "must be longer than 0s"));
    }
    Ok(value.0)
}

/// Checks a name used in paths: letters, digits, `_`, `-`, `.`; not starting with `.`.
fn validate_name(key: &str, name: &str, max: usize) -> Result<(), ConfigError> {
    if crate::decode::topic::is_safe_name(name) && name.len() <= max {
        return Ok(());
    }
    Err(invalid(
        key,
        format!(
            "`{name}`: use 1-{max} letters, digits, `_`, `-` or `.`, not starting with `.` or `_`"
        ),
    ))
}

fn default_node_id() -> String {
    // /proc/sys is hidden under systemd's ProcSubset=pid; /etc/hostname stays readable.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let id: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    let id = id.trim_start_matches(['-', '.']).to_string();
    if id.is_empty() { "node".into() } else { id }
}

fn compression(raw: &RawParquet) -> Result<Compression, ConfigError> {
    let level = raw.compression_level;
    let bad_level = |m: String| invalid("parquet.compression_level", m);
    Ok(match choice("parquet.compression", &raw.compression)? {
        Codec::Zstd => Compression::ZSTD(
            ZstdLevel::try_new(if level == 0 { 3 } else { level })
                .map_err(|e| bad_level(e.to_string()))?,
        ),
        Codec::Gzip => Compression::GZIP(
            GzipLevel::try_new(if level == 0 { 6 } else { level as u32 })
                .map_err(|e| bad_level(e.to_string()))?,
        ),
        Codec::Snappy => Compression::SNAPPY,
        Codec::Lz4 => Compression::LZ4_RAW,
        Codec::None => Compression::UNCOMPRESSED,
    })
}

#[cfg(test)]
mod tests;
