#!/usr/bin/env bash
# First rough throughput/latency/RSS figures: starts a release fleetlake in a temp dir, loads
# it with fleetlake-bench (src/bin/fleetlake-bench), stops it with SIGTERM (flushing everything), then prints the
# load generator's rate and PUBACK latency percentiles, the daemon's CPU seconds, peak RSS and
# WAL fsyncs per second, and the rows DuckDB reads back.
#   [BUDGET=64MiB] [SYNC_INTERVAL=2ms] [RATE=msgs/s] [BURST_US=200] [WINDOW=256] [OUTPUT=url] [PROTOCOL=3.1.1|5] [PAYLOAD=reading|doc] \
#     benches/run_load.sh [MESSAGES] [QOS] [CONNS]      e.g. benches/run_load.sh 1000000 0 4
# OUTPUT=null: discards every batch instead of sorting and encoding it (the ingest path alone).
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
messages=${1:-1000000}; qos=${2:-0}; conns=${3:-4}
cargo build --release --quiet --bin fleetlake --bin fleetlake-bench
target=${CARGO_TARGET_DIR:-target}
load="$target/release/fleetlake-bench"
dir=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
bench_config "$dir" "$port" "[memory]
budget = \"${BUDGET:-64MiB}\"
[wal]
sync_interval = \"${SYNC_INTERVAL:-2ms}\"
[output]
url = \"${OUTPUT:-}\""
"$target/release/fleetlake" run --config "$dir/bench.toml" 2> "$dir/log" &
pid=$!
for _ in $(seq 100); do (: > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
out=$(/usr/bin/time -f "loadgen_cpu_s=%U+%S" "$load" mqtt --quiet --addr "127.0.0.1:$port" --messages "$messages" --qos "$qos" --conns "$conns" \
  --rate "${RATE:-0}" --window "${WINDOW:-256}" --burst-us "${BURST_US:-200}" --protocol "${PROTOCOL:-3.1.1}" --payload "${PAYLOAD:-reading}" 2>&1)
echo "$out"
seconds=$(echo "$out" | sed -n 's/.*seconds=\([0-9.]*\).*/\1/p')
kill -TERM $pid; wait $pid || true
usage=$(grep '"fleetlake stopped"' "$dir/log" | SECONDS_RUN="$seconds" python3 -c "
import json, os, re, sys
l = json.loads(sys.stdin.read())
syncs = int(re.search(r'wal_syncs: (\d+)', l['stats']).group(1))
published = int(re.search(r'rows_published: (\d+)', l['stats']).group(1))
print(f\"daemon_cpu_seconds={l['cpu_seconds']} peak_rss_kib={l['peak_rss_kib']} wal_fsyncs_per_s={syncs / float(os.environ['SECONDS_RUN']):.0f} rows_published={published}\")")
if [ -d "$dir/data/lake/telemetry" ]; then
  rows=$(python3 -c "import duckdb,sys; print(duckdb.sql(\"SELECT count(*) FROM read_parquet('$dir/data/lake/telemetry/**/*.parquet')\").fetchall()[0][0])")
  bytes=$(du -sb "$dir/data/lake/telemetry" | cut -f1)
  echo "$usage rows_in_parquet=$rows lake_bytes=$bytes"
else
  echo "$usage (no files: output ${OUTPUT:-})"
fi
[ -n "${KEEP:-}" ] && echo "kept $dir" || rm -rf "$dir"
