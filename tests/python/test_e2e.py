"""End to end with real clients (mosquitto_pub, paho-mqtt) and real readers (DuckDB, pyarrow)."""

import json
import subprocess

import duckdb
import paho.mqtt.client as mqtt
import pyarrow.dataset as ds
import pyarrow as pa

from conftest import wait_for

TS = 1767225600123  # 2026-01-01T00:00:00.123Z


def pub(port, client_id, topic, payload, qos=1, version="mqttv311"):
    subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-V", version, "-q", str(qos),
         "-i", client_id, "-t", topic, "-m", payload],
        check=True, timeout=20,
    )


def query(lake, sql_tail, table="telemetry"):
    glob = f"{lake}/{table}/**/*.parquet"
    return duckdb.sql(
        f"SELECT * FROM read_parquet('{glob}', hive_partitioning = true, union_by_name = true) {sql_tail}"
    )


def test_mosquitto_pub_v311_and_v5_at_every_qos_is_read_back_by_duckdb(daemon_factory):
    d = daemon_factory()
    expected = []
    for version in ("mqttv311", "mqttv5"):
        for qos in (0, 1, 2):
            dev = f"thermo-{version[-1]}{qos}"
            payload = {"ts": TS, "temp": 21.5 + qos, "hum": 40 + qos, "ok": qos != 1, "fw": "1.2.0"}
            pub(d.port, dev, f"sensors/{dev}/telemetry", json.dumps(payload), qos, version)
            expected.append((dev, 21.5 + qos, 40 + qos, qos != 1, "1.2.0"))
    d.stop()
    rel = query(d.lake, "ORDER BY device_id")
    rows = rel.project("device_id, temp, hum, ok, fw").fetchall()
    assert rows == sorted(expected)
    types = dict(zip(rel.columns, (str(t) for t in rel.types)))
    assert types["time"] == "TIMESTAMP WITH TIME ZONE"
    assert types["received_at"] == "TIMESTAMP WITH TIME ZONE"
    assert (types["temp"], types["hum"], types["ok"], types["fw"]) == ("DOUBLE", "DOUBLE", "BOOLEAN", "VARCHAR")
    parts = query(d.lake, "").project("date::VARCHAR, hour::INTEGER, epoch_ms(time)").distinct().fetchall()
    assert parts == [("2026-01-01", 0, TS)]


def test_the_readme_quickstart_query_works(daemon_factory):
    d = daemon_factory()
    pub(d.port, "thermo-7", "sensors/thermo-7/telemetry",
        '{"ts": 1767225600123, "temp": 21.5, "hum": 40, "ok": true, "fw": "1.2.0"}')
    d.stop()
    rows = duckdb.sql(
        f"SELECT device_id, time, temp, hum, ok, fw FROM read_parquet('{d.lake}/**/*.parquet', "
        "hive_partitioning = true, union_by_name = true)"
    ).fetchall()
    assert len(rows) == 1
    assert rows[0][0] == "thermo-7" and rows[0][2:] == (21.5, 40, True, "1.2.0")


def test_paho_clients_publish_and_pyarrow_reads_exact_rows(daemon_factory):
    d = daemon_factory()
    for n, proto in enumerate((mqtt.MQTTv311, mqtt.MQTTv5, mqtt.MQTTv311)):
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"paho-{n}", protocol=proto)
        client.connect("127.0.0.1", d.port)
        client.loop_start()
        infos = [client.publish("plant/line1/reading", json.dumps({"seq": i, "v": i * 0.5}), qos=1)
                 for i in range(50)]
        for info in infos:
            info.wait_for_publish(timeout=20)
            assert info.is_published()
        client.disconnect()
        client.loop_stop()
    d.stop()
    table = ds.dataset(d.lake / "telemetry", format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 150
    assert sorted(set(table.column("device_id").to_pylist())) == ["paho-0", "paho-1", "paho-2"]
    assert table.schema.field("seq").type == pa.float64()  # every number is Float64
    assert table.schema.field("v").type == pa.float64()
    assert table.schema.field("time").type == pa.timestamp("us", tz="UTC")
    per_device = {}
    for dev, seq in zip(table.column("device_id").to_pylist(), table.column("seq").to_pylist()):
        per_device.setdefault(dev, []).append(seq)
    assert all(sorted(s) == list(range(50)) for s in per_device.values())


def test_fields_first_seen_later_and_int_then_float_are_queryable(daemon_factory):
    d = daemon_factory('[batch]\nmax_age = "300ms"')
    pub(d.port, "dev", "s/dev", json.dumps({"ts": TS, "v": 1}))
    wait_for("the first file", lambda: len(d.files()) == 1)
    pub(d.port, "dev", "s/dev", json.dumps({"ts": TS + 1, "v": 2.5, "extra": "late"}))
    d.stop()
    assert len(d.files()) == 2
    rel = query(d.lake, "ORDER BY time")
    assert rel.project("v, extra").fetchall() == [(1.0, None), (2.5, "late")]
    assert dict(zip(rel.columns, map(str, rel.types)))["v"] == "DOUBLE"


def test_bad_payloads_land_in_rejected_with_reason_and_raw_bytes(daemon_factory):
    d = daemon_factory()
    pub(d.port, "bad-1", "sensors/bad-1/telemetry", "{not json")
    pub(d.port, "bad-2", "sensors/bad-2/telemetry", "[1, 2]")
    pub(d.port, "ok", "sensors/ok/telemetry", '{"v": 1}')
    d.stop()
    rows = query(d.dir / "data", "ORDER BY device_id", table="_rejected").project(
        "device_id, topic, reason, payload").fetchall()
    assert [r[0] for r in rows] == ["bad-1", "bad-2"]
    assert "not valid JSON" in rows[0][2]
    assert rows[0][3] == b"{not json"
    assert "expected an object" in rows[1][2]
    assert query(d.lake, "").project("count(*)").fetchall() == [(1,)]


def test_delta_and_byte_stream_split_columns_read_back_exactly(daemon_factory):
    """Mostly-distinct numbers (counters, times, noisy floats) are written without a dictionary
    (DELTA_BINARY_PACKED for times, BYTE_STREAM_SPLIT for numbers, which are Float64): DuckDB and
    pyarrow read every value back exactly (integers up to 2^53 are exact in Float64)."""
    import pyarrow.parquet as pq
    d = daemon_factory()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="enc-1")
    c.connect("127.0.0.1", d.port)
    c.loop_start()
    sent = []
    for i in range(600):
        row = (TS + i * 1000, i * 7919 - 2**40, 21.5 + i / 3.0 + (-1) ** i * 1e-9, i % 3)
        sent.append(row)
        info = c.publish("sensors/enc-1/telemetry", json.dumps(
            {"ts": row[0], "counter": row[1], "temp": row[2], "level": row[3]}), qos=1)
    info.wait_for_publish(20)
    c.loop_stop()
    c.disconnect()
    d.stop()
    got = query(d.lake, "ORDER BY time").project("epoch_ms(time), counter, temp, level").fetchall()
    assert got == sent
    files = list(d.lake.rglob("*.parquet"))
    table = pa.concat_tables([pq.read_table(f) for f in files]).sort_by("time")
    assert table.column("counter").to_pylist() == [r[1] for r in sent]
    assert table.column("temp").to_pylist() == [r[2] for r in sent]
    encodings = {}
    for f in files:
        rg = pq.read_metadata(f).row_group(0)
        for i in range(rg.num_columns):
            encodings.setdefault(rg.column(i).path_in_schema, set()).update(rg.column(i).encodings)
    assert "BYTE_STREAM_SPLIT" in encodings["counter"] and "RLE_DICTIONARY" not in encodings["counter"]
    assert "DELTA_BINARY_PACKED" in encodings["time"]
    assert "BYTE_STREAM_SPLIT" in encodings["temp"]
    assert "RLE_DICTIONARY" in encodings["level"]
