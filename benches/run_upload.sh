#!/usr/bin/env bash
# Upload throughput to a local S3-compatible server: starts a moto server on 127.0.0.1, creates
# a bucket, and times the uploader (release build) sending FILES files of SIZE from a spool,
# once with 4 MiB files (single PUT) and once with 40 MiB files (multipart, 8 MiB parts).
#   benches/run_upload.sh [FILES]      e.g. benches/run_upload.sh 50
# Needs: pip install 'moto[server]'. Stops the moto server it started when done.
set -euo pipefail
cd "$(dirname "$0")/.."
files=${1:-50}
cargo build --release --quiet --bench upload
target=${CARGO_TARGET_DIR:-target}
bench=$(ls -t "$target"/release/deps/upload-* | grep -v '\.d$' | head -1)
port=$((20000 + RANDOM % 20000))
python3 -m moto.server -H 127.0.0.1 -p "$port" >/dev/null 2>&1 &
moto=$!
trap 'kill $moto 2>/dev/null || true' EXIT
until curl -fs "http://127.0.0.1:$port/moto-api/" >/dev/null; do
  kill -0 $moto || { echo "moto server did not start"; exit 1; }
  sleep 0.1
done
curl -fs -X PUT "http://127.0.0.1:$port/bench" >/dev/null
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_DEFAULT_REGION=us-east-1
"$bench" --bench --endpoint "http://127.0.0.1:$port" --bucket bench --files "$files" --size 4MiB
"$bench" --bench --endpoint "http://127.0.0.1:$port" --bucket bench --files "$((files / 10 + 1))" --size 40MiB
