//! The persistent sessions as a snapshot file (`{data_dir}/broker/sessions`), so a session
//! that asked to outlive its connection (3.1.1 without clean session, MQTT 5 with a session
//! expiry) also outlives a restart or a SIGKILL: its subscriptions, the deliveries queued for
//! it and those in flight. Written by the fan-out thread with the retained snapshot (at most
//! once a second while they change, and at once when a SUBACK of a persistent session waits
//! for it); the WAL keeps every record routed after the snapshot, and a start routes those
//! again into the restored sessions (QoS 1/2 only), so nothing acknowledged to a publisher is
//! missing from a persistent subscriber's queue. A delivery settled after the last snapshot is
//! sent again after a crash (at least once).
//!
//! Format (little-endian): `FLSES\0\0\x02` | covered seq u64 | count u32 | sessions | CRC32C.
//! session = client str | user (u8 flag, str) | next_pkid u16 | expiry u32 | subs u16 × (filter str, qos
//! u8, flags u8, id u32) | queue u32 × delivery | inflight u32 × (pkid u16, released u8,
//! delivery); delivery = topic str | qos u8 | retain u8 | ids u8 × u32 | payload (u32, bytes);
//! str = u16 length + UTF-8. MQTT 5 properties are not kept.

use std::sync::Arc;

use bytes::Bytes;

use super::outbox::Delivery;
use super::table::SubOpts;

const MAGIC: &[u8; 8] = b"FLSES\x00\x00\x02";
/// Version 1 had no expiry (its sessions never expire).
const MAGIC_V1: &[u8; 8] = b"FLSES\x00\x00\x01";

/// One persistent session as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionImage {
    /// Client id.
    pub client: String,
    /// Authenticated user (for the ACL).
    pub user: Option<String>,
    /// Subscriptions as subscribed (`$share/…` included), with their options.
    pub subs: Vec<(String, SubOpts)>,
    /// Session expiry interval, seconds (`u32::MAX`: for ever).
    pub expiry: u32,
    /// Deliveries queued.
    pub queue: Vec<Delivery>,
    /// Deliveries in flight: packet id, whether PUBREL was sent (QoS 2), the delivery.
    pub inflight: Vec<(u16, bool, Delivery)>,
    /// The last packet id used.
    pub next_pkid: u16,
}

/// Why a snapshot (of sessions or retained messages) cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("snapshot is damaged: {0}")]
pub struct Damaged(&'static str);

/// The snapshot bytes of `sessions`, covering the WAL up to `covered`.
pub fn encode(covered: u64, sessions: &[SessionImage]) -> Vec<u8> {
    let mut w = Vec::with_capacity(64);
    w.extend_from_slice(MAGIC);
    w.extend_from_slice(&covered.to_le_bytes());
    w.extend_from_slice(&(sessions.len() as u32).to_le_bytes());
    for s in sessions {
        string(&mut w, &s.client);
        match &s.user {
            Some(u) => {
                w.push(1);
                string(&mut w, u);
            }
            None => w.push(0),
        }
        w.extend_from_slice(&s.next_pkid.to_le_bytes());
        w.extend_from_slice(&s.expiry.to_le_bytes());
        w.extend_from_slice(&(s.subs.len() as u16).to_le_bytes());
        for (filter, o) in &s.subs {
            string(&mut w, filter);
            w.push(o.qos);
            w.push(u8::from(o.no_local) | (u8::from(o.retain_as_published) << 1));
            w.extend_from_slice(&o.id.unwrap_or(0).to_le_bytes());
        }
        w.extend_from_slice(&(s.queue.len() as u32).to_le_bytes());
        for d in &s.queue {
            delivery(&mut w, d);
        }
        w.extend_from_slice(&(s.inflight.len() as u32).to_le_bytes());
        for (pkid, released, d) in &s.inflight {
            w.extend_from_slice(&pkid.to_le_bytes());
            w.push(u8::from(*released));
            delivery(&mut w, d);
        }
    }
    let crc = crc32c::crc32c(&w);
    w.extend_from_slice(&crc.to_le_bytes());
    w
}

fn string(w: &mut Vec<u8>, s: &str) {
    let s = &s.as_bytes()[..s.len().min(usize::from(u16::MAX))];
    w.extend_from_slice(&(s.len() as u16).to_le_bytes());
    w.extend_from_slice(s);
}

fn delivery(w: &mut Vec<u8>, d: &Delivery) {
    string(w, &d.topic);
    w.push(d.qos);
    w.push(u8::from(d.retain));
    w.push(d.sub_ids.len().min(255) as u8);
    for id in d.sub_ids.iter().take(255) {
        w.extend_from_slice(&id.to_le_bytes());
    }
    w.extend_from_slice(&(d.payload.len() as u32).to_le_bytes());
    w.extend_from_slice(&d.payload);
}

/// Reads a snapshot: the WAL sequence number it covers and the sessions.
pub fn decode(bytes: &[u8]) -> Result<(u64, Vec<SessionImage>), Damaged> {
    let (mut r, v1) = match Reader::open(bytes, MAGIC) {
        Ok(r) => (r, false),
        Err(_) => (Reader::open(bytes, MAGIC_V1)?, true),
    };
    let covered = u64::from_le_bytes(r.array()?);
    let count = u32::from_le_bytes(r.array()?);
    let mut sessions = Vec::new();
    for _ in 0..count {
        let client = r.string()?;
        let user = match r.take(1)?[0] {
            0 => None,
            _ => Some(r.string()?),
        };
        let next_pkid = u16::from_le_bytes(r.array()?);
        let expiry = if v1 {
            u32::MAX
        } else {
            u32::from_le_bytes(r.array()?)
        };
        let n = u16::from_le_bytes(r.array()?);
        let mut subs = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let filter = r.string()?;
            let qos = r.take(1)?[0];
            let flags = r.take(1)?[0];
            let id = u32::from_le_bytes(r.array()?);
            let opts = SubOpts {
                qos,
                no_local: flags & 1 != 0,
                retain_as_published: flags & 2 != 0,
                id: (id != 0).then_some(id),
            };
            subs.push((filter, opts));
        }
        let n = u32::from_le_bytes(r.array()?);
        let mut queue = Vec::new();
        for _ in 0..n {
            queue.push(r.delivery()?);
        }
        let n = u32::from_le_bytes(r.array()?);
        let mut inflight = Vec::new();
        for _ in 0..n {
            let pkid = u16::from_le_bytes(r.array()?);
            let released = r.take(1)?[0] != 0;
            inflight.push((pkid, released, r.delivery()?));
        }
        sessions.push(SessionImage {
            client,
            user,
            subs,
            expiry,
            queue,
            inflight,
            next_pkid,
        });
    }
    Ok((covered, sessions))
}

/// Reads a snapshot's fields in order, each checked against the bytes left.
pub(super) struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// A reader of the body of `bytes` once its trailing CRC32C and its leading `magic` check.
    pub(super) fn open(bytes: &'a [u8], magic: &[u8; 8]) -> Result<Self, Damaged> {
        let body_len = bytes.len().checked_sub(4).ok_or(Damaged("too short"))?;
        let (body, crc) = bytes.split_at(body_len);
        if crc32c::crc32c(body).to_le_bytes() != crc {
            return Err(Damaged("checksum mismatch"));
        }
        let mut r = Self(body);
        if r.take(8)? != magic {
            return Err(Damaged("not a snapshot of this kind and version"));
        }
        Ok(r)
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], Damaged> {
        if self.0.len() < n {
            return Err(Damaged("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], Damaged> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub(super) fn string(&mut self) -> Result<String, Damaged> {
        let n = usize::from(u16::from_le_bytes(self.array()?));
        let s = std::str::from_utf8(self.take(n)?).map_err(|_| Damaged("not UTF-8"))?;
        Ok(s.to_string())
    }

    fn delivery(&mut self) -> Result<Delivery, Damaged> {
        let topic: Arc<str> = Arc::from(self.string()?);
        let qos = self.take(1)?[0];
        let retain = self.take(1)?[0] != 0;
        let n = self.take(1)?[0];
        let mut sub_ids = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            sub_ids.push(u32::from_le_bytes(self.array()?));
        }
        let len = u32::from_le_bytes(self.array()?) as usize;
        let payload = Bytes::copy_from_slice(self.take(len)?);
        Ok(Delivery {
            topic,
            payload,
            qos,
            retain,
            props: None,
            sub_ids,
            expires: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(topic: &str, payload: &str, qos: u8) -> Delivery {
        Delivery {
            topic: Arc::from(topic),
            payload: Bytes::from(payload.to_string()),
            qos,
            retain: qos == 2,
            props: None,
            sub_ids: if qos == 1 { vec![7, 9] } else { Vec::new() },
            expires: None,
        }
    }

    #[test]
    fn sessions_round_trip_and_damage_is_caught() {
        let sessions = vec![
            SessionImage {
                client: "thermostat-7".into(),
                user: Some("dev".into()),
                subs: vec![
                    (
                        "cmd/thermostat-7/#".into(),
                        SubOpts {
                            qos: 1,
                            ..SubOpts::default()
                        },
                    ),
                    (
                        "$share/g/x/+".into(),
                        SubOpts {
                            qos: 2,
                            no_local: true,
                            retain_as_published: true,
                            id: Some(42),
                        },
                    ),
                ],
                expiry: u32::MAX,
                queue: vec![d("cmd/thermostat-7/sp", "{\"sp\":21}", 1), d("x/y", "", 2)],
                inflight: vec![(5, true, d("cmd/thermostat-7/a", "1", 2))],
                next_pkid: 5,
            },
            SessionImage {
                client: "idle".into(),
                user: None,
                subs: Vec::new(),
                expiry: 300,
                queue: Vec::new(),
                inflight: Vec::new(),
                next_pkid: 0,
            },
        ];
        let bytes = encode(1234, &sessions);
        let (covered, back) = decode(&bytes).expect("reads back");
        assert_eq!(covered, 1234);
        assert_eq!(back, sessions);
        let mut bad = bytes.clone();
        bad[20] ^= 1;
        assert!(decode(&bad).is_err());
        assert!(decode(&bytes[..bytes.len() - 3]).is_err());
    }
}
