//! `[mqtt]`, `[mqtt.tls]` and `[mqtt.auth]`: the device-facing listeners, their limits, TLS and
//! who may connect and publish.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    ByteSize, ConfigError, HumanDuration, choice, invalid, nonzero, optional_addr, positive,
};
use crate::auth::Identity;
use crate::tls::ServerFiles;

/// The largest MQTT packet: a 1-byte fixed header, a 4-byte Remaining Length and 268,435,455
/// bytes.
const MQTT_MAX_PACKET: usize = 1 + 4 + 268_435_455;

/// `[mqtt]`: the device-facing listeners.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMqtt {
    /// Plain TCP listen address; empty turns the plain listener off.
    pub listen: String,
    /// Largest accepted MQTT packet (checked before the body is read).
    pub max_packet_size: ByteSize,
    /// Most concurrent connections over both listeners; more are closed at once.
    pub max_connections: usize,
    /// Most concurrent connections from one IP address (0: no limit).
    pub max_connections_per_ip: usize,
    /// New connections accepted per second over both listeners, with bursts of as many
    /// (0: no limit); more are closed at once.
    pub connect_rate: u32,
    /// How long a new connection may take to send CONNECT (after the TLS handshake).
    pub connect_timeout: HumanDuration,
    /// QoS 2 messages one session may have awaiting PUBREL (MQTT 5 "receive maximum").
    pub max_inflight: u16,
    /// Longest keep-alive a client gets (0s: the client's own, 0 = never timed out). A client
    /// asking for more, or for none, gets this: told so in CONNACK (MQTT 5 Server Keep Alive),
    /// timed out at 1.5 × it either way.
    pub max_keep_alive: HumanDuration,
    /// `[mqtt.tls]`
    pub tls: RawMqttTls,
    /// `[mqtt.auth]`
    pub auth: RawMqttAuth,
}

impl Default for RawMqtt {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:1883".into(),
            max_packet_size: ByteSize(1 << 20),
            max_connections: 10_000,
            max_connections_per_ip: 0,
            connect_rate: 0,
            connect_timeout: HumanDuration(Duration::from_secs(10)),
            max_inflight: 1024,
            max_keep_alive: HumanDuration(Duration::from_secs(u64::from(u16::MAX))),
            tls: RawMqttTls::default(),
            auth: RawMqttAuth::default(),
        }
    }
}

/// `[mqtt.tls]`: the TLS listener.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMqttTls {
    /// Listen address, e.g. "0.0.0.0:8883"; empty: no TLS listener.
    pub listen: String,
    /// PEM certificate chain, leaf first.
    pub cert: String,
    /// PEM private key (a path; e.g. under /run/credentials/fleetlake.service/).
    pub key: String,
    /// PEM CA certificate(s): when set, every TLS client must present a certificate they signed.
    pub client_ca: String,
    /// How long a new connection may take to finish the TLS handshake.
    pub handshake_timeout: HumanDuration,
}

impl Default for RawMqttTls {
    fn default() -> Self {
        Self {
            listen: String::new(),
            cert: String::new(),
            key: String::new(),
            client_ca: String::new(),
            handshake_timeout: HumanDuration(Duration::from_secs(10)),
        }
    }
}

/// `[mqtt.auth]`: who may connect and publish.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMqttAuth {
    /// Mosquitto password file (`mosquitto_passwd` format).
    pub password_file: String,
    /// Mosquitto ACL file.
    pub acl_file: String,
    /// Whether clients without credentials may connect. Unset: only while every listener is
    /// on loopback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_anonymous: Option<bool>,
    /// What becomes `device_id`: "client_id" (default), "username" or "cert_cn".
    pub identity: String,
}

/// Validated `[mqtt.tls]`.
#[derive(Clone, Debug)]
pub struct MqttTls {
    /// Listen address.
    pub listen: SocketAddr,
    /// Certificate, key and client CA.
    pub files: ServerFiles,
    /// Handshake deadline.
    pub handshake_timeout: Duration,
}

/// Validated `[mqtt.auth]`.
#[derive(Clone, Debug)]
pub struct MqttAuth {
    /// Password file.
    pub password_file: Option<PathBuf>,
    /// ACL file.
    pub acl_file: Option<PathBuf>,
    /// Whether clients without credentials may connect (resolved).
    pub allow_anonymous: bool,
    /// What becomes `device_id`.
    pub identity: Identity,
}

/// Validated `[mqtt]`.
#[derive(Clone, Debug)]
pub struct MqttConfig {
    /// Plain listen address (`None`: off).
    pub listen: Option<SocketAddr>,
    /// The TLS listener (`None`: off).
    pub tls: Option<MqttTls>,
    /// Authentication and authorization.
    pub auth: MqttAuth,
    /// Max packet size in bytes.
    pub max_packet_size: usize,
    /// Max concurrent connections.
    pub max_connections: usize,
    /// Max concurrent connections per IP (0: no limit).
    pub max_connections_per_ip: usize,
    /// New connections per second (0: no limit).
    pub connect_rate: u32,
    /// CONNECT deadline.
    pub connect_timeout: Duration,
    /// QoS 2 messages awaiting PUBREL per session.
    pub max_inflight: u16,
    /// Longest keep-alive a client gets, seconds (0: no cap).
    pub max_keep_alive: u16,
}

/// A path, or `None` for an empty value.
pub(super) fn path(text: &str) -> Option<PathBuf> {
    let text = text.trim();
    (!text.is_empty()).then(|| PathBuf::from(text))
}

impl RawMqtt {
    /// Checks every value.
    pub fn validate(&self) -> Result<MqttConfig, ConfigError> {
        let listen = optional_addr("mqtt.listen", &self.listen, "127.0.0.1:1883")?;
        let tls = match optional_addr("mqtt.tls.listen", &self.tls.listen, "0.0.0.0:8883")? {
            Some(addr) => {
                let cert = path(&self.tls.cert)
                    .ok_or_else(|| invalid("mqtt.tls.cert", "required with mqtt.tls.listen"))?;
                let key = path(&self.tls.key)
                    .ok_or_else(|| invalid("mqtt.tls.key", "required with mqtt.tls.listen"))?;
                Some(MqttTls {
                    listen: addr,
                    files: ServerFiles {
                        cert,
                        key,
                        client_ca: path(&self.tls.client_ca),
                    },
                    handshake_timeout: nonzero(
                        "mqtt.tls.handshake_timeout",
                        self.tls.handshake_timeout,
                    )?,
                })
            }
            None => None,
        };
        let auth = self.validate_auth(listen, tls.as_ref())?;
        let max_inflight = self.max_inflight;
        if max_inflight == 0 {
            return Err(invalid("mqtt.max_inflight", "must be 1 to 65535"));
        }
        let ka = self.max_keep_alive.0;
        let max_keep_alive = u16::try_from(ka.as_secs())
            .ok()
            .filter(|_| ka.subsec_nanos() == 0)
            .ok_or_else(|| invalid("mqtt.max_keep_alive", "whole seconds, 0s to 65535s"))?;
        let max_packet_size = positive("mqtt.max_packet_size", self.max_packet_size.as_usize())?;
        // MQTT's own limit (a 4-byte Remaining Length); it also keeps the budget arithmetic
        // (4 x this) inside a 32-bit usize.
        if max_packet_size > MQTT_MAX_PACKET {
            return Err(invalid(
                "mqtt.max_packet_size",
                format!(
                    "must be at most {MQTT_MAX_PACKET} bytes (256MiB + 4, the largest MQTT packet)"
                ),
            ));
        }
        Ok(MqttConfig {
            listen,
            tls,
            auth,
            max_packet_size,
            max_connections: positive("mqtt.max_connections", self.max_connections)?,
            max_connections_per_ip: self.max_connections_per_ip,
            connect_rate: self.connect_rate,
            connect_timeout: nonzero("mqtt.connect_timeout", self.connect_timeout)?,
            max_inflight,
            max_keep_alive,
        })
    }

    fn validate_auth(
        &self,
        listen: Option<SocketAddr>,
        tls: Option<&MqttTls>,
    ) -> Result<MqttAuth, ConfigError> {
        let a = &self.auth;
        let identity = match a.identity.trim() {
            "" => Identity::ClientId,
            s => choice("mqtt.auth.identity", s)?,
        };
        let password_file = path(&a.password_file);
        let mtls = tls.is_some_and(|t| t.files.client_ca.is_some());
        match identity {
            Identity::Username if password_file.is_none() && !mtls => {
                return Err(invalid(
                    "mqtt.auth.identity",
                    "\"username\" needs mqtt.auth.password_file (or mqtt.tls.client_ca): an unverified user name proves nothing",
                ));
            }
            Identity::CertCn if !mtls => {
                return Err(invalid(
                    "mqtt.auth.identity",
                    "\"cert_cn\" needs mqtt.tls.client_ca (clients must present certificates)",
                ));
            }
            _ => {}
        }
        let all_loopback = listen
            .iter()
            .chain(tls.map(|t| &t.listen))
            .all(|addr| addr.ip().is_loopback());
        let can_authenticate = password_file.is_some() || mtls;
        let allow_anonymous = match a.allow_anonymous {
            Some(v) => v,
            None if all_loopback => true,
            None if can_authenticate => false,
            None => {
                return Err(invalid(
                    "mqtt.auth.allow_anonymous",
                    "an MQTT listener is not on loopback and nothing authenticates clients: set mqtt.auth.password_file or mqtt.tls.client_ca, or allow_anonymous = true to accept anyone who reaches the port",
                ));
            }
        };
        if !allow_anonymous && !can_authenticate {
            return Err(invalid(
                "mqtt.auth.allow_anonymous",
                "false, but no mqtt.auth.password_file or mqtt.tls.client_ca: no client could connect",
            ));
        }
        Ok(MqttAuth {
            password_file,
            acl_file: path(&a.acl_file),
            allow_anonymous,
            identity,
        })
    }
}
