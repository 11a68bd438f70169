"""The broker role: stock clients subscribe on the same listener they publish to, and receive
exactly what was published (after it is durable), with wildcards, QoS 0/1/2, retained messages
that survive a SIGKILL, persistent sessions, wills, shared subscriptions, MQTT 5 options and
topic aliases, and route-only topics that never become rows."""

import json
import subprocess
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

from conftest import DEADLINE, metrics, rss_kib, wait_for


class Sub:
    """A paho subscriber that records (topic, payload, qos, retain, properties) it receives."""

    def __init__(self, port, client_id, filters, v5=False, clean=True, expiry=None, qos=1, options=None):
        proto = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        kw = {} if v5 else {"clean_session": clean}
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=proto, **kw)
        self.got = []
        self.codes = None
        self.lock = threading.Lock()
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self.connected = threading.Event()
        self.c.on_connect = lambda c, u, f, rc, p: (setattr(self, "present", f.session_present), self.connected.set())
        props = None
        if v5:
            props = Properties(PacketTypes.CONNECT)
            if expiry is not None:
                props.SessionExpiryInterval = expiry
            self.c.connect("127.0.0.1", port, clean_start=clean, properties=props)
        else:
            self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert self.connected.wait(DEADLINE)
        if filters:
            self.subscribe(filters, qos, options)

    def _on_message(self, c, u, m):
        with self.lock:
            self.got.append((m.topic, m.payload, m.qos, m.retain, m.properties))

    def _on_subscribe(self, c, u, mid, codes, props):
        self.codes = codes

    def subscribe(self, filters, qos=1, options=None):
        self.codes = None
        if options is not None:
            self.c.subscribe([(f, options) for f in filters])
        else:
            self.c.subscribe([(f, qos) for f in filters])
        wait_for("SUBACK", lambda: self.codes is not None)
        return self.codes

    def payloads(self):
        with self.lock:
            return [g[1] for g in self.got]

    def wait(self, n):
        wait_for(f"{n} messages", lambda: len(self.got) >= n)
        return self.got

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def pub(port, topic, payload, qos=1, retain=False, props=None, v5=False, client_id=""):
    proto = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=proto)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        info = c.publish(topic, payload, qos=qos, retain=retain, properties=props)
        info.wait_for_publish(DEADLINE)
        assert info.is_published()
    finally:
        c.disconnect()
        c.loop_stop()


def rows(d, table="telemetry"):
    import duckdb

    files = d.files(table)
    if not files:
        return []
    return duckdb.sql(f"select * from read_parquet({[str(f) for f in files]}, union_by_name=true)").fetchall()


def test_mosquitto_sub_receives_what_mosquitto_pub_publishes_with_wildcards(daemon_factory):
    d = daemon_factory()
    subs = []
    for version in ("mqttv311", "mqttv5"):
        subs.append(subprocess.Popen(
            ["mosquitto_sub", "-p", str(d.port), "-V", version, "-q", "2", "-v", "-C", "6", "-W", "20",
             "-t", "plant/+/temp", "-t", "plant/line1/#"],
            stdout=subprocess.PIPE, text=True))
    wait_for("4 subscriptions", lambda: metrics(d.admin).get("fleetlake_broker_subscriptions") == 4)
    sent = []
    for qos in (0, 1, 2):
        for topic in ("plant/line1/temp", "plant/line2/temp"):
            doc = json.dumps({"q": qos, "t": topic})
            subprocess.run(["mosquitto_pub", "-p", str(d.port), "-q", str(qos), "-t", topic, "-m", doc], check=True)
            sent.append(f"{topic} {doc}")
    # plant/line1/temp matches both filters of a subscriber: delivered once.
    subprocess.run(["mosquitto_pub", "-p", str(d.port), "-t", "elsewhere", "-m", "{}"], check=True)
    for s in subs:
        out, _ = s.communicate(timeout=DEADLINE)
        assert sorted(out.splitlines()) == sorted(sent), out
    d.stop()
    assert len(rows(d)) == 7, "every message is also stored"


def test_qos_is_the_lower_of_published_and_granted_and_overlaps_deliver_once(daemon_factory):
    d = daemon_factory()
    s1 = Sub(d.port, "sub-q1", ["a/#"], qos=1)
    s2 = Sub(d.port, "sub-q2", ["a/+", "a/b"], qos=2)
    assert [c.value for c in s2.codes] == [2, 2]
    for qos in (0, 1, 2):
        pub(d.port, "a/b", json.dumps({"q": qos}), qos=qos)
    got1 = s1.wait(3)
    got2 = s2.wait(3)
    time.sleep(0.2)  # a duplicate would arrive right behind (nothing is waited on by this)
    assert [g[2] for g in got1] == [0, 1, 1]
    assert [g[2] for g in got2] == [0, 1, 2]
    assert len(s2.got) == 3, "overlapping subscriptions deliver once"
    m = metrics(d.admin)
    assert m["fleetlake_broker_delivered_qos2_total"] == 1
    s1.close()
    s2.close()


def raw_suback(port, version, filters):
    """Connects with hand-made packets (stock clients refuse to send invalid filters) and
    returns the SUBACK's reason codes; then checks the connection still answers PINGREQ."""
    import socket
    import struct

    def string(b):
        return struct.pack(">H", len(b)) + b

    def packet(kind, body):
        n, length = len(body), b""
        while True:
            byte, n = n % 128, n // 128
            length += bytes([byte | (0x80 if n else 0)])
            if not n:
                return bytes([kind]) + length + body

    props = b"\x00" if version == 5 else b""
    connect = string(b"MQTT") + bytes([version, 0x02]) + struct.pack(">H", 30) + props + string(b"raw-%d" % version)
    s = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
    s.sendall(packet(0x10, connect))
    connack = s.recv(64)
    assert connack[0] == 0x20, connack
    body = struct.pack(">H", 7) + props + b"".join(string(f.encode()) + b"\x01" for f in filters)
    s.sendall(packet(0x82, body))
    suback = b""
    while len(suback) < 2 or len(suback) < 2 + suback[1]:
        suback += s.recv(64)
    s.sendall(b"\xc0\x00")
    assert s.recv(2) == b"\xd0\x00", "the connection is still open"
    s.close()
    return list(suback[4 + (1 if version == 5 else 0):])


def test_invalid_filters_get_failure_codes_and_the_connection_stays(daemon_factory):
    d = daemon_factory()
    assert raw_suback(d.port, 4, ["a/#/b", "ok/#", "x+y"]) == [0x80, 1, 0x80]
    assert raw_suback(d.port, 5, ["a/#/b", "$share/g", "ok/#"]) == [0x8F, 0x8F, 1]
    assert metrics(d.admin)["fleetlake_broker_subscribes_refused_total"] == 4


def test_a_retained_message_survives_sigkill_and_an_empty_one_deletes_it(daemon_factory):
    d = daemon_factory()
    pub(d.port, "status/dev-1", '{"up":true}', qos=1, retain=True)
    pub(d.port, "status/dev-2", '{"up":true}', qos=1, retain=True)
    pub(d.port, "status/dev-2", "", qos=1, retain=True)
    d.kill()
    d = daemon_factory(dir_name="d0")
    s = Sub(d.port, "late", ["status/#"])
    got = s.wait(1)
    time.sleep(0.2)
    assert [(g[0], g[1], g[3]) for g in s.got] == [("status/dev-1", b'{"up":true}', True)]
    s.close()
    # A subscriber already there gets new retained messages with the flag cleared.
    live = Sub(d.port, "live", ["status/#"])
    live.wait(1)
    pub(d.port, "status/dev-3", '{"up":false}', retain=True)
    got = live.wait(2)
    assert got[1][:2] == ("status/dev-3", b'{"up":false}') and got[1][3] is False
    live.close()
    d.stop()
    d = daemon_factory(dir_name="d0")
    s = Sub(d.port, "after-restart", ["status/#"])
    s.wait(2)
    assert sorted(g[0] for g in s.got) == ["status/dev-1", "status/dev-3"]
    s.close()


def test_mqtt5_properties_and_message_expiry_outlive_a_restart(daemon_factory):
    """Retained and queued messages read back from the broker's snapshots keep their MQTT 5
    properties; message expiry counts the time fleetlake was stopped."""
    d = daemon_factory()
    away = Sub(d.port, "ops-panel", ["req/#"], v5=True, clean=False, expiry=3600)
    away.close()
    keep = Properties(PacketTypes.PUBLISH)
    keep.ContentType = "application/json"
    keep.UserProperty = ("site", "north")
    keep.MessageExpiryInterval = 600
    pub(d.port, "cfg/a", '{"mode":"eco"}', retain=True, props=keep, v5=True)
    short = Properties(PacketTypes.PUBLISH)
    short.MessageExpiryInterval = 1
    published = time.monotonic()
    pub(d.port, "cfg/short", '{"mode":"boost"}', retain=True, props=short, v5=True)
    req = Properties(PacketTypes.PUBLISH)
    req.ResponseTopic = "reply/ops-panel"
    req.CorrelationData = b"req-42"
    pub(d.port, "req/1", '{"q":1}', props=req, v5=True)
    d.stop()
    # The 1 s expiry of cfg/short runs out while fleetlake is stopped.
    time.sleep(max(0.0, 1.5 - (time.monotonic() - published)))
    d = daemon_factory(dir_name="d0")
    s = Sub(d.port, "reader", ["cfg/#"], v5=True)
    got = s.wait(1)
    time.sleep(0.3)
    assert [g[0] for g in s.got] == ["cfg/a"], "cfg/short expired while fleetlake was down"
    p = got[0][4]
    assert p.ContentType == "application/json"
    assert p.UserProperty == [("site", "north")]
    assert 0 < p.MessageExpiryInterval <= 600
    s.close()
    back = Sub(d.port, "ops-panel", [], v5=True, clean=False, expiry=3600)
    assert back.present
    got = back.wait(1)
    assert got[0][:2] == ("req/1", b'{"q":1}')
    assert got[0][4].ResponseTopic == "reply/ops-panel"
    assert got[0][4].CorrelationData == b"req-42"
    back.close()


def test_a_persistent_subscriber_gets_what_was_published_while_it_was_away(daemon_factory):
    d = daemon_factory()
    s = Sub(d.port, "thermostat-7", ["cmd/thermostat-7/#"], clean=False)
    s.close()
    for i in range(5):
        pub(d.port, "cmd/thermostat-7/setpoint", json.dumps({"setpoint": 20 + i}), qos=1)
    back = Sub(d.port, "thermostat-7", [], clean=False)
    assert back.present
    back.wait(5)
    assert [json.loads(p)["setpoint"] for p in back.payloads()] == [20, 21, 22, 23, 24]
    back.close()
    fresh = Sub(d.port, "thermostat-7", [], clean=True)
    assert not fresh.present
    pub(d.port, "cmd/thermostat-7/setpoint", '{"setpoint": 1}')
    time.sleep(0.3)
    assert fresh.got == [], "a clean session dropped the subscription"
    fresh.close()


def test_the_will_of_a_vanished_client_reaches_subscribers(daemon_factory):
    d = daemon_factory()
    s = Sub(d.port, "watcher", ["status/#"])
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dev-w")
    c.will_set("status/dev-w", '{"up":false}', qos=1)
    c.connect("127.0.0.1", d.port)
    c.loop_start()
    wait_for("connected", c.is_connected)
    c.loop_stop()
    c.socket().close()  # vanish without DISCONNECT
    got = s.wait(1)
    assert got[0][:2] == ("status/dev-w", b'{"up":false}')
    s.close()


def test_route_only_topics_are_delivered_but_never_stored(daemon_factory):
    d = daemon_factory('[broker]\nroute_only = ["cmd/#"]\n')
    s = Sub(d.port, "dev-9", ["cmd/dev-9/#"])
    pub(d.port, "cmd/dev-9/reboot", "now")  # not JSON: would be rejected if it were stored
    pub(d.port, "sensors/dev-9", '{"t": 1}')
    s.wait(1)
    s.close()
    d.stop()
    assert len(rows(d)) == 1
    assert not list(d.rejected.rglob("*.parquet")), "nothing went to _rejected"


def test_a_shared_subscription_splits_messages_with_none_lost_or_doubled(daemon_factory):
    d = daemon_factory()
    a = Sub(d.port, "worker-a", ["$share/workers/jobs/#"])
    b = Sub(d.port, "worker-b", ["$share/workers/jobs/#"], v5=True)
    for i in range(40):
        pub(d.port, f"jobs/{i}", str(i), qos=1)
    wait_for("40 deliveries", lambda: len(a.got) + len(b.got) >= 40)
    time.sleep(0.2)
    got = sorted(int(p) for p in a.payloads() + b.payloads())
    assert got == list(range(40))
    assert a.got and b.got, "both members get some"
    a.close()
    b.close()


def test_mqtt5_properties_topic_aliases_and_no_local(daemon_factory):
    d = daemon_factory()
    opts = mqtt.SubscribeOptions(qos=1, noLocal=True)
    s = Sub(d.port, "echo", [], v5=True)
    s.subscribe(["chat/#"], options=opts)
    other = Sub(d.port, "reader", ["chat/#"], v5=True)
    # `echo` publishes with a topic alias and properties: it does not get its own message.
    props = Properties(PacketTypes.PUBLISH)
    props.TopicAlias = 1
    props.UserProperty = [("k", "v")]
    props.ContentType = "application/json"
    props.ResponseTopic = "chat/replies"
    props.CorrelationData = b"\x01\x02"
    info = s.c.publish("chat/room", '{"m": 1}', qos=1, properties=props)
    info.wait_for_publish(DEADLINE)
    again = Properties(PacketTypes.PUBLISH)
    again.TopicAlias = 1
    info = s.c.publish("", '{"m": 2}', qos=2, properties=again)
    info.wait_for_publish(DEADLINE)
    got = other.wait(2)
    assert [(g[0], g[1]) for g in got] == [("chat/room", b'{"m": 1}'), ("chat/room", b'{"m": 2}')]
    p = got[0][4]
    assert p.UserProperty == [("k", "v")] and p.ContentType == "application/json"
    assert p.ResponseTopic == "chat/replies" and p.CorrelationData == b"\x01\x02"
    time.sleep(0.2)
    assert s.got == [], "no-local"
    s.close()
    other.close()
    d.stop()
    assert len(rows(d)) == 2, "aliased publishes are stored under their topic"


def test_acl_read_rules_decide_subscriptions_and_every_delivery(daemon_factory, tmp_path):
    acl = tmp_path / "acl"
    acl.write_text(
        "pattern write #\n"
        "pattern read cmd/%c/#\n"
        "pattern read sensors/#\n"
        "pattern deny sensors/%c/secret\n"
    )
    d = daemon_factory(f'[mqtt.auth]\nacl_file = "{acl}"\n')
    r = Sub(d.port, "reader", [], v5=True)
    codes = r.subscribe(["cmd/+/#", "#", "cmd/reader/#", "sensors/#"])
    assert [c.value for c in codes] == [0x87, 0x87, 1, 1]
    for topic in ("cmd/other/x", "cmd/reader/x", "sensors/reader/secret", "sensors/a"):
        pub(d.port, topic, '{"v": 1}', client_id="pubber")
    r.wait(2)
    time.sleep(0.3)
    assert sorted(g[0] for g in r.got) == ["cmd/reader/x", "sensors/a"]
    m = metrics(d.admin)
    assert m["fleetlake_broker_denied_acl_total"] == 1
    r.close()


def test_a_persistent_subscriber_keeps_subscriptions_and_queue_across_sigkill(daemon_factory):
    d = daemon_factory()
    s = Sub(d.port, "thermostat-9", ["cmd/thermostat-9/#"], clean=False)
    s.close()
    for i in range(3):
        pub(d.port, "cmd/thermostat-9/sp", json.dumps({"sp": i}), qos=1)
    # MQTT 5 with a session expiry: SIGKILL right after its SUBACK.
    v5 = Sub(d.port, "panel-1", ["alarms/#"], v5=True, clean=False, expiry=3600)
    d.kill()
    v5.close()
    d = daemon_factory(dir_name="d0")
    pub(d.port, "alarms/fire", '{"zone": 2}', qos=1)
    back = Sub(d.port, "thermostat-9", [], clean=False)
    assert back.present, "the session survived"
    back.wait(3)
    assert [json.loads(p)["sp"] for p in back.payloads()] == [0, 1, 2]
    pub(d.port, "cmd/thermostat-9/sp", '{"sp": 3}', qos=1)
    back.wait(4)
    back.close()
    panel = Sub(d.port, "panel-1", [], v5=True, clean=False, expiry=3600)
    assert panel.present
    got = panel.wait(1)
    assert got[0][:2] == ("alarms/fire", b'{"zone": 2}')
    panel.close()


def test_mqtt_js_publishes_with_topic_aliases_and_a_subscriber_gets_the_properties(daemon_factory):
    """MQTT.js 5 (a client nobody here wrote): every message acknowledged, delivered with its
    user properties and content type, and stored under its topic."""
    import os
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "node" / "aliases.js"
    d = daemon_factory()
    out = subprocess.run(["node", str(script), str(d.port), "200"], capture_output=True, text=True,
                         timeout=60, env={**os.environ})
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # The subscriber allowed 4 topic aliases: every delivery carries one, and MQTT.js resolves
    # them back to the one topic (after the first PUBLISH the broker sends the alias alone).
    assert result == {"acked": 200, "received": 200, "props": 200, "aliased": 200,
                      "topics": ["js/thermostat-1/reading"], "errors": []}, result
    d.stop()
    stored = rows(d)
    assert len(stored) == 200


def flood(port, client_id, topic, n, size=1024):
    """Publishes n messages of `size` bytes at QoS 1 with 500 in flight; returns messages/s."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    c.max_inflight_messages_set(500)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    body = "x" * (size - 20)
    start = time.monotonic()
    infos = [c.publish(topic, f'{{"i":{i},"b":"{body}"}}', qos=1) for i in range(n)]
    for info in infos:
        info.wait_for_publish(60)
    rate = n / (time.monotonic() - start)
    c.disconnect()
    c.loop_stop()
    return rate


def test_a_subscriber_that_stops_reading_is_disconnected_and_publishers_go_on(daemon_factory, tmp_path):
    import socket
    import struct

    # The stalled subscriber's socket buffers hold a few MiB, its queue 8 MiB: 20 MiB overflow it.
    d = daemon_factory('[broker]\nsession_queue_bytes = "8MiB"\nqueue_bytes = "32MiB"\n')
    # A subscriber that keeps up (mosquitto_sub, C) gets everything.
    received = open(tmp_path / "fast.out", "w")
    fast = subprocess.Popen(["mosquitto_sub", "-p", str(d.port), "-i", "fast", "-q", "1", "-t", "flood/#",
                             "-F", "%t", "-C", "30000", "-W", "60"], stdout=received)
    wait_for("subscribed", lambda: metrics(d.admin).get("fleetlake_broker_subscriptions") == 1)
    before = rss_kib(d.proc.pid)
    alone = flood(d.port, "pub-a", "flood/a", 10_000)
    # One that subscribes, then never reads again (a tiny receive buffer fills first).
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", d.port))
    connect = b"\x00\x04MQTT\x04\x02\x00\x3c" + struct.pack(">H", 4) + b"slow"
    slow.sendall(bytes([0x10, len(connect)]) + connect)
    assert slow.recv(4)[0] == 0x20
    sub = struct.pack(">H", 1) + struct.pack(">H", 7) + b"flood/#" + b"\x01"
    slow.sendall(bytes([0x82, len(sub)]) + sub)
    assert slow.recv(5)[0] == 0x90
    with_slow = flood(d.port, "pub-b", "flood/b", 20_000)
    wait_for("the slow subscriber disconnected",
             lambda: metrics(d.admin)["fleetlake_broker_slow_disconnects_total"] >= 1)
    peak = rss_kib(d.proc.pid)
    fast.wait(timeout=60)
    received.close()
    out = (tmp_path / "fast.out").read_text()
    m = metrics(d.admin)
    print(f"\nslow subscriber: publisher alone {alone:.0f} msgs/s, with a stalled subscriber "
          f"{with_slow:.0f} msgs/s; slow disconnects {m['fleetlake_broker_slow_disconnects_total']:.0f}, "
          f"QoS 1 deliveries dropped {m['fleetlake_broker_dropped_qos12_total']:.0f}; "
          f"RSS {before} -> {peak} KiB")
    assert len(out.splitlines()) == 30_000, "the subscriber that reads got everything"
    assert m["fleetlake_broker_slow_disconnects_total"] == 1, "only the stalled one"
    assert m["fleetlake_broker_dropped_qos12_total"] >= 1
    assert peak - before < (64 + 32 + 30) * 1024, "RSS bounded by budget + queues"
    slow.close()


def test_an_mqtt5_session_expires_after_its_interval(daemon_factory):
    d = daemon_factory()
    s = Sub(d.port, "short-lived", ["x/#"], v5=True, clean=False, expiry=1)
    s.close()
    kept = Sub(d.port, "long-lived", ["x/#"], v5=True, clean=False, expiry=3600)
    kept.close()
    wait_for("the short session to expire",
             lambda: metrics(d.admin)["fleetlake_broker_sessions"] == 1, deadline=10)
    back = Sub(d.port, "short-lived", [], v5=True, clean=False, expiry=1)
    assert not back.present
    back.close()
    again = Sub(d.port, "long-lived", [], v5=True, clean=False, expiry=3600)
    assert again.present
    again.close()


def test_an_expired_message_is_not_delivered_to_a_returning_subscriber(daemon_factory):
    d = daemon_factory()
    s = Sub(d.port, "late-reader", ["news/#"], v5=True, clean=False, expiry=3600)
    s.close()
    short = Properties(PacketTypes.PUBLISH)
    short.MessageExpiryInterval = 1
    pub(d.port, "news/old", "stale", props=short, v5=True)
    long = Properties(PacketTypes.PUBLISH)
    long.MessageExpiryInterval = 600
    pub(d.port, "news/new", "fresh", props=long, v5=True)
    time.sleep(1.5)  # the expiry interval itself is what is tested: let it pass
    back = Sub(d.port, "late-reader", [], v5=True, clean=False, expiry=3600)
    got = back.wait(1)
    time.sleep(0.2)
    assert [g[0] for g in back.got] == ["news/new"]
    assert 590 <= got[0][4].MessageExpiryInterval <= 600
    assert metrics(d.admin)["fleetlake_broker_dropped_expired_total"] == 1
    back.close()


def test_an_mqtt5_will_carries_its_properties_after_its_delay(daemon_factory):
    d = daemon_factory()
    s = Sub(d.port, "watch-w", ["status/#"], v5=True)
    wp = Properties(PacketTypes.WILLMESSAGE)
    wp.WillDelayInterval = 1
    wp.UserProperty = [("k", "v")]
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dev-d", protocol=mqtt.MQTTv5)
    c.will_set("status/dev-d", "gone", qos=1, properties=wp)
    cp = Properties(PacketTypes.CONNECT)
    cp.SessionExpiryInterval = 60
    c.connect("127.0.0.1", d.port, clean_start=True, properties=cp)
    c.loop_start()
    wait_for("connected", c.is_connected)
    c.loop_stop()
    vanished = time.monotonic()
    c.socket().close()
    got = s.wait(1)
    assert time.monotonic() - vanished >= 0.9, "the will waited for its delay"
    assert got[0][:2] == ("status/dev-d", b"gone")
    assert got[0][4].UserProperty == [("k", "v")]
    s.close()


def test_a_table_keeps_mqtt5_properties_as_columns_also_after_a_crash(daemon_factory):
    d = daemon_factory('[[tables]]\nname = "requests"\ntopics = ["req/{device_id}"]\n'
                       'properties = ["content_type", "response_topic", "correlation_data", "user"]\n')
    for i in range(2):
        p = Properties(PacketTypes.PUBLISH)
        p.ContentType = "application/json"
        p.ResponseTopic = f"reply/{i}"
        p.CorrelationData = bytes([i, 255])
        p.UserProperty = [("trace-id", f"t{i}")]
        pub(d.port, "req/dev-1", json.dumps({"n": i}), qos=1, props=p, v5=True)
    d.kill()  # the rows come back from the WAL: properties included
    d = daemon_factory('[[tables]]\nname = "requests"\ntopics = ["req/{device_id}"]\n'
                       'properties = ["content_type", "response_topic", "correlation_data", "user"]\n',
                       dir_name="d0")
    d.stop()
    got = sorted(rows_of(d, "requests"))
    assert got == [(0, "application/json", "reply/0", "00ff", "t0"), (1, "application/json", "reply/1", "01ff", "t1")]


def rows_of(d, table):
    import duckdb

    files = [str(f) for f in d.files(table)]
    return duckdb.sql(f"select n::int, content_type, response_topic, correlation_data, user_trace_id "
                      f"from read_parquet({files}, union_by_name=true)").fetchall()


def test_a_client_over_receive_maximum_reads_disconnect_0x93_not_a_reset(daemon_factory):
    """MQTT 5 §4.9: more QoS 2 messages awaiting PUBREL than CONNACK's Receive Maximum gets
    DISCONNECT 0x93; the server lingers so the client reads it before the socket closes."""
    import socket
    import struct

    d = daemon_factory('[mqtt]\nlisten = "127.0.0.1:0"\nmax_inflight = 4\n')
    s = socket.create_connection(("127.0.0.1", d.port), timeout=DEADLINE)
    connect = b"\x00\x04MQTT\x05\x02\x00\x3c\x00" + struct.pack(">H", 4) + b"rm-1"
    s.sendall(bytes([0x10, len(connect)]) + connect)
    assert s.recv(64)[0] == 0x20
    burst = b""
    for pkid in range(1, 40):
        body = struct.pack(">H", 1) + b"t" + struct.pack(">H", pkid) + b"\x00" + b"{}"
        burst += bytes([0x34, len(body)]) + body
    s.sendall(burst)
    got = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        got += chunk
    s.close()
    assert b"\xe0\x01\x93" in got, got


def test_max_keep_alive_caps_a_client_and_mqtt5_is_told(daemon_factory):
    """mqtt.max_keep_alive: an MQTT 5 client asking for 120 s gets Server Keep Alive 60 in
    CONNACK (MQTT 5 §3.2.2.3.14); a 3.1.1 client with keep-alive 0 (never) that goes silent is
    dropped after 1.5 × the cap."""
    import socket

    d = daemon_factory('[mqtt]\nlisten = "127.0.0.1:0"\nmax_keep_alive = "1s"\n')
    got = {}
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ka5", protocol=mqtt.MQTTv5)
    c.on_connect = lambda cl, u, f, rc, p: got.setdefault("props", p)
    c.connect("127.0.0.1", d.port, keepalive=120)
    c.loop_start()
    wait_for("CONNACK", lambda: "props" in got)
    assert got["props"].ServerKeepAlive == 1
    c.disconnect()
    c.loop_stop()
    # 3.1.1 CONNECT, clean session, keep-alive 0, client id "ka4"; then silence.
    s = socket.create_connection(("127.0.0.1", d.port), timeout=DEADLINE)
    s.sendall(bytes([0x10, 15, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 0, 0, 3]) + b"ka4")
    assert s.recv(4) == bytes([0x20, 2, 0, 0])
    started = time.monotonic()
    assert s.recv(1) == b"", "the server closes the silent connection"
    assert time.monotonic() - started >= 1.4
    s.close()
