"""A column keeps one type forever: in every file that any node writes into one folder, across
restarts, whatever order integers and fractions arrive in; pyarrow's dataset and Polars'
scan read the folder with no unify or cast options; a value of another kind lands in
`_rejected` and nowhere else."""

import json

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from conftest import metrics, publish_json, wait_for

TS = 1767225600123  # 2026-01-01T00:00:00.123Z
TOPIC = "sensors/{}/telemetry"


def reading(i, v, fw="1.0"):
    return {"ts": TS + i, "v": v, "fw": fw, "ok": i % 2 == 0}


def test_a_number_column_has_one_type_across_files_restarts_and_nodes(daemon_factory, tmp_path):
    lake = tmp_path / "lake"
    config = f'[output]\nurl = "{lake}"\n[batch]\nmax_age = "200ms"'
    files = lambda: sorted((lake / "telemetry").rglob("*.parquet"))

    # Node A: an integer first (one file), then a fraction (a second file).
    a = daemon_factory(config, dir_name="a", node_id="node-a")
    publish_json(a.port, "dev-1", TOPIC.format("dev-1"), [reading(0, 1)])
    wait_for("the first file", lambda: len(files()) == 1)
    publish_json(a.port, "dev-1", TOPIC.format("dev-1"), [reading(1, 2.5)])
    wait_for("the second file", lambda: len(files()) == 2)
    a.stop()
    stored = json.loads((a.dir / "data" / "schema" / "telemetry.json").read_text())
    assert stored == {"format": 1, "table": "telemetry", "columns": [
        {"name": "v", "type": "float64"}, {"name": "fw", "type": "string"}, {"name": "ok", "type": "bool"}]}

    # Node A again, after a restart: a string first for the number column (the stored schema
    # refuses it), then an integer.
    a = daemon_factory(config, dir_name="a", node_id="node-a")
    publish_json(a.port, "dev-1", TOPIC.format("dev-1"), [reading(2, "hot"), reading(3, 3)])
    wait_for("the conflict counted",
             lambda: metrics(a.admin)['fleetlake_messages_rejected_by_reason_total{reason="type_conflict"}'] == 1)
    a.stop()

    # Node B: its own data dir, the same output folder; a fraction first this time.
    b = daemon_factory(config, dir_name="b", node_id="node-b")
    publish_json(b.port, "dev-2", TOPIC.format("dev-2"), [reading(4, 4.5, "1.1")])
    wait_for("node b's file", lambda: any("node-b" in f.name for f in files()))
    publish_json(b.port, "dev-2", TOPIC.format("dev-2"), [reading(5, 5, "1.1")])
    b.stop()

    # Every file: the same columns with the same types.
    schemas = {f.name: {fl.name: str(fl.type) for fl in pq.read_schema(f)} for f in files()}
    assert len(schemas) >= 4
    want = {"time": "timestamp[us, tz=UTC]", "received_at": "timestamp[us, tz=UTC]",
            "device_id": "string", "v": "double", "fw": "string", "ok": "bool"}
    assert all(s == want for s in schemas.values()), schemas

    # pyarrow's dataset over the folder (schema from one file, no unify options).
    table = ds.dataset(lake / "telemetry", format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 5
    assert table.schema.field("v").type == pa.float64()
    assert sorted(table.column("v").to_pylist()) == [1.0, 2.5, 3.0, 4.5, 5.0]
    # Polars' scan over the glob.
    df = pl.scan_parquet(f"{lake}/telemetry/**/*.parquet", hive_partitioning=True).collect()
    assert df.height == 5
    assert df.schema["v"] == pl.Float64
    assert dict(df.group_by("device_id").agg(pl.col("v").sum()).iter_rows()) == {"dev-1": 6.5, "dev-2": 9.5}

    # The string is in `_rejected`, with the column named, and nowhere else.
    rejected = duckdb.sql(
        f"SELECT reason, payload FROM read_parquet('{a.rejected}/**/*.parquet')").fetchall()
    assert len(rejected) == 1
    reason, payload = rejected[0]
    assert reason == "type conflict: column `v` is float64, this value is string", reason
    assert json.loads(bytes(payload))["v"] == "hot"
    assert "hot" not in table.column("fw").to_pylist()
    # `_rejected` sits beside the lake, not in it: a whole-lake glob reads the table's rows only.
    assert not (lake / "_rejected").exists()
    whole = duckdb.sql(f"SELECT count(*) FROM read_parquet('{lake}/**/*.parquet', union_by_name = true)")
    assert whole.fetchall() == [(5,)]
    assert pl.scan_parquet(f"{lake}/**/*.parquet", missing_columns="insert").collect().height == 5
