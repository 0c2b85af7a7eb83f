"""Smoke test of bench/: a tiny fan-out through ``bench/run.py`` against a
real chatd, so a change to chatd or to the bench that breaks the
benchmark (or makes it count wrong) shows in the ordinary test run, not
weeks later when someone wants figures.

run.py starts ``twistd chatd`` on a free 127.0.0.1 port in a scratch
directory and inherits our environment, so PYTHONPATH (``clean_env``)
makes it run this checkout's chatd, not the copy ``pip install .`` put in
the venv.  It stops the server itself, also when it is sent SIGTERM.

The same tiny fan-out runs over Socket.IO (``--protocol socketio``) against
the Node reference server (bench/socketio-node, which needs ``npm ci
--prefix bench/socketio-node``) and against chatd's Socket.IO binding, so
the Socket.IO generator and the Node server cannot rot either.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import REPO, clean_env

# The generator runs on the bench extra (pip install '.[bench]').
if not os.environ.get("CHATD_TEST_REQUIRE_SERVICES"):
    # The test extra installs both; CI (which requires everything) fails
    # instead of skipping if they are missing.
    pytest.importorskip("picows", reason="the bench's packages are missing: pip install '.[test]'")
    pytest.importorskip("uvloop", reason="the bench's packages are missing: pip install '.[test]'")

RECEIVERS, MESSAGES = 5, 20
RUN_TIMEOUT = 90.0  # the run takes a few seconds; this only bounds a hang
NODE_SERVER = REPO / "bench" / "socketio-node"


def run_fanout(tmp_path: Path, *extra: str) -> tuple[int, str, dict[str, Any]]:
    """bench/run.py's fan-out, one round, every receiver a probe (so each
    also checks order and gaps), plus ``extra`` options: (exit status,
    output, its --json)."""
    out_json = tmp_path / "fanout.json"
    cmd = [
        sys.executable,
        str(REPO / "bench" / "run.py"),
        "--scenario=fanout",
        f"--receivers={RECEIVERS}",
        f"--messages={MESSAGES}",
        "--sample=1",
        "--repeat=1",
        "--stall=5",
        "--no-ceiling",
        "--no-pin",
        f"--json={out_json}",
        *extra,
    ]
    proc = subprocess.Popen(
        cmd,
        # TMPDIR: run.py's scratch directories (kept when a run fails) go
        # where pytest cleans up.
        env=clean_env(TMPDIR=str(tmp_path)),
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        # SIGTERM, not SIGKILL: run.py then stops its server and generator.
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        pytest.fail(f"bench/run.py did not finish in {RUN_TIMEOUT:.0f}s:\n{out}")
    report = json.loads(out_json.read_text()) if out_json.exists() else {}
    return proc.returncode, out, report


def test_fanout_delivers_every_message_to_every_receiver(tmp_path: Path) -> None:
    check_fanout(*run_fanout(tmp_path))


@pytest.mark.parametrize("dialect", ["chatflow", "seed000"])
def test_fanout_to_dialect_receivers_delivers_every_message(tmp_path: Path, dialect: str) -> None:
    """Receivers on a seed's dialect path count that dialect's pushes."""
    status, out, report = run_fanout(tmp_path, f"--receiver-dialect={dialect}")
    check_fanout(status, out, report)
    (result,) = report["results"]
    assert result["server"] == f"chatd (sqlite) {dialect}"


def require_node_server() -> None:
    """Skip without Node or bench/socketio-node's packages, unless CI
    requires every service (then it fails: .ci/run installs them)."""
    missing = None
    if not shutil.which("node"):
        missing = "node is not on PATH"
    elif not (NODE_SERVER / "node_modules" / "socket.io").is_dir():
        missing = "bench/socketio-node/node_modules is missing: npm ci --prefix bench/socketio-node"
    if missing and os.environ.get("CHATD_TEST_REQUIRE_SERVICES"):
        pytest.fail(f"the Node reference server cannot run: {missing}")
    if missing:
        pytest.skip(missing)


@pytest.mark.parametrize("against", ["node", "chatd"])
def test_socketio_fanout_delivers_every_message_to_every_receiver(
    tmp_path: Path, against: str
) -> None:
    """The Socket.IO generator against the Node reference server and
    against chatd's binding: every push counted, in order, every ack back."""
    if against == "node":
        require_node_server()
    status, out, report = run_fanout(tmp_path, "--protocol=socketio", f"--against={against}")
    check_fanout(status, out, report)
    (result,) = report["results"]
    assert result["protocol"] == "socketio"
    assert result["server"] == ("node socket.io" if against == "node" else "chatd (sqlite)")


def check_fanout(status: int, out: str, report: dict[str, Any]) -> None:
    """One round that ran, counted exactly, and stopped its server cleanly."""
    assert status == 0, f"bench/run.py exited with {status}:\n{out}"
    (result,) = report["results"]
    assert "failed" not in result, f"{result['failed']}\n{result.get('server_log_tail', '')}"
    assert (result["receivers"], result["messages"]) == (RECEIVERS, MESSAGES)
    assert result["expected"] == RECEIVERS * MESSAGES
    assert result["delivered"] == RECEIVERS * MESSAGES, out
    assert (result["shortfall"], result["short_receivers"], result["disconnected"]) == (0, 0, 0)
    assert result["acked"] == MESSAGES and result["errors"] == 0, result["error_samples"]
    assert result["probes"] == RECEIVERS and result["out_of_order"] == 0
    assert result["worker_failures"] == [] and result["server_closes"] == {}
    assert result["deliveries_per_s"] > 0
    # The server was stopped (not left behind) and stopped cleanly.
    assert result["server_exit_code"] in (0, -signal.SIGTERM), out
    assert not result["server_killed"]


def test_latency_scenario_delivers_to_every_member(tmp_path: Path) -> None:
    """The everyday-load scenario, tiny: every scheduled message acked and
    pushed to each member of its room, with delays measured."""
    out_json = tmp_path / "latency.json"
    cmd = [
        sys.executable,
        str(REPO / "bench" / "run.py"),
        "--scenario=latency",
        "--latency-rooms=4",
        "--members=3",
        "--rate=5",
        "--warmup=0.5",
        "--latency-duration=2",
        "--repeat=1",
        "--no-pin",
        f"--json={out_json}",
    ]
    proc = subprocess.run(
        cmd,
        env=clean_env(TMPDIR=str(tmp_path)),
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # chatd, then the bare stack (bench/ceiling.py, which keeps rooms too)
    results = json.loads(out_json.read_text())["results"]
    assert [r["server"] for r in results] == ["chatd (sqlite)", "ceiling"]
    for result in results:
        assert "failed" not in result, result.get("server_log_tail")
        assert result["errors"] == 0 and result["disconnected"] == 0
        # 4 rooms x 3 members x 3 deliveries per message x 5 msg/s x 2 s, give or take the edges.
        assert result["deliveries"] >= 0.9 * result["expected_deliveries_per_s"] * 2
        assert result["p99_ms"] is not None and result["server_us_per_message"] > 0
