//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz) and for `tests/fuzz_corpus.rs`,
//! which replays every input the fuzzers kept (`fuzz/corpus/`, `fuzz/regressions/`) in plain
//! `cargo test`. Each takes arbitrary bytes and must neither panic nor hang; what they return
//! does not matter.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::columnar::TableBuilder;
use crate::config::{Config, RawConfig};
use crate::decode::topic::{Router, TableRule};
use crate::decode::{Message, decode_publish};
use crate::mqtt::codec::{Codec, Inbound};
use crate::mqtt::session::{Session, SessionEnv};
use crate::wal::record::{MAGIC, Next, SegmentReader};

struct Env;

impl SessionEnv for Env {
    fn assign_id(&self) -> String {
        "fuzz-assigned".into()
    }
    fn resume(&self, _client_id: &str) -> Option<crate::mqtt::session::Parked> {
        None
    }
}

/// A device's byte stream into the MQTT codec and session: fed in chunks whose sizes come
/// from the input's first byte, every reply encoded as the server would.
pub fn mqtt_session(data: &[u8]) {
    let Some((&chunk, data)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut codec = Codec::new(64 * 1024, 16, true);
    let mut session = Session::with(Some(Arc::from("fuzz-cn")), 16);
    let mut buf = BytesMut::new();
    let mut out = BytesMut::new();
    let mut steps = Vec::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(packet)) => {
                    let connect = matches!(packet, Inbound::Connect(_));
                    session.handle(packet, &Env, &mut steps);
                    for step in steps.drain(..) {
                        if let crate::mqtt::session::Step::Reply(reply) = step {
                            codec.encode(reply, &mut out);
                        }
                    }
                    if connect && !session.is_connected() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

fn router() -> Router {
    let rule = |table: &str, filter: &str| {
        TableRule::compile(table, filter, &["ts".to_string(), "time".to_string()])
    };
    match (
        rule("telemetry", "sensors/{device_id}/{table}"),
        rule("other", "plant/{site}/#"),
        rule("telemetry", "#"),
    ) {
        (Ok(a), Ok(b), Ok(c)) => Router::new(vec![a, b, c]),
        _ => Router::new(Vec::new()),
    }
}

/// A topic and payload (split at the first NUL, else a fixed topic) through routing, JSON
/// decoding and the Arrow builder (schema evolution and type conflicts), to a finished batch.
pub fn json_rows(data: &[u8]) {
    let (topic, payload) = match data.iter().position(|&b| b == 0) {
        Some(i) => (
            String::from_utf8_lossy(&data[..i]).into_owned(),
            &data[i + 1..],
        ),
        None => ("sensors/dev-1/telemetry".to_string(), data),
    };
    let client: Arc<str> = Arc::from("fuzz");
    let router = router();
    let mut builders: Vec<(Arc<str>, TableBuilder)> = Vec::new();
    // The payload twice, then split in two: a second message meets the first one's columns.
    let half = payload.len() / 2;
    let parts = [payload, payload, &payload[..half], &payload[half..]];
    for (seq, part) in parts.into_iter().enumerate() {
        let msg: Message = decode_publish(
            &router,
            topic.clone(),
            Bytes::copy_from_slice(part),
            &client,
            1_767_225_600_000_000,
        );
        let i = match builders.iter().position(|(t, _)| *t == msg.table) {
            Some(i) => i,
            None => {
                builders.push((msg.table.clone(), TableBuilder::new(msg.table.clone())));
                builders.len() - 1
            }
        };
        let _ = builders[i].1.append(&msg, seq as u64);
    }
    for (_, mut b) in builders {
        let _ = b.finish();
    }
}

/// WAL segment bytes through the record reader, and each record through the replay's decoders.
/// With an even first byte the rest is one record body behind a valid header (checksum
/// included), so the body parser is reached; otherwise the bytes follow the magic as they are.
pub fn wal_segment(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut segment = MAGIC.to_vec();
    if mode % 2 == 0 {
        let len = u32::try_from(rest.len()).unwrap_or(u32::MAX);
        let seq = 7u64.to_le_bytes();
        let crc = crc32c::crc32c_append(
            crc32c::crc32c_append(crc32c::crc32c(&len.to_le_bytes()), &seq),
            rest,
        );
        segment.extend_from_slice(&len.to_le_bytes());
        segment.extend_from_slice(&crc.to_le_bytes());
        segment.extend_from_slice(&seq);
    }
    segment.extend_from_slice(rest);
    let router = router();
    let mut reader = SegmentReader::new(segment.as_slice());
    for _ in 0..64 {
        match reader.next_record() {
            Ok(Next::Record(entry)) => {
                let _ = crate::decode::decode_record(
                    &router,
                    entry.source,
                    entry.topic,
                    entry.payload,
                    &entry.client,
                    entry.received_at,
                );
            }
            _ => return,
        }
    }
}

/// Config text through parsing and validation.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(raw) = RawConfig::parse(text, "fuzz") {
        let _ = Config::validate(raw);
    }
}

/// The security file parsers: password file, ACL (and a check against it), tokens file, and
/// a certificate's subject CN.
pub fn security_files(data: &[u8]) {
    let _ = crate::auth::cert::subject_cn(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = crate::auth::PasswordFile::parse(text);
    let _ = crate::auth::Tokens::parse(text);
    if let Ok(acl) = crate::auth::Acl::parse(text) {
        let client = crate::auth::acl::Client {
            client_id: "dev-1",
            username: Some("user"),
        };
        for topic in ["sensors/dev-1/t", "$SYS/x", "a/b/c", "users/user/data"] {
            let _ = acl.may_write(client, topic);
        }
    }
}
