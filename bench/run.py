"""chatd benchmark suite: starts a server, drives it with bench/loadgen.py,
always stops it, prints a summary.

    .venv/bin/python bench/run.py                       # everything, SQLite
    .venv/bin/python bench/run.py --database sqlite --database postgresql://127.0.0.1:5432/test
    .venv/bin/python bench/run.py --scenario fanout --receivers 200 --messages 500 --json bench/results/x.json

Scenarios (each on a fresh server on a free loopback port):

* fanout  — one public room, ``--receivers`` members, one sender sends
  ``--messages`` with ``--window`` un-acked: deliveries/s, p50/p99
  send-to-receipt delay, server and generator CPU.  Runs against chatd (once
  per ``--database``) and against bench/ceiling.py, and prints the ratio.
* ingest  — ``--connections`` connections in ``--rooms`` rooms, each keeping
  ``--ingest-window`` messages un-acked for ``--duration`` s: acked (=
  committed) messages/s, ack latency, server CPU.

On a machine with two or more CPUs the server is pinned to CPU 0 and the
generator to CPU 1 (``--no-pin`` to let the scheduler decide).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
TWISTD = str(Path(PYTHON).parent / "twistd")
STOP_WAIT = 15.0


# -- processes ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(cpus: set[int] | None):
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def kill_group(pid: int) -> None:
    """SIGKILL the process group this script created for ``pid`` (the
    generator forks its receiver workers into it)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class Server:
    """A server subprocess in its own session; ``stop`` always leaves
    nothing behind (SIGTERM, then SIGKILL to its process group)."""

    def __init__(self, kind: str, database: str | None, cpus: set[int] | None) -> None:
        self.kind = kind
        self.database = database
        self.cpus = cpus
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix=f"chatd-bench-{kind}-")
        self.log_path = os.path.join(self.dir, "server.log")
        self.proc: subprocess.Popen | None = None
        self.exit_code: int | None = None
        self.stop_seconds: float | None = None
        self.killed = False

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def command(self) -> list[str]:
        if self.kind == "ceiling":
            return [PYTHON, str(HERE / "ceiling.py"), str(self.port)]
        cmd = [TWISTD, "-n", "--pidfile=", "chatd", "--data-dir", self.dir,
               "--listen", f"tcp:{self.port}:interface=127.0.0.1",
               "--rate-limit", "1000000", "--rate-burst", "1000000", "--max-send-buffer", "67108864"]
        if self.database:
            cmd += ["--database", self.database]
        return cmd

    def start(self, timeout: float = 30.0) -> None:
        log = open(self.log_path, "wb")
        try:
            # cwd is the scratch directory so the installed chatd is what runs.
            self.proc = subprocess.Popen(self.command(), cwd=self.dir, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, preexec_fn=pinned(self.cpus))
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.proc.returncode} during start-up:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.kind} not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def secret(self) -> str:
        if self.kind == "ceiling":
            return "ceiling-does-not-check-tokens"
        return Path(self.dir, "jwt-secret").read_text().strip()

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        t = time.monotonic()
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(STOP_WAIT)
            except subprocess.TimeoutExpired:
                self.killed = True
                kill_group(proc.pid)
                proc.wait(5)
        kill_group(proc.pid)  # anything it may have left in its group
        self.exit_code = proc.returncode
        self.stop_seconds = time.monotonic() - t
        self.proc = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def log_problems(self) -> list[str]:
        """Lines of the server log that look like failures."""
        try:
            text = Path(self.log_path).read_text(errors="replace")
        except OSError:
            return []
        keys = ("Traceback", "Unhandled", "#critical", "#error", "#warn", "Error:")
        return [line[:300] for line in text.splitlines() if any(k in line for k in keys)]

    def cleanup(self, keep: bool) -> None:
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)


def run_loadgen(args: list[str], cpus: set[int] | None, timeout: float) -> dict:
    cmd = [PYTHON, str(HERE / "loadgen.py"), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=pinned(cpus))
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        out, err = proc.communicate()
        raise RuntimeError(f"load generator timed out after {timeout:.0f}s:\n{err.decode(errors='replace')[-2000:]}")
    finally:
        kill_group(proc.pid)
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode}):\n{err.decode(errors='replace')[-3000:]}")
    return json.loads(out.decode().strip().splitlines()[-1])


# -- scenarios --------------------------------------------------------------------------


def one(opts, scenario: str, kind: str, database: str | None, label: str) -> dict:
    server = Server(kind, database, opts.server_cpus)
    print(f"  {scenario:7s} {label:22s} ...", end="", flush=True)
    t = time.monotonic()
    result: dict = {"scenario": scenario, "server": label}
    try:
        server.start()
        common = ["--url", server.url, "--secret", server.secret(), "--server-pid", str(server.proc.pid),
                  "--size", str(opts.size), "--stall", str(opts.stall)]
        if scenario == "fanout":
            extra = ["--receivers", str(opts.receivers), "--messages", str(opts.messages),
                     "--window", str(opts.window), "--workers", str(opts.workers)]
        else:
            extra = ["--connections", str(opts.connections), "--rooms", str(opts.rooms),
                     "--window", str(opts.ingest_window), "--duration", str(opts.duration)]
        result.update(run_loadgen([scenario, *common, *extra], opts.generator_cpus, opts.loadgen_timeout))
        result["server"] = label
    except Exception as e:
        result["failed"] = str(e)
    finally:
        server.stop()
        result["server_exit_code"] = server.exit_code
        result["server_killed"] = server.killed
        result["server_stop_s"] = round(server.stop_seconds or 0, 2)
        result["server_log_problems"] = server.log_problems()[:10]
        if "failed" in result:
            result["server_log_tail"] = server.log_tail()
        server.cleanup(keep=opts.keep or "failed" in result)
        if "failed" in result or opts.keep:
            result["server_dir"] = server.dir
    print(f" {time.monotonic() - t:5.1f}s" + ("  FAILED" if "failed" in result else ""), flush=True)
    return result


def db_label(database: str | None) -> str:
    if not database:
        return "sqlite"
    return "postgresql" if database.startswith("postgres") else database.split(":", 1)[0]


# -- report ------------------------------------------------------------------------------


def fmt(v, spec: str = ",.0f", none: str = "-") -> str:
    return none if v is None else format(v, spec)


def summary(opts, results: list[dict], pin_note: str) -> str:
    lines = [f"chatd benchmark — {os.cpu_count()} CPU(s) {cpu_model()}, Python {platform.python_version()}, {pin_note}"]
    fan = [r for r in results if r["scenario"] == "fanout"]
    ing = [r for r in results if r["scenario"] == "ingest"]
    problems: list[str] = []
    if fan:
        lines.append(f"fanout: {opts.receivers:,} receivers x {opts.messages:,} messages in one public room, "
                     f"1 sender, window {opts.window}, {opts.size}-char content, "
                     f"{opts.workers} receiver process(es)")
        lines.append(f"  {'server':18s} {'deliveries/s':>12s} {'msgs/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} "
                     f"{'server CPU':>10s} {'gen CPU':>8s}  delivered/expected")
        for r in fan:
            if "failed" in r:
                lines.append(f"  {r['server']:18s} FAILED: {r['failed'].splitlines()[0]}")
                continue
            lines.append(f"  {r['server']:18s} {fmt(r['deliveries_per_s']):>12s} {fmt(r['messages_per_s']):>8s} "
                         f"{fmt(r['p50_ms'], '.1f'):>8s} {fmt(r['p99_ms'], '.1f'):>8s} "
                         f"{fmt(r['server_cpu_pct'], '.0f') + '%':>10s} {fmt(r['generator_cpu_pct'], '.0f') + '%':>8s}"
                         f"  {r['delivered']:,}/{r['expected']:,}")
        ceiling = next((r for r in fan if r["server"] == "ceiling" and "failed" not in r), None)
        if ceiling:
            for r in fan:
                if r is not ceiling and "failed" not in r:
                    lines.append(f"  {r['server']} ÷ ceiling (deliveries/s): "
                                 f"{r['deliveries_per_s'] / ceiling['deliveries_per_s']:.2f}")
    if ing:
        lines.append(f"ingest: {opts.connections} connections in {opts.rooms} rooms (all joined), "
                     f"window {opts.ingest_window} per connection, {opts.duration:g} s, {opts.size}-char content")
        lines.append(f"  {'server':18s} {'acked msgs/s':>12s} {'ack p50':>8s} {'ack p99':>8s} "
                     f"{'server CPU':>10s} {'gen CPU':>8s}  pushes/expected")
        for r in ing:
            if "failed" in r:
                lines.append(f"  {r['server']:18s} FAILED: {r['failed'].splitlines()[0]}")
                continue
            lines.append(f"  {r['server']:18s} {fmt(r['acked_per_s']):>12s} {fmt(r['ack_p50_ms'], '.1f'):>8s} "
                         f"{fmt(r['ack_p99_ms'], '.1f'):>8s} {fmt(r['server_cpu_pct'], '.0f') + '%':>10s} "
                         f"{fmt(r['generator_cpu_pct'], '.0f') + '%':>8s}  {r['pushes']:,}/{r['expected_pushes']:,}")
    for r in results:
        name = f"{r['scenario']}/{r['server']}"
        if "failed" in r:
            problems.append(f"{name}: {r['failed']}")
            continue
        if r["scenario"] == "fanout":
            if r["shortfall"]:
                problems.append(f"{name}: SHORTFALL {r['shortfall']:,} deliveries missing "
                                f"({r['short_receivers']} receivers short, {r['disconnected']} disconnected)")
            if r["out_of_order"]:
                problems.append(f"{name}: {r['out_of_order']:,} deliveries out of order or duplicated")
            if r["errors"] or r["acked"] != r["messages"]:
                problems.append(f"{name}: {r['acked']:,}/{r['messages']:,} acked, {r['errors']} errors "
                                f"{r['error_samples'][:2]}")
            if r["worker_failures"]:
                problems.append(f"{name}: receiver worker failures {r['worker_failures']}")
            if r["generator_cpu_pct"] > 90 * max(1, len(opts.generator_cpus or [1, 1])):
                problems.append(f"{name}: generator CPU {r['generator_cpu_pct']:.0f}% — the generator may be the limit")
        else:
            if r["errors"] or r["unanswered"]:
                problems.append(f"{name}: {r['errors']} errors, {r['unanswered']} unanswered {r['error_samples'][:2]}")
            if r["push_shortfall"]:
                problems.append(f"{name}: {r['push_shortfall']:,} pushes missing")
        if r.get("server_log_problems"):
            problems.append(f"{name}: server log: {r['server_log_problems'][:3]}")
        # twistd re-raises the signal it stopped on, so -15 is a clean stop.
        if r.get("server_killed") or (r.get("server_exit_code") not in (0, -signal.SIGTERM, None)
                                      and r["server"] != "ceiling"):
            problems.append(f"{name}: server did not stop cleanly on SIGTERM (exit {r['server_exit_code']}, "
                            f"killed={r.get('server_killed')}, {r['server_stop_s']} s)")
    lines.append("problems: " + ("none" if not problems else ""))
    lines += [f"  - {p}" for p in problems]
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return "(" + line.split(":", 1)[1].strip() + ")"
    except OSError:
        pass
    return ""


# -- main ----------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--scenario", choices=["fanout", "ingest", "all"], default="all")
    p.add_argument("--database", action="append", metavar="URL",
                   help="chatd storage: 'sqlite' (the embedded default) or a postgresql:// URL; repeat to run "
                        "each (default: sqlite)")
    p.add_argument("--receivers", type=int, default=1000, help="fanout: room members receiving (default 1000)")
    p.add_argument("--messages", type=int, default=2000, help="fanout: messages sent (default 2000)")
    p.add_argument("--window", type=int, default=32, help="fanout: un-acked messages in flight (default 32)")
    p.add_argument("--workers", type=int, default=1, help="fanout: receiver processes (default 1)")
    p.add_argument("--connections", type=int, default=50, help="ingest: sending connections (default 50)")
    p.add_argument("--rooms", type=int, default=5, help="ingest: rooms (default 5)")
    p.add_argument("--ingest-window", type=int, default=8, help="ingest: un-acked messages per connection (default 8)")
    p.add_argument("--duration", type=float, default=10.0, help="ingest: seconds of sending (default 10)")
    p.add_argument("--size", type=int, default=64, help="message content length in characters (default 64)")
    p.add_argument("--no-ceiling", action="store_true", help="fanout: skip the bench/ceiling.py reference run")
    p.add_argument("--no-pin", action="store_true", help="do not pin server and generator to separate CPUs")
    p.add_argument("--stall", type=float, default=15.0, help="give up after this many seconds without progress")
    p.add_argument("--loadgen-timeout", type=float, default=240.0, help="hard limit per scenario run")
    p.add_argument("--keep", action="store_true", help="keep the servers' scratch directories (logs)")
    p.add_argument("--json", metavar="PATH", help="write all results to this JSON file (bench/results/ is gitignored)")
    opts = p.parse_args(argv)
    opts.database = [None if d in ("sqlite", "", None) else d for d in (opts.database or ["sqlite"])]
    cpus = sorted(os.sched_getaffinity(0))
    if not opts.no_pin and len(cpus) >= 2:
        opts.server_cpus, opts.generator_cpus = {cpus[0]}, set(cpus[1:])
    else:
        opts.server_cpus = opts.generator_cpus = None
    return opts


def main(argv=None) -> int:
    opts = parse_args(argv)
    # SIGTERM/SIGHUP stop the run the same way Ctrl-C does: through the
    # finally blocks that stop the servers.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    if opts.server_cpus:
        pin_note = (f"server pinned to CPU {min(opts.server_cpus)}, generator to CPU "
                    f"{','.join(map(str, sorted(opts.generator_cpus)))} (os.sched_setaffinity)")
    else:
        pin_note = "no CPU pinning (server and generator share the CPUs)"
    print(f"chatd bench: {pin_note}", flush=True)
    started = time.monotonic()
    results: list[dict] = []
    scenarios = ["fanout", "ingest"] if opts.scenario == "all" else [opts.scenario]
    for scenario in scenarios:
        for database in opts.database:
            label = f"chatd ({db_label(database)})"
            results.append(one(opts, scenario, "chatd", database, label))
        if scenario == "fanout" and not opts.no_ceiling:
            results.append(one(opts, scenario, "ceiling", None, "ceiling"))
    text = summary(opts, results, pin_note)
    print()
    print(text)
    print(f"(total {time.monotonic() - started:.0f} s)")
    if opts.json:
        Path(opts.json).parent.mkdir(parents=True, exist_ok=True)
        options = {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(opts).items()}
        Path(opts.json).write_text(json.dumps({
            "machine": {"cpus": os.cpu_count(), "model": cpu_model(), "python": platform.python_version(),
                        "kernel": platform.release()},
            "pinning": pin_note, "options": options, "results": results, "summary": text,
        }, indent=2))
        print(f"results written to {opts.json}")
    failed = any("failed" in r for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
