"""Bad device clocks: rows timed in 1970 or 2100 do not make partitions of their own. By
default they are filed under their receive time with the device's time kept in `device_time`;
`clock.out_of_range = "reject"` sends them to `_rejected`; either way they are counted."""

import datetime as dt

import duckdb

from conftest import metrics, publish_json, wait_for

IN_RANGE = int(dt.datetime.now(dt.timezone.utc).timestamp() * 1000) - 60_000  # a minute ago, ms
DOCS = [{"ts": 0, "v": 1}, {"ts": 4102444800000, "v": 2}, {"ts": IN_RANGE, "v": 3}]


def test_out_of_range_rows_are_filed_by_receive_time_keeping_the_device_time(daemon_factory):
    d = daemon_factory()
    publish_json(d.port, "clock-1", "sensors/clock-1/telemetry", DOCS)
    wait_for("2 rows counted", lambda: metrics(d.admin)["fleetlake_rows_out_of_range_total"] == 2)
    d.stop()
    dates = {p.name for p in (d.lake / "telemetry").iterdir()}
    assert not {"date=1970-01-01", "date=2100-01-01"} & dates, dates
    rows = duckdb.sql(
        f"SELECT v, epoch_ms(time), epoch_ms(received_at), epoch_ms(device_time) FROM read_parquet("
        f"'{d.lake}/telemetry/**/*.parquet', hive_partitioning = true, union_by_name = true) ORDER BY v"
    ).fetchall()
    (v1, t1, r1, d1), (v2, t2, r2, d2), (v3, t3, _, d3) = rows
    assert (t1, d1) == (r1, 0)
    assert (t2, d2) == (r2, 4102444800000)
    assert (t3, d3) == (IN_RANGE, None)


def test_reject_policy_sends_out_of_range_rows_to_rejected(daemon_factory):
    d = daemon_factory('[clock]\nout_of_range = "reject"\nmax_ahead = "1h"\nmax_behind = "30d"')
    publish_json(d.port, "clock-2", "sensors/clock-2/telemetry", DOCS)
    wait_for("2 rows counted", lambda: metrics(d.admin)["fleetlake_rows_out_of_range_total"] == 2)
    m = metrics(d.admin)
    d.stop()
    assert m['fleetlake_messages_rejected_by_reason_total{reason="time_range"}'] == 2
    kept = duckdb.sql(f"SELECT v FROM read_parquet('{d.lake}/telemetry/**/*.parquet')").fetchall()
    assert kept == [(3.0,)]
    reasons = duckdb.sql(
        f"SELECT reason FROM read_parquet('{d.rejected}/**/*.parquet') ORDER BY reason").fetchall()
    assert [r[0][:34] for r in reasons] == ["row time 1970-01-01T00:00:00Z is o", "row time 2100-01-01T00:00:00Z is o"]
