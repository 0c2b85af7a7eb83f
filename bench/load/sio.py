"""The generator's side of Socket.IO v5 over Engine.IO v4's WebSocket
transport, spoken directly on picows (no socket.io client library, whose
per-packet Python would make the generator the bottleneck).

One WebSocket text frame is one Engine.IO packet.  A connection goes

    GET /socket.io/?EIO=4&transport=websocket&token=<jwt>   (the upgrade)
    <- 0{"sid":…,"pingInterval":…}                           Engine.IO open
    -> 40{"token":"<jwt>"}                                   Socket.IO CONNECT to "/"
    <- 40{"sid":"…"}                                         connected (44{…}: refused)

and then ``42["event",data]`` events (``42<N>[…]`` asks for an ack), acks
``43<N>[data]`` back.  The server pings (``2``) every pingInterval and drops
a client that does not answer ``3`` within pingTimeout, so every connection
answers pings however long a run lasts.  The token goes both in the URL and
in the CONNECT packet: socket.io-client apps send the CONNECT ``auth``, and
both servers (chatd and bench/socketio-node) read either.

As in ``load.client``, the hot path of a receiver is a prefix test on the
frame (``PUSH``), everything else goes through ``SioBase.engine``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any

from picows import WSMsgType, WSTransport, ws_connect

from load.client import Base

PUSH = b'42["chat:message",'
EVENT = b"42"
ACK = b"43"
ERROR_ACK = b'[{"error":'
CONNECTED = b"40"
CONNECT_ERROR = b"44"
DISCONNECT = b"41"
PING, PONG, OPEN, CLOSE = b"2", b"3", b"0", b"1"


# -- frames --------------------------------------------------------------------------


def with_token(base: str, token: str) -> str:
    """The upgrade URL of one connection: ``base`` (which already carries
    ``EIO=4&transport=websocket``) plus ``&token=``."""
    return f"{base}{'&' if '?' in base else '?'}token={token}"


def connect_packet(token: str) -> bytes:
    """Socket.IO CONNECT to the default namespace with ``auth: {token}``."""
    return b'40{"token":"%s"}' % token.encode()


def event_packet(name: str, data: Any, ack_id: int | None = None) -> bytes:
    """``42[<ack id>]["name",data]``, for set-up calls where speed does not matter."""
    body = json.dumps([name, data], separators=(",", ":")).encode()
    return EVENT + (b"%d" % ack_id if ack_id is not None else b"") + body


def message_packet(ack_id: int, room: str, text: str) -> bytes:
    """A chat:message event asking for an ack, built by hand (the sender
    must not be the bottleneck either)."""
    return b'42%d["chat:message",{"chatId":"%s","content":"%s"}]' % (
        ack_id,
        room.encode(),
        text.encode(),
    )


def ack_id_of(payload: bytes) -> tuple[int, int]:
    """(ack id, offset of its ``[``) of an ACK packet ``43<N>[…]``."""
    start = payload.index(b"[", 2)
    return int(payload[2:start]), start


# -- the listener ------------------------------------------------------------------------


class SioBase(Base):
    """A Socket.IO connection: Engine.IO open → CONNECT with the token,
    pings answered, set-up calls with acks (``call``), and the WebSocket
    side (CLOSE, server index) from ``load.client.Base``.

    ``connected`` resolves with the Socket.IO sid, or fails on
    CONNECT_ERROR or a lost connection.  ``token`` is set by whoever makes
    the listener (``open_all``) before the open packet can arrive."""

    def __init__(self) -> None:
        super().__init__()
        self.token = ""
        self.sid = ""
        self.connected: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.calls: dict[int, asyncio.Future] = {}
        self.next_ack = 0
        self.pings = 0
        self.events = 0  # events other than the hot path's pushes (authenticated, …)
        self.disconnected_by_server = False  # a Socket.IO DISCONNECT (41) arrived

    def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
        self.engine(transport, frame)

    def engine(self, transport: WSTransport, frame: Any) -> None:
        """Every frame but a hot path's pushes: Engine.IO and Socket.IO
        control, acks of set-up calls, other events."""
        if frame.msg_type != WSMsgType.TEXT:
            self.control(transport, frame)
            return
        p = frame.get_payload_as_bytes()
        kind = p[:1]
        if kind == b"4":
            self.packet(p)
        elif kind == PING:
            self.pings += 1
            transport.send(WSMsgType.TEXT, PONG + p[1:])
        elif kind == OPEN:
            transport.send(WSMsgType.TEXT, connect_packet(self.token))
        elif kind == CLOSE:
            transport.disconnect()

    def packet(self, p: bytes) -> None:
        """A Socket.IO packet (an Engine.IO message)."""
        head = p[:2]
        if head == EVENT:
            self.events += 1
        elif head == ACK:
            ack_id, start = ack_id_of(p)
            fut = self.calls.pop(ack_id, None)
            if fut is not None and not fut.done():
                fut.set_result(json.loads(p[start:])[0])
        elif head == CONNECTED:
            if not self.connected.done():
                self.sid = json.loads(p[2:]).get("sid", "")
                self.connected.set_result(self.sid)
        elif head == CONNECT_ERROR:
            if not self.connected.done():
                self.connected.set_exception(
                    RuntimeError(f"CONNECT_ERROR {p[2:].decode(errors='replace')[:200]}")
                )
        elif head == DISCONNECT:
            self.disconnected_by_server = True

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        super().on_ws_disconnected(transport)
        lost = ConnectionError("disconnected")
        if not self.connected.done():
            self.connected.set_exception(lost)
        for fut in self.calls.values():
            if not fut.done():
                fut.set_exception(lost)
        self.calls.clear()

    def take_ack_id(self) -> int:
        ack_id = self.next_ack
        self.next_ack += 1
        return ack_id

    async def call(self, kind: str, rid: str, data: Any, timeout: float = 30.0) -> dict:
        """Emit ``kind`` with an ack and return the ack's data; an
        ``{error: …}`` ack raises.  (``rid`` is the native protocol's
        request id, unused: Socket.IO numbers its acks.)"""
        ack_id = self.take_ack_id()
        fut = asyncio.get_running_loop().create_future()
        self.calls[ack_id] = fut
        self.transport.send(WSMsgType.TEXT, event_packet(kind, data, ack_id))
        reply = await asyncio.wait_for(fut, timeout)
        if not isinstance(reply, dict) or "error" in reply:
            raise RuntimeError(f"{kind} failed: {reply}")
        return reply


# -- many connections ----------------------------------------------------------------


async def open_all(
    factory: Callable[[], SioBase],
    urls: str | Sequence[str],
    tokens: list[str],
    concurrency: int = 64,
    timeout: float = 30.0,
) -> list:
    """Connect one listener per token, round robin over ``urls`` (Socket.IO
    base URLs), and wait until each is connected to the namespace."""
    sem = asyncio.Semaphore(concurrency)
    targets = [urls] if isinstance(urls, str) else list(urls)

    async def one(token: str, server: int) -> SioBase:
        def make() -> SioBase:
            listener = factory()
            listener.token = token
            return listener

        async with sem:
            _, listener = await ws_connect(
                make, with_token(targets[server], token), websocket_handshake_timeout=timeout
            )
            listener.server = server
            await asyncio.wait_for(asyncio.shield(listener.connected), timeout)
            return listener

    return await asyncio.gather(*(one(t, i % len(targets)) for i, t in enumerate(tokens)))


async def join_all(listeners: list, rooms: list[str], concurrency: int = 64) -> None:
    """chat:join each listener to its room (with an ack), ``concurrency`` at a time."""
    sem = asyncio.Semaphore(concurrency)

    async def one(listener: SioBase, room: str) -> None:
        async with sem:
            await listener.call("chat:join", "j", {"chatId": room}, timeout=60.0)

    await asyncio.gather(*(one(ln, r) for ln, r in zip(listeners, rooms, strict=True)))
