//! Subscribers for the broker role (`--subscribers N`): each connects, subscribes to
//! `--sub-filter` at `--sub-qos`, acknowledges what it receives (PUBACK, or PUBREC/PUBCOMP)
//! and times each delivery from the `sent_us` the publisher put in the payload (µs since the
//! generator's epoch: one process, one clock). It stops at the deadline (`--duration`), or
//! without one once the publishers are done and nothing arrived for a second.

use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::MqttArgs;
use crate::mqtt::{Codec, In};
use crate::report::Totals;

/// Quiet time after the publishers finished before a subscriber stops.
const IDLE_END: Duration = Duration::from_secs(1);

/// One subscriber connection.
pub(crate) struct Sub {
    addr: String,
    client_id: String,
    filter: String,
    qos: u8,
    codec: Codec,
    deadline: Option<Instant>,
    totals: Rc<Totals>,
}

impl Sub {
    pub(crate) fn new(a: &MqttArgs, i: u64, deadline: Option<Instant>, totals: Rc<Totals>) -> Self {
        Self {
            addr: a.addr.clone(),
            client_id: format!("{}sub-{i}", a.prefix),
            filter: a.sub_filter.clone(),
            qos: a.sub_qos.unwrap_or(a.qos),
            codec: Codec(a.protocol),
            deadline,
            totals,
        }
    }

    pub(crate) async fn run(self) -> io::Result<()> {
        let mut stream = TcpStream::connect(&self.addr).await?;
        stream.set_nodelay(true)?;
        let mut out = BytesMut::new();
        self.codec.connect(self.client_id.clone(), &mut out)?;
        self.codec.subscribe(&self.filter, self.qos, &mut out)?;
        stream.write_all(&out).await?;
        out.clear();
        let mut inb = BytesMut::with_capacity(64 * 1024);
        let mut subscribed = false;
        let mut last = Instant::now();
        loop {
            while let Some(packet) = self.codec.read(&mut inb)? {
                match packet {
                    In::ConnAck(false) => return Err(io::Error::other("CONNECT refused")),
                    In::SubAck(ok) => {
                        if !ok {
                            return Err(io::Error::other("SUBSCRIBE refused"));
                        }
                        subscribed = true;
                        self.totals.subscribed.set(self.totals.subscribed.get() + 1);
                    }
                    In::Publish { qos, pkid, sent_us } => {
                        if let Some(sent) = sent_us {
                            let now = self.totals.epoch.elapsed().as_micros() as u64;
                            self.totals.delivered(now.saturating_sub(sent));
                        }
                        match qos {
                            0 => {}
                            1 => self.codec.ack(Ack::Qos1, pkid, &mut out)?,
                            _ => self.codec.ack(Ack::Received, pkid, &mut out)?,
                        }
                    }
                    In::PubRel(pkid) => self.codec.ack(Ack::Complete, pkid, &mut out)?,
                    _ => {}
                }
                last = Instant::now();
            }
            if !out.is_empty() {
                stream.write_all(&out).await?;
                out.clear();
            }
            let now = Instant::now();
            if self.deadline.is_some_and(|d| now >= d)
                || (self.deadline.is_none()
                    && subscribed
                    && self.totals.publishers_done.get()
                    && now - last >= IDLE_END)
            {
                self.codec.disconnect(&mut out);
                let _ = stream.write_all(&out).await;
                return Ok(());
            }
            let wait = tokio::time::timeout(Duration::from_millis(200), stream.read_buf(&mut inb));
            if let Ok(n) = wait.await
                && n? == 0
            {
                return Err(io::Error::other("server closed the connection"));
            }
        }
    }
}

/// An acknowledgement a subscriber sends.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Ack {
    /// PUBACK (QoS 1).
    Qos1,
    /// PUBREC (QoS 2, first).
    Received,
    /// PUBCOMP (QoS 2, last).
    Complete,
}
