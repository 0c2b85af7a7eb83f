"""Engine.IO v4 sessions: the sid table, heartbeats, and the upgrade from
HTTP long-polling to WebSocket.

An ``EngineSocket`` is one Engine.IO session.  It owns its current
transport (and, during an upgrade, the WebSocket being probed), sends the
server's pings and drops a peer whose pong does not come in time, and
hands each message to its ``SocketHandler`` (the Socket.IO layer, which is
the chatd binding).  Every timer runs on the injected clock, so the state
machine is driven by ``twisted.internet.task.Clock`` in the unit tests.

The upgrade, as socket.io's engine does it: the client opens a WebSocket
with the polling session's sid and sends ``2probe``; the server answers
``3probe`` and releases the pending GET with a ``6`` noop, so the client
can pause polling; the client sends ``5``; from then on the WebSocket is
the transport, what the polling queue still held goes out on it first,
and a polling request with that sid is a bad request.
"""

from __future__ import annotations

import heapq
import math
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from chatd.bindings.socketio import eio
from chatd.bindings.socketio.transports import Transport

log = Logger(namespace="chatd.bindings.socketio")

CLOSE_NORMAL = 1000
CLOSE_ABNORMAL = 1006
CLOSE_PROTOCOL_ERROR = 1002

SID_RANDOM_BYTES = 18
"""The unguessable part of a sid: 144 bits (``token_urlsafe``: 24 characters)."""

_NODE = re.compile(r"[0-9a-f]{8}")
_RANDOM = re.compile(r"[A-Za-z0-9_-]{24}")


def new_node_id() -> str:
    """A short id of this process (8 hex digits), the first part of every
    sid it makes: another process sharing the listening socket reads it to
    know where the session lives (chatd/bindings/socketio/handoff.py)."""
    return secrets.token_hex(4)


def make_sid(node: str) -> str:
    """``<node>.<24 url-safe characters>``: the node names the owner, the
    random part (``SID_RANDOM_BYTES``) keeps the sid unguessable."""
    return f"{node}.{secrets.token_urlsafe(SID_RANDOM_BYTES)}"


def sid_node(sid: str) -> str | None:
    """The process id in a well-formed sid, else ``None``.  Strict on
    purpose: the id becomes a file name, so nothing but 8 hex digits passes."""
    node, dot, rest = sid.partition(".")
    if dot and _NODE.fullmatch(node) and _RANDOM.fullmatch(rest):
        return node
    return None


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """The Engine.IO options (config: ``socketio_*``), in seconds and bytes."""

    ping_interval: float = 25.0
    ping_timeout: float = 20.0
    max_payload: int = 100_000
    upgrade_timeout: float = 10.0
    close_timeout: float = 3.0
    connect_timeout: float = 10.0


class HeartbeatWheel:
    """One timer for the heartbeats of every Engine.IO session of a server,
    instead of a ``DelayedCall`` per session (about 550 bytes each, the
    largest object an idle Socket.IO connection held beyond the native
    one's).  Due times are rounded up to ``resolution``: a ping goes out at
    most that much late (clients allow ``pingInterval + pingTimeout``) and a
    missed pong is noticed at most that much late."""

    # A timer fires at or just after its due time; a tick counts as passed
    # within this much of it (float sums of seconds are not exact).
    _SLACK = 1e-6

    def __init__(self, clock: IReactorTime, resolution: float) -> None:
        self._clock = clock
        self._resolution = resolution
        self._buckets: dict[int, dict[EngineSocket, None]] = {}
        self._ticks: list[int] = []  # a heap of the buckets' ticks
        self._timer: IDelayedCall | None = None
        self._timer_tick: int | None = None
        self._waiting = 0

    @classmethod
    def for_settings(cls, clock: IReactorTime, settings: EngineSettings) -> HeartbeatWheel:
        """A second (a twentieth of the default timeout), or finer when the
        intervals are short: the protocol test suites run with fractions of
        a second, and three pings must fit in their 1 s connect timeout."""
        shortest = min(settings.ping_interval, settings.ping_timeout)
        return cls(clock, min(1.0, shortest / 20) if shortest > 0 else 1.0)

    def __len__(self) -> int:
        """Sessions waiting for a heartbeat."""
        return self._waiting

    def add(self, socket: EngineSocket, delay: float) -> int:
        """Call ``socket.heartbeat_due()`` after ``delay``; the tick returned
        is what ``remove`` needs."""
        tick = math.ceil((self._clock.seconds() + delay) / self._resolution - self._SLACK)
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = {}
            heapq.heappush(self._ticks, tick)
            if self._timer_tick is None or tick < self._timer_tick:
                self._arm(tick)
        bucket[socket] = None
        self._waiting += 1
        return tick

    def remove(self, socket: EngineSocket, tick: int) -> None:
        bucket = self._buckets.get(tick)
        if bucket is not None and bucket.pop(socket, 0) is None:
            self._waiting -= 1
            if not self._waiting:
                # Nobody left: no timer stays behind (a stopped server, a
                # test's reactor); an empty bucket otherwise goes at its tick.
                self.stop()

    def _arm(self, tick: int) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer_tick = tick
        delay = max(0.0, tick * self._resolution - self._clock.seconds())
        self._timer = self._clock.callLater(delay, self._fire)

    def _fire(self) -> None:
        self._timer = self._timer_tick = None
        now = self._clock.seconds() + self._SLACK
        ticks = self._ticks
        while ticks and ticks[0] * self._resolution <= now:
            bucket = self._buckets.pop(heapq.heappop(ticks), None) or {}
            self._waiting -= len(bucket)
            for socket in list(bucket):
                try:
                    socket.heartbeat_due()
                except Exception:
                    log.failure("heartbeat of {sid} failed", sid=socket.sid)
        if ticks:
            self._arm(ticks[0])

    def stop(self) -> None:
        """Forget every heartbeat and cancel the timer."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self._timer_tick = None
        self._buckets.clear()
        self._ticks.clear()
        self._waiting = 0


class SocketHandler(Protocol):
    """What the engine tells the layer above it (the Socket.IO binding)."""

    def opened(self) -> None:
        """The open packet went out."""

    def message(self, data: str | bytes) -> None:
        """One Engine.IO message (bytes: a binary one)."""

    def transport_changed(self, previous: Transport) -> None:
        """The upgrade completed: ``socket.transport`` is the WebSocket."""

    def closing(self) -> None:
        """A closing handshake started: nothing more may be sent."""

    def closed(self, clean: bool, code: int, reason: str) -> None:
        """The session is gone."""


HandlerFactory = Callable[["EngineSocket"], SocketHandler]
PollingFactory = Callable[["EngineSocket"], Transport]


class EngineSocket:
    """One Engine.IO session; see the module docstring."""

    # One per connection: slots keep an idle connection's memory down.
    __slots__ = (
        "sid",
        "server",
        "transport",
        "peer",
        "offered_token",
        "open",
        "upgraded",
        "_clock",
        "_settings",
        "_probing",
        "upgrading",
        "_upgrade_timer",
        "_beat_tick",
        "_awaiting_pong",
        "_closing",
        "handler",
    )

    def __init__(
        self,
        server: EngineServer,
        sid: str,
        transport: Transport | None,
        peer: str | None,
        offered_token: str | None,
    ) -> None:
        """``transport`` is the WebSocket of a handshake over WebSocket;
        ``None`` makes a polling transport for this session."""
        self.sid = sid
        self.server = server
        self.transport: Transport = (
            transport if transport is not None else server.polling_factory(self)
        )
        self.peer = peer
        # The token of the handshake request (header or query), for the
        # Socket.IO CONNECT that carries none in its auth payload.
        self.offered_token = offered_token
        self.open = True
        self.upgraded = False
        self._clock = server.clock
        self._settings = server.settings
        self._probing: Transport | None = None
        # The probe was answered (3probe): a GET now gets a noop at once.
        self.upgrading = False
        self._upgrade_timer: IDelayedCall | None = None
        # The heartbeat: the wheel's tick this session waits for, and
        # whether that is the pong's deadline (else the next ping).
        self._beat_tick: int | None = None
        self._awaiting_pong = False
        self._closing = False
        self.handler: SocketHandler = server.handler_factory(self)

    # -- opening and heartbeats --------------------------------------------------

    def start(self) -> None:
        """Send the open packet and start the heartbeat."""
        settings = self._settings
        upgrades = ["websocket"] if self.transport.name == "polling" else []
        self.send(
            eio.open_packet(
                self.sid,
                upgrades,
                settings.ping_interval,
                settings.ping_timeout,
                settings.max_payload,
            )
        )
        self._schedule_ping()
        self.handler.opened()

    def _schedule_ping(self) -> None:
        self._awaiting_pong = False
        self._beat_tick = self.server.heartbeats.add(self, self._settings.ping_interval)

    def heartbeat_due(self) -> None:
        """The wheel's call: time for the next ping, or the pong is late."""
        self._beat_tick = None
        if self._awaiting_pong:
            self._pong_missed()
        else:
            self._ping()

    def _ping(self) -> None:
        self.send(eio.encode(eio.PING))
        self._awaiting_pong = True
        self._beat_tick = self.server.heartbeats.add(self, self._settings.ping_timeout)

    def _pong_missed(self) -> None:
        self._awaiting_pong = False
        log.info(
            "Engine.IO session {sid} missed its pong; dropping it",
            event="socketio.ping_timeout",
            sid=self.sid,
        )
        self.fail(CLOSE_ABNORMAL, "ping timeout")

    def _pong(self) -> None:
        if not self._awaiting_pong:
            return  # an unsolicited pong: harmless
        self._stop_timers()
        self._schedule_ping()

    # -- sending -------------------------------------------------------------------

    def send(self, packet: bytes) -> None:
        """One Engine.IO packet on the current transport."""
        if self.open and not self._closing:
            transport = self.transport
            transport.write(transport.frame(packet))

    # -- receiving -------------------------------------------------------------------

    def received(self, packet: eio.Packet) -> None:
        """A packet from the current transport."""
        if not self.open:
            return
        kind = packet.type
        if kind == eio.MESSAGE:
            self.handler.message(packet.data)
        elif kind == eio.PONG:
            self._pong()
        elif kind == eio.CLOSE:
            self._closed_by_client()
        elif kind == eio.NOOP:
            pass  # a client may send it (it carries nothing)
        else:
            # ping (the server pings in v4), open or upgrade out of place
            self.protocol_error(f"unexpected packet type {kind!r}")

    def _closed_by_client(self) -> None:
        """The client's close packet.  Over polling it expects no close
        packet back: like socket.io's engine, the GET gets a noop and the
        session ends (the Engine.IO test suite checks for the ``6``).
        Over WebSocket, the orderly close."""
        end = getattr(self.transport, "closed_by_client", None)
        if end is None or not self.open or self._closing:
            self.close(CLOSE_NORMAL, "client closed the session")
            return
        self._closing = True
        self._stop_timers()
        self.handler.closing()
        end(CLOSE_NORMAL, "client closed the session")

    def protocol_error(self, reason: str) -> None:
        """Input that breaks Engine.IO: the session cannot go on."""
        log.info(
            "closing Engine.IO session {sid}: {reason}",
            event="socketio.protocol_error",
            sid=self.sid,
            reason=reason,
        )
        self.fail(CLOSE_PROTOCOL_ERROR, reason)

    # -- the upgrade ------------------------------------------------------------------

    def probe(self, websocket: Transport) -> bool:
        """A WebSocket opened with this session's sid; whether it may try
        to become the transport."""
        if not self.open or self._closing or self.upgraded or self._probing is not None:
            return False
        if self.transport.name != "polling":
            return False
        self._probing = websocket
        self._upgrade_timer = self._clock.callLater(
            self._settings.upgrade_timeout, self._upgrade_timed_out
        )
        return True

    def probe_received(self, websocket: Transport, packet: eio.Packet) -> None:
        """A packet on the WebSocket being probed."""
        if websocket is not self._probing:
            return
        if packet.type == eio.PING and packet.data == eio.PROBE:
            websocket.write(websocket.frame(eio.encode(eio.PONG, eio.PROBE)))
            self.upgrading = True
            release = getattr(self.transport, "release", None)
            if release is not None:
                release()
        elif packet.type == eio.UPGRADE:
            self._complete_upgrade(websocket)
        else:
            self._abandon_probe()
            websocket.close(CLOSE_PROTOCOL_ERROR, "unexpected packet during the upgrade")

    def probe_closed(self, websocket: Transport) -> None:
        if websocket is self._probing:
            self._abandon_probe()

    def _upgrade_timed_out(self) -> None:
        self._upgrade_timer = None
        probing = self._probing
        self._abandon_probe()
        if probing is not None:
            probing.close(CLOSE_NORMAL, "upgrade not completed in time")

    def _abandon_probe(self) -> None:
        self._probing = None
        self.upgrading = False
        if self._upgrade_timer is not None and self._upgrade_timer.active():
            self._upgrade_timer.cancel()
        self._upgrade_timer = None

    def _complete_upgrade(self, websocket: Transport) -> None:
        self._abandon_probe()
        previous = self.transport
        discard = getattr(previous, "discard", None)
        leftover: bytes = discard() if discard is not None else b""
        self.transport = websocket
        self.upgraded = True
        # What the polling queue still held goes first, in order.
        for record in leftover.split(eio.SEPARATOR):
            if record:
                websocket.write(websocket.frame(record))
        self.handler.transport_changed(previous)

    # -- closing -------------------------------------------------------------------------

    def close(self, code: int, reason: str) -> None:
        """An orderly close: what is queued goes out, then the transport
        closes (``transport_closed`` finishes the session)."""
        if not self.open or self._closing:
            return
        self._closing = True
        self._stop_timers()
        self.handler.closing()
        self.transport.close(code, reason)

    def fail(self, code: int, reason: str) -> None:
        """Drop the session now."""
        if not self.open:
            return
        self._closing = True
        self._stop_timers()
        self.handler.closing()
        transport = self.transport
        transport.abort()
        self.transport_closed(transport, False, code, reason)

    def transport_closing(self, transport: Transport) -> None:
        """The transport started a closing handshake of its own."""
        if transport is self.transport and self.open and not self._closing:
            self._closing = True
            self._stop_timers()
            self.handler.closing()

    def transport_closed(self, transport: Transport, clean: bool, code: int, reason: str) -> None:
        """A transport is gone; if it was the current one, so is the session."""
        if transport is self._probing:
            self._abandon_probe()
            return
        if transport is not self.transport or not self.open:
            return
        self.open = False
        self._stop_timers()
        probing = self._probing
        self._abandon_probe()
        if probing is not None:
            probing.abort()
        self.server.forget(self)
        self.handler.closed(clean, code, reason)

    def _stop_timers(self) -> None:
        if self._beat_tick is not None:
            self.server.heartbeats.remove(self, self._beat_tick)
        self._beat_tick = None
        self._awaiting_pong = False


class EngineServer:
    """The Engine.IO sessions of one chatd process, by sid."""

    def __init__(
        self,
        settings: EngineSettings,
        clock: IReactorTime,
        handler_factory: HandlerFactory,
        polling_factory: PollingFactory,
        node: str | None = None,
    ) -> None:
        """``node`` is this process's id in every sid (random by default)."""
        self.node = node if node is not None else new_node_id()
        self.settings = settings
        self.clock = clock
        self.handler_factory = handler_factory
        self.polling_factory = polling_factory
        self.sockets: dict[str, EngineSocket] = {}
        self.heartbeats = HeartbeatWheel.for_settings(clock, settings)

    def __len__(self) -> int:
        return len(self.sockets)

    def get(self, sid: str) -> EngineSocket | None:
        return self.sockets.get(sid)

    def open_polling(self, peer: str | None, offered_token: str | None) -> EngineSocket:
        """A handshake over polling: the open packet is queued for the GET
        that asked for it."""
        return self._open(None, peer, offered_token)

    def open_websocket(
        self, transport: Transport, peer: str | None, offered_token: str | None
    ) -> EngineSocket:
        """A handshake over WebSocket (no polling first)."""
        return self._open(transport, peer, offered_token)

    def _open(
        self, transport: Transport | None, peer: str | None, offered_token: str | None
    ) -> EngineSocket:
        sid = make_sid(self.node)
        socket = EngineSocket(self, sid, transport, peer, offered_token)
        self.sockets[sid] = socket
        socket.start()
        return socket

    def forget(self, socket: EngineSocket) -> None:
        if self.sockets.get(socket.sid) is socket:
            del self.sockets[socket.sid]

    def close_all(self, code: int, reason: str) -> None:
        """Close every session (shutdown: the hub closes those with a chatd
        session; this catches the ones that never connected)."""
        for socket in list(self.sockets.values()):
            socket.close(code, reason)
