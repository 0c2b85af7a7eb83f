"""fanout over Socket.IO: the native fanout (``load.fanout``) on
``/socket.io/``, for chatd's Socket.IO binding and bench/socketio-node.

The same scenario and the same counting: the sender creates a public room
(``42N["chat:create",…]``, ack ``43N[{room}]``) and joins it, the receivers
(spread over ``--workers`` processes) join it, then the sender emits
``--messages`` ``42N["chat:message",{chatId,content}]`` keeping at most
``--window`` un-acked (a new one for every ``43N[…]``).  Every receiver
counts its ``42["chat:message",…]`` pushes exactly; every ``--sample``-th
(a probe) checks order (no gap, no duplicate) and measures the delay from
the ``~T<monotonic_ns><index>`` mark in the content.  The result record is
``load.fanout``'s, with ``protocol: "socketio"`` and the pings answered.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from typing import Any

from picows import WSMsgType, WSTransport

from load import fanout
from load.client import Tally, close_all, content, record_probe, token
from load.measure import CpuWindow, cpu_seconds, monotonic_ns, own_pids
from load.sio import ACK, ERROR_ACK, PUSH, SioBase, join_all, message_packet, open_all
from load.workers import fork_workers, gather_workers, pipe_future, pipe_send

# -- receivers (in the worker processes) -------------------------------------------------


class Receiver(SioBase):
    """Counts chat:message pushes; the hot path is one bytes copy, one
    prefix test and two additions, as in the native generator."""

    def __init__(self, tally: Tally) -> None:
        super().__init__()
        self.tally = tally
        self.got = 0

    def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
        if frame.get_payload_as_bytes().startswith(PUSH):
            self.got += 1
            t = self.tally
            t.count += 1
            if t.count == t.target:
                t.last = monotonic_ns()
                t.done.set_result(None)
        else:
            self.tally.other += 1
            self.engine(transport, frame)


class Probe(Receiver):
    """A receiver that also measures the send-to-receipt delay of every
    message and checks that they arrive in send order, once each."""

    def __init__(self, tally: Tally) -> None:
        super().__init__(tally)
        self.next = 0
        self.arrivals = array("q")

    def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
        p = frame.get_payload_as_bytes()
        if p.startswith(PUSH) and record_probe(self, p):
            return
        self.tally.other += 1
        self.engine(transport, frame)


async def _receiver_worker(
    conn: Any, urls: list[str], tokens: list[str], messages: int, stall: float, sample: int
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
    await fanout.wait_deliveries(tally, pipe_future(conn), listeners, stall)
    cpu1 = cpu_seconds()
    pipe_send(conn, ("done", fanout.receiver_report(tally, listeners, messages, cpu1 - cpu0)))
    await close_all(listeners)


def start_workers(args: Any) -> tuple[list, list]:
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


# -- the sender (in the main process) -------------------------------------------------


class Sender(SioBase):
    """Emits ``total`` chat:messages with acks, a new one for every ack, so
    that ``window`` stay un-acked.  Has the counters ``fanout.report``
    reads (acked, errors, echo, …)."""

    def __init__(self) -> None:
        super().__init__()
        self.room = ""
        self.total = 0
        self.size = 0
        self.sent = 0
        self.acked = 0
        self.errors = 0
        self.error_samples: list[str] = []
        self.done: asyncio.Future | None = None
        self.echo = 0
        self.last_ack = 0

    def start(self, room: str, total: int, window: int, size: int) -> asyncio.Future:
        self.room, self.total, self.size = room, total, size
        self.done = asyncio.get_running_loop().create_future()
        for _ in range(min(window, total)):
            self.send_next()
        return self.done

    def send_next(self) -> None:
        i = self.sent
        self.sent += 1
        self.transport.send(
            WSMsgType.TEXT, message_packet(self.take_ack_id(), self.room, content(i, self.size))
        )

    def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
        if self.done is None or frame.msg_type != WSMsgType.TEXT:
            self.engine(transport, frame)
            return
        p = frame.get_payload_as_bytes()
        if p.startswith(PUSH):
            self.echo += 1
            return
        if not p.startswith(ACK):
            self.engine(transport, frame)
            return
        if p.find(ERROR_ACK, 2, 24) >= 0:
            self.errors += 1
            if len(self.error_samples) < 5:
                self.error_samples.append(p.decode(errors="replace")[:300])
        else:
            self.acked += 1
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
    created = await sender.call("chat:create", "c", {"name": "bench", "type": "public"})
    room = created["room"]["id"]
    await sender.call("chat:join", "j", {"chatId": room})
    return sender, room


async def run(args: Any, pipes: list, workers: int) -> dict:
    """The scenario, from the sender's connect to its result record."""
    sender, room = await open_room(args)
    setup = await fanout.ready_receivers(pipes, room)
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
    window = cpu.stop(t0, sum(o["cpu_s"] for o in outs))
    await close_all([sender])
    result = fanout.report(args, workers, sender, outs, failures, t0, t_acked, window)  # type: ignore[arg-type]
    return result | {"setup": setup, "protocol": "socketio"}
