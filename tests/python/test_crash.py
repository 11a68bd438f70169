"""Durability: SIGKILL the daemon at random moments while paho-mqtt publishes QoS 1, restart,
and check that every acknowledged message is in the Parquet output exactly once."""

import json
import random
import threading
import time

import duckdb
import paho.mqtt.client as mqtt
import pyarrow.parquet as pq

from conftest import wait_for

KILLS = 20
DEVICES = 3
# Small batches and segments, so kills land while files are published and segments rotate.
# Two tables filled at different rates: their batches are cut at different moments, so the
# checkpoint's per-table marks matter, not only its low-water mark.
CONFIG = """
[[tables]]
name = "fast"
topics = ["fast/{device_id}"]
[[tables]]
name = "slow"
topics = ["slow/{device_id}"]
[batch]
max_rows = 250
max_age = "300ms"
[wal]
segment_size = "1MiB"
"""


class Publisher:
    """Publishes {"dev", "seq"} readings at QoS 1 and records which ones were acknowledged."""

    def __init__(self, port, next_seq):
        self.next_seq = next_seq
        self.acked = set()
        self.sent = 0
        self.inflight = {}
        self.early = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"crash-{port}")
        self.client.max_inflight_messages_set(64)
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        # paho calls this holding its own lock: never wait here for a lock held around publish().
        with self.lock:
            key = self.inflight.pop(mid, None)
            if key is None:
                self.early[mid] = not reason_code.is_failure
            elif not reason_code.is_failure:
                self.acked.add(key)

    def _run(self):
        i = 0
        while not self.stop.is_set():
            dev = f"dev-{i % DEVICES}"
            seq = self.next_seq[dev]
            self.next_seq[dev] = seq + 1
            payload = json.dumps({"dev": dev, "seq": seq, "v": random.random()})
            table = "slow" if dev == "dev-0" else "fast"
            info = self.client.publish(f"{table}/{dev}", payload, qos=1)
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                break
            with self.lock:
                self.sent += 1
                if info.mid in self.early:
                    if self.early.pop(info.mid):
                        self.acked.add((dev, seq))
                else:
                    self.inflight[info.mid] = (dev, seq)
                backlog = len(self.inflight)
            i += 1
            if backlog > 200:
                time.sleep(0.001)

    def finish(self):
        self.stop.set()
        self.thread.join(timeout=10)
        self.client.loop_stop()
        with self.lock:
            return set(self.acked), self.sent


def test_no_acknowledged_message_is_lost_or_duplicated_across_sigkills(daemon_factory):
    rng = random.Random(20261127)
    next_seq = {f"dev-{i}": 0 for i in range(DEVICES)}
    acked = set()
    sent = 0
    for _ in range(KILLS):
        d = daemon_factory(CONFIG, dir_name="crash")
        pub = Publisher(d.port, next_seq)
        # Kill once some acks arrived, at a random moment after that.
        wait_for("first acks", lambda: len(pub.acked) > 0)
        time.sleep(rng.uniform(0.0, 0.5))
        d.kill()
        got, n = pub.finish()
        acked |= got
        sent += n

    d = daemon_factory(CONFIG, dir_name="crash")
    d.stop()
    files = sorted(d.lake.rglob("*.parquet"))
    for f in files:
        pq.read_metadata(f)  # every final-named file is a complete Parquet file
    assert not list(d.lake.rglob("*.tmp")), "temp files survive a restart"
    glob = f"{d.lake}/*/**/*.parquet"
    rows = duckdb.sql(
        f"SELECT dev, seq, count(*) AS n FROM read_parquet('{glob}', union_by_name = true) GROUP BY ALL"
    ).fetchall()
    found = {(dev, seq): n for dev, seq, n in rows}
    duplicates = {k: n for k, n in found.items() if n > 1}
    missing = acked - found.keys()
    print(
        f"\ncrash test: kills={KILLS} sent={sent} acked={len(acked)} found={len(found)} "
        f"duplicates={len(duplicates)} missing={len(missing)} files={len(files)}"
    )
    assert len(acked) > KILLS * 10, "the publisher got too few acks for the test to mean much"
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:5]}"
    assert not duplicates, f"{len(duplicates)} messages stored twice, e.g. {list(duplicates.items())[:5]}"
