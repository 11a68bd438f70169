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

from conftest import ROOT, metrics

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
    assert schema.field("seq").type == pa.float64()  # int_value too: numbers are Float64
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


def sha256_line(name, token):
    import hashlib
    return f"{name}:sha256:{hashlib.sha256(token.encode()).hexdigest()}\n"


def grpc_rows(lake):
    return sorted(duckdb.sql(
        f"SELECT device_id, seq FROM read_parquet('{lake}/**/*.parquet', union_by_name = true)"
    ).fetchall())


def test_grpc_over_tls_with_bearer_tokens_and_with_client_certificates(daemon_factory, stubs, tmp_path):
    from conftest import make_certs
    pb, rpc = stubs
    certs = tmp_path / "certs"
    certs.mkdir()
    make_certs(certs, clients=("svc-a", "dev-9"))
    ca = (certs / "ca.pem").read_bytes()
    tokens = tmp_path / "tokens"
    tokens.write_text("# name:sha256:<hex of the token>\n" + sha256_line("dev-1", "tok-dev-1")
                      + sha256_line("svc", "tok-svc"))
    tls = f'[grpc.tls]\ncert = "{certs}/server.pem"\nkey = "{certs}/server.key"\n'
    d = daemon_factory(tls + f'[grpc.auth]\ntokens_file = "{tokens}"\nservices = ["svc"]\n'
                       'allow_anonymous = false\n')

    def write(stub, device, seq, token=None):
        md = [("authorization", f"Bearer {token}")] if token else []
        return stub.Write(pb.WriteRequest(points=[point(pb, device, seq)]), timeout=20, metadata=md)

    with grpc.secure_channel(d.grpc, grpc.ssl_channel_credentials(root_certificates=ca)) as channel:
        stub = rpc.IngestStub(channel)
        for token in (None, "wrong"):
            with pytest.raises(grpc.RpcError) as e:
                write(stub, "dev-1", 0, token)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert write(stub, "dev-1", 1, "tok-dev-1").points == 1
        with pytest.raises(grpc.RpcError) as e:
            write(stub, "dev-2", 2, "tok-dev-1")
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "dev-2" in e.value.details()
        assert write(stub, "dev-2", 3, "tok-svc").points == 1, "a service writes any device"
        replies = list(stub.WriteStream(iter([
            pb.WriteStreamRequest(id=1, points=[point(pb, "dev-1", 4)]),
            pb.WriteStreamRequest(id=2, points=[point(pb, "dev-3", 5)]),
        ]), timeout=20, metadata=[("authorization", "Bearer tok-dev-1")]))
        assert [(r.id, r.code, r.points) for r in replies] == [
            (1, 0, 1), (2, grpc.StatusCode.PERMISSION_DENIED.value[0], 0)]
    with grpc.insecure_channel(d.grpc) as channel:
        with pytest.raises(grpc.RpcError) as e:
            write(rpc.IngestStub(channel), "dev-1", 6, "tok-dev-1")
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE, "plain HTTP/2 to the TLS port"
    m = metrics(d.admin)
    assert m["fleetlake_grpc_unauthenticated_total"] == 2
    assert m["fleetlake_grpc_permission_denied_total"] == 2
    assert not any("tok-dev-1" in line for line in d.lines), "tokens are never logged"
    d.stop()
    assert grpc_rows(d.lake) == [("dev-1", 1), ("dev-1", 4), ("dev-2", 3)]

    # Mutual TLS: the certificate CN names the caller.
    m = daemon_factory(tls + f'client_ca = "{certs}/ca.pem"\n[grpc.auth]\nservices = ["svc-a"]\n')

    def channel_as(name):
        creds = grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=(certs / f"{name}.key").read_bytes(),
            certificate_chain=(certs / f"{name}.pem").read_bytes())
        return grpc.secure_channel(m.grpc, creds)

    with channel_as("dev-9") as channel:
        stub = rpc.IngestStub(channel)
        assert write(stub, "dev-9", 7).points == 1
        with pytest.raises(grpc.RpcError) as e:
            write(stub, "dev-8", 8)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with channel_as("svc-a") as channel:
        assert write(rpc.IngestStub(channel), "dev-8", 9).points == 1
    with grpc.secure_channel(m.grpc, grpc.ssl_channel_credentials(root_certificates=ca)) as channel:
        with pytest.raises(grpc.RpcError) as e:
            write(rpc.IngestStub(channel), "dev-9", 10)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE, "no client certificate: no handshake"
    m.stop()
    assert grpc_rows(m.lake) == [("dev-8", 9), ("dev-9", 7)]
