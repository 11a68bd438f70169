"""Bridge mode against a real Mosquitto broker started by the test on a free loopback port:
mosquitto_pub / paho-mqtt publish to Mosquitto, fleetlake subscribes (persistent session, manual
acks after the WAL fsync) and writes Parquet that DuckDB reads back."""

import json
import os
import random
import shutil
import socket
import subprocess
import threading
import time

import duckdb
import paho.mqtt.client as mqtt
import pytest

from conftest import make_certs, metrics, wait_for

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def broker(tmp_path):
    """A Mosquitto 2 broker on 127.0.0.1: anonymous, in-memory, unbounded queues for offline
    persistent sessions (the default 1,000 would drop messages while fleetlake is down)."""
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 0\nmax_inflight_messages 100\nlog_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n"
    )
    log = open(tmp_path / "mosquitto.log", "w")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=log)

    def up():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            return False

    wait_for("mosquitto", up)
    yield port
    proc.kill()
    proc.wait()


def bridge_config(port, client_id="fleetlake-test", group="", protocol="3.1.1"):
    return (
        '[batch]\nmax_age = "200ms"\n'
        '[[tables]]\nname = "telemetry"\ntopics = ["sensors/{device_id}/telemetry"]\n'
        f'[[bridge]]\nname = "plant"\nurl = "mqtt://127.0.0.1:{port}"\nclient_id = "{client_id}"\n'
        f'shared_group = "{group}"\nprotocol = "{protocol}"\n'
        'subscriptions = [{ filter = "sensors/#", qos = 1 }]\n'
    )


def subscribed(d):
    wait_for("the bridge subscription", lambda: any("bridge subscribed" in l for l in d.lines))


def publish_lines(port, client_id, start, count):
    lines = "".join(json.dumps({"seq": s}) + "\n" for s in range(start, start + count))
    subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-i", client_id,
         "-t", f"sensors/{client_id}/telemetry", "-l"],
        input=lines, text=True, check=True, timeout=60,
    )


def rows(*lakes):
    globs = ", ".join(f"'{lake}/telemetry/**/*.parquet'" for lake in lakes)
    return duckdb.sql(
        f"SELECT device_id, seq FROM read_parquet([{globs}], hive_partitioning = true)"
    ).fetchall()


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_mosquitto_to_bridge_to_parquet(daemon_factory, broker, protocol):
    d = daemon_factory(bridge_config(broker, protocol=protocol))
    subscribed(d)
    publish_lines(broker, "dev-a", 0, 1000)
    publish_lines(broker, "dev-b", 1000, 500)
    wait_for("1500 rows", lambda: metrics(d.admin)["fleetlake_rows_published_total"] == 1500)
    m = metrics(d.admin)
    assert m["fleetlake_bridge_messages_total"] == 1500
    assert m["fleetlake_bridge_connections_total"] == 1
    d.stop()
    got = rows(d.lake)
    assert sorted(s for _, s in got) == list(range(1500))
    assert {dev for dev, _ in got} == {"dev-a", "dev-b"}, "device_id from the topic"


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_sigkill_mid_stream_loses_nothing_mosquitto_accepted(daemon_factory, broker, protocol):
    d = daemon_factory(bridge_config(broker, protocol=protocol))
    subscribed(d)
    acked_mids, sent = set(), 0
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="seq-pub")
    pub.max_inflight_messages_set(100)
    mids = {}  # mid -> seq (fewer than 65,536 messages: mids are not reused)
    pub.on_publish = lambda client, userdata, mid, rc, props: acked_mids.add(mid)
    pub.connect("127.0.0.1", broker)
    pub.loop_start()
    kills, skipped = 0, 0
    for round_ in range(3):
        for _ in range(3000):
            info = pub.publish("sensors/seq-pub/telemetry", json.dumps({"seq": sent}), qos=1)
            mids[info.mid] = sent
            sent += 1
            if sent % 500 == 0:
                time.sleep(0.01)
        time.sleep(random.uniform(0.05, 0.3))
        skipped += metrics(d.admin)["fleetlake_bridge_redeliveries_skipped_total"]
        d.kill()  # SIGKILL mid-stream
        kills += 1
        d = daemon_factory(bridge_config(broker, protocol=protocol), dir_name="d0")
    wait_for("every message acked by mosquitto", lambda: len(acked_mids) == sent, deadline=60)
    pub.loop_stop()
    pub.disconnect()
    acked = {mids[m] for m in acked_mids}
    try:
        # (The last process may have nothing left to publish: earlier ones stored it all.)
        wait_for("every accepted message stored",
                 lambda: any(d.lake.rglob("*.parquet"))
                 and len({s for _, s in rows(d.lake)} & acked) == len(acked), deadline=90)
    except AssertionError:
        # Seen once in CI (MQTT 5, not reproduced in 11 local runs): say what is missing.
        missing = sorted(acked - {s for _, s in rows(d.lake)})
        m = metrics(d.admin)
        bridge = {k: v for k, v in m.items() if "bridge" in k or "rows_published" in k}
        raise AssertionError(
            f"{len(missing)} accepted messages not stored (first {missing[:10]}, last {missing[-3:]}); "
            f"metrics {bridge}; daemon log tail:\n" + "".join(d.lines[-30:]))
    skipped += metrics(d.admin)["fleetlake_bridge_redeliveries_skipped_total"]
    d.stop()
    got = [s for _, s in rows(d.lake)]
    missing = acked - set(got)
    duplicates = len(got) - len(set(got))
    print(f"\nbridge crash (MQTT {protocol}): {sent} sent to mosquitto, {len(acked)} accepted, {kills} SIGKILLs, "
          f"{len(set(got))} distinct stored, {duplicates} duplicates, {len(missing)} missing "
          f"({int(skipped)} redeliveries recognised and not stored again)")
    assert not missing
    if duplicates:
        # Which files hold the twice-stored rows, and what the daemon logged about them.
        files = duckdb.sql(
            f"SELECT filename, count(*), min(seq), max(seq) FROM read_parquet('{d.lake}/telemetry/**/*.parquet', "
            f"filename = true) WHERE seq IN (SELECT seq FROM read_parquet('{d.lake}/telemetry/**/*.parquet') "
            f"GROUP BY seq HAVING count(*) > 1) GROUP BY filename ORDER BY filename").fetchall()
        published = [l for l in d.lines if "published parquet file" in l or "replay" in l.lower()]
        raise AssertionError(f"{duplicates} rows stored twice, in {files}; log:\n" + "".join(published[-20:]))


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_sigkill_while_draining_an_offline_backlog_stores_nothing_twice(daemon_factory, broker, protocol):
    """A broker resuming a session sends its whole offline queue at once, past its in-flight
    limit, and acks leave more slowly than the backlog arrives: a SIGKILL then leaves thousands
    of stored messages unacknowledged, all redelivered with DUP. None may be stored twice."""
    config = bridge_config(broker, protocol=protocol)
    d = daemon_factory(config)
    subscribed(d)
    d.stop()  # the persistent session stays in Mosquitto and queues what follows
    total = 40000
    publish_lines(broker, "backlog", 0, total)
    d = daemon_factory(config, dir_name="d0")
    wait_for("part of the backlog taken in", lambda: metrics(d.admin)["fleetlake_bridge_messages_total"] >= 8000)
    d.kill()
    d = daemon_factory(config, dir_name="d0")
    wait_for("the whole backlog stored",
             lambda: metrics(d.admin)["fleetlake_bridge_messages_total"] > 0
             and duckdb.sql(f"SELECT count(DISTINCT seq) FROM read_parquet('{d.lake}/telemetry/**/*.parquet')")
             .fetchall()[0][0] == total if list(d.lake.rglob("*.parquet")) else False, deadline=90)
    skipped = metrics(d.admin)["fleetlake_bridge_redeliveries_skipped_total"]
    d.stop()
    got = [s for _, s in rows(d.lake)]
    print(f"\nbacklog crash (MQTT {protocol}): {total} queued, {len(got)} rows, {len(got) - len(set(got))} duplicates, "
          f"{int(skipped)} redeliveries recognised")
    assert sorted(set(got)) == list(range(total))
    assert len(got) == total, f"{len(got) - total} rows stored twice ({int(skipped)} redeliveries recognised)"


def test_two_nodes_share_one_subscription(daemon_factory, broker):
    a = daemon_factory(bridge_config(broker, "fleetlake-a", group="lake"))
    b = daemon_factory(bridge_config(broker, "fleetlake-b", group="lake"))
    subscribed(a)
    subscribed(b)
    threads = [threading.Thread(target=publish_lines, args=(broker, f"dev-{i}", i * 5000, 5000))
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = lambda: sum(metrics(x.admin)["fleetlake_rows_published_total"] for x in (a, b))
    wait_for("20000 rows across both nodes", lambda: total() == 20000, deadline=60)
    a.stop()
    b.stop()
    got_a, got_b = rows(a.lake), rows(b.lake)
    union = [s for _, s in got_a + got_b]
    print(f"\nscale-out: 20000 sent, node a {len(got_a)}, node b {len(got_b)}, "
          f"{len(union) - len(set(union))} duplicates")
    assert sorted(union) == list(range(20000)), "each message exactly once across the nodes"
    assert min(len(got_a), len(got_b)) >= 4000, "both nodes took a substantial share"


def test_mtls_bridge_to_a_broker_that_requires_client_certificates(daemon_factory, tmp_path):
    certs = tmp_path / "certs"
    certs.mkdir()
    make_certs(certs, clients=("fleetlake-client",))
    plain, tls = free_port(), free_port()
    conf = tmp_path / "mosquitto-tls.conf"
    conf.write_text(
        # user root: mosquitto started as root would otherwise switch to the mosquitto user,
        # which cannot read the test's certificate files.
        "user root\nper_listener_settings false\nallow_anonymous true\npersistence false\n"
        f"listener {plain} 127.0.0.1\n"
        f"listener {tls} 127.0.0.1\ncafile {certs}/ca.pem\ncertfile {certs}/server.pem\n"
        f"keyfile {certs}/server.key\nrequire_certificate true\n"
    )
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for("mosquitto", lambda: subprocess.run(
            ["mosquitto_pub", "-p", str(plain), "-t", "x", "-m", "x"], capture_output=True
        ).returncode == 0)
        base = bridge_config(tls).replace("mqtt://", "mqtts://")
        good = daemon_factory(base + f'ca_file = "{certs}/ca.pem"\nclient_cert = "{certs}/fleetlake-client.pem"\n'
                                     f'client_key = "{certs}/fleetlake-client.key"\n')
        no_cert = daemon_factory(base.replace("fleetlake-test", "fleetlake-nocert")
                                 + f'ca_file = "{certs}/ca.pem"\n')
        subscribed(good)
        publish_lines(plain, "dev-tls", 0, 300)
        wait_for("300 rows over TLS", lambda: metrics(good.admin)["fleetlake_rows_published_total"] == 300)
        wait_for("the certificate-less bridge refused",
                 lambda: metrics(no_cert.admin)["fleetlake_bridge_connection_errors_total"] >= 1)
        assert metrics(no_cert.admin)["fleetlake_bridge_connections_total"] == 0
        assert any("bridge cannot connect" in line for line in no_cert.lines)
        good.stop()
        no_cert.stop()
        assert sorted(s for _, s in rows(good.lake)) == list(range(300))
    finally:
        proc.kill()
        proc.wait()
