"""Wherever twistd is told to log (stdout, ``--logfile``, syslog), chatd's
observer writes it, so a client's control characters are escaped there
too, and a log file keeps twistd's rotation."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

from twisted.logger import formatEvent

from chatd.logs import (
    EscapingObserver,
    JsonLinesObserver,
    LogTarget,
    TextLinesObserver,
    observer_for,
    twistd_log_target,
)
from tests.daemon import TWISTD, clean_env, free_port

SECRET = "log-targets-test-secret-0123456789abcdef"
EVIL_AGENT = "agent\x1b[2J\x9b[5m\u2028forged line".encode()
RAW_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028]")


def test_the_target_is_what_twistd_does_with_its_options() -> None:
    assert twistd_log_target(None) is None
    assert twistd_log_target({"nodaemon": True}) == LogTarget("stdout")
    assert twistd_log_target({"nodaemon": True, "logfile": "-"}) == LogTarget("stdout")
    assert twistd_log_target({"nodaemon": True, "logfile": "/var/log/c.log"}) == LogTarget(
        "file", path="/var/log/c.log"
    )
    assert twistd_log_target({"nodaemon": False}) == LogTarget("file", path="twistd.log")
    assert twistd_log_target({"syslog": True, "prefix": "chatd"}) == LogTarget(
        "syslog", prefix="chatd"
    )
    assert twistd_log_target({"syslog": True, "logger": "x.y"}) == LogTarget("custom")


def test_every_target_but_an_operators_own_logger_gets_chatds_observer(tmp_path: Path) -> None:
    assert isinstance(observer_for(LogTarget("stdout"), "text"), TextLinesObserver)
    assert isinstance(observer_for(LogTarget("stdout"), "json"), JsonLinesObserver)
    path = str(tmp_path / "c.log")
    assert isinstance(observer_for(LogTarget("file", path=path), "text"), TextLinesObserver)
    assert isinstance(observer_for(LogTarget("syslog", prefix="chatd"), "text"), EscapingObserver)
    assert observer_for(LogTarget("custom"), "text") is None
    assert observer_for(None, "text") is None
    assert isinstance(observer_for(None, "json"), JsonLinesObserver)


def test_the_syslog_observer_is_fed_escaped_values() -> None:
    seen: list[dict] = []
    observer = EscapingObserver(seen.append)
    observer({"log_format": "from {agent}", "agent": "a\x1b[2J\r\nb", "log_namespace": "t"})
    assert formatEvent(seen[0]) == "from a\\x1b[2J\\r\\nb"


def _request_with_agent(port: int, agent: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nUser-Agent: "
            + agent
            + b"\r\nConnection: close\r\n\r\n"
        )
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer


def _wait_healthy(proc: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text(errors="replace") if log.exists() else ""
        try:
            if _request_with_agent(port, b"probe").startswith(b"HTTP/1.1 200"):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("chatd did not become healthy")


def _run_with_logfile(tmp_path: Path, log_format: str) -> tuple[Path, str]:
    port = free_port()
    log = tmp_path / "chatd.log"
    proc = subprocess.Popen(
        [
            TWISTD,
            "-n",
            "--pidfile=",
            f"--logfile={log}",
            "chatd",
            "--data-dir",
            str(tmp_path / "data"),
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--jwt-secret",
            SECRET,
            "--log-format",
            log_format,
        ],
        env=clean_env(),
        cwd=str(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_healthy(proc, port, log)
        assert _request_with_agent(port, EVIL_AGENT).startswith(b"HTTP/1.1 200")
        proc.send_signal(signal.SIGUSR1)  # twistd's rotation, kept
        deadline = time.monotonic() + 10
        while not (tmp_path / "chatd.log.1").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (tmp_path / "chatd.log.1").exists()
        assert _request_with_agent(port, b"after-rotation").startswith(b"HTTP/1.1 200")
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=20)
    assert proc.returncode in (0, -signal.SIGTERM), stdout
    text = (tmp_path / "chatd.log.1").read_text("utf-8") + log.read_text("utf-8")
    return log, text


def test_a_log_file_gets_escaped_values_and_keeps_its_rotation(tmp_path: Path) -> None:
    log, text = _run_with_logfile(tmp_path, "text")
    assert not RAW_CONTROL.search(text), [ln for ln in text.splitlines() if RAW_CONTROL.search(ln)]
    assert "agent\\x1b[2J\\x9b[5m\\u2028forged line" in text
    assert "after-rotation" in log.read_text("utf-8")  # the new file after SIGUSR1
    assert "chatd stopped" in text


def test_json_goes_to_the_log_file_too(tmp_path: Path) -> None:
    log, text = _run_with_logfile(tmp_path, "json")
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert any("forged line" in json.dumps(r) for r in records)
    assert "after-rotation" in log.read_text("utf-8")
