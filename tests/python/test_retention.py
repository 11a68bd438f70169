"""Bounded local disk: with `output.retain_bytes`, a long run keeps the lake under the bound
(give or take one file), deleting whole files, oldest hour first; `output.retain_min_age`
keeps every file younger than it, whatever the bound says."""

import random
import time

from conftest import metrics, publish_json, wait_for

HOUR_MS = 3_600_000
NOW_MS = int(time.time() * 1000) // HOUR_MS * HOUR_MS  # the start of this hour


def lake_files(d):
    return {f: f.stat().st_size for f in (d.lake / "telemetry").rglob("*.parquet")}


def hour_of(path):
    return f"{path.parent.parent.name[5:]}T{path.parent.name[5:]}"


def publish_hour(d, hours_ago, n=2000):
    """`n` readings timed in the hour `hours_ago` before this one; returns once they are in
    files (one or more)."""
    rows = metrics(d.admin).get('fleetlake_table_rows_published_total{table="telemetry"}', 0)
    rng = random.Random(hours_ago)
    ts = NOW_MS - hours_ago * HOUR_MS
    publish_json(d.port, "ret-1", "sensors/ret-1/telemetry",
                 [{"ts": ts + i, "v": rng.random(), "w": rng.random()} for i in range(n)])
    wait_for("the hour's rows in files",
             lambda: metrics(d.admin)['fleetlake_table_rows_published_total{table="telemetry"}'] >= rows + n)


def test_a_byte_bound_keeps_the_lake_under_it_deleting_the_oldest_hours(daemon_factory):
    bound = 150 * 1024
    d = daemon_factory(f'[output]\nretain_bytes = {bound}\nretain_min_age = "0s"\n'
                       '[batch]\nmax_age = "100ms"')
    sizes, largest = [], 0
    for hours_ago in range(12, 0, -1):  # the oldest hour first
        publish_hour(d, hours_ago)
        files = lake_files(d)
        largest = max([largest, *files.values()])
        sizes.append(sum(files.values()))
        assert sizes[-1] <= bound + largest, (sizes, largest)
    print(f"retention: lake bytes after each hour {sizes}, bound {bound}, largest file {largest}")
    m = metrics(d.admin)
    d.stop()
    # What is left is the newest hours, with no gap: the oldest went first.
    kept = sorted({hour_of(f) for f in lake_files(d)})
    hours = [time.strftime("%Y-%m-%dT%H", time.gmtime((NOW_MS - h * HOUR_MS) / 1000)) for h in range(12, 0, -1)]
    assert len(kept) >= 2 and kept == hours[-len(kept):], (kept, hours)
    assert m["fleetlake_files_expired_total"] == m["fleetlake_files_published_total"] - len(lake_files(d))
    assert m["fleetlake_bytes_expired_total"] > 0
    # Emptied hour folders are removed with their last file.
    hours = [p for p in (d.lake / "telemetry").rglob("hour=*")]
    assert len(hours) == len(kept), hours


def test_no_file_younger_than_retain_min_age_is_deleted(daemon_factory):
    min_age = 3.0
    d = daemon_factory('[output]\nretain_bytes = 1\nretain_min_age = "3s"\n[batch]\nmax_age = "100ms"')
    publish_hour(d, 3, n=50)
    publish_hour(d, 2, n=50)
    first = lake_files(d)
    assert len({hour_of(f) for f in first}) == 2, "young files stay although the lake is over its bound"
    written = {f: f.stat().st_mtime for f in first}
    time.sleep(min_age)  # not synchronisation: the files must grow older than the minimum
    publish_hour(d, 1, n=50)
    wait_for("the old files deleted", lambda: not (set(first) & set(lake_files(d))))
    gone_at = time.time()
    assert all(gone_at - t >= min_age for t in written.values())
    left = [hour_of(f) for f in lake_files(d)]
    assert left == [time.strftime("%Y-%m-%dT%H", time.gmtime((NOW_MS - HOUR_MS) / 1000))], left
    d.stop()
