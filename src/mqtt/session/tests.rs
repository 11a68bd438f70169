use std::sync::Arc;

use bytes::Bytes;

use super::*;

fn connect(protocol: Protocol, client_id: &str, clean: bool, will: bool) -> Inbound {
    Inbound::Connect(ConnectInfo {
        protocol,
        client_id: client_id.into(),
        clean,
        keep_alive: 10,
        will: will.then(|| Will {
            topic: "status/x".into(),
            payload: Bytes::from_static(b"{\"up\":false}"),
            qos: 1,
            retain: false,
            delay: 0,
            props: None,
        }),
        username: None,
        password: None,
        session_expiry: if clean { 0 } else { u32::MAX },
        receive_max: u16::MAX,
        max_packet: 0,
        topic_alias_max: 0,
    })
}

fn publish(qos: u8, pkid: u16, topic: &str) -> Inbound {
    Inbound::Publish(PublishIn {
        qos,
        pkid,
        dup: false,
        retain: false,
        topic: topic.into(),
        payload: Bytes::from_static(b"{}"),
        alias: None,
        props: None,
    })
}

fn aliased(alias: u16, topic: &str) -> Inbound {
    let Inbound::Publish(mut p) = publish(1, 9, topic) else {
        unreachable!()
    };
    p.alias = Some(alias);
    Inbound::Publish(p)
}

/// An in-memory environment: one stored-session map, a fixed assigned id.
#[derive(Default)]
struct Env(std::cell::RefCell<std::collections::HashMap<String, Parked>>);

impl SessionEnv for Env {
    fn assign_id(&self) -> String {
        "assigned-1".into()
    }
    fn resume(&self, client_id: &str) -> Option<Parked> {
        self.0.borrow_mut().remove(client_id)
    }
}

fn step_in(env: &Env, s: &mut Session, p: Inbound) -> Vec<Step> {
    let mut out = Vec::new();
    s.handle(p, env, &mut out);
    out
}

fn step(s: &mut Session, p: Inbound) -> Vec<Step> {
    step_in(&Env::default(), s, p)
}

fn connected(protocol: Protocol) -> Session {
    let mut s = Session::new();
    step(&mut s, connect(protocol, "dev-1", true, true));
    s
}

fn kinds(steps: &[Step]) -> Vec<String> {
    steps
        .iter()
        .map(|s| match s {
            Step::Reply(o) => format!("{o:?}"),
            Step::Deliver(p) => format!("Deliver({})", p.pkid),
            Step::Close(r) => format!("Close({r})"),
            Step::Subscribe(Subscribe { pkid, filters, .. }) => {
                format!("Subscribe({pkid}, {})", filters.len())
            }
            Step::Unsubscribe(Unsubscribe { pkid, filters }) => {
                format!("Unsubscribe({pkid}, {filters:?})")
            }
            Step::Settle(s) => format!("{s:?}"),
        })
        .collect()
}

#[test]
fn connect_is_answered_with_an_accepting_connack() {
    let mut s = Session::new();
    let out = step(&mut s, connect(Protocol::V4, "dev-1", true, false));
    assert_eq!(
        kinds(&out),
        [
            "ConnAck { code: Accepted, session_present: false, assigned_id: None, server_keep_alive: None }"
        ]
    );
    assert!(s.is_connected());
    assert_eq!(s.client_id(), "dev-1");
    assert_eq!(s.idle_timeout(), Some(Duration::from_secs(15)));
}

#[test]
fn a_packet_before_connect_closes_the_connection() {
    let mut s = Session::new();
    let out = step(&mut s, publish(0, 0, "a"));
    assert_eq!(kinds(&out), ["Close(first packet is not CONNECT)"]);
    assert!(!s.is_connected());
}

#[test]
fn an_empty_client_id_gets_an_assigned_one_and_v5_is_told_it() {
    let mut s = Session::new();
    let out = step(&mut s, connect(Protocol::V5, "", true, false));
    assert_eq!(s.client_id(), "assigned-1");
    assert_eq!(
        kinds(&out),
        [
            r#"ConnAck { code: Accepted, session_present: false, assigned_id: Some("assigned-1"), server_keep_alive: None }"#
        ]
    );
}

#[test]
fn an_empty_client_id_without_clean_session_is_refused_on_v311() {
    let mut s = Session::new();
    let out = step(&mut s, connect(Protocol::V4, "", false, false));
    assert_eq!(
        kinds(&out)[0],
        "ConnAck { code: BadClientId, session_present: false, assigned_id: None, server_keep_alive: None }"
    );
    assert!(matches!(out[1], Step::Close(_)));
}

#[test]
fn qos1_is_delivered_before_its_puback() {
    let mut s = connected(Protocol::V4);
    assert_eq!(
        kinds(&step(&mut s, publish(1, 7, "a/b"))),
        ["Deliver(7)", "PubAck(7)"]
    );
    assert_eq!(kinds(&step(&mut s, publish(0, 0, "a/b"))), ["Deliver(0)"]);
}

#[test]
fn a_retransmitted_qos2_publish_is_acked_again_but_not_delivered_twice() {
    let mut s = connected(Protocol::V5);
    assert_eq!(
        kinds(&step(&mut s, publish(2, 9, "a"))),
        ["Deliver(9)", "PubRec(9)"]
    );
    assert_eq!(kinds(&step(&mut s, publish(2, 9, "a"))), ["PubRec(9)"]);
    assert_eq!(kinds(&step(&mut s, Inbound::PubRel(9))), ["PubComp(9)"]);
    // After PUBREL the packet id is free: a new message with it is new data.
    assert_eq!(
        kinds(&step(&mut s, publish(2, 9, "a"))),
        ["Deliver(9)", "PubRec(9)"]
    );
}

#[test]
fn a_wildcard_topic_in_publish_is_a_protocol_error() {
    let mut s = connected(Protocol::V4);
    assert!(matches!(
        step(&mut s, publish(1, 1, "a/+"))[..],
        [Step::Close(_)]
    ));
}

#[test]
fn a_normal_disconnect_discards_the_will() {
    let mut s = connected(Protocol::V4);
    step(
        &mut s,
        Inbound::Disconnect {
            with_will: false,
            session_expiry: None,
        },
    );
    assert!(s.take_will().is_none());
}

#[test]
fn an_abnormal_end_keeps_the_will_for_publishing_once() {
    let mut s = connected(Protocol::V4);
    assert!(s.take_will().is_some());
    assert!(s.take_will().is_none());
}

#[test]
fn v5_disconnect_with_will_keeps_the_will() {
    let mut s = connected(Protocol::V5);
    step(
        &mut s,
        Inbound::Disconnect {
            with_will: true,
            session_expiry: None,
        },
    );
    assert!(s.take_will().is_some());
}

#[test]
fn subscriptions_and_acks_of_deliveries_go_to_the_broker_and_ping_is_answered() {
    let mut s = connected(Protocol::V4);
    let filter = |f: &str| crate::mqtt::codec::SubFilter {
        filter: f.into(),
        qos: 1,
        no_local: false,
        retain_as_published: false,
        retain_handling: 0,
    };
    let sub = Inbound::Subscribe(Subscribe {
        pkid: 3,
        filters: vec![filter("a/#"), filter("b")],
        id: None,
    });
    assert_eq!(kinds(&step(&mut s, sub)), ["Subscribe(3, 2)"]);
    let unsub = Inbound::Unsubscribe(Unsubscribe {
        pkid: 4,
        filters: vec!["a/#".into()],
    });
    assert_eq!(kinds(&step(&mut s, unsub)), ["Unsubscribe(4, [\"a/#\"])"]);
    assert_eq!(kinds(&step(&mut s, Inbound::PubAck(5))), ["PubAck(5)"]);
    assert_eq!(
        kinds(&step(&mut s, Inbound::PubRec(6, true))),
        ["PubRec(6, true)"]
    );
    assert_eq!(kinds(&step(&mut s, Inbound::PubComp(6))), ["PubComp(6)"]);
    assert_eq!(kinds(&step(&mut s, Inbound::PingReq)), ["PingResp"]);
}

#[test]
fn topic_aliases_resolve_and_an_alias_out_of_range_disconnects_with_0x94() {
    let mut s = connected(Protocol::V5);
    let out = step(&mut s, aliased(3, "sensors/a"));
    assert_eq!(kinds(&out), ["Deliver(9)", "PubAck(9)"]);
    let out = step(&mut s, aliased(3, ""));
    let Step::Deliver(p) = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(
        p.topic, "sensors/a",
        "the alias stands for the topic it was set with"
    );
    let mut unknown = connected(Protocol::V5);
    let out = step(&mut unknown, aliased(5, ""));
    assert_eq!(kinds(&out)[0], "Disconnect(130)");
    let out = step(&mut s, aliased(TOPIC_ALIAS_MAX + 1, "x"));
    assert_eq!(
        kinds(&out),
        [
            "Disconnect(148)",
            "Close(topic alias outside 1..=Topic Alias Maximum)"
        ]
    );
    let mut zero = connected(Protocol::V5);
    assert_eq!(
        kinds(&step(&mut zero, aliased(0, "x")))[0],
        "Disconnect(148)"
    );
}

#[test]
fn a_second_connect_closes_the_connection() {
    let mut s = connected(Protocol::V4);
    assert!(matches!(
        step(&mut s, connect(Protocol::V4, "x", true, false))[..],
        [Step::Close(_)]
    ));
    assert!(step(&mut s, Inbound::PingReq).is_empty());
}

#[test]
fn a_persistent_session_keeps_qos2_state_across_a_reconnect() {
    let env = Env::default();
    let mut first = Session::new();
    step_in(&env, &mut first, connect(Protocol::V4, "dev", false, false));
    assert_eq!(
        kinds(&step_in(&env, &mut first, publish(2, 4, "a"))),
        ["Deliver(4)", "PubRec(4)"]
    );
    let (id, pending) = first.park().unwrap_or_else(|| panic!("persistent session"));
    env.0.borrow_mut().insert(id, pending);

    let mut second = Session::new();
    let out = step_in(
        &env,
        &mut second,
        connect(Protocol::V4, "dev", false, false),
    );
    assert_eq!(
        kinds(&out),
        [
            "ConnAck { code: Accepted, session_present: true, assigned_id: None, server_keep_alive: None }"
        ]
    );
    assert_eq!(
        kinds(&step_in(&env, &mut second, publish(2, 4, "a"))),
        ["PubRec(4)"],
        "resent, not stored again"
    );
    assert_eq!(
        kinds(&step_in(&env, &mut second, Inbound::PubRel(4))),
        ["PubComp(4)"]
    );
}

#[test]
fn a_clean_session_connect_is_not_a_resumed_session_but_still_recognises_resends() {
    let env = Env::default();
    let mut first = Session::new();
    step_in(&env, &mut first, connect(Protocol::V4, "dev", false, false));
    step_in(&env, &mut first, publish(1, 7, "a"));
    let (id, parked) = first.park().unwrap_or_else(|| panic!("persistent session"));
    env.0.borrow_mut().insert(id, parked);
    let mut s = Session::new();
    let out = step_in(&env, &mut s, connect(Protocol::V4, "dev", true, false));
    assert_eq!(
        kinds(&out),
        [
            "ConnAck { code: Accepted, session_present: false, assigned_id: None, server_keep_alive: None }"
        ]
    );
    assert!(env.0.borrow().is_empty());
    let Inbound::Publish(mut resend) = publish(1, 7, "a") else {
        unreachable!()
    };
    resend.dup = true;
    assert_eq!(
        kinds(&step_in(&env, &mut s, Inbound::Publish(resend.clone()))),
        ["PubAck(7)"],
        "a DUP resend of a stored QoS 1 message is acked, not stored again"
    );
    resend.payload = Bytes::from_static(b"{\"other\":1}");
    assert_eq!(
        kinds(&step_in(&env, &mut s, Inbound::Publish(resend))),
        ["Deliver(7)", "PubAck(7)"],
        "same id, another message: stored"
    );
    let (_, parked) = s
        .park()
        .unwrap_or_else(|| panic!("recent messages are kept"));
    assert!(!parked.persistent);
}

#[test]
fn a_qos2_message_under_a_pending_id_with_other_content_is_new() {
    let mut s = connected(Protocol::V5);
    step(&mut s, publish(2, 4, "a"));
    assert_eq!(kinds(&step(&mut s, publish(2, 4, "a"))), ["PubRec(4)"]);
    assert_eq!(
        kinds(&step(&mut s, publish(2, 4, "b"))),
        ["Deliver(4)", "PubRec(4)"],
        "its PUBREL was lost (a crash): a new message"
    );
}

mod properties {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        Publish(u8, u16),
        PubRel(u16),
        Ping,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..3, 1u16..5).prop_map(|(q, id)| Op::Publish(q, id)),
            (1u16..5).prop_map(Op::PubRel),
            Just(Op::Ping),
        ]
    }

    proptest! {
        #[test]
        fn qos2_is_delivered_once_per_pkid_until_pubrel_and_acks_follow_delivery(ops in prop::collection::vec(op(), 1..200)) {
            let mut s = connected(Protocol::V4);
            let mut pending: HashSet<u16> = HashSet::new();
            for op in ops {
                match op {
                    Op::Publish(qos, pkid) => {
                        let out = step(&mut s, publish(qos, pkid, "a/b"));
                        let delivered = matches!(out.first(), Some(Step::Deliver(_)));
                        match qos {
                            0 => prop_assert!(delivered && out.len() == 1),
                            1 => prop_assert!(delivered && matches!(out.get(1), Some(Step::Reply(Outbound::PubAck(id))) if *id == pkid)),
                            _ => {
                                prop_assert_eq!(delivered, pending.insert(pkid));
                                prop_assert!(matches!(out.last(), Some(Step::Reply(Outbound::PubRec(id))) if *id == pkid));
                            }
                        }
                    }
                    Op::PubRel(pkid) => {
                        pending.remove(&pkid);
                        let out = step(&mut s, Inbound::PubRel(pkid));
                        prop_assert!(matches!(out[..], [Step::Reply(Outbound::PubComp(id))] if id == pkid));
                    }
                    Op::Ping => prop_assert!(matches!(step(&mut s, Inbound::PingReq)[..], [Step::Reply(Outbound::PingResp)])),
                }
                prop_assert!(s.is_connected());
            }
        }
    }
}

/// An environment with a real policy: `dev-1`/`pw` in no password file is simulated by
/// `Authenticator` over an ACL that lets each client write only under `sensors/{client id}/`.
struct Policy {
    auth: crate::auth::Authenticator,
    denied: std::cell::Cell<u32>,
    over: std::cell::Cell<u32>,
}

impl Policy {
    fn new(allow_anonymous: bool, identity: crate::auth::Identity) -> Self {
        let acl = crate::auth::Acl::parse("pattern write sensors/%c/#").expect("acl");
        Self {
            auth: crate::auth::Authenticator::new(None, Some(acl), allow_anonymous, identity),
            denied: std::cell::Cell::new(0),
            over: std::cell::Cell::new(0),
        }
    }
}

impl SessionEnv for Policy {
    fn assign_id(&self) -> String {
        "assigned-1".into()
    }
    fn resume(&self, _: &str) -> Option<Parked> {
        None
    }
    fn authenticate(
        &self,
        c: crate::auth::Credentials<'_>,
    ) -> Result<crate::auth::Principal, crate::auth::Refused> {
        self.auth.connect(c)
    }
    fn checks_publishes(&self) -> bool {
        !self.auth.publishes_unchecked()
    }
    fn may_publish(
        &self,
        p: &crate::auth::Principal,
        client_id: &str,
        topic: &str,
    ) -> Result<(), crate::auth::Denied> {
        let r = self.auth.may_publish(p, client_id, topic, None);
        if r.is_err() {
            self.denied.set(self.denied.get() + 1);
        }
        r
    }
    fn over_inflight(&self) {
        self.over.set(self.over.get() + 1);
    }
}

#[test]
fn connect_without_credentials_is_not_authorized() {
    let env = Policy::new(false, crate::auth::Identity::CertCn);
    for protocol in [Protocol::V4, Protocol::V5] {
        let mut s = Session::new();
        let out = step_in_policy(&env, &mut s, connect(protocol, "dev-1", true, true));
        assert_eq!(
            kinds(&out),
            [
                "ConnAck { code: NotAuthorized, session_present: false, assigned_id: None, server_keep_alive: None }",
                "Close(anonymous access is off)"
            ]
        );
        assert!(!s.is_connected());
        assert!(s.park().is_none());
    }
}

fn step_in_policy(env: &Policy, s: &mut Session, p: Inbound) -> Vec<Step> {
    let mut out = Vec::new();
    s.handle(p, env, &mut out);
    out
}

#[test]
fn the_certificate_cn_is_the_device() {
    let env = Policy::new(false, crate::auth::Identity::CertCn);
    let mut s = Session::with(Some(Arc::from("dev-42")), 8);
    let out = step_in_policy(&env, &mut s, connect(Protocol::V5, "c-1", true, false));
    assert!(kinds(&out)[0].contains("Accepted"), "{:?}", kinds(&out));
    assert_eq!(s.device().map(|d| &**d), Some("dev-42"));
}

#[test]
fn acl_refusals_mqtt5_nack_and_mqtt311_disconnect() {
    let env = Policy::new(true, crate::auth::Identity::ClientId);
    let mut s = Session::new();
    step_in_policy(&env, &mut s, connect(Protocol::V5, "dev-1", true, false));
    let out = step_in_policy(&env, &mut s, publish(1, 7, "sensors/dev-2/t"));
    assert_eq!(kinds(&out), ["NotAuthorized { pkid: 7, qos: 1 }"]);
    let out = step_in_policy(&env, &mut s, publish(2, 8, "sensors/dev-2/t"));
    assert_eq!(kinds(&out), ["NotAuthorized { pkid: 8, qos: 2 }"]);
    let out = step_in_policy(&env, &mut s, publish(0, 0, "sensors/dev-2/t"));
    assert!(out.is_empty(), "QoS 0: dropped without a reply");
    let out = step_in_policy(&env, &mut s, publish(1, 9, "sensors/dev-1/t"));
    assert_eq!(kinds(&out), ["Deliver(9)", "PubAck(9)"]);
    // The next one to the same topic is not looked up again.
    step_in_policy(&env, &mut s, publish(1, 10, "sensors/dev-1/t"));
    assert_eq!(env.denied.get(), 3);
    assert!(s.is_connected());

    let mut s = Session::new();
    step_in_policy(&env, &mut s, connect(Protocol::V4, "dev-1", true, false));
    let out = step_in_policy(&env, &mut s, publish(1, 7, "sensors/dev-2/t"));
    assert_eq!(kinds(&out), ["Close(PUBLISH not authorized)"]);
    assert!(!s.is_connected());
}

#[test]
fn too_many_qos2_awaiting_pubrel_ends_the_session() {
    let env = Policy::new(true, crate::auth::Identity::ClientId);
    let mut s = Session::with(None, 2);
    step_in_policy(&env, &mut s, connect(Protocol::V5, "dev-1", true, false));
    step_in_policy(&env, &mut s, publish(2, 1, "sensors/dev-1/t"));
    step_in_policy(&env, &mut s, publish(2, 2, "sensors/dev-1/t"));
    // A retransmission of a pending id is fine.
    let out = step_in_policy(&env, &mut s, publish(2, 2, "sensors/dev-1/t"));
    assert_eq!(kinds(&out), ["PubRec(2)"]);
    let out = step_in_policy(&env, &mut s, publish(2, 3, "sensors/dev-1/t"));
    assert_eq!(
        kinds(&out),
        [
            "Disconnect(147)",
            "Close(more QoS 2 messages awaiting PUBREL than mqtt.max_inflight)"
        ]
    );
    assert_eq!(env.over.get(), 1);
}

/// An environment with `mqtt.max_keep_alive` set.
struct Capped(u16);

impl SessionEnv for Capped {
    fn assign_id(&self) -> String {
        "assigned-1".into()
    }
    fn resume(&self, _: &str) -> Option<Parked> {
        None
    }
    fn max_keep_alive(&self) -> u16 {
        self.0
    }
}

#[test]
fn a_keep_alive_over_the_cap_or_none_becomes_the_cap_and_mqtt5_is_told() {
    let with = |protocol, keep_alive, cap| {
        let Inbound::Connect(mut info) = connect(protocol, "dev-1", true, false) else {
            unreachable!()
        };
        info.keep_alive = keep_alive;
        let mut s = Session::new();
        let mut out = Vec::new();
        s.handle(Inbound::Connect(info), &Capped(cap), &mut out);
        let told = match &out[0] {
            Step::Reply(Outbound::ConnAck {
                server_keep_alive, ..
            }) => *server_keep_alive,
            other => panic!("{other:?}"),
        };
        (s.idle_timeout(), told)
    };
    let secs = |s: u64| Some(Duration::from_millis(s * 1500));
    assert_eq!(with(Protocol::V5, 120, 60), (secs(60), Some(60)));
    assert_eq!(
        with(Protocol::V5, 0, 60),
        (secs(60), Some(60)),
        "none: the cap"
    );
    assert_eq!(
        with(Protocol::V5, 30, 60),
        (secs(30), None),
        "under the cap: its own"
    );
    assert_eq!(
        with(Protocol::V4, 0, 60),
        (secs(60), None),
        "3.1.1 cannot be told"
    );
    assert_eq!(
        with(Protocol::V5, 0, 0),
        (None, None),
        "no cap: keep-alive 0 stands"
    );
}
