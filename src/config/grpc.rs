//! `[grpc]`, `[grpc.tls]` and `[grpc.auth]`: the gRPC ingest service, its TLS and who may write.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::mqtt::path;
use super::{
    ByteSize, ConfigError, HumanDuration, invalid, nonzero, optional_addr, positive, validate_name,
};
use crate::tls::ServerFiles;

/// `[grpc]`: the gRPC ingest service.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawGrpc {
    /// Address to listen on; empty turns gRPC off.
    pub listen: String,
    /// Largest request, checked as sent and again after decompression.
    pub max_message_size: ByteSize,
    /// Table for points that name none.
    pub default_table: String,
    /// `[grpc.tls]`
    pub tls: RawGrpcTls,
    /// `[grpc.auth]`
    pub auth: RawGrpcAuth,
}

impl Default for RawGrpc {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".into(),
            max_message_size: ByteSize(4 << 20),
            default_table: "telemetry".into(),
            tls: RawGrpcTls::default(),
            auth: RawGrpcAuth::default(),
        }
    }
}

/// `[grpc.tls]`: TLS on `grpc.listen` (when `cert` is set).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawGrpcTls {
    /// PEM certificate chain, leaf first; empty: plain HTTP/2.
    pub cert: String,
    /// PEM private key.
    pub key: String,
    /// PEM CA certificate(s): when set, callers must present a certificate they signed.
    pub client_ca: String,
    /// How long a new connection may take to finish the TLS handshake.
    pub handshake_timeout: HumanDuration,
}

impl Default for RawGrpcTls {
    fn default() -> Self {
        Self {
            cert: String::new(),
            key: String::new(),
            client_ca: String::new(),
            handshake_timeout: HumanDuration(Duration::from_secs(10)),
        }
    }
}

/// `[grpc.auth]`: who may write.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawGrpcAuth {
    /// File of `name:sha256:<hex>` lines: the SHA-256 of each caller's bearer token.
    pub tokens_file: String,
    /// Caller names (token names or certificate CNs) that may write points of any device;
    /// every other named caller writes only points whose `device_id` is its name.
    pub services: Vec<String>,
    /// Whether callers without credentials may write. Unset: only while `grpc.listen` is on
    /// loopback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_anonymous: Option<bool>,
}

/// Validated `[grpc.auth]`.
#[derive(Clone, Debug)]
pub struct GrpcAuth {
    /// Tokens file.
    pub tokens_file: Option<PathBuf>,
    /// Callers that may write any device.
    pub services: HashSet<String>,
    /// Whether callers without credentials may write (resolved).
    pub allow_anonymous: bool,
}

/// Validated `[grpc]`.
#[derive(Clone, Debug)]
pub struct GrpcConfig {
    /// Listen address (`None`: off).
    pub listen: Option<SocketAddr>,
    /// Largest request in bytes (as sent and decompressed).
    pub max_message_size: usize,
    /// Table for points without one.
    pub default_table: String,
    /// TLS files, when the listener speaks TLS.
    pub tls: Option<ServerFiles>,
    /// TLS handshake deadline.
    pub handshake_timeout: Duration,
    /// Who may write.
    pub auth: GrpcAuth,
}

impl RawGrpc {
    /// Checks every value.
    pub fn validate(&self) -> Result<GrpcConfig, ConfigError> {
        let listen = optional_addr("grpc.listen", &self.listen, "127.0.0.1:50051")?;
        let max_message_size = positive("grpc.max_message_size", self.max_message_size.as_usize())?;
        if max_message_size > 256 << 20 {
            return Err(invalid("grpc.max_message_size", "must be at most 256MiB"));
        }
        validate_name("grpc.default_table", &self.default_table, 64)?;
        let tls = match (path(&self.tls.cert), path(&self.tls.key)) {
            (Some(cert), Some(key)) => Some(ServerFiles {
                cert,
                key,
                client_ca: path(&self.tls.client_ca),
            }),
            (None, None) if path(&self.tls.client_ca).is_none() => None,
            (None, _) => {
                return Err(invalid(
                    "grpc.tls.cert",
                    "required with grpc.tls.key or client_ca",
                ));
            }
            (Some(_), None) => return Err(invalid("grpc.tls.key", "required with grpc.tls.cert")),
        };
        let tokens_file = path(&self.auth.tokens_file);
        let mtls = tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        let can_authenticate = tokens_file.is_some() || mtls;
        let loopback = listen.is_none_or(|a| a.ip().is_loopback());
        let allow_anonymous = match self.auth.allow_anonymous {
            Some(v) => v,
            None if loopback => true,
            None if can_authenticate => false,
            None => {
                return Err(invalid(
                    "grpc.auth.allow_anonymous",
                    "grpc.listen is not on loopback and nothing authenticates callers: set grpc.auth.tokens_file or grpc.tls.client_ca, or allow_anonymous = true to accept anyone who reaches the port",
                ));
            }
        };
        if !allow_anonymous && !can_authenticate {
            return Err(invalid(
                "grpc.auth.allow_anonymous",
                "false, but no grpc.auth.tokens_file or grpc.tls.client_ca: no caller could write",
            ));
        }
        for (i, s) in self.auth.services.iter().enumerate() {
            if s.trim().is_empty() {
                return Err(invalid(format!("grpc.auth.services[{i}]"), "empty name"));
            }
        }
        Ok(GrpcConfig {
            listen,
            max_message_size,
            default_table: self.default_table.clone(),
            tls,
            handshake_timeout: nonzero("grpc.tls.handshake_timeout", self.tls.handshake_timeout)?,
            auth: GrpcAuth {
                tokens_file,
                services: self.auth.services.iter().cloned().collect(),
                allow_anonymous,
            },
        })
    }
}
