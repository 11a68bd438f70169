"""Object-store output against a real S3-compatible server (moto server on 127.0.0.1): files are
spooled, uploaded in the Hive layout and read back by pyarrow's S3 filesystem; outages, the
spool quota (pause and drop_oldest) lose nothing that was acknowledged and write nothing twice."""

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import boto3
import paho.mqtt.client as mqtt
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pyarrow.fs as pafs
import pytest

from conftest import metrics, wait_for

BUCKET = "lake"
PREFIX = "fleet/v1"
KEY = re.compile(
    rf"^{PREFIX}/telemetry/date=\d{{4}}-\d{{2}}-\d{{2}}/hour=\d{{2}}/pytest-\d{{20}}-\d{{20}}\.parquet$"
)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Moto:
    """A moto S3 server process on a loopback port (started now or later, on a fixed port)."""

    def __init__(self, port=None):
        self.port = port or free_port()
        self.proc = None

    def start(self, bucket=True):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

        def up():
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/moto-api/", timeout=1)
                return True
            except OSError:
                return False

        wait_for("moto server", up)
        if bucket:
            self.s3().create_bucket(Bucket=BUCKET)
        return self

    def s3(self):
        return boto3.client(
            "s3", endpoint_url=f"http://127.0.0.1:{self.port}", region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )

    def keys(self, schema_files=False):
        """Data file keys (and tables' `_common_metadata` schema files when asked)."""
        keys = []
        for page in self.s3().get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            keys += [o["Key"] for o in page.get("Contents", [])]
        return sorted(k for k in keys if schema_files or not k.endswith("/_common_metadata"))

    def fs(self):
        return pafs.S3FileSystem(
            endpoint_override=f"127.0.0.1:{self.port}", scheme="http", region="us-east-1",
            access_key="testing", secret_key="testing",
        )

    def table(self, columns=("device_id", "seq")):
        dataset = ds.dataset(f"{BUCKET}/{PREFIX}/telemetry", filesystem=self.fs(), format="parquet",
                             partitioning="hive")
        return dataset.to_table(columns=list(columns))

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def aws_env(monkeypatch):
    for k in list(os.environ):
        if k.startswith("AWS_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    servers = []
    yield servers
    for m in servers:
        m.stop()


def s3_config(port, extra=""):
    return (
        f'[output]\nurl = "s3://{BUCKET}/{PREFIX}"\nrequest_timeout = "2s"\nretry_max_backoff = "1s"\n{extra}\n'
        f'[output.s3]\nendpoint = "http://127.0.0.1:{port}"\nallow_http = true\n'
        '[batch]\nmax_age = "200ms"\nmax_rows = 500\n'
    )


def publish(port, start, count, client_id="pub", qos=1):
    """Publishes readings seq = start .. start+count-1 with one mosquitto_pub (-l: one message
    per line); returns once every message is acknowledged (QoS 1 waits for each PUBACK)."""
    lines = "".join(json.dumps({"seq": s, "temp": 20 + s % 7}) + "\n" for s in range(start, start + count))
    subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", str(qos), "-i", client_id,
         "-t", f"sensors/{client_id}/telemetry", "-l"],
        input=lines, text=True, check=True, timeout=60,
    )


def uploaded_rows(moto):
    try:
        return moto.table().num_rows
    except (OSError, ValueError):
        return 0


def test_mqtt_rows_arrive_in_the_bucket_in_the_hive_layout(daemon_factory, aws_env):
    moto = Moto().start()
    aws_env.append(moto)
    d = daemon_factory(s3_config(moto.port))
    publish(d.port, 0, 1000, "dev-a")
    publish(d.port, 1000, 500, "dev-b")
    wait_for("1500 rows in the bucket", lambda: uploaded_rows(moto) == 1500, deadline=60)
    wait_for("an empty spool", lambda: metrics(d.admin)["fleetlake_spool_files"] == 0)
    keys = moto.keys()
    assert keys and all(KEY.match(k) for k in keys), keys
    table = moto.table(("device_id", "seq", "temp", "date", "hour"))
    assert sorted(table.column("seq").to_pylist()) == list(range(1500))
    assert set(table.column("device_id").to_pylist()) == {"dev-a", "dev-b"}
    assert str(table.schema.field("seq").type) == "double"
    assert str(table.schema.field("temp").type) == "double"
    m = metrics(d.admin)
    assert m["fleetlake_files_uploaded_total"] == len(keys)
    assert m["fleetlake_upload_bytes_total"] > 0
    assert m["fleetlake_upload_lag_seconds"] == 0
    spool = d.dir / "data" / "spool"
    assert not list(spool.rglob("*.parquet")), "uploaded files leave the spool"

    # A late column: the table's schema file in the bucket gains it before the file that holds
    # it, so pyarrow given that file reads every column of every file.
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(d.port), "-q", "1", "-i", "dev-c",
                    "-t", "sensors/dev-c/telemetry", "-m", json.dumps({"seq": 1500, "late": "yes"})],
                   check=True, timeout=20)
    wait_for("the late row in the bucket", lambda: uploaded_rows(moto) == 1501, deadline=60)
    assert f"{PREFIX}/telemetry/_common_metadata" in moto.keys(schema_files=True)
    t = f"{BUCKET}/{PREFIX}/telemetry"
    schema = pq.read_schema(f"{t}/_common_metadata", filesystem=moto.fs())
    table = ds.dataset(t, filesystem=moto.fs(), format="parquet", partitioning="hive", schema=schema).to_table()
    assert table.num_rows == 1501 and table.column("late").to_pylist().count("yes") == 1
    assert table.column_names[-2:] == ["date", "hour"]
    d.stop()


def test_an_outage_spools_keeps_acking_and_uploads_everything_once_after(daemon_factory, aws_env):
    moto = Moto().start()
    aws_env.append(moto)
    d = daemon_factory(s3_config(moto.port))
    publish(d.port, 0, 200, "dev-a")
    wait_for("200 rows uploaded", lambda: uploaded_rows(moto) == 200, deadline=60)

    os.kill(moto.proc.pid, signal.SIGSTOP)  # the store hangs: requests time out
    sent = 200
    peak_files = peak_bytes = 0
    started = time.monotonic()
    for i in range(10):
        publish(d.port, sent, 300, f"dev-{i % 3}")  # returns only after every PUBACK
        sent += 300
        m = metrics(d.admin)
        peak_files = max(peak_files, m["fleetlake_spool_files"])
        peak_bytes = max(peak_bytes, m["fleetlake_spool_bytes"])
    wait_for("the spool to hold the outage's files",
             lambda: metrics(d.admin)["fleetlake_spool_files"] >= 3, deadline=30)
    wait_for("three failed upload attempts", lambda: metrics(d.admin)[
        'fleetlake_upload_errors_total{kind="unavailable"}'] >= 3, deadline=60)
    m = metrics(d.admin)
    peak_files = max(peak_files, m["fleetlake_spool_files"])
    peak_bytes = max(peak_bytes, m["fleetlake_spool_bytes"])
    outage = time.monotonic() - started

    os.kill(moto.proc.pid, signal.SIGCONT)
    resumed = time.monotonic()
    wait_for(f"{sent} rows in the bucket", lambda: uploaded_rows(moto) == sent, deadline=90)
    wait_for("an empty spool", lambda: metrics(d.admin)["fleetlake_spool_files"] == 0)
    drained = time.monotonic() - resumed
    seqs = moto.table().column("seq").to_pylist()
    assert len(seqs) == sent and sorted(set(seqs)) == list(range(sent)), "every row exactly once"
    m = metrics(d.admin)
    failed = int(m['fleetlake_upload_errors_total{kind="unavailable"}'])
    print(f"\noutage: {sent} rows sent (all acked, {sent - 200} during a {outage:.1f} s outage), "
          f"spool peak {int(peak_files)} files / {int(peak_bytes)} bytes, {len(seqs)} rows in the bucket, "
          f"0 duplicates, backlog uploaded {drained:.1f} s after the store came back, "
          f"{int(m['fleetlake_files_uploaded_total'])} files uploaded, "
          f"{failed} failed attempts")
    d.stop()


def test_pause_quota_withholds_acks_until_the_store_is_back(daemon_factory, aws_env):
    moto = Moto()  # nothing listens on its port yet: every upload is refused
    aws_env.append(moto)
    d = daemon_factory(
        s3_config(moto.port, 'spool_max_bytes = "4KiB"\nspool_full = "pause"')
        + '[memory]\nbudget = "4MiB"\n[grpc]\nlisten = ""\n'
        + '[mqtt]\nlisten = "127.0.0.1:0"\nmax_packet_size = "64KiB"\n'
    )
    acked = set()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pauser")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.on_publish = lambda c, u, mid, rc, props: acked.add(mid)
    client.connect("127.0.0.1", d.port, keepalive=300)
    client.loop_start()
    sent = 0
    try:
        # Publish, at most 5,000 unacknowledged at a time, until acks stop: the spool is full,
        # buffers fill, the listener stops reading.
        last_progress = time.monotonic()
        last_acked = 0
        while time.monotonic() - last_progress < 3:
            assert sent < 200_000, "acks never stopped"
            if sent - len(acked) < 5000:
                for _ in range(200):
                    payload = json.dumps({"seq": sent, "pad": "x" * 100})
                    client.publish("sensors/pauser/telemetry", payload, qos=1)
                    sent += 1
            time.sleep(0.01)
            if len(acked) > last_acked:
                last_acked, last_progress = len(acked), time.monotonic()
        m = metrics(d.admin)
        assert len(acked) < sent, "some messages are not acknowledged while paused"
        assert m["fleetlake_spool_pauses_total"] >= 1
        assert m["fleetlake_spool_bytes"] >= 4096
        assert m["fleetlake_spool_files_dropped_total"] == 0, "pause never deletes"
        paused_acks = len(acked)

        moto.start()  # the store comes back: the spool drains, acks resume
        try:
            wait_for("every message acknowledged", lambda: len(acked) == sent, deadline=120)
        except AssertionError:
            m = metrics(d.admin)
            print(f"sent {sent}, acked {len(acked)}, paused at {paused_acks}, connected "
                  f"{client.is_connected()}, metrics:",
                  {k: v for k, v in m.items() if ("spool" in k or "upload" in k or "budget" in k) and v})
            raise
        wait_for(f"{sent} rows in the bucket", lambda: uploaded_rows(moto) == sent, deadline=120)
        seqs = moto.table().column("seq").to_pylist()
        assert sorted(seqs) == list(range(sent)), "each row exactly once"
        print(f"\npause: {sent} published, {paused_acks} acked while the store was down, "
              f"all {sent} acked and in the bucket after it came back")
    finally:
        client.loop_stop()
        client.disconnect()
    d.stop()


def test_drop_oldest_deletes_the_oldest_files_and_counts_them(daemon_factory, aws_env):
    moto = Moto()
    aws_env.append(moto)
    d = daemon_factory(
        s3_config(moto.port, 'spool_max_bytes = "8KiB"\nspool_full = "drop_oldest"')
        .replace("max_rows = 500", "max_rows = 100")
    )
    sent = 0
    for i in range(20):
        publish(d.port, sent, 100, f"dev-{i % 2}")  # every message is acknowledged
        sent += 100
    wait_for("files dropped", lambda: metrics(d.admin)["fleetlake_spool_files_dropped_total"] > 0)
    wait_for("every row spooled", lambda: metrics(d.admin)["fleetlake_rows_published_total"] == sent)
    m = metrics(d.admin)
    assert m["fleetlake_spool_bytes"] <= 8192 + 4096, "back under the quota (but the newest file)"
    dropped_rows = m["fleetlake_spool_rows_dropped_total"]
    assert dropped_rows > 0
    assert any("drop_oldest" in line and '"level":"WARN"' in line for line in d.lines)

    moto.start()
    wait_for("an empty spool", lambda: metrics(d.admin)["fleetlake_spool_files"] == 0, deadline=60)
    seqs = moto.table().column("seq").to_pylist()
    assert len(seqs) == len(set(seqs)), "no duplicates"
    assert len(seqs) + dropped_rows == sent, "every row is either in the bucket or counted as dropped"
    assert max(seqs) == sent - 1, "the newest rows survive"
    d.stop()


def test_a_file_above_the_threshold_goes_up_as_a_multipart_upload(daemon_factory, aws_env):
    moto = Moto().start()
    aws_env.append(moto)
    d = daemon_factory(
        s3_config(moto.port, 'multipart_threshold = "5MiB"')
        .replace("max_rows = 500", 'max_rows = 60000\nmax_bytes = "256MiB"\nmax_age = "30s"')
        .replace('max_age = "200ms"\n', "")
    )
    # 60,000 rows of incompressible text: one Parquet file of several MiB.
    lines = "".join(
        json.dumps({"seq": s, "blob": base64.b64encode(os.urandom(120)).decode()}) + "\n"
        for s in range(60000)
    )
    subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(d.port), "-q", "1", "-i", "big",
         "-t", "sensors/big/telemetry", "-l"],
        input=lines, text=True, check=True, timeout=120,
    )
    wait_for("60000 rows in the bucket", lambda: uploaded_rows(moto) == 60000, deadline=120)
    sizes = [o["Size"] for o in moto.s3().list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert max(sizes) > 5 << 20, sizes  # (memory pressure may cut a second, smaller file)
    assert any('"multipart":true' in line for line in d.lines), "sent as a multipart upload"
    assert sorted(moto.table().column("seq").to_pylist()) == list(range(60000))
    d.stop()


def test_check_config_probe_reports_a_missing_bucket_and_succeeds_on_a_real_one(tmp_path, aws_env):
    from conftest import binary

    moto = Moto().start(bucket=False)
    aws_env.append(moto)
    cfg = tmp_path / "f.toml"
    cfg.write_text(f'[node]\ndata_dir = "{tmp_path}"\n' + s3_config(moto.port))
    probe = [binary(), "check-config", "--probe", "--config", str(cfg)]
    missing = subprocess.run(probe, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 69, missing.stderr
    assert f"bucket `{BUCKET}` does not exist" in missing.stderr
    moto.s3().create_bucket(Bucket=BUCKET)
    ok = subprocess.run(probe, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "probe ok" in ok.stderr and "credentials from environment" in ok.stderr
    assert moto.keys() == [], "the probe object is deleted"
