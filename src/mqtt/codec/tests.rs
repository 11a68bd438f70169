use rumqttc::mqttbytes::QoS;

use super::*;

fn v4_bytes(p: v4::Packet) -> BytesMut {
    let mut b = BytesMut::new();
    p.write(&mut b, usize::MAX)
        .unwrap_or_else(|e| panic!("{e}"));
    b
}

fn v5_bytes(p: v5::Packet) -> BytesMut {
    let mut b = BytesMut::new();
    p.write(&mut b, None).unwrap_or_else(|e| panic!("{e}"));
    b
}

#[test]
fn a_v311_connect_then_publish_are_framed_even_when_split_across_reads() {
    let mut codec = Codec::new(1 << 20, u16::MAX);
    let mut all = v4_bytes(v4::Packet::Connect(v4::Connect::new("dev")));
    let mut publish = v4::Publish::new("a/b", QoS::AtLeastOnce, b"{}".to_vec());
    publish.pkid = 1;
    all.extend_from_slice(&v4_bytes(v4::Packet::Publish(publish)));
    let mut buf = BytesMut::new();
    let mut seen = Vec::new();
    for byte in all.iter() {
        buf.extend_from_slice(&[*byte]);
        while let Some(p) = codec.decode(&mut buf).unwrap_or_else(|e| panic!("{e}")) {
            seen.push(p);
        }
    }
    assert_eq!(codec.protocol(), Some(Protocol::V4));
    assert!(
        matches!(&seen[..], [Inbound::Connect(c), Inbound::Publish(p)] if c.client_id == "dev" && p.topic == "a/b")
    );
}

#[test]
fn a_v5_connect_selects_the_v5_codec() {
    let mut codec = Codec::new(1 << 20, u16::MAX);
    let connect = v5::Connect {
        keep_alive: 30,
        client_id: "dev5".into(),
        clean_start: true,
        properties: None,
    };
    let mut buf = v5_bytes(v5::Packet::Connect(connect, None, None));
    assert!(
        matches!(codec.decode(&mut buf), Ok(Some(Inbound::Connect(c))) if c.protocol == Protocol::V5)
    );
    // A bodiless MQTT 5 DISCONNECT (what mosquitto sends) is accepted.
    let mut buf = BytesMut::from(&[0xE0u8, 0][..]);
    assert!(matches!(
        codec.decode(&mut buf),
        Ok(Some(Inbound::Disconnect { with_will: false }))
    ));
}

#[test]
fn bytes_that_are_not_mqtt_are_refused_at_the_first_byte() {
    let mut codec = Codec::new(1 << 20, u16::MAX);
    let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
    assert!(matches!(
        codec.decode(&mut buf),
        Err(CodecError::NotConnect(b'G'))
    ));
}

#[test]
fn an_oversized_packet_is_refused_from_its_header_alone() {
    let mut codec = Codec::new(1 << 20, u16::MAX);
    let mut buf = v4_bytes(v4::Packet::Connect(v4::Connect::new("dev")));
    assert!(matches!(codec.decode(&mut buf), Ok(Some(_))));
    // PUBLISH header announcing 10 MiB; no body sent.
    let mut header = BytesMut::from(&[0x30u8, 0x80, 0x80, 0x80, 0x05][..]);
    assert!(matches!(codec.decode(&mut header), Err(CodecError::TooLarge(n)) if n == 10 << 20));
}

#[test]
fn mqtt_3_1_is_refused_as_unsupported() {
    let mut codec = Codec::new(1 << 20, u16::MAX);
    // CONNECT, MQIsdp level 3, flags 2, keep-alive 60, client id "a".
    let body = [
        0u8, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 2, 0, 60, 0, 1, b'a',
    ];
    let mut buf = BytesMut::from(&[0x10u8, body.len() as u8][..]);
    buf.extend_from_slice(&body);
    assert!(matches!(
        codec.decode(&mut buf),
        Err(CodecError::UnsupportedProtocol(3))
    ));
}

#[test]
fn replies_encode_in_the_connection_protocol() {
    let mut codec = Codec::new(1 << 20, u16::MAX);
    let mut buf = v4_bytes(v4::Packet::Connect(v4::Connect::new("dev")));
    let _ = codec.decode(&mut buf);
    let mut out = BytesMut::new();
    codec.encode(Outbound::PubAck(5), &mut out);
    assert_eq!(&out[..], &[0x40, 2, 0, 5]);
    out.clear();
    codec.encode(
        Outbound::ConnAck {
            session_present: false,
            code: ConnCode::Accepted,
            assigned_id: None,
        },
        &mut out,
    );
    assert_eq!(&out[..], &[0x20, 2, 0, 0]);
}
