"""Load generator for chatd (and bench/ceiling.py) on picows + uvloop.

Four scenarios, each printing one JSON object (its results) as the last line
of stdout:

* ``fanout``: one sender connection creates a public room, ``--receivers``
  connections (spread over ``--workers`` forked processes) join it, then
  the sender sends ``--messages`` chat:message requests keeping at most
  ``--window`` un-acked.  Every receiver counts its chat:message pushes
  exactly (expected = receivers x messages); every ``--sample``-th receiver
  (a "probe") also checks that it sees the messages in send order with no
  gap or duplicate and measures the send-to-receipt delay of each from the
  time stamp embedded in the content.  The others only count, so the
  generator stays well below the server's cost per delivery.
* ``ingest``: ``--connections`` connections join ``--rooms`` rooms (round
  robin) and each keeps ``--window`` chat:message requests un-acked for
  ``--duration`` seconds.  Reports acked (= durably stored) messages per
  second, ack latency, and checks that every push that the acks imply
  arrived.
* ``live``: a host connection starts a live stream, ``--viewers``
  connections (spread over ``--workers`` forked processes) join it, and
  ``--senders`` more connections join it too and send ``--reactions``
  live:reaction requests between them, open loop at ``--reaction-rate``
  per second (round robin).  Every viewer counts its live:reaction pushes
  exactly (expected = viewers x acked reactions; the senders receive every
  reaction as well and count those copies apart); every ``--sample``-th
  viewer also measures the send-to-receipt delay and checks that no
  reaction arrives twice or after a later one of the same sender.
  live:viewer-count pushes are not counted as deliveries; the last count
  each viewer was told is checked against viewers + senders.
* ``connect``: ``--connects`` connections (users ``bench-<tag>-c<i>``, a
  token in the URL), spread over ``--workers`` forked processes with
  ``--connect-window`` attempts in flight in all; each is complete when its
  ``authenticated`` push arrives and is then closed cleanly (CLOSE 1000,
  the server's CLOSE back).  Reports connects/s (first attempt to last
  ``authenticated``), p50/p99 connect latency (TCP connect start to
  ``authenticated``), failed handshakes, server CPU over the connect phase
  and, after waiting ``--settle`` s and for the server to go idle (chatd
  processes a user's going offline 3 s after the close), the server CPU of
  that tail as well.

The content of every message starts with ``~T<20-digit monotonic_ns><8-digit
index>`` (a reaction's ``emoji`` is exactly that, 30 of its 32 characters);
receivers find it with ``bytes.find``, never parse JSON on the hot path.
``time.monotonic_ns()`` is CLOCK_MONOTONIC, the same clock in every
process on the machine, so sender and receivers can be different processes.

With ``--server-pid`` the server's CPU time (utime+stime from /proc, all its
threads) is sampled at the start and at the end of the measured window; the
generator's own CPU (main process plus workers) is measured the same way,
and so is every other process on the machine (PostgreSQL, or whatever else
disturbs the run).  The delay is measured when the generator handles the
frame, so it includes any time the frame waited for the generator.

Several servers of one cluster (chatd processes sharing Redis and the
database): give ``--url`` once per server (or comma-separated) and
``--server-pid`` once per server.  Receivers, viewers and ingest
connections are spread round robin over the URLs (so every worker process
talks to every server); the fanout sender, the live host and the reaction
senders use the first URL.  Server CPU is the sum over the processes; ``connections_by_server``
and ``short_by_server`` (connections that missed pushes) are keyed by URL
index.

Used by bench/run.py; can be run by hand against a running server:

    python bench/loadgen.py fanout --url ws://127.0.0.1:8080/ws --secret-file DIR/jwt-secret
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import time
from array import array
from collections.abc import Sequence
from functools import partial

import jwt
import uvloop
from picows import WSCloseCode, WSListener, WSMsgType, WSTransport, ws_connect

TICK = os.sysconf("SC_CLK_TCK")
MARK = b"~T"
PUSH = b'{"type":"chat:message"'
ACK = b'{"type":"ack"'
ERR = b'{"type":"error"'
monotonic_ns = time.monotonic_ns


# -- helpers ---------------------------------------------------------------------


def cpu_seconds(pid: int | str = "self") -> float:
    """utime+stime of a process (every thread of it), in seconds."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / TICK


def servers_cpu(pids: list[int]) -> float:
    """utime+stime of the server processes together (NaN without any)."""
    return sum(cpu_seconds(pid) for pid in pids) if pids else float("nan")


def servers_rss(pids: list[int]) -> float | None:
    """Sum of the server processes' peak resident memory, in MiB."""
    peaks = [peak_rss_mb(pid) for pid in pids]
    return None if not peaks or None in peaks else sum(peaks)


def peak_rss_mb(pid: int | None) -> float | None:
    """VmHWM (peak resident memory) of a process, in MiB."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def machine_ticks() -> tuple[int, int, int]:
    """(busy, steal, irq+softirq) clock ticks of the whole machine, all
    CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    steal = v[7] if len(v) > 7 else 0
    return sum(v[:8]) - idle - steal, steal, v[5] + v[6]


def machine_pct(before: tuple[int, int, int], after: tuple[int, int, int], wall: float) -> dict:
    """Busy, stolen and interrupt CPU of the whole machine over ``wall``
    seconds, in percent of one CPU (like the per-process figures)."""
    return {
        "machine_cpu_pct": 100.0 * (after[0] - before[0]) / TICK / wall,
        "steal_pct": 100.0 * (after[1] - before[1]) / TICK / wall,
        "irq_cpu_pct": 100.0 * (after[2] - before[2]) / TICK / wall,
    }


def process_ticks() -> dict[int, tuple[str, int, bool]]:
    """pid -> (name, utime+stime ticks, is a kernel thread) for every process."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        comm = raw[raw.index(b"(") + 1 : raw.rindex(b")")].decode(errors="replace")
        fields = raw.rsplit(b")", 1)[1].split()
        out[int(name)] = (
            comm,
            int(fields[11]) + int(fields[12]),
            bool(int(fields[6]) & 0x00200000),
        )
    return out


def other_load(before: dict, after: dict, ours: set[int], wall: float) -> dict:
    """CPU used during the window by processes that are neither the server
    nor the generator: user processes by name (postgres, other work on the
    machine) and kernel threads (ksoftirqd and friends) in total.  Processes
    that both started and ended inside the window are invisible here; the
    caller compares the sum with the machine's busy time to see them."""
    users: dict[str, float] = {}
    kernel = 0.0
    for pid, (comm, ticks, kthread) in after.items():
        if pid in ours:
            continue
        # A process that started inside the window spent all its time in it.
        used = 100.0 * (ticks - (before[pid][1] if pid in before else 0)) / TICK / wall
        if used <= 0:
            continue
        if kthread:
            kernel += used
        else:
            users[comm] = users.get(comm, 0.0) + used
    top = sorted(users.items(), key=lambda kv: -kv[1])[:4]
    return {
        "other_cpu_pct": sum(users.values()),
        "kernel_threads_cpu_pct": kernel,
        "other_top": {k: round(v, 1) for k, v in top if v >= 1.0},
    }


def mint(secret: str, user: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user, "iat": now, "exp": now + 3600}, secret, algorithm="HS256")


def token(args, name: str) -> str:
    """A token for user ``bench-<tag>-<name>``: a fresh tag per run, so the
    users share no room of an earlier run of a database that is kept
    (PostgreSQL) — otherwise every connect announces the user online to
    the members of all those rooms.  ``--user-tag ''`` gives the plain
    ``bench-<name>`` of every run."""
    return mint(args.secret, f"bench-{args.user_tag}-{name}" if args.user_tag else f"bench-{name}")


def content(index: int, size: int) -> str:
    head = f"~T{monotonic_ns():020d}{index:08d} "
    return head + "x" * max(0, size - len(head))


def request(kind: str, rid: str, data: dict) -> bytes:
    return json.dumps({"type": kind, "id": rid, "data": data}, separators=(",", ":")).encode()


def message_request(rid: str, room: str, text: str) -> bytes:
    # Built by hand: the sender must not be the bottleneck either.
    return b'{"type":"chat:message","id":"%s","data":{"chatId":"%s","content":"%s"}}' % (
        rid.encode(),
        room.encode(),
        text.encode(),
    )


def histogram_add(hist: dict[int, int], delays_ns: array) -> None:
    """Quantize delays (ns) to microseconds with 3 significant digits."""
    for d in delays_ns:
        us = d // 1000
        if us >= 1000:
            scale = 10 ** (len(str(us)) - 3)
            us = us // scale * scale
        hist[us] = hist.get(us, 0) + 1


def percentile(hist: dict[int, int], q: float) -> float | None:
    total = sum(hist.values())
    if not total:
        return None
    rank = q * (total - 1)
    seen = 0
    for value in sorted(hist):
        seen += hist[value]
        if seen > rank:
            return value / 1000.0  # ms
    return max(hist) / 1000.0


def merge_counts(counts: list[dict]) -> dict:
    out: dict = {}
    for c in counts:
        for k, v in c.items():
            out[k] = out.get(k, 0) + v
    return out


def steady_rate(arrivals: list[int], receivers: int) -> float | None:
    """Deliveries/s between the 10th and the 90th percent of the messages,
    as one receiver saw them (leaves out ramp-up and tail)."""
    if len(arrivals) < 20:
        return None
    lo, hi = len(arrivals) // 10, len(arrivals) * 9 // 10
    span = (arrivals[hi] - arrivals[lo]) / 1e9
    return (hi - lo) * receivers / span if span > 0 else None


def timeline(arrivals: list[int], t0: int, step: float = 0.5) -> list[int]:
    """Messages per second as one receiver saw them, per ``step`` seconds."""
    buckets: list[int] = []
    for a in arrivals:
        k = int((a - t0) / 1e9 / step)
        while len(buckets) <= k:
            buckets.append(0)
        buckets[k] += 1
    return [int(b / step) for b in buckets]


class ControlWaiter:
    """Waits for one reply (ack/error/authenticated) on a connection during
    set-up, where speed does not matter."""

    def __init__(self) -> None:
        self.future: asyncio.Future | None = None
        self.expect: bytes = b""

    def arm(self, expect: bytes) -> asyncio.Future:
        self.expect = expect
        self.future = asyncio.get_running_loop().create_future()
        return self.future

    def offer(self, payload: bytes) -> None:
        fut = self.future
        if fut is None or fut.done():
            return
        if payload.startswith(self.expect) or payload.startswith(ERR):
            fut.set_result(json.loads(payload))


class Base(WSListener):
    def __init__(self) -> None:
        self.ctl = ControlWaiter()
        self.transport: WSTransport | None = None
        self.closed = False
        self.close_code: int | None = None  # set when the server closes us
        self.server = 0  # index of the URL (server) it is connected to

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed = True
        fut = self.ctl.future
        if fut is not None and not fut.done():
            fut.set_exception(ConnectionError("disconnected"))

    def control(self, transport: WSTransport, frame) -> None:
        t = frame.msg_type
        if t == WSMsgType.CLOSE:
            body = frame.get_payload_as_bytes()
            self.close_code = int.from_bytes(body[:2], "big") if len(body) >= 2 else 1005
            transport.disconnect()
        elif t == WSMsgType.PING:
            transport.send_pong(frame.get_payload_as_bytes())

    async def call(self, kind: str, rid: str, data: dict, timeout: float = 30.0) -> dict:
        fut = self.ctl.arm(b'{"type":"ack","id":"%s"' % rid.encode())
        self.transport.send(WSMsgType.TEXT, request(kind, rid, data))
        reply = await asyncio.wait_for(fut, timeout)
        if reply.get("type") != "ack":
            raise RuntimeError(f"{kind} failed: {reply}")
        return reply["data"]


async def open_all(
    factories,
    urls: str | Sequence[str],
    tokens: list[str],
    concurrency: int = 64,
    timeout: float = 30.0,
):
    """Connect one listener per token, round robin over ``urls`` (one URL
    or several servers), and wait for ``authenticated``."""
    sem = asyncio.Semaphore(concurrency)
    targets = [urls] if isinstance(urls, str) else list(urls)

    async def one(make, token, server: int):
        async with sem:
            _, listener = await ws_connect(
                make, f"{targets[server]}?token={token}", websocket_handshake_timeout=timeout
            )
            listener.server = server
            reply = await asyncio.wait_for(listener.ctl.future, timeout)
            if reply.get("type") != "authenticated":
                raise RuntimeError(f"authentication failed: {reply}")
            return listener

    def maker():
        listener = factories()
        listener.ctl.arm(b'{"type":"authenticated"')
        return listener

    return await asyncio.gather(*(one(maker, t, i % len(targets)) for i, t in enumerate(tokens)))


async def join_all(listeners, rooms: list[str], concurrency: int = 64) -> None:
    sem = asyncio.Semaphore(concurrency)

    async def one(listener, room):
        async with sem:
            await listener.call("chat:join", "j", {"chatId": room}, timeout=60.0)

    await asyncio.gather(*(one(ln, r) for ln, r in zip(listeners, rooms, strict=True)))


def pipe_future(conn) -> asyncio.Future:
    """The next object from a multiprocessing pipe, without blocking the loop."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def readable() -> None:
        loop.remove_reader(conn.fileno())
        try:
            # uvloop makes a watched fd non-blocking; a big message may
            # still be arriving, so read it in blocking mode.
            os.set_blocking(conn.fileno(), True)
            fut.set_result(conn.recv())
        except (EOFError, OSError) as e:
            fut.set_exception(e)

    loop.add_reader(conn.fileno(), readable)
    return fut


def by_server(listeners, expected: int) -> dict[str, dict[int, int]]:
    """Connections per server (URL index), and those that did not receive
    exactly ``expected`` pushes."""
    conns: dict[int, int] = {}
    short: dict[int, int] = {}
    for ln in listeners:
        conns[ln.server] = conns.get(ln.server, 0) + 1
        if ln.got != expected:
            short[ln.server] = short.get(ln.server, 0) + 1
    return {"connections_by_server": conns, "short_by_server": short}


def merge_by_server(outs: list[dict]) -> dict[str, dict[int, int]]:
    return {
        k: merge_counts([o[k] for o in outs]) for k in ("connections_by_server", "short_by_server")
    }


def close_codes(listeners) -> dict[int, int]:
    """How many connections the server closed, by close code."""
    codes: dict[int, int] = {}
    for ln in listeners:
        if ln.close_code is not None:
            codes[ln.close_code] = codes.get(ln.close_code, 0) + 1
    return codes


def pipe_send(conn, obj) -> None:
    os.set_blocking(conn.fileno(), True)  # see pipe_future
    conn.send(obj)


async def gather_workers(
    futures: list[asyncio.Future], timeout: float, what: str
) -> tuple[list[dict], list[str]]:
    """The ("done", result) of every worker: (results, failures)."""
    outs, failures = [], []
    for fut in futures:
        try:
            reply = await asyncio.wait_for(fut, timeout)
        except (TimeoutError, EOFError, OSError) as e:
            reply = ("fail", f"no result from a {what} worker: {e!r}")
        (outs if reply[0] == "done" else failures).append(reply[1])
    return outs, failures


async def close_all(listeners) -> None:
    for ln in listeners:
        if ln.transport is not None and not ln.closed:
            ln.transport.disconnect(graceful=False)
    await asyncio.sleep(0)


# -- fanout: receivers ----------------------------------------------------------


class Tally:
    """What one receiver process counts (shared by all its receivers)."""

    __slots__ = ("count", "target", "disorder", "last", "delays", "done", "other")

    def __init__(self, target: int) -> None:
        self.count = 0
        self.target = target
        self.disorder = 0
        self.last = 0
        self.delays = array("q")
        self.done: asyncio.Future | None = None
        self.other = 0


class Receiver(Base):
    """Counts chat:message pushes; the hot path is one bytes copy, one
    prefix test and two additions."""

    def __init__(self, tally: Tally) -> None:
        super().__init__()
        self.tally = tally
        self.got = 0

    def on_ws_frame(self, transport: WSTransport, frame) -> None:
        if frame.get_payload_as_bytes().startswith(PUSH):
            self.got += 1
            t = self.tally
            t.count += 1
            if t.count == t.target:
                t.last = monotonic_ns()
                t.done.set_result(None)
        else:
            self.slow_path(transport, frame)

    def slow_path(self, transport: WSTransport, frame) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            self.control(transport, frame)
        else:
            self.tally.other += 1
            self.ctl.offer(frame.get_payload_as_bytes())


class Probe(Receiver):
    """A receiver that also measures the send-to-receipt delay of every
    message and checks that they arrive in send order, once each."""

    def __init__(self, tally: Tally) -> None:
        super().__init__(tally)
        self.next = 0
        self.arrivals = array("q")

    def on_ws_frame(self, transport: WSTransport, frame) -> None:
        p = frame.get_payload_as_bytes()
        if p.startswith(PUSH):
            i = p.find(MARK)
            if i >= 0:
                now = monotonic_ns()
                t = self.tally
                t.delays.append(now - int(p[i + 2 : i + 22]))
                idx = int(p[i + 22 : i + 30])
                if idx != self.next:
                    t.disorder += 1
                self.next = idx + 1
                self.arrivals.append(now)
                self.got += 1
                t.count += 1
                t.last = now
                if t.count == t.target:
                    t.done.set_result(None)
                return
        self.slow_path(transport, frame)


def run_worker(conn, main, *args) -> None:
    """The body of a forked worker process: run ``main(conn, *args)`` on
    uvloop; report a failure to the parent, never leave it hanging."""
    try:
        uvloop.run(main(conn, *args))
    except Exception as e:
        try:
            pipe_send(conn, ("fail", f"{type(e).__name__}: {e}"))
        except OSError:
            pass


def fork_workers(main, shares: list[tuple]) -> tuple[list, list]:
    """Fork one worker per entry of ``shares`` (the arguments of
    ``main`` after the pipe), before any event loop exists."""
    ctx = multiprocessing.get_context("fork")
    pipes, procs = [], []
    for share in shares:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=run_worker, daemon=True, args=(child, main, *share))
        proc.start()
        child.close()
        pipes.append(parent)
        procs.append(proc)
    return pipes, procs


async def _receiver_worker(
    conn, urls: list[str], tokens: list[str], messages: int, stall: float, sample: int
) -> None:
    """A forked process owning a share of the receivers."""
    tally = Tally(len(tokens) * messages)
    tally.done = asyncio.get_running_loop().create_future()
    room = (await pipe_future(conn))[1]
    t0 = time.monotonic()
    made = 0

    def make() -> Receiver:
        nonlocal made
        made += 1
        return Probe(tally) if (made - 1) % sample == 0 else Receiver(tally)

    listeners = await open_all(make, urls, tokens)
    t1 = time.monotonic()
    await join_all(listeners, [room] * len(listeners))
    t2 = time.monotonic()
    tally.other = 0
    pipe_send(conn, ("ready", {"connect_s": t1 - t0, "join_s": t2 - t1}))
    command = await pipe_future(conn)
    if command[0] != "go":
        await close_all(listeners)
        return
    cpu0 = cpu_seconds()
    stop = pipe_future(conn)
    # Wait for every delivery, an explicit stop, a stall, or the loss of
    # every connection.
    last_count, last_change = -1, time.monotonic()
    while not tally.done.done() and not stop.done():
        await asyncio.wait([tally.done, stop], timeout=0.25, return_when=asyncio.FIRST_COMPLETED)
        now = time.monotonic()
        if tally.count != last_count:
            last_count, last_change = tally.count, now
        elif now - last_change > stall or all(ln.closed for ln in listeners):
            break
    cpu1 = cpu_seconds()
    hist: dict[int, int] = {}
    histogram_add(hist, tally.delays)
    pipe_send(
        conn,
        (
            "done",
            {
                "count": tally.count,
                "target": tally.target,
                "disorder": tally.disorder,
                "last_ns": tally.last,
                "cpu_s": cpu1 - cpu0,
                "hist": hist,
                "other": tally.other,
                "disconnected": sum(1 for ln in listeners if ln.closed),
                "server_closes": close_codes(listeners),
                "short_receivers": sum(1 for ln in listeners if ln.got != messages),
                **by_server(listeners, messages),
                "probes": sum(1 for ln in listeners if isinstance(ln, Probe)),
                "arrivals": list(listeners[0].arrivals) if isinstance(listeners[0], Probe) else [],
            },
        ),
    )
    await close_all(listeners)


# -- fanout: sender ---------------------------------------------------------------


class Sender(Base):
    def __init__(self) -> None:
        super().__init__()
        self.room = ""
        self.total = 0
        self.window = 0
        self.size = 0
        self.sent = 0
        self.acked = 0
        self.errors = 0
        self.error_samples: list[str] = []
        self.done: asyncio.Future | None = None
        self.echo = 0
        self.last_ack = 0

    def start(self, room: str, total: int, window: int, size: int) -> asyncio.Future:
        self.room, self.total, self.window, self.size = room, total, window, size
        self.done = asyncio.get_running_loop().create_future()
        for _ in range(min(window, total)):
            self.send_next()
        return self.done

    def send_next(self) -> None:
        i = self.sent
        self.sent += 1
        self.transport.send(
            WSMsgType.TEXT, message_request(f"k{i}", self.room, content(i, self.size))
        )

    def on_ws_frame(self, transport: WSTransport, frame) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            self.control(transport, frame)
            return
        p = frame.get_payload_as_bytes()
        if self.done is None:
            self.ctl.offer(p)
            return
        if p.startswith(PUSH):
            self.echo += 1
            return
        if p.startswith(ACK):
            self.acked += 1
        elif p.startswith(ERR):
            self.errors += 1
            if len(self.error_samples) < 5:
                self.error_samples.append(p.decode(errors="replace")[:300])
        else:
            return
        self.last_ack = monotonic_ns()
        if self.sent < self.total:
            self.send_next()
        elif self.acked + self.errors == self.total and not self.done.done():
            self.done.set_result(None)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        super().on_ws_disconnected(transport)
        if self.done is not None and not self.done.done():
            self.done.set_result(None)


def start_workers(args):
    """Fork the receiver processes before any event loop exists."""
    n = args.receivers
    workers = max(1, min(args.workers, n))
    tokens = [token(args, f"r{i}") for i in range(n)]
    return fork_workers(
        _receiver_worker,
        [
            (args.urls, tokens[w::workers], args.messages, args.stall, max(1, args.sample))
            for w in range(workers)
        ],
    )


def stop_workers(pipes, procs) -> None:
    for p in pipes:
        try:
            p.send(("stop",))
        except OSError:
            pass
    for proc in procs:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join(1)


async def _fanout(args, pipes, workers: int) -> dict:
    n, m = args.receivers, args.messages
    (sender,) = await open_all(Sender, args.url, [token(args, "sender")])
    room = (await sender.call("chat:create", "c", {"name": "bench", "type": "public"}))["room"][
        "id"
    ]
    await sender.call("chat:join", "j", {"chatId": room})
    t_setup = time.monotonic()
    for p in pipes:
        pipe_send(p, ("room", room))
    setup = {}
    for p in pipes:
        reply = await asyncio.wait_for(pipe_future(p), 300)
        if reply[0] != "ready":
            raise RuntimeError(f"receiver worker failed: {reply[1]}")
        setup = {k: max(setup.get(k, 0), v) for k, v in reply[1].items()}
    setup["total_s"] = time.monotonic() - t_setup
    done_futures = [pipe_future(p) for p in pipes]
    server_cpu0 = servers_cpu(args.server_pids)
    own_cpu0 = cpu_seconds()
    mach0 = machine_ticks()
    procs0 = process_ticks()
    t0 = monotonic_ns()
    for p in pipes:
        pipe_send(p, ("go",))
    sent_done = sender.start(room, m, args.window, args.size)
    try:
        await asyncio.wait_for(sent_done, args.timeout)
    except TimeoutError:
        pass
    t_acked = sender.last_ack
    outs, failures = await gather_workers(done_futures, args.stall + 30, "receiver")
    server_cpu1 = servers_cpu(args.server_pids)
    own_cpu1 = cpu_seconds()
    mach1 = machine_ticks()
    procs1 = process_ticks()
    # CPU figures are averages over the interval between the two samples.
    cpu_wall = max(1e-9, (monotonic_ns() - t0) / 1e9)
    hist: dict[int, int] = {}
    for o in outs:
        for k, v in o["hist"].items():
            hist[k] = hist.get(k, 0) + v
    count = sum(o["count"] for o in outs)
    expected = n * m
    arrivals = outs[0]["arrivals"] if outs else []
    t1 = max([o["last_ns"] for o in outs] + [t_acked])
    wall = max(1e-9, (t1 - t0) / 1e9)
    gen_cpu = (own_cpu1 - own_cpu0) + sum(o["cpu_s"] for o in outs)
    await close_all([sender])
    return {
        "scenario": "fanout",
        "receivers": n,
        "messages": m,
        "window": args.window,
        "workers": workers,
        "size": args.size,
        "expected": expected,
        "delivered": count,
        "shortfall": expected - count,
        "out_of_order": sum(o["disorder"] for o in outs),
        "probes": sum(o["probes"] for o in outs),
        "short_receivers": sum(o["short_receivers"] for o in outs),
        **merge_by_server(outs),
        "disconnected": sum(o["disconnected"] for o in outs),
        "server_closes": merge_counts([o["server_closes"] for o in outs] + [close_codes([sender])]),
        "acked": sender.acked,
        "errors": sender.errors,
        "error_samples": sender.error_samples,
        "sender_echo": sender.echo,
        "worker_failures": failures,
        "seconds": wall,
        "deliveries_per_s": count / wall,
        "messages_per_s": sender.acked / wall,
        "p50_ms": percentile(hist, 0.50),
        "p99_ms": percentile(hist, 0.99),
        "max_ms": percentile(hist, 1.0),
        "server_cpu_pct": 100.0 * (server_cpu1 - server_cpu0) / cpu_wall,
        "generator_cpu_pct": 100.0 * gen_cpu / cpu_wall,
        **machine_pct(mach0, mach1, cpu_wall),
        **other_load(
            procs0,
            procs1,
            {os.getpid(), os.getppid(), *args.server_pids, *args.worker_pids},
            cpu_wall,
        ),
        "cpu_sampled_s": cpu_wall,
        "server_peak_rss_mb": servers_rss(args.server_pids),
        "steady_deliveries_per_s": steady_rate(arrivals, n) if len(arrivals) == m else None,
        "timeline_msgs_per_s": timeline(arrivals, t0),
        "setup": setup,
    }


# -- ingest ------------------------------------------------------------------------


class IngestConn(Base):
    def __init__(self, stats: dict) -> None:
        super().__init__()
        self.stats = stats
        self.room = ""
        self.running = False
        self.sent = 0
        self.acked = 0
        self.inflight = 0
        self.pushes = 0
        self.index = 0
        self.size = 0
        self.lat = array("q")

    def send_one(self) -> None:
        now = monotonic_ns()
        self.sent += 1
        self.inflight += 1
        self.transport.send(
            WSMsgType.TEXT, message_request(str(now), self.room, content(self.sent, self.size))
        )

    def on_ws_frame(self, transport: WSTransport, frame) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            self.control(transport, frame)
            return
        p = frame.get_payload_as_bytes()
        if p.startswith(PUSH):
            self.pushes += 1
            return
        if not self.running and self.inflight == 0:
            self.ctl.offer(p)
            return
        if p.startswith(ACK):
            now = monotonic_ns()
            self.acked += 1
            self.lat.append(now - int(p[20 : p.index(b'"', 20)]))
            self.stats["last_ack"] = now
        elif p.startswith(ERR):
            self.stats["errors"] += 1
            if len(self.stats["error_samples"]) < 5:
                self.stats["error_samples"].append(p.decode(errors="replace")[:300])
        else:
            return
        self.inflight -= 1
        if self.running:
            self.send_one()
        elif self.inflight == 0:
            self.stats["idle"] += 1
            if self.stats["idle"] == self.stats["conns"]:
                fut = self.stats["all_idle"]
                if not fut.done():
                    fut.set_result(None)


async def ingest(args) -> dict:
    k, r = args.connections, max(1, min(args.rooms, args.connections))
    loop = asyncio.get_running_loop()
    stats = {
        "errors": 0,
        "error_samples": [],
        "last_ack": 0,
        "idle": 0,
        "conns": k,
        "all_idle": loop.create_future(),
    }
    tokens = [token(args, f"i{i}") for i in range(k)]
    conns = await open_all(lambda: IngestConn(stats), args.urls, tokens)
    rooms = []
    for i in range(r):
        rooms.append(
            (await conns[i].call("chat:create", f"c{i}", {"name": f"ingest{i}", "type": "public"}))[
                "room"
            ]["id"]
        )
    await join_all(conns, [rooms[i % r] for i in range(k)])
    for i, c in enumerate(conns):
        c.room, c.size = rooms[i % r], args.size
    server_cpu0 = servers_cpu(args.server_pids)
    own_cpu0 = cpu_seconds()
    mach0 = machine_ticks()
    procs0 = process_ticks()
    t0 = monotonic_ns()
    for c in conns:
        c.running = True
    for c in conns:
        for _ in range(args.window):
            c.send_one()
    await asyncio.sleep(args.duration)
    for c in conns:
        c.running = False
    if any(c.inflight for c in conns):
        stats["idle"] = sum(1 for c in conns if c.inflight == 0)
        try:
            await asyncio.wait_for(stats["all_idle"], args.stall)
        except TimeoutError:
            pass
    t1 = stats["last_ack"] or monotonic_ns()
    server_cpu1 = servers_cpu(args.server_pids)
    own_cpu1 = cpu_seconds()
    mach1 = machine_ticks()
    procs1 = process_ticks()
    cpu_wall = max(1e-9, (monotonic_ns() - t0) / 1e9)
    wall = max(1e-9, (t1 - t0) / 1e9)
    acked = sum(c.acked for c in conns)
    # Every acked message is pushed to every connection joined to its room.
    per_room: dict[str, list[IngestConn]] = {}
    for c in conns:
        per_room.setdefault(c.room, []).append(c)
    expected_pushes = sum(sum(c.acked for c in cs) * len(cs) for cs in per_room.values())
    deadline = time.monotonic() + 10
    while sum(c.pushes for c in conns) < expected_pushes and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    pushes = sum(c.pushes for c in conns)
    hist: dict[int, int] = {}
    for c in conns:
        histogram_add(hist, c.lat)
    await close_all(conns)
    return {
        "scenario": "ingest",
        "connections": k,
        "rooms": r,
        "window": args.window,
        "duration": args.duration,
        "size": args.size,
        "sent": sum(c.sent for c in conns),
        "acked": acked,
        "errors": stats["errors"],
        "error_samples": stats["error_samples"],
        "unanswered": sum(c.inflight for c in conns),
        "expected_pushes": expected_pushes,
        "pushes": pushes,
        "push_shortfall": expected_pushes - pushes,
        "disconnected": sum(1 for c in conns if c.closed),
        "server_closes": close_codes(conns),
        "seconds": wall,
        "acked_per_s": acked / wall,
        "ack_p50_ms": percentile(hist, 0.50),
        "ack_p99_ms": percentile(hist, 0.99),
        "server_cpu_pct": 100.0 * (server_cpu1 - server_cpu0) / cpu_wall,
        "generator_cpu_pct": 100.0 * (own_cpu1 - own_cpu0) / cpu_wall,
        **machine_pct(mach0, mach1, cpu_wall),
        **other_load(procs0, procs1, {os.getpid(), os.getppid(), *args.server_pids}, cpu_wall),
        "cpu_sampled_s": cpu_wall,
        "server_peak_rss_mb": servers_rss(args.server_pids),
    }


# -- live ----------------------------------------------------------------------------


REACTION = b'{"type":"live:reaction"'
VIEWER_COUNT = b'{"type":"live:viewer-count"'


class Viewer(Base):
    """A live-stream viewer: counts live:reaction pushes exactly (the same
    hot path as Receiver) and remembers the last viewer count it was told
    (join ack, then live:viewer-count pushes, which are otherwise ignored)."""

    def __init__(self, tally: Tally) -> None:
        super().__init__()
        self.tally = tally
        self.got = 0
        self.viewer_count: int | None = None

    def on_ws_frame(self, transport: WSTransport, frame) -> None:
        if frame.get_payload_as_bytes().startswith(REACTION):
            self.got += 1
            t = self.tally
            t.count += 1
            if t.count == t.target:
                t.last = monotonic_ns()
                t.done.set_result(None)
        else:
            self.slow_path(transport, frame)

    def slow_path(self, transport: WSTransport, frame) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            self.control(transport, frame)
            return
        p = frame.get_payload_as_bytes()
        if p.startswith(VIEWER_COUNT):
            self.tally.other += 1
            self.viewer_count = json.loads(p)["data"]["count"]
        else:
            self.ctl.offer(p)


class LiveTally(Tally):
    __slots__ = ("duplicates",)

    def __init__(self, target: int) -> None:
        super().__init__(target)
        self.duplicates = 0


class LiveProbe(Viewer):
    """A viewer that also measures the send-to-receipt delay of every
    reaction and checks that each arrives once, and after no later reaction
    of the same sender connection (reaction i comes from sender i % senders;
    ``disorder`` counts the reactions that were overtaken)."""

    def __init__(self, tally: LiveTally, senders: int, reactions: int) -> None:
        super().__init__(tally)
        self.senders = senders
        self.high = [-1] * senders  # highest index seen per sender
        self.seen = bytearray(reactions)
        self.arrivals = array("q")
        self.disorder_samples: list[
            tuple[int, int]
        ] = []  # (late index, highest of its sender by then)

    def on_ws_frame(self, transport: WSTransport, frame) -> None:
        p = frame.get_payload_as_bytes()
        if p.startswith(REACTION):
            i = p.find(MARK)
            if i >= 0:
                now = monotonic_ns()
                t = self.tally
                t.delays.append(now - int(p[i + 2 : i + 22]))
                idx = int(p[i + 22 : i + 30])
                if idx >= len(self.seen) or self.seen[idx]:
                    t.duplicates += 1
                else:
                    self.seen[idx] = 1
                    s = idx % self.senders
                    if idx < self.high[s]:
                        t.disorder += 1
                        if len(self.disorder_samples) < 10:
                            self.disorder_samples.append((idx, self.high[s]))
                    else:
                        self.high[s] = idx
                self.arrivals.append(now)
                self.got += 1
                t.count += 1
                t.last = now
                if t.count == t.target:
                    t.done.set_result(None)
                return
        self.slow_path(transport, frame)


async def live_join_all(listeners, stream: str, concurrency: int = 64) -> dict[str, int]:
    """live:join every listener (the bare-string form of the request);
    returns how many acks reported each stream status."""
    sem = asyncio.Semaphore(concurrency)
    statuses: dict[str, int] = {}

    async def one(listener):
        async with sem:
            reply = await listener.call("live:join", "j", stream, timeout=60.0)
            listener.viewer_count = reply["viewerCount"]
            statuses[reply["status"]] = statuses.get(reply["status"], 0) + 1

    await asyncio.gather(*(one(ln) for ln in listeners))
    return statuses


async def _live_worker(
    conn,
    urls: list[str],
    tokens: list[str],
    reactions: int,
    senders: int,
    stall: float,
    sample: int,
) -> None:
    """A forked process owning a share of the viewers."""
    n = len(tokens)
    tally = LiveTally(n * reactions)
    tally.done = asyncio.get_running_loop().create_future()
    stream = (await pipe_future(conn))[1]
    t0 = time.monotonic()
    made = 0

    def make() -> Viewer:
        nonlocal made
        made += 1
        return LiveProbe(tally, senders, reactions) if (made - 1) % sample == 0 else Viewer(tally)

    listeners = await open_all(make, urls, tokens)
    t1 = time.monotonic()
    statuses = await live_join_all(listeners, stream)
    t2 = time.monotonic()
    pipe_send(conn, ("ready", {"connect_s": t1 - t0, "join_s": t2 - t1, "statuses": statuses}))
    command = await pipe_future(conn)
    if command[0] != "go":
        await close_all(listeners)
        return
    tally.other = 0  # viewer-count pushes inside the measured window
    cpu0 = cpu_seconds()
    per_viewer = reactions
    ctl = pipe_future(conn)
    # Wait for every delivery, a stop, a stall, or the loss of every
    # connection.  ("target", k): only k reactions were accepted.
    last_count, last_change = -1, time.monotonic()
    while not tally.done.done():
        await asyncio.wait([tally.done, ctl], timeout=0.25, return_when=asyncio.FIRST_COMPLETED)
        if ctl.done():
            try:
                command = ctl.result()
            except (EOFError, OSError):
                break
            if command[0] != "target":
                break
            per_viewer = command[1]
            tally.target = n * per_viewer
            if tally.count >= tally.target:
                break
            ctl = pipe_future(conn)
        now = time.monotonic()
        if tally.count != last_count:
            last_count, last_change = tally.count, now
        elif now - last_change > stall or all(ln.closed for ln in listeners):
            break
    if not ctl.done():
        ctl.cancel()
        loop = asyncio.get_running_loop()
        try:
            loop.remove_reader(conn.fileno())
        except (OSError, ValueError):
            pass
    cpu1 = cpu_seconds()
    hist: dict[int, int] = {}
    histogram_add(hist, tally.delays)
    seen = [ln.viewer_count for ln in listeners if ln.viewer_count is not None]
    pipe_send(
        conn,
        (
            "done",
            {
                "count": tally.count,
                "target": tally.target,
                "disorder": tally.disorder,
                "duplicates": tally.duplicates,
                "last_ns": tally.last,
                "cpu_s": cpu1 - cpu0,
                "hist": hist,
                "count_pushes": tally.other,
                "viewer_count_min": min(seen, default=None),
                "viewer_count_max": max(seen, default=None),
                "disconnected": sum(1 for ln in listeners if ln.closed),
                "server_closes": close_codes(listeners),
                "short_receivers": sum(1 for ln in listeners if ln.got != per_viewer),
                **by_server(listeners, per_viewer),
                "probes": sum(1 for ln in listeners if isinstance(ln, LiveProbe)),
                "arrivals": list(listeners[0].arrivals)
                if isinstance(listeners[0], LiveProbe)
                else [],
                "disorder_samples": listeners[0].disorder_samples
                if isinstance(listeners[0], LiveProbe)
                else [],
            },
        ),
    )
    await close_all(listeners)


class Host(Base):
    """The stream's host: starts it, then only answers pings."""

    def on_ws_frame(self, transport: WSTransport, frame) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            self.control(transport, frame)
        else:
            self.ctl.offer(frame.get_payload_as_bytes())


class ReactionSender(Base):
    """One reacting connection.  It has joined the stream (chatd only takes
    reactions from viewers), so it receives every reaction as well; those
    copies are counted apart from the viewers'."""

    def __init__(self, shared: dict) -> None:
        super().__init__()
        self.shared = shared
        self.running = False
        self.sent = 0
        self.acked = 0
        self.errors = 0
        self.echo = 0
        self.viewer_count: int | None = None

    def send(self, index: int, now: int) -> None:
        self.sent += 1
        self.shared["sent_at"][index] = now
        self.transport.send(
            WSMsgType.TEXT,
            b'{"type":"live:reaction","id":"%d","data":{"streamId":"%s",'
            b'"emoji":"~T%020d%08d"}}' % (index, self.shared["stream"], now, index),
        )

    def on_ws_frame(self, transport: WSTransport, frame) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            self.control(transport, frame)
            return
        p = frame.get_payload_as_bytes()
        if p.startswith(REACTION):
            self.echo += 1
            return
        if not self.running:
            if p.startswith(VIEWER_COUNT):
                return
            self.ctl.offer(p)
            return
        s = self.shared
        if p.startswith(ACK):
            now = monotonic_ns()
            self.acked += 1
            s["ack_lat"].append(now - s["sent_at"][int(p[20 : p.index(b'"', 20)])])
            s["last_ack"] = now
        elif p.startswith(ERR):
            self.errors += 1
            if len(s["error_samples"]) < 5:
                s["error_samples"].append(p.decode(errors="replace")[:300])
        else:
            return  # live:viewer-count
        s["answered"] += 1
        if s["answered"] == s["total"] and not s["all_answered"].done():
            s["all_answered"].set_result(None)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        super().on_ws_disconnected(transport)
        fut = self.shared.get("all_answered")
        if fut is not None and not fut.done():
            fut.set_result(None)


def start_live_workers(args):
    """Fork the viewer processes before any event loop exists."""
    n = args.viewers
    workers = max(1, min(args.workers, n))
    tokens = [token(args, f"v{i}") for i in range(n)]
    return fork_workers(
        _live_worker,
        [
            (
                args.urls,
                tokens[w::workers],
                args.reactions,
                args.senders,
                args.stall,
                max(1, args.sample),
            )
            for w in range(workers)
        ],
    )


async def _live(args, pipes, workers: int) -> dict:
    n, total, rate, k = args.viewers, args.reactions, args.reaction_rate, max(1, args.senders)
    loop = asyncio.get_running_loop()
    # A fresh stream id per run, so a PostgreSQL database used before holds
    # no state for it (host, status).
    stream = f"bench-{os.urandom(4).hex()}"
    (host,) = await open_all(Host, args.url, [token(args, "host")])
    await host.call("live:status", "s", {"streamId": stream, "status": "started"})
    shared = {
        "stream": stream.encode(),
        "sent_at": array("q", bytes(8 * total)),
        "ack_lat": array("q"),
        "error_samples": [],
        "answered": 0,
        "total": total,
        "last_ack": 0,
        "all_answered": loop.create_future(),
    }
    senders = await open_all(
        lambda: ReactionSender(shared), args.url, [token(args, f"s{i}") for i in range(k)]
    )
    for s in senders:
        reply = await s.call("live:join", "j", {"streamId": stream})
        s.viewer_count = reply["viewerCount"]
    t_setup = time.monotonic()
    for p in pipes:
        pipe_send(p, ("stream", stream))
    setup: dict = {"statuses": {}}
    for p in pipes:
        reply = await asyncio.wait_for(pipe_future(p), 300)
        if reply[0] != "ready":
            raise RuntimeError(f"viewer worker failed: {reply[1]}")
        for st, c in reply[1].pop("statuses").items():
            setup["statuses"][st] = setup["statuses"].get(st, 0) + c
        setup.update({key: max(setup.get(key, 0), v) for key, v in reply[1].items()})
    setup["total_s"] = time.monotonic() - t_setup
    # Let the coalesced live:viewer-count push of the last joins go out
    # before the measured window (viewer_count_interval is 0.5 s by default).
    await asyncio.sleep(1.0)
    done_futures = [pipe_future(p) for p in pipes]
    server_cpu0 = servers_cpu(args.server_pids)
    own_cpu0 = cpu_seconds()
    mach0 = machine_ticks()
    procs0 = process_ticks()
    for p in pipes:
        pipe_send(p, ("go",))
    for s in senders:
        s.running = True

    # Open loop at a fixed rate: reaction i is due at t0 + i / rate and goes
    # out at the first timer tick at or after that (in a burst if the
    # generator fell behind), round robin over the sender connections.
    pace = {"sent": 0, "max_lag": 0, "last_send": 0}
    sent_all = loop.create_future()
    t0 = monotonic_ns()

    def tick() -> None:
        now = monotonic_ns()
        i = pace["sent"]
        due = min(total, (now - t0) * rate // 1_000_000_000 + 1)
        if i < due:
            pace["max_lag"] = max(pace["max_lag"], now - (t0 + i * 1_000_000_000 // rate))
            while i < due:
                senders[i % k].send(i, monotonic_ns())
                i += 1
            pace["sent"], pace["last_send"] = i, monotonic_ns()
        if i >= total:
            sent_all.set_result(None)
            return
        delay = (t0 + i * 1_000_000_000 // rate - monotonic_ns()) / 1e9
        loop.call_later(max(0.0, delay), tick)

    tick()
    timeout = total / rate + args.stall
    try:
        await asyncio.wait_for(sent_all, timeout)
        await asyncio.wait_for(asyncio.shield(shared["all_answered"]), args.stall)
    except TimeoutError:
        pass
    acked = sum(s.acked for s in senders)
    if acked != total:
        for p in pipes:
            try:
                pipe_send(p, ("target", acked))
            except OSError:
                pass
    outs, failures = await gather_workers(done_futures, args.stall + 30, "viewer")
    server_cpu1 = servers_cpu(args.server_pids)
    own_cpu1 = cpu_seconds()
    mach1 = machine_ticks()
    procs1 = process_ticks()
    cpu_wall = max(1e-9, (monotonic_ns() - t0) / 1e9)
    # The senders' own copies (they arrive with the viewers').
    deadline = time.monotonic() + 2
    while sum(s.echo for s in senders) < k * acked and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    hist: dict[int, int] = {}
    for o in outs:
        for key, v in o["hist"].items():
            hist[key] = hist.get(key, 0) + v
    ack_hist: dict[int, int] = {}
    histogram_add(ack_hist, shared["ack_lat"])
    count = sum(o["count"] for o in outs)
    expected = n * acked
    sent = pace["sent"]
    t1 = max([o["last_ns"] for o in outs] + [shared["last_ack"], t0 + 1])
    wall = max(1e-9, (t1 - t0) / 1e9)
    send_span = (pace["last_send"] - t0) / 1e9
    gen_cpu = (own_cpu1 - own_cpu0) + sum(o["cpu_s"] for o in outs)
    server_cpu = server_cpu1 - server_cpu0
    seen_min = [o["viewer_count_min"] for o in outs if o["viewer_count_min"] is not None]
    seen_max = [o["viewer_count_max"] for o in outs if o["viewer_count_max"] is not None]
    arrivals = outs[0]["arrivals"] if outs else []
    own_closed = sum(1 for c in (*senders, host) if c.closed)
    own_closes = close_codes([*senders, host])
    await close_all([*senders, host])
    return {
        "scenario": "live",
        "viewers": n,
        "reactions": total,
        "reaction_rate": rate,
        "senders": k,
        "workers": workers,
        "stream": stream,
        "sent": sent,
        "acked": acked,
        "errors": sum(s.errors for s in senders),
        "error_samples": shared["error_samples"],
        "expected": expected,
        "delivered": count,
        "shortfall": expected - count,
        "sender_copies": sum(s.echo for s in senders),
        "sender_copies_expected": k * acked,
        "out_of_order": sum(o["disorder"] for o in outs),
        "duplicates": sum(o["duplicates"] for o in outs),
        "disorder_samples": [x for o in outs for x in o["disorder_samples"]],
        "probes": sum(o["probes"] for o in outs),
        "short_receivers": sum(o["short_receivers"] for o in outs),
        **merge_by_server(outs),
        "disconnected": sum(o["disconnected"] for o in outs) + own_closed,
        "server_closes": merge_counts([o["server_closes"] for o in outs] + [own_closes]),
        "viewer_count_pushes": sum(o["count_pushes"] for o in outs),
        "viewer_count_seen": [min(seen_min, default=None), max(seen_max, default=None)],
        "viewer_count_expected": n + k,
        "worker_failures": failures,
        "seconds": wall,
        "send_rate": (sent - 1) / send_span if sent > 1 and send_span > 0 else None,
        "send_max_lag_ms": pace["max_lag"] / 1e6,
        "drain_ms": (t1 - pace["last_send"]) / 1e6 if pace["last_send"] else None,
        "deliveries_per_s": count / wall,
        "p50_ms": percentile(hist, 0.50),
        "p99_ms": percentile(hist, 0.99),
        "max_ms": percentile(hist, 1.0),
        "ack_p50_ms": percentile(ack_hist, 0.50),
        "ack_p99_ms": percentile(ack_hist, 0.99),
        "server_cpu_pct": 100.0 * server_cpu / cpu_wall,
        "server_us_per_delivery": 1e6 * server_cpu / count if count else None,
        "generator_cpu_pct": 100.0 * gen_cpu / cpu_wall,
        **machine_pct(mach0, mach1, cpu_wall),
        **other_load(
            procs0,
            procs1,
            {os.getpid(), os.getppid(), *args.server_pids, *args.worker_pids},
            cpu_wall,
        ),
        "cpu_sampled_s": cpu_wall,
        "server_peak_rss_mb": servers_rss(args.server_pids),
        "timeline_reactions_per_s": timeline(arrivals, t0),
        "setup": setup,
    }


# -- connect ---------------------------------------------------------------------------


AUTHENTICATED = b'{"type":"authenticated"'
MAX_CONNECT_ERRORS = 100  # a worker stops opening connections after this many failures


class CpuWindow:
    """CPU of the servers, of the generator and of every other process from
    construction to ``stop`` (utime+stime from /proc, as in every scenario),
    in % of one CPU."""

    def __init__(self, server_pids: list[int], ours: set[int]) -> None:
        self.server_pids, self.ours = server_pids, ours
        self.server0 = servers_cpu(server_pids)
        self.own0 = cpu_seconds()
        self.mach0 = machine_ticks()
        self.procs0 = process_ticks()
        self.t0 = monotonic_ns()
        self.server_s = float("nan")

    def stop(self, workers_cpu_s: float = 0.0) -> dict:
        """The figures; ``workers_cpu_s`` is what the generator's workers
        measured of themselves over the same window."""
        self.server_s = servers_cpu(self.server_pids) - self.server0
        own = cpu_seconds() - self.own0
        mach1, procs1 = machine_ticks(), process_ticks()
        wall = max(1e-9, (monotonic_ns() - self.t0) / 1e9)
        return {
            "server_cpu_pct": 100.0 * self.server_s / wall,
            "generator_cpu_pct": 100.0 * (own + workers_cpu_s) / wall,
            **machine_pct(self.mach0, mach1, wall),
            **other_load(self.procs0, procs1, self.ours, wall),
            "cpu_sampled_s": wall,
            "server_peak_rss_mb": servers_rss(self.server_pids),
        }


class Connector(WSListener):
    """One connection of the connect scenario: waits for ``authenticated``,
    then closes cleanly (CLOSE 1000, the server's CLOSE back, then the TCP
    close)."""

    def __init__(self, started: int) -> None:
        loop = asyncio.get_running_loop()
        self.started = started  # monotonic_ns before the TCP connect
        self.authenticated = 0  # monotonic_ns of the authenticated push
        self.clean = False  # the server answered our CLOSE
        self.ready: asyncio.Future[bool] = loop.create_future()  # authenticated, or lost before
        self.gone: asyncio.Future[bool] = loop.create_future()

    def on_ws_frame(self, transport: WSTransport, frame) -> None:
        kind = frame.msg_type
        if kind == WSMsgType.TEXT:
            if not self.authenticated and frame.get_payload_as_bytes().startswith(AUTHENTICATED):
                self.authenticated = monotonic_ns()
                self.ready.set_result(True)
                transport.send_close(WSCloseCode.OK)
        elif kind == WSMsgType.CLOSE:
            self.clean = bool(self.authenticated)
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        for fut in (self.ready, self.gone):
            if not fut.done():
                fut.set_result(False)


class ConnectTally:
    """What one connect worker records."""

    def __init__(self) -> None:
        self.latencies = array("q")  # TCP connect start -> authenticated, ns
        self.last = 0  # monotonic_ns of the last authenticated push
        self.errors = 0
        self.error_samples: list[str] = []
        self.open: list[Connector] = []  # authenticated, closing

    def fail(self, why: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(why[:300])


async def connect_once(url: str, tally: ConnectTally, timeout: float) -> None:
    """Open one connection and wait for its ``authenticated`` push (the
    close then goes on without holding the window slot)."""
    started = monotonic_ns()
    try:
        transport, ln = await ws_connect(
            partial(Connector, started), url, websocket_handshake_timeout=timeout
        )
    except Exception as e:  # refused, reset, handshake rejected or timed out
        tally.fail(f"handshake: {type(e).__name__}: {e}")
        return
    try:
        ok = await asyncio.wait_for(asyncio.shield(ln.ready), timeout)
    except TimeoutError:
        ok = False
    if not ok:
        transport.disconnect()
        tally.fail(f"no authenticated push (disconnected: {transport.is_disconnected()})")
        return
    tally.latencies.append(ln.authenticated - started)
    tally.last = max(tally.last, ln.authenticated)
    tally.open.append(ln)


async def connect_lane(jobs, tally: ConnectTally, timeout: float) -> None:
    """One window slot: connections one after the other, from ``jobs``
    (an iterator of URLs shared by all slots)."""
    for url in jobs:
        if tally.errors >= MAX_CONNECT_ERRORS:
            return
        await connect_once(url, tally, timeout)


async def _connect_worker(conn, urls: list[str], window: int, timeout: float) -> None:
    """A forked process opening its share of the connections (``urls``:
    one full ``ws://…?token=`` URL each), ``window`` at a time."""
    tally = ConnectTally()
    if (await pipe_future(conn))[0] != "go":
        return
    cpu0 = cpu_seconds()
    first = monotonic_ns()
    jobs = iter(urls)
    await asyncio.gather(
        *(connect_lane(jobs, tally, timeout) for _ in range(max(1, min(window, len(urls)))))
    )
    if tally.open:
        await asyncio.wait([ln.gone for ln in tally.open], timeout=timeout)
    hist: dict[int, int] = {}
    histogram_add(hist, tally.latencies)
    pipe_send(
        conn,
        (
            "done",
            {
                "completed": len(tally.latencies),
                "first_ns": first,
                "last_ns": tally.last,
                "hist": hist,
                "errors": tally.errors,
                "error_samples": tally.error_samples,
                "unclean_closes": sum(1 for ln in tally.open if not ln.clean),
                "cpu_s": cpu_seconds() - cpu0,
            },
        ),
    )


def start_connect_workers(args):
    """Fork the connect workers, each with its share of the connections
    (round robin over the servers) and of the window."""
    n = args.connects
    workers = max(1, min(args.workers, n))
    urls = [f"{args.urls[i % len(args.urls)]}?token={token(args, f'c{i}')}" for i in range(n)]
    return fork_workers(
        _connect_worker,
        [
            (urls[w::workers], -(-args.connect_window // workers), args.stall)
            for w in range(workers)
        ],
    )


async def settle(pids: list[int], after: float, limit: float) -> tuple[float, float]:
    """Wait ``after`` seconds, then (at most ``limit`` more) until a 0.5 s
    sample shows the servers idle (at most one clock tick of CPU).
    Returns the seconds waited and the server CPU seconds used meanwhile."""
    t0, cpu0 = time.monotonic(), servers_cpu(pids)
    await asyncio.sleep(after)
    deadline = time.monotonic() + limit
    before = servers_cpu(pids)
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        now = servers_cpu(pids)
        if now - before <= 1.5 / TICK:
            break
        before = now
    return time.monotonic() - t0, servers_cpu(pids) - cpu0


async def _connect(args, pipes, workers: int) -> dict:
    done = [pipe_future(p) for p in pipes]
    cpu = CpuWindow(
        args.server_pids, {os.getpid(), os.getppid(), *args.server_pids, *args.worker_pids}
    )
    for p in pipes:
        pipe_send(p, ("go",))
    outs, failures = await gather_workers(done, args.timeout + args.stall, "connect")
    window = cpu.stop(sum(o["cpu_s"] for o in outs))
    tail_s, tail_cpu_s = await settle(args.server_pids, args.settle, args.stall)
    hist: dict[int, int] = {}
    for o in outs:
        for k, v in o["hist"].items():
            hist[k] = hist.get(k, 0) + v
    completed = sum(o["completed"] for o in outs)
    first = min((o["first_ns"] for o in outs), default=0)
    wall = max(1e-9, (max((o["last_ns"] for o in outs), default=first) - first) / 1e9)
    return {
        "scenario": "connect",
        "connects": args.connects,
        "window": args.connect_window,
        "workers": workers,
        "completed": completed,
        "errors": sum(o["errors"] for o in outs),
        "error_samples": [x for o in outs for x in o["error_samples"]][:5],
        "unclean_closes": sum(o["unclean_closes"] for o in outs),
        "worker_failures": failures,
        "seconds": wall,
        "connects_per_s": completed / wall,
        "p50_ms": percentile(hist, 0.50),
        "p99_ms": percentile(hist, 0.99),
        "max_ms": percentile(hist, 1.0),
        **window,
        "server_us_per_connect": 1e6 * cpu.server_s / completed if completed else None,
        "settle_s": tail_s,
        "server_settle_cpu_s": tail_cpu_s,
        "server_us_per_connect_total": 1e6 * (cpu.server_s + tail_cpu_s) / completed
        if completed
        else None,
    }


# -- command line --------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("scenario", choices=["fanout", "ingest", "live", "connect"])
    p.add_argument(
        "--url",
        required=True,
        action="append",
        help="ws://host:port/ws; several servers of one cluster: repeat it or separate with commas "
        "(receivers/viewers are spread round robin, everything else uses the first)",
    )
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--secret", help="HS256 secret to mint tokens with")
    g.add_argument(
        "--secret-file", help="file holding the HS256 secret (chatd's DATA_DIR/jwt-secret)"
    )
    p.add_argument(
        "--server-pid",
        type=int,
        action="append",
        default=[],
        help="sample this process's CPU over the measured window (repeat for several servers: summed)",
    )
    p.add_argument(
        "--size", type=int, default=64, help="characters of message content (default 64)"
    )
    p.add_argument(
        "--window", type=int, default=None, help="un-acked messages per sending connection"
    )
    p.add_argument(
        "--stall", type=float, default=15.0, help="give up after this many seconds without progress"
    )
    p.add_argument(
        "--user-tag",
        default=None,
        help="user ids are bench-TAG-<name> (default: a fresh random TAG per run; '' for bench-<name>)",
    )
    p.add_argument("--timeout", type=float, default=120.0, help="upper bound for the sending phase")
    f = p.add_argument_group("fanout")
    f.add_argument("--receivers", type=int, default=1000)
    f.add_argument("--messages", type=int, default=2000)
    f.add_argument(
        "--workers",
        type=int,
        default=1,
        help="receiver (fanout), viewer (live) or connecting (connect) processes",
    )
    f.add_argument(
        "--sample",
        type=int,
        default=10,
        help="every N-th receiver or viewer also measures delay and order (all count exactly; default 10)",
    )
    i = p.add_argument_group("ingest")
    i.add_argument("--connections", type=int, default=50)
    i.add_argument("--rooms", type=int, default=5)
    i.add_argument("--duration", type=float, default=10.0, help="seconds of sending")
    lv = p.add_argument_group("live")
    lv.add_argument(
        "--viewers", type=int, default=1000, help="connections that join the stream and count"
    )
    lv.add_argument("--reactions", type=int, default=5000, help="reactions sent in all")
    lv.add_argument(
        "--reaction-rate",
        type=float,
        default=500.0,
        help="reactions per second, all senders together",
    )
    lv.add_argument(
        "--senders", type=int, default=4, help="reacting connections (users of their own)"
    )
    c = p.add_argument_group("connect")
    c.add_argument(
        "--connects", type=int, default=5000, help="connections opened, authenticated and closed"
    )
    c.add_argument(
        "--connect-window",
        type=int,
        default=64,
        help="connection attempts in flight, all workers together",
    )
    c.add_argument(
        "--settle",
        type=float,
        default=4.0,
        help="after the last close, wait this long (chatd's 3 s presence grace + 1) and then for the "
        "server to go idle, and report the server CPU used meanwhile",
    )
    args = p.parse_args(argv)
    if args.scenario == "live" and (
        args.reactions < 1 or args.reaction_rate <= 0 or args.viewers < 1
    ):
        p.error("live needs --viewers >= 1, --reactions >= 1 and --reaction-rate > 0")
    if args.user_tag is None:
        args.user_tag = os.urandom(3).hex()
    args.urls = [u for value in args.url for u in value.split(",") if u]
    args.url = args.urls[0]
    args.server_pids = args.server_pid
    if args.secret_file:
        with open(args.secret_file) as fh:
            args.secret = fh.read().strip()
    if args.window is None:
        args.window = 32 if args.scenario == "fanout" else 8
    return args


# scenario -> (fork its worker processes, run it in the main process)
WORKER_SCENARIOS = {
    "fanout": (start_workers, _fanout),
    "live": (start_live_workers, _live),
    "connect": (start_connect_workers, _connect),
}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.scenario in WORKER_SCENARIOS:
        start, run = WORKER_SCENARIOS[args.scenario]
        pipes, procs = start(args)
        args.worker_pids = [proc.pid for proc in procs]
        try:
            result = uvloop.run(run(args, pipes, len(pipes)))
        finally:
            stop_workers(pipes, procs)
    else:
        result = uvloop.run(ingest(args))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
