#!/usr/bin/env python3
"""The broker role side by side with Mosquitto: the same `fleetlake-bench` load against
`fleetlake run` (every message made durable in the WAL before it is delivered, and stored as
rows) and against `mosquitto` (in memory, nothing stored), one at a time on loopback.

    python3 benches/broker.py --bin-dir /var/tmp/fleetlake-ci-target/release

Scenarios (publishers and subscribers at QoS 1, ~70-byte readings):
  fan-out   1 publisher → 100 subscribers of its topic
  fan-in    100 publishers → 1 subscriber of `sensors/#`
  idle      1,000 subscribers, each of its own filter, nobody publishing (RSS per subscription)

Both servers get 64 QoS 1/2 deliveries in flight per subscriber and queues large enough that no
subscriber is dropped (fleetlake: `broker.session_queue_bytes = "64MiB"`; Mosquitto:
`max_queued_messages 0`). For each: deliveries/s (first message sent to last delivered),
publish → deliver p50/p99 (ms), the server's CPU seconds per million deliveries and its RSS
(peak; idle: growth per subscription). Figures are printed, never asserted. Needs mosquitto
(`apt-get install mosquitto`).
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SCENARIOS = [
    ("fan-out: 1 pub → 100 subs", "--conns 1 --qos 1 --messages 20000 --subscribers 100 "
     "--sub-filter sensors/load-0/telemetry --window 64"),
    ("fan-in: 100 pubs → 1 sub (#)", "--conns 100 --qos 1 --messages 200000 --subscribers 1 "
     "--sub-filter sensors/# --window 64"),
    ("idle: 1,000 subs", "--conns 0 --messages 0 --duration 5s --subscribers 1000 --sub-filter cmd/+/#"),
]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def proc_stat(pid):
    """(CPU seconds, RSS KiB, peak RSS KiB) of a running process."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    status = {l.split(":")[0]: l.split()[1] for l in open(f"/proc/{pid}/status") if l.startswith("Vm")}
    return cpu, int(status["VmRSS"]), int(status["VmHWM"])


def start_fleetlake(bin_dir, work, port):
    cfg = work / "fleetlake.toml"
    cfg.write_text(f'[node]\ndata_dir = "{work / "data"}"\n[mqtt]\nlisten = "127.0.0.1:{port}"\n'
                   f'max_connections = 20000\n[grpc]\nlisten = ""\n[admin]\nlisten = ""\n'
                   f'[broker]\nmax_inflight = 64\nsession_queue_bytes = "64MiB"\nqueue_bytes = "256MiB"\n')
    return subprocess.Popen([str(bin_dir / "fleetlake"), "run", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_mosquitto(work, port):
    cfg = work / "mosquitto.conf"
    cfg.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n"
                   f"max_inflight_messages 64\npersistence false\nlog_type none\n")
    return subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_port(port, deadline=20):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def summary(line):
    return dict(kv.split("=", 1) for kv in line.split() if "=" in kv)


def run(server, bin_dir, args):
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        port = free_port()
        proc = (start_fleetlake(bin_dir, work, port) if server == "fleetlake"
                else start_mosquitto(work, port))
        try:
            wait_port(port)
            time.sleep(0.3)
            cpu0, rss0, _ = proc_stat(proc.pid)
            out = subprocess.run([str(bin_dir / "fleetlake-bench"), "mqtt", "--addr", f"127.0.0.1:{port}",
                                  "--quiet", *args.split()], capture_output=True, text=True, timeout=600)
            cpu1, rss1, peak = proc_stat(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        s = summary(out.stdout.strip().splitlines()[-1]) if out.stdout.strip() else {}
        s.update(cpu=cpu1 - cpu0, rss0=rss0, rss1=rss1, peak=peak, rc=out.returncode, err=out.stderr[-300:])
        return s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", default="target/release", type=Path)
    ap.add_argument("--only", default="")
    a = ap.parse_args()
    print("| scenario | server | delivered/s | deliver p50 ms | p99 ms | server CPU-s per 1M deliveries | server RSS |")
    print("|---|---|---|---|---|---|---|")
    for name, args in SCENARIOS:
        if a.only and a.only not in name:
            continue
        for server in ("fleetlake", "mosquitto"):
            s = run(server, a.bin_dir, args)
            delivered = int(s.get("delivered", 0))
            if name.startswith("idle"):
                per = (s["rss1"] - s["rss0"]) / 1000
                print(f"| {name} | {server} | – | – | – | – | {s['rss0'] / 1024:.1f} → {s['rss1'] / 1024:.1f} MiB "
                      f"({per:.1f} KiB per subscription) |")
                continue
            cpu_m = s["cpu"] / delivered * 1e6 if delivered else float("nan")
            print(f"| {name} | {server} | {float(s.get('delivered_per_s', 0)):,.0f} | {s.get('deliver_ms_p50', '?')} | "
                  f"{s.get('deliver_ms_p99', '?')} | {cpu_m:.2f} | peak {s['peak'] / 1024:.1f} MiB |"
                  + ("" if s["rc"] == 0 else f" FAILED: {s.get('first_error', s['err'])!r}"))


if __name__ == "__main__":
    main()
