//! MQTT 5 PUBLISH properties as bytes, so a WAL record keeps them: a replay (after a crash)
//! delivers and stores the message with the properties it was published with. Compact and
//! our own (the wire format's property encoding is not exposed by the codec crate):
//!
//! ```text
//! present u8 (bit 0 payload format, 1 message expiry, 2 content type, 3 response topic,
//!             4 correlation data, 5 user properties)
//! [u8] [u32 LE] [str] [str] [bytes] [count u16, (str, str)…]     str/bytes = u16 LE length + data
//! ```
//! Subscription identifiers and the topic alias are per connection and not kept.

use super::Props;

/// The bytes of `p`.
pub fn encode(p: &Props) -> Vec<u8> {
    let mut present = 0u8;
    let mut w = vec![0];
    if let Some(f) = p.payload_format_indicator {
        present |= 1;
        w.push(f);
    }
    if let Some(e) = p.message_expiry_interval {
        present |= 2;
        w.extend_from_slice(&e.to_le_bytes());
    }
    if let Some(s) = &p.content_type {
        present |= 4;
        put(&mut w, s.as_bytes());
    }
    if let Some(s) = &p.response_topic {
        present |= 8;
        put(&mut w, s.as_bytes());
    }
    if let Some(b) = &p.correlation_data {
        present |= 16;
        put(&mut w, b);
    }
    if !p.user_properties.is_empty() {
        present |= 32;
        let n = p.user_properties.len().min(usize::from(u16::MAX));
        w.extend_from_slice(&(n as u16).to_le_bytes());
        for (k, v) in p.user_properties.iter().take(n) {
            put(&mut w, k.as_bytes());
            put(&mut w, v.as_bytes());
        }
    }
    w[0] = present;
    w
}

fn put(w: &mut Vec<u8>, b: &[u8]) {
    let b = &b[..b.len().min(usize::from(u16::MAX))];
    w.extend_from_slice(&(b.len() as u16).to_le_bytes());
    w.extend_from_slice(b);
}

/// Reads what [`encode`] wrote; `None` when the bytes do not hold it.
pub fn decode(b: &[u8]) -> Option<Props> {
    let mut r = Reader(b);
    let present = r.take(1)?[0];
    let mut p = Props::default();
    if present & 1 != 0 {
        p.payload_format_indicator = Some(r.take(1)?[0]);
    }
    if present & 2 != 0 {
        p.message_expiry_interval = Some(u32::from_le_bytes(r.take(4)?.try_into().ok()?));
    }
    if present & 4 != 0 {
        p.content_type = Some(r.string()?);
    }
    if present & 8 != 0 {
        p.response_topic = Some(r.string()?);
    }
    if present & 16 != 0 {
        p.correlation_data = Some(bytes::Bytes::copy_from_slice(r.bytes()?));
    }
    if present & 32 != 0 {
        let n = u16::from_le_bytes(r.take(2)?.try_into().ok()?);
        for _ in 0..n {
            let k = r.string()?;
            let v = r.string()?;
            p.user_properties.push((k, v));
        }
    }
    Some(p)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = u16::from_le_bytes(self.take(2)?.try_into().ok()?);
        self.take(usize::from(n))
    }

    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_round_trip() {
        let p = Props {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(600),
            content_type: Some("application/json".into()),
            response_topic: Some("reply/to".into()),
            correlation_data: Some(bytes::Bytes::from_static(b"\x00\x01")),
            user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
            ..Props::default()
        };
        assert_eq!(decode(&encode(&p)), Some(p));
        assert_eq!(decode(&encode(&Props::default())), Some(Props::default()));
        assert_eq!(decode(&[4, 9]), None, "truncated");
    }
}
