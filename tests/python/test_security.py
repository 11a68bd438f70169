"""Device security with real clients and files: TLS and mTLS (openssl-made certificates,
mosquitto_pub and paho-mqtt), a password file made by mosquitto_passwd, a Mosquitto ACL file,
the device-identity rule, a slow-loris flood, and a certificate reload on SIGHUP."""

import json
import resource
import signal
import socket
import ssl
import subprocess
import threading
import time

import duckdb
import paho.mqtt.client as mqtt

from conftest import make_certs, metrics, rss_kib, wait_for

TABLES = '[[tables]]\nname = "telemetry"\ntopics = ["sensors/{device_id}/+", "#"]\n'


def pub(port, *args):
    """mosquitto_pub at QoS 1 (returns once PUBACK came, or fails)."""
    return subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", *args],
                          capture_output=True, text=True, timeout=30)


def rows(lake):
    files = list(lake.rglob("*.parquet"))
    if not files:
        return []
    return sorted(duckdb.sql(
        f"SELECT device_id, seq FROM read_parquet('{lake}/**/*.parquet', union_by_name = true)"
    ).fetchall())


def tls_section(certs, client_ca=False, extra=""):
    ca = f'client_ca = "{certs}/ca.pem"\n' if client_ca else ""
    return (f'[mqtt.tls]\nlisten = "127.0.0.1:0"\ncert = "{certs}/server.pem"\n'
            f'key = "{certs}/server.key"\n{ca}{extra}')


class Paho:
    """A paho-mqtt client that records CONNACK, PUBACK reason codes and disconnects."""

    def __init__(self, port, client_id, v5=True, username=None, password=None, tls=None):
        protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        if username:
            self.c.username_pw_set(username, password)
        if tls:
            self.c.tls_set(**tls)
        self.connack = None
        self.acks = {}
        self.disconnected = threading.Event()
        self.c.on_connect = lambda c, u, f, rc, p: setattr(self, "connack", rc.value)
        self.c.on_publish = lambda c, u, mid, rc, p: self.acks.__setitem__(mid, rc.value)
        self.c.on_disconnect = lambda c, u, f, rc, p: self.disconnected.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        wait_for("CONNACK", lambda: self.connack is not None or self.disconnected.is_set())

    def publish(self, topic, seq, qos=1):
        info = self.c.publish(topic, json.dumps({"seq": seq}), qos=qos)
        return info.mid

    def ack(self, mid):
        wait_for(f"ack of {mid}", lambda: mid in self.acks)
        return self.acks[mid]

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def test_tls_then_mtls_with_the_certificate_cn_as_device_id(daemon_factory, tmp_path):
    certs, other = tmp_path / "certs", tmp_path / "other"
    certs.mkdir()
    other.mkdir()
    make_certs(certs, clients=("dev-7",))
    make_certs(other, clients=("dev-7",), ca="otherca")

    # Server-authenticated TLS: any client that trusts our CA.
    d = daemon_factory(tls_section(certs))
    r = pub(d.tls_port, "--cafile", f"{certs}/ca.pem", "-i", "tls-1", "-t", "sensors/tls-1/telemetry",
            "-m", '{"seq": 1}')
    assert r.returncode == 0, r.stderr
    r = pub(d.tls_port, "-i", "tls-2", "-t", "sensors/tls-2/telemetry", "-m", '{"seq": 2}')
    assert r.returncode != 0, "a client that does not trust the server's CA gives up"
    d.stop()
    assert rows(d.lake) == [("tls-1", 1)]

    # Mutual TLS, plain listener off, device_id from the certificate.
    m = daemon_factory(TABLES + '[mqtt]\nlisten = ""\n' + tls_section(certs, client_ca=True)
                       + '[mqtt.auth]\nidentity = "cert_cn"\n')
    assert m.port is None
    cert = ["--cafile", f"{certs}/ca.pem", "--cert", f"{certs}/dev-7.pem", "--key", f"{certs}/dev-7.key"]
    r = pub(m.tls_port, *cert, "-i", "any-client-id", "-t", "plant/line-1", "-m", '{"seq": 3}')
    assert r.returncode == 0, r.stderr
    foreign = ["--cafile", f"{certs}/ca.pem", "--cert", f"{other}/dev-7.pem", "--key", f"{other}/dev-7.key"]
    r = pub(m.tls_port, *foreign, "-i", "impostor", "-t", "plant/line-1", "-m", '{"seq": 4}')
    assert r.returncode != 0, "a certificate from another CA is refused"
    r = pub(m.tls_port, "--cafile", f"{certs}/ca.pem", "-i", "no-cert", "-t", "plant/line-1", "-m", '{"seq": 5}')
    assert r.returncode != 0, "no client certificate: refused"
    tls = {"ca_certs": f"{certs}/ca.pem", "certfile": f"{certs}/dev-7.pem", "keyfile": f"{certs}/dev-7.key"}
    dev7 = Paho(m.tls_port, "c-7", tls=tls)
    assert dev7.ack(dev7.publish("sensors/dev-8/telemetry", 6)) == 0x87, "cannot claim dev-8"
    assert dev7.ack(dev7.publish("sensors/dev-7/telemetry", 7)) == 0
    dev7.close()
    wait_for("two failed handshakes counted",
             lambda: metrics(m.admin)["fleetlake_tls_handshake_failures_total"] == 2)
    assert metrics(m.admin)["fleetlake_tls_handshakes_total"] == 2
    assert metrics(m.admin)["fleetlake_publish_denied_device_total"] == 1
    m.stop()
    assert rows(m.lake) == [("dev-7", 3), ("dev-7", 7)]


def test_mosquitto_passwd_file_and_device_claims(daemon_factory, tmp_path):
    pw = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pw), "dev-1", "s3cret"], check=True)
    subprocess.run(["mosquitto_passwd", "-b", str(pw), "dev-2", "other-secret"], check=True)
    d = daemon_factory(TABLES + f'[mqtt.auth]\npassword_file = "{pw}"\nallow_anonymous = false\n'
                       'identity = "username"\n')
    r = pub(d.port, "-u", "dev-1", "-P", "s3cret", "-i", "c-1", "-t", "sensors/dev-1/telemetry",
            "-m", '{"seq": 1}')
    assert r.returncode == 0, r.stderr
    r = pub(d.port, "-u", "dev-1", "-P", "wrong-password", "-i", "c-2", "-t", "sensors/dev-1/telemetry",
            "-m", '{"seq": 2}')
    assert r.returncode != 0 and "not author" in r.stderr.lower(), r.stderr
    r = pub(d.port, "-i", "c-3", "-t", "sensors/dev-1/telemetry", "-m", '{"seq": 3}')
    assert r.returncode != 0 and "not author" in r.stderr.lower(), r.stderr
    bad5 = Paho(d.port, "c-4", username="dev-2", password="wrong-password")
    assert bad5.connack == 0x87, "MQTT 5 CONNACK: not authorized"
    bad5.close()

    # Authenticated as dev-1 (identity = username), no ACL: rows for dev-1 only.
    ok = Paho(d.port, "c-5", username="dev-1", password="s3cret")
    assert ok.connack == 0
    assert ok.ack(ok.publish("sensors/dev-1/telemetry", 6)) == 0
    assert ok.ack(ok.publish("plant/line-1", 7)) == 0, "no device level: the row is dev-1's"
    assert ok.ack(ok.publish("sensors/dev-2/telemetry", 8)) == 0x87, "another device's topic"
    ok.close()
    m = metrics(d.admin)
    assert m["fleetlake_auth_refused_credentials_total"] == 2
    assert m["fleetlake_auth_refused_anonymous_total"] == 1
    assert m["fleetlake_publish_denied_device_total"] == 1
    assert not any("wrong-password" in line for line in d.lines), "passwords are never logged"
    d.stop()
    assert rows(d.lake) == [("dev-1", 1), ("dev-1", 6), ("dev-1", 7)]


def test_acl_pattern_keeps_each_client_to_its_own_topics(daemon_factory, tmp_path):
    acl = tmp_path / "acl"
    acl.write_text("# each device writes only below its own client id\npattern write sensors/%c/#\n")
    d = daemon_factory(TABLES + f'[mqtt.auth]\nacl_file = "{acl}"\n')
    v5 = Paho(d.port, "dev-1")
    assert v5.ack(v5.publish("sensors/dev-2/telemetry", 1)) == 0x87
    # QoS 2: PUBREC carries 0x87, but paho ignores PUBREC reason codes (it completes the flow
    # with PUBREL/PUBCOMP); the counter and the rows below show the refusal.
    v5.ack(v5.publish("sensors/dev-2/telemetry", 2, qos=2))
    assert v5.ack(v5.publish("sensors/dev-1/telemetry", 3)) == 0
    v5.close()
    v3 = Paho(d.port, "dev-1", v5=False)
    v3.publish("sensors/dev-2/telemetry", 4)
    assert v3.disconnected.wait(10), "MQTT 3.1.1 has no negative ack: disconnected"
    v3.c.loop_stop()
    r = pub(d.port, "-i", "dev-1", "-t", "sensors/dev-1/telemetry", "-m", '{"seq": 5}')
    assert r.returncode == 0, r.stderr
    assert metrics(d.admin)["fleetlake_publish_denied_acl_total"] == 3
    d.stop()
    assert rows(d.lake) == [("dev-1", 3), ("dev-1", 5)]


def test_slow_loris_does_not_stop_a_real_client(daemon_factory, tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    certs = tmp_path / "certs"
    certs.mkdir()
    make_certs(certs, clients=())
    d = daemon_factory('[mqtt]\nlisten = "127.0.0.1:0"\nconnect_timeout = "60s"\n'
                       + tls_section(certs, extra='handshake_timeout = "60s"\n'))
    before = rss_kib(d.proc.pid)
    idle = []
    # 500 plain connections and 250 TLS ones that never start the handshake: no CONNECT ever.
    for port, count in ((d.port, 500), (d.tls_port, 250)):
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port))
            idle.append(s)
    # 250 that finish the TLS handshake, then stay silent.
    context = ssl.create_default_context(cafile=f"{certs}/ca.pem")
    for _ in range(250):
        idle.append(context.wrap_socket(socket.create_connection(("127.0.0.1", d.tls_port)),
                                        server_hostname="127.0.0.1"))
    wait_for("1,000 silent connections open",
             lambda: metrics(d.admin)["fleetlake_connections_open"] == 1000)
    flooded = rss_kib(d.proc.pid)
    try:
        # mosquitto_pub, not paho: this process holds 1,000 sockets, and paho's select() fails
        # on a descriptor past 1024, which other test modules' open files can push it to.
        start = time.monotonic()
        r = pub(d.port, "-i", "legit-1", "-t", "sensors/legit-1/telemetry", "-m", '{"seq": 1}')
        plain_latency = time.monotonic() - start
        assert r.returncode == 0, r.stderr
        start = time.monotonic()
        r = pub(d.tls_port, "--cafile", f"{certs}/ca.pem", "-i", "legit-2",
                "-t", "sensors/legit-2/telemetry", "-m", '{"seq": 2}')
        tls_latency = time.monotonic() - start
        assert r.returncode == 0, r.stderr
    finally:
        for s in idle:
            s.close()
    print(f"\nslow-loris: 1000 silent connections; RSS {before} KiB -> {flooded} KiB "
          f"({(flooded - before) / 1000:.1f} KiB each); legit client connect+PUBACK "
          f"{plain_latency * 1000:.1f} ms plain, {tls_latency * 1000:.1f} ms TLS (mosquitto_pub)")
    # Served long before any timeout (60 s) could have freed a slot: nothing waited on the flood.
    assert plain_latency < 10 and tls_latency < 10
    assert flooded - before < 64 * 1024, "RSS bounded"
    d.stop()
    assert rows(d.lake) == [("legit-1", 1), ("legit-2", 2)]


def server_cert(port, certs):
    context = ssl.create_default_context(cafile=f"{certs}/ca.pem")
    with context.wrap_socket(socket.create_connection(("127.0.0.1", port)),
                             server_hostname="127.0.0.1") as s:
        return s.getpeercert(binary_form=True)


def test_sighup_reloads_the_certificate_without_dropping_connections(daemon_factory, tmp_path):
    certs = tmp_path / "certs"
    certs.mkdir()
    make_certs(certs, clients=())
    d = daemon_factory(tls_section(certs))
    first = server_cert(d.tls_port, certs)
    kept = Paho(d.tls_port, "kept-1", tls={"ca_certs": f"{certs}/ca.pem"})
    assert kept.ack(kept.publish("sensors/kept-1/telemetry", 1)) == 0
    # A renewed certificate (new key, same CA) written over the old files.
    subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
                    "-out", "server.csr", "-subj", "/CN=server"], check=True, capture_output=True, cwd=certs)
    (certs / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    subprocess.run(["openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                    "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf"],
                   check=True, capture_output=True, cwd=certs)
    d.proc.send_signal(signal.SIGHUP)
    wait_for("reload logged", lambda: any("TLS certificate reloaded" in l for l in d.lines))
    second = server_cert(d.tls_port, certs)
    assert second != first, "new handshakes get the new certificate"
    assert kept.ack(kept.publish("sensors/kept-1/telemetry", 2)) == 0, "the open connection lives on"
    assert not kept.disconnected.is_set()
    # A broken file on reload: logged, the current certificate stays.
    (certs / "server.key").write_text("garbage\n")
    d.proc.send_signal(signal.SIGHUP)
    wait_for("failed reload logged", lambda: any("keeping the old certificate" in l for l in d.lines))
    assert server_cert(d.tls_port, certs) == second
    kept.close()
    d.stop()
    assert rows(d.lake) == [("kept-1", 1), ("kept-1", 2)]


def closed_by_server(s):
    """Whether the server closed `s` (EOF) within a few seconds."""
    s.settimeout(5)
    try:
        return s.recv(1) == b""
    except (ConnectionResetError, socket.timeout):
        return False


def test_per_ip_and_rate_limits_close_extra_connections_at_once(daemon_factory):
    d = daemon_factory('[mqtt]\nlisten = "127.0.0.1:0"\nmax_connections_per_ip = 3\n')
    held = [socket.create_connection(("127.0.0.1", d.port)) for _ in range(3)]
    wait_for("3 open", lambda: metrics(d.admin)["fleetlake_connections_open"] == 3)
    extra = socket.create_connection(("127.0.0.1", d.port))
    assert closed_by_server(extra), "the 4th connection from one address is closed"
    assert metrics(d.admin)["fleetlake_connections_refused_per_ip_total"] == 1
    held.pop().close()
    wait_for("2 open", lambda: metrics(d.admin)["fleetlake_connections_open"] == 2)
    client = Paho(d.port, "after-release")
    assert client.connack == 0, "a freed place is usable again"
    client.close()
    for s in held:
        s.close()
    d.stop()

    r = daemon_factory('[mqtt]\nlisten = "127.0.0.1:0"\nconnect_rate = 5\n')
    burst = [socket.create_connection(("127.0.0.1", r.port)) for _ in range(20)]
    refused = sum(closed_by_server(s) for s in burst[5:])
    assert refused >= 10, f"a burst of 20 at 5/s: {refused} of the last 15 closed"
    assert metrics(r.admin)["fleetlake_connections_refused_rate_total"] == refused
    for s in burst:
        s.close()
    r.stop()
