//! `[[bridge]]`: subscriptions to external MQTT brokers. Parsed here, run by the bridge source.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, HumanDuration, choice, invalid, validate_name};

/// One `[[bridge]]` entry as written.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawBridge {
    /// Name in logs and metrics; the device id of rows whose topic names none.
    pub name: String,
    /// `mqtt://host:port` (default port 1883) or `mqtts://host:port` (TLS, default 8883).
    pub url: String,
    /// `mqtts://`: PEM file of the CA(s) that signed the broker's certificate; empty: the
    /// system's CA certificates.
    #[serde(default)]
    pub ca_file: String,
    /// `mqtts://`: PEM certificate chain to present to the broker (mutual TLS).
    #[serde(default)]
    pub client_cert: String,
    /// `mqtts://`: PEM private key of `client_cert` (a path; keep it readable only by fleetlake).
    #[serde(default)]
    pub client_key: String,
    /// Client id at the broker; empty: `fleetlake-{node}-{name}`. Keep it stable: the broker
    /// keeps the persistent session (and unacknowledged messages) under it.
    #[serde(default)]
    pub client_id: String,
    /// User name (not a secret).
    #[serde(default)]
    pub username: String,
    /// File holding the password (e.g. under `$CREDENTIALS_DIRECTORY`); never the password.
    #[serde(default)]
    pub password_file: String,
    /// Environment variable holding the password.
    #[serde(default)]
    pub password_env: String,
    /// `"3.1.1"` or `"5"`.
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// Subscribe as `$share/{shared_group}/{filter}` (MQTT 5 brokers and Mosquitto ≥ 2).
    #[serde(default)]
    pub shared_group: String,
    /// Messages received but not yet acknowledged (stored) before the socket stops being read.
    #[serde(default = "default_max_inflight")]
    pub max_inflight: usize,
    /// MQTT keep-alive.
    #[serde(default = "default_keep_alive")]
    pub keep_alive: HumanDuration,
    /// Longest wait between reconnect attempts (starts at 100ms, doubles, with jitter).
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_backoff: HumanDuration,
    /// Topic filters to subscribe to, with their QoS.
    pub subscriptions: Vec<RawSubscription>,
}

/// One subscription of a bridge.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSubscription {
    /// MQTT topic filter.
    pub filter: String,
    /// QoS 0, 1 or 2 (1 or 2: acknowledged only once stored).
    #[serde(default = "default_qos")]
    pub qos: u8,
}

fn default_protocol() -> String {
    "3.1.1".into()
}
fn default_max_inflight() -> usize {
    100
}
fn default_keep_alive() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_reconnect_max() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_qos() -> u8 {
    1
}

/// Where a bridge's password comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Password {
    /// No password.
    None,
    /// Read from this file at connect time.
    File(PathBuf),
    /// Read from this environment variable at connect time.
    Env(String),
}

/// TLS settings of an `mqtts://` bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeTls {
    /// CA file (`None`: the system's CA certificates).
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain and key for mutual TLS.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// A validated bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeConfig {
    /// Name.
    pub name: String,
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// TLS (`mqtts://`), or plain TCP.
    pub tls: Option<BridgeTls>,
    /// MQTT 5 (else 3.1.1).
    pub mqtt5: bool,
    /// Client id.
    pub client_id: String,
    /// User name (empty: none).
    pub username: String,
    /// Password source.
    pub password: Password,
    /// `(filter as sent to the broker, qos)`.
    pub subscriptions: Vec<(String, u8)>,
    /// Unacknowledged-message window.
    pub max_inflight: usize,
    /// Keep-alive.
    pub keep_alive: Duration,
    /// Reconnect backoff cap.
    pub reconnect_max_backoff: Duration,
}

/// Checks every `[[bridge]]`.
pub(super) fn validate_bridges(
    raw: &[RawBridge],
    node: &str,
) -> Result<Vec<BridgeConfig>, ConfigError> {
    let mut out: Vec<BridgeConfig> = Vec::new();
    for (i, b) in raw.iter().enumerate() {
        let key = |k: &str| format!("bridge[{i}].{k}");
        validate_name(&key("name"), &b.name, 64)?;
        if out.iter().any(|o| o.name == b.name) {
            return Err(invalid(key("name"), format!("`{}` is used twice", b.name)));
        }
        let (host, port, tls) = parse_url(&b.url).map_err(|m| invalid(key("url"), m))?;
        let path = |s: &str| Some(PathBuf::from(s)).filter(|_| !s.is_empty());
        let tls = if tls {
            let client = match (path(&b.client_cert), path(&b.client_key)) {
                (Some(cert), Some(k)) => Some((cert, k)),
                (None, None) => None,
                _ => {
                    return Err(invalid(
                        key("client_cert"),
                        "client_cert and client_key go together",
                    ));
                }
            };
            Some(BridgeTls {
                ca_file: path(&b.ca_file),
                client,
            })
        } else {
            if !(b.ca_file.is_empty() && b.client_cert.is_empty() && b.client_key.is_empty()) {
                return Err(invalid(
                    key("ca_file"),
                    "ca_file, client_cert and client_key need an mqtts:// url",
                ));
            }
            None
        };
        let mqtt5 = choice::<Protocol>(&key("protocol"), &b.protocol)? == Protocol::V5;
        let client_id = if b.client_id.is_empty() {
            format!("fleetlake-{node}-{}", b.name)
        } else {
            b.client_id.clone()
        };
        if client_id.len() > 128 {
            return Err(invalid(key("client_id"), "must be at most 128 bytes"));
        }
        let password = match (b.password_file.as_str(), b.password_env.as_str()) {
            ("", "") => Password::None,
            (file, "") => Password::File(PathBuf::from(file)),
            ("", var) => Password::Env(var.to_string()),
            _ => {
                return Err(invalid(
                    key("password_file"),
                    "set password_file or password_env, not both",
                ));
            }
        };
        if password != Password::None && b.username.is_empty() {
            return Err(invalid(key("username"), "a password needs a user name"));
        }
        if b.subscriptions.is_empty() {
            return Err(invalid(
                key("subscriptions"),
                "subscribe to at least one filter",
            ));
        }
        let group = b.shared_group.trim();
        if group.contains(['/', '+', '#']) {
            return Err(invalid(
                key("shared_group"),
                "may not contain `/`, `+` or `#`",
            ));
        }
        let mut subscriptions = Vec::new();
        for (j, s) in b.subscriptions.iter().enumerate() {
            let skey = format!("bridge[{i}].subscriptions[{j}]");
            check_filter(&s.filter).map_err(|m| invalid(format!("{skey}.filter"), m))?;
            if s.qos > 2 {
                return Err(invalid(format!("{skey}.qos"), "must be 0, 1 or 2"));
            }
            let filter = if group.is_empty() {
                s.filter.clone()
            } else {
                format!("$share/{group}/{}", s.filter)
            };
            subscriptions.push((filter, s.qos));
        }
        if b.max_inflight == 0 || b.max_inflight > 65_535 {
            return Err(invalid(key("max_inflight"), "must be between 1 and 65535"));
        }
        if b.keep_alive.0 < Duration::from_secs(5) {
            return Err(invalid(key("keep_alive"), "must be at least 5s"));
        }
        out.push(BridgeConfig {
            name: b.name.clone(),
            host,
            port,
            tls,
            mqtt5,
            client_id,
            username: b.username.clone(),
            password,
            subscriptions,
            max_inflight: b.max_inflight,
            keep_alive: b.keep_alive.0,
            reconnect_max_backoff: b.reconnect_max_backoff.0.max(Duration::from_millis(100)),
        });
    }
    Ok(out)
}

/// `(host, port, tls)` of a broker URL.
fn parse_url(url: &str) -> Result<(String, u16, bool), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!("`{url}` is not a URL like mqtt://broker:1883"));
    };
    let (tls, default_port) = match scheme {
        "mqtt" | "tcp" => (false, 1883),
        "mqtts" | "ssl" => (true, 8883),
        other => return Err(format!("scheme `{other}://`: use mqtt:// or mqtts://")),
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("`{p}` is not a port number"))?,
        ),
        _ => (rest, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(['/', '@', '?']) {
        return Err(format!("`{url}` has no usable host"));
    }
    Ok((host.to_string(), port, tls))
}

/// An MQTT filter: non-empty, `#` only as the last level, `+` and `#` alone in their level.
fn check_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("is empty".into());
    }
    if filter.starts_with("$share/") {
        return Err("write the plain filter and set shared_group".into());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(format!("`{filter}`: `#` must be a whole, last level"));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!("`{filter}`: `+` must be a whole level"));
        }
    }
    Ok(())
}

/// `[[bridge]] protocol`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
enum Protocol {
    #[serde(rename = "3.1.1", alias = "3", alias = "4")]
    V311,
    #[serde(rename = "5", alias = "5.0")]
    V5,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bridge(extra: &str) -> Result<Vec<BridgeConfig>, String> {
        let text = format!(
            "[[bridge]]\nname = \"plant\"\nurl = \"mqtt://10.0.0.5:1884\"\nsubscriptions = [{{ filter = \"sensors/#\", qos = 1 }}]\n{extra}"
        );
        let raw: super::super::RawConfig = toml::from_str(&text).map_err(|e| e.to_string())?;
        validate_bridges(&raw.bridge, "gw").map_err(|e| e.to_string())
    }

    #[test]
    fn a_bridge_with_defaults() {
        let b = bridge("").expect("valid");
        assert_eq!((b[0].host.as_str(), b[0].port), ("10.0.0.5", 1884));
        assert_eq!(b[0].client_id, "fleetlake-gw-plant");
        assert_eq!(b[0].subscriptions, [("sensors/#".to_string(), 1)]);
        assert_eq!(b[0].password, Password::None);
        let shared = bridge("shared_group = \"lake\"").expect("valid");
        assert_eq!(shared[0].subscriptions[0].0, "$share/lake/sensors/#");
    }

    #[test]
    fn bad_bridges_name_the_key() {
        for (extra, key) in [
            ("protocol = \"6\"", "bridge[0].protocol"),
            ("password_env = \"P\"", "bridge[0].username"),
            ("shared_group = \"a/b\"", "bridge[0].shared_group"),
            ("max_inflight = 0", "bridge[0].max_inflight"),
        ] {
            let err = bridge(extra).expect_err(extra);
            assert!(err.contains(key), "{extra}: {err}");
        }
        let err = bridge("ca_file = \"/ca.pem\"").expect_err("ca without tls");
        assert!(err.contains("bridge[0].ca_file"), "{err}");
        let err = bridge("url = \"x\"").expect_err("duplicate key");
        assert!(err.contains("url"), "{err}");
        assert!(check_filter("a/#/b").is_err() && check_filter("a/b+").is_err());
        assert!(check_filter("a/+/c/#").is_ok());
        let url = |u: &str| parse_url(u).ok();
        assert_eq!(url("mqtt://broker"), Some(("broker".into(), 1883, false)));
        assert_eq!(url("mqtts://broker"), Some(("broker".into(), 8883, true)));
        assert_eq!(url("mqtt://[::1]:1884"), Some(("::1".into(), 1884, false)));
        assert!(parse_url("ws://broker").is_err());
    }
}
