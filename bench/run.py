"""chatd benchmark suite: starts a server, drives it with bench/loadgen.py,
always stops it, prints a summary.

    .venv/bin/python bench/run.py                       # everything, SQLite
    .venv/bin/python bench/run.py --database sqlite --database postgresql://127.0.0.1:5432/test
    .venv/bin/python bench/run.py --scenario fanout --receivers 200 --messages 500 --json bench/results/x.json
    .venv/bin/python bench/run.py --scenario live --viewers 1000 --reactions 5000 --reaction-rate 500

Scenarios (each on a fresh server on a free loopback port):

* fanout  — one public room, ``--receivers`` members, one sender sends
  ``--messages`` with ``--window`` un-acked: deliveries/s, p50/p99
  send-to-receipt delay, server and generator CPU.  Runs against chatd (once
  per ``--database``) and against bench/ceiling.py, and prints the ratio.
* ingest  — ``--connections`` connections in ``--rooms`` rooms, each keeping
  ``--ingest-window`` messages un-acked for ``--duration`` s: acked (=
  committed) messages/s, ack latency, server CPU.
* live    — ``--viewers`` connections join one live stream (started by a
  host connection) while ``--senders`` more connections, viewers too, send
  ``--reactions`` live:reaction requests at a fixed ``--reaction-rate``:
  deliveries/s, p50/p99 send-to-receipt delay, achieved send rate, server
  and generator CPU.  chatd's per-user reaction limit is lifted.
* connect — ``--connects`` connections (token in the URL), ``--connect-window``
  attempts in flight, each closed cleanly once its ``authenticated`` push
  arrives: connects/s, p50/p99 connect latency, server CPU per connection
  (connect phase, and with the tail until the server is idle again: chatd
  marks users offline 3 s after their last close), failed handshakes.
  Runs against chatd and bench/ceiling.py, and prints the ratio.
* idle    — ``--idle-connections`` connections opened and held idle (after
  ``--idle-warmup`` ones): the server's resident memory per connection.
  Against chatd and bench/ceiling.py.
* latency — ``--latency-rooms`` rooms of ``--members`` connections, each
  sending ``--rate`` messages/s open loop: p50/p99/p99.9 send-to-push delay,
  server CPU per inbound message.  Against chatd and bench/ceiling.py (which
  keeps rooms but stores nothing and checks no token: the bare stack).

``all`` (the default) runs every scenario.

``--protocol socketio`` runs fanout, connect, idle and latency (``all``)
over Socket.IO (Engine.IO v4 WebSocket transport, ``/socket.io/``) against
chatd's Socket.IO binding and/or bench/socketio-node, a Node socket.io 4
server (``--against chatd|node|both``, default both; ``npm ci --prefix
bench/socketio-node`` first), interleaved in every round, and prints
chatd ÷ node for each scenario:

    .venv/bin/python bench/run.py --protocol socketio --wait-quiet 60
    .venv/bin/python bench/run.py --protocol socketio --scenario fanout --against node --repeat 1

On a machine with two or more CPUs the server is pinned to CPU 0 and the
generator to CPU 1 (``--no-pin`` to let the scheduler decide).

``--processes N`` runs chatd as N processes (free ports, one scratch
directory each) sharing Redis (``--redis``, a fresh key prefix per run),
the PostgreSQL ``--database`` and one JWT secret; the generator spreads the
receivers/viewers round robin over them, the sender uses the first.  Repeat
it (``--processes 1 --processes 2``) to run both in every round and get the
ratio; N > 1 implies ``--no-pin`` for every variant.

    .venv/bin/python bench/run.py --scenario fanout --database postgresql://127.0.0.1:5432/test \
        --processes 1 --processes 2 --workers 2 --no-ceiling
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
TWISTD = str(Path(PYTHON).parent / "twistd")
STOP_WAIT = 15.0
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
REDIS_COMM = "redis-server"
NODE_DIR = HERE / "socketio-node"
NODE_LABEL = "node socket.io"
SIO_PATH = "/socket.io/?EIO=4&transport=websocket"


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


RUNNING: set = set()  # servers started and not yet stopped (for the last-resort cleanup in main)


@dataclass(frozen=True)
class Shared:
    """What the chatd processes of one multi-process run have in common
    besides the database: Redis, a key prefix of their own (so runs never
    share state) and the JWT secret."""

    redis: str
    prefix: str
    secret: str

    @classmethod
    def fresh(cls, redis: str) -> Shared:
        return cls(redis, f"bench{os.getpid()}{time.time_ns()}:", secrets.token_urlsafe(32))


class Server:
    """A server subprocess in its own session; ``stop`` always leaves
    nothing behind (SIGTERM, then SIGKILL to its process group)."""

    def __init__(
        self, kind: str, database: str | None, cpus: set[int] | None, shared: Shared | None = None
    ) -> None:
        self.kind = kind
        self.database = database
        self.cpus = cpus
        self.shared = shared
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

    @property
    def secret_path(self) -> str:
        return os.path.join(self.dir, "jwt-secret")

    def url_for(self, protocol: str) -> str:
        """Where the generator connects: /ws, or Socket.IO's WebSocket transport."""
        if protocol == "socketio":
            return f"ws://127.0.0.1:{self.port}{SIO_PATH}"
        return self.url

    def command(self) -> list[str]:
        if self.kind == "ceiling":
            return [PYTHON, str(HERE / "ceiling.py"), str(self.port)]
        if self.kind == "node":
            # node itself, not npm start: the pid we sample is the server's.
            return [
                shutil.which("node") or "node",
                str(NODE_DIR / "server.js"),
                str(self.port),
                self.secret_path,
            ]
        cmd = [
            TWISTD,
            "-n",
            "--pidfile=",
            "chatd",
            "--data-dir",
            self.dir,
            "--listen",
            f"tcp:{self.port}:interface=127.0.0.1",
            "--rate-limit",
            "1000000",
            "--rate-burst",
            "1000000",
            "--user-rate-limit",
            "1000000",
            "--user-rate-burst",
            "1000000",
            "--max-send-buffer",
            "67108864",
            "--reaction-rate",
            "1000000",
        ]
        if self.database:
            cmd += ["--database", self.database]
        if self.shared:
            cmd += ["--redis", self.shared.redis, "--redis-prefix", self.shared.prefix]
        return cmd

    def environment(self) -> dict[str, str] | None:
        """The shared JWT secret goes in CHATD_JWT_SECRET (the same as
        --jwt-secret, but not on a command line), and into DIR/jwt-secret
        for the generator.  The Node server reads a fresh secret from that
        file, as the generator does."""
        if self.kind == "node":
            fd = os.open(self.secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
            return None
        if not self.shared:
            return None
        fd = os.open(
            os.path.join(self.dir, "jwt-secret"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600
        )
        with os.fdopen(fd, "w") as f:
            f.write(self.shared.secret + "\n")
        return {**os.environ, "CHATD_JWT_SECRET": self.shared.secret}

    def spawn(self) -> None:
        log = open(self.log_path, "wb")
        try:
            # cwd is the scratch directory so the installed chatd is what runs.
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                start_new_session=True,
                preexec_fn=pinned(self.cpus),
            )
            RUNNING.add(self)
        finally:
            log.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.kind} exited with {self.proc.returncode} during start-up:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.port}/healthz", timeout=1
                ) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.kind} not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def secret_args(self) -> list[str]:
        """How the generator gets the key to mint tokens with (a file, so
        the secret is not on a command line)."""
        if self.kind == "ceiling":
            return ["--secret=ceiling-does-not-check-tokens-padding-to-32-bytes"]
        return ["--secret-file", self.secret_path]

    def check_socketio(self) -> None:
        """Fail the round at once, and say why, if this server has no
        Socket.IO endpoint (a chatd from before the binding)."""
        url = f"http://127.0.0.1:{self.port}/socket.io/?EIO=4&transport=polling"
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                r.read()
        except urllib.error.HTTPError as e:
            raise RuntimeError(
                f"{self.kind} answered {e.code} on /socket.io/: this chatd has no Socket.IO "
                f"binding (run.py runs the installed chatd: pip install . the checkout, or set "
                f"PYTHONPATH to it)"
            ) from None

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
        RUNNING.discard(self)

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


class Servers:
    """The server of one run: a single process, or ``count`` chatd
    processes (each on its own port) sharing Redis and the database."""

    def __init__(
        self,
        kind: str,
        database: str | None,
        cpus: set[int] | None,
        count: int = 1,
        redis: str | None = None,
    ) -> None:
        shared = Shared.fresh(redis) if redis else None
        self.members = [Server(kind, database, cpus, shared) for _ in range(count)]

    def start(self) -> None:
        for server in self.members:
            server.spawn()
        for server in self.members:
            server.wait_ready()

    def stop(self) -> None:
        """Stop every process, even if stopping one of them fails."""
        try:
            for server in self.members:
                server.stop()
        finally:
            for server in self.members:
                if server.proc is not None:
                    kill_group(server.proc.pid)

    def loadgen_args(self, protocol: str = "native") -> list[str]:
        """URLs (receivers are spread over them, the sender uses the first),
        the secret, and every process to sample CPU of."""
        pids = [arg for s in self.members for arg in ("--server-pid", str(s.proc.pid))]
        return [
            "--url",
            ",".join(s.url_for(protocol) for s in self.members),
            *self.members[0].secret_args(),
            *pids,
        ]

    def _each(self, texts: list[list[str]]) -> list[str]:
        """Lines of every member, marked with its number when there are several."""
        if len(self.members) == 1:
            return texts[0]
        return [f"[{i}] {line}" for i, lines in enumerate(texts) for line in lines]

    def log_problems(self) -> list[str]:
        return self._each([s.log_problems() for s in self.members])

    def log_tail(self) -> str:
        return "\n".join(self._each([s.log_tail().splitlines() for s in self.members]))

    def outcome(self) -> dict:
        """How the processes stopped: the first unclean exit code (else the
        first one's), whether any was killed, the longest stop."""
        codes = [s.exit_code for s in self.members]
        unclean = [c for c in codes if c not in (0, -signal.SIGTERM, None)]
        return {
            "server_exit_code": (unclean or codes)[0],
            "server_killed": any(s.killed for s in self.members),
            "server_stop_s": round(max(s.stop_seconds or 0 for s in self.members), 2),
        }

    @property
    def dir(self) -> str:
        return ", ".join(s.dir for s in self.members)

    def cleanup(self, keep: bool) -> None:
        for server in self.members:
            server.cleanup(keep)


def run_loadgen(args: list[str], cpus: set[int] | None, timeout: float) -> dict:
    cmd = [PYTHON, str(HERE / "loadgen.py"), *args]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=pinned(cpus),
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        out, err = proc.communicate()
        raise RuntimeError(
            f"load generator timed out after {timeout:.0f}s:\n"
            f"{err.decode(errors='replace')[-2000:]}"
        ) from None
    finally:
        kill_group(proc.pid)
    if proc.returncode != 0:
        raise RuntimeError(
            f"load generator failed ({proc.returncode}):\n{err.decode(errors='replace')[-3000:]}"
        )
    return json.loads(out.decode().strip().splitlines()[-1])


# -- scenarios --------------------------------------------------------------------------


def busy_fraction(seconds: float = 1.0) -> float:
    """Share of all CPUs busy over ``seconds`` (from /proc/stat)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:8]]
        return sum(v) - v[3] - v[4], sum(v)

    b0, t0 = sample()
    time.sleep(seconds)
    b1, t1 = sample()
    return (b1 - b0) / max(1, t1 - t0)


def wait_quiet(limit: float) -> None:
    """Wait (at most ``limit`` seconds) until the machine is nearly idle."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if busy_fraction() < 0.10:
            return
    print(" (machine still busy)", end="", flush=True)


@dataclass(frozen=True)
class Variant:
    """One server set-up that every round runs: chatd on a database with
    ``processes`` processes (Redis between them when ``redis`` is set), or
    the ceiling."""

    label: str
    kind: str = "chatd"
    database: str | None = None
    processes: int = 1
    redis: str | None = None
    #: fanout: the receivers' dialect (``--receiver-dialect``).
    dialect: str = "native"

    @classmethod
    def chatd(
        cls, database: str | None, processes: int, redis: str | None, dialect: str = "native"
    ) -> Variant:
        label = f"chatd ({db_label(database)})" + (f" x{processes}" if redis else "")
        if dialect != "native":
            label += f" {dialect}"
        return cls(label, "chatd", database, processes, redis, dialect)

    def servers(self, cpus: set[int] | None) -> Servers:
        return Servers(self.kind, self.database, cpus, self.processes, self.redis)


def redis_for(opts, processes: int) -> str | None:
    """Several processes always share Redis; one uses it only when --redis was given."""
    return opts.redis or (DEFAULT_REDIS if processes > 1 else None)


def scenario_args(opts, scenario: str) -> list[str]:
    common = ["--size", str(opts.size), "--stall", str(opts.stall)]
    if opts.user_tag is not None:
        common.append(f"--user-tag={opts.user_tag}")
    if opts.protocol != "native":
        common += ["--protocol", opts.protocol]
    if scenario == "idle":
        return [
            *common,
            "--idle-connections",
            str(opts.idle_connections),
            "--idle-warmup",
            str(opts.idle_warmup),
            "--connect-window",
            str(opts.connect_window),
            "--settle",
            str(opts.settle),
        ]
    if scenario == "fanout":
        return [
            *common,
            "--receivers",
            str(opts.receivers),
            "--messages",
            str(opts.messages),
            "--window",
            str(opts.window),
            "--workers",
            str(opts.workers),
            "--sample",
            str(opts.sample),
        ]
    if scenario == "live":
        return [
            *common,
            "--viewers",
            str(opts.viewers),
            "--reactions",
            str(opts.reactions),
            "--reaction-rate",
            str(opts.reaction_rate),
            "--senders",
            str(opts.senders),
            "--workers",
            str(opts.workers),
            "--sample",
            str(opts.sample),
        ]
    if scenario == "latency":
        return [
            *common,
            "--rooms",
            str(opts.latency_rooms),
            "--members",
            str(opts.members),
            "--rate",
            str(opts.rate),
            "--duration",
            str(opts.latency_duration),
            "--warmup",
            str(opts.warmup),
        ]
    if scenario == "connect":
        return [
            *common,
            "--connects",
            str(opts.connects),
            "--connect-window",
            str(opts.connect_window),
            "--settle",
            str(opts.settle),
            "--workers",
            str(opts.workers),
        ]
    return [
        *common,
        "--connections",
        str(opts.connections),
        "--rooms",
        str(opts.rooms),
        "--window",
        str(opts.ingest_window),
        "--duration",
        str(opts.duration),
    ]


def one(opts, scenario: str, variant: Variant, rnd: int) -> dict:
    if opts.wait_quiet:
        wait_quiet(opts.wait_quiet)
    servers = variant.servers(opts.server_cpus)
    print(f"  round {rnd}  {scenario:7s} {variant.label:21s} ...", end="", flush=True)
    t = time.monotonic()
    result: dict = {
        "scenario": scenario,
        "server": variant.label,
        "round": rnd,
        "protocol": opts.protocol,
    }
    try:
        servers.start()
        if opts.protocol == "socketio" and variant.kind == "chatd":
            servers.members[0].check_socketio()
        args = [scenario, *servers.loadgen_args(opts.protocol), *scenario_args(opts, scenario)]
        if scenario == "fanout" and variant.dialect != "native":
            args += ["--receiver-dialect", variant.dialect]
        result.update(run_loadgen(args, opts.generator_cpus, opts.loadgen_timeout))
        result["server"], result["round"] = variant.label, rnd
        if scenario == "fanout" and result.get("deliveries_per_s"):
            # What compares servers when the generator is the limit.
            result["server_us_per_delivery"] = (
                1e4 * result["server_cpu_pct"] / result["deliveries_per_s"]
            )
    except Exception as e:
        result["failed"] = str(e)
    finally:
        servers.stop()
        result.update(servers.outcome())
        result["processes"], result["redis"] = variant.processes, bool(variant.redis)
        result["server_log_problems"] = servers.log_problems()[:10]
        if "failed" in result:
            result["server_log_tail"] = servers.log_tail()
        servers.cleanup(keep=opts.keep or "failed" in result)
        if "failed" in result or opts.keep:
            result["server_dir"] = servers.dir
    print(f" {time.monotonic() - t:5.1f}s  {round_note(scenario, result)}", flush=True)
    return result


def round_note(scenario: str, result: dict) -> str:
    if "failed" in result:
        return "FAILED"
    if scenario == "latency":
        return (
            f"p50/p99/p99.9 {fmt(result['p50_ms'], '.2f')}/{fmt(result['p99_ms'], '.2f')}/"
            f"{fmt(result['p999_ms'], '.2f')} ms, {fmt(result['messages_per_s'])} msgs/s, "
            f"{fmt(result['server_us_per_message'])} µs/msg"
        )
    if scenario == "fanout":
        return f"{result['deliveries_per_s']:>10,.0f} deliveries/s, {result['delivered']:,}/{result['expected']:,}"
    if scenario == "live":
        return (
            f"{result['deliveries_per_s']:>10,.0f} deliveries/s, {result['delivered']:,}/{result['expected']:,}, "
            f"p50/p99 {fmt(result['p50_ms'], '.1f')}/{fmt(result['p99_ms'], '.1f')} ms"
        )
    if scenario == "connect":
        return (
            f"{result['connects_per_s']:>10,.0f} connects/s, {result['completed']:,}/{result['connects']:,}, "
            f"p50/p99 {fmt(result['p50_ms'], '.1f')}/{fmt(result['p99_ms'], '.1f')} ms"
        )
    if scenario == "idle":
        return (
            f"{fmt(result['kib_per_connection'], '>10,.1f')} KiB/connection, RSS "
            f"{fmt(result['rss_warm_mb'], '.0f')} → {fmt(result['rss_end_mb'], '.0f')} MiB, "
            f"{result['alive']:,}/{result['expected_alive']:,} open"
        )
    return f"{result['acked_per_s']:>10,.0f} acked msgs/s"


def db_label(database: str | None) -> str:
    if not database:
        return "sqlite"
    return "postgresql" if database.startswith("postgres") else database.split(":", 1)[0]


# -- report ------------------------------------------------------------------------------


def fmt(v, spec: str = ",.0f", none: str = "-") -> str:
    return none if v is None else format(v, spec)


def pct(v) -> str:
    return "-" if v is None or v != v else f"{v:.0f}%"


def median(values: list[float]) -> float | None:
    values = sorted(v for v in values if v is not None and v == v)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


FANOUT_METRICS = (
    "deliveries_per_s",
    "server_us_per_delivery",
    "steady_deliveries_per_s",
    "messages_per_s",
    "p50_ms",
    "p99_ms",
    "server_cpu_pct",
    "generator_cpu_pct",
    "other_cpu_pct",
    "kernel_threads_cpu_pct",
    "machine_cpu_pct",
    "steal_pct",
    "server_peak_rss_mb",
)
LIVE_METRICS = (
    "deliveries_per_s",
    "send_rate",
    "p50_ms",
    "p99_ms",
    "max_ms",
    "ack_p50_ms",
    "ack_p99_ms",
    "drain_ms",
    "send_max_lag_ms",
    "server_cpu_pct",
    "server_us_per_delivery",
    "generator_cpu_pct",
    "other_cpu_pct",
    "kernel_threads_cpu_pct",
    "machine_cpu_pct",
    "steal_pct",
    "server_peak_rss_mb",
)
INGEST_METRICS = (
    "acked_per_s",
    "ack_p50_ms",
    "ack_p99_ms",
    "server_cpu_pct",
    "generator_cpu_pct",
    "other_cpu_pct",
    "kernel_threads_cpu_pct",
    "machine_cpu_pct",
    "steal_pct",
    "server_peak_rss_mb",
)
LATENCY_METRICS = (
    "p50_ms",
    "p99_ms",
    "p999_ms",
    "max_ms",
    "messages_per_s",
    "deliveries_per_s",
    "server_us_per_message",
    "server_cpu_pct",
    "generator_cpu_pct",
    "other_cpu_pct",
    "kernel_threads_cpu_pct",
    "machine_cpu_pct",
    "steal_pct",
)
CONNECT_METRICS = (
    "connects_per_s",
    "p50_ms",
    "p99_ms",
    "max_ms",
    "server_cpu_pct",
    "server_us_per_connect",
    "server_us_per_connect_total",
    "settle_s",
    "generator_cpu_pct",
    "other_cpu_pct",
    "kernel_threads_cpu_pct",
    "machine_cpu_pct",
    "steal_pct",
    "server_peak_rss_mb",
)
IDLE_METRICS = (
    "kib_per_connection",
    "rss_start_mb",
    "rss_warm_mb",
    "rss_end_mb",
    "rss_growth_mb",
    "connects_per_s",
    "server_us_per_connect",
    "server_cpu_pct",
    "generator_cpu_pct",
    "other_cpu_pct",
    "kernel_threads_cpu_pct",
    "machine_cpu_pct",
    "steal_pct",
    "server_peak_rss_mb",
)
# scenario -> (metrics whose median is reported, the headline, counts summed over the rounds)
AGGREGATES = {
    "fanout": (
        FANOUT_METRICS,
        "deliveries_per_s",
        ("delivered", "expected", "out_of_order", "errors", "acked", "messages"),
    ),
    "live": (
        LIVE_METRICS,
        "deliveries_per_s",
        (
            "delivered",
            "expected",
            "out_of_order",
            "duplicates",
            "errors",
            "acked",
            "sent",
            "reactions",
            "sender_copies",
            "sender_copies_expected",
            "viewer_count_pushes",
        ),
    ),
    "ingest": (
        INGEST_METRICS,
        "acked_per_s",
        ("pushes", "expected_pushes", "errors", "unanswered", "acked", "sent"),
    ),
    "connect": (
        CONNECT_METRICS,
        "connects_per_s",
        ("completed", "connects", "errors", "unclean_closes"),
    ),
    "idle": (IDLE_METRICS, "kib_per_connection", ("alive", "expected_alive")),
    "latency": (LATENCY_METRICS, "p99_ms", ("acked", "errors", "deliveries", "sent_total")),
}
# Socket.IO: what the everyday-load issue asks of chatd ÷ node (at least, or
# at most; the Socket.IO issue's were 3, 1.5 and 0.7 for the first three).
AIMS = {
    "deliveries_per_s": (">=", 4.0),
    "connects_per_s": (">=", 2.0),
    "kib_per_connection": ("<=", 0.5),
    # At most Node's latency and CPU per message.
    "p99_ms": ("<=", 1.0),
    "p999_ms": ("<=", 1.0),
    "server_us_per_message": ("<=", 1.0),
}


def aggregate(results: list[dict]) -> list[dict]:
    """One row per (scenario, server): the median of each metric over the
    rounds that ran, the range of the headline figure, and the counts summed
    (so one lost delivery in any round shows)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        groups.setdefault((r["scenario"], r["server"]), []).append(r)
    rows = []
    for (scenario, server), runs in groups.items():
        ok = [r for r in runs if "failed" not in r]
        row: dict = {
            "scenario": scenario,
            "server": server,
            "rounds": len(runs),
            "failed_rounds": len(runs) - len(ok),
        }
        metrics, head, counts = AGGREGATES[scenario]
        for m in metrics:
            row[m] = median([r.get(m) for r in ok])
        row[head + "_range"] = [min(r[head] for r in ok), max(r[head] for r in ok)] if ok else None
        for k in counts:
            row[k] = sum(r[k] for r in ok)
        rows.append(row)
    return rows


def summary(opts, results: list[dict], pin_note: str) -> str:
    rows = aggregate(results)
    w = max([18] + [len(r["server"]) for r in rows])
    lines = [
        f"chatd benchmark — {os.cpu_count()} CPU(s) {cpu_model()}, Python {platform.python_version()}, "
        f"Linux {platform.release()}",
        f"{pin_note}; each figure is the median of {opts.repeat} round(s), [min–max] of the headline",
    ]
    if opts.protocol == "socketio":
        lines.append(
            "protocol: Socket.IO v5 over Engine.IO v4's WebSocket transport (/socket.io/), token in "
            "the URL and in CONNECT; chatd stores every message, the Node server does not"
        )
    fan = [r for r in rows if r["scenario"] == "fanout"]
    ing = [r for r in rows if r["scenario"] == "ingest"]
    live = [r for r in rows if r["scenario"] == "live"]
    conn = [r for r in rows if r["scenario"] == "connect"]
    lat = [r for r in rows if r["scenario"] == "latency"]
    if fan:
        lines.append("")
        lines.append(
            f"fanout: {opts.receivers:,} receivers x {opts.messages:,} messages in one public room, "
            f"1 sender, window {opts.window}, {opts.size}-char content, "
            f"{opts.workers} receiver process(es)"
        )
        lines.append(
            f"  {'server':{w}s} {'deliveries/s':>12s} {'[min–max]':>19s} {'msgs/s':>7s} {'p50 ms':>7s} "
            f"{'p99 ms':>7s} {'server':>7s} {'gen':>5s} {'other':>6s}  delivered/expected"
        )
        for r in fan:
            if r["deliveries_per_s"] is None:
                lines.append(f"  {r['server']:{w}s} FAILED")
                continue
            lo, hi = r["deliveries_per_s_range"]
            lines.append(
                f"  {r['server']:{w}s} {fmt(r['deliveries_per_s']):>12s} {f'[{lo:,.0f}–{hi:,.0f}]':>19s} "
                f"{fmt(r['messages_per_s']):>7s} {fmt(r['p50_ms'], '.1f'):>7s} {fmt(r['p99_ms'], '.1f'):>7s} "
                f"{pct(r['server_cpu_pct']):>7s} {pct(r['generator_cpu_pct']):>5s} "
                f"{pct(r['other_cpu_pct']):>6s}  {r['delivered']:,}/{r['expected']:,}"
            )
        lines.append(rss_line(fan))
        lines += ceiling_lines(results, fan, "deliveries_per_s", "deliveries/s")
        lines += node_lines(results, fan, "deliveries_per_s", "deliveries/s")
        lines += node_lines(results, fan, "server_us_per_delivery", "server µs/delivery")
        lines += process_lines(opts, results, fan)
        lines += dialect_lines(opts, results, fan)

    if lat:
        lines.append("")
        lines.append(
            f"latency: {opts.latency_rooms} rooms x {opts.members} connections, each sending "
            f"{opts.rate:g} msg/s open loop, {opts.latency_duration:g} s measured after "
            f"{opts.warmup:g} s; delay = send → each member's push (the sender's own included)"
        )
        lines.append(
            f"  {'server':{w}s} {'p50 ms':>7s} {'p99 ms':>7s} {'p99.9 ms':>8s} {'[p99 min–max]':>15s} "
            f"{'msgs/s':>7s} {'dlv/s':>7s} {'µs/msg':>7s} {'server':>7s} {'gen':>5s} {'other':>6s}  errors"
        )
        for r in lat:
            if r["p99_ms"] is None:
                lines.append(f"  {r['server']:{w}s} FAILED")
                continue
            lo, hi = r["p99_ms_range"]
            lines.append(
                f"  {r['server']:{w}s} {fmt(r['p50_ms'], '.2f'):>7s} {fmt(r['p99_ms'], '.2f'):>7s} "
                f"{fmt(r['p999_ms'], '.2f'):>8s} {f'[{lo:.1f}–{hi:.1f}]':>15s} "
                f"{fmt(r['messages_per_s']):>7s} {fmt(r['deliveries_per_s']):>7s} "
                f"{fmt(r['server_us_per_message']):>7s} {pct(r['server_cpu_pct']):>7s} "
                f"{pct(r['generator_cpu_pct']):>5s} {pct(r['other_cpu_pct']):>6s}  {r['errors']}"
            )
        for key, what in (
            ("p99_ms", "p99 delay"),
            ("p999_ms", "p99.9 delay"),
            ("server_us_per_message", "server µs per inbound message"),
        ):
            lines += node_lines(results, lat, key, what)
            lines += ceiling_lines(results, lat, key, what)

    if ing:
        lines.append("")
        lines.append(
            f"ingest: {opts.connections} connections in {opts.rooms} rooms (all joined), "
            f"window {opts.ingest_window} per connection, {opts.duration:g} s, {opts.size}-char content"
        )
        lines.append(
            f"  {'server':{w}s} {'acked msgs/s':>12s} {'[min–max]':>17s} {'ack p50':>8s} {'ack p99':>8s} "
            f"{'server':>7s} {'gen':>5s} {'other':>6s}  pushes/expected"
        )
        for r in ing:
            if r["acked_per_s"] is None:
                lines.append(f"  {r['server']:{w}s} FAILED")
                continue
            lo, hi = r["acked_per_s_range"]
            lines.append(
                f"  {r['server']:{w}s} {fmt(r['acked_per_s']):>12s} {f'[{lo:,.0f}–{hi:,.0f}]':>17s} "
                f"{fmt(r['ack_p50_ms'], '.1f'):>8s} {fmt(r['ack_p99_ms'], '.1f'):>8s} "
                f"{pct(r['server_cpu_pct']):>7s} {pct(r['generator_cpu_pct']):>5s} "
                f"{pct(r['other_cpu_pct']):>6s}  {r['pushes']:,}/{r['expected_pushes']:,}"
            )
        lines.append(rss_line(ing))
    if live:
        lines.append("")
        lines.append(
            f"live: {opts.viewers:,} viewers of one stream, {opts.reactions:,} reactions at "
            f"{opts.reaction_rate:g}/s from {opts.senders} sender connection(s) (viewers too, counted "
            f"apart), {opts.workers} viewer process(es); chatd's per-user reaction limit lifted"
        )
        lines.append(
            f"  {'server':{w}s} {'deliveries/s':>12s} {'[min–max]':>19s} {'sent/s':>7s} {'p50 ms':>7s} "
            f"{'p99 ms':>7s} {'server':>7s} {'µs/dlv':>6s} {'gen':>5s} {'other':>6s}  delivered/expected"
        )
        for r in live:
            if r["deliveries_per_s"] is None:
                lines.append(f"  {r['server']:{w}s} FAILED")
                continue
            lo, hi = r["deliveries_per_s_range"]
            lines.append(
                f"  {r['server']:{w}s} {fmt(r['deliveries_per_s']):>12s} {f'[{lo:,.0f}–{hi:,.0f}]':>19s} "
                f"{fmt(r['send_rate']):>7s} {fmt(r['p50_ms'], '.1f'):>7s} {fmt(r['p99_ms'], '.1f'):>7s} "
                f"{pct(r['server_cpu_pct']):>7s} {fmt(r['server_us_per_delivery'], '.2f'):>6s} "
                f"{pct(r['generator_cpu_pct']):>5s} {pct(r['other_cpu_pct']):>6s}  "
                f"{r['delivered']:,}/{r['expected']:,}"
            )
            lines.append(
                f"  {'':{w}s} max delay {fmt(r['max_ms'], '.1f')} ms, reaction ack p50/p99 "
                f"{fmt(r['ack_p50_ms'], '.1f')}/{fmt(r['ack_p99_ms'], '.1f')} ms, last delivery "
                f"{fmt(r['drain_ms'], '.0f')} ms after the last send, sender copies "
                f"{r['sender_copies']:,}/{r['sender_copies_expected']:,}, "
                f"{r['acked']:,}/{r['reactions']:,} acked"
            )
        lines.append(rss_line(live))
        lines += process_lines(opts, results, live)
        lines.append(
            "  µs/dlv = server CPU per delivery (µs); expected = viewers × acked reactions "
            "(the senders' own copies are the 'sender copies')"
        )
    if conn:
        lines += connect_lines(opts, results, conn, w)
    idle = [r for r in rows if r["scenario"] == "idle"]
    if idle:
        lines += idle_lines(opts, results, idle, w)
    lines.append("")
    lines.append(
        "CPU columns: % of one CPU, averaged over the measured window. server = the server process (all "
        "its threads; in 'xN' rows the sum over the N chatd processes); gen = the generator processes; "
        "other = every other user process (PostgreSQL's backends in the postgresql rows, redis-server in "
        "the 'xN' rows; anything else is disturbance)."
    )
    pg = [r for r in results if "postgres" in r["server"] and "failed" not in r]
    if pg:
        lines.append(
            f"PostgreSQL processes used a median {median([r['other_top'].get('postgres', 0) for r in pg]):.0f}% "
            f"of a CPU (not pinned) beside chatd."
        )
    redis = [r for r in results if r.get("redis") and "failed" not in r]
    if redis:
        lines.append(
            f"redis-server used a median {median([r['other_top'].get(REDIS_COMM, 0) for r in redis]):.0f}% "
            f"of a CPU in the 'xN' rows (chatd processes sharing Redis)."
        )
    problems = find_problems(opts, results)
    lines.append("")
    lines.append("problems: " + ("none" if not problems else ""))
    lines += [f"  - {p}" for p in problems]
    return "\n".join(lines)


def connect_lines(opts, results: list[dict], rows: list[dict], w: int) -> list[str]:
    sio = opts.protocol == "socketio"
    done_what = "CONNECT reply (40{sid}; then 41 and CLOSE)" if sio else "authenticated push"
    lines = [
        "",
        f"connect: {opts.connects:,} connections (token in the URL), {opts.connect_window} attempts in "
        f"flight, each closed cleanly after its {done_what}, {opts.workers} generator process(es)",
        f"  {'server':{w}s} {'connects/s':>10s} {'[min–max]':>15s} {'p50 ms':>7s} {'p99 ms':>7s} {'server':>7s} "
        f"{'µs/conn':>7s} {'+tail':>7s} {'gen':>5s} {'other':>6s}  completed/attempted  errors",
    ]
    for r in rows:
        if r["connects_per_s"] is None:
            lines.append(f"  {r['server']:{w}s} FAILED")
            continue
        lo, hi = r["connects_per_s_range"]
        lines.append(
            f"  {r['server']:{w}s} {fmt(r['connects_per_s']):>10s} {f'[{lo:,.0f}–{hi:,.0f}]':>15s} "
            f"{fmt(r['p50_ms'], '.1f'):>7s} {fmt(r['p99_ms'], '.1f'):>7s} {pct(r['server_cpu_pct']):>7s} "
            f"{fmt(r['server_us_per_connect']):>7s} {fmt(r['server_us_per_connect_total']):>7s} "
            f"{pct(r['generator_cpu_pct']):>5s} {pct(r['other_cpu_pct']):>6s}  "
            f"{r['completed']:,}/{r['connects']:,}  {r['errors']:>6,}"
        )
    lines.append(rss_line(rows))
    lines += ceiling_lines(results, rows, "connects_per_s", "connects/s")
    lines += node_lines(results, rows, "connects_per_s", "connects/s")
    lines += node_lines(results, rows, "server_us_per_connect", "server µs/connection")
    lines.append(
        f"  latency = TCP connect start → {'CONNECT reply' if sio else 'authenticated push'}; µs/conn = server CPU per connection over the "
        "connect phase; +tail = the same including the wait for an idle server after the last close "
        f"(≥ {opts.settle:g} s: chatd's presence grace, then the users' offline processing)"
    )
    return lines


def idle_lines(opts, results: list[dict], rows: list[dict], w: int) -> list[str]:
    """The idle scenario's table and the ratios of KiB per connection."""
    lines = [
        "",
        f"idle: {opts.idle_connections:,} idle authenticated connections ({opts.protocol}) after "
        f"{opts.idle_warmup} warm-up ones, {opts.connect_window} opening at a time; server RSS growth",
        f"  {'server':{w}s} {'KiB/conn':>9s} {'[min–max]':>15s} {'RSS MiB start→warm→end':>24s} "
        f"{'connects/s':>10s} {'µs/conn':>7s}  open/expected",
    ]
    for r in rows:
        if r["kib_per_connection"] is None:
            lines.append(f"  {r['server']:{w}s} FAILED")
            continue
        lo, hi = r["kib_per_connection_range"]
        rss = (
            f"{fmt(r['rss_start_mb'])}→{fmt(r['rss_warm_mb'])}→{fmt(r['rss_end_mb'])}"
            if r["rss_end_mb"]
            else "-"
        )
        lines.append(
            f"  {r['server']:{w}s} {fmt(r['kib_per_connection'], '.1f'):>9s} "
            f"{f'[{lo:.1f}–{hi:.1f}]':>15s} {rss:>24s} {fmt(r['connects_per_s']):>10s} "
            f"{fmt(r['server_us_per_connect']):>7s}  {r['alive']:,}/{r['expected_alive']:,}"
        )
    lines += ceiling_lines(results, rows, "kib_per_connection", "KiB per idle connection")
    lines += node_lines(results, rows, "kib_per_connection", "KiB per idle connection")
    lines.append(
        "  KiB/conn = (server VmRSS after the idle connections and a quiet server − VmRSS after "
        "the warm-up) ÷ connections; µs/conn = server CPU per connection while they opened"
    )
    return lines


def node_lines(results: list[dict], rows: list[dict], key: str, what: str) -> list[str]:
    """'chatd (sqlite) ÷ node socket.io, deliveries/s: 3.10 (…) — aim ≥ 3: met'."""
    node = next((r for r in rows if r["server"] == NODE_LABEL and r.get(key)), None)
    if not node:
        return []
    out = []
    for r in rows:
        if r is node or not r.get(key):
            continue
        text = f"  {r['server']} ÷ {NODE_LABEL}, {what}: {ratio_text(results, r, node, key)}"
        if key in AIMS:
            op, aim = AIMS[key]
            value = r[key] / node[key]
            met = value >= aim if op == ">=" else value <= aim
            text += f" — aim {op.replace('>=', '≥').replace('<=', '≤')} {aim:g}: {'met' if met else 'NOT met'}"
        out.append(text)
    return out


def ceiling_lines(results: list[dict], rows: list[dict], key: str, what: str) -> list[str]:
    """'chatd (sqlite) ÷ ceiling, deliveries/s: 0.85 (…)' for every row."""
    ceiling = next((r for r in rows if r["server"] == "ceiling" and r[key]), None)
    if not ceiling:
        return []
    return [
        f"  {r['server']} ÷ ceiling, {what}: {ratio_text(results, r, ceiling, key)}"
        for r in rows
        if r is not ceiling and r[key]
    ]


def rss_line(rows: list[dict]) -> str:
    parts = [
        f"{r['server']} {r['server_peak_rss_mb']:.0f}" for r in rows if r.get("server_peak_rss_mb")
    ]
    return "  server peak RSS (MiB): " + (", ".join(parts) or "-")


def paired_ratios(
    results: list[dict], scenario: str, server: str, base: str, key: str = "deliveries_per_s"
) -> list[float]:
    """``server`` ÷ ``base`` of ``key`` in each round (the two ran back
    to back in it)."""
    by_round: dict[int, dict[str, float]] = {}
    for r in results:
        if r["scenario"] == scenario and "failed" not in r and r.get(key):
            by_round.setdefault(r["round"], {})[r["server"]] = r[key]
    return [v[server] / v[base] for _, v in sorted(by_round.items()) if server in v and base in v]


def ratio_text(results: list[dict], row: dict, base: dict, key: str = "deliveries_per_s") -> str:
    """'0.85 (ratio of medians; per round 0.80, 0.90)' for two rows' ``key``."""
    paired = paired_ratios(results, row["scenario"], row["server"], base["server"], key)
    return (
        f"{row[key] / base[key]:.2f} (ratio of medians; "
        f"per round {', '.join(f'{x:.2f}' for x in paired) or '-'})"
    )


def process_lines(opts, results: list[dict], rows: list[dict]) -> list[str]:
    """Per database, each process count against the first one given:
    '2 processes ÷ 1 process (postgresql), deliveries/s: 612,000 ÷ 850,000 = 0.72 (…)'."""
    by_label = {r["server"]: r for r in rows if r["deliveries_per_s"]}
    lines = []
    for database in opts.database:
        first, *others = [
            (n, Variant.chatd(database, n, redis_for(opts, n)).label) for n in opts.processes
        ]
        base = by_label.get(first[1])
        for n, label in others:
            row = by_label.get(label)
            if base is None or row is None:
                lines.append(
                    f"  {label} vs {first[1]}: no comparison (a variant failed in every round)"
                )
                continue
            lines.append(
                f"  {plural(n, 'process')} ÷ {plural(first[0], 'process')} ({db_label(database)}), "
                f"deliveries/s: {fmt(row['deliveries_per_s'])} ÷ {fmt(base['deliveries_per_s'])} = "
                f"{ratio_text(results, row, base)}"
            )
    return lines


def dialect_lines(opts, results: list[dict], rows: list[dict]) -> list[str]:
    """Each receiver dialect against the first one given, in server CPU per
    delivery (the generator may be the limit of deliveries/s)."""
    by_label = {r["server"]: r for r in rows if r["deliveries_per_s"]}
    lines = []
    for database in opts.database:
        for n in opts.processes:
            first, *others = [
                Variant.chatd(database, n, redis_for(opts, n), d) for d in opts.receiver_dialect
            ]
            base = by_label.get(first.label)
            for variant in others:
                row = by_label.get(variant.label)
                if base is None or row is None:
                    lines.append(f"  {variant.label} vs {first.label}: no comparison")
                    continue
                for key, what, spec in (
                    ("server_us_per_delivery", "server µs/delivery", ".3f"),
                    ("deliveries_per_s", "deliveries/s", ",.0f"),
                ):
                    lines.append(
                        f"  {variant.dialect} ÷ {first.dialect} receivers ({db_label(database)}), "
                        f"{what}: {fmt(row[key], spec)} ÷ {fmt(base[key], spec)} = "
                        f"{ratio_text(results, row, base, key)}"
                    )
    return lines


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "es" if word.endswith("s") else "s")


def by_server_note(r: dict) -> str:
    """Where the short receivers were connected, when there were several servers."""
    if r.get("processes", 1) < 2:
        return ""
    return (
        f"; connections per server {r.get('connections_by_server')}, "
        f"short ones per server {r.get('short_by_server')}"
    )


def find_problems(opts, results: list[dict]) -> list[str]:
    problems: list[str] = []
    gen_limit = 90 * len(opts.generator_cpus or [0, 0])
    for r in results:
        name = f"{r['scenario']}/{r['server']} round {r['round']}"
        if "failed" in r:
            kept = f" (server log kept in {r['server_dir']})" if r.get("server_dir") else ""
            problems.append(f"{name}: {r['failed']}{kept}")
            continue
        if r["scenario"] == "fanout":
            if r["shortfall"]:
                problems.append(
                    f"{name}: SHORTFALL: {r['delivered']:,} of {r['expected']:,} delivered "
                    f"({r['short_receivers']} receivers with a wrong count, "
                    f"{r['disconnected']} disconnected{by_server_note(r)})"
                )
            if r["out_of_order"]:
                problems.append(
                    f"{name}: {r['out_of_order']:,} deliveries out of order or duplicated "
                    f"(checked on {r['probes']} receivers)"
                )
            if r["errors"] or r["acked"] != r["messages"]:
                problems.append(
                    f"{name}: {r['acked']:,}/{r['messages']:,} acked, {r['errors']} errors "
                    f"{r['error_samples'][:2]}"
                )
            if r["worker_failures"]:
                problems.append(f"{name}: receiver worker failures {r['worker_failures']}")
        elif r["scenario"] == "live":
            if r["shortfall"]:
                problems.append(
                    f"{name}: SHORTFALL: {r['delivered']:,} of {r['expected']:,} delivered "
                    f"({r['short_receivers']} viewers with a wrong count, "
                    f"{r['disconnected']} disconnected{by_server_note(r)})"
                )
            if r["sender_copies"] != r["sender_copies_expected"]:
                problems.append(
                    f"{name}: senders got {r['sender_copies']:,} of their "
                    f"{r['sender_copies_expected']:,} copies"
                )
            if r["out_of_order"] or r["duplicates"]:
                samples = ", ".join(f"#{a} after #{b}" for a, b in r["disorder_samples"][:3])
                problems.append(
                    f"{name}: ORDER: {r['out_of_order']:,} reactions arrived after a later reaction of "
                    f"the same sender connection, {r['duplicates']:,} duplicates (checked on "
                    f"{r['probes']} viewers; e.g. {samples or '-'})"
                )
            if r["errors"] or r["acked"] != r["reactions"]:
                problems.append(
                    f"{name}: {r['acked']:,}/{r['reactions']:,} reactions acked, {r['errors']} errors "
                    f"{r['error_samples'][:2]}"
                )
            if r["worker_failures"]:
                problems.append(f"{name}: viewer worker failures {r['worker_failures']}")
            seen = r["viewer_count_seen"]
            if seen != [r["viewer_count_expected"]] * 2:
                problems.append(
                    f"{name}: viewers were last told a viewer count of {seen[0]}–{seen[1]}, "
                    f"expected {r['viewer_count_expected']}"
                )
            if r["send_rate"] and r["send_rate"] < 0.95 * r["reaction_rate"]:
                problems.append(
                    f"{name}: reactions went out at {r['send_rate']:,.0f}/s, below the "
                    f"{r['reaction_rate']:g}/s asked for"
                )
        elif r["scenario"] == "idle":
            if r["alive"] != r["expected_alive"]:
                problems.append(
                    f"{name}: only {r['alive']:,} of {r['expected_alive']:,} idle connections were "
                    f"still open when memory was read"
                )
            if r["kib_per_connection"] is None:
                problems.append(f"{name}: no RSS reading of the server")
        elif r["scenario"] == "connect":
            if r["errors"] or r["completed"] != r["connects"]:
                problems.append(
                    f"{name}: {r['completed']:,}/{r['connects']:,} connections authenticated, "
                    f"{r['errors']} failed handshakes {r['error_samples'][:2]}"
                )
            if r["unclean_closes"]:
                problems.append(
                    f"{name}: {r['unclean_closes']:,} connections did not close cleanly"
                )
            if r["worker_failures"]:
                problems.append(f"{name}: connect worker failures {r['worker_failures']}")
        elif r["scenario"] == "latency":
            expected = r["expected_deliveries_per_s"] * r["seconds"]
            if r["errors"] or r["deliveries"] < 0.98 * expected:
                problems.append(
                    f"{name}: {r['errors']} errors {r['error_samples'][:2]}, "
                    f"{r['deliveries']:,} deliveries measured of ~{expected:,.0f} scheduled"
                )
            if r["disconnected"]:
                problems.append(f"{name}: {r['disconnected']} connections were closed")
        else:
            if r["errors"] or r["unanswered"]:
                problems.append(
                    f"{name}: {r['errors']} errors, {r['unanswered']} unanswered {r['error_samples'][:2]}"
                )
            if r["push_shortfall"]:
                problems.append(f"{name}: {r['push_shortfall']:,} pushes missing")
        if r["generator_cpu_pct"] > gen_limit:
            problems.append(
                f"{name}: generator CPU {r['generator_cpu_pct']:.0f}% — the generator may be the limit"
            )
        if r.get("server_closes"):
            problems.append(
                f"{name}: the server closed connections, by close code: {r['server_closes']}"
            )
        foreign = {
            k: v
            for k, v in r.get("other_top", {}).items()
            if not k.startswith("postgres") and not (r.get("redis") and k == REDIS_COMM)
        }
        if sum(foreign.values()) > 10:
            problems.append(
                f"{name}: other processes used CPU during the window {foreign} — numbers disturbed"
            )
        # Busy time no process accounts for: processes that came and went
        # inside the window (someone else's test run, a compiler...).
        unexplained = r.get("machine_cpu_pct", 0) - sum(
            r.get(k) or 0
            for k in (
                "server_cpu_pct",
                "generator_cpu_pct",
                "other_cpu_pct",
                "kernel_threads_cpu_pct",
                "irq_cpu_pct",
            )
        )
        r["unexplained_cpu_pct"] = unexplained
        if unexplained > 25:
            problems.append(
                f"{name}: {unexplained:.0f}% of a CPU busy in processes that started and ended "
                f"during the window — numbers disturbed"
            )
        if r.get("steal_pct", 0) > 10:
            problems.append(
                f"{name}: {r['steal_pct']:.0f}% CPU stolen by the hypervisor — numbers are noisy"
            )
        if r.get("server_log_problems"):
            problems.append(f"{name}: server log: {r['server_log_problems'][:3]}")
        # twistd re-raises the signal it stopped on, so -15 is a clean stop.
        if r.get("server_killed") or (
            r.get("server_exit_code") not in (0, -signal.SIGTERM, None) and r["server"] != "ceiling"
        ):
            problems.append(
                f"{name}: server did not stop cleanly on SIGTERM (exit {r['server_exit_code']}, "
                f"killed={r.get('server_killed')}, {r['server_stop_s']} s)"
            )
    return problems


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
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument(
        "--scenario",
        choices=["fanout", "ingest", "live", "connect", "idle", "latency", "all"],
        default="all",
    )
    p.add_argument(
        "--protocol",
        choices=["native", "socketio"],
        default="native",
        help="native: chatd's JSON envelope on /ws (every scenario); socketio: Socket.IO v5 on "
        "/socket.io/ (fanout, connect, idle; 'all' is those three) (default native)",
    )
    p.add_argument(
        "--against",
        choices=["chatd", "node", "both"],
        default=None,
        help="--protocol socketio: chatd's binding, bench/socketio-node (Node socket.io 4), or both, "
        "interleaved in every round with chatd ÷ node printed (default both)",
    )
    p.add_argument(
        "--idle-connections",
        type=int,
        default=2000,
        help="idle: connections held open whose memory is measured (default 2000)",
    )
    p.add_argument(
        "--idle-warmup",
        type=int,
        default=100,
        help="idle: connections opened before the baseline RSS is read (default 100)",
    )
    p.add_argument(
        "--database",
        action="append",
        metavar="URL",
        help="chatd storage: 'sqlite' (the embedded default) or a postgresql:// URL; repeat to run "
        "each (default: sqlite)",
    )
    p.add_argument(
        "--processes",
        type=int,
        action="append",
        metavar="N",
        help="chatd processes sharing Redis and a postgresql --database, receivers/viewers/ingest "
        "connections spread round robin over them; repeat (--processes 1 --processes 2) to "
        "compare; more than 1 implies --no-pin (default 1)",
    )
    p.add_argument(
        "--receiver-dialect",
        action="append",
        choices=["native", "chatflow", "seed000"],
        help="fanout: the receivers' plain-WebSocket dialect (/ws, /ws/chatflow, /ws/seed000; the "
        "sender stays native); repeat to run each in every round and compare server CPU per "
        "delivery with the first (default native)",
    )
    p.add_argument(
        "--redis",
        metavar="URL",
        help=f"Redis for --processes > 1 (default {DEFAULT_REDIS}); given explicitly, single-process "
        f"runs use it too; every run gets a key prefix of its own",
    )
    p.add_argument("--latency-rooms", type=int, default=200, help="latency: rooms (default 200)")
    p.add_argument("--members", type=int, default=5, help="latency: connections per room (5)")
    p.add_argument("--rate", type=float, default=1.0, help="latency: messages/s per connection (1)")
    p.add_argument(
        "--latency-duration", type=float, default=20.0, help="latency: seconds measured (20)"
    )
    p.add_argument(
        "--warmup", type=float, default=5.0, help="latency: seconds sent before measuring (5)"
    )
    p.add_argument(
        "--receivers", type=int, default=1000, help="fanout: room members receiving (default 1000)"
    )
    p.add_argument(
        "--messages", type=int, default=2000, help="fanout: messages sent (default 2000)"
    )
    p.add_argument(
        "--window", type=int, default=32, help="fanout: un-acked messages in flight (default 32)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="fanout/live/connect: receiver, viewer or connecting processes (default 1)",
    )
    p.add_argument(
        "--connections", type=int, default=50, help="ingest: sending connections (default 50)"
    )
    p.add_argument("--rooms", type=int, default=5, help="ingest: rooms (default 5)")
    p.add_argument(
        "--ingest-window",
        type=int,
        default=8,
        help="ingest: un-acked messages per connection (default 8)",
    )
    p.add_argument(
        "--duration", type=float, default=10.0, help="ingest: seconds of sending (default 10)"
    )
    p.add_argument(
        "--viewers", type=int, default=1000, help="live: viewers of the stream (default 1000)"
    )
    p.add_argument(
        "--reactions", type=int, default=5000, help="live: reactions sent (default 5000)"
    )
    p.add_argument(
        "--reaction-rate",
        type=float,
        default=500.0,
        help="live: reactions per second sent, all senders together (default 500); chatd's own "
        "per-user --reaction-rate limit is set to 1000000",
    )
    p.add_argument(
        "--senders",
        type=int,
        default=4,
        help="live: reacting connections, each its own user and a viewer too (default 4)",
    )
    p.add_argument(
        "--connects",
        type=int,
        default=5000,
        help="connect: connections opened, authenticated and closed (default 5000)",
    )
    p.add_argument(
        "--connect-window",
        type=int,
        default=64,
        help="connect: connection attempts in flight (default 64)",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=4.0,
        help="connect: after the last close wait this long, then until the server is idle, and count "
        "its CPU meanwhile in '+tail' (default 4: chatd's 3 s presence grace + 1)",
    )
    p.add_argument(
        "--size", type=int, default=64, help="message content length in characters (default 64)"
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="rounds of each scenario; medians are reported (default 3)",
    )
    p.add_argument(
        "--sample",
        type=int,
        default=10,
        help="fanout/live: every N-th receiver also measures delay and order (default 10)",
    )
    p.add_argument(
        "--no-ceiling",
        action="store_true",
        help="fanout/connect/idle/latency: skip the bench/ceiling.py reference run",
    )
    p.add_argument(
        "--no-pin", action="store_true", help="do not pin server and generator to separate CPUs"
    )
    p.add_argument(
        "--user-tag",
        metavar="TAG",
        help="user ids bench-TAG-<name> (default: a fresh random TAG per run, so users share no room of "
        "earlier runs; '' reuses bench-<name> and with it every membership of earlier runs)",
    )
    p.add_argument(
        "--stall", type=float, default=15.0, help="give up after this many seconds without progress"
    )
    p.add_argument(
        "--loadgen-timeout", type=float, default=240.0, help="hard limit per scenario run"
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        metavar="SECONDS",
        help="before each run wait up to this long for the machine to be idle (<10%% busy)",
    )
    p.add_argument(
        "--keep", action="store_true", help="keep the servers' scratch directories (logs)"
    )
    p.add_argument(
        "--json",
        metavar="PATH",
        help="write all results to this JSON file (bench/results/ is gitignored)",
    )
    opts = p.parse_args(argv)
    opts.repeat = max(1, opts.repeat)
    if opts.protocol == "socketio":
        if opts.scenario in ("ingest", "live"):
            p.error("--protocol socketio has the scenarios fanout, connect, idle and latency")
        opts.against = opts.against or "both"
    elif opts.against not in (None, "chatd"):
        p.error("--against node needs --protocol socketio (the Node server speaks only Socket.IO)")
    opts.database = [
        None if d in ("sqlite", "", None) else d for d in (opts.database or ["sqlite"])
    ]
    opts.processes = list(dict.fromkeys(opts.processes or [1]))
    opts.receiver_dialect = list(dict.fromkeys(opts.receiver_dialect or ["native"]))
    if min(opts.processes) < 1:
        p.error("--processes must be at least 1")
    if max(opts.processes) > 1 and not all(d and d.startswith("postgres") for d in opts.database):
        p.error("several processes need a shared postgresql:// --database (SQLite is per process)")
    opts.pin_implied_off = max(opts.processes) > 1 and not opts.no_pin
    cpus = sorted(os.sched_getaffinity(0))
    if not opts.no_pin and not opts.pin_implied_off and len(cpus) >= 2:
        opts.server_cpus, opts.generator_cpus = {cpus[0]}, set(cpus[1:])
    else:
        opts.server_cpus = opts.generator_cpus = None
    return opts


def check_node() -> None:
    """Exit with what to do when the Node reference server cannot run."""
    if not shutil.which("node"):
        sys.exit("run.py: --against node/both needs Node.js (node on PATH), or use --against chatd")
    if not (NODE_DIR / "node_modules" / "socket.io").is_dir():
        sys.exit(
            f"run.py: {NODE_DIR.relative_to(HERE.parent)}/node_modules is missing; install the "
            f"Node server's pinned packages first:\n\n    npm ci --prefix bench/socketio-node\n\n"
            f"(or run with --against chatd)"
        )


def main(argv=None) -> int:
    opts = parse_args(argv)
    if not os.access(TWISTD, os.X_OK):
        sys.exit(
            f"run.py: no twistd next to {PYTHON}; run it with the chatd venv's python "
            f"(.venv/bin/python bench/run.py)"
        )
    # SIGTERM/SIGHUP stop the run the same way Ctrl-C does: through the
    # finally blocks that stop the servers.
    # (SIGINT too: a shell may start background jobs with it ignored.)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    if opts.server_cpus:
        pin_note = (
            f"server pinned to CPU {min(opts.server_cpus)}, generator to CPU "
            f"{','.join(map(str, sorted(opts.generator_cpus)))} (os.sched_setaffinity)"
        )
    elif opts.pin_implied_off:
        pin_note = (
            f"no CPU pinning (--processes {max(opts.processes)} implies --no-pin: {os.cpu_count()} CPU(s) "
            f"cannot keep servers, Redis and generator apart; every variant runs unpinned)"
        )
    else:
        pin_note = "no CPU pinning (server and generator share the CPUs)"
    print(f"chatd bench: {pin_note}", flush=True)
    started = time.monotonic()
    results: list[dict] = []
    if opts.scenario != "all":
        scenarios = [opts.scenario]
    elif opts.protocol == "socketio":
        # Every ratio of the everyday-load targets, beside Node, in one run.
        scenarios = ["fanout", "connect", "idle", "latency"]
    else:
        scenarios = ["fanout", "ingest", "live", "connect", "idle", "latency"]
    chatd = [
        Variant.chatd(db, n, redis_for(opts, n), dialect)
        for db in opts.database
        for n in opts.processes
        for dialect in opts.receiver_dialect
    ]
    node: list[Variant] = []
    if opts.protocol == "socketio":
        print(
            f"  over Socket.IO (Engine.IO v4 WebSocket transport), against {opts.against}",
            flush=True,
        )
        if opts.against == "node":
            chatd = []
        if opts.against in ("node", "both"):
            check_node()
            node = [Variant(NODE_LABEL, "node")]
    interrupted = None
    try:
        for scenario in scenarios:
            # The ceiling speaks only the native protocol; over Socket.IO
            # the Node server is the reference.
            with_ceiling = (
                scenario in ("fanout", "connect", "idle", "latency")
                and not opts.no_ceiling
                and opts.protocol == "native"
            )
            ceiling = [Variant("ceiling", "ceiling")] if with_ceiling else []
            # Rounds interleave the servers so slow drift of the machine
            # hits them alike.
            for rnd in range(1, opts.repeat + 1):
                for variant in chatd + node + ceiling:
                    results.append(one(opts, scenario, variant, rnd))
    except (KeyboardInterrupt, SystemExit) as e:
        interrupted = e
        print("\ninterrupted; servers stopped", flush=True)
    finally:
        # one() stops its server; this only matters if a second signal
        # arrived while it was doing so.
        for server in list(RUNNING):
            server.stop()
    text = summary(opts, results, pin_note)
    print()
    print(text)
    print(f"(total {time.monotonic() - started:.0f} s)")
    if opts.json:
        Path(opts.json).parent.mkdir(parents=True, exist_ok=True)
        options = {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(opts).items()}
        Path(opts.json).write_text(
            json.dumps(
                {
                    "machine": {
                        "cpus": os.cpu_count(),
                        "model": cpu_model(),
                        "python": platform.python_version(),
                        "kernel": platform.release(),
                    },
                    "pinning": pin_note,
                    "options": options,
                    "medians": aggregate(results),
                    "results": results,
                    "summary": text,
                },
                indent=2,
            )
        )
        print(f"results written to {opts.json}")
    if interrupted is not None:
        return 130
    failed = any("failed" in r for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
