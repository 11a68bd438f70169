#!/usr/bin/env bash
# gRPC throughput/latency figures: starts a release fleetlake in a temp dir with gRPC on, loads
# it with `fleetlake-bench grpc` (unary Write calls of BATCH points), stops it with SIGTERM, then
# prints the generator's points/s and response latency percentiles, the daemon's CPU seconds
# and peak RSS, and the rows DuckDB reads back.
#   [RATE=points/s] [CONNS=4] [INFLIGHT=8] [STREAM=1] [SYNC_INTERVAL=2ms] \
#     benches/run_grpc.sh [POINTS] [BATCH]      (STREAM=1: pipelined WriteStream, else unary)
#   e.g. benches/run_grpc.sh 1000000 1000
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
points=${1:-1000000}; batch=${2:-1000}
cargo build --release --quiet --bin fleetlake --bin fleetlake-bench
target=${CARGO_TARGET_DIR:-target}
load="$target/release/fleetlake-bench"
dir=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
gport=$((port + 1))
GRPC_LISTEN="127.0.0.1:$gport" bench_config "$dir" "$port" "[wal]
sync_interval = \"${SYNC_INTERVAL:-2ms}\""
"$target/release/fleetlake" run --config "$dir/bench.toml" 2> "$dir/log" &
pid=$!
for _ in $(seq 100); do (: > /dev/tcp/127.0.0.1/$gport) 2>/dev/null && break; sleep 0.05; done
out=$(/usr/bin/time -f "loadgen_cpu_s=%U+%S" "$load" grpc --quiet --addr "127.0.0.1:$gport" --points "$points" --batch "$batch" \
  --conns "${CONNS:-4}" --inflight "${INFLIGHT:-8}" --rate "${RATE:-0}" ${STREAM:+--stream} 2>&1)
echo "$out"
kill -TERM $pid; wait $pid || true
usage=$(grep '"fleetlake stopped"' "$dir/log" | python3 -c "
import json, sys
l = json.loads(sys.stdin.read())
print(f\"daemon_cpu_seconds={l['cpu_seconds']} peak_rss_kib={l['peak_rss_kib']}\")")
rows=$(python3 -c "import duckdb; print(duckdb.sql(\"SELECT count(*) FROM read_parquet('$dir/data/lake/telemetry/**/*.parquet')\").fetchall()[0][0])")
echo "$usage rows_in_parquet=$rows"
[ -n "${KEEP:-}" ] && echo "kept $dir" || rm -rf "$dir"
