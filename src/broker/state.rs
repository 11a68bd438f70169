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
//! Format (little-endian): `FLSES\0\0\x03` | covered seq u64 | count u32 | sessions | CRC32C.
//! session = client str | user (u8 flag, str) | next_pkid u16 | expiry u32 | away since u64 |
//! subs u16 × (filter str, qos u8, flags u8, id u32) | queue u32 × delivery | inflight u32 ×
//! (pkid u16, released u8, delivery); delivery = topic str | qos u8 | retain u8 | ids u8 × u32
//! | payload (u32, bytes) | MQTT 5 properties (u32, bytes of `decode::props`; 0: none) |
//! expires u64; str = u16 length + UTF-8. Times are Unix seconds (0: none), so the time a
//! gateway was down counts toward session and message expiry. Versions 1 (no expiry, no
//! times, no properties) and 2 (no times, no properties) are read too.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use super::outbox::Delivery;
use super::table::SubOpts;
use crate::decode::props;

const MAGIC: &[u8; 8] = b"FLSES\x00\x00\x03";
/// Version 2 kept no times and no properties.
const MAGIC_V2: &[u8; 8] = b"FLSES\x00\x00\x02";
/// Version 1 had no expiry either (its sessions never expire).
const MAGIC_V1: &[u8; 8] = b"FLSES\x00\x00\x01";

/// One moment on both clocks: the monotonic one that expiry runs on in memory, and the wall
/// clock a snapshot keeps times in (a monotonic instant means nothing after a reboot).
#[derive(Clone, Copy, Debug)]
pub struct Now {
    /// The monotonic clock.
    pub at: Instant,
    /// The wall clock, whole seconds since the Unix epoch.
    pub unix: u64,
}

impl Now {
    /// The present moment.
    pub fn get() -> Self {
        let unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            at: Instant::now(),
            unix,
        }
    }

    /// The wall-clock second of `t` (a future one rounded up, a past one down).
    pub fn unix_of(&self, t: Instant) -> u64 {
        if t >= self.at {
            let d = t - self.at;
            self.unix + d.as_secs() + u64::from(d.subsec_nanos() > 0)
        } else {
            self.unix.saturating_sub((self.at - t).as_secs())
        }
    }

    /// The instant of wall-clock second `unix`, or now when it is past.
    pub fn instant_of(&self, unix: u64) -> Instant {
        self.at + Duration::from_secs(unix.saturating_sub(self.unix))
    }

    /// Seconds since wall-clock second `unix` (0 for a future one).
    pub fn since(&self, unix: u64) -> u64 {
        self.unix.saturating_sub(unix)
    }
}

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
    /// Since when its client has been away (Unix seconds), if it was away.
    pub away_since: Option<u64>,
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

/// The snapshot bytes of `sessions`, covering the WAL up to `covered`, at `now`.
pub fn encode(covered: u64, sessions: &[SessionImage], now: &Now) -> Vec<u8> {
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
        w.extend_from_slice(&s.away_since.unwrap_or(0).to_le_bytes());
        w.extend_from_slice(&(s.subs.len() as u16).to_le_bytes());
        for (filter, o) in &s.subs {
            string(&mut w, filter);
            w.push(o.qos);
            w.push(u8::from(o.no_local) | (u8::from(o.retain_as_published) << 1));
            w.extend_from_slice(&o.id.unwrap_or(0).to_le_bytes());
        }
        w.extend_from_slice(&(s.queue.len() as u32).to_le_bytes());
        for d in &s.queue {
            delivery(&mut w, d, now);
        }
        w.extend_from_slice(&(s.inflight.len() as u32).to_le_bytes());
        for (pkid, released, d) in &s.inflight {
            w.extend_from_slice(&pkid.to_le_bytes());
            w.push(u8::from(*released));
            delivery(&mut w, d, now);
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

fn delivery(w: &mut Vec<u8>, d: &Delivery, now: &Now) {
    string(w, &d.topic);
    w.push(d.qos);
    w.push(u8::from(d.retain));
    w.push(d.sub_ids.len().min(255) as u8);
    for id in d.sub_ids.iter().take(255) {
        w.extend_from_slice(&id.to_le_bytes());
    }
    w.extend_from_slice(&(d.payload.len() as u32).to_le_bytes());
    w.extend_from_slice(&d.payload);
    props_and_expiry(w, d.props.as_deref(), d.expires, now);
}

/// Appends MQTT 5 properties (u32 length + bytes, 0: none) and an expiry (Unix seconds, 0:
/// none), as sessions and retained messages keep them.
pub(super) fn props_and_expiry(
    w: &mut Vec<u8>,
    p: Option<&crate::decode::Props>,
    expires: Option<Instant>,
    now: &Now,
) {
    match p {
        Some(p) => {
            let bytes = props::encode(p);
            w.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            w.extend_from_slice(&bytes);
        }
        None => w.extend_from_slice(&0u32.to_le_bytes()),
    }
    let unix = expires.map_or(0, |t| now.unix_of(t).max(1));
    w.extend_from_slice(&unix.to_le_bytes());
}

/// Reads a snapshot at `now`: the WAL sequence number it covers and the sessions.
pub fn decode(bytes: &[u8], now: &Now) -> Result<(u64, Vec<SessionImage>), Damaged> {
    let (mut r, version) = match Reader::open(bytes, MAGIC) {
        Ok(r) => (r, 3),
        Err(_) => match Reader::open(bytes, MAGIC_V2) {
            Ok(r) => (r, 2),
            Err(_) => (Reader::open(bytes, MAGIC_V1)?, 1),
        },
    };
    let v3 = version == 3;
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
        let expiry = if version == 1 {
            u32::MAX
        } else {
            u32::from_le_bytes(r.array()?)
        };
        let away_since = if v3 {
            Some(u64::from_le_bytes(r.array()?)).filter(|&t| t != 0)
        } else {
            None
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
            queue.push(r.delivery(v3, now)?);
        }
        let n = u32::from_le_bytes(r.array()?);
        let mut inflight = Vec::new();
        for _ in 0..n {
            let pkid = u16::from_le_bytes(r.array()?);
            let released = r.take(1)?[0] != 0;
            inflight.push((pkid, released, r.delivery(v3, now)?));
        }
        sessions.push(SessionImage {
            client,
            user,
            subs,
            expiry,
            away_since,
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

    /// Reads what [`props_and_expiry`] wrote: the properties and the instant of the expiry.
    pub(super) fn props_and_expiry(
        &mut self,
        now: &Now,
    ) -> Result<(Option<Arc<crate::decode::Props>>, Option<Instant>), Damaged> {
        let len = u32::from_le_bytes(self.array()?) as usize;
        let props = match len {
            0 => None,
            _ => Some(Arc::new(
                props::decode(self.take(len)?).ok_or(Damaged("bad MQTT 5 properties"))?,
            )),
        };
        let unix = u64::from_le_bytes(self.array()?);
        Ok((props, (unix != 0).then(|| now.instant_of(unix))))
    }

    fn delivery(&mut self, with_props: bool, now: &Now) -> Result<Delivery, Damaged> {
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
        let (props, expires) = if with_props {
            self.props_and_expiry(now)?
        } else {
            (None, None)
        };
        Ok(Delivery {
            topic,
            payload,
            qos,
            retain,
            props,
            sub_ids,
            expires,
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

    fn now() -> Now {
        Now {
            at: Instant::now(),
            unix: 1_800_000_000,
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
                away_since: Some(1_799_999_000),
                queue: vec![d("cmd/thermostat-7/sp", "{\"sp\":21}", 1), d("x/y", "", 2)],
                inflight: vec![(5, true, d("cmd/thermostat-7/a", "1", 2))],
                next_pkid: 5,
            },
            SessionImage {
                client: "idle".into(),
                user: None,
                subs: Vec::new(),
                expiry: 300,
                away_since: None,
                queue: Vec::new(),
                inflight: Vec::new(),
                next_pkid: 0,
            },
        ];
        let now = now();
        let bytes = encode(1234, &sessions, &now);
        let (covered, back) = decode(&bytes, &now).expect("reads back");
        assert_eq!(covered, 1234);
        assert_eq!(back, sessions);
        let mut bad = bytes.clone();
        bad[20] ^= 1;
        assert!(decode(&bad, &now).is_err());
        assert!(decode(&bytes[..bytes.len() - 3], &now).is_err());
    }

    #[test]
    fn properties_and_expiry_survive_and_downtime_counts() {
        let then = now();
        let mut queued = d("cmd/valve", "open", 1);
        queued.props = Some(Arc::new(crate::decode::Props {
            content_type: Some("text/plain".into()),
            response_topic: Some("reply/valve".into()),
            user_properties: vec![("k".into(), "v".into())],
            ..crate::decode::Props::default()
        }));
        queued.expires = Some(then.at + Duration::from_secs(30));
        let image = SessionImage {
            client: "valve".into(),
            user: None,
            subs: Vec::new(),
            expiry: 600,
            away_since: Some(then.unix - 5),
            queue: vec![queued.clone()],
            inflight: Vec::new(),
            next_pkid: 1,
        };
        let bytes = encode(7, &[image], &then);
        // Read back 20 s of wall clock later, by a process whose monotonic clock started anew.
        let later = Now {
            at: Instant::now(),
            unix: then.unix + 20,
        };
        let (_, back) = decode(&bytes, &later).expect("reads back");
        let got = &back[0].queue[0];
        assert_eq!(got.props, queued.props);
        let left = got.expires.expect("keeps its expiry") - later.at;
        assert_eq!(left, Duration::from_secs(10), "30 s less the 20 s down");
        assert_eq!(later.since(back[0].away_since.expect("away")), 25);
    }

    #[test]
    fn a_version_2_snapshot_still_reads() {
        let mut w = MAGIC_V2.to_vec();
        w.extend_from_slice(&9u64.to_le_bytes());
        w.extend_from_slice(&1u32.to_le_bytes());
        string(&mut w, "old");
        w.push(0);
        w.extend_from_slice(&3u16.to_le_bytes());
        w.extend_from_slice(&60u32.to_le_bytes());
        w.extend_from_slice(&0u16.to_le_bytes());
        w.extend_from_slice(&1u32.to_le_bytes());
        string(&mut w, "a/b");
        w.extend_from_slice(&[1, 0, 0]);
        w.extend_from_slice(&2u32.to_le_bytes());
        w.extend_from_slice(b"hi");
        w.extend_from_slice(&0u32.to_le_bytes());
        let crc = crc32c::crc32c(&w);
        w.extend_from_slice(&crc.to_le_bytes());
        let (covered, back) = decode(&w, &now()).expect("v2 reads");
        assert_eq!(covered, 9);
        assert_eq!((back[0].expiry, back[0].away_since), (60, None));
        assert_eq!(&back[0].queue[0].payload[..], b"hi");
    }
}
