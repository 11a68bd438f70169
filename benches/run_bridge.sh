#!/usr/bin/env bash
# Bridge throughput: how fast a release fleetlake drains a backlog from Mosquitto. Starts a
# Mosquitto on a free loopback port (max_inflight_messages = INFLIGHT, unlimited queue),
# registers fleetlake's persistent session, stops fleetlake, queues COUNT QoS 1 messages
# (~60-byte JSON readings, 4 devices) for it with mosquitto_pub, then starts fleetlake again and
# times the drain until every message is stored (WAL fsync + ack per window) and published.
#   benches/run_bridge.sh [COUNT] [INFLIGHT]     e.g. benches/run_bridge.sh 200000 1000
#   PROTOCOL=5 benches/run_bridge.sh …           the bridge speaks MQTT 5 (default 3.1.1)
# Needs: mosquitto, mosquitto-clients, curl. Stops the processes it started.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
count=${1:-200000}
inflight=${2:-1000}
cargo build --release --quiet --bin fleetlake
bin="${CARGO_TARGET_DIR:-target}/release/fleetlake"
dir=$(mktemp -d)
bport=$((20000 + RANDOM % 20000))
cat > "$dir/mosquitto.conf" <<CONF
user root
listener $bport 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 0
max_inflight_messages $inflight
CONF
/usr/sbin/mosquitto -c "$dir/mosquitto.conf" 2>/dev/null &
broker=$!
pids="$broker"
trap 'kill $pids 2>/dev/null || true' EXIT
sleep 0.5
bench_config "$dir" 0 "[batch]
max_age = \"1s\"
[[tables]]
name = \"telemetry\"
topics = [\"sensors/{device_id}/telemetry\"]
[[bridge]]
name = \"bench\"
url = \"mqtt://127.0.0.1:$bport\"
max_inflight = $inflight
protocol = \"${PROTOCOL:-3.1.1}\"
subscriptions = [{ filter = \"sensors/#\", qos = 1 }]"
"$bin" run --config "$dir/bench.toml" 2> "$dir/log1" &
pid=$!; pids="$pids $pid"
until grep -q '"bridge subscribed"' "$dir/log1"; do sleep 0.05; done
kill -TERM $pid; wait $pid || true
echo "queueing $count messages in mosquitto for the offline session"
pubs=()
for d in 0 1 2 3; do
  python3 -c "
import json, sys
d, n = int(sys.argv[1]), int(sys.argv[2])
sys.stdout.write(''.join(json.dumps({'ts': 1767225600000 + i, 'seq': i, 'temp': 21.5, 'ok': True}) + '\n' for i in range(d, n, 4)))
" $d "$count" | mosquitto_pub -p "$bport" -q 1 -i "pub-$d" -t "sensors/dev-$d/telemetry" -l &
  pubs+=($!)
done
wait "${pubs[@]}"
start=$(date +%s.%N)
"$bin" run --config "$dir/bench.toml" 2> "$dir/log2" &
pid=$!; pids="$pids $pid"
python3 - "$dir/log2" "$count" "$start" <<'PY'
import json, sys, time
log, count, start = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rows = 0
deadline = time.time() + 600
while rows < count and time.time() < deadline:
    rows = 0
    for line in open(log):
        if '"published parquet file"' in line:
            rows += json.loads(line)["rows"]
    time.sleep(0.2)
secs = time.time() - start
print(f"bridge drained {rows}/{count} messages from mosquitto in {secs:.1f} s: {rows / secs:,.0f} msgs/s")
PY
kill -TERM $pid; wait $pid || true
grep '"fleetlake stopped"' "$dir/log2" | python3 -c "
import json, sys
d = json.loads(sys.stdin.read())
print('daemon cpu_seconds', d.get('cpu_seconds'), 'peak_rss_kib', d.get('peak_rss_kib'))"
rm -rf "$dir"
