//! Record framing. A segment file starts with [`MAGIC`]; then records follow back to back:
//!
//! ```text
//! len u32 LE | crc u32 LE | seq u64 LE | body (len bytes)
//! body = head u8 | received_at i64 LE | client_len u16 LE | client | topic_len u16 LE | topic
//!        | [pkid u16 LE, if head bit 6] | [props_len u32 LE | props, if head bit 3] | payload
//! head = source (bits 0–2) | has MQTT 5 properties (bit 3) | MQTT QoS (bits 4–5)
//!        | has packet id (bit 6) | MQTT RETAIN (bit 7)
//! ```
//!
//! Properties are [`crate::decode::props`]'s bytes. The QoS, RETAIN, packet id and properties
//! let a start rebuild what the broker needs from the WAL:
//! retained messages, and which QoS 1/2 messages of each client are already stored (so a
//! resend after a crash is not stored twice). Records written before they existed have them
//! zero.
//!
//! `crc` is CRC32C over `len`, `seq` and `body`, so a torn length, a torn body and a record
//! from an unrelated write are all caught. Integers are little-endian.

use std::io::{self, Read};
use std::sync::Arc;

use bytes::Bytes;

/// First bytes of every segment file (format version 1).
pub const MAGIC: &[u8; 8] = b"FLWAL\x00\x00\x01";
/// Bytes before the body.
pub const HEADER: usize = 16;
/// Largest body a reader accepts (an MQTT packet is at most 256 MiB).
const MAX_BODY: usize = (256 << 20) + 4096;
/// Body bytes before the topic: source, received_at, client length.
const FIXED: usize = 1 + 8 + 2;

use crate::decode::Source;

/// What a record's head says: its source, and for MQTT its QoS, RETAIN and packet id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head<'a> {
    /// Where it came from.
    pub source: Source,
    /// MQTT QoS (0 for gRPC).
    pub qos: u8,
    /// MQTT RETAIN.
    pub retain: bool,
    /// MQTT packet id (QoS 1/2 from a device).
    pub pkid: Option<u16>,
    /// MQTT 5 properties, encoded.
    pub props: Option<&'a [u8]>,
}

impl Head<'_> {
    /// A record of `source` without MQTT attributes.
    pub fn of(source: Source) -> Self {
        Self {
            source,
            qos: 0,
            retain: false,
            pkid: None,
            props: None,
        }
    }

    fn byte(self) -> u8 {
        let mut b = self.source as u8 | ((self.qos & 3) << 4);
        if self.pkid.is_some() {
            b |= 0x40;
        }
        if self.props.is_some() {
            b |= 0x08;
        }
        if self.retain {
            b |= 0x80;
        }
        b
    }
}

/// One record read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Sequence number.
    pub seq: u64,
    /// Where it came from (its first body byte): says how to decode the payload.
    pub source: Source,
    /// The MQTT QoS it was published with (0 for gRPC).
    pub qos: u8,
    /// It was published with RETAIN.
    pub retain: bool,
    /// Its MQTT packet id, if it had one.
    pub pkid: Option<u16>,
    /// Its MQTT 5 properties, encoded (see `decode::props`).
    pub props: Option<Bytes>,
    /// Receive time, µs since the epoch.
    pub received_at: i64,
    /// MQTT client id of the sender.
    pub client: Arc<str>,
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
}

/// Appends one framed record to `out`. Client ids and topics longer than 65535 bytes cannot
/// occur (MQTT caps both at 65535).
pub fn encode(
    out: &mut Vec<u8>,
    seq: u64,
    head: Head<'_>,
    received_at: i64,
    client: &str,
    topic: &str,
    payload: &[u8],
) {
    let client = &client.as_bytes()[..client.len().min(u16::MAX as usize)];
    let topic = &topic.as_bytes()[..topic.len().min(u16::MAX as usize)];
    let pkid_len = if head.pkid.is_some() { 2 } else { 0 };
    let props_len = head.props.map_or(0, |p| 4 + p.len());
    let body_len = FIXED + client.len() + 2 + topic.len() + pkid_len + props_len + payload.len();
    let start = out.len();
    out.reserve(HEADER + body_len);
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.push(head.byte());
    out.extend_from_slice(&received_at.to_le_bytes());
    out.extend_from_slice(&(client.len() as u16).to_le_bytes());
    out.extend_from_slice(client);
    out.extend_from_slice(&(topic.len() as u16).to_le_bytes());
    out.extend_from_slice(topic);
    if let Some(pkid) = head.pkid {
        out.extend_from_slice(&pkid.to_le_bytes());
    }
    if let Some(props) = head.props {
        out.extend_from_slice(&(props.len() as u32).to_le_bytes());
        out.extend_from_slice(props);
    }
    out.extend_from_slice(payload);
    let crc = crc_of(&out[start..start + 4], &out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Bytes `entry` takes in a segment, framing included.
pub fn framed_len(entry: &Entry) -> usize {
    let pkid_len = if entry.pkid.is_some() { 2 } else { 0 };
    let props_len = entry.props.as_ref().map_or(0, |p| 4 + p.len());
    HEADER
        + FIXED
        + entry.client.len()
        + 2
        + entry.topic.len()
        + pkid_len
        + props_len
        + entry.payload.len()
}

fn crc_of(len: &[u8], seq_and_body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(len), seq_and_body)
}

/// Why reading a segment stopped before its end.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Damage {
    /// The file ends inside a record (a write cut short by a crash).
    #[error("torn record at byte {offset}")]
    Torn {
        /// Offset of the record.
        offset: u64,
    },
    /// A record fails its checksum or cannot be parsed.
    #[error("corrupt record at byte {offset}: {what}")]
    Corrupt {
        /// Offset of the record.
        offset: u64,
        /// What is wrong.
        what: &'static str,
    },
    /// The file does not start with the segment magic.
    #[error("not a fleetlake WAL segment (bad header)")]
    BadMagic,
}

/// What a read step found.
#[derive(Debug)]
pub enum Next {
    /// A valid record.
    Record(Entry),
    /// Clean end of the segment.
    End,
    /// The segment cannot be read past this point.
    Damaged(Damage),
}

/// Reads records from one segment.
#[derive(Debug)]
pub struct SegmentReader<R> {
    inner: R,
    offset: u64,
    started: bool,
    last_client: Option<Arc<str>>,
}

impl<R: Read> SegmentReader<R> {
    /// A reader at the start of a segment.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            offset: 0,
            started: false,
            last_client: None,
        }
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next record. IO errors other than a short read are returned as errors.
    pub fn next_record(&mut self) -> io::Result<Next> {
        if !self.started {
            self.started = true;
            let mut magic = [0u8; 8];
            let n = read_full(&mut self.inner, &mut magic)?;
            if n == 0 {
                return Ok(Next::End);
            }
            if n < magic.len() {
                // A crash right after the file was created.
                return Ok(Next::Damaged(Damage::Torn { offset: 0 }));
            }
            if &magic != MAGIC {
                return Ok(Next::Damaged(Damage::BadMagic));
            }
            self.offset = magic.len() as u64;
        }
        let offset = self.offset;
        let mut header = [0u8; HEADER];
        let n = read_full(&mut self.inner, &mut header)?;
        if n == 0 {
            return Ok(Next::End);
        }
        if n < HEADER {
            return Ok(Next::Damaged(Damage::Torn { offset }));
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if !(FIXED + 2..=MAX_BODY).contains(&len) {
            return Ok(Next::Damaged(Damage::Corrupt {
                offset,
                what: "impossible length",
            }));
        }
        let mut body = vec![0u8; len];
        if read_full(&mut self.inner, &mut body)? < len {
            return Ok(Next::Damaged(Damage::Torn { offset }));
        }
        let want = crc32c::crc32c_append(crc_of(&header[..4], &header[8..]), &body);
        if want != crc {
            return Ok(Next::Damaged(Damage::Corrupt {
                offset,
                what: "checksum mismatch",
            }));
        }
        let seq = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
        self.offset += (HEADER + len) as u64;
        match self.parse(seq, body) {
            Some(entry) => Ok(Next::Record(entry)),
            None => Ok(Next::Damaged(Damage::Corrupt {
                offset,
                what: "malformed body",
            })),
        }
    }

    fn parse(&mut self, seq: u64, body: Vec<u8>) -> Option<Entry> {
        let head = body[0];
        let source = match head & 0x07 {
            1 => Source::Mqtt,
            2 => Source::Grpc,
            3 => Source::Bridge,
            _ => return None,
        };
        let received_at = i64::from_le_bytes(body[1..9].try_into().ok()?);
        let client_len = u16::from_le_bytes(body[9..11].try_into().ok()?) as usize;
        let client = std::str::from_utf8(body.get(FIXED..FIXED + client_len)?).ok()?;
        let client = match &self.last_client {
            Some(last) if **last == *client => last.clone(),
            _ => {
                let c: Arc<str> = Arc::from(client);
                self.last_client = Some(c.clone());
                c
            }
        };
        let at = FIXED + client_len;
        let topic_len = u16::from_le_bytes(body.get(at..at + 2)?.try_into().ok()?) as usize;
        let topic = std::str::from_utf8(body.get(at + 2..at + 2 + topic_len)?)
            .ok()?
            .to_string();
        let mut payload_at = at + 2 + topic_len;
        let pkid = if head & 0x40 != 0 {
            let id = u16::from_le_bytes(body.get(payload_at..payload_at + 2)?.try_into().ok()?);
            payload_at += 2;
            Some(id)
        } else {
            None
        };
        let props_at = payload_at;
        let props_len = if head & 0x08 != 0 {
            let n = u32::from_le_bytes(body.get(payload_at..payload_at + 4)?.try_into().ok()?);
            let n = n as usize;
            body.get(payload_at + 4..payload_at + 4 + n)?;
            payload_at += 4 + n;
            Some(n)
        } else {
            None
        };
        let body = Bytes::from(body);
        let props = props_len.map(|n| body.slice(props_at + 4..props_at + 4 + n));
        let payload = body.slice(payload_at..);
        Some(Entry {
            seq,
            source,
            qos: (head >> 4) & 3,
            retain: head & 0x80 != 0,
            pkid,
            props,
            received_at,
            client,
            topic,
            payload,
        })
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(records: &[(u64, &str, &[u8])]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        for (seq, topic, payload) in records {
            encode(
                &mut out,
                *seq,
                Head {
                    source: Source::Mqtt,
                    qos: 1,
                    retain: *seq == 8,
                    pkid: (*seq == 8).then_some(300),
                    props: (*seq == 8).then_some(&b"\x04\x02\x00hi"[..]),
                },
                1_700_000_000_000_000,
                "dev-1",
                topic,
                payload,
            );
        }
        out
    }

    fn read_all(bytes: &[u8]) -> (Vec<Entry>, Next) {
        let mut reader = SegmentReader::new(bytes);
        let mut out = Vec::new();
        loop {
            match reader.next_record() {
                Ok(Next::Record(e)) => out.push(e),
                Ok(other) => return (out, other),
                Err(e) => panic!("io error reading a slice: {e}"),
            }
        }
    }

    #[test]
    fn records_round_trip() {
        let bytes = segment(&[(7, "a/b", b"{\"x\":1}"), (8, "", b"")]);
        let (entries, end) = read_all(&bytes);
        assert!(matches!(end, Next::End));
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].seq, 7);
        assert_eq!(&*entries[0].client, "dev-1");
        assert_eq!(entries[0].topic, "a/b");
        assert_eq!(&entries[0].payload[..], b"{\"x\":1}");
        assert_eq!(entries[0].received_at, 1_700_000_000_000_000);
        assert_eq!(entries[1].seq, 8);
        assert_eq!((entries[0].qos, entries[0].retain), (1, false));
        assert_eq!(
            (entries[1].qos, entries[1].retain),
            (1, true),
            "head flags round-trip"
        );
        assert_eq!(entries[1].source, Source::Mqtt);
        assert_eq!((entries[0].pkid, entries[1].pkid), (None, Some(300)));
        assert_eq!(entries[1].props.as_deref(), Some(&b"\x04\x02\x00hi"[..]));
        assert_eq!(
            &entries[1].payload[..],
            b"",
            "the payload starts after the properties"
        );
        let total: usize = entries.iter().map(framed_len).sum();
        assert_eq!(total + MAGIC.len(), bytes.len());
        assert!(entries[1].payload.is_empty());
    }

    #[test]
    fn every_cut_of_the_last_record_is_a_torn_tail() {
        let bytes = segment(&[(1, "t", b"first"), (2, "t", b"second record")]);
        let first_end = {
            let mut r = SegmentReader::new(&bytes[..]);
            assert!(matches!(r.next_record(), Ok(Next::Record(_))));
            r.offset() as usize
        };
        for cut in first_end + 1..bytes.len() {
            let (entries, end) = read_all(&bytes[..cut]);
            assert_eq!(entries.len(), 1, "cut at {cut}");
            assert!(
                matches!(end, Next::Damaged(Damage::Torn { .. })),
                "cut at {cut}: {end:?}"
            );
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_in_a_record_is_caught() {
        let bytes = segment(&[(1, "t", b"payload")]);
        for i in MAGIC.len()..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            let (entries, end) = read_all(&bad);
            assert!(entries.is_empty(), "flip at {i} went unnoticed");
            assert!(matches!(end, Next::Damaged(_)), "flip at {i}: {end:?}");
        }
    }

    #[test]
    fn a_foreign_file_is_refused() {
        let (entries, end) = read_all(b"PAR1 not a wal at all");
        assert!(entries.is_empty());
        assert!(matches!(end, Next::Damaged(Damage::BadMagic)));
    }
}
