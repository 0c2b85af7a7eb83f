"""live: ``--viewers`` connections watch one live stream while ``--senders``
more send ``--reactions`` live:reaction requests at ``--reaction-rate``.

A host connection starts the stream, the viewers (spread over ``--workers``
forked processes) join it, and the reacting connections join it too
(chatd only takes reactions from viewers) and send open loop, round robin.
Every viewer counts its live:reaction pushes exactly (expected = viewers x
acked reactions; the senders receive every reaction as well and count
those copies apart); every ``--sample``-th viewer also measures the
send-to-receipt delay and checks that no reaction arrives twice or after a
later one of the same sender.  live:viewer-count pushes are not counted as
deliveries; the last count each viewer was told is checked against
viewers + senders.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from array import array
from dataclasses import dataclass, field
from typing import Any

from picows import WSMsgType, WSTransport

from load.client import (
    ACK,
    ERR,
    MARK,
    Base,
    Tally,
    by_server,
    close_all,
    close_codes,
    merge_by_server,
    open_all,
    token,
)
from load.measure import (
    CpuWindow,
    cpu_seconds,
    histogram,
    latency,
    merge_counts,
    monotonic_ns,
    own_pids,
    percentile,
    servers_rss,
    timeline,
)
from load.workers import (
    await_ready,
    fork_workers,
    gather_workers,
    pipe_future,
    pipe_send,
    slowest,
)

REACTION = b'{"type":"live:reaction"'
VIEWER_COUNT = b'{"type":"live:viewer-count"'


# -- viewers (in the worker processes) ---------------------------------------------------


class Viewer(Base):
    """A live-stream viewer: counts live:reaction pushes exactly (the same
    hot path as fanout's Receiver) and remembers the last viewer count it
    was told (join ack, then live:viewer-count pushes, otherwise ignored)."""

    def __init__(self, tally: Tally) -> None:
        super().__init__()
        self.tally = tally
        self.got = 0
        self.viewer_count: int | None = None

    def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
        if frame.get_payload_as_bytes().startswith(REACTION):
            self.got += 1
            t = self.tally
            t.count += 1
            if t.count == t.target:
                t.last = monotonic_ns()
                t.done.set_result(None)
        else:
            self.slow_path(transport, frame)

    def slow_path(self, transport: WSTransport, frame: Any) -> None:
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
    """A viewer process's tally, with reactions seen twice counted apart."""

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
        # (late index, highest of its sender by then)
        self.disorder_samples: list[tuple[int, int]] = []

    def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
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


async def live_join_all(listeners: list, stream: str, concurrency: int = 64) -> dict[str, int]:
    """live:join every listener (the bare-string form of the request);
    returns how many acks reported each stream status."""
    sem = asyncio.Semaphore(concurrency)
    statuses: dict[str, int] = {}

    async def one(listener: Viewer) -> None:
        async with sem:
            reply = await listener.call("live:join", "j", stream, timeout=60.0)
            listener.viewer_count = reply["viewerCount"]
            statuses[reply["status"]] = statuses.get(reply["status"], 0) + 1

    await asyncio.gather(*(one(ln) for ln in listeners))
    return statuses


async def wait_reactions(
    conn: Any, tally: LiveTally, listeners: list, reactions: int, stall: float
) -> int:
    """Wait for every delivery, a stop, a stall, or the loss of every
    connection; ``("target", k)`` from the parent means only k reactions
    were accepted.  Returns the reactions each viewer should have got."""
    n = len(listeners)
    per_viewer = reactions
    ctl = pipe_future(conn)
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
        try:
            asyncio.get_running_loop().remove_reader(conn.fileno())
        except (OSError, ValueError):
            pass
    return per_viewer


def viewer_report(tally: LiveTally, listeners: list, per_viewer: int, cpu_s: float) -> dict:
    """What a viewer worker sends back with ``done``."""
    seen = [ln.viewer_count for ln in listeners if ln.viewer_count is not None]
    first = listeners[0]
    return {
        "count": tally.count,
        "target": tally.target,
        "disorder": tally.disorder,
        "duplicates": tally.duplicates,
        "last_ns": tally.last,
        "cpu_s": cpu_s,
        "hist": histogram(tally.delays),
        "count_pushes": tally.other,
        "viewer_count_min": min(seen, default=None),
        "viewer_count_max": max(seen, default=None),
        "disconnected": sum(1 for ln in listeners if ln.closed),
        "server_closes": close_codes(listeners),
        "short_receivers": sum(1 for ln in listeners if ln.got != per_viewer),
        **by_server(listeners, per_viewer),
        "probes": sum(1 for ln in listeners if isinstance(ln, LiveProbe)),
        "arrivals": list(first.arrivals) if isinstance(first, LiveProbe) else [],
        "disorder_samples": first.disorder_samples if isinstance(first, LiveProbe) else [],
    }


async def _live_worker(
    conn: Any,
    urls: list[str],
    tokens: list[str],
    reactions: int,
    senders: int,
    stall: float,
    sample: int,
) -> None:
    """A forked process owning a share of the viewers."""
    tally = LiveTally(len(tokens) * reactions)
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
    per_viewer = await wait_reactions(conn, tally, listeners, reactions, stall)
    cpu1 = cpu_seconds()
    pipe_send(conn, ("done", viewer_report(tally, listeners, per_viewer, cpu1 - cpu0)))
    await close_all(listeners)


def start_workers(args: Any) -> tuple[list, list]:
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


# -- host and reacting connections (in the main process) ---------------------------------


class Host(Base):
    """The stream's host: starts it, then only answers pings."""

    def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
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

    def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
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


@dataclass
class LiveRun:
    """The main process's side of one live run, filled in as it goes."""

    stream: str
    host: Host
    senders: list[ReactionSender]
    shared: dict
    setup: dict = field(default_factory=dict)
    pace: dict = field(default_factory=dict)
    t0: int = 0
    acked: int = 0  # when the senders' wait ended (later acks do not count)
    outs: list[dict] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    window: dict = field(default_factory=dict)
    server_s: float = float("nan")
    own_closed: int = 0
    own_closes: dict[int, int] = field(default_factory=dict)


async def open_stream(args: Any) -> LiveRun:
    """Start a fresh stream (a new id per run, so a PostgreSQL database used
    before holds no state for it) and join the reacting connections to it."""
    total, k = args.reactions, max(1, args.senders)
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
        "all_answered": asyncio.get_running_loop().create_future(),
    }
    senders = await open_all(
        lambda: ReactionSender(shared), args.url, [token(args, f"s{i}") for i in range(k)]
    )
    for s in senders:
        reply = await s.call("live:join", "j", {"streamId": stream})
        s.viewer_count = reply["viewerCount"]
    return LiveRun(stream, host, senders, shared)


async def ready_viewers(pipes: list, stream: str) -> dict:
    """Have every worker connect its viewers and join them to ``stream``:
    the join statuses of all and the slowest worker's set-up times."""
    t_setup = time.monotonic()
    for p in pipes:
        pipe_send(p, ("stream", stream))
    readies = await await_ready(pipes, "viewer")
    setup = {"statuses": merge_counts([r.pop("statuses") for r in readies]), **slowest(readies)}
    setup["total_s"] = time.monotonic() - t_setup
    return setup


def pace(senders: list[ReactionSender], total: int, rate: float) -> tuple[dict, asyncio.Future]:
    """Send open loop at a fixed rate: reaction i is due at t0 + i / rate
    and goes out at the first timer tick at or after that (in a burst if
    the generator fell behind), round robin over the sender connections.
    Returns the pacing figures (``t0`` among them) and a future that is
    done when every reaction has gone out."""
    loop = asyncio.get_running_loop()
    k = len(senders)
    state = {"sent": 0, "max_lag": 0, "last_send": 0}
    sent_all = loop.create_future()
    t0 = state["t0"] = monotonic_ns()

    def tick() -> None:
        now = monotonic_ns()
        i = state["sent"]
        due = min(total, (now - t0) * rate // 1_000_000_000 + 1)
        if i < due:
            state["max_lag"] = max(state["max_lag"], now - (t0 + i * 1_000_000_000 // rate))
            while i < due:
                senders[i % k].send(i, monotonic_ns())
                i += 1
            state["sent"], state["last_send"] = i, monotonic_ns()
        if i >= total:
            sent_all.set_result(None)
            return
        delay = (t0 + i * 1_000_000_000 // rate - monotonic_ns()) / 1e9
        loop.call_later(max(0.0, delay), tick)

    tick()
    return state, sent_all


async def react(run_: LiveRun, args: Any, pipes: list) -> None:
    """The measured window: start the viewers' count and the reactions,
    wait for every answer, tell the viewers how many were accepted, and
    collect the workers' figures."""
    total, rate = args.reactions, args.reaction_rate
    done_futures = [pipe_future(p) for p in pipes]
    cpu = CpuWindow(args.server_pids, own_pids(args))
    for p in pipes:
        pipe_send(p, ("go",))
    for s in run_.senders:
        s.running = True
    run_.pace, sent_all = pace(run_.senders, total, rate)
    run_.t0 = run_.pace["t0"]
    try:
        await asyncio.wait_for(sent_all, total / rate + args.stall)
        await asyncio.wait_for(asyncio.shield(run_.shared["all_answered"]), args.stall)
    except TimeoutError:
        pass
    run_.acked = sum(s.acked for s in run_.senders)
    if run_.acked != total:
        for p in pipes:
            try:
                pipe_send(p, ("target", run_.acked))
            except OSError:
                pass
    run_.outs, run_.failures = await gather_workers(done_futures, args.stall + 30, "viewer")
    run_.window = cpu.stop(run_.t0, sum(o["cpu_s"] for o in run_.outs))
    run_.server_s = cpu.server_s


async def await_echoes(senders: list[ReactionSender], acked: int, limit: float = 2.0) -> None:
    """Wait (at most ``limit`` s) for the senders' own copies of the
    ``acked`` reactions; they arrive with the viewers'."""
    expected = len(senders) * acked
    deadline = time.monotonic() + limit
    while sum(s.echo for s in senders) < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


async def run(args: Any, pipes: list, workers: int) -> dict:
    """The live scenario, from the host's connect to its result record."""
    run_ = await open_stream(args)
    run_.setup = await ready_viewers(pipes, run_.stream)
    # Let the coalesced live:viewer-count push of the last joins go out
    # before the measured window (viewer_count_interval is 0.5 s by default).
    await asyncio.sleep(1.0)
    await react(run_, args, pipes)
    await await_echoes(run_.senders, run_.acked)
    own = [*run_.senders, run_.host]
    run_.own_closed, run_.own_closes = sum(1 for c in own if c.closed), close_codes(own)
    await close_all(own)
    return report(args, workers, run_)


def report(args: Any, workers: int, r: LiveRun) -> dict:
    """The live result record (one JSON object on stdout)."""
    n, total, k = args.viewers, args.reactions, len(r.senders)
    outs, pace_, acked = r.outs, r.pace, r.acked
    count = sum(o["count"] for o in outs)
    sent = pace_["sent"]
    t1 = max([o["last_ns"] for o in outs] + [r.shared["last_ack"], r.t0 + 1])
    wall = max(1e-9, (t1 - r.t0) / 1e9)
    send_span = (pace_["last_send"] - r.t0) / 1e9
    seen_min = [o["viewer_count_min"] for o in outs if o["viewer_count_min"] is not None]
    seen_max = [o["viewer_count_max"] for o in outs if o["viewer_count_max"] is not None]
    arrivals = outs[0]["arrivals"] if outs else []
    ack_hist = histogram(r.shared["ack_lat"])
    return {
        "scenario": "live",
        "viewers": n,
        "reactions": total,
        "reaction_rate": args.reaction_rate,
        "senders": k,
        "workers": workers,
        "stream": r.stream,
        "sent": sent,
        "acked": acked,
        "errors": sum(s.errors for s in r.senders),
        "error_samples": r.shared["error_samples"],
        "expected": n * acked,
        "delivered": count,
        "shortfall": n * acked - count,
        "sender_copies": sum(s.echo for s in r.senders),
        "sender_copies_expected": k * acked,
        "out_of_order": sum(o["disorder"] for o in outs),
        "duplicates": sum(o["duplicates"] for o in outs),
        "disorder_samples": [x for o in outs for x in o["disorder_samples"]],
        "probes": sum(o["probes"] for o in outs),
        "short_receivers": sum(o["short_receivers"] for o in outs),
        **merge_by_server(outs),
        "disconnected": sum(o["disconnected"] for o in outs) + r.own_closed,
        "server_closes": merge_counts([o["server_closes"] for o in outs] + [r.own_closes]),
        "viewer_count_pushes": sum(o["count_pushes"] for o in outs),
        "viewer_count_seen": [min(seen_min, default=None), max(seen_max, default=None)],
        "viewer_count_expected": n + k,
        "worker_failures": r.failures,
        "seconds": wall,
        "send_rate": (sent - 1) / send_span if sent > 1 and send_span > 0 else None,
        "send_max_lag_ms": pace_["max_lag"] / 1e6,
        "drain_ms": (t1 - pace_["last_send"]) / 1e6 if pace_["last_send"] else None,
        "deliveries_per_s": count / wall,
        **latency(merge_counts([o["hist"] for o in outs])),
        "ack_p50_ms": percentile(ack_hist, 0.50),
        "ack_p99_ms": percentile(ack_hist, 0.99),
        # server_cpu_pct first: the record has always had it before µs/delivery.
        "server_cpu_pct": r.window["server_cpu_pct"],
        "server_us_per_delivery": 1e6 * r.server_s / count if count else None,
        **r.window,
        "server_peak_rss_mb": servers_rss(args.server_pids),
        "timeline_reactions_per_s": timeline(arrivals, r.t0),
        "setup": r.setup,
    }
