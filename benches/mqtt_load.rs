//! A first MQTT load generator (the full one, `fleetlake bench`, comes with the performance
//! issue). N connections over plain TCP publish small JSON readings, as fast as the server
//! takes them or at a fixed total `--rate`: QoS 0 pipelined, QoS 1 with a window of in-flight
//! messages. All connections run as tasks on ONE thread (a tokio current-thread runtime), so
//! the generator takes at most one core and 100 connections do not mean 200 threads fighting
//! the daemon for the CPU. Each connection's reader timestamps every PUBACK, so the PUBACK
//! latency percentiles are what a device sees (send → ack, WAL fsync included). Each connection ends
//! with a QoS 1 fence message whose PUBACK proves every earlier message was taken in (the
//! server handles a connection's packets in order), so the printed rate is what the server
//! took in.
//!
//! ```sh
//! cargo bench --bench mqtt_load -- --addr 127.0.0.1:1883 --messages 1000000 --qos 0 --conns 4
//! cargo bench --bench mqtt_load -- --addr 127.0.0.1:1883 --messages 100000 --qos 1 --conns 10 --rate 50000
//! ```

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{Connect, Packet, Publish};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::Notify;

struct Args {
    addr: String,
    messages: u64,
    qos: u8,
    conns: u64,
    window: u64,
    /// Total messages per second over all connections (0: as fast as possible).
    rate: f64,
    /// With `rate`: messages due within this many µs go out in one write.
    burst_us: u64,
}

fn parse_args() -> Args {
    let mut args = Args {
        addr: "127.0.0.1:1883".into(),
        messages: 100_000,
        qos: 1,
        conns: 4,
        window: 256,
        rate: 0.0,
        burst_us: 200,
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
            "--burst-us" => args.burst_us = value.parse().unwrap_or(args.burst_us),
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

/// What one connection's writer and reader share (both run in the same task).
struct Shared {
    /// Send time (µs since `epoch`) per packet id.
    sent_at: RefCell<Vec<u64>>,
    /// PUBACKs received so far.
    acked: Cell<u64>,
    /// Woken when PUBACKs arrive.
    notify: Notify,
    epoch: Instant,
}

/// Reads packets until `expected` PUBACKs arrived; returns each PUBACK's latency in µs.
async fn read_acks(
    mut rd: OwnedReadHalf,
    expected: u64,
    shared: &Shared,
) -> std::io::Result<Vec<u32>> {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut lats = Vec::with_capacity(expected as usize);
    let mut got = 0;
    while got < expected {
        loop {
            match Packet::read(&mut buf, usize::MAX) {
                Ok(Packet::PubAck(ack)) => {
                    let now = shared.epoch.elapsed().as_micros() as u64;
                    let sent = shared.sent_at.borrow()[ack.pkid as usize];
                    lats.push(now.saturating_sub(sent).min(u32::MAX as u64) as u32);
                    got += 1;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        shared.acked.set(got);
        shared.notify.notify_one();
        if got >= expected {
            break;
        }
        if rd.read_buf(&mut buf).await? == 0 {
            return Err(std::io::Error::other("server closed the connection"));
        }
    }
    Ok(lats)
}

struct Conn {
    addr: String,
    id: u64,
    messages: u64,
    qos: u8,
    window: u64,
    /// Messages per second for this connection (0: unpaced).
    rate: f64,
    burst: Duration,
}

async fn run_connection(c: Conn) -> std::io::Result<Vec<u32>> {
    let mut stream = TcpStream::connect(&c.addr).await?;
    stream.set_nodelay(true)?;
    let mut out = BytesMut::new();
    encode(
        Packet::Connect(Connect::new(format!("load-{}", c.id))),
        &mut out,
    );
    stream.write_all(&out).await?;
    out.clear();
    let mut inb = BytesMut::new();
    loop {
        if let Ok(Packet::ConnAck(_)) = Packet::read(&mut inb, usize::MAX) {
            break;
        }
        if stream.read_buf(&mut inb).await? == 0 {
            return Err(std::io::Error::other("server closed the connection"));
        }
    }
    let (rd, mut wr) = stream.into_split();
    let shared = Shared {
        sent_at: RefCell::new(vec![0; 65_536]),
        acked: Cell::new(0),
        notify: Notify::new(),
        epoch: Instant::now(),
    };
    let expected = if c.qos == 0 { 1 } else { c.messages + 1 };
    let topic = format!("sensors/load-{}/telemetry", c.id);
    let q = if c.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let writer = async {
        let mut sent = 0u64;
        for seq in 0..c.messages {
            if c.rate > 0.0 {
                // Paced in bursts: messages due within the next `--burst-us` go out in one
                // write (tokio timers tick in milliseconds anyway).
                let due = Duration::from_secs_f64(seq as f64 / c.rate);
                if due > shared.epoch.elapsed() + c.burst {
                    wr.write_all(&out).await?;
                    out.clear();
                    tokio::time::sleep_until((shared.epoch + due).into()).await;
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
                shared.sent_at.borrow_mut()[p.pkid as usize] =
                    shared.epoch.elapsed().as_micros() as u64;
                sent += 1;
            }
            encode(Packet::Publish(p), &mut out);
            if out.len() > 32 * 1024 {
                wr.write_all(&out).await?;
                out.clear();
            }
            if sent - shared.acked.get() >= c.window {
                wr.write_all(&out).await?;
                out.clear();
                while sent - shared.acked.get() > c.window / 2 {
                    shared.notify.notified().await;
                }
            }
        }
        let mut fence = Publish::new(&topic, QoS::AtLeastOnce, br#"{"fence":true}"#.to_vec());
        fence.pkid = 65_001;
        shared.sent_at.borrow_mut()[65_001] = shared.epoch.elapsed().as_micros() as u64;
        encode(Packet::Publish(fence), &mut out);
        wr.write_all(&out).await?;
        out.clear();
        Ok::<_, std::io::Error>(())
    };
    let (written, lats) = tokio::join!(writer, read_acks(rd, expected, &shared));
    written?;
    let mut lats = lats?;
    lats.pop(); // the fence
    encode(Packet::Disconnect, &mut out);
    let _ = wr.write_all(&out).await;
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
            "usage: cargo bench --bench mqtt_load -- --addr HOST:PORT --messages N --qos 0|1 --conns N [--window N] [--rate MSGS_PER_S [--burst-us 200]]"
        );
        return;
    }
    let per_conn = args.messages / args.conns;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("tokio runtime: {e}"),
    };
    let local = tokio::task::LocalSet::new();
    let start = Instant::now();
    let results = local.block_on(&runtime, async {
        let handles: Vec<_> = (0..args.conns)
            .map(|id| {
                let conn = Conn {
                    addr: args.addr.clone(),
                    id,
                    messages: per_conn,
                    qos: args.qos,
                    window: args.window,
                    rate: args.rate / args.conns as f64,
                    burst: Duration::from_micros(args.burst_us),
                };
                tokio::task::spawn_local(run_connection(conn))
            })
            .collect();
        let mut results = Vec::new();
        for h in handles {
            results.push(h.await);
        }
        results
    });
    let mut failed = 0;
    let mut lats = Vec::new();
    for r in results {
        match r {
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
