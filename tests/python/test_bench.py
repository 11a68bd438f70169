"""The shipped load generator (fleetlake-bench) against the real daemon: every message it
counts as acknowledged is in Parquet, at each QoS and MQTT version, and idle mode holds its
connections."""

import os
import re
from pathlib import Path

import duckdb
import pytest
import subprocess

from conftest import binary, metrics, wait_for


def bench():
    return str(Path(binary()).with_name("fleetlake-bench"))


def summary(out):
    return dict(re.findall(r"(\S+?)=(\S+)", out.strip().splitlines()[-1]))


@pytest.mark.parametrize("qos,protocol,payload", [(0, "3.1.1", "reading"), (1, "5", "doc"), (2, "3.1.1", "reading"), (2, "5", "reading")])
def test_every_acknowledged_message_is_a_row(daemon_factory, qos, protocol, payload):
    d = daemon_factory()
    r = subprocess.run([bench(), "mqtt", "--addr", f"127.0.0.1:{d.port}", "--conns", "3", "--qos", str(qos),
                        "--protocol", protocol, "--payload", payload, "--messages", "3001", "--window", "64"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    s = summary(r.stdout)
    assert (s["messages"], s["connected"], s["failed_conns"], s["errors"]) == ("3001", "3", "0", "0")
    assert s["acked"] == ("0" if qos == 0 else "3001")
    if qos:
        assert float(s["p99.9"]) >= float(s["p99"]) >= float(s["ack_ms_p50"]) > 0
    assert re.search(r"^t=1s connected=", r.stderr, re.M) or float(s["seconds"]) < 1.5, "progress lines"
    d.stop()
    # Each connection ends with one fence message ({"fence": true}) that is a row too.
    rows = duckdb.sql(f"SELECT count(*), count(DISTINCT device_id), count(seq) FROM "
                      f"read_parquet('{d.lake}/**/*.parquet', union_by_name = true)").fetchall()[0]
    assert rows == (3001 + 3, 3, 3001)


def test_idle_mode_holds_connections(daemon_factory):
    d = daemon_factory()
    p = subprocess.Popen([bench(), "mqtt", "--addr", f"127.0.0.1:{d.port}", "--conns", "300", "--idle",
                          "--duration", "3s", "--quiet"], stdout=subprocess.PIPE, text=True)
    wait_for("300 idle connections", lambda: metrics(d.admin)["fleetlake_connections_open"] == 300)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0
    assert summary(out)["connected"] == "300"
    wait_for("all closed", lambda: metrics(d.admin)["fleetlake_connections_open"] == 0)
    d.stop()
