"""The admin endpoint read by a real Prometheus text parser (prometheus_client)."""

import subprocess
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from conftest import wait_for


def metrics(admin):
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=10) as r:
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert "device" not in sample.labels and "topic" not in sample.labels
            values[sample.name] = sample.value
    return values


def test_metrics_parse_and_counters_move_as_messages_arrive(daemon_factory):
    d = daemon_factory()
    before = metrics(d.admin)
    assert before["fleetlake_ready"] == 1.0
    for i in range(3):
        subprocess.run(
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(d.port), "-q", "1", "-i", f"m{i}",
             "-t", f"sensors/m{i}/telemetry", "-m", '{"v": 1}'],
            check=True, timeout=20,
        )
    after = metrics(d.admin)
    assert after["fleetlake_messages_qos1_total"] - before["fleetlake_messages_qos1_total"] == 3
    assert after["fleetlake_wal_records_total"] >= 3
    assert after["fleetlake_memory_budget_bytes"] > 0
    assert after["fleetlake_wal_sync_seconds_count"] >= 3  # each mosquitto_pub waited for one
    assert after["fleetlake_wal_sync_seconds_sum"] > 0
    with urllib.request.urlopen(f"http://{d.admin}/readyz", timeout=10) as r:
        assert r.status == 200
    d.stop()
