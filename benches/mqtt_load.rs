//! A first MQTT load generator (the full one, `fleetlake bench`, comes with the performance
//! issue). N connections over plain TCP publish small JSON readings as fast as the server takes
//! them: QoS 0 pipelined, QoS 1 with a window of in-flight messages. Each connection ends with
//! a QoS 1 fence message whose PUBACK proves every earlier message was admitted (the server
//! handles a connection's packets in order), so the printed rate is what the server took in.
//!
//! ```sh
//! cargo bench --bench mqtt_load -- --addr 127.0.0.1:1883 --messages 1000000 --qos 0 --conns 4
//! ```

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{Connect, Packet, Publish};

struct Args {
    addr: String,
    messages: u64,
    qos: u8,
    conns: u64,
    window: u64,
}

fn parse_args() -> Args {
    let mut args = Args {
        addr: "127.0.0.1:1883".into(),
        messages: 100_000,
        qos: 1,
        conns: 4,
        window: 256,
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

/// Reads until `acks` PUBACKs arrived (or CONNACK when `acks` is 0 and `connack`).
fn read_acks(stream: &mut TcpStream, buf: &mut BytesMut, mut acks: u64) -> std::io::Result<()> {
    let mut chunk = [0u8; 65536];
    while acks > 0 {
        loop {
            match Packet::read(buf, usize::MAX) {
                Ok(Packet::PubAck(_)) | Ok(Packet::ConnAck(_)) => acks -= 1,
                Ok(_) => {}
                Err(_) => break,
            }
            if acks == 0 {
                return Ok(());
            }
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::other("server closed the connection"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

fn run_connection(addr: &str, id: u64, messages: u64, qos: u8, window: u64) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let mut out = BytesMut::new();
    let mut inb = BytesMut::new();
    encode(
        Packet::Connect(Connect::new(format!("load-{id}"))),
        &mut out,
    );
    stream.write_all(&out)?;
    out.clear();
    read_acks(&mut stream, &mut inb, 1)?;
    let topic = format!("sensors/load-{id}/telemetry");
    let q = if qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let mut in_flight = 0u64;
    for seq in 0..messages {
        let payload = format!(
            r#"{{"ts":{},"seq":{seq},"temp":{:.1},"hum":{},"ok":true,"fw":"1.2.0"}}"#,
            1_767_225_600_000u64 + seq,
            20.0 + (seq % 100) as f64 / 10.0,
            30 + seq % 40
        );
        let mut p = Publish::new(&topic, q, payload.into_bytes());
        if qos > 0 {
            p.pkid = (seq % 65_000 + 1) as u16;
            in_flight += 1;
        }
        encode(Packet::Publish(p), &mut out);
        if out.len() > 32 * 1024 {
            stream.write_all(&out)?;
            out.clear();
        }
        if in_flight >= window {
            stream.write_all(&out)?;
            out.clear();
            read_acks(&mut stream, &mut inb, in_flight / 2)?;
            in_flight -= in_flight / 2;
        }
    }
    let mut fence = Publish::new(&topic, QoS::AtLeastOnce, br#"{"fence":true}"#.to_vec());
    fence.pkid = 65_001;
    encode(Packet::Publish(fence), &mut out);
    stream.write_all(&out)?;
    out.clear();
    read_acks(&mut stream, &mut inb, in_flight + 1)?;
    encode(Packet::Disconnect, &mut out);
    let _ = stream.write_all(&out);
    Ok(())
}

fn main() {
    let args = parse_args();
    if std::env::args().any(|a| a == "--bench") && std::env::args().len() <= 2 {
        // `cargo bench` without arguments: nothing to load; print usage and succeed.
        println!(
            "usage: cargo bench --bench mqtt_load -- --addr HOST:PORT --messages N --qos 0|1 --conns N"
        );
        return;
    }
    let per_conn = args.messages / args.conns;
    let start = Instant::now();
    let handles: Vec<_> = (0..args.conns)
        .map(|id| {
            let addr = args.addr.clone();
            let (qos, window) = (args.qos, args.window);
            std::thread::spawn(move || run_connection(&addr, id, per_conn, qos, window))
        })
        .collect();
    let mut failed = 0;
    for h in handles {
        if !matches!(h.join(), Ok(Ok(()))) {
            failed += 1;
        }
    }
    let secs = start
        .elapsed()
        .as_secs_f64()
        .max(Duration::from_micros(1).as_secs_f64());
    let total = per_conn * args.conns;
    println!(
        "qos={} conns={} messages={} failed_conns={} seconds={:.2} msgs_per_s={:.0}",
        args.qos,
        args.conns,
        total,
        failed,
        secs,
        total as f64 / secs
    );
}
