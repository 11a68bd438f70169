"""The admin endpoint read by a real Prometheus text parser (prometheus_client)."""

import subprocess
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from conftest import metrics, wait_for


def test_metrics_parse_and_counters_move_as_messages_arrive(daemon_factory):
    # One row per file: every message is published at once.
    d = daemon_factory('[batch]\nmax_rows = 1')
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
    assert after['fleetlake_messages_received_total{qos="1",source="mqtt"}'] == 3
    assert after['fleetlake_messages_received_total{source="grpc"}'] == 0
    assert after["fleetlake_connections_open"] == 0  # mosquitto_pub disconnected

    subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(d.port), "-q", "1", "-i", "bad",
         "-t", "sensors/bad/telemetry", "-m", "not json"],
        check=True, timeout=20,
    )
    wait_for("4 files published", lambda: metrics(d.admin).get(
        'fleetlake_table_files_published_total{table="telemetry"}', 0) == 3
        and metrics(d.admin).get('fleetlake_table_files_published_total{table="_rejected"}', 0) == 1)
    last = metrics(d.admin)
    assert last['fleetlake_table_rows_published_total{table="telemetry"}'] == 3
    assert last['fleetlake_table_bytes_published_total{table="telemetry"}'] > 0
    assert last['fleetlake_messages_rejected_by_reason_total{reason="payload"}'] == 1
    assert last['fleetlake_messages_rejected_by_reason_total{reason="type_conflict"}'] == 0
    assert last["fleetlake_buffer_rows_pushed_total"] == 4
    assert last["fleetlake_buffer_rows_popped_total"] == 4
    assert last["fleetlake_encode_seconds_count"] == 4
    assert last['fleetlake_encode_seconds_bucket{le="+Inf"}'] == 4
    with urllib.request.urlopen(f"http://{d.admin}/readyz", timeout=10) as r:
        assert r.status == 200
    d.stop()
