"""The README's Quick start, run literally: its commands are read from README.md and run as
written (by bash) in a fresh copy of the project in a temp dir, as a new user would type them.
Change the Quick start and this test follows it; break it and this test fails.

The section must hold, in order: a ```sh block whose `cargo run` line starts the daemon (the
block's other line, the test command, is what is running this test and is not run again); a
```sh block that publishes (mosquitto_pub); a ```sh block that queries; and a ```text block with
the table that query prints. Between the publish and the query the user stops the daemon with
Ctrl-C: here, SIGINT to the daemon's process group, which must exit 0 after flushing.
"""

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

from conftest import ROOT, follow_log, port_free, wait_for

# The first `cargo run --release` builds a release binary (minutes on a fresh machine).
BUILD_DEADLINE = 2400.0
# Ports of the built-in default config, which the Quick start uses.
DEFAULT_PORTS = (1883, 50051, 9464)


def quickstart_section() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"^## Quick start\n(.*?)^## ", text, re.S | re.M)
    assert m, "README.md has no '## Quick start' section followed by another section"
    return m.group(1)


def blocks(section: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", section, re.S | re.M)


def commands(block: str) -> list[str]:
    """Shell commands of a block: continuation lines joined, comments kept (bash ignores them)."""
    return [c.strip() for c in block.replace("\\\n", " ").splitlines() if c.strip()]


def box_table(text: str) -> list[list[str]]:
    """The cells of a DuckDB box table (header, types, rows), without the borders."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("│"):
            rows.append([c.strip() for c in line.strip("│").split("│")])
    return rows


def copy_project(dest: Path):
    ignore = shutil.ignore_patterns("target", ".git", "fuzz", "fleetlake-data", "__pycache__", ".pytest_cache")
    # Fresh modification times (shutil.copy, not copy2): cargo then rebuilds the crate from this
    # copy rather than trusting artifacts of another tree in the shared target dir.
    shutil.copytree(ROOT, dest, ignore=ignore, copy_function=shutil.copy)


def test_the_readme_quick_start_runs_as_written(tmp_path):
    section = quickstart_section()
    sh = blocks(section, "sh")
    assert len(sh) >= 3, "Quick start: expected the run, publish and query blocks"
    run_block, publish_block, query_block = sh[0], sh[1], sh[2]
    run = [c for c in commands(run_block) if c.startswith("cargo run")]
    assert len(run) == 1, f"Quick start: one `cargo run` line expected in\n{run_block}"
    assert any(c.startswith("./tests/run.sh") for c in commands(run_block)), \
        "the Quick start's test command must be ./tests/run.sh (what .ci/run calls)"
    assert "mosquitto_pub" in publish_block
    expected = box_table(blocks(section, "text")[0])
    assert len(expected) >= 3, "Quick start: the ```text block must show the query's table"
    for port in DEFAULT_PORTS:
        assert port_free(port), f"127.0.0.1:{port} is taken: the Quick start's default config needs it"

    work = tmp_path / "fleetlake"
    copy_project(work)
    env = dict(os.environ)
    # Reuse the suite's compiled dependencies (a fresh target dir would rebuild all of them).
    env.setdefault("CARGO_TARGET_DIR", str(ROOT / "target"))
    env.pop("RUST_LOG", None)
    daemon = subprocess.Popen(["bash", "-c", run[0]], cwd=work, env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    log, ready = follow_log(daemon)
    try:
        wait_for("the daemon to get ready (or to exit)",
                 lambda: ready.is_set() or daemon.poll() is not None, BUILD_DEADLINE)
        assert ready.is_set(), f"the daemon exited ({daemon.poll()}) before it was ready:\n" + "".join(log[-50:])
        for cmd in commands(publish_block):
            done = subprocess.run(["bash", "-c", cmd], cwd=work, capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, f"{cmd}\n{done.stderr}"
        os.killpg(daemon.pid, signal.SIGINT)  # Ctrl-C in the daemon's terminal
        assert daemon.wait(timeout=60) == 0, "Ctrl-C must flush and exit 0:\n" + "".join(log[-30:])
    finally:
        if daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()
    wait_for("the log reader", lambda: any("fleetlake stopped" in line for line in log))
    assert (work / "fleetlake-data" / "lake").is_dir(), "the data lands under ./fleetlake-data"

    # The README shows UTC times.
    query = subprocess.run(["bash", "-c", query_block], cwd=work, capture_output=True, text=True,
                           timeout=120, env={**os.environ, "TZ": "UTC"})
    assert query.returncode == 0, query.stderr
    assert box_table(query.stdout) == expected, f"the query printed\n{query.stdout}"
