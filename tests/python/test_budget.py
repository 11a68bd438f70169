"""The memory budget owns its bytes: whatever way data leaves the pipeline (published, rejected,
a publish that failed and was retried, a clean stop), the bytes it held come back. Read from
the real daemon's `fleetlake_memory_budget_used_bytes` and its last log line."""

import json
import subprocess

from conftest import metrics, wait_for


def pub(port, client_id, topic, payload):
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-i", client_id,
                    "-t", topic, "-m", payload], check=True, timeout=20)


def used(d):
    return metrics(d.admin)["fleetlake_memory_budget_used_bytes"]


def test_the_budget_returns_to_zero_after_every_path(daemon_factory):
    d = daemon_factory('[batch]\nmax_age = "200ms"\n'
                       '[[tables]]\nname = "blocked"\ntopics = ["blocked/#"]\n'
                       '[[tables]]\nname = "telemetry"\ntopics = ["#"]\n')
    assert used(d) == 0

    # Published.
    for i in range(5):
        pub(d.port, "dev-1", "sensors/dev-1/telemetry", json.dumps({"seq": i, "v": i * 0.5}))
    wait_for("the readings' file", lambda: len(d.files()) >= 1)
    wait_for("the budget back at zero after publishing", lambda: used(d) == 0)

    # Rejected: not JSON, and a type conflict with the `v` column.
    pub(d.port, "dev-1", "sensors/dev-1/telemetry", "{not json")
    pub(d.port, "dev-1", "sensors/dev-1/telemetry", json.dumps({"v": "text"}))
    wait_for("two rejected rows", lambda: len(list(d.rejected.rglob("*.parquet"))) >= 1
             and metrics(d.admin)["fleetlake_messages_rejected_total"] == 2)
    wait_for("the budget back at zero after rejecting", lambda: used(d) == 0)

    # A publish that fails (a file stands where the table's folder must go) keeps its bytes
    # while it is retried, and gives them back once it succeeds.
    blocker = d.lake / "blocked"
    blocker.write_text("not a folder")
    pub(d.port, "dev-2", "blocked/dev-2", json.dumps({"v": 1}))
    wait_for("a failed publish", lambda: metrics(d.admin)["fleetlake_publish_errors_total"] >= 1)
    assert used(d) > 0, "a batch waiting to be published holds its budget"
    blocker.unlink()
    wait_for("the retried file", lambda: len(d.files("blocked")) == 1)
    wait_for("the budget back at zero after the retry", lambda: used(d) == 0)

    # A clean stop flushes what is buffered: nothing is held at the end.
    pub(d.port, "dev-3", "sensors/dev-3/telemetry", json.dumps({"v": 2}))
    d.stop()
    stopped = [json.loads(line) for line in d.lines if "fleetlake stopped" in line]
    assert stopped and stopped[-1]["budget_used_bytes"] == 0, stopped
