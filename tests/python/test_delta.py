"""Delta Lake output (`output.table_format = "delta"`), read by readers we did not write:
delta-rs (Python `deltalake`) and Polars. Every acked row is in the table exactly once, a late
column is in the table's schema, one add per file, through crashes at the commit."""

import json
import random
import re
import time
from collections import Counter
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from conftest import metrics, publish_json, wait_for
from test_s3 import aws_env  # noqa: F401 (a fixture: AWS_* for the moto test)

DEVICES = 3
CONFIG = """
[output]
table_format = "delta"
[output.delta]
checkpoint_interval = 3
[batch]
max_age = "200ms"
[[tables]]
name = "env"
topics = ["env/{device_id}"]
"""


def table(d, name="env"):
    return d.lake / name


def rows(path):
    """The table's rows as delta-rs reads them (0 while it has no log yet)."""
    if not (Path(path) / "_delta_log").is_dir():
        return None
    return DeltaTable(str(path)).to_pyarrow_table()


def count(path):
    t = rows(path)
    return 0 if t is None else t.num_rows


def publish_round(d, start, per_device, extra=None):
    """`per_device` readings from each device with seq numbers from `start`, through one
    connection; returns them once all are acked."""
    import paho.mqtt.client as mqtt

    sent = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{start}")
    c.max_inflight_messages_set(1000)
    c.connect("127.0.0.1", d.port)
    c.loop_start()
    try:
        infos = []
        for dev in range(DEVICES):
            for i in range(start, start + per_device):
                doc = {"seq": i, "temp": round(20 + dev + i / 100, 2), **(extra or {})}
                sent.append((f"dev-{dev}", doc))
                infos.append(c.publish(f"env/dev-{dev}", json.dumps(doc), qos=1))
        for info in infos:
            info.wait_for_publish(20)
            assert info.is_published()
    finally:
        c.loop_stop()
        c.disconnect()
    return sent


def adds(path):
    a = pa.table(DeltaTable(str(path)).get_add_actions(flatten=True))
    return a.column("path").to_pylist(), a.column("num_records").to_pylist()


def data_files(path):
    return sorted(str(p.relative_to(path)) for p in Path(path).rglob("*.parquet")
                  if "_delta_log" not in p.parts)


def log_versions(path):
    return sorted(int(p.name.split(".")[0]) for p in (Path(path) / "_delta_log").glob("*.json"))


def test_delta_table_reads_back_exactly_with_a_late_column_and_checkpoints(daemon_factory):
    d = daemon_factory(CONFIG)
    sent = []
    for r in range(4):  # several batches: several commits, past a checkpoint
        sent += publish_round(d, r * 50, 50)
        wait_for(f"round {r} in the table", lambda: count(table(d)) == len(sent))
    # A field name Delta cannot take as a column goes to _rejected, saying why; the table goes on.
    publish_json(d.port, "spaced", "env/dev-0", [{"temp C": 5}])
    sent += publish_round(d, 1000, 10, extra={"fw": "2.0.1"})
    wait_for("the late column's rows", lambda: count(table(d)) == len(sent))
    m = metrics(d.admin)
    d.stop()
    rejected = duckdb.sql(
        f"SELECT reason FROM read_parquet('{d.rejected}/**/*.parquet')").fetchall()
    assert len(rejected) == 1 and "Delta Lake forbids" in rejected[0][0], rejected

    path = table(d)
    dt = DeltaTable(str(path))
    got = dt.to_pyarrow_table()
    assert got.num_rows == len(sent)
    per_device = Counter(got.column("device_id").to_pylist())
    assert per_device == Counter(dev for dev, _ in sent)
    assert abs(sum(got.column("temp").to_pylist()) - sum(doc["temp"] for _, doc in sent)) < 1e-6
    pairs = sorted(zip(got.column("device_id").to_pylist(), got.column("seq").to_pylist()))
    assert pairs == sorted((dev, float(doc["seq"])) for dev, doc in sent)

    schema = {f.name: str(f.type) for f in dt.schema().fields}
    assert schema["fw"] == 'PrimitiveType("string")', schema
    assert schema["temp"] == 'PrimitiveType("double")'
    assert schema["time"] == 'PrimitiveType("timestamp")'
    assert schema["date"] == 'PrimitiveType("date")' and schema["hour"] == 'PrimitiveType("integer")'
    assert dt.metadata().partition_columns == ["date", "hour"]
    fw = Counter(got.column("fw").to_pylist())
    assert fw == Counter({None: len(sent) - 3 * 10, "2.0.1": 3 * 10})

    # One add per file on disk, the row counts in the statistics add up.
    paths, records = adds(path)
    assert sorted(paths) == data_files(path)
    assert len(set(paths)) == len(paths)
    assert sum(records) == len(sent)

    # Versions are contiguous from 0; checkpoints every 3 versions, _last_checkpoint names one.
    versions = log_versions(path)
    assert versions == list(range(len(versions))) and len(versions) >= 6, versions
    last = json.loads((path / "_delta_log" / "_last_checkpoint").read_text())
    assert last["version"] % 3 == 0 and last["version"] > 0
    assert (path / "_delta_log" / f"{last['version']:020}.checkpoint.parquet").is_file()
    assert dt.transaction_version("fleetlake-pytest") is not None
    assert m["fleetlake_delta_commits_total"] == len(versions) - 1  # version 0 creates the table
    assert m["fleetlake_delta_checkpoints_total"] >= 1
    assert m["fleetlake_delta_commit_seconds_count"] == len(versions) - 1

    # README's block, run as written (only `t` points at this table): delta-rs and Polars.
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("### Delta Lake tables"):]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 't = "fleetlake-data/lake/telemetry"\n' in block
    names = {}
    exec(compile(block.replace('t = "fleetlake-data/lake/telemetry"', f"t = {str(path)!r}"),
                 "README.md (Delta Lake tables)", "exec"), names)
    assert names["table"].num_rows == len(sent)
    df = names["df"]
    assert df.height == len(sent)
    assert df.filter(pl.col("fw") == "2.0.1").height == 30
    assert abs(df["temp"].sum() - sum(doc["temp"] for _, doc in sent)) < 1e-6


@pytest.mark.parametrize("point", ["delta-before-commit", "delta-after-commit"])
def test_a_crash_at_the_commit_keeps_every_row_exactly_once(daemon_factory, point):
    """The daemon aborts at its 2nd commit, between the files and their commit or right after
    the commit (before the batch counts as published); after a restart the table holds each
    acked row once and each file once. Batches are cut by age, 2 s after a round's first row,
    so each round is one commit made after all its acks."""
    cfg = CONFIG.replace('max_age = "200ms"', 'max_age = "2s"')
    d = daemon_factory(cfg, dir_name="n", env={"FLEETLAKE_FAULT": f"{point}:2"})
    sent = publish_round(d, 0, 40)
    wait_for("the first commit", lambda: count(table(d)) == len(sent))
    sent += publish_round(d, 100, 40)  # acked (in the WAL); its commit aborts the daemon
    assert d.proc.wait(timeout=20) != 0, "the fault point did not stop the daemon"
    # Before the commit the table lacks the round; after it the round is in, not yet published.
    assert count(table(d)) == (120 if point == "delta-before-commit" else 240)

    d = daemon_factory(cfg, dir_name="n")
    wait_for("the replayed batch", lambda: count(table(d)) == len(sent))
    skipped = 0 if point == "delta-before-commit" else 1
    wait_for("the replayed batch's commit counted", lambda: metrics(d.admin)[
        "fleetlake_delta_commits_total"] + metrics(d.admin)["fleetlake_delta_commits_skipped_total"] == 1)
    assert metrics(d.admin)["fleetlake_delta_commits_skipped_total"] == skipped
    sent += publish_round(d, 200, 5)
    wait_for("rows after the restart", lambda: count(table(d)) == len(sent))
    d.stop()

    got = rows(table(d))
    pairs = Counter(zip(got.column("device_id").to_pylist(), got.column("seq").to_pylist()))
    assert pairs == Counter((dev, float(doc["seq"])) for dev, doc in sent)
    paths, _ = adds(table(d))
    assert len(set(paths)) == len(paths), "a file was added twice"
    assert sorted(paths) == data_files(table(d))
    assert log_versions(table(d)) == list(range(len(log_versions(table(d)))))


def test_random_kills_during_ingest_leave_each_acked_row_in_the_table_once(daemon_factory):
    from test_crash import Publisher

    cfg = CONFIG.replace('topics = ["env/{device_id}"]', 'topics = ["fast/{device_id}", "slow/{device_id}"]')
    rng = random.Random(20261201)
    next_seq = {f"dev-{i}": 0 for i in range(3)}
    acked = set()
    for _ in range(6):
        d = daemon_factory(cfg, dir_name="k")
        pub = Publisher(d.port, next_seq)
        wait_for("first acks", lambda: len(pub.acked) > 0)
        time.sleep(rng.uniform(0.2, 0.8))
        d.kill()
        got, _ = pub.finish()
        acked |= got
    d = daemon_factory(cfg, dir_name="k")
    d.stop()
    t = rows(table(d))
    found = Counter(zip(t.column("dev").to_pylist(), t.column("seq").to_pylist()))
    dup = {k: n for k, n in found.items() if n > 1}
    missing = {(dev, float(seq)) for dev, seq in acked} - found.keys()
    print(f"\ndelta kill test: acked={len(acked)} rows={t.num_rows} versions={len(log_versions(table(d)))}")
    assert len(acked) > 100
    assert not missing, f"{len(missing)} acked rows missing, e.g. {sorted(missing)[:5]}"
    assert not dup, f"{len(dup)} rows twice, e.g. {list(dup.items())[:5]}"
    paths, _ = adds(table(d))
    assert len(set(paths)) == len(paths) and sorted(paths) == data_files(table(d))


def test_two_nodes_commit_into_one_table_while_a_reader_never_sees_it_shrink(daemon_factory, tmp_path):
    """Two daemons (node ids a and b) write one local table at the same time: no lost commit, no
    file added twice, versions contiguous; a reader reading in a loop sees counts that never go
    down and never a row twice."""
    import threading

    shared = tmp_path / "shared-lake"
    cfg = CONFIG.replace("[output]\n", f'[output]\nurl = "{shared}"\n').replace(
        'max_age = "200ms"', 'max_age = "100ms"')
    a = daemon_factory(cfg, dir_name="a", node_id="a")
    b = daemon_factory(cfg, dir_name="b", node_id="b")
    path = shared / "env"
    seen, problems, stop = [], [], threading.Event()

    def reader():
        while not stop.is_set():
            if not (path / "_delta_log").is_dir():
                continue
            try:
                t = DeltaTable(str(path)).to_pyarrow_table(columns=["device_id", "seq"])
            except Exception as e:  # a reader must never fail on a table being written
                problems.append(repr(e))
                continue
            keys = list(zip(t.column("device_id").to_pylist(), t.column("seq").to_pylist()))
            if len(set(keys)) != len(keys):
                problems.append(f"a row twice at {len(keys)} rows")
            if seen and len(keys) < seen[-1]:
                problems.append(f"count went down {seen[-1]} -> {len(keys)}")
            seen.append(len(keys))

    r = threading.Thread(target=reader, daemon=True)
    r.start()
    sent = []
    results = {}

    def feed(d, name, base):
        out = []
        for k in range(6):
            out += publish_round(d, base + k * 20, 20)
            time.sleep(0.05)
        results[name] = out

    ts = [threading.Thread(target=feed, args=(d, n, base))
          for d, n, base in ((a, "a", 0), (b, "b", 10000))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    sent = results["a"] + results["b"]  # same device ids, seq numbers apart
    wait_for("both nodes' rows", lambda: count(path) == len(sent), deadline=40)
    stop.set()
    r.join(20)
    a.stop()
    b.stop()

    assert not problems, problems[:5]
    assert len(seen) > 3, "the reader hardly ran"
    t = rows(path)
    assert t.num_rows == len(sent)
    per_device = Counter(t.column("device_id").to_pylist())
    assert per_device == Counter({f"dev-{i}": 2 * 6 * 20 for i in range(DEVICES)})
    pairs = Counter(zip(t.column("device_id").to_pylist(), t.column("seq").to_pylist()))
    assert pairs == Counter((dev, float(doc["seq"])) for dev, doc in sent)
    paths, records = adds(path)
    assert len(set(paths)) == len(paths) and sorted(paths) == data_files(path)
    assert {p.rsplit("/", 1)[1].split("-")[0] for p in paths} == {"a", "b"}
    assert sum(records) == len(sent)
    versions = log_versions(path)
    assert versions == list(range(len(versions)))
    dt = DeltaTable(str(path))
    assert dt.transaction_version("fleetlake-a") and dt.transaction_version("fleetlake-b")
    print(f"\ntwo nodes: versions={len(versions)} files={len(paths)} reads={len(seen)}")


def test_delta_on_s3_two_nodes_commit_into_one_table(daemon_factory, aws_env):
    """Two nodes spool files and their commits, upload them to a moto S3 server and commit into
    one table: delta-rs and Polars read the union exactly, with the late column; every data
    object is added once; versions are contiguous."""
    from test_s3 import BUCKET, PREFIX, Moto, s3_config

    moto = Moto().start()
    aws_env.append(moto)
    cfg = s3_config(moto.port, 'table_format = "delta"\n[output.delta]\ncheckpoint_interval = 4') \
        + '[[tables]]\nname = "env"\ntopics = ["env/{device_id}"]\n'
    a = daemon_factory(cfg, dir_name="a", node_id="a")
    b = daemon_factory(cfg, dir_name="b", node_id="b")
    uri = f"s3://{BUCKET}/{PREFIX}/env"
    opts = s3_options(moto)

    def s3_count():
        return table_rows(uri, opts)

    import threading
    results = {}

    def feed(d, name, base):
        out = []
        for k in range(4):
            out += publish_round(d, base + k * 30, 30)
            time.sleep(0.3)
        out += publish_round(d, base + 500, 5, extra={"fw": name})
        results[name] = out

    ts = [threading.Thread(target=feed, args=(d, n, base)) for d, n, base in ((a, "a", 0), (b, "b", 10000))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(90)
    sent = results["a"] + results["b"]
    wait_for("both nodes' rows committed in the bucket", lambda: s3_count() == len(sent), deadline=60)
    a.stop()
    b.stop()

    dt = DeltaTable(uri, storage_options=opts)
    t = dt.to_pyarrow_table()
    pairs = Counter(zip(t.column("device_id").to_pylist(), t.column("seq").to_pylist()))
    assert pairs == Counter((dev, float(doc["seq"])) for dev, doc in sent)
    assert Counter(t.column("fw").to_pylist()) == Counter({None: len(sent) - 30, "a": 15, "b": 15})
    assert "fw" in [f.name for f in dt.schema().fields]
    paths, records = adds_of(dt)
    keys = [k for k in moto.keys() if k.startswith(f"{PREFIX}/env/date=")]
    assert sorted(f"{PREFIX}/env/{p}" for p in paths) == sorted(keys)
    assert len(set(paths)) == len(paths) and sum(records) == len(sent)
    logs = sorted(k for k in moto.keys(schema_files=True) if k.startswith(f"{PREFIX}/env/_delta_log/"))
    versions = sorted(int(k.rsplit("/", 1)[1].split(".")[0]) for k in logs if k.endswith(".json"))
    assert versions == list(range(len(versions))), versions
    assert any(k.endswith(".checkpoint.parquet") for k in logs) and any(k.endswith("_last_checkpoint") for k in logs)
    assert dt.transaction_version("fleetlake-a") and dt.transaction_version("fleetlake-b")
    assert pl.read_delta(uri, storage_options=opts).height == len(sent)
    # Nothing of the commits is left in the spools.
    for d in (a, b):
        assert not list((d.dir / "data" / "spool").rglob("*.delta-commit"))
    print(f"\ndelta on s3: versions={len(versions)} files={len(paths)} rows={len(sent)}")


def s3_options(moto):
    """delta-rs and Polars storage options for the moto server."""
    return {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{moto.port}", "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1"}


def table_rows(uri, opts):
    """Rows of the table in the bucket (0 while it has no log yet)."""
    try:
        return DeltaTable(uri, storage_options=opts).to_pyarrow_table(columns=["seq"]).num_rows
    except Exception:  # no table yet
        return 0


def adds_of(dt):
    a = pa.table(dt.get_add_actions(flatten=True))
    return a.column("path").to_pylist(), a.column("num_records").to_pylist()


@pytest.mark.parametrize("point", ["delta-upload-before-commit", "delta-upload-after-commit"])
def test_s3_a_crash_at_the_uploaders_commit_keeps_every_row_exactly_once(daemon_factory, aws_env, point):
    """The daemon aborts when its uploader reaches the 2nd spooled commit, with the batch's files
    in the bucket, before or after committing them; after a restart the table holds each row
    and each file once, and the spool holds no commit."""
    from test_s3 import BUCKET, PREFIX, Moto, s3_config

    moto = Moto().start()
    aws_env.append(moto)
    cfg = (s3_config(moto.port, 'table_format = "delta"').replace('max_age = "200ms"', 'max_age = "2s"')
           + '[[tables]]\nname = "env"\ntopics = ["env/{device_id}"]\n')
    uri = f"s3://{BUCKET}/{PREFIX}/env"
    opts = s3_options(moto)

    def s3_count():
        return table_rows(uri, opts)

    d = daemon_factory(cfg, dir_name="n", env={"FLEETLAKE_FAULT": f"{point}:2"})
    sent = publish_round(d, 0, 20)
    wait_for("the first commit", lambda: s3_count() == len(sent))
    sent += publish_round(d, 100, 20)
    assert d.proc.wait(timeout=30) != 0, "the fault point did not stop the daemon"
    assert s3_count() == (60 if point == "delta-upload-before-commit" else 120)
    d = daemon_factory(cfg, dir_name="n")
    wait_for("the spooled commit committed", lambda: s3_count() == len(sent), deadline=30)
    d.stop()
    dt = DeltaTable(uri, storage_options=opts)
    t = dt.to_pyarrow_table()
    pairs = Counter(zip(t.column("device_id").to_pylist(), t.column("seq").to_pylist()))
    assert pairs == Counter((dev, float(doc["seq"])) for dev, doc in sent)
    paths, _ = adds_of(dt)
    assert len(set(paths)) == len(paths)
    assert not list((d.dir / "data" / "spool").rglob("*.delta-commit"))


COMPACT = CONFIG.replace("checkpoint_interval = 3\n", 'checkpoint_interval = 3\ncompact_after = "1s"\nvacuum_after = "2s"\n')


def publish_past(d, start, per_device, hours_ago):
    """Like publish_round, with row times `hours_ago` hours back (a closed hour)."""
    ts = time.time() - hours_ago * 3600
    return publish_round(d, start, per_device, extra={"ts": ts})


def test_compaction_rewrites_closed_hours_atomically_and_vacuum_deletes_the_old_files(daemon_factory):
    """Rows of two closed hours arrive in several batches (several small files each); the
    compactor replaces each hour's files by one, in one commit; a reader reading all along sees
    the same rows throughout, never fewer, never twice; the replaced files are deleted once
    vacuum_after has passed."""
    import threading

    d = daemon_factory(COMPACT.replace('compact_after = "1s"', 'compact_after = "5h"'), dir_name="c")
    sent = []
    for r in range(4):
        sent += publish_past(d, r * 20, 20, hours_ago=3)
        sent += publish_past(d, 1000 + r * 20, 20, hours_ago=2 if r < 3 else 3)
        wait_for(f"round {r}", lambda: count(table(d)) == len(sent))
    d.stop()
    before = data_files(table(d))
    assert len(before) >= 6, before

    # Restart with compaction due at once, and a reader reading all along.
    path, problems, seen, stop = table(d), [], [], threading.Event()

    def reader():
        while not stop.is_set():
            t = DeltaTable(str(path)).to_pyarrow_table(columns=["device_id", "seq"])
            keys = list(zip(t.column("device_id").to_pylist(), t.column("seq").to_pylist()))
            if len(keys) != len(sent) or len(set(keys)) != len(keys):
                problems.append(f"{len(keys)} rows, {len(set(keys))} distinct")
            seen.append(len(keys))

    r = threading.Thread(target=reader, daemon=True)
    r.start()
    d = daemon_factory(COMPACT, dir_name="c")
    wait_for("both hours compacted", lambda: metrics(d.admin)["fleetlake_delta_compactions_total"] >= 2,
             deadline=40)
    wait_for("the replaced files vacuumed", lambda: len(data_files(path)) == len(adds(path)[0]), deadline=40)
    stop.set()
    r.join(20)
    m = metrics(d.admin)
    d.stop()
    assert not problems, problems[:5]
    assert len(seen) > 3
    paths, records = adds(path)
    assert len(paths) == 2, paths  # one file per hour
    assert sum(records) == len(sent)
    assert sorted(paths) == data_files(path)
    t = rows(path)
    pairs = Counter(zip(t.column("device_id").to_pylist(), t.column("seq").to_pylist()))
    assert pairs == Counter((dev, float(doc["seq"])) for dev, doc in sent)
    assert m["fleetlake_delta_files_compacted_total"] == len(before)
    assert m["fleetlake_delta_files_vacuumed_total"] == len(before)
    # The compacted files are sorted by device and time, like every file.
    import pyarrow.parquet as pq
    for p in paths:
        f = pq.read_table(path / p)
        keys = list(zip(f.column("device_id").to_pylist(), f.column("time").to_pylist()))
        assert keys == sorted(keys)
    print(f"\ncompaction: {len(before)} files -> {len(paths)}; reads during it {len(seen)}")


@pytest.mark.parametrize("point", ["compact-before-commit", "compact-after-commit"])
def test_a_crash_during_compaction_keeps_every_row_exactly_once(daemon_factory, point):
    d = daemon_factory(COMPACT.replace('compact_after = "1s"', 'compact_after = "5h"'), dir_name="c")
    sent = []
    for r in range(3):
        sent += publish_past(d, r * 20, 20, hours_ago=3)
        wait_for(f"round {r}", lambda: count(table(d)) == len(sent))
    d.stop()
    path = table(d)
    n_before = len(adds(path)[0])
    d = daemon_factory(COMPACT, dir_name="c", env={"FLEETLAKE_FAULT": point})
    assert d.proc.wait(timeout=30) != 0, "the fault point did not stop the daemon"
    d = daemon_factory(COMPACT, dir_name="c")
    wait_for("the hour compacted after the restart", lambda: len(adds(path)[0]) == 1, deadline=30)
    wait_for("the old files vacuumed", lambda: len(data_files(path)) == 1, deadline=30)
    d.stop()
    t = rows(path)
    pairs = Counter(zip(t.column("device_id").to_pylist(), t.column("seq").to_pylist()))
    assert pairs == Counter((dev, float(doc["seq"])) for dev, doc in sent)
    assert n_before >= 3


def test_compaction_on_s3_reads_back_rewrites_and_vacuums_in_the_bucket(daemon_factory, aws_env):
    from test_s3 import BUCKET, PREFIX, Moto, s3_config

    moto = Moto().start()
    aws_env.append(moto)
    cfg = (s3_config(moto.port, 'table_format = "delta"\n[output.delta]\ncompact_after = "1s"\nvacuum_after = "2s"')
           + '[[tables]]\nname = "env"\ntopics = ["env/{device_id}"]\n')
    uri, opts = f"s3://{BUCKET}/{PREFIX}/env", s3_options(moto)
    d = daemon_factory(cfg)
    sent = []
    for r in range(3):
        sent += publish_past(d, r * 20, 20, hours_ago=3)
        wait_for(f"round {r} in the bucket", lambda: table_rows(uri, opts) == len(sent), deadline=30)

    def objects():
        return [k for k in moto.keys() if k.startswith(f"{PREFIX}/env/date=")]

    wait_for("one file left in the table and the bucket",
             lambda: len(adds_of(DeltaTable(uri, storage_options=opts))[0]) == 1 and len(objects()) == 1,
             deadline=40)
    m = metrics(d.admin)
    d.stop()
    t = DeltaTable(uri, storage_options=opts).to_pyarrow_table()
    pairs = Counter(zip(t.column("device_id").to_pylist(), t.column("seq").to_pylist()))
    assert pairs == Counter((dev, float(doc["seq"])) for dev, doc in sent)
    assert m["fleetlake_delta_compaction_bytes_read_total"] > 0
    assert m["fleetlake_delta_compaction_bytes_written_total"] > 0
    print(f"\ncompaction on s3: read {m['fleetlake_delta_compaction_bytes_read_total']} B, "
          f"wrote {m['fleetlake_delta_compaction_bytes_written_total']} B, "
          f"{m['fleetlake_delta_compactions_total']} compactions")
