"""fanout: one sender, ``--receivers`` members of one public room.

The sender creates the room, the receivers (spread over ``--workers``
forked processes) join it, then the sender sends ``--messages``
chat:message requests keeping at most ``--window`` un-acked.  Every
receiver counts its chat:message pushes exactly (expected = receivers x
messages); every ``--sample``-th receiver (a "probe") also checks that it
sees the messages in send order with no gap or duplicate and measures the
send-to-receipt delay of each from the time stamp in the content.  The
others only count, so the generator stays well below the server's cost
per delivery.

``--receiver-dialect`` puts the receivers on one of chatd's other
plain-WebSocket dialects (``/ws/seed000``, ``/ws/chatflow``) while the
sender stays native: the same room, so the server cost per delivery of a
dialect's client compares with a native one's.
"""

from __future__ import annotations

import asyncio
import json
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from picows import WSMsgType, WSTransport

from load.client import (
    ACK,
    ERR,
    PUSH,
    Base,
    Tally,
    by_server,
    close_all,
    close_codes,
    content,
    join_all,
    merge_by_server,
    message_request,
    open_all,
    record_probe,
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
    servers_rss,
    steady_rate,
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

# -- the receivers' dialects ---------------------------------------------------------------


def _frame(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


@dataclass(frozen=True)
class ReceiverDialect:
    """How a receiver on a dialect's endpoint is told it authenticated (the
    token is in the URL), joins the room, and recognizes a room message."""

    path: str
    authenticated: bytes
    push: bytes
    join_frame: Callable[[str], bytes]
    joined: bytes


RECEIVER_DIALECTS = {
    "native": ReceiverDialect(
        "/ws",
        b'{"type":"authenticated"',
        PUSH,
        lambda room: _frame({"type": "chat:join", "id": "j", "data": {"chatId": room}}),
        b'{"type":"ack","id":"j"',
    ),
    "chatflow": ReceiverDialect(
        "/ws/chatflow",
        b'{"type":"AUTH_SUCCESS"',
        b'{"type":"NEW_MESSAGE"',
        lambda room: _frame({"type": "JOIN_ROOM", "payload": {"roomId": room}, "requestId": "j"}),
        b'{"type":"ROOM_JOINED"',
    ),
    "seed000": ReceiverDialect(
        "/ws/seed000",
        b'{"type":"authenticated"',
        b'{"type":"message"',
        lambda room: _frame({"type": "join_room", "data": {"roomId": room}}),
        b'{"type":"room_joined"',
    ),
}


def dialect_urls(urls: list[str], dialect: ReceiverDialect) -> list[str]:
    """The servers' ``…/ws`` URLs on the dialect's path."""
    return [u[: -len("/ws")] + dialect.path if u.endswith("/ws") else u for u in urls]


# -- receivers (in the worker processes) -------------------------------------------------


class Receiver(Base):
    """Counts room-message pushes; the hot path is one bytes copy, one
    prefix test and two additions."""

    push = PUSH

    def __init__(self, tally: Tally) -> None:
        super().__init__()
        self.tally = tally
        self.got = 0

    def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
        if frame.get_payload_as_bytes().startswith(self.push):
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

    def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
        p = frame.get_payload_as_bytes()
        if p.startswith(self.push) and record_probe(self, p):
            return
        self.slow_path(transport, frame)


async def wait_deliveries(
    tally: Tally, stop: asyncio.Future, listeners: list, stall: float
) -> None:
    """Wait for every delivery, an explicit stop, a stall, or the loss of
    every connection."""
    last_count, last_change = -1, time.monotonic()
    while not tally.done.done() and not stop.done():
        await asyncio.wait([tally.done, stop], timeout=0.25, return_when=asyncio.FIRST_COMPLETED)
        now = time.monotonic()
        if tally.count != last_count:
            last_count, last_change = tally.count, now
        elif now - last_change > stall or all(ln.closed for ln in listeners):
            break


def is_probe(listener: Any) -> bool:
    """A probe records its arrivals (native ``Probe``, or the Socket.IO
    generator's in ``load.sio_fanout``, which shares this report)."""
    return hasattr(listener, "arrivals")


def receiver_report(tally: Tally, listeners: list, messages: int, cpu_s: float) -> dict:
    """What a receiver worker sends back with ``done``."""
    return {
        "count": tally.count,
        "target": tally.target,
        "disorder": tally.disorder,
        "last_ns": tally.last,
        "cpu_s": cpu_s,
        "hist": histogram(tally.delays),
        "other": tally.other,
        "disconnected": sum(1 for ln in listeners if ln.closed),
        "server_closes": close_codes(listeners),
        "short_receivers": sum(1 for ln in listeners if ln.got != messages),
        **by_server(listeners, messages),
        "probes": sum(1 for ln in listeners if is_probe(ln)),
        "arrivals": list(listeners[0].arrivals) if is_probe(listeners[0]) else [],
    }


async def _receiver_worker(
    conn: Any,
    urls: list[str],
    tokens: list[str],
    messages: int,
    stall: float,
    sample: int,
    dialect_name: str = "native",
) -> None:
    """A forked process owning a share of the receivers."""
    dialect = RECEIVER_DIALECTS[dialect_name]
    tally = Tally(len(tokens) * messages)
    tally.done = asyncio.get_running_loop().create_future()
    room = (await pipe_future(conn))[1]
    t0 = time.monotonic()
    made = 0

    def make() -> Receiver:
        nonlocal made
        made += 1
        receiver = Probe(tally) if (made - 1) % sample == 0 else Receiver(tally)
        receiver.push = dialect.push
        return receiver

    async def join(listener: Base, room: str) -> None:
        reply = await listener.exchange(dialect.join_frame(room), dialect.joined, timeout=60.0)
        if reply.get("type") in ("error", "ERROR"):
            raise RuntimeError(f"join failed: {reply}")

    listeners = await open_all(
        make, dialect_urls(urls, dialect), tokens, authenticated=dialect.authenticated
    )
    t1 = time.monotonic()
    await join_all(listeners, [room] * len(listeners), join=join)
    t2 = time.monotonic()
    tally.other = 0
    pipe_send(conn, ("ready", {"connect_s": t1 - t0, "join_s": t2 - t1}))
    command = await pipe_future(conn)
    if command[0] != "go":
        await close_all(listeners)
        return
    cpu0 = cpu_seconds()
    await wait_deliveries(tally, pipe_future(conn), listeners, stall)
    cpu1 = cpu_seconds()
    pipe_send(conn, ("done", receiver_report(tally, listeners, messages, cpu1 - cpu0)))
    await close_all(listeners)


def start_workers(args: Any) -> tuple[list, list]:
    """Fork the receiver processes before any event loop exists."""
    n = args.receivers
    workers = max(1, min(args.workers, n))
    tokens = [token(args, f"r{i}") for i in range(n)]
    return fork_workers(
        _receiver_worker,
        [
            (
                args.urls,
                tokens[w::workers],
                args.messages,
                args.stall,
                max(1, args.sample),
                args.receiver_dialect,
            )
            for w in range(workers)
        ],
    )


# -- the sender (in the main process) -------------------------------------------------


class Sender(Base):
    """Sends ``total`` messages, a new one for every ack or error, so that
    ``window`` stay un-acked."""

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

    def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
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


async def open_room(args: Any) -> tuple[Sender, str]:
    """Connect the sender; it creates the public room and joins it."""
    (sender,) = await open_all(Sender, args.url, [token(args, "sender")])
    room = (await sender.call("chat:create", "c", {"name": "bench", "type": "public"}))["room"][
        "id"
    ]
    await sender.call("chat:join", "j", {"chatId": room})
    return sender, room


async def ready_receivers(pipes: list, room: str) -> dict:
    """Have every worker connect its receivers and join them to ``room``;
    the slowest worker's set-up times."""
    t_setup = time.monotonic()
    for p in pipes:
        pipe_send(p, ("room", room))
    setup = slowest(await await_ready(pipes, "receiver"))
    setup["total_s"] = time.monotonic() - t_setup
    return setup


async def run(args: Any, pipes: list, workers: int) -> dict:
    """The fanout scenario, from the sender's connect to its result record."""
    sender, room = await open_room(args)
    setup = await ready_receivers(pipes, room)
    done_futures = [pipe_future(p) for p in pipes]
    cpu = CpuWindow(args.server_pids, own_pids(args))
    t0 = monotonic_ns()
    for p in pipes:
        pipe_send(p, ("go",))
    sent_done = sender.start(room, args.messages, args.window, args.size)
    try:
        await asyncio.wait_for(sent_done, args.timeout)
    except TimeoutError:
        pass
    t_acked = sender.last_ack
    outs, failures = await gather_workers(done_futures, args.stall + 30, "receiver")
    # CPU figures are averages over the interval between the two samples.
    window = cpu.stop(t0, sum(o["cpu_s"] for o in outs))
    await close_all([sender])
    return report(args, workers, sender, outs, failures, t0, t_acked, window) | {"setup": setup}


def report(
    args: Any,
    workers: int,
    sender: Sender,
    outs: list[dict],
    failures: list[str],
    t0: int,
    t_acked: int,
    window: dict,
) -> dict:
    """The fanout result record (one JSON object on stdout)."""
    n, m = args.receivers, args.messages
    count = sum(o["count"] for o in outs)
    expected = n * m
    arrivals = outs[0]["arrivals"] if outs else []
    t1 = max([o["last_ns"] for o in outs] + [t_acked])
    wall = max(1e-9, (t1 - t0) / 1e9)
    hist = merge_counts([o["hist"] for o in outs])
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
        **latency(hist),
        **window,
        "server_peak_rss_mb": servers_rss(args.server_pids),
        "steady_deliveries_per_s": steady_rate(arrivals, n) if len(arrivals) == m else None,
        "timeline_msgs_per_s": timeline(arrivals, t0),
    }
