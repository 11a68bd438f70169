#!/usr/bin/env python3
"""fleetlake's benchmark suite: one command, a markdown table.

For each scenario it starts a fresh `fleetlake run` in a temp dir (the default config, with
loopback listeners on port 0, data in the temp dir and JSON logs), loads it with
`fleetlake-bench`, stops it with SIGTERM (which flushes every batch to Parquet), and reads:
the generator's summary (sent and acknowledged messages/s, ack latency p99), the daemon's own
CPU seconds and peak RSS (its "fleetlake stopped" log line), and the rows and bytes of the
Parquet files it wrote (pyarrow reads every footer). A first line gives start-to-ready time,
idle RSS and the stripped binary size; a last one RSS per idle connection (10,000 held).

    python3 benches/suite.py             # builds release binaries, full run (~2 minutes)
    python3 benches/suite.py --smoke     # tiny counts: checks the suite and nothing lost
    python3 benches/suite.py --bin-dir target/debug --smoke
    python3 benches/suite.py --write benches/RESULTS.md   # also rewrites the file's suite part

Exit status 1 when a scenario failed or Parquet holds fewer rows than were acknowledged.
Timings are printed, never asserted. Needs pyarrow (`pip install pyarrow`).
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name, kind, generator args (full run), generator args (smoke), output url, note
# A `{half_qos1}` in the args is replaced by half the acknowledged rate the qos1 scenario reached.
SCENARIOS = [
    ("limit: QoS 0 ×4 → null:", "mqtt", "--conns 4 --qos 0 --messages 2000000", "--conns 4 --qos 0 --messages 4000", "null:"),
    ("QoS 0 ×4", "mqtt", "--conns 4 --qos 0 --messages 2000000", "--conns 4 --qos 0 --messages 4000", ""),
    ("QoS 1 ×4", "mqtt", "--conns 4 --qos 1 --messages 1000000", "--conns 4 --qos 1 --messages 4000", ""),
    ("QoS 1 ×4 at half that rate", "mqtt", "--conns 4 --qos 1 --messages 0 --duration 10s --rate {half_qos1}",
     "--conns 4 --qos 1 --messages 0 --duration 1s --rate 2000", ""),
    ("QoS 1, 1 publisher, 1 in flight", "mqtt", "--conns 1 --qos 1 --window 1 --messages 0 --duration 10s",
     "--conns 1 --qos 1 --window 1 --messages 300", ""),
    ("QoS 1 ×4, 1 KiB documents", "mqtt", "--conns 4 --qos 1 --window 100 --payload doc --messages 200000",
     "--conns 4 --qos 1 --window 100 --payload doc --messages 2000", ""),
    ("QoS 2 ×4", "mqtt", "--conns 4 --qos 2 --messages 500000", "--conns 4 --qos 2 --messages 4000", ""),
    ("QoS 1, 1,000 publishers at 50,000/s", "mqtt", "--conns 1000 --qos 1 --messages 0 --duration 10s --rate 50000",
     "--conns 100 --qos 1 --messages 0 --duration 1s --rate 2000", ""),
    ("gRPC batch 1 (32 in flight)", "grpc", "--batch 1 --points 100000", "--batch 1 --points 2000", ""),
    ("gRPC batch 1,000", "grpc", "--batch 1000 --points 2000000", "--batch 1000 --points 20000", ""),
]

COLUMNS = ["scenario", "sent/s", "acked/s", "rows in Parquet", "rows/s", "ack ms p50 / p99 / p99.9",
           "fsyncs/s", "peak RSS MiB", "CPU-s per 1M", "bytes/row"]


class Daemon:
    """One `fleetlake run` with the bench config; its JSON log lines are collected."""

    def __init__(self, bin_dir, work, output, extra=""):
        self.work = work
        self.data = work / "data"
        config = work / "bench.toml"
        config.write_text(
            f'[node]\nid = "bench"\ndata_dir = "{self.data}"\n'
            '[admin]\nlisten = ""\n[grpc]\nlisten = "127.0.0.1:0"\n[mqtt]\nlisten = "127.0.0.1:0"\n'
            '[log]\nlevel = "info"\nformat = "json"\n'
            f'[output]\nurl = "{output}"\n' + extra)
        self.lines = []
        self.ready = threading.Event()
        self.ready_info = {}
        self.started = time.monotonic()
        self.proc = subprocess.Popen([str(bin_dir / "fleetlake"), "run", "--config", str(config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if not self.ready.wait(30):
            self.proc.kill()
            raise RuntimeError("fleetlake did not get ready:\n" + "\n".join(self.lines[-20:]))
        self.ready_ms = (self.ready_at - self.started) * 1000

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())
            if "fleetlake ready" in line:
                self.ready_at = time.monotonic()
                self.ready_info = json.loads(line)
                self.ready.set()

    def rss_kib(self):
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))

    def stop(self):
        """SIGTERM, wait, and return the "fleetlake stopped" fields."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise RuntimeError("fleetlake did not stop within 120 s")
        self.reader.join(timeout=10)  # the pipe is closed: the reader ends after the last line
        for line in reversed(self.lines):
            if "fleetlake stopped" in line:
                return json.loads(line)
        raise RuntimeError("no 'fleetlake stopped' line:\n" + "\n".join(self.lines[-20:]))


def lake_rows_bytes(data):
    """Rows and bytes of the Parquet files under data/lake (every footer read)."""
    import pyarrow.parquet as pq
    rows = size = 0
    for f in (data / "lake").rglob("*.parquet"):
        rows += pq.read_metadata(f).num_rows
        size += f.stat().st_size
    return rows, size


def summary(out):
    lines = [l for l in out.strip().splitlines() if "=" in l]
    return dict(re.findall(r"(\S+?)=(\S+)", lines[-1])) if lines else {}


def run_scenario(bin_dir, name, kind, args, output, extra=""):
    with tempfile.TemporaryDirectory(prefix="fleetlake-bench-") as tmp:
        d = Daemon(bin_dir, Path(tmp), output, extra)
        addr = d.ready_info["mqtt_listen" if kind == "mqtt" else "grpc_listen"]
        cmd = [str(bin_dir / "fleetlake-bench"), kind, "--quiet", "--addr", addr] + args.split()
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        s = summary(r.stdout)
        stopped = d.stop()
        rows, size = lake_rows_bytes(d.data)
        ok = r.returncode == 0 and s.get("failed_conns") == "0"
        if not ok:
            print(f"{name}: fleetlake-bench failed ({r.returncode}): {r.stdout}{r.stderr}", file=sys.stderr)
        messages, acked = int(s.get("messages", 0)), int(s.get("acked", 0))
        # Each MQTT connection ends with a QoS 1 fence message (a row too) whose PUBACK says the
        # server took in everything before it, so QoS 0 messages count as delivered.
        fences = int(s.get("connected", 0)) if kind == "mqtt" else 0
        expected = (messages if "--qos 0" in args else acked) + fences
        lost = output != "null:" and rows < expected
        if lost:
            print(f"{name}: {expected} rows expected, {rows} in Parquet", file=sys.stderr)
        seconds = float(s.get("seconds", 0) or 0)
        m = re.search(r"wal_syncs: (\d+)", str(stopped.get("stats", "")))
        syncs = int(m.group(1)) if m else None
        counted = rows if output != "null:" else messages + fences
        return {
            "ok": ok and not lost,
            "scenario": name,
            "sent/s": float(s.get("msgs_per_s", 0)),
            "acked/s": None if "--qos 0" in args else float(s.get("acked_per_s", 0)),
            "rows in Parquet": rows if output != "null:" else None,
            "rows/s": rows / seconds if seconds and output != "null:" else None,
            "ack ms p50 / p99 / p99.9": " / ".join(fmt(float(s[k])) for k in ("ack_ms_p50", "p99", "p99.9"))
            if "p99" in s else None,
            "fsyncs/s": syncs / seconds if seconds and syncs is not None else None,
            "peak RSS MiB": stopped["peak_rss_kib"] / 1024,
            "CPU-s per 1M": float(stopped["cpu_seconds"]) / max(counted, 1) * 1e6,
            "bytes/row": size / rows if rows else None,
        }


def idle_connections(bin_dir, conns, hold):
    """RSS per idle connection: `conns` CONNECTed, silent connections held for `hold` seconds."""
    with tempfile.TemporaryDirectory(prefix="fleetlake-bench-") as tmp:
        d = Daemon(bin_dir, Path(tmp), "")
        before = d.rss_kib()
        fds = lambda: len(os.listdir(f"/proc/{d.proc.pid}/fd"))
        base = fds()
        gen = subprocess.Popen([str(bin_dir / "fleetlake-bench"), "mqtt", "--quiet", "--addr", d.ready_info["mqtt_listen"],
                                "--conns", str(conns), "--idle", "--duration", f"{hold}s"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + hold
        while fds() < base + conns and time.monotonic() < deadline:
            time.sleep(0.1)  # polling a condition with a deadline
        held = fds() - base
        during = d.rss_kib()
        out, err = gen.communicate(timeout=hold + 60)
        d.stop()
    ok = gen.returncode == 0 and held >= conns
    per = (during - before) / max(held, 1)
    line = (f"{held:,} idle connections (CONNECT sent, then silent): RSS {before / 1024:.1f} → "
            f"{during / 1024:.1f} MiB, {per:.1f} KiB per connection")
    if not ok:
        line += f" — FAILED ({gen.returncode}): {out.strip()} {err.strip()[-300:]}"
    return ok, line


def fmt(v):
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    if isinstance(v, int) or v >= 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def stripped_size(binary):
    """The size of a stripped copy of `binary` (as `cargo deb --strip` ships it)."""
    strip = shutil.which("strip")
    if not strip:
        return f"binary {binary.stat().st_size / 2**20:.1f} MiB (not stripped: no `strip`)"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "fleetlake"
        subprocess.run([strip, "-o", str(out), str(binary)], check=True)
        return f"stripped binary {out.stat().st_size / 2**20:.1f} MiB ({out.stat().st_size:,} bytes)"


def raise_fd_limit():
    """1,000 publishers and 10,000 idle connections need more than the usual 1,024 descriptors
    (inherited by both processes)."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 10_000 + 1_024  # 10,000 idle connections, plus the daemon's own files
    if soft < want and hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, want), hard))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny counts (CI): checks the suite, not speed")
    p.add_argument("--bin-dir", help="where fleetlake and fleetlake-bench are (default: build release)")
    p.add_argument("--only", help="run only scenarios whose name contains this")
    p.add_argument("--extra-config", default="", metavar="TOML",
                   help='appended to every daemon\'s config, e.g. \'[wal]\\nsync_interval = "0ms"\'')
    p.add_argument("--write", metavar="RESULTS_MD",
                   help="also write the results between the `suite` markers of this file")
    a = p.parse_args()
    if a.bin_dir:
        bin_dir = Path(a.bin_dir).resolve()
    else:
        subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "fleetlake", "--bin", "fleetlake-bench"],
                       cwd=ROOT, check=True)
        bin_dir = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")).resolve() / "release"
    raise_fd_limit()
    for b in ("fleetlake", "fleetlake-bench"):
        if not (bin_dir / b).exists():
            sys.exit(f"{bin_dir / b} does not exist")

    with tempfile.TemporaryDirectory(prefix="fleetlake-bench-") as tmp:
        d = Daemon(bin_dir, Path(tmp), "")
        time.sleep(0.5)  # settle: idle RSS after start-up work is done (not a synchronisation)
        idle_kib = d.rss_kib()
        d.stop()
    header = (f"{'SMOKE RUN (tiny counts; figures mean nothing): ' if a.smoke else ''}"
              f"start to ready: {d.ready_ms:.0f} ms (process start → 'fleetlake ready' log line, empty WAL); "
              f"idle RSS {idle_kib / 1024:.1f} MiB; memory budget 64 MiB (default); "
              f"{stripped_size(bin_dir / 'fleetlake')}"
              + (f"; extra config: `{a.extra_config}`" if a.extra_config else ""))
    print(header + "\n", flush=True)

    results, failed = [], False
    half_qos1 = None
    for name, kind, full, smoke, output in SCENARIOS:
        if a.only and a.only not in name:
            continue
        args = smoke if a.smoke else full
        if "{half_qos1}" in args:
            if half_qos1 is None:
                continue
            args = args.replace("{half_qos1}", str(int(half_qos1)))
        r = run_scenario(bin_dir, name, kind, args, output, a.extra_config.replace("\\n", "\n"))
        if name == "QoS 1 ×4":
            half_qos1 = r["acked/s"] / 2
        results.append(r)
        failed |= not r["ok"]
        print(f"{name}: done", file=sys.stderr)
    if not a.only:
        conns, hold = (200, 5) if a.smoke else (10_000, 20)
        ok, line = idle_connections(bin_dir, conns, hold)
        failed |= not ok
        print(f"idle connections: done", file=sys.stderr)
    table = ["| " + " | ".join(COLUMNS) + " |",
             "|" + "|".join("---" if c == "scenario" else "---:" for c in COLUMNS) + "|"]
    for r in results:
        table.append("| " + " | ".join(fmt(r[c]) for c in COLUMNS) + (" |" if r["ok"] else " | FAILED"))
    if not a.only:
        table.append(f"\n{line}")
    print("\n".join(table))
    if a.write:
        write_results(Path(a.write), header, table)
    sys.exit(1 if failed else 0)


def write_results(path, header, table):
    """Replaces what lies between `<!-- suite:begin -->` and `<!-- suite:end -->` in `path`
    with this run: its date, command, machine, header line and table."""
    begin, end = "<!-- suite:begin -->", "<!-- suite:end -->"
    text = path.read_text() if path.exists() else f"# Benchmark results\n\n{begin}\n{end}\n"
    if begin not in text or end not in text:
        sys.exit(f"{path}: no {begin} … {end} markers to write between")
    machine = f"{os.cpu_count()} cores, {os.uname().machine}, Linux {os.uname().release}"
    body = (f"\n## benches/suite.py\n\nMeasured {time.strftime('%Y-%m-%d')} on {machine} "
            f"(`python3 benches/suite.py {' '.join(sys.argv[1:])}`).\n\n> {header}\n\n"
            + "\n".join(table) + "\n\n")
    head, rest = text.split(begin, 1)
    path.write_text(head + begin + body + end + rest.split(end, 1)[1])
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
