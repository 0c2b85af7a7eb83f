"""ingest: ``--connections`` connections in ``--rooms`` public rooms.

Each connection joins its room (round robin) and keeps ``--window``
chat:message requests un-acked for ``--duration`` seconds.  Reports acked
(= durably stored) messages per second and ack latency, and checks that
every push the acks imply arrived.  No worker processes: the generator's
work per message is small next to the server's commit.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from typing import Any

from picows import WSMsgType, WSTransport

from load.client import (
    ACK,
    ERR,
    PUSH,
    Base,
    close_all,
    close_codes,
    content,
    join_all,
    message_request,
    open_all,
    token,
)
from load.measure import CpuWindow, histogram_add, monotonic_ns, own_pids, percentile, servers_rss


class IngestConn(Base):
    """One sending connection: a new message for every ack or error while
    ``running``; the request id is the send time, so the ack carries its
    latency."""

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

    def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
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


def new_stats(conns: int) -> dict:
    """What the connections share: errors, the last ack, how many are idle."""
    return {
        "errors": 0,
        "error_samples": [],
        "last_ack": 0,
        "idle": 0,
        "conns": conns,
        "all_idle": asyncio.get_running_loop().create_future(),
    }


async def connect(args: Any, stats: dict, rooms: int) -> list[IngestConn]:
    """Open the connections; the first ``rooms`` create a room each, and
    every connection joins one, round robin."""
    k = args.connections
    tokens = [token(args, f"i{i}") for i in range(k)]
    conns = await open_all(lambda: IngestConn(stats), args.urls, tokens)
    ids = []
    for i in range(rooms):
        ids.append(
            (await conns[i].call("chat:create", f"c{i}", {"name": f"ingest{i}", "type": "public"}))[
                "room"
            ]["id"]
        )
    await join_all(conns, [ids[i % rooms] for i in range(k)])
    for i, c in enumerate(conns):
        c.room, c.size = ids[i % rooms], args.size
    return conns


async def send_for(conns: list[IngestConn], args: Any, stats: dict) -> None:
    """Keep every connection's window full for ``--duration`` seconds, then
    wait (at most ``--stall``) for the answers still outstanding."""
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


def expected_pushes(conns: list[IngestConn]) -> int:
    """Every acked message is pushed to every connection joined to its room."""
    per_room: dict[str, list[IngestConn]] = {}
    for c in conns:
        per_room.setdefault(c.room, []).append(c)
    return sum(sum(c.acked for c in cs) * len(cs) for cs in per_room.values())


async def await_pushes(conns: list[IngestConn], expected: int, limit: float = 10.0) -> int:
    """The pushes received, once they reach ``expected`` or after ``limit`` s."""
    deadline = time.monotonic() + limit
    while sum(c.pushes for c in conns) < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return sum(c.pushes for c in conns)


async def run(args: Any) -> dict:
    """The ingest scenario, from the first connect to its result record."""
    rooms = max(1, min(args.rooms, args.connections))
    stats = new_stats(args.connections)
    conns = await connect(args, stats, rooms)
    cpu = CpuWindow(args.server_pids, own_pids(args))
    t0 = monotonic_ns()
    await send_for(conns, args, stats)
    t1 = stats["last_ack"] or monotonic_ns()
    window = cpu.stop(t0)
    wall = max(1e-9, (t1 - t0) / 1e9)
    acked = sum(c.acked for c in conns)
    expected = expected_pushes(conns)
    pushes = await await_pushes(conns, expected)
    hist: dict[int, int] = {}
    for c in conns:
        histogram_add(hist, c.lat)
    await close_all(conns)
    return {
        "scenario": "ingest",
        "connections": args.connections,
        "rooms": rooms,
        "window": args.window,
        "duration": args.duration,
        "size": args.size,
        "sent": sum(c.sent for c in conns),
        "acked": acked,
        "errors": stats["errors"],
        "error_samples": stats["error_samples"],
        "unanswered": sum(c.inflight for c in conns),
        "expected_pushes": expected,
        "pushes": pushes,
        "push_shortfall": expected - pushes,
        "disconnected": sum(1 for c in conns if c.closed),
        "server_closes": close_codes(conns),
        "seconds": wall,
        "acked_per_s": acked / wall,
        "ack_p50_ms": percentile(hist, 0.50),
        "ack_p99_ms": percentile(hist, 0.99),
        **window,
        "server_peak_rss_mb": servers_rss(args.server_pids),
    }
