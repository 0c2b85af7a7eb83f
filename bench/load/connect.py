"""connect: ``--connects`` connections opened, authenticated and closed.

Users ``bench-<tag>-c<i>``, a token in the URL, spread over ``--workers``
forked processes with ``--connect-window`` attempts in flight in all; each
is complete when its ``authenticated`` push arrives and is then closed
cleanly (CLOSE 1000, the server's CLOSE back).  Reports connects/s (first
attempt to last ``authenticated``), p50/p99 connect latency (TCP connect
start to ``authenticated``), failed handshakes, server CPU over the connect
phase and, after waiting ``--settle`` s and for the server to go idle
(chatd processes a user's going offline 3 s after the close), the server
CPU of that tail as well.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from typing import Any

from picows import WSCloseCode, WSListener, WSMsgType, WSTransport, ws_connect

from load.client import AUTHENTICATED, token
from load.measure import (
    TICK,
    CpuWindow,
    cpu_seconds,
    histogram,
    latency,
    merge_counts,
    monotonic_ns,
    own_pids,
    servers_cpu,
    servers_rss,
)
from load.workers import fork_workers, gather_workers, pipe_future, pipe_send

MAX_CONNECT_ERRORS = 100  # a worker stops opening connections after this many failures


# -- connecting (in the worker processes) ----------------------------------------------


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

    def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
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


ConnectOnce = Callable[[Any, ConnectTally, float], Awaitable[None]]
"""Opens one connection (a job: a URL, or whatever the protocol needs) and
records it in the tally."""


async def connect_lane(
    jobs: Iterator[Any], tally: ConnectTally, timeout: float, connect: ConnectOnce
) -> None:
    """One window slot: connections one after the other, from ``jobs``
    (an iterator shared by all slots)."""
    for job in jobs:
        if tally.errors >= MAX_CONNECT_ERRORS:
            return
        await connect(job, tally, timeout)


async def run_connect_worker(
    conn: Any, jobs: list[Any], window: int, timeout: float, connect: ConnectOnce
) -> None:
    """A forked process opening its share of the connections, ``window``
    at a time, with ``connect`` (the protocol's); reports to the parent
    what ``gather`` reads, whatever the protocol."""
    tally = ConnectTally()
    if (await pipe_future(conn))[0] != "go":
        return
    cpu0 = cpu_seconds()
    first = monotonic_ns()
    shared = iter(jobs)
    await asyncio.gather(
        *(
            connect_lane(shared, tally, timeout, connect)
            for _ in range(max(1, min(window, len(jobs))))
        )
    )
    if tally.open:
        await asyncio.wait([ln.gone for ln in tally.open], timeout=timeout)
    pipe_send(
        conn,
        (
            "done",
            {
                "completed": len(tally.latencies),
                "first_ns": first,
                "last_ns": tally.last,
                "hist": histogram(tally.latencies),
                "errors": tally.errors,
                "error_samples": tally.error_samples,
                "unclean_closes": sum(1 for ln in tally.open if not ln.clean),
                "cpu_s": cpu_seconds() - cpu0,
            },
        ),
    )


async def _connect_worker(conn: Any, urls: list[str], window: int, timeout: float) -> None:
    """A forked process opening its share of the connections (``urls``:
    one full ``ws://…?token=`` URL each), ``window`` at a time."""
    await run_connect_worker(conn, urls, window, timeout, connect_once)


def start_workers(args: Any) -> tuple[list, list]:
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


# -- the main process --------------------------------------------------------------------


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


def per_connect_us(server_s: float, completed: int) -> float | None:
    """Server CPU per completed connection, in µs."""
    return 1e6 * server_s / completed if completed else None


async def run(args: Any, pipes: list, workers: int) -> dict:
    """The connect scenario: the workers' connects, then the tail until
    the servers are idle; the result record."""
    done = [pipe_future(p) for p in pipes]
    cpu = CpuWindow(args.server_pids, own_pids(args))
    t0 = monotonic_ns()
    for p in pipes:
        pipe_send(p, ("go",))
    outs, failures = await gather_workers(done, args.timeout + args.stall, "connect")
    window = cpu.stop(t0, sum(o["cpu_s"] for o in outs))
    rss = servers_rss(args.server_pids)  # before the tail, as the window
    tail_s, tail_cpu_s = await settle(args.server_pids, args.settle, args.stall)
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
        **latency(merge_counts([o["hist"] for o in outs])),
        **window,
        "server_peak_rss_mb": rss,
        "server_us_per_connect": per_connect_us(cpu.server_s, completed),
        "settle_s": tail_s,
        "server_settle_cpu_s": tail_cpu_s,
        "server_us_per_connect_total": per_connect_us(cpu.server_s + tail_cpu_s, completed),
    }
