//! `[output]`: where finished Parquet files go — a local directory, an object store through
//! the local spool, or nowhere (`null:`) — parsed and validated here, built by `sink`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units::{ByteSize, HumanDuration};
use super::{ConfigError, RawConfig, choice, invalid, nonzero};
use crate::sink::retention::RetainLimits;

/// `[output]`: where Parquet files go.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawOutput {
    /// A directory path or `file://` URL; empty means `{data_dir}/lake`; `s3://bucket/prefix`,
    /// `gs://bucket/prefix` or `az://container/prefix` spool files locally and upload them;
    /// `null:` discards every row (a benchmarking aid).
    pub url: String,
    /// Most bytes of finished files waiting in `{data_dir}/spool` for upload.
    pub spool_max_bytes: ByteSize,
    /// What happens when the spool is full: `pause` (stop taking data) or `drop_oldest`.
    pub spool_full: String,
    /// Files up to this size are sent with one PUT; larger ones as a multipart upload.
    pub multipart_threshold: ByteSize,
    /// Deadline of one request to the object store.
    pub request_timeout: HumanDuration,
    /// Longest wait between upload retries while the store is unreachable.
    pub retry_max_backoff: HumanDuration,
    /// `[output.s3]`: S3 and S3-compatible servers.
    pub s3: RawS3,
    /// Octal permission bits of each Parquet file in a local output (the spool stays 0600).
    pub file_mode: String,
    /// Octal permission bits of each folder a local output creates (the spool stays 0700).
    pub dir_mode: String,
    /// Local output: most bytes of the lake; the oldest hours' files are deleted past it
    /// (0: no bound).
    pub retain_bytes: ByteSize,
    /// Local output: files of hours that ended longer ago than this are deleted (0: never).
    pub retain_age: HumanDuration,
    /// Retention never deletes a file written less than this long ago.
    pub retain_min_age: HumanDuration,
    /// Most bytes of `{data_dir}/_rejected`; the oldest hours' files are deleted past it.
    pub rejected_max_bytes: ByteSize,
    /// `parquet` (a folder of Parquet files per table) or `delta` (each table folder is also
    /// a Delta Lake table: every file is committed to its `_delta_log`).
    pub table_format: String,
    /// `[output.delta]`: Delta Lake options.
    pub delta: RawDelta,
}

/// `[output.delta]`: Delta Lake options (with `output.table_format = "delta"`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDelta {
    /// A Parquet checkpoint of the log every this many table versions.
    pub checkpoint_interval: u64,
    /// An hour's small files are compacted this long after the hour ended (0: never).
    pub compact_after: HumanDuration,
    /// Most bytes of a compacted file.
    pub target_file_size: ByteSize,
    /// Files replaced by compaction are deleted this long after (readers of older snapshots).
    pub vacuum_after: HumanDuration,
}

impl Default for RawDelta {
    fn default() -> Self {
        Self {
            checkpoint_interval: 10,
            compact_after: HumanDuration(Duration::from_secs(15 * 60)),
            target_file_size: ByteSize(128 << 20),
            vacuum_after: HumanDuration(Duration::from_secs(3600)),
        }
    }
}

/// What a table folder of the lake is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableFormat {
    /// Hive-partitioned Parquet files, nothing else.
    Parquet,
    /// The same files, each committed to the folder's Delta log.
    Delta {
        /// A checkpoint every this many versions.
        checkpoint_interval: u64,
        /// Compaction of closed hours (`None`: off).
        compact: Option<crate::sink::compact::CompactOptions>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum FormatName {
    Parquet,
    Delta,
}

/// Validated `output.table_format` and `[output.delta]`.
pub(super) fn table_format(
    raw: &RawOutput,
    target: &OutputTarget,
    lake: &RetainLimits,
) -> Result<TableFormat, ConfigError> {
    match choice("output.table_format", &raw.table_format)? {
        FormatName::Parquet => Ok(TableFormat::Parquet),
        FormatName::Delta => {
            if !cfg!(feature = "delta") {
                return Err(invalid(
                    "output.table_format",
                    "this build has no Delta Lake support (cargo feature `delta`)",
                ));
            }
            match target {
                OutputTarget::Local(_) | OutputTarget::Remote(_) => {}
                OutputTarget::Discard => {
                    return Err(invalid(
                        "output.table_format",
                        "\"delta\" needs an output: output.url = \"null:\" writes nothing",
                    ));
                }
            }
            if lake.any() {
                return Err(invalid(
                    "output.table_format",
                    "\"delta\" cannot be combined with output.retain_bytes / output.retain_age: retention would delete files the table's log still lists",
                ));
            }
            let every = raw.delta.checkpoint_interval;
            if every == 0 {
                return Err(invalid(
                    "output.delta.checkpoint_interval",
                    "must be at least 1",
                ));
            }
            let d = &raw.delta;
            if d.target_file_size.0 < 1 << 20 {
                return Err(invalid(
                    "output.delta.target_file_size",
                    "must be at least 1MiB",
                ));
            }
            if d.vacuum_after.0 < Duration::from_secs(1) {
                return Err(invalid(
                    "output.delta.vacuum_after",
                    "must be at least 1s (readers of the snapshot before a compaction need time to finish)",
                ));
            }
            let compact =
                (!d.compact_after.0.is_zero()).then_some(crate::sink::compact::CompactOptions {
                    after: d.compact_after.0,
                    target_bytes: d.target_file_size.0,
                    vacuum_after: d.vacuum_after.0,
                });
            Ok(TableFormat::Delta {
                checkpoint_interval: every,
                compact,
            })
        }
    }
}

impl Default for RawOutput {
    fn default() -> Self {
        Self {
            url: String::new(),
            spool_max_bytes: ByteSize(4 << 30),
            spool_full: "pause".into(),
            multipart_threshold: ByteSize(16 << 20),
            request_timeout: HumanDuration(Duration::from_secs(30)),
            retry_max_backoff: HumanDuration(Duration::from_secs(60)),
            s3: RawS3::default(),
            file_mode: "0640".into(),
            dir_mode: "0750".into(),
            retain_bytes: ByteSize(0),
            retain_age: HumanDuration(Duration::ZERO),
            retain_min_age: HumanDuration(Duration::from_secs(3600)),
            rejected_max_bytes: ByteSize(256 << 20),
            table_format: "parquet".into(),
            delta: RawDelta::default(),
        }
    }
}

/// `[output.s3]`: S3 options. Credentials never come from here: they come from the
/// environment (`AWS_ACCESS_KEY_ID`, …), systemd credentials or instance metadata.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawS3 {
    /// Endpoint URL of an S3-compatible server (MinIO, Ceph, moto); empty: AWS.
    pub endpoint: String,
    /// Region; empty: `AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: String,
    /// Allow `http://` endpoints (plain text; for servers on a trusted network).
    pub allow_http: bool,
    /// Address buckets as `bucket.endpoint` (virtual-hosted style) instead of `endpoint/bucket`.
    pub virtual_hosted_style: bool,
    /// Refused: credentials do not belong in the file (accepted by the parser only to say so).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// Refused, as `access_key_id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
}

/// Validated `[output]`: where finished files go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputTarget {
    /// Files appear under a local directory.
    Local(PathBuf),
    /// Files are spooled locally, then uploaded to an object store.
    Remote(RemoteOutput),
    /// `null:`: rows are counted and discarded (a benchmarking aid).
    Discard,
}

impl OutputTarget {
    /// The URL or path, for logs.
    pub fn describe(&self) -> String {
        match self {
            Self::Local(root) => root.display().to_string(),
            Self::Remote(r) => r.url.clone(),
            Self::Discard => "null:".into(),
        }
    }
}

/// Permission bits of what a local output creates, set exactly whatever the umask: by default
/// files 0640 and folders 0750, so a group (the service's, `fleetlake` under the unit) can read
/// the lake while others cannot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileModes {
    /// Files (`output.file_mode`).
    pub file: u32,
    /// Folders (`output.dir_mode`).
    pub dir: u32,
}

impl FileModes {
    /// Only the service's own user: the spool, which nobody else should read.
    pub const PRIVATE: Self = Self {
        file: 0o600,
        dir: 0o700,
    };
}

/// `output.file_mode` and `output.dir_mode`: octal, the owner keeps what it needs (read and
/// write; and enter for folders).
pub(super) fn file_modes(out: &RawOutput) -> Result<FileModes, ConfigError> {
    let parse = |key: &str, text: &str, owner: u32| {
        let mode = u32::from_str_radix(text.trim().trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| invalid(key, format!("`{text}` is not an octal mode like \"0640\"")))?;
        if mode & owner != owner {
            return Err(invalid(
                key,
                format!("`{text}` takes away the service's own access (needs {owner:o})"),
            ));
        }
        Ok(mode)
    };
    Ok(FileModes {
        file: parse("output.file_mode", &out.file_mode, 0o600)?,
        dir: parse("output.dir_mode", &out.dir_mode, 0o700)?,
    })
}

/// Which object store a remote output uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// Amazon S3 or an S3-compatible server (`s3://`).
    S3,
    /// Google Cloud Storage (`gs://`).
    Gcs,
    /// Azure Blob Storage (`az://`).
    Azure,
}

/// What to do when the spool reaches `output.spool_max_bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpoolFull {
    /// Stop publishing new files: buffers fill and sources stop being acknowledged.
    Pause,
    /// Delete the oldest spooled file (counted, logged at warn level).
    DropOldest,
}

/// Validated object-store output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteOutput {
    /// The URL as configured.
    pub url: String,
    /// The backend.
    pub kind: StoreKind,
    /// Bucket (or container).
    pub bucket: String,
    /// Key prefix without leading or trailing `/` (may be empty).
    pub prefix: String,
    /// Local spool directory (`{data_dir}/spool`).
    pub spool_dir: PathBuf,
    /// Spool quota in bytes.
    pub spool_max_bytes: u64,
    /// Policy at the quota.
    pub spool_full: SpoolFull,
    /// Single PUT up to this size, multipart above.
    pub multipart_threshold: u64,
    /// Deadline of one request.
    pub request_timeout: Duration,
    /// Cap of the retry backoff.
    pub retry_max_backoff: Duration,
    /// S3 endpoint (`None`: AWS).
    pub endpoint: Option<String>,
    /// S3 region (`None`: from the environment).
    pub region: Option<String>,
    /// Plain-HTTP endpoints allowed.
    pub allow_http: bool,
    /// Virtual-hosted-style bucket addressing.
    pub virtual_hosted_style: bool,
}

/// Validated retention keys: the lake's bounds (a local output only) and `_rejected`'s.
pub(super) fn retention(
    raw: &RawOutput,
    target: &OutputTarget,
) -> Result<(RetainLimits, RetainLimits), ConfigError> {
    let min_age = raw.retain_min_age.0;
    let lake = RetainLimits {
        max_bytes: (raw.retain_bytes.0 > 0).then_some(raw.retain_bytes.0),
        max_age: (!raw.retain_age.0.is_zero()).then_some(raw.retain_age.0),
        min_age,
    };
    if lake.any() && !matches!(target, OutputTarget::Local(_)) {
        let key = if lake.max_bytes.is_some() {
            "output.retain_bytes"
        } else {
            "output.retain_age"
        };
        return Err(invalid(
            key,
            "applies to a local output only (an object store keeps its own lifecycle rules; the spool is bounded by output.spool_max_bytes)",
        ));
    }
    if lake
        .max_age
        .is_some_and(|age| age < Duration::from_secs(3600))
    {
        return Err(invalid(
            "output.retain_age",
            "must be at least 1h (or 0: off)",
        ));
    }
    if raw.rejected_max_bytes.0 < 1 << 20 {
        return Err(invalid(
            "output.rejected_max_bytes",
            "must be at least 1MiB",
        ));
    }
    let rejected = RetainLimits {
        max_bytes: Some(raw.rejected_max_bytes.0),
        max_age: None,
        min_age,
    };
    Ok((lake, rejected))
}

/// Where files go: a local directory, an object store (through the spool), or nowhere.
pub(super) fn output_target(raw: &RawConfig) -> Result<OutputTarget, ConfigError> {
    let url = raw.output.url.trim();
    if url.is_empty() {
        return Ok(OutputTarget::Local(raw.node.data_dir.join("lake")));
    }
    if url == "null:" {
        return Ok(OutputTarget::Discard);
    }
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(invalid(
                "output.url",
                "a file:// URL needs an absolute path (file:///var/lib/...)",
            ));
        }
        return Ok(OutputTarget::Local(PathBuf::from(path)));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Ok(OutputTarget::Local(PathBuf::from(url)));
    };
    let kind = match scheme {
        "s3" | "s3a" => StoreKind::S3,
        "gs" => StoreKind::Gcs,
        "az" | "azure" => StoreKind::Azure,
        other => {
            return Err(invalid(
                "output.url",
                format!(
                    "scheme `{other}://` is not supported: use a local path, file://, s3://, gs:// or az://"
                ),
            ));
        }
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let prefix = prefix.trim_matches('/');
    if bucket.is_empty() || bucket.contains(['?', '#', '@', ':']) {
        return Err(invalid(
            "output.url",
            format!("`{url}` has no usable bucket name: write {scheme}://bucket/optional/prefix"),
        ));
    }
    if !prefix.is_empty()
        && prefix
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(invalid(
            "output.url",
            format!("the prefix `{prefix}` has an empty, `.` or `..` segment"),
        ));
    }
    let out = &raw.output;
    let spool_full: SpoolFull = choice("output.spool_full", &out.spool_full)?;
    if out.spool_max_bytes.0 == 0 {
        return Err(invalid("output.spool_max_bytes", "must be greater than 0"));
    }
    if out.multipart_threshold.0 < 5 << 20 || out.multipart_threshold.0 > 1 << 30 {
        return Err(invalid(
            "output.multipart_threshold",
            "must be between 5MiB (the smallest S3 part) and 1GiB",
        ));
    }
    for (key, value) in [
        ("output.s3.access_key_id", &out.s3.access_key_id),
        ("output.s3.secret_access_key", &out.s3.secret_access_key),
    ] {
        if value.is_some() {
            return Err(invalid(
                key,
                "credentials are never read from the config file: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment (/etc/fleetlake/fleetlake.env), or systemd credentials aws_access_key_id and aws_secret_access_key (LoadCredential=), or use instance metadata",
            ));
        }
    }
    let non_empty = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
    let endpoint = non_empty(&out.s3.endpoint);
    if let Some(e) = &endpoint {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return Err(invalid(
                "output.s3.endpoint",
                format!("`{e}` is not an http:// or https:// URL"),
            ));
        }
        if e.starts_with("http://") && !out.s3.allow_http {
            return Err(invalid(
                "output.s3.endpoint",
                "is plain http://: set output.s3.allow_http = true to allow it, or use https://",
            ));
        }
    }
    Ok(OutputTarget::Remote(RemoteOutput {
        url: url.to_string(),
        kind,
        bucket: bucket.to_string(),
        prefix: prefix.to_string(),
        spool_dir: raw.node.data_dir.join("spool"),
        spool_max_bytes: out.spool_max_bytes.0,
        spool_full,
        multipart_threshold: out.multipart_threshold.0,
        request_timeout: nonzero("output.request_timeout", out.request_timeout)?,
        retry_max_backoff: nonzero("output.retry_max_backoff", out.retry_max_backoff)?,
        endpoint,
        region: non_empty(&out.s3.region),
        allow_http: out.s3.allow_http,
        virtual_hosted_style: out.s3.virtual_hosted_style,
    }))
}
