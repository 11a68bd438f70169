"""Declared schemas (`[[tables]] columns`): declared types hold (int64 exact past 2^53, a
timestamp from an RFC 3339 string, a renamed nested field), a strict table refuses unknown
fields into `_rejected`, a missing required field goes there too, a `drop` table leaves unknown
fields out and counts them; check-config names a bad type's key; a declaration that contradicts
the types files already hold stops the start."""

import subprocess

import duckdb
import pyarrow.dataset as ds

from conftest import binary, metrics, publish_json, wait_for

TABLES = """
[[tables]]
name = "readings"
topics = ["sensors/{device_id}/readings"]
unknown_fields = "reject"
columns = [
  { name = "temp", type = "float64", required = true },
  { name = "count", type = "%s" },
  { name = "fw", type = "string" },
  { name = "site", type = "string", from = "meta.site" },
  { name = "at", type = "timestamp" },
]

[[tables]]
name = "loose"
topics = ["loose/{device_id}"]
unknown_fields = "drop"
columns = [{ name = "v", type = "float64" }]
"""

BIG = 2**53 + 1  # not exact in a float64


def test_declared_types_strict_and_drop_tables(daemon_factory):
    d = daemon_factory(TABLES % "int64", dir_name="n")
    publish_json(d.port, "r-1", "sensors/r-1/readings", [
        {"temp": 21.5, "count": BIG, "fw": "1.2", "meta": {"site": "north"}, "at": "2026-01-01T00:00:01Z"},
        {"temp": 20, "count": 7.0},
        {"temp": 20, "extra": 1},  # not declared: refused
        {"count": 1},  # required temp missing
        {"temp": "hot"},  # a string for a float64
        {"temp": 19, "count": 1.5},  # a fraction for an int64
    ])
    publish_json(d.port, "l-1", "loose/l-1", [{"v": 1, "junk": "x", "more": True}, {"v": 2}])
    wait_for("the dropped fields counted", lambda: metrics(d.admin)["fleetlake_fields_dropped_total"] == 2)
    wait_for("the refusals counted",
             lambda: metrics(d.admin)["fleetlake_messages_rejected_by_reason_total{reason=\"type_conflict\"}"] == 2)
    m = metrics(d.admin)
    d.stop()

    table = ds.dataset(d.lake / "readings", format="parquet", partitioning="hive").to_table()
    assert table.column_names[:8] == ["time", "received_at", "device_id", "temp", "count", "fw", "site", "at"]
    types = {f.name: str(f.type) for f in table.schema}
    assert (types["temp"], types["count"], types["fw"], types["site"], types["at"]) == (
        "double", "int64", "string", "string", "timestamp[us, tz=UTC]")
    rows = sorted(table.select(["temp", "count", "fw", "site", "at"]).to_pylist(), key=lambda r: r["temp"])
    assert [r["at"] and r["at"].isoformat() for r in rows] == [None, "2026-01-01T00:00:01+00:00"]
    assert [{k: r[k] for k in ("temp", "count", "fw", "site")} for r in rows] == [
        {"temp": 20.0, "count": 7, "fw": None, "site": None},
        {"temp": 21.5, "count": BIG, "fw": "1.2", "site": "north"}]

    loose = ds.dataset(d.lake / "loose", format="parquet", partitioning="hive").to_table()
    assert loose.num_rows == 2 and "junk" not in loose.column_names and "more" not in loose.column_names
    assert m["fleetlake_fields_dropped_total"] == 2

    rejected = duckdb.sql(
        f"SELECT reason FROM read_parquet('{d.rejected}/**/*.parquet') ORDER BY reason").fetchall()
    assert [r[0] for r in rejected] == [
        'field `extra` is not a declared column of table `readings` (unknown_fields = "reject")',
        "required field `temp` is missing or null",
        "type conflict: column `count` is int64, this value is float64",
        "type conflict: column `temp` is float64, this value is string",
    ]
    by_reason = lambda r: m[f'fleetlake_messages_rejected_by_reason_total{{reason="{r}"}}']
    assert (by_reason("unknown_field"), by_reason("missing_field"), by_reason("type_conflict")) == (1, 1, 2)

    # Declaring `count` as another type than the files hold stops the start (exit 78), naming it.
    config = d.dir / "fleetlake.toml"
    config.write_text(config.read_text().replace('type = "int64"', 'type = "float64"'))
    run = subprocess.run([binary(), "run", "--config", str(config)], capture_output=True, text=True, timeout=20)
    assert run.returncode == 78, run.stderr
    assert "column `count` is declared float64 but its files already hold it as int64" in run.stderr


def test_check_config_names_the_key_of_an_unknown_type(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text(TABLES % "decimal")
    run = subprocess.run([binary(), "check-config", "--config", str(config)],
                         capture_output=True, text=True, timeout=20)
    assert run.returncode != 0
    assert "tables[0].columns[1].type" in run.stderr and "decimal" in run.stderr, run.stderr
