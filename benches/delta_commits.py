#!/usr/bin/env python3
"""Delta commit latency and rate: one paho publisher (QoS 1, 100 in flight) for 20 s into a
daemon with `output.table_format = "delta"` and `batch.max_age = "50ms"` (one commit per batch),
on a local disk and, with `--s3`, on a moto S3 server on loopback. Prints commits/s and the
`fleetlake_delta_commit_seconds` histogram (checkpoints included). Figures, never asserts.

    python3 benches/delta_commits.py --bin /var/tmp/fleetlake-ci-target/release/fleetlake [--s3]

Needs what the tests need (paho-mqtt, prometheus-client; moto and boto3 for --s3).
"""

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))


def run(extra, label, secs):
    import paho.mqtt.client as mqtt
    from conftest import Daemon, metrics

    d = Daemon(Path(tempfile.mkdtemp()), extra + '\n[batch]\nmax_age = "50ms"\n')
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench")
    c.max_inflight_messages_set(100)
    c.connect("127.0.0.1", d.port)
    c.loop_start()
    n, t0 = 0, time.time()
    while time.time() < t0 + secs:
        infos = [c.publish(f"sensors/d{i % 10}/telemetry", json.dumps({"seq": n + i, "temp": 20.5}), qos=1)
                 for i in range(100)]
        for i in infos:
            i.wait_for_publish(10)
        n += 100
    elapsed = time.time() - t0
    time.sleep(1)
    m = metrics(d.admin)
    c.loop_stop()
    c.disconnect()
    d.stop()
    commits, count = m["fleetlake_delta_commits_total"], m["fleetlake_delta_commit_seconds_count"]
    print(f"{label}: {n} messages in {elapsed:.1f} s, {commits:.0f} commits = {commits / elapsed:.1f}/s, "
          f"mean commit {1000 * m['fleetlake_delta_commit_seconds_sum'] / max(count, 1):.1f} ms, "
          f"checkpoints {m['fleetlake_delta_checkpoints_total']:.0f}, "
          f"conflicts {m['fleetlake_delta_commit_conflicts_total']:.0f}")
    buckets = {re.search(r'le="([^"]+)"', k).group(1): int(v) for k, v in m.items()
               if k.startswith("fleetlake_delta_commit_seconds_bucket")}
    print(f"  commits at or under (s): {buckets}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bin", required=True, help="the fleetlake binary (a release build)")
    p.add_argument("--s3", action="store_true", help="also against a moto S3 server on loopback")
    p.add_argument("--seconds", type=float, default=20)
    a = p.parse_args()
    os.environ["FLEETLAKE_BIN"] = a.bin
    run('[output]\ntable_format = "delta"', "local disk", a.seconds)
    if a.s3:
        from test_s3 import Moto, s3_config

        os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                          AWS_DEFAULT_REGION="us-east-1")
        moto = Moto().start()
        try:
            cfg = s3_config(moto.port, 'table_format = "delta"')
            run(cfg[:cfg.index("[batch]")], "moto S3", a.seconds)
        finally:
            moto.stop()


if __name__ == "__main__":
    main()
