"""latency: many small rooms at an everyday, open-loop rate.

``--rooms`` public rooms of ``--members`` connections each (200 x 5 by
default); every connection sends ``--rate`` chat:message requests per
second to its room on a fixed schedule (open loop: a send is due at its
time whatever the replies did; each connection's phase is random, so the
sends are spread over the second), for ``--warmup`` seconds unmeasured,
then ``--duration`` seconds measured.  Every member's push of a message,
the sender's own included, is a delivery; its delay is receipt time minus
the send time in the content (``MARK``).  Reports p50/p99/p99.9 delay,
inbound messages/s, deliveries/s, and the server's CPU per inbound
message over the measured window.

The same scenario runs over chatd's native protocol and over Socket.IO
(``--protocol socketio``: chatd's binding or the Node reference server),
so the two servers get the same load from the same generator.
"""

from __future__ import annotations

import asyncio
import heapq
import random
import time
from array import array
from typing import Any

from picows import WSMsgType, WSTransport

from load import client, sio
from load.measure import CpuWindow, histogram, monotonic_ns, own_pids, percentile

TICK = 0.002  # the send schedule's resolution (s)


class _Counts:
    """What every connection of the run adds to (one object: the hot path
    touches one place)."""

    __slots__ = ("measuring", "delays", "deliveries", "acked", "errors", "error_samples", "sent")

    def __init__(self) -> None:
        self.measuring = False
        self.delays = array("q")
        self.deliveries = 0
        self.acked = 0
        self.errors = 0
        self.error_samples: list[str] = []
        self.sent = 0

    def push(self, payload: bytes) -> None:
        i = payload.find(client.MARK)
        if i < 0 or not self.measuring:
            return
        self.delays.append(monotonic_ns() - int(payload[i + 2 : i + 22]))
        self.deliveries += 1

    def error(self, payload: bytes) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(payload.decode(errors="replace")[:300])


class _Member:
    """What a room member is whatever the protocol: its counts, its room,
    and the scheduled send (``message_frame`` is the protocol's)."""

    transport: Any

    def __init__(self, counts: _Counts) -> None:
        super().__init__()
        self.counts = counts
        self.room = ""
        self.n = 0

    def message_frame(self, text: str) -> bytes:
        raise NotImplementedError

    def send_message(self, size: int) -> None:
        self.n += 1
        self.transport.send(WSMsgType.TEXT, self.message_frame(client.content(self.n, size)))


class NativeMember(_Member, client.Base):
    """A room member over ``/ws``: pushes carry the delay, acks are counted."""

    def message_frame(self, text: str) -> bytes:
        return client.message_request(f"m{self.n}", self.room, text)

    def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            self.control(transport, frame)
            return
        p = frame.get_payload_as_bytes()
        if p.startswith(client.PUSH):
            self.counts.push(p)
        elif p.startswith(b'{"type":"ack","id":"m'):
            if self.counts.measuring:
                self.counts.acked += 1
        elif p.startswith(client.ERR) and self.counts.measuring:
            self.counts.error(p)
        else:
            self.ctl.offer(p)


class SioMember(_Member, sio.SioBase):
    """A room member over Socket.IO's WebSocket transport."""

    def message_frame(self, text: str) -> bytes:
        return sio.message_packet(self.take_ack_id(), self.room, text)

    def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            p = frame.get_payload_as_bytes()
            if p.startswith(sio.PUSH):
                self.counts.push(p)
                return
            if p.startswith(sio.ACK):
                ack_id, start = sio.ack_id_of(p)
                if ack_id not in self.calls:
                    if self.counts.measuring:
                        if p.startswith(sio.ERROR_ACK, start):
                            self.counts.error(p)
                        else:
                            self.counts.acked += 1
                    return
        self.engine(transport, frame)


async def _members(args: Any, counts: _Counts) -> list:
    """Every member connected, each room created by its first member, and
    every member joined."""
    n = args.rooms * args.members
    tokens = [client.token(args, f"l{i}") for i in range(n)]
    if args.protocol == "socketio":
        members = await sio.open_all(lambda: SioMember(counts), args.urls, tokens)
        join = sio.join_all
    else:
        members = await client.open_all(lambda: NativeMember(counts), args.urls, tokens)
        join = client.join_all
    rooms = []
    for r in range(args.rooms):
        created = await members[r * args.members].call(
            "chat:create", "c", {"name": f"latency-{r}", "type": "public"}
        )
        rooms.append(created["room"]["id"])
    for i, member in enumerate(members):
        member.room = rooms[i // args.members]
    await join(members, [m.room for m in members])
    return members


async def _send_on_schedule(members: list, rate: float, size: int, until: float) -> int:
    """Open loop: member k sends at phase_k + j / rate, whatever came back."""
    period = 1.0 / rate
    start = time.monotonic()
    heap = [(start + random.uniform(0, period), k) for k in range(len(members))]
    heapq.heapify(heap)
    sent = 0
    while True:
        now = time.monotonic()
        if now >= until:
            return sent
        while heap and heap[0][0] <= now:
            t, k = heapq.heappop(heap)
            member = members[k]
            if not member.closed:
                member.send_message(size)
                sent += 1
            heapq.heappush(heap, (t + period, k))
        await asyncio.sleep(max(0.0, min(TICK, heap[0][0] - time.monotonic())) if heap else TICK)


async def run(args: Any) -> dict:
    counts = _Counts()
    members = await _members(args, counts)
    t_start = time.monotonic()
    sender = asyncio.ensure_future(
        _send_on_schedule(members, args.rate, args.size, t_start + args.warmup + args.duration)
    )
    await asyncio.sleep(args.warmup)
    cpu = CpuWindow(args.server_pids, own_pids(args))
    t0 = monotonic_ns()
    counts.measuring = True
    await asyncio.sleep(args.duration)
    counts.measuring = False
    window = cpu.stop(t0)
    sent = await sender
    await asyncio.sleep(0.5)  # let the last replies in before closing
    await client.close_all(members)
    seconds = args.duration
    hist = histogram(counts.delays)
    inbound = counts.acked / seconds
    server_pct = window.get("server_cpu_pct")
    return {
        "scenario": "latency",
        "rooms": args.rooms,
        "members": args.members,
        "rate": args.rate,
        "size": args.size,
        "seconds": seconds,
        "sent_total": sent,
        "acked": counts.acked,
        "errors": counts.errors,
        "error_samples": counts.error_samples,
        "deliveries": counts.deliveries,
        "messages_per_s": inbound,
        "deliveries_per_s": counts.deliveries / seconds,
        "expected_deliveries_per_s": args.rooms * args.members * args.members * args.rate,
        "p50_ms": percentile(hist, 0.50),
        "p99_ms": percentile(hist, 0.99),
        "p999_ms": percentile(hist, 0.999),
        "max_ms": max(counts.delays) / 1e6 if counts.delays else None,
        "server_us_per_message": (1e4 * server_pct / inbound)
        if server_pct is not None and inbound
        else None,
        "disconnected": sum(1 for m in members if m.closed and m.close_code is not None),
        **window,
    }
