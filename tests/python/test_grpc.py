"""gRPC ingest with an independent client: Python grpcio stubs generated from our .proto by
grpcio-tools at test time; DuckDB and pyarrow read the rows back."""

import importlib
import subprocess
import sys

import duckdb
import grpc
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from conftest import ROOT

T0 = 1767225600_000_000_000  # 2026-01-01T00:00:00Z in ns


@pytest.fixture(scope="module")
def stubs(tmp_path_factory):
    """(messages, services) modules compiled from proto/ by grpcio-tools."""
    out = tmp_path_factory.mktemp("stubs")
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}",
         f"--python_out={out}", f"--grpc_python_out={out}",
         str(ROOT / "proto/fleetlake/v1/ingest.proto")],
        check=True, timeout=60,
    )
    sys.path.insert(0, str(out))
    try:
        return (importlib.import_module("fleetlake.v1.ingest_pb2"),
                importlib.import_module("fleetlake.v1.ingest_pb2_grpc"))
    finally:
        sys.path.remove(str(out))


def point(pb, device, i, table=""):
    return pb.Point(
        table=table,
        device_id=device,
        time_unix_nano=T0 + i * 1_000_000,
        fields=[
            pb.Field(name="seq", int_value=i),
            pb.Field(name="temp", double_value=20.0 + i / 10),
            pb.Field(name="ok", bool_value=i % 2 == 0),
            pb.Field(name="fw", string_value="1.2.0"),
            pb.Field(name="raw", bytes_value=bytes([i % 256, 0xFF])),
        ],
    )


def test_python_client_writes_batches_that_duckdb_and_pyarrow_read_back(daemon_factory, stubs):
    pb, rpc = stubs
    d = daemon_factory()
    with grpc.insecure_channel(d.grpc) as channel:
        stub = rpc.IngestStub(channel)
        # Unary: batches of 1, 100 and 1,000 points, one of them gzip-compressed.
        sent = 0
        for size, compression in ((1, None), (100, grpc.Compression.Gzip), (1000, None)):
            points = [point(pb, f"dev-{(sent + i) % 7}", sent + i) for i in range(size)]
            reply = stub.Write(pb.WriteRequest(points=points), timeout=20, compression=compression)
            assert reply.points == size
            sent += size
        # Stream: 20 requests of 50 points, pipelined; one response each, in order.
        requests = [
            pb.WriteStreamRequest(id=r, points=[point(pb, "streamer", sent + r * 50 + i) for i in range(50)])
            for r in range(20)
        ]
        responses = list(stub.WriteStream(iter(requests), timeout=30))
        assert [(r.id, r.code, r.points) for r in responses] == [(r, 0, 50) for r in range(20)]
        sent += 1000
        # A point for another table.
        stub.Write(pb.WriteRequest(points=[point(pb, "m-1", 0, table="machines")]), timeout=20)
    d.stop()

    glob = f"{d.lake}/telemetry/**/*.parquet"
    rel = duckdb.sql(
        f"SELECT * FROM read_parquet('{glob}', hive_partitioning = true, union_by_name = true)"
    )
    count, distinct, lo, hi = duckdb.sql(
        "SELECT count(*), count(DISTINCT seq), min(seq), max(seq) FROM rel"
    ).fetchall()[0]
    assert (count, distinct, lo, hi) == (sent, sent, 0, sent - 1)
    row = duckdb.sql(
        "SELECT device_id, time, temp, ok, fw, raw FROM rel WHERE seq = 42"
    ).fetchall()[0]
    assert row[0] == "dev-0"  # 42 % 7
    assert row[1].isoformat().startswith("2026-01-01T00:00:00.042")
    assert row[2] == pytest.approx(24.2)
    assert row[3] is True
    assert row[4] == "1.2.0"
    assert bytes(row[5]) == bytes([42, 0xFF])

    schema = ds.dataset(str(d.lake / "telemetry"), format="parquet", partitioning="hive").schema
    assert schema.field("seq").type == pa.int64()
    assert schema.field("temp").type == pa.float64()
    assert schema.field("ok").type == pa.bool_()
    assert schema.field("fw").type in (pa.string(), pa.large_string(), pa.string_view())
    assert schema.field("raw").type in (pa.binary(), pa.large_binary(), pa.binary_view())
    assert pa.types.is_timestamp(schema.field("time").type)
    machines = ds.dataset(str(d.lake / "machines"), format="parquet", partitioning="hive").to_table()
    assert machines.column("device_id").to_pylist() == ["m-1"]


def test_bad_points_are_refused_whole_with_details_and_nothing_is_stored(daemon_factory, stubs):
    pb, rpc = stubs
    d = daemon_factory()
    with grpc.insecure_channel(d.grpc) as channel:
        stub = rpc.IngestStub(channel)
        points = [point(pb, "good", 1), point(pb, "", 2), point(pb, "good", 3, table="bad/table")]
        with pytest.raises(grpc.RpcError) as err:
            stub.Write(pb.WriteRequest(points=points), timeout=20)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        status = rpc_status.from_call(err.value)
        assert status is not None, "no google.rpc.Status details"
        bad = error_details_pb2.BadRequest()
        assert status.details[0].Unpack(bad)
        assert [v.field for v in bad.field_violations] == ["points[1].device_id", "points[2].table"]
        # The server keeps serving.
        assert stub.Write(pb.WriteRequest(points=[point(pb, "after", 4)]), timeout=20).points == 1
    d.stop()
    devices = duckdb.sql(
        f"SELECT DISTINCT device_id FROM read_parquet('{d.lake}/telemetry/**/*.parquet')"
    ).fetchall()
    assert devices == [("after",)]
