"""Smoke test of a cross-built binary, run by `tests/cross.sh` for each target it builds (under
qemu-user for a foreign architecture); skipped in the plain suite, which has no such binary.

The binary starts with no flags on its built-in default config (MQTT on 127.0.0.1:1883, data
under ./fleetlake-data), takes `mosquitto_pub` messages from the host at QoS 1 (every PUBACK
counted), flushes on SIGTERM and exits 0, and the host's DuckDB reads back exactly the rows
published, with their types. `--version` names the target triple. The idle RSS is printed
(under emulation it includes qemu's own memory and translation cache: indicative only).

Environment (set by tests/cross.sh): FLEETLAKE_CROSS_BIN (the binary), FLEETLAKE_CROSS_TARGET
(its triple), FLEETLAKE_CROSS_RUNNER (the emulator command line, empty for a native binary).
"""

import json
import os
import shlex
import signal
import subprocess

import pytest

from conftest import follow_log, port_free, wait_for

CROSS_BIN = os.environ.get("FLEETLAKE_CROSS_BIN", "")
TARGET = os.environ.get("FLEETLAKE_CROSS_TARGET", "")
RUNNER = shlex.split(os.environ.get("FLEETLAKE_CROSS_RUNNER", ""))

pytestmark = pytest.mark.skipif(not CROSS_BIN, reason="tests/cross.sh runs this with a cross-built binary")

# Emulation is 5-20x slower than native: generous deadlines (waits end as soon as the condition holds).
DEADLINE = 120.0
DEFAULT_PORTS = (1883, 50051, 9464)
COUNT = 200
BASE_TS = 1767225600000  # 2026-01-01T00:00:00Z, ms


def command(*args):
    return RUNNER + [CROSS_BIN, *args]


def reading(i):
    return {"ts": BASE_TS + i, "n": i, "temp": 20.5 + i * 0.25, "ok": i % 2 == 0, "fw": f"1.2.{i}"}


def test_version_names_the_target():
    out = subprocess.run(command("--version"), capture_output=True, text=True, timeout=DEADLINE)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("fleetlake "), out.stdout
    assert f"; target {TARGET};" in out.stdout, out.stdout
    print(f"\n{TARGET}: {out.stdout.strip()}")


def test_default_config_takes_mosquitto_pub_and_flushes_on_sigterm(tmp_path):
    import duckdb

    for port in DEFAULT_PORTS:
        assert port_free(port), f"127.0.0.1:{port} is taken: the default config needs it"
    env = {k: v for k, v in os.environ.items() if k != "RUST_LOG"}
    daemon = subprocess.Popen(command(), cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log, ready = follow_log(daemon)
    try:
        wait_for("the daemon to get ready (or to exit)",
                 lambda: ready.is_set() or daemon.poll() is not None, DEADLINE)
        assert ready.is_set(), f"exited ({daemon.poll()}) before ready:\n" + "".join(log[-40:])
        with open(f"/proc/{daemon.pid}/status") as f:
            rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        runner = RUNNER[0] if RUNNER else "native"
        print(f"\n{TARGET}: idle RSS after start {rss / 1024:.1f} MiB ({runner}; indicative)")

        # One connection, COUNT lines at QoS 1; -d prints each PUBACK the daemon sends.
        lines = "".join(json.dumps(reading(i)) + "\n" for i in range(COUNT))
        pub = subprocess.run(
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", "1883", "-i", "gw-probe", "-q", "1", "-d",
             "-t", "sensors/gw-probe/telemetry", "-l"],
            input=lines, capture_output=True, text=True, timeout=DEADLINE)
        assert pub.returncode == 0, pub.stderr
        acks = pub.stdout.count("received PUBACK")
        assert acks == COUNT, f"{acks} PUBACKs for {COUNT} messages:\n{pub.stdout[-2000:]}"

        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=DEADLINE) == 0, "SIGTERM must flush and exit 0:\n" + "".join(log[-30:])
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    wait_for("the stop line", lambda: any("fleetlake stopped" in line for line in log))

    glob = str(tmp_path / "fleetlake-data" / "lake" / "telemetry" / "**" / "*.parquet")
    rel = duckdb.sql(f"""
        SELECT device_id, epoch_ms(time) AS ts, n, temp, ok, fw
        FROM read_parquet('{glob}', hive_partitioning = true, union_by_name = true)
        ORDER BY n""")
    types = dict(zip(rel.columns, [str(t) for t in rel.types]))
    # JSON numbers are DOUBLE columns on the default config (README "What gets written").
    assert types == {"device_id": "VARCHAR", "ts": "BIGINT", "n": "DOUBLE", "temp": "DOUBLE",
                     "ok": "BOOLEAN", "fw": "VARCHAR"}, types
    want = [("gw-probe", r["ts"], r["n"], r["temp"], r["ok"], r["fw"])
            for r in map(reading, range(COUNT))]
    assert rel.fetchall() == want
