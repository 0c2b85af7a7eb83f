"""Run the Autobahn TestSuite (``wstest -m fuzzingclient``) against chatd's
WebSocket layer and print the case summary.

    .venv/bin/python -m tests.autobahn.run --setup      # once: Python 2.7 venv with wstest
    .venv/bin/python -m tests.autobahn.run              # chatd's /ws/echo
    .venv/bin/python -m tests.autobahn.run --against both
    .venv/bin/python -m tests.autobahn.run --cases '9.*' --reports /tmp/ab

chatd runs as ``twistd -n chatd --websocket-echo true`` on a free loopback
port (the echo at ``/ws/echo`` is ``/ws``'s protocol class, options and
write path, see chatd/bindings/echo.py); ``bare`` is
tests/autobahn/bare_echo.py, plain Twisted + Autobahn with the same
options, the baseline.  The exit status is non-zero when a case FAILED,
when a case is worse on chatd than on the bare server (with ``both``), or
when chatd logged a traceback.  The TestSuite needs Python 2.7
(``--setup`` builds its venv from pyenv's 2.7; ``--wstest`` or ``$WSTEST``
name another ``wstest``).  docs/security.md records the last full run.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.daemon import Daemon, clean_env, free_port

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "fuzzingclient.json"
DEFAULT_VENV = Path.home() / ".cache" / "chatd" / "wstest"
TESTSUITE = "autobahntestsuite==25.10.1"

BEHAVIORS = ("OK", "NON-STRICT", "FAILED", "INFORMATIONAL", "UNIMPLEMENTED")
RANK = {"OK": 0, "INFORMATIONAL": 0, "NON-STRICT": 1, "UNIMPLEMENTED": 2, "FAILED": 3}
"""How bad a case's behavior is, to compare chatd with the bare server."""

CHATD_AGENT = "chatd"
BARE_AGENT = "bare-autobahn"
ECHO_PATH = "/ws/echo"
LOG_ALARMS = ("Traceback", "Unhandled Error", "unexpected failure")


# -- the TestSuite's venv ---------------------------------------------------------------


def _pyenv_roots() -> list[Path]:
    """Where pyenv keeps its versions: $PYENV_ROOT, ~/.pyenv, and the root
    of the pyenv whose shims are on PATH (CI may run with another HOME,
    where the shims alone cannot find their versions)."""
    roots = [Path(os.environ["PYENV_ROOT"])] if os.environ.get("PYENV_ROOT") else []
    roots.append(Path.home() / ".pyenv")
    shim = shutil.which("python2.7")
    if shim and Path(shim).parent.name == "shims":
        roots.append(Path(shim).parent.parent)
    return roots


def python27() -> str:
    """A Python 2.7 interpreter: pyenv's, else one on PATH."""
    pyenv = sorted(
        found
        for root in _pyenv_roots()
        for found in glob.glob(str(root / "versions" / "2.7*" / "bin" / "python"))
    )
    found = pyenv[-1] if pyenv else shutil.which("python2.7")
    if not found:
        raise SystemExit("no Python 2.7 found (pyenv install 2.7.18, or put python2.7 on PATH)")
    return found


def setup(venv: Path) -> Path:
    """Build the TestSuite's venv (the suite is Python 2 only)."""
    python = python27()
    steps = [
        [python, "-m", "pip", "install", "-q", "virtualenv"],
        [python, "-m", "virtualenv", "-q", str(venv)],
        [str(venv / "bin" / "pip"), "install", "-q", TESTSUITE],
    ]
    for step in steps:
        print("+", " ".join(step), flush=True)
        subprocess.run(step, check=True)
    return venv / "bin" / "wstest"


def find_wstest(given: str | None) -> str:
    candidates = [given, os.environ.get("WSTEST"), str(DEFAULT_VENV / "bin" / "wstest")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    on_path = shutil.which("wstest")
    if on_path:
        return on_path
    raise SystemExit(f"no wstest: run with --setup once (it builds {DEFAULT_VENV})")


# -- the servers under test -----------------------------------------------------------------


def start_chatd(workdir: Path) -> tuple[Daemon, int]:
    """chatd with the echo on; the TestSuite never authenticates, so the
    session's auth timeout (which closes an unauthenticated connection with
    4001) is set past the longest case (9.1.6 allows 100 s)."""
    port = free_port()
    args = [
        "--listen",
        f"tcp:{port}:interface=127.0.0.1",
        "--data-dir",
        str(workdir / "data"),
        "--websocket-echo",
        "true",
        "--auth-timeout",
        "600",
    ]
    daemon = Daemon(args, clean_env(), str(workdir))
    daemon.wait_healthy(port)
    return daemon, port


def start_bare(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    log = open(workdir / "bare.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.autobahn.bare_echo", str(port)],
        env=clean_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the bare server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the bare server did not start listening")


# -- the run ----------------------------------------------------------------------------------


def write_spec(path: Path, outdir: Path, servers: list[tuple[str, str]], cases: list[str]) -> None:
    spec = json.loads(TEMPLATE.read_text())
    spec["outdir"] = str(outdir)
    spec["servers"] = [{"agent": agent, "url": url} for agent, url in servers]
    spec["cases"] = cases
    path.write_text(json.dumps(spec, indent=2))


def run_wstest(wstest: str, spec: Path, workdir: Path) -> None:
    log_path = workdir / "wstest.log"
    with open(log_path, "wb") as log:
        done = subprocess.run(
            [wstest, "-m", "fuzzingclient", "-s", str(spec)],
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=3600,
        )
    if done.returncode != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise SystemExit(f"wstest exited with {done.returncode}:\n{tail}")


def summarize(agent: str, cases: dict[str, dict[str, Any]]) -> list[str]:
    """Print one agent's counts; return its FAILED case ids."""
    counts = Counter(case["behavior"] for case in cases.values())
    seconds = sum(case.get("duration", 0) for case in cases.values()) / 1000
    line = ", ".join(f"{counts.get(b, 0)} {b}" for b in BEHAVIORS)
    others = sorted(set(counts) - set(BEHAVIORS))
    if others:
        line += ", " + ", ".join(f"{counts[b]} {b}" for b in others)
    print(f"{agent}: {len(cases)} cases: {line} ({seconds:.1f} s in cases)")
    failed = sorted((c for c, r in cases.items() if r["behavior"] == "FAILED"), key=case_key)
    if failed:
        print(f"{agent}: FAILED: {' '.join(failed)}")
    return failed


def worse_than(chatd: dict[str, Any], bare: dict[str, Any]) -> list[str]:
    """Cases whose behavior (or closing behavior) is worse on chatd."""
    worse = []
    for case_id, theirs in bare.items():
        ours = chatd.get(case_id)
        if ours is None:
            worse.append(f"{case_id} (not run on chatd)")
            continue
        for field in ("behavior", "behaviorClose"):
            if RANK.get(ours[field], 3) > RANK.get(theirs[field], 3):
                worse.append(f"{case_id} ({field}: {ours[field]}, bare {theirs[field]})")
    return sorted(worse, key=case_key)


def case_key(case_id: str) -> list[int]:
    return [int(part) if part.isdigit() else 0 for part in case_id.split(" ")[0].split(".")]


def log_alarms(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(a in line for a in LOG_ALARMS)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", choices=("chatd", "bare", "both"), default="chatd")
    parser.add_argument(
        "--cases", default="*", help="comma-separated case patterns (default: all, '*')"
    )
    parser.add_argument("--wstest", help="the wstest to run (default: $WSTEST, then --setup's)")
    parser.add_argument("--setup", action="store_true", help=f"build {DEFAULT_VENV} first")
    parser.add_argument("--reports", help="keep the TestSuite's reports (HTML, JSON) here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wstest = str(setup(DEFAULT_VENV)) if args.setup else find_wstest(args.wstest)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    with tempfile.TemporaryDirectory(prefix="chatd-autobahn-") as tmp:
        workdir = Path(tmp)
        outdir = Path(args.reports).resolve() if args.reports else workdir / "reports"
        servers: list[tuple[str, str]] = []
        daemon = bare = None
        started = time.monotonic()
        try:
            if args.against in ("chatd", "both"):
                daemon, port = start_chatd(workdir)
                servers.append((CHATD_AGENT, f"ws://127.0.0.1:{port}{ECHO_PATH}"))
            if args.against in ("bare", "both"):
                bare, port = start_bare(workdir)
                servers.append((BARE_AGENT, f"ws://127.0.0.1:{port}"))
            spec = workdir / "fuzzingclient.json"
            write_spec(spec, outdir, servers, cases)
            run_wstest(wstest, spec, workdir)
        finally:
            clean = daemon.terminate() if daemon is not None else True
            if bare is not None:
                bare.terminate()
                bare.wait(10)
        elapsed = time.monotonic() - started
        results: dict[str, dict[str, Any]] = json.loads((outdir / "index.json").read_text())
        print(f"wstest -m fuzzingclient, cases {','.join(cases)}: {elapsed:.0f} s wall clock")
        failures = 0
        for agent, _ in servers:
            failures += len(summarize(agent, results.get(agent, {})))
        if daemon is not None and bare is not None:
            worse = worse_than(results[CHATD_AGENT], results[BARE_AGENT])
            print(f"worse on chatd than on the bare server: {', '.join(worse) or 'none'}")
            failures += len(worse)
        if daemon is not None:
            alarms = log_alarms(daemon.log_path.read_text(errors="replace"))
            if alarms or not clean:
                print("chatd's log:", *alarms[:20], sep="\n  ")
                print("chatd stopped cleanly" if clean else "chatd did not stop cleanly")
                failures += len(alarms) + (0 if clean else 1)
        if args.reports:
            print(f"reports: {outdir / 'index.html'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
