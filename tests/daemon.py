"""Run ``twistd -n chatd`` as a real subprocess for tests of the daemon
itself (plugin discovery, configuration errors, signals)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
TWISTD = str(BIN / "twistd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


REPO = Path(__file__).resolve().parent.parent


def clean_env(installed_only: bool = False, **extra: str) -> dict[str, str]:
    """The test's environment without CHATD_* settings.  Subprocesses run
    this checkout's code (PYTHONPATH), unless ``installed_only`` asks for
    what ``pip install .`` put into the venv."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATD_") and k != "PYTHONPATH"}
    if not installed_only:
        env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


class Daemon:
    def __init__(self, args: list[str], env: dict[str, str], cwd: str) -> None:
        self.log_path = Path(cwd) / f"twistd-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "chatd", *args],
            env=env,
            cwd=cwd,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_healthy(self, port: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"chatd exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"chatd did not become healthy:\n{self.output()}")

    def terminate(self, timeout: float = 20) -> bool:
        """SIGTERM; True when chatd drained and stopped cleanly (twistd
        re-raises the signal after a clean shutdown, so the status is
        -SIGTERM, as systemd expects)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode in (
            0,
            -signal.SIGTERM,
        ) and "chatd stopped" in self.log_path.read_text(errors="replace")


def run_twistd(
    args: list[str], env: dict[str, str], cwd: str, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TWISTD, "-n", "--pidfile=", "chatd", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_module(args: list[str], env: dict[str, str], cwd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chatd", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )


async def end_process(proc: Any, timeout: float) -> None:
    """Terminate an asyncio subprocess a test started, and wait for it
    (killed if it does not stop within ``timeout``)."""
    import asyncio

    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
