//! One MQTT connection: CONNECT, then publish (paced or not) with a window of unacknowledged
//! QoS 1/2 messages, timing each ack; a QoS 1 fence message at the end whose PUBACK proves the
//! server took in everything before it (it handles a connection's packets in order). Packets
//! are encoded and parsed with rumqttc's own codecs (3.1.1 and 5).

use std::cell::{Cell, RefCell};
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::{QoS, v4};
use rumqttc::v5::mqttbytes::v5;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Mutex, Notify};

use crate::report::Totals;
use crate::sub::Ack;
use crate::{MqttArgs, Payload, Protocol};

/// Packet id of the final fence message (outside the ids data messages use).
const FENCE: u16 = 65_001;
/// Data messages use packet ids 1..=PKIDS.
const PKIDS: u64 = 65_000;

/// A server packet the generator cares about.
pub(crate) enum In {
    ConnAck(bool),
    PubAck(u16, bool),
    PubRec(u16, bool),
    PubComp(u16),
    /// SUBACK: whether the (one) filter was granted.
    SubAck(bool),
    /// A delivery to a subscriber, with the `sent_us` its payload carries.
    Publish {
        qos: u8,
        pkid: u16,
        sent_us: Option<u64>,
    },
    PubRel(u16),
    Other,
}

/// The `"sent_us":N` a publisher put in a payload (subscriber runs).
fn sent_us(payload: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"sent_us\":";
    let at = payload.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits = payload[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&payload[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

fn qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn qos5(q: u8) -> rumqttc::v5::mqttbytes::QoS {
    match q {
        0 => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        1 => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        _ => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
    }
}

fn encode_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("encode: {e}"))
}

pub(crate) struct Codec(pub(crate) Protocol);

impl Codec {
    /// SUBSCRIBE to one filter (packet id 1).
    pub(crate) fn subscribe(&self, filter: &str, q: u8, out: &mut BytesMut) -> io::Result<()> {
        match self.0 {
            Protocol::V4 => {
                let mut s = v4::Subscribe::new(filter, qos(q));
                s.pkid = 1;
                v4::Packet::Subscribe(s)
                    .write(out, usize::MAX)
                    .map(drop)
                    .map_err(encode_err)
            }
            Protocol::V5 => {
                let mut s = v5::Subscribe::new(v5::Filter::new(filter, qos5(q)), None);
                s.pkid = 1;
                v5::Packet::Subscribe(s)
                    .write(out, None)
                    .map(drop)
                    .map_err(encode_err)
            }
        }
    }

    /// A subscriber's PUBACK, PUBREC or PUBCOMP.
    pub(crate) fn ack(&self, kind: Ack, pkid: u16, out: &mut BytesMut) -> io::Result<()> {
        let r = match (self.0, kind) {
            (Protocol::V4, Ack::Qos1) => v4::PubAck::new(pkid).write(out),
            (Protocol::V4, Ack::Received) => v4::PubRec::new(pkid).write(out),
            (Protocol::V4, Ack::Complete) => v4::PubComp::new(pkid).write(out),
            (Protocol::V5, Ack::Qos1) => {
                return v5::Packet::PubAck(v5::PubAck::new(pkid, None))
                    .write(out, None)
                    .map(drop)
                    .map_err(encode_err);
            }
            (Protocol::V5, Ack::Received) => {
                return v5::Packet::PubRec(v5::PubRec::new(pkid, None))
                    .write(out, None)
                    .map(drop)
                    .map_err(encode_err);
            }
            (Protocol::V5, Ack::Complete) => {
                return v5::Packet::PubComp(v5::PubComp::new(pkid, None))
                    .write(out, None)
                    .map(drop)
                    .map_err(encode_err);
            }
        };
        r.map(drop).map_err(encode_err)
    }

    pub(crate) fn connect(&self, client_id: String, out: &mut BytesMut) -> io::Result<()> {
        match self.0 {
            Protocol::V4 => {
                let mut c = v4::Connect::new(client_id);
                c.keep_alive = 0;
                v4::Packet::Connect(c)
                    .write(out, usize::MAX)
                    .map(drop)
                    .map_err(encode_err)
            }
            Protocol::V5 => {
                let c = v5::Connect {
                    keep_alive: 0,
                    client_id,
                    clean_start: true,
                    properties: None,
                };
                v5::Packet::Connect(c, None, None)
                    .write(out, None)
                    .map(drop)
                    .map_err(encode_err)
            }
        }
    }

    fn publish(
        &self,
        topic: &str,
        q: u8,
        pkid: u16,
        payload: Bytes,
        out: &mut BytesMut,
    ) -> io::Result<()> {
        match self.0 {
            Protocol::V4 => {
                let mut p = v4::Publish::new(topic, qos(q), payload);
                p.pkid = pkid;
                v4::Packet::Publish(p)
                    .write(out, usize::MAX)
                    .map(drop)
                    .map_err(encode_err)
            }
            Protocol::V5 => {
                let mut p = v5::Publish::new(topic, qos5(q), payload, None);
                p.pkid = pkid;
                v5::Packet::Publish(p)
                    .write(out, None)
                    .map(drop)
                    .map_err(encode_err)
            }
        }
    }

    fn pubrel(&self, pkid: u16, out: &mut BytesMut) -> io::Result<()> {
        match self.0 {
            Protocol::V4 => v4::PubRel::new(pkid)
                .write(out)
                .map(drop)
                .map_err(encode_err),
            Protocol::V5 => v5::Packet::PubRel(v5::PubRel::new(pkid, None))
                .write(out, None)
                .map(drop)
                .map_err(encode_err),
        }
    }

    pub(crate) fn disconnect(&self, out: &mut BytesMut) {
        match self.0 {
            Protocol::V4 => out.extend_from_slice(&[0xE0, 0]),
            Protocol::V5 => out.extend_from_slice(&[0xE0, 1, 0]),
        }
    }

    /// One packet off `buf`; `Ok(None)` when more bytes are needed.
    pub(crate) fn read(&self, buf: &mut BytesMut) -> io::Result<Option<In>> {
        match self.0 {
            Protocol::V4 => match v4::Packet::read(buf, usize::MAX) {
                Ok(v4::Packet::ConnAck(a)) => {
                    Ok(Some(In::ConnAck(a.code == v4::ConnectReturnCode::Success)))
                }
                Ok(v4::Packet::PubAck(a)) => Ok(Some(In::PubAck(a.pkid, true))),
                Ok(v4::Packet::PubRec(a)) => Ok(Some(In::PubRec(a.pkid, true))),
                Ok(v4::Packet::PubComp(a)) => Ok(Some(In::PubComp(a.pkid))),
                Ok(v4::Packet::SubAck(a)) => {
                    Ok(Some(In::SubAck(a.return_codes.iter().all(|c| {
                        matches!(c, v4::SubscribeReasonCode::Success(_))
                    }))))
                }
                Ok(v4::Packet::Publish(p)) => Ok(Some(In::Publish {
                    qos: p.qos as u8,
                    pkid: p.pkid,
                    sent_us: sent_us(&p.payload),
                })),
                Ok(v4::Packet::PubRel(p)) => Ok(Some(In::PubRel(p.pkid))),
                Ok(_) => Ok(Some(In::Other)),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
                Err(e) => Err(io::Error::other(format!("bad packet from the server: {e}"))),
            },
            Protocol::V5 => match v5::Packet::read(buf, None) {
                Ok(v5::Packet::ConnAck(a)) => {
                    Ok(Some(In::ConnAck(a.code == v5::ConnectReturnCode::Success)))
                }
                Ok(v5::Packet::PubAck(a)) => Ok(Some(In::PubAck(
                    a.pkid,
                    a.reason == v5::PubAckReason::Success,
                ))),
                Ok(v5::Packet::PubRec(a)) => Ok(Some(In::PubRec(
                    a.pkid,
                    a.reason == v5::PubRecReason::Success,
                ))),
                Ok(v5::Packet::PubComp(a)) => Ok(Some(In::PubComp(a.pkid))),
                Ok(v5::Packet::SubAck(a)) => {
                    Ok(Some(In::SubAck(a.return_codes.iter().all(|c| {
                        matches!(c, v5::SubscribeReasonCode::Success(_))
                    }))))
                }
                Ok(v5::Packet::Publish(p)) => Ok(Some(In::Publish {
                    qos: p.qos as u8,
                    pkid: p.pkid,
                    sent_us: sent_us(&p.payload),
                })),
                Ok(v5::Packet::PubRel(p)) => Ok(Some(In::PubRel(p.pkid))),
                Ok(_) => Ok(Some(In::Other)),
                Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
                Err(e) => Err(io::Error::other(format!("bad packet from the server: {e}"))),
            },
        }
    }
}

/// The payload of message `seq` of device `id`; with `sent_us` (subscriber runs) it also
/// carries its send time.
fn payload(kind: Payload, id: u64, seq: u64, sent_us: Option<u64>) -> Bytes {
    let ts = 1_767_225_600_000u64 + seq;
    let mut text = match kind {
        Payload::Reading => format!(
            r#"{{"ts":{ts},"seq":{seq},"temp":{:.1},"hum":{},"ok":true}}"#,
            20.0 + (seq % 100) as f64 / 10.0,
            30 + seq % 40
        ),
        Payload::Doc => {
            let mut s = format!(r#"{{"ts":{ts},"seq":{seq},"device":"unit-{id}","fw":"1.2.0""#);
            for i in 0..36 {
                match i % 4 {
                    0 => s.push_str(&format!(
                        r#","temp_{i}":{:.2}"#,
                        20.0 + ((seq + i) % 100) as f64 / 7.0
                    )),
                    1 => s.push_str(&format!(r#","count_{i}":{}"#, seq * 3 + i)),
                    2 => s.push_str(&format!(r#","flag_{i}":{}"#, (seq + i).is_multiple_of(3))),
                    _ => s.push_str(&format!(r#","state_{i}":"mode-{}-nominal""#, (seq + i) % 5)),
                }
            }
            s.push('}');
            s
        }
    };
    if let Some(t) = sent_us {
        text.pop();
        text.push_str(&format!(r#","sent_us":{t}}}"#));
    }
    Bytes::from(text)
}

/// State the writer and the reader of one connection share (same task).
struct Shared {
    /// Send time (µs since `epoch`) per packet id.
    sent_at: RefCell<Vec<u64>>,
    /// Acks (PUBACK, or PUBCOMP for QoS 2) received, fence included.
    done: Cell<u64>,
    /// Acks to wait for before the reader stops (set when the writer knows).
    expected: Cell<Option<u64>>,
    notify: Notify,
    epoch: Instant,
}

/// One connection's settings.
pub(crate) struct Conn {
    addr: String,
    id: u64,
    prefix: String,
    codec: Rc<Codec>,
    messages: u64,
    qos: u8,
    window: u64,
    /// Messages per second for this connection (0: unpaced).
    rate: f64,
    burst: Duration,
    payload: Payload,
    idle: bool,
    /// Subscribers run: payloads carry their send time.
    stamp: bool,
    deadline: Option<Instant>,
    totals: Rc<Totals>,
}

impl Conn {
    pub(crate) fn new(
        a: &MqttArgs,
        id: u64,
        deadline: Option<Instant>,
        totals: Rc<Totals>,
    ) -> Self {
        let conns = a.conns.max(1);
        // The remainder goes to the first connections: every message is sent.
        let messages = a.messages / conns + u64::from(id < a.messages % conns);
        Self {
            addr: a.addr.clone(),
            id,
            prefix: a.prefix.clone(),
            codec: Rc::new(Codec(a.protocol)),
            messages: if a.messages == 0 { u64::MAX } else { messages },
            qos: a.qos,
            window: a.window,
            rate: a.rate / conns as f64,
            burst: Duration::from_micros(a.burst_us),
            payload: a.payload,
            idle: a.idle,
            stamp: a.subscribers > 0,
            deadline,
            totals,
        }
    }

    pub(crate) async fn run(self) -> io::Result<()> {
        let mut stream = TcpStream::connect(&self.addr).await?;
        stream.set_nodelay(true)?;
        let mut out = BytesMut::new();
        let device = format!("{}{}", self.prefix, self.id);
        self.codec.connect(device.clone(), &mut out)?;
        stream.write_all(&out).await?;
        out.clear();
        let mut inb = BytesMut::new();
        loop {
            match self.codec.read(&mut inb)? {
                Some(In::ConnAck(true)) => break,
                Some(In::ConnAck(false)) => return Err(io::Error::other("CONNECT refused")),
                Some(_) => {}
                None => {
                    if stream.read_buf(&mut inb).await? == 0 {
                        return Err(io::Error::other("server closed the connection"));
                    }
                }
            }
        }
        self.totals.connected.set(self.totals.connected.get() + 1);
        if self.idle {
            if let Some(d) = self.deadline {
                tokio::time::sleep_until(d.into()).await;
            }
            self.codec.disconnect(&mut out);
            let _ = stream.write_all(&out).await;
            return Ok(());
        }
        let (rd, wr) = stream.into_split();
        let wr = Rc::new(Mutex::new(wr));
        let shared = Shared {
            sent_at: RefCell::new(vec![0; 65_536]),
            done: Cell::new(0),
            expected: Cell::new(None),
            notify: Notify::new(),
            epoch: Instant::now(),
        };
        let topic = format!("sensors/{device}/telemetry");
        let (written, read) = tokio::join!(
            self.write(&topic, &wr, &shared),
            self.read(rd, inb, &wr, &shared)
        );
        written?;
        read?;
        self.codec.disconnect(&mut out);
        let _ = wr.lock().await.write_all(&out).await;
        Ok(())
    }

    fn now(shared: &Shared) -> u64 {
        shared.epoch.elapsed().as_micros() as u64
    }

    async fn write(
        &self,
        topic: &str,
        wr: &Mutex<OwnedWriteHalf>,
        shared: &Shared,
    ) -> io::Result<()> {
        let mut out = BytesMut::with_capacity(64 * 1024);
        let mut awaited = 0u64; // acks this connection waits for
        let mut seq = 0u64;
        while seq < self.messages {
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            if self.rate > 0.0 {
                // Paced in bursts: what is due within `burst` goes out in one write.
                let due = Duration::from_secs_f64(seq as f64 / self.rate);
                if due > shared.epoch.elapsed() + self.burst {
                    flush(wr, &mut out).await?;
                    tokio::time::sleep_until((shared.epoch + due).into()).await;
                }
            }
            let pkid = if self.qos > 0 {
                (seq % PKIDS + 1) as u16
            } else {
                0
            };
            if self.qos > 0 {
                shared.sent_at.borrow_mut()[usize::from(pkid)] = Self::now(shared);
                awaited += 1;
            }
            self.codec.publish(
                topic,
                self.qos,
                pkid,
                payload(
                    self.payload,
                    self.id,
                    seq,
                    self.stamp
                        .then(|| self.totals.epoch.elapsed().as_micros() as u64),
                ),
                &mut out,
            )?;
            self.totals.sent(1);
            seq += 1;
            if out.len() > 32 * 1024 {
                flush(wr, &mut out).await?;
            }
            if awaited - shared.done.get() >= self.window {
                flush(wr, &mut out).await?;
                while awaited - shared.done.get() > self.window / 2 {
                    shared.notify.notified().await;
                }
            }
        }
        // The fence: a QoS 1 PUBACK for it means the server took in everything before it.
        shared.expected.set(Some(awaited + 1));
        shared.sent_at.borrow_mut()[usize::from(FENCE)] = Self::now(shared);
        self.codec.publish(
            topic,
            1,
            FENCE,
            Bytes::from_static(br#"{"fence":true}"#),
            &mut out,
        )?;
        flush(wr, &mut out).await
    }

    async fn read(
        &self,
        mut rd: OwnedReadHalf,
        mut buf: BytesMut,
        wr: &Mutex<OwnedWriteHalf>,
        shared: &Shared,
    ) -> io::Result<()> {
        let mut rel = BytesMut::new();
        loop {
            while let Some(packet) = self.codec.read(&mut buf)? {
                let finished = match packet {
                    In::PubAck(pkid, ok) | In::PubRec(pkid, ok) if !ok => {
                        self.totals.errors(1);
                        Some(pkid)
                    }
                    In::PubAck(pkid, _) | In::PubComp(pkid) => Some(pkid),
                    In::PubRec(pkid, _) => {
                        self.codec.pubrel(pkid, &mut rel)?;
                        None
                    }
                    _ => None,
                };
                if let Some(pkid) = finished {
                    shared.done.set(shared.done.get() + 1);
                    if pkid != FENCE {
                        let sent = shared.sent_at.borrow()[usize::from(pkid)];
                        self.totals.acked(Self::now(shared).saturating_sub(sent));
                    }
                }
            }
            if !rel.is_empty() {
                flush(wr, &mut rel).await?;
            }
            shared.notify.notify_one();
            if shared
                .expected
                .get()
                .is_some_and(|n| shared.done.get() >= n)
            {
                return Ok(());
            }
            if rd.read_buf(&mut buf).await? == 0 {
                return Err(io::Error::other("server closed the connection"));
            }
        }
    }
}

async fn flush(wr: &Mutex<OwnedWriteHalf>, out: &mut BytesMut) -> io::Result<()> {
    if !out.is_empty() {
        wr.lock().await.write_all(out).await?;
        out.clear();
    }
    Ok(())
}
