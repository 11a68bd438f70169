//! Test harness: starts the real `fleetlake` binary on 127.0.0.1:0 with a temp dir, speaks
//! MQTT to it over plain TCP with rumqttc's packet codec, and reads the Parquet it writes.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{Connect, ConnectReturnCode, LastWill, Packet, PubRel, Publish};

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

pub const DEADLINE: Duration = Duration::from_secs(20);

/// A running daemon.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    /// The admin HTTP endpoint's address.
    pub admin: Option<SocketAddr>,
    /// The gRPC server's address.
    pub grpc: Option<SocketAddr>,
    child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    /// Starts the daemon with the test config plus `extra` TOML.
    pub fn start(extra: &str) -> Result<Self, Box<dyn std::error::Error>> {
        Self::start_with("", extra)
    }

    /// Starts the daemon with more `[mqtt]` keys and `extra` TOML.
    pub fn start_with(mqtt: &str, extra: &str) -> Result<Self, Box<dyn std::error::Error>> {
        Self::start_full("10s", mqtt, extra)
    }

    /// Starts the daemon with `node.shutdown_grace`, more `[mqtt]` keys and `extra` TOML.
    pub fn start_full(
        grace: &str,
        mqtt: &str,
        extra: &str,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        Self::start_in(tempfile::tempdir()?, grace, mqtt, extra)
    }

    /// Starts the daemon on the data in `dir` (a restart after [`Daemon::kill`]).
    pub fn start_in(
        dir: tempfile::TempDir,
        grace: &str,
        mqtt: &str,
        extra: &str,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        Self::start_in_env(dir, grace, mqtt, extra, &[])
    }

    /// Like [`Daemon::start_in`], with more environment variables for the daemon.
    pub fn start_in_env(
        dir: tempfile::TempDir,
        grace: &str,
        mqtt: &str,
        extra: &str,
        envs: &[(&str, String)],
    ) -> Result<Self, Box<dyn std::error::Error>> {
        // gRPC on a free port too, unless the test configures `[grpc]` itself.
        let grpc = if extra.contains("[grpc]") {
            ""
        } else {
            "[grpc]\nlisten = \"127.0.0.1:0\"\n"
        };
        let config = format!(
            "[node]\nid = \"test\"\ndata_dir = \"{}\"\nshutdown_grace = \"{grace}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{grpc}[mqtt]\nlisten = \"127.0.0.1:0\"\n{mqtt}\n{extra}\n",
            dir.path().join("data").display()
        );
        let config_path = dir.path().join("fleetlake.toml");
        std::fs::write(&config_path, config)?;
        let mut child = Command::new(env!("CARGO_BIN_EXE_fleetlake"))
            .args(["run", "--log-format", "json", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "info,fleetlake::mqtt=debug")
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("fleetlake ready") {
                    let _ = tx.send(line.clone());
                }
                if let Ok(mut l) = sink.lock() {
                    l.push(line);
                }
            }
        });
        let ready = rx
            .recv_timeout(DEADLINE)
            .map_err(|_| "daemon did not get ready")?;
        let json: serde_json::Value = serde_json::from_str(&ready)?;
        let addr = json["mqtt_listen"]
            .as_str()
            .ok_or("no mqtt_listen in ready line")?
            .parse()?;
        let admin = json["admin_listen"].as_str().and_then(|a| a.parse().ok());
        let grpc = json["grpc_listen"].as_str().and_then(|a| a.parse().ok());
        Ok(Self {
            dir,
            addr,
            admin,
            grpc,
            child,
            log,
        })
    }

    pub fn lake(&self) -> PathBuf {
        self.dir.path().join("data").join("lake")
    }

    /// Sends a signal (`"TERM"`, `"INT"`) to the daemon.
    pub fn signal(&self, name: &str) -> std::io::Result<()> {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()?;
        Ok(())
    }

    /// SIGTERM, then wait for exit.
    pub fn stop(mut self) -> Result<(ExitStatus, Self), Box<dyn std::error::Error>> {
        self.signal("TERM")?;
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok((status, self));
            }
            if start.elapsed() > DEADLINE {
                let _ = self.child.kill();
                return Err("daemon did not stop after SIGTERM".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no flush, no clean-up. Gives back the directory for a restart.
    pub fn kill(mut self) -> Result<tempfile::TempDir, Box<dyn std::error::Error>> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(std::mem::replace(&mut self.dir, tempfile::tempdir()?))
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_contains(&self, needle: &str) -> bool {
        self.log
            .lock()
            .map(|l| l.iter().any(|line| line.contains(needle)))
            .unwrap_or(false)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `cond` every 20 ms until true or the deadline passes.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) -> Result<(), String> {
    let start = Instant::now();
    while start.elapsed() < DEADLINE {
        if cond() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("timed out waiting for {what}"))
}

/// A minimal blocking MQTT 3.1.1 client.
pub struct Client {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl Client {
    pub fn connect(addr: SocketAddr, client_id: &str) -> Result<Self, Box<dyn std::error::Error>> {
        Ok(Self::connect_with(addr, Connect::new(client_id))?.0)
    }

    pub fn connect_with_will(
        addr: SocketAddr,
        client_id: &str,
        topic: &str,
        payload: &str,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let mut connect = Connect::new(client_id);
        let will = LastWill::new(topic, payload.as_bytes().to_vec(), QoS::AtLeastOnce, false);
        connect.last_will = Some(will);
        Ok(Self::connect_with(addr, connect)?.0)
    }

    /// Connects without clean session; also returns CONNACK's session-present flag.
    pub fn connect_persistent(
        addr: SocketAddr,
        client_id: &str,
    ) -> Result<(Self, bool), Box<dyn std::error::Error>> {
        let mut connect = Connect::new(client_id);
        connect.clean_session = false;
        Self::connect_with(addr, connect)
    }

    /// Sends CONNECT; expects an accepting CONNACK and returns its session-present flag.
    fn connect_with(
        addr: SocketAddr,
        connect: Connect,
    ) -> Result<(Self, bool), Box<dyn std::error::Error>> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(DEADLINE))?;
        let mut c = Self {
            stream,
            buf: BytesMut::new(),
        };
        c.send(Packet::Connect(connect))?;
        match c.recv()? {
            Packet::ConnAck(ack) if ack.code == ConnectReturnCode::Success => {
                Ok((c, ack.session_present))
            }
            other => Err(format!("expected CONNACK, got {other:?}").into()),
        }
    }

    pub fn send(&mut self, p: Packet) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        p.write(&mut out, usize::MAX)
            .map_err(std::io::Error::other)?;
        self.stream.write_all(&out)
    }

    pub fn recv(&mut self) -> Result<Packet, Box<dyn std::error::Error>> {
        loop {
            match Packet::read(&mut self.buf, usize::MAX) {
                Ok(p) => return Ok(p),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => return Err(e.into()),
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err("connection closed".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// QoS 1 publish; returns once PUBACK arrives.
    pub fn publish1(&mut self, topic: &str, payload: &str, pkid: u16) -> TestResult {
        let mut p = Publish::new(topic, QoS::AtLeastOnce, payload.as_bytes().to_vec());
        p.pkid = pkid;
        self.send(Packet::Publish(p))?;
        match self.recv()? {
            Packet::PubAck(ack) if ack.pkid == pkid => Ok(()),
            other => Err(format!("expected PUBACK {pkid}, got {other:?}").into()),
        }
    }

    /// QoS 2 publish, with the PUBLISH sent `times` times before PUBREL.
    pub fn publish2(&mut self, topic: &str, payload: &str, pkid: u16, times: usize) -> TestResult {
        for i in 0..times {
            let mut p = Publish::new(topic, QoS::ExactlyOnce, payload.as_bytes().to_vec());
            p.pkid = pkid;
            p.dup = i > 0;
            self.send(Packet::Publish(p))?;
            match self.recv()? {
                Packet::PubRec(r) if r.pkid == pkid => {}
                other => return Err(format!("expected PUBREC, got {other:?}").into()),
            }
        }
        self.send(Packet::PubRel(PubRel::new(pkid)))?;
        match self.recv()? {
            Packet::PubComp(c) if c.pkid == pkid => Ok(()),
            other => Err(format!("expected PUBCOMP, got {other:?}").into()),
        }
    }

    pub fn disconnect(mut self) -> TestResult {
        self.send(Packet::Disconnect)?;
        Ok(())
    }

    /// True when the server closes the connection (EOF or reset) before the deadline.
    pub fn closed_by_server(stream: &mut TcpStream) -> bool {
        let mut chunk = [0u8; 1024];
        loop {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return true,
                Ok(_) => continue,
            }
        }
    }
}

/// Every Parquet file below `dir`.
pub fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(parquet_files(&p));
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// All rows of every file under `dir` as JSON objects (column name → value as text).
pub fn read_rows(
    dir: &Path,
) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, Box<dyn std::error::Error>> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::TimestampMicrosecondType;
    let mut rows = Vec::new();
    for path in parquet_files(dir) {
        let file = std::fs::File::open(&path)?;
        for batch in ParquetRecordBatchReaderBuilder::try_new(file)?.build()? {
            let batch = batch?;
            for r in 0..batch.num_rows() {
                let mut row = serde_json::Map::new();
                for (i, field) in batch.schema().fields().iter().enumerate() {
                    let col = batch.column(i);
                    if col.is_null(r) {
                        continue;
                    }
                    let text = match col.as_primitive_opt::<TimestampMicrosecondType>() {
                        Some(ts) => chrono::DateTime::from_timestamp_micros(ts.value(r))
                            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
                            .unwrap_or_default(),
                        None => arrow::util::display::array_value_to_string(col, r)?,
                    };
                    row.insert(field.name().clone(), serde_json::Value::String(text));
                }
                rows.push(row);
            }
        }
    }
    Ok(rows)
}

/// `GET path` → (status code, body).
pub fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), Box<dyn std::error::Error>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(DEADLINE))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("no status code")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// The value of the sample `name` (with its labels, if any) in a /metrics body.
pub fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
