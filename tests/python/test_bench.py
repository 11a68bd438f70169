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


def test_benchmark_suite_smoke():
    """benches/suite.py --smoke: every scenario runs against a fresh daemon and Parquet holds every
    acknowledged message (the suite exits 1 otherwise). Timings are printed, not checked."""
    suite = Path(__file__).resolve().parents[2] / "benches" / "suite.py"
    r = subprocess.run(["python3", str(suite), "--smoke", "--bin-dir", str(Path(binary()).parent)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    table = [l for l in r.stdout.splitlines() if l.startswith("| ") and not l.startswith("| scenario")]
    assert len(table) == 10, r.stdout
    assert not any("FAILED" in l for l in table)
    assert re.search(r"start to ready: \d+ ms", r.stdout)
    assert re.search(r"^200 idle connections .* KiB per connection$", r.stdout, re.M), r.stdout
    grpc = [l for l in table if l.startswith("| gRPC batch 1,000")][0].split("|")
    assert grpc[4].strip() == "20,000", grpc  # rows in Parquet
    one = [l for l in table if l.startswith("| QoS 1, 1 publisher, 1 in flight")][0].split("|")
    assert one[4].strip() == "301", one  # 300 messages and the fence
    assert re.fullmatch(r"[\d.]+ / [\d.]+ / [\d.]+", one[6].strip()), one  # ack ms p50 / p99 / p99.9
    assert float(one[7].strip().replace(",", "")) > 0, one  # fsyncs/s


@pytest.mark.parametrize("mode", ["unary", "stream"])
def test_grpc_load_every_acknowledged_point_is_a_row(daemon_factory, mode):
    d = daemon_factory()
    r = subprocess.run([bench(), "grpc", "--addr", d.grpc, "--points", "5001", "--batch", "100", "--conns", "2",
                        "--inflight", "3", "--devices", "7"] + (["--stream"] if mode == "stream" else []),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    s = summary(r.stdout)
    assert (s["kind"], s["mode"], s["messages"], s["acked"], s["errors"]) == ("grpc", mode, "5001", "5001", "0")
    assert float(s["p99"]) >= float(s["ack_ms_p50"]) > 0
    d.stop()
    rows = duckdb.sql(f"SELECT count(*), count(DISTINCT device_id), count(DISTINCT seq) FROM "
                      f"read_parquet('{d.lake}/**/*.parquet')").fetchall()[0]
    assert rows == (5001, 7, 5001)


def test_grpc_load_token_and_refusals(daemon_factory, tmp_path):
    """--token sends `authorization: Bearer …`; refused requests are counted as errors and the exit
    status says so."""
    import hashlib
    tokens = tmp_path / "tokens"
    tokens.write_text(f"gateway-svc:sha256:{hashlib.sha256(b'bench-secret').hexdigest()}\n")
    d = daemon_factory(f'[grpc.auth]\ntokens_file = "{tokens}"\nservices = ["gateway-svc"]\nallow_anonymous = false\n')
    args = [bench(), "grpc", "--addr", d.grpc, "--points", "10", "--batch", "10", "--quiet"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=60)
    s = summary(r.stdout)
    assert r.returncode == 1 and (s["errors"], s["acked"]) == ("10", "0"), r.stdout
    assert "no credentials" in r.stdout, r.stdout
    r = subprocess.run(args + ["--token", "bench-secret"], capture_output=True, text=True, timeout=60)
    s = summary(r.stdout)
    assert r.returncode == 0 and (s["errors"], s["acked"]) == ("0", "10"), r.stdout


@pytest.mark.parametrize("qos,protocol", [(1, "3.1.1"), (2, "5")])
def test_subscriber_mode_counts_every_delivery(daemon_factory, qos, protocol):
    """`--subscribers`: what benches/broker.py measures (deliveries/s, publish → deliver)."""
    d = daemon_factory()
    r = subprocess.run([bench(), "mqtt", "--addr", f"127.0.0.1:{d.port}", "--conns", "2", "--qos", str(qos),
                        "--protocol", protocol, "--messages", "2000", "--subscribers", "3",
                        "--sub-filter", "sensors/#", "--quiet"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    s = summary(r.stdout)
    assert s["delivered"] == "6000", s
    assert float(s["deliver_ms_p99"]) >= float(s["deliver_ms_p50"]) > 0
    # The bench times its own stamped messages; each publisher's closing fence (QoS 1) is
    # delivered too.
    m = metrics(d.admin)
    assert m[f"fleetlake_broker_delivered_qos{qos}_total"] + (0 if qos == 1 else m["fleetlake_broker_delivered_qos1_total"]) == 6006
