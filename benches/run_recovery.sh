#!/usr/bin/env bash
# Recovery time: fills a WAL with SIZE of ~80-byte readings from 1,000 devices (what a crash
# under load leaves), starts a release fleetlake on it, and prints the time from start to
# "fleetlake ready" (replay included: every record is decoded, batched, and mostly published
# while replaying, since the memory budget holds only part of it), then stops it and counts
# the rows with DuckDB.
#   benches/run_recovery.sh [SIZE]      e.g. benches/run_recovery.sh 1GiB
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
size=${1:-1GiB}
cargo build --release --quiet --bin fleetlake --bench wal_fill
target=${CARGO_TARGET_DIR:-target}
fill=$(ls -t "$target"/release/deps/wal_fill-* | grep -v '\.d$' | head -1)
dir=$(mktemp -d)
"$fill" --bench --dir "$dir/data/wal" --bytes "$size"
port=$((20000 + RANDOM % 20000))
bench_config "$dir" "$port"
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || echo "(page cache not dropped: not root)"
start=$(date +%s.%N)
"$target/release/fleetlake" run --config "$dir/bench.toml" 2> "$dir/log" &
pid=$!
until grep -q '"fleetlake ready"' "$dir/log"; do
  kill -0 $pid 2>/dev/null || { cat "$dir/log"; exit 1; }
  sleep 0.05
done
ready=$(date +%s.%N)
kill -TERM $pid; wait $pid || true
grep '"WAL recovered"' "$dir/log"
python3 - "$dir" "$start" "$ready" <<'PY'
import duckdb, json, sys
d, start, ready = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
stop = [json.loads(l) for l in open(f"{d}/log") if '"fleetlake stopped"' in l][0]
rows = duckdb.sql(f"SELECT count(*) FROM read_parquet('{d}/data/lake/telemetry/**/*.parquet')").fetchall()[0][0]
print(f"start_to_ready_s={ready - start:.1f} rows_in_parquet={rows} cpu_seconds={stop['cpu_seconds']} peak_rss_kib={stop['peak_rss_kib']}")
PY
rm -rf "$dir"
