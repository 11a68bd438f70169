"""Every reader, every column: a lake written in rounds (a late column, nested fields, a
declared timestamp, `_rejected` rows, a restart) is read by DuckDB, pyarrow, Polars, DataFusion
and Spark with README's "Reading the lake" block, run as written (only `t` points at this lake),
each giving the exact row count, rows per device and column sums."""

import re
import shutil
from pathlib import Path

import duckdb
import pytest

from conftest import publish_json

TS = 1767225600000  # 2026-01-01T00:00:00Z, ms
CONFIG = """
[[tables]]
name = "telemetry"
topics = ["sensors/{device_id}/telemetry"]
columns = [{ name = "seen", type = "timestamp" }]
[batch]
max_age = "100ms"
"""


def readings(device, start, n, late):
    docs = []
    for i in range(start, start + n):
        doc = {"ts": TS + i * 60_000, "v": i * 0.5, "meta": {"fw": f"1.{i % 3}", "ok": i % 2 == 0}}
        if late:
            doc["late"] = i
            doc["seen"] = f"2026-01-01T00:{i % 60:02d}:00Z"
        docs.append(doc)
    return docs


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    """The table folder, and what was written into it: {device: [docs]}."""
    from conftest import Daemon

    tmp = tmp_path_factory.mktemp("readers")
    sent = {}

    def send(d, device, docs):
        publish_json(d.port, device, f"sensors/{device}/telemetry", docs)
        sent.setdefault(device, []).extend(docs)

    d = Daemon(tmp / "node", CONFIG)
    send(d, "dev-1", readings("dev-1", 0, 40, late=False))  # round 1: no `late`, no `seen`
    send(d, "dev-2", readings("dev-2", 0, 25, late=False))
    d.stop()
    d = Daemon(tmp / "node", CONFIG)
    send(d, "dev-2", readings("dev-2", 25, 30, late=True))  # round 2: the late column
    publish_json(d.port, "dev-2", "sensors/dev-2/telemetry", ["not json", '{"v": "a string"}'])
    d.stop()
    d = Daemon(tmp / "node", CONFIG)
    send(d, "dev-3", readings("dev-3", 0, 35, late=True))  # round 3, after a restart
    d.stop()
    assert len(list((d.rejected).rglob("*.parquet"))) >= 1
    return d.lake / "telemetry", sent


def expected(sent):
    rows = {dev: len(docs) for dev, docs in sent.items()}
    v = sum(doc["v"] for docs in sent.values() for doc in docs)
    late = sum(doc.get("late", 0) for docs in sent.values() for doc in docs)
    seen = sum(1 for docs in sent.values() for doc in docs if "seen" in doc)
    fw = sum(1 for docs in sent.values() for doc in docs if doc["meta"]["fw"] == "1.1")
    return sum(rows.values()), rows, v, late, seen, fw


@pytest.fixture(scope="module")
def readers(lake):
    """What README's block leaves behind: rel (DuckDB), table (pyarrow), df (Polars), ctx
    (DataFusion), sdf (Spark)."""
    if not shutil.which("java"):
        pytest.skip("Spark needs Java 17 (tests/run.sh installs it)")
    from pyspark.sql import SparkSession

    t, _ = lake
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("### Reading the lake"):]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 't = "fleetlake-data/lake/telemetry"\n' in block
    block = block.replace('t = "fleetlake-data/lake/telemetry"', f"t = {str(t)!r}")
    # The block's getOrCreate() takes this session: local, on loopback, no web UI.
    spark = (SparkSession.builder.master("local[1]").appName("fleetlake-readers")
             .config("spark.driver.bindAddress", "127.0.0.1").config("spark.driver.host", "127.0.0.1")
             .config("spark.ui.enabled", "false").config("spark.sql.session.timeZone", "UTC")
             .getOrCreate())
    names = {}
    try:
        exec(compile(block, "README.md (Reading the lake)", "exec"), names)
        yield names
    finally:
        spark.stop()


def test_duckdb(lake, readers):
    _, sent = lake
    rel = readers["rel"]
    got = duckdb.sql("""SELECT count(*), sum(v), sum(late), count(seen), count(*) FILTER ("meta.fw" = '1.1')
                        FROM rel""").fetchall()[0]
    per_device = dict(duckdb.sql("SELECT device_id, count(*) FROM rel GROUP BY ALL").fetchall())
    total, rows, v, late, seen, fw = expected(sent)
    assert (got, per_device) == ((total, v, late, seen, fw), rows)


def test_pyarrow(lake, readers):
    _, sent = lake
    table = readers["table"]
    total, rows, v, late, seen, fw = expected(sent)
    assert table.num_rows == total
    devices = table.column("device_id").to_pylist()
    assert {d: devices.count(d) for d in set(devices)} == rows
    assert sum(table.column("v").to_pylist()) == pytest.approx(v)
    assert sum(x for x in table.column("late").to_pylist() if x is not None) == late
    assert table.column("seen").null_count == total - seen
    assert table.column("meta.fw").to_pylist().count("1.1") == fw
    assert table.column("hour").to_pylist()[0] is not None


def test_polars(lake, readers):
    import polars as pl

    _, sent = lake
    df = readers["df"]
    total, rows, v, late, seen, fw = expected(sent)
    assert df.height == total
    assert dict(df.group_by("device_id").len().iter_rows()) == rows
    assert df["v"].sum() == pytest.approx(v)
    assert df["late"].sum() == late
    assert df["seen"].count() == seen
    assert (df["meta.fw"] == "1.1").sum() == fw
    assert df.schema["hour"] == pl.Int32


def test_datafusion(lake, readers):
    _, sent = lake
    ctx = readers["ctx"]
    got = ctx.sql("""SELECT count(*), sum(v), sum(late), count(seen), sum(CASE WHEN "meta.fw" = '1.1' THEN 1 ELSE 0 END)
                     FROM telemetry""").to_pylist()[0]
    per_device = {r["device_id"]: r["n"] for r in
                  ctx.sql("SELECT device_id, count(*) AS n FROM telemetry GROUP BY device_id").to_pylist()}
    total, rows, v, late, seen, fw = expected(sent)
    assert list(got.values())[0] == total and per_device == rows
    assert list(got.values())[1:] == [pytest.approx(v), late, seen, fw]


def test_spark(lake, readers):
    _, sent = lake
    sdf = readers["sdf"]
    sdf.createOrReplaceTempView("telemetry")
    spark = sdf.sparkSession
    got = spark.sql("""SELECT count(*), sum(v), sum(late), count(seen),
                              sum(CASE WHEN `meta.fw` = '1.1' THEN 1 ELSE 0 END) FROM telemetry""").collect()[0]
    per_device = {r[0]: r[1] for r in spark.sql(
        "SELECT device_id, count(*) FROM telemetry GROUP BY device_id").collect()}
    total, rows, v, late, seen, fw = expected(sent)
    assert (got[0], per_device) == (total, rows)
    assert (got[1], got[2], got[3], got[4]) == (pytest.approx(v), late, seen, fw)
