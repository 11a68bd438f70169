"""Crashes with persistent publishers and a subscriber: paho clients with persistent sessions
publish at QoS 1 and QoS 2 and keep their unacknowledged messages across reconnects (resent
with DUP), while the daemon is SIGKILLed 20 times on a fixed port. Afterwards every message
sent is stored exactly once, and everything the subscriber received is stored (a subscriber
never sees a message a crash could lose)."""

import json
import random
import threading
import time

import duckdb
import paho.mqtt.client as mqtt

from conftest import free_port, metrics, wait_for

KILLS = 20
CONFIG = """
[batch]
max_rows = 200
max_age = "300ms"
[wal]
segment_size = "1MiB"
"""


class Client:
    """A paho client with a persistent session that reconnects by itself."""

    def __init__(self, port, client_id):
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.c.max_inflight_messages_set(20)
        self.c.reconnect_delay_set(min_delay=0.05, max_delay=0.2)
        self.lock = threading.Lock()
        self.c.connect_async("127.0.0.1", port, keepalive=5)
        self.c.loop_start()


class Publisher(Client):
    """Publishes {"dev", "seq"} at `qos` while connected; records what was acknowledged."""

    def __init__(self, port, client_id, qos):
        super().__init__(port, client_id)
        self.dev, self.qos = client_id, qos
        self.c.on_publish = self._on_publish
        self.sent, self.acked = 0, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _on_publish(self, c, u, mid, rc, props):
        # paho calls this holding its own lock: our lock is never held around publish().
        with self.lock:
            self.acked += 1

    def _run(self):
        while not self.stop.is_set():
            with self.lock:
                backlog = self.sent - self.acked
            if not self.c.is_connected() or backlog > 100:
                time.sleep(0.002)
                continue
            doc = json.dumps({"dev": self.dev, "seq": self.sent, "v": random.random()})
            self.c.publish(f"sensors/{self.dev}", doc, qos=self.qos)
            with self.lock:
                self.sent += 1

    def done(self):
        with self.lock:
            return self.acked == self.sent


class Subscriber(Client):
    def __init__(self, port):
        super().__init__(port, "watcher")
        self.got = set()
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe("sensors/#", qos=1)
        self.c.on_message = self._on_message

    def _on_message(self, c, u, m):
        doc = json.loads(m.payload)
        with self.lock:
            self.got.add((doc["dev"], doc["seq"]))


def test_persistent_publishers_store_every_message_once_and_subscribers_see_only_stored_ones(daemon_factory):
    rng = random.Random(20261130)
    port = free_port()
    extra = f'[mqtt]\nlisten = "127.0.0.1:{port}"\n' + CONFIG
    d = daemon_factory(extra, dir_name="c")
    sub = Subscriber(port)
    pubs = [Publisher(port, "pub-qos1", 1), Publisher(port, "pub-qos2", 2)]
    skipped = 0
    for _ in range(KILLS):
        before = [p.acked for p in pubs]
        wait_for("acks", lambda: all(p.acked > b for p, b in zip(pubs, before)), deadline=30)
        time.sleep(rng.uniform(0.0, 0.4))
        skipped += metrics(d.admin)["fleetlake_messages_resends_skipped_total"]
        d.kill()
        d = daemon_factory(extra, dir_name="c")
    for p in pubs:
        p.stop.set()
        p.thread.join(timeout=10)
    wait_for("every message acknowledged", lambda: all(p.done() for p in pubs), deadline=60)
    for c in pubs + [sub]:
        c.c.disconnect()
        c.c.loop_stop()
    skipped += metrics(d.admin)["fleetlake_messages_resends_skipped_total"]
    d.stop()
    glob = f"{d.lake}/*/**/*.parquet"
    rows = duckdb.sql(
        f"SELECT dev, seq, count(*) AS n FROM read_parquet('{glob}', union_by_name = true) GROUP BY ALL"
    ).fetchall()
    found = {(dev, int(seq)): n for dev, seq, n in rows}
    sent = {(p.dev, s) for p in pubs for s in range(p.sent)}
    duplicates = {k: n for k, n in found.items() if n > 1}
    missing = sent - found.keys()
    unstored = sub.got - found.keys()
    print(
        f"\nbroker crash test: kills={KILLS} sent={len(sent)} found={len(found)} "
        f"duplicates={len(duplicates)} missing={len(missing)} delivered={len(sub.got)} "
        f"delivered_not_stored={len(unstored)} resends_recognised={int(skipped)}"
    )
    assert len(sent) > KILLS * 20
    assert not missing, f"{len(missing)} messages lost, e.g. {sorted(missing)[:5]}"
    assert not duplicates, f"{len(duplicates)} stored twice, e.g. {sorted(duplicates.items())[:5]}"
    assert sub.got, "the subscriber received messages"
    assert not unstored, f"delivered but not stored: {sorted(unstored)[:5]}"
