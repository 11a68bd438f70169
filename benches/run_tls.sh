#!/usr/bin/env bash
# TLS handshakes per second on the MQTT TLS listener: starts a release fleetlake with
# [mqtt.tls] (a test CA and server certificate made here by openssl, KEY=rsa:2048 or ec), then
# `openssl s_time -new` opens a fresh connection (full handshake, no session resumption) as
# fast as it can for SECONDS, one at a time, and then with PARALLEL clients at once; prints
# connections/s, the daemon's CPU seconds per 1,000 handshakes and its peak RSS.
#   [KEY=ec|rsa:2048] [DURATION=10] [PARALLEL=4] benches/run_tls.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
cargo build --release --quiet --bin fleetlake
target=${CARGO_TARGET_DIR:-target}
dir=$(mktemp -d)
secs=${DURATION:-10}
key=${KEY:-ec}
keyopt=(-newkey rsa:2048)
[ "$key" = ec ] && keyopt=(-newkey ec -pkeyopt ec_paramgen_curve:P-256)
(cd "$dir"
 openssl req -x509 "${keyopt[@]}" -nodes -keyout ca.key -out ca.pem -days 1 -subj "/CN=bench CA" 2>/dev/null
 openssl req "${keyopt[@]}" -nodes -keyout server.key -out server.csr -subj "/CN=127.0.0.1" 2>/dev/null
 printf 'subjectAltName=IP:127.0.0.1\n' > ext.cnf
 openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 1 -extfile ext.cnf 2>/dev/null)
port=$((20000 + RANDOM % 20000)); tls=$((port + 1))
bench_config "$dir" "$port" "[mqtt.tls]
listen = \"127.0.0.1:$tls\"
cert = \"$dir/server.pem\"
key = \"$dir/server.key\""
"$target/release/fleetlake" run --config "$dir/bench.toml" 2> "$dir/log" &
pid=$!
for _ in $(seq 100); do (: > /dev/tcp/127.0.0.1/$tls) 2>/dev/null && break; sleep 0.05; done
cpu() { awk '{print $14 + $15}' /proc/$pid/stat; }
run() { # clients
  local before after total=0 out
  before=$(cpu)
  for _ in $(seq "$1"); do
    openssl s_time -connect "127.0.0.1:$tls" -new -time "$secs" -CAfile "$dir/ca.pem" > "$dir/st.$_" 2>&1 &
  done
  wait $(jobs -p | grep -v "^$pid$") 2>/dev/null || true
  after=$(cpu)
  for f in "$dir"/st.*; do
    n=$(sed -n 's/^\([0-9]*\) connections in [0-9.]*s.*/\1/p' "$f" | head -1)
    total=$((total + ${n:-0}))
  done
  rm -f "$dir"/st.*
  local ticks; ticks=$(getconf CLK_TCK)
  python3 -c "t=$total; s=$secs; c=($after-$before)/$ticks
print(f'key=$key clients=$1: {t} handshakes in {s}s = {t/s:.0f}/s; daemon CPU {c:.2f}s = {1000*c/max(t,1):.2f} ms per handshake')"
}
run 1
run "${PARALLEL:-4}"
rss=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
kill -TERM $pid; wait $pid || true
echo "daemon peak RSS ${rss} KiB"
rm -rf "$dir"
