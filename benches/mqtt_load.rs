//! A first MQTT load generator (the full one, `fleetlake bench`, comes with the performance
//! issue). N connections over plain TCP publish small JSON readings, as fast as the server
//! takes them or at a fixed total `--rate`: QoS 0 pipelined, QoS 1 with a window of in-flight
//! messages. A reader thread per connection timestamps every PUBACK, so the PUBACK latency
//! percentiles are what a device sees (send → ack, WAL fsync included). Each connection ends
//! with a QoS 1 fence message whose PUBACK proves every earlier message was taken in (the
//! server handles a connection's packets in order), so the printed rate is what the server
//! took in.
//!
//! ```sh
//! cargo bench --bench mqtt_load -- --addr 127.0.0.1:1883 --messages 1000000 --qos 0 --conns 4
//! cargo bench --bench mqtt_load -- --addr 127.0.0.1:1883 --messages 100000 --qos 1 --conns 10 --rate 50000
//! ```

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{Connect, Packet, Publish};

use bytes::BytesMut;

struct Args {
    addr: String,
    messages: u64,
    qos: u8,
    conns: u64,
    window: u64,
    /// Total messages per second over all connections (0: as fast as possible).
    rate: f64,
}

fn parse_args() -> Args {
    let mut args = Args {
        addr: "127.0.0.1:1883".into(),
        messages: 100_000,
        qos: 1,
        conns: 4,
        window: 256,
        rate: 0.0,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let value = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--addr" => args.addr = value,
            "--messages" => args.messages = value.parse().unwrap_or(args.messages),
            "--qos" => args.qos = value.parse().unwrap_or(args.qos),
            "--conns" => args.conns = value.parse().unwrap_or(args.conns),
            "--window" => args.window = value.parse().unwrap_or(args.window),
            "--rate" => args.rate = value.parse().unwrap_or(args.rate),
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    args
}

fn encode(p: Packet, out: &mut BytesMut) {
    if let Err(e) = p.write(out, usize::MAX) {
        panic!("encode: {e}");
    }
}

/// Reads packets until `expected` PUBACKs arrived (the first read also takes the CONNACK);
/// returns each PUBACK's latency in µs, from the send time stored for its packet id.
fn read_acks(
    mut stream: TcpStream,
    expected: u64,
    sent_at: &[AtomicU64],
    acked: &Acked,
    epoch: Instant,
) -> std::io::Result<Vec<u32>> {
    let mut buf = BytesMut::new();
    let mut chunk = vec![0u8; 65536];
    let mut lats = Vec::with_capacity(expected as usize);
    let mut got = 0;
    while got < expected {
        loop {
            match Packet::read(&mut buf, usize::MAX) {
                Ok(Packet::PubAck(ack)) => {
                    let now = epoch.elapsed().as_micros() as u64;
                    let sent = sent_at[ack.pkid as usize].load(Ordering::Acquire);
                    lats.push(now.saturating_sub(sent).min(u32::MAX as u64) as u32);
                    got += 1;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        acked.set(got);
        if got >= expected {
            break;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::other("server closed the connection"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(lats)
}

/// Reads the CONNACK.
fn read_connack(stream: &mut TcpStream) -> std::io::Result<()> {
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Ok(Packet::ConnAck(_)) = Packet::read(&mut buf, usize::MAX) {
            return Ok(());
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::other("server closed the connection"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// PUBACKs counted by the reader thread; the writer sleeps on it while its window is full
/// (a condition variable, not polling: 100 polling writers would eat the CPU being measured).
#[derive(Default)]
struct Acked {
    count: Mutex<u64>,
    cv: Condvar,
}

impl Acked {
    fn set(&self, n: u64) {
        if let Ok(mut c) = self.count.lock() {
            *c = n;
        }
        self.cv.notify_one();
    }

    fn get(&self) -> u64 {
        self.count.lock().map(|c| *c).unwrap_or(0)
    }

    /// Waits until fewer than `limit` of `sent` messages are unacknowledged.
    fn wait_below(&self, sent: u64, limit: u64) {
        let Ok(mut c) = self.count.lock() else { return };
        while sent - *c >= limit {
            c = match self.cv.wait(c) {
                Ok(c) => c,
                Err(_) => return,
            };
        }
    }
}

struct Conn {
    addr: String,
    id: u64,
    messages: u64,
    qos: u8,
    window: u64,
    /// Messages per second for this connection (0: unpaced).
    rate: f64,
}

fn run_connection(c: Conn) -> std::io::Result<Vec<u32>> {
    let mut stream = TcpStream::connect(&c.addr)?;
    stream.set_nodelay(true)?;
    let mut out = BytesMut::new();
    encode(
        Packet::Connect(Connect::new(format!("load-{}", c.id))),
        &mut out,
    );
    stream.write_all(&out)?;
    out.clear();
    read_connack(&mut stream)?;
    let epoch = Instant::now();
    let sent_at: Arc<Vec<AtomicU64>> =
        Arc::new((0..=u16::MAX).map(|_| AtomicU64::new(0)).collect());
    let acked = Arc::new(Acked::default());
    let expected = if c.qos == 0 { 1 } else { c.messages + 1 };
    let reader = {
        let (stream, sent_at, acked) = (stream.try_clone()?, sent_at.clone(), acked.clone());
        std::thread::spawn(move || read_acks(stream, expected, &sent_at, &acked, epoch))
    };
    let topic = format!("sensors/load-{}/telemetry", c.id);
    let q = if c.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let mut sent = 0u64;
    for seq in 0..c.messages {
        if c.rate > 0.0 {
            // Paced in bursts: messages due within the next 200 µs go out in one write (a
            // sleep and a write per message would load the CPU more than the server does).
            let due = Duration::from_secs_f64(seq as f64 / c.rate);
            if let Some(wait) = due.checked_sub(epoch.elapsed() + Duration::from_micros(200)) {
                stream.write_all(&out)?;
                out.clear();
                std::thread::sleep(wait);
            }
        }
        let payload = format!(
            r#"{{"ts":{},"seq":{seq},"temp":{:.1},"hum":{},"ok":true,"fw":"1.2.0"}}"#,
            1_767_225_600_000u64 + seq,
            20.0 + (seq % 100) as f64 / 10.0,
            30 + seq % 40
        );
        let mut p = Publish::new(&topic, q, payload.into_bytes());
        if c.qos > 0 {
            p.pkid = (seq % 65_000 + 1) as u16;
            sent_at[p.pkid as usize].store(epoch.elapsed().as_micros() as u64, Ordering::Release);
            sent += 1;
        }
        encode(Packet::Publish(p), &mut out);
        if out.len() > 32 * 1024 {
            stream.write_all(&out)?;
            out.clear();
        }
        if sent - acked.get() >= c.window {
            stream.write_all(&out)?;
            out.clear();
            acked.wait_below(sent, c.window / 2 + 1);
        }
    }
    let mut fence = Publish::new(&topic, QoS::AtLeastOnce, br#"{"fence":true}"#.to_vec());
    fence.pkid = 65_001;
    sent_at[65_001].store(epoch.elapsed().as_micros() as u64, Ordering::Release);
    encode(Packet::Publish(fence), &mut out);
    stream.write_all(&out)?;
    out.clear();
    let mut lats = reader
        .join()
        .map_err(|_| std::io::Error::other("reader panicked"))??;
    lats.pop(); // the fence
    encode(Packet::Disconnect, &mut out);
    let _ = stream.write_all(&out);
    Ok(lats)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn main() {
    let args = parse_args();
    if std::env::args().any(|a| a == "--bench") && std::env::args().len() <= 2 {
        // `cargo bench` without arguments: nothing to load; print usage and succeed.
        println!(
            "usage: cargo bench --bench mqtt_load -- --addr HOST:PORT --messages N --qos 0|1 --conns N [--window N] [--rate MSGS_PER_S]"
        );
        return;
    }
    let per_conn = args.messages / args.conns;
    let start = Instant::now();
    let handles: Vec<_> = (0..args.conns)
        .map(|id| {
            let conn = Conn {
                addr: args.addr.clone(),
                id,
                messages: per_conn,
                qos: args.qos,
                window: args.window,
                rate: args.rate / args.conns as f64,
            };
            std::thread::spawn(move || run_connection(conn))
        })
        .collect();
    let mut failed = 0;
    let mut lats = Vec::new();
    for h in handles {
        match h.join() {
            Ok(Ok(l)) => lats.extend(l),
            _ => failed += 1,
        }
    }
    lats.sort_unstable();
    let secs = start
        .elapsed()
        .as_secs_f64()
        .max(Duration::from_micros(1).as_secs_f64());
    let total = per_conn * args.conns;
    println!(
        "qos={} conns={} messages={} failed_conns={} seconds={:.2} msgs_per_s={:.0} \
         puback_ms_p50={:.2} p90={:.2} p99={:.2} p99.9={:.2}",
        args.qos,
        args.conns,
        total,
        failed,
        secs,
        total as f64 / secs,
        percentile(&lats, 0.5),
        percentile(&lats, 0.9),
        percentile(&lats, 0.99),
        percentile(&lats, 0.999),
    );
}
