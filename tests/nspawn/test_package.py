"""The Debian package under a real systemd: a Debian 12 root file system (debootstrap from the
package mirror, cached in FLEETLAKE_ROOTFS_CACHE, default /var/tmp/fleetlake-rootfs) gets the
.deb `cargo deb` built (FLEETLAKE_DEB) and is booted with `systemd-nspawn -b` on a private
network; tests/nspawn/scenario.sh runs inside as a oneshot unit and writes what it saw to a
bound results folder, then powers the container off.

Needs root, systemd-nspawn (systemd-container) and debootstrap; tests/run.sh installs them."""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("FLEETLAKE_ROOTFS_CACHE", "/var/tmp/fleetlake-rootfs"))
# Bump when the recipe below changes: the cache is rebuilt.
RECIPE = "bookworm-minbase-3"
PACKAGES = "systemd,systemd-sysv,dbus,mosquitto-clients,python3,python3-pip,ca-certificates"

SCENARIO_UNIT = """[Unit]
Description=fleetlake package scenario (tests/nspawn)
After=multi-user.target
ConditionPathExists=/scenario/scenario.sh

[Service]
Type=oneshot
ExecStart=/scenario/scenario.sh
ExecStopPost=/bin/systemctl poweroff --no-block
TimeoutStartSec=300

[Install]
WantedBy=multi-user.target
"""


def rootfs() -> Path:
    """The cached Debian 12 root file system with python3 and duckdb, built once."""
    root = CACHE / "root"
    stamp = CACHE / "recipe"
    if stamp.exists() and stamp.read_text() == RECIPE:
        return root
    shutil.rmtree(CACHE, ignore_errors=True)
    CACHE.mkdir(parents=True)
    subprocess.run(["debootstrap", "--variant=minbase", f"--include={PACKAGES}", "bookworm", str(root),
                    "http://deb.debian.org/debian"], check=True, stdout=subprocess.DEVNULL, timeout=1800)
    # The host's CA bundle and pip settings: the registry may sit behind the host's proxy CA.
    ca = "/etc/ssl/certs/ca-certificates.crt"
    subprocess.run(["systemd-nspawn", "-q", "-D", str(root), "--register=no", "--keep-unit", "--pipe",
                    f"--bind-ro={ca}:/etc/ssl/certs/host-ca.crt", "--setenv=PIP_CERT=/etc/ssl/certs/host-ca.crt",
                    "--setenv=PIP_DEFAULT_TIMEOUT=180",
                    "python3", "-m", "pip", "install", "-q", "--break-system-packages", "duckdb"],
                   check=True, timeout=900)
    unit = root / "etc/systemd/system/fleetlake-scenario.service"
    unit.write_text(SCENARIO_UNIT)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "fleetlake-scenario.service").symlink_to("/etc/systemd/system/fleetlake-scenario.service")
    stamp.write_text(RECIPE)
    return root


def read_results(path: Path) -> dict:
    results = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        results[key] = value
    return results


@pytest.fixture(scope="module")
def booted(tmp_path_factory):
    deb = os.environ.get("FLEETLAKE_DEB")
    assert deb and Path(deb).is_file(), "FLEETLAKE_DEB must name the .deb that cargo deb built"
    for tool in ("systemd-nspawn", "debootstrap"):
        assert shutil.which(tool), f"{tool} is missing (tests/run.sh installs it)"
    work = tmp_path_factory.mktemp("nspawn")
    started = time.monotonic()
    base = rootfs()
    prepared = time.monotonic()
    root = work / "root"
    subprocess.run(["cp", "-a", "--reflink=auto", str(base), str(root)], check=True)
    (work / "pkg").mkdir()
    shutil.copy(deb, work / "pkg" / "fleetlake.deb")
    (work / "scenario").mkdir()
    shutil.copy(HERE / "scenario.sh", work / "scenario" / "scenario.sh")
    results = work / "results"
    results.mkdir()
    boot = subprocess.run(
        ["systemd-nspawn", "-q", "-b", "-D", str(root), "--register=no", "--keep-unit", "--private-network",
         f"--bind-ro={work / 'pkg'}:/pkg", f"--bind-ro={work / 'scenario'}:/scenario",
         f"--bind={results}:/results"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    finished = time.monotonic()
    print(f"\nnspawn: root file system ready in {prepared - started:.1f} s, "
          f"boot + scenario + poweroff {finished - prepared:.1f} s")
    log = (results / "scenario.log").read_text() if (results / "scenario.log").exists() else ""
    assert (results / "results.env").exists(), f"the scenario did not run:\n{boot.stdout[-3000:]}\n{log}"
    found = read_results(results / "results.env")
    assert found.get("done") == "1", f"the scenario stopped early: {found}\n{log[-4000:]}"
    shutil.rmtree(root, ignore_errors=True)
    return found, results, log


def test_the_package_installs_without_starting_a_service_that_needs_secrets(booted):
    found, _, log = booted
    assert found["install"] == "0", log[-3000:]
    assert found["active_after_install"] != "active", found


def test_the_shipped_config_fails_once_naming_what_is_missing(booted):
    found, results, _ = booted
    journal = (results / "a_journal.txt").read_text()
    print(f"\nshipped config, journal ({found['a_journal_lines']} lines):\n{journal}")
    assert found["a_start_rc"] != "0"
    assert found["a_state"] == "failed", found
    assert found["a_restarts"] == "0", "no restart loop"
    assert found["a_exit_status"] == "78", found
    assert int(found["a_journal_lines"]) < 20, journal
    assert "LoadCredential=" in journal, journal


def test_a_minimal_config_runs_reloads_stops_and_an_analyst_reads_the_lake(booted):
    found, results, log = booted
    print(f"\nminimal config, layout:\n{(results / 'b_layout.txt').read_text()}")
    assert found["b_start_rc"] == "0", (results / "b_journal.txt").read_text()
    assert found["b_state"] == "active"
    assert found["b_malloc_env"].split() == ["MALLOC_ARENA_MAX=2", "MALLOC_MMAP_THRESHOLD_=131072"], found
    assert found["b_published"] == "0"
    assert found["b_reload_rc"] == "0"
    assert found["b_status"].startswith("ready;"), found
    assert found["b_stop_rc"] == "0"
    assert found["b_status_after_stop"] == "", found
    rows = (results / "b_analyst_rows.txt").read_text().strip()
    error = (results / "b_analyst_error.txt").read_text()
    assert found["b_analyst_rc"] == "0" and rows == "3", f"rows {rows!r}: {error}"


def test_the_sandbox_holds_under_the_real_systemd(booted):
    found, results, _ = booted
    print(f"\nexposure under systemd 252: {found['c_exposure']}")
    assert float(found["c_exposure"]) <= 1.5, (results / "c_security.txt").read_text()
