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
    let mut codec = Codec::new(1 << 20, u16::MAX, true);
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
    let mut codec = Codec::new(1 << 20, u16::MAX, true);
    let mut buf = v5_connect();
    assert!(
        matches!(codec.decode(&mut buf), Ok(Some(Inbound::Connect(c))) if c.protocol == Protocol::V5)
    );
    // A bodiless MQTT 5 DISCONNECT (what mosquitto sends) is accepted.
    let mut buf = BytesMut::from(&[0xE0u8, 0][..]);
    assert!(matches!(
        codec.decode(&mut buf),
        Ok(Some(Inbound::Disconnect {
            with_will: false,
            ..
        }))
    ));
}

#[test]
fn bytes_that_are_not_mqtt_are_refused_at_the_first_byte() {
    let mut codec = Codec::new(1 << 20, u16::MAX, true);
    let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
    assert!(matches!(
        codec.decode(&mut buf),
        Err(CodecError::NotConnect(b'G'))
    ));
}

#[test]
fn an_oversized_packet_is_refused_from_its_header_alone() {
    let mut codec = Codec::new(1 << 20, u16::MAX, true);
    let mut buf = v4_bytes(v4::Packet::Connect(v4::Connect::new("dev")));
    assert!(matches!(codec.decode(&mut buf), Ok(Some(_))));
    // PUBLISH header announcing 10 MiB; no body sent.
    let mut header = BytesMut::from(&[0x30u8, 0x80, 0x80, 0x80, 0x05][..]);
    assert!(matches!(codec.decode(&mut header), Err(CodecError::TooLarge(n)) if n == 10 << 20));
}

#[test]
fn mqtt_3_1_is_refused_as_unsupported() {
    let mut codec = Codec::new(1 << 20, u16::MAX, true);
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
    let mut codec = Codec::new(1 << 20, u16::MAX, true);
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
            server_keep_alive: None,
        },
        &mut out,
    );
    assert_eq!(&out[..], &[0x20, 2, 0, 0]);
}

fn v5_connect() -> BytesMut {
    let connect = v5::Connect {
        keep_alive: 30,
        client_id: "dev5".into(),
        clean_start: true,
        properties: None,
    };
    v5_bytes(v5::Packet::Connect(connect, None, None))
}

fn v5_codec() -> Codec {
    let mut codec = Codec::new(1 << 20, u16::MAX, true);
    let _ = codec.decode(&mut v5_connect());
    codec
}

#[test]
fn a_v5_subscribe_keeps_its_options_and_identifier() {
    let mut codec = v5_codec();
    let mut filter = v5::Filter::new("a/+", rumqttc::v5::mqttbytes::QoS::ExactlyOnce);
    filter.nolocal = true;
    filter.preserve_retain = true;
    filter.retain_forward_rule = v5::RetainForwardRule::Never;
    let sub = v5::Subscribe {
        pkid: 7,
        filters: vec![filter],
        properties: Some(v5::SubscribeProperties {
            id: Some(42),
            user_properties: Vec::new(),
        }),
    };
    let mut buf = v5_bytes(v5::Packet::Subscribe(sub));
    let Ok(Some(Inbound::Subscribe(Subscribe { pkid, filters, id }))) = codec.decode(&mut buf)
    else {
        panic!("not a SUBSCRIBE");
    };
    assert_eq!((pkid, id), (7, Some(42)));
    assert_eq!(
        filters,
        [SubFilter {
            filter: "a/+".into(),
            qos: 2,
            no_local: true,
            retain_as_published: true,
            retain_handling: 2,
        }]
    );
}

fn publish_out(props: Option<Props>) -> Outbound {
    Outbound::Publish(Box::new(publish_box(props)))
}

fn publish_box(props: Option<Props>) -> PublishOut {
    PublishOut {
        topic: std::sync::Arc::from("cmd/dev-1"),
        payload: Bytes::from_static(b"on"),
        qos: 1,
        pkid: 9,
        retain: true,
        dup: true,
        props: props.map(std::sync::Arc::new),
        sub_ids: vec![42],
        alias: None,
    }
}

#[test]
fn a_delivery_encodes_as_a_publish_a_client_reads_back() {
    let mut v4codec = Codec::new(1 << 20, u16::MAX, true);
    let mut buf = v4_bytes(v4::Packet::Connect(v4::Connect::new("dev")));
    let _ = v4codec.decode(&mut buf);
    let mut out = BytesMut::new();
    v4codec.encode(publish_out(None), &mut out);
    let Ok(v4::Packet::Publish(p)) = v4::Packet::read(&mut out, 1 << 20) else {
        panic!("not a PUBLISH");
    };
    assert_eq!(
        (p.topic.as_str(), &p.payload[..], p.pkid, p.dup, p.retain),
        ("cmd/dev-1", &b"on"[..], 9, true, true)
    );
    let codec = v5_codec();
    let props = Props {
        content_type: Some("text/plain".into()),
        user_properties: vec![("k".into(), "v".into())],
        ..Props::default()
    };
    let mut out = BytesMut::new();
    codec.encode(publish_out(Some(props)), &mut out);
    let Ok(v5::Packet::Publish(p)) = v5::Packet::read(&mut out, None) else {
        panic!("not a v5 PUBLISH");
    };
    let pr = p.properties.unwrap_or_default();
    assert_eq!(pr.content_type.as_deref(), Some("text/plain"));
    assert_eq!(pr.user_properties, [("k".to_string(), "v".to_string())]);
    assert_eq!(pr.subscription_identifiers, [42]);
}

#[test]
fn an_aliased_delivery_carries_the_topic_alias_and_its_counted_size_is_exact() {
    let codec = v5_codec();
    let props = Props {
        correlation_data: Some(Bytes::from_static(b"req-1")),
        message_expiry_interval: Some(30),
        ..Props::default()
    };
    for (topic, alias) in [("cmd/dev-1", None), ("cmd/dev-1", Some(3)), ("", Some(3))] {
        let mut p = publish_box(Some(props.clone()));
        p.topic = std::sync::Arc::from(topic);
        p.alias = alias;
        let expected = p.packet_len();
        let mut out = BytesMut::new();
        codec.encode(Outbound::Publish(Box::new(p)), &mut out);
        assert_eq!(out.len(), expected, "{topic:?} {alias:?}");
        let Ok(v5::Packet::Publish(p)) = v5::Packet::read(&mut out, None) else {
            panic!("not a v5 PUBLISH");
        };
        assert_eq!(p.topic, topic.as_bytes());
        assert_eq!(p.properties.unwrap_or_default().topic_alias, alias);
    }
}

#[test]
fn suback_codes_are_failure_on_3_1_1_and_specific_on_5() {
    let mut v4codec = Codec::new(1 << 20, u16::MAX, true);
    let mut buf = v4_bytes(v4::Packet::Connect(v4::Connect::new("dev")));
    let _ = v4codec.decode(&mut buf);
    let codes = vec![
        SubCode::Granted(1),
        SubCode::InvalidFilter,
        SubCode::NotAuthorized,
    ];
    let mut out = BytesMut::new();
    v4codec.encode(
        Outbound::SubAck {
            pkid: 3,
            codes: codes.clone(),
        },
        &mut out,
    );
    assert_eq!(&out[..], &[0x90, 5, 0, 3, 1, 0x80, 0x80]);
    let codec = v5_codec();
    let mut out = BytesMut::new();
    codec.encode(Outbound::SubAck { pkid: 3, codes }, &mut out);
    assert_eq!(&out[..], &[0x90, 6, 0, 3, 0, 1, 0x8F, 0x87]);
}

#[test]
fn a_zero_packet_id_where_one_is_required_is_malformed() {
    let connected = || {
        let mut codec = Codec::new(1 << 20, u16::MAX, true);
        let mut buf = v4_bytes(v4::Packet::Connect(v4::Connect::new("dev")));
        let _ = codec.decode(&mut buf);
        codec
    };
    // SUBSCRIBE, packet id 0, filter "a/#" at QoS 1.
    let mut buf = BytesMut::from(&[0x82u8, 8, 0, 0, 0, 3, b'a', b'/', b'#', 1][..]);
    assert!(
        matches!(connected().decode(&mut buf), Err(CodecError::Malformed(m)) if m.contains("identifier 0"))
    );
    // PUBLISH QoS 1 to "a", packet id 0.
    let mut buf = BytesMut::from(&[0x32u8, 7, 0, 1, b'a', 0, 0, b'{', b'}'][..]);
    assert!(matches!(
        connected().decode(&mut buf),
        Err(CodecError::Malformed(_))
    ));
    // QoS 0 has no packet id.
    let mut buf = BytesMut::from(&[0x30u8, 5, 0, 1, b'a', b'{', b'}'][..]);
    assert!(matches!(
        connected().decode(&mut buf),
        Ok(Some(Inbound::Publish(_)))
    ));
}

#[test]
fn a_v5_disconnect_carries_a_new_session_expiry() {
    let mut codec = v5_codec();
    let d = v5::Disconnect {
        reason_code: v5::DisconnectReasonCode::NormalDisconnection,
        properties: Some(v5::DisconnectProperties {
            session_expiry_interval: Some(5),
            reason_string: None,
            user_properties: Vec::new(),
            server_reference: None,
        }),
    };
    let mut buf = v5_bytes(v5::Packet::Disconnect(d));
    assert!(matches!(
        codec.decode(&mut buf),
        Ok(Some(Inbound::Disconnect {
            session_expiry: Some(5),
            ..
        }))
    ));
}
