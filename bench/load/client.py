"""The generator's side of the chatd protocol on picows: tokens, request
frames, the listener every connection builds on, and opening, joining and
closing many connections at once.

Receivers never parse JSON on the hot path: they test a frame's prefix
(``PUSH``, ``ACK``…) and find the ``MARK`` time stamp with ``bytes.find``.
"""

from __future__ import annotations

import asyncio
import json
import time
from array import array
from collections.abc import Callable, Sequence
from typing import Any

import jwt
from picows import WSListener, WSMsgType, WSTransport, ws_connect

from load.measure import merge_counts, monotonic_ns

MARK = b"~T"
PUSH = b'{"type":"chat:message"'
ACK = b'{"type":"ack"'
ERR = b'{"type":"error"'
AUTHENTICATED = b'{"type":"authenticated"'


def record_probe(probe: Any, payload: bytes) -> bool:
    """A probe receiver's push: if it carries the sender's mark (send time
    and index), record the delay, check the order and count it, whatever
    the protocol around it; False for a push without a mark."""
    i = payload.find(MARK)
    if i < 0:
        return False
    now = monotonic_ns()
    t = probe.tally
    t.delays.append(now - int(payload[i + 2 : i + 22]))
    idx = int(payload[i + 22 : i + 30])
    if idx != probe.next:
        t.disorder += 1
    probe.next = idx + 1
    probe.arrivals.append(now)
    probe.got += 1
    t.count += 1
    t.last = now
    if t.count == t.target:
        t.done.set_result(None)
    return True


# -- tokens and frames ---------------------------------------------------------------


def mint(secret: str, user: str) -> str:
    """An HS256 token for ``user``, valid for an hour (longer than any run)."""
    now = int(time.time())
    return jwt.encode({"sub": user, "iat": now, "exp": now + 3600}, secret, algorithm="HS256")


def token(args: Any, name: str) -> str:
    """A token for user ``bench-<tag>-<name>``: a fresh tag per run, so the
    users share no room of an earlier run of a database that is kept
    (PostgreSQL) — otherwise every connect announces the user online to
    the members of all those rooms.  ``--user-tag ''`` gives the plain
    ``bench-<name>`` of every run."""
    return mint(args.secret, f"bench-{args.user_tag}-{name}" if args.user_tag else f"bench-{name}")


def content(index: int, size: int) -> str:
    """Message content that carries its send time and index (``MARK``
    ``<20-digit monotonic_ns><8-digit index>``), padded to ``size``."""
    head = f"~T{monotonic_ns():020d}{index:08d} "
    return head + "x" * max(0, size - len(head))


def request(kind: str, rid: str, data: Any) -> bytes:
    """A request frame for set-up calls, where speed does not matter."""
    return json.dumps({"type": kind, "id": rid, "data": data}, separators=(",", ":")).encode()


def message_request(rid: str, room: str, text: str) -> bytes:
    """A chat:message request, built by hand: the sender must not be the
    bottleneck either."""
    return b'{"type":"chat:message","id":"%s","data":{"chatId":"%s","content":"%s"}}' % (
        rid.encode(),
        room.encode(),
        text.encode(),
    )


# -- listeners -------------------------------------------------------------------------


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
    """A connection that can make set-up calls (``call``), answers pings and
    the server's CLOSE, and remembers which server it talks to and how the
    server closed it."""

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

    def control(self, transport: WSTransport, frame: Any) -> None:
        t = frame.msg_type
        if t == WSMsgType.CLOSE:
            body = frame.get_payload_as_bytes()
            self.close_code = int.from_bytes(body[:2], "big") if len(body) >= 2 else 1005
            transport.disconnect()
        elif t == WSMsgType.PING:
            transport.send_pong(frame.get_payload_as_bytes())

    async def call(self, kind: str, rid: str, data: Any, timeout: float = 30.0) -> dict:
        """Send a request and wait for its ack; an error reply raises."""
        fut = self.ctl.arm(b'{"type":"ack","id":"%s"' % rid.encode())
        self.transport.send(WSMsgType.TEXT, request(kind, rid, data))
        reply = await asyncio.wait_for(fut, timeout)
        if reply.get("type") != "ack":
            raise RuntimeError(f"{kind} failed: {reply}")
        return reply["data"]

    async def exchange(self, frame: bytes, expect: bytes, timeout: float = 30.0) -> dict:
        """Send a frame in any dialect and wait for the first frame that
        starts with ``expect`` (set-up only)."""
        fut = self.ctl.arm(expect)
        self.transport.send(WSMsgType.TEXT, frame)
        return await asyncio.wait_for(fut, timeout)


class Tally:
    """What one receiver process counts (shared by all its receivers or
    viewers, so the hot path touches one object)."""

    __slots__ = ("count", "target", "disorder", "last", "delays", "done", "other")

    def __init__(self, target: int) -> None:
        self.count = 0
        self.target = target
        self.disorder = 0
        self.last = 0
        self.delays = array("q")
        self.done: asyncio.Future | None = None
        self.other = 0


# -- many connections ----------------------------------------------------------------


async def open_all(
    factories: Callable[[], Base],
    urls: str | Sequence[str],
    tokens: list[str],
    concurrency: int = 64,
    timeout: float = 30.0,
    authenticated: bytes = AUTHENTICATED,
) -> list:
    """Connect one listener per token, round robin over ``urls`` (one URL
    or several servers), and wait for ``authenticated`` (the frame that
    starts with ``authenticated``: a dialect's own, on a dialect's path)."""
    sem = asyncio.Semaphore(concurrency)
    targets = [urls] if isinstance(urls, str) else list(urls)

    async def one(make: Callable[[], Base], token: str, server: int) -> Base:
        async with sem:
            _, listener = await ws_connect(
                make, f"{targets[server]}?token={token}", websocket_handshake_timeout=timeout
            )
            listener.server = server
            reply = await asyncio.wait_for(listener.ctl.future, timeout)
            if reply.get("type") == "error":
                raise RuntimeError(f"authentication failed: {reply}")
            return listener

    def maker() -> Base:
        listener = factories()
        listener.ctl.arm(authenticated)
        return listener

    return await asyncio.gather(*(one(maker, t, i % len(targets)) for i, t in enumerate(tokens)))


async def join_all(
    listeners: list,
    rooms: list[str],
    concurrency: int = 64,
    join: Callable[[Base, str], Any] | None = None,
) -> None:
    """chat:join each listener to its room (or ``join(listener, room)``, a
    dialect's way), ``concurrency`` at a time."""
    sem = asyncio.Semaphore(concurrency)

    async def one(listener: Base, room: str) -> None:
        async with sem:
            if join is not None:
                await join(listener, room)
            else:
                await listener.call("chat:join", "j", {"chatId": room}, timeout=60.0)

    await asyncio.gather(*(one(ln, r) for ln, r in zip(listeners, rooms, strict=True)))


async def close_all(listeners: list) -> None:
    """Drop every connection still open (the measurement is over)."""
    for ln in listeners:
        if ln.transport is not None and not ln.closed:
            ln.transport.disconnect(graceful=False)
    await asyncio.sleep(0)


def by_server(listeners: list, expected: int) -> dict[str, dict[int, int]]:
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
    """``by_server`` of every worker, added up."""
    return {
        k: merge_counts([o[k] for o in outs]) for k in ("connections_by_server", "short_by_server")
    }


def close_codes(listeners: list) -> dict[int, int]:
    """How many connections the server closed, by close code."""
    codes: dict[int, int] = {}
    for ln in listeners:
        if ln.close_code is not None:
            codes[ln.close_code] = codes.get(ln.close_code, 0) + 1
    return codes
