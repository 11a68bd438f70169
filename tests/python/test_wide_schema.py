"""A device that invents a field name per message (keys by serial number or timestamp) must not
blow the memory budget: a table's columns are bounded (`batch.max_columns`), the messages past
the bound land in `_rejected` with the reason, counted, and memory stays bounded."""

import json

import duckdb
import paho.mqtt.client as mqtt
import pyarrow.parquet as pq

from conftest import metrics, publish_json, wait_for

MESSAGES = 20_000


def test_a_new_field_per_message_is_bounded_by_max_columns(daemon_factory):
    d = daemon_factory('[batch]\nmax_columns = 1000\n[memory]\nbudget = "32MiB"')
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="keys-1")
    c.max_inflight_messages_set(1000)
    c.connect("127.0.0.1", d.port)
    c.loop_start()
    for i in range(MESSAGES):
        info = c.publish("sensors/keys-1/telemetry", json.dumps({"seq": i, f"k{i}": 1.0}), qos=1)
    info.wait_for_publish(60)
    assert info.is_published()
    c.loop_stop()
    c.disconnect()
    # Refusals are counted by the batcher, just after the acks: wait for them.
    wait_for("the refusals counted", lambda: metrics(d.admin).get(
        'fleetlake_messages_rejected_by_reason_total{reason="too_many_columns"}') == MESSAGES - 999)
    counted = metrics(d.admin)
    d.stop()

    # `seq` plus 999 keys fill the 1,000 columns; every later message goes to `_rejected` whole.
    accepted = 999
    widest = max(pq.read_metadata(f).num_columns for f in d.files())
    assert widest <= 3 + 1000, widest
    rows = duckdb.sql(f"SELECT count(*) FROM read_parquet('{d.lake}/telemetry/**/*.parquet', "
                      "union_by_name = true)").fetchall()[0][0]
    assert rows == accepted
    rejected = duckdb.sql(f"SELECT count(*), count(*) FILTER (reason LIKE '%past batch.max_columns (1000)') "
                          f"FROM read_parquet('{d.rejected}/**/*.parquet')").fetchall()[0]
    assert rejected == (MESSAGES - accepted, MESSAGES - accepted), rejected
    assert counted['fleetlake_messages_rejected_by_reason_total{reason="too_many_columns"}'] == MESSAGES - accepted
    warned = [line for line in d.lines if "batch.max_columns columns" in line]
    assert len(warned) == 1, "logged once per table"

    stopped = [json.loads(line) for line in d.lines if "fleetlake stopped" in line][-1]
    peak_mib = stopped["peak_rss_kib"] / 1024
    print(f"\nwide schema: {MESSAGES} messages, a new key each, 32 MiB budget: peak RSS {peak_mib:.0f} MiB")
    # Before the bound: 3.7 GB with a 64 MiB budget. Debug build, budget + fixed overhead.
    assert peak_mib < 32 + 200, peak_mib


def test_a_steady_stream_of_1000_field_documents_stays_within_the_memory_bound(daemon_factory):
    """1,000 fields a document fill `batch.max_columns`; one document in 100 brings a field
    more and goes to `_rejected` whole. Peak RSS stays under the documented bound:
    1.5 x memory.budget + 30 MiB + 64 KiB per column of the widest table (README, "Backpressure, not loss")."""
    import random

    docs, fields, budget_mib, max_columns = 1500, 1000, 32, 1000
    d = daemon_factory(f'[batch]\nmax_columns = {max_columns}\n[memory]\nbudget = "{budget_mib}MiB"')
    rng = random.Random(7)
    docs_sent = []
    for i in range(docs):
        doc = {f"f{k}": rng.random() for k in range(fields)}
        if i % 100 == 99:
            doc["extra"] = True  # column 1,001: refused
        docs_sent.append(doc)
    publish_json(d.port, "wide-1", "sensors/wide-1/telemetry", docs_sent)
    # Refusals are counted by the batcher, just after the acks: wait for them.
    wait_for("the refusals counted", lambda: metrics(d.admin).get(
        'fleetlake_messages_rejected_by_reason_total{reason="too_many_columns"}') == docs // 100)
    counted = metrics(d.admin)
    d.stop()

    refused = docs // 100
    rows = duckdb.sql(f"SELECT count(*), count(f999) FROM read_parquet("
                      f"'{d.lake}/telemetry/**/*.parquet', union_by_name = true)").fetchall()[0]
    assert rows == (docs - refused, docs - refused)
    assert max(pq.read_metadata(f).num_columns for f in d.files()) == 3 + max_columns
    rejected = duckdb.sql(f"SELECT count(*) FROM read_parquet('{d.rejected}/**/*.parquet') "
                          "WHERE reason LIKE 'field `extra` would be column 1001%'").fetchall()[0][0]
    assert rejected == refused
    assert counted['fleetlake_messages_rejected_by_reason_total{reason="too_many_columns"}'] == refused

    stopped = [json.loads(line) for line in d.lines if "fleetlake stopped" in line][-1]
    peak_mib = stopped["peak_rss_kib"] / 1024
    bound = 1.5 * budget_mib + 30 + max_columns * 64 / 1024
    print(f"\n1,000-field documents: {docs} at a {budget_mib} MiB budget: peak RSS {peak_mib:.0f} MiB (bound {bound:.0f})")
    assert peak_mib < bound, (peak_mib, bound)
