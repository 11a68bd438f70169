"""Starts the real fleetlake binary on 127.0.0.1:0 with a temp dir for each test."""

import gc
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 20.0


def binary() -> str:
    if os.environ.get("FLEETLAKE_BIN"):
        return os.environ["FLEETLAKE_BIN"]
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return str(target / "debug" / "fleetlake")


def wait_for(what, cond, deadline=DEADLINE):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def publish_json(port, client_id, topic, docs, qos=1):
    """Publishes each of `docs` as JSON (a str is sent as is) with paho at `qos`; returns when
    the broker has acknowledged them all."""
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    c.max_inflight_messages_set(1000)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        infos = [c.publish(topic, d if isinstance(d, str) else json.dumps(d), qos=qos) for d in docs]
        for info in infos:
            info.wait_for_publish(DEADLINE)
            assert info.is_published()
    finally:
        c.loop_stop()
        c.disconnect()


def free_port():
    """A loopback port nothing listens on now (for a daemon restarted on the same port)."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def port_free(port):
    """Whether 127.0.0.1:`port` can be bound now (a fixed port of the built-in default config)."""
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def follow_log(proc):
    """Reads `proc`'s stderr (a text pipe) on a thread: returns the list its lines go into and an
    Event set at the "fleetlake ready" line."""
    import threading

    log, ready = [], threading.Event()

    def read():
        for line in proc.stderr:
            log.append(line)
            if "fleetlake ready" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    return log, ready


def rss_kib(pid):
    """Resident set size of process `pid` now, KiB."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def metrics(admin):
    """Every sample of /metrics as {"name{labels}": value}."""
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=10) as r:
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert "device" not in sample.labels and "topic" not in sample.labels
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


def make_certs(d, clients=("client",), ca="ca"):
    """A test CA (`{ca}.pem`), a server certificate for 127.0.0.1 signed by it, and a client
    certificate `{name}.pem`/`{name}.key` with CN `name` for each of `clients`, by openssl."""
    def run(*args, ext=None):
        if ext:
            (d / "ext.cnf").write_text(ext)
            args = args + ("-extfile", str(d / "ext.cnf"))
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
        "-days", "2", "-subj", f"/CN=fleetlake test {ca}")
    names = [("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")]
    names += [(c, "extendedKeyUsage=clientAuth\n") for c in clients]
    for name, ext in names:
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/O=fleetlake test/CN={name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", ext=ext)


class Daemon:
    def __init__(self, tmp: Path, extra: str = "", node_id: str = "pytest", env=None):
        self.dir = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.lake = tmp / "data" / "lake"
        self.rejected = tmp / "data" / "_rejected"
        config = tmp / "fleetlake.toml"
        config.write_text(
            f'[node]\nid = "{node_id}"\ndata_dir = "{tmp / "data"}"\nshutdown_grace = "10s"\n'
            f'[admin]\nlisten = "127.0.0.1:0"\n'
            + ('' if "[grpc]" in extra else '[grpc]\nlisten = "127.0.0.1:0"\n')
            + ('' if "[mqtt]" in extra else '[mqtt]\nlisten = "127.0.0.1:0"\n')
            + f'{extra}\n'
        )
        self.proc = subprocess.Popen(
            [binary(), "run", "--log-format", "json", "--config", str(config)],
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines = []
        self.ready = threading.Event()
        self.port = None
        threading.Thread(target=self._read_log, daemon=True).start()
        if not self.ready.wait(DEADLINE):
            self.proc.kill()
            raise AssertionError("daemon did not get ready:\n" + "\n".join(self.lines))

    def _read_log(self):
        for line in self.proc.stderr:
            self.lines.append(line)
            if "fleetlake ready" in line:
                ready = json.loads(line)
                port = lambda addr: None if addr == "off" else int(addr.rsplit(":", 1)[1])
                self.port = port(ready["mqtt_listen"])
                self.tls_port = port(ready["mqtt_tls_listen"])
                self.admin = ready["admin_listen"]
                self.grpc = ready["grpc_listen"]
                self.ready.set()

    def files(self, table="telemetry"):
        return sorted((self.lake / table).rglob("*.parquet"))

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=DEADLINE)
        assert code == 0, "".join(self.lines)

    def kill(self):
        """SIGKILL: no flush, no clean-up; only the WAL and published files survive."""
        self.proc.kill()
        self.proc.wait(timeout=DEADLINE)


@pytest.fixture
def daemon_factory(tmp_path):
    started = []

    def start(extra="", dir_name=None, node_id="pytest", env=None):
        """A daemon in a fresh dir, or in `dir_name` again (a restart on the same data);
        `env` adds to the environment (e.g. a FLEETLAKE_FAULT crash point)."""
        d = Daemon(tmp_path / (dir_name or f"d{len(started)}"), extra, node_id, env)
        started.append(d)
        return d

    yield start
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
    # paho clients hold sockets until their reference cycles are collected; a test that opens
    # 1,000 sockets (and paho's select() stops at fd 1024) must not inherit them.
    gc.collect()
