"""Test-only: the servers the protocols' own test suites expect.

socketio/engine.io-protocol and socketio/socket.io-protocol each ship a
mocha suite (``test-suite/``) that checks a server against the spec.  They
do not talk to an application: they expect a reference server of their
own, configured as their READMEs say (ping interval 300 ms, ping timeout
200 ms, ``maxPayload`` 1,000,000, any origin):

* Engine.IO: a raw Engine.IO server whose every message (text or binary)
  is sent back as it came;
* Socket.IO: the namespaces ``/`` and ``/custom``, each emitting ``auth``
  with the CONNECT payload on connection; on ``/``, ``message`` answered as
  ``message-back`` with the same arguments (binary ones included) and
  ``message-with-ack`` acknowledged with its arguments; a connect timeout
  of one second.

With ``socketio_test_suites`` on, chatd serves exactly that, at
``/engine.io/`` (and ``/testsuite/engine.io/``) and
``/testsuite/socket.io/``, so the unchanged suites can be pointed at a
running chatd from outside (docs/socketio.md, "Protocol test suites").
Everything below the application layer is chatd's own: the resource (its
checks and JSON errors), the engine (sessions, heartbeats, the upgrade),
the polling and WebSocket transports and the Socket.IO codec.  Only the
two toy applications on top are here, so what the suites exercise is the
code that serves ``/socket.io/``.  These endpoints have no authentication
and no limits beyond the payload size: the setting is refused unless
chatd listens on loopback only.
"""

from __future__ import annotations

import base64
import secrets
from collections import deque
from typing import Any

from autobahn.websocket.protocol import PreparedMessage
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from chatd.bindings.socketio import eio, sio
from chatd.bindings.socketio.engine import (
    EngineServer,
    EngineSettings,
    EngineSocket,
    HandlerFactory,
)
from chatd.bindings.socketio.origins import OriginPolicy
from chatd.bindings.socketio.polling import PollingTransport
from chatd.bindings.socketio.resource import SocketIOResource
from chatd.bindings.socketio.transports import Transport
from chatd.bindings.socketio.websocket import EngineWebSocketFactory
from chatd.session.session import CLOSE_GOING_AWAY

log = Logger(namespace="chatd.bindings.socketio")

PING_INTERVAL = 0.3
PING_TIMEOUT = 0.2
MAX_PAYLOAD = 1_000_000
CONNECT_TIMEOUT = 1.0
"""The reference servers' options, as both suites' READMEs give them."""

PACE = 0.005
"""Seconds between two WebSocket messages of the Socket.IO test server.

The suite's client awaits one ``message`` event at a time with a ``once``
listener (``ws`` 8.5, which emits every frame of one TCP read in the same
tick): a second frame that arrives in the same read as the awaited one is
lost before the next listener is attached.  The reference server never
writes two packets in one event-loop turn (engine.io waits for each write's
callback before the next), so the suite passes against it by timing.
chatd writes back to back (the CONNECT reply and the ``auth`` event leave
together); spacing them here, in the test server only, gives the suite
the timing it depends on."""

NAMESPACES = frozenset({sio.DEFAULT_NAMESPACE, "/custom"})
CLOSE_NORMAL = 1000

ENGINE_IO_PATH = "/engine.io/"
SOCKET_IO_PATH = "/testsuite/socket.io/"
PREFIX = "/testsuite"
"""Both suites build their URLs as ``${URL}/engine.io/`` and
``${URL}/socket.io/``: with ``URL`` set to ``http://host:port/testsuite``
each finds its server, and ``/socket.io/`` itself stays chatd's."""


def suite_settings(open_handshake_timeout: float, close_handshake_timeout: float) -> EngineSettings:
    """The suites' timings; the upgrade and the polling close are bounded
    like chatd's own."""
    return EngineSettings(
        ping_interval=PING_INTERVAL,
        ping_timeout=PING_TIMEOUT,
        max_payload=MAX_PAYLOAD,
        upgrade_timeout=open_handshake_timeout,
        close_timeout=close_handshake_timeout,
        connect_timeout=CONNECT_TIMEOUT,
    )


def send_message(socket: EngineSocket, data: str | bytes) -> None:
    """One Engine.IO message, text or binary.  chatd itself never sends a
    binary message, so the engine has no call for it: the frame is made
    here, in the current transport's format (a binary WebSocket frame, or a
    ``b<base64>`` polling record)."""
    if isinstance(data, str):
        socket.send(eio.encode(eio.MESSAGE, data))
        return
    transport = socket.transport
    if transport.name == "websocket":
        frame: bytes = PreparedMessage(data, True, False, True).payloadHybi
    else:
        frame = b"b" + base64.b64encode(data) + eio.SEPARATOR
    transport.write(frame)


class _Handler:
    """What both toy servers share: the engine's ``SocketHandler`` calls
    they do not need, and not writing once a close started (as the
    engine's own ``send`` does not)."""

    def __init__(self, socket: EngineSocket) -> None:
        self._socket = socket
        self._closing = False

    def opened(self) -> None:
        """An echo needs no Socket.IO CONNECT and has no timer to start."""

    def transport_changed(self, previous: Transport) -> None:
        """An echo frames nothing in advance: each reply is framed for the
        transport current when it is sent."""

    def closing(self) -> None:
        self._closing = True

    def closed(self, clean: bool, code: int, reason: str) -> None:
        self._closing = True

    def _send(self, data: str | bytes) -> None:
        if not self._closing and self._socket.open:
            send_message(self._socket, data)


class EngineEcho(_Handler):
    """The Engine.IO suite's server: ``socket.on("data", d => socket.send(d))``."""

    def message(self, data: str | bytes) -> None:
        self._send(data)


class SocketIOEcho(_Handler):
    """The Socket.IO suite's server, on one Engine.IO session.  Like
    socket.io's ``Client``: a session joins namespaces one CONNECT at a
    time and stays open when it leaves them all (the heartbeat goes on);
    a packet that does not decode, or an attachment out of place, ends the
    whole session; packets for a namespace it has not joined are ignored."""

    def __init__(self, socket: EngineSocket, clock: IReactorTime, connect_timeout: float) -> None:
        super().__init__(socket)
        self._clock = clock
        self._connect_timeout = connect_timeout
        self.namespaces: dict[str, str] = {}
        """Joined namespace → its Socket.IO sid."""
        self._assembler: sio.BinaryAssembler | None = None
        self._connect_timer: IDelayedCall | None = None
        self._outbox: deque[str | bytes] = deque()
        self._pacer: IDelayedCall | None = None

    def opened(self) -> None:
        self._connect_timer = self._clock.callLater(self._connect_timeout, self._no_connect)

    def closed(self, clean: bool, code: int, reason: str) -> None:
        super().closed(clean, code, reason)
        self._cancel_connect_timer()
        self.namespaces.clear()
        self._outbox.clear()
        if self._pacer is not None and self._pacer.active():
            self._pacer.cancel()
        self._pacer = None

    def _send(self, data: str | bytes) -> None:
        """Over WebSocket, one message per ``PACE`` (see there)."""
        if self._socket.transport.name != "websocket":
            super()._send(data)
        elif self._pacer is None:
            super()._send(data)
            self._pacer = self._clock.callLater(PACE, self._next)
        else:
            self._outbox.append(data)

    def _next(self) -> None:
        self._pacer = None
        if self._outbox:
            super()._send(self._outbox.popleft())
            self._pacer = self._clock.callLater(PACE, self._next)

    def message(self, data: str | bytes) -> None:
        if isinstance(data, bytes):
            self._attachment(data)
            return
        if self._assembler is not None:
            self._socket.protocol_error("a text packet while attachments were awaited")
            return
        try:
            packet = sio.decode(data)
        except sio.SocketIOError as e:
            self._socket.protocol_error(e.message)
            return
        if packet.type in (sio.BINARY_EVENT, sio.BINARY_ACK):
            self._assembler = sio.BinaryAssembler(packet)
        else:
            self._dispatch(packet)

    def _attachment(self, data: bytes) -> None:
        assembler = self._assembler
        if assembler is None:
            self._socket.protocol_error("a binary attachment without its packet")
            return
        try:
            packet = assembler.add(data)
        except sio.SocketIOError as e:
            self._assembler = None
            self._socket.protocol_error(e.message)
            return
        if packet is not None:
            self._assembler = None
            self._dispatch(packet)

    def _dispatch(self, packet: sio.SioPacket) -> None:
        namespace = packet.namespace
        if packet.type == sio.CONNECT:
            self._connect(namespace, packet.data)
        elif namespace not in self.namespaces:
            return
        elif packet.type == sio.DISCONNECT:
            del self.namespaces[namespace]
        elif packet.type == sio.EVENT:
            self._event(packet)
        # An ACK or a CONNECT_ERROR from the client: nothing waits for one.

    def _connect(self, namespace: str, auth: Any) -> None:
        if namespace not in NAMESPACES:
            self._emit_raw(sio.encode_connect_error("Invalid namespace", namespace=namespace))
            return
        self._cancel_connect_timer()
        sid = self.namespaces[namespace] = secrets.token_urlsafe(15)
        self._emit(sio.CONNECT, {"sid": sid}, namespace)
        self._emit(sio.EVENT, ["auth", auth if auth is not None else {}], namespace)

    def _event(self, packet: sio.SioPacket) -> None:
        if packet.namespace != sio.DEFAULT_NAMESPACE:
            return  # /custom has no event handlers
        name, *args = packet.data
        if name == "message":
            self._emit(sio.EVENT, ["message-back", *args])
        elif name == "message-with-ack" and packet.ack_id is not None:
            self._emit(sio.ACK, args, ack_id=packet.ack_id)

    def _emit(
        self,
        kind: int,
        data: Any,
        namespace: str = sio.DEFAULT_NAMESPACE,
        ack_id: int | None = None,
    ) -> None:
        packet, attachments = sio.encode_packet(kind, data, namespace, ack_id)
        self._emit_raw(packet)
        for attachment in attachments:
            self._send(attachment)

    def _emit_raw(self, packet: bytes) -> None:
        """A Socket.IO packet as the text of one Engine.IO message."""
        self._send(packet.decode("utf-8"))

    def _no_connect(self) -> None:
        self._connect_timer = None
        if not self.namespaces:
            self._socket.close(CLOSE_NORMAL, "no Socket.IO connect in time")

    def _cancel_connect_timer(self) -> None:
        if self._connect_timer is not None and self._connect_timer.active():
            self._connect_timer.cancel()
        self._connect_timer = None


class _Endpoint:
    """One engine with its own settings, its Autobahn factory and its
    resource: what ``server.SocketIOServer`` builds for ``/socket.io/``,
    with another application on top."""

    def __init__(
        self,
        settings: EngineSettings,
        clock: IReactorTime,
        handler: HandlerFactory,
        open_handshake_timeout: float,
        close_handshake_timeout: float,
    ) -> None:
        def polling(socket: EngineSocket) -> PollingTransport:
            return PollingTransport(socket, clock, settings.close_timeout)

        self.engine = EngineServer(settings, clock, handler, polling)
        self.ws_factory = EngineWebSocketFactory(self.engine, close_handshake_timeout)
        # The reference servers are configured with cors: {origin: "*"}.
        self.resource = SocketIOResource(self.engine, self.ws_factory, OriginPolicy(("*",)))


class ProtocolTestSuites:
    """The two servers; ``engine_io`` goes on the site at ``/engine.io``
    (and ``/testsuite/engine.io``), ``socket_io`` at ``/testsuite/socket.io``."""

    def __init__(
        self, clock: IReactorTime, open_handshake_timeout: float, close_handshake_timeout: float
    ) -> None:
        settings = suite_settings(open_handshake_timeout, close_handshake_timeout)

        def echo(socket: EngineSocket) -> EngineEcho:
            return EngineEcho(socket)

        def socketio(socket: EngineSocket) -> SocketIOEcho:
            return SocketIOEcho(socket, clock, settings.connect_timeout)

        timeouts = (open_handshake_timeout, close_handshake_timeout)
        self.engine_io = _Endpoint(settings, clock, echo, *timeouts)
        self.socket_io = _Endpoint(settings, clock, socketio, *timeouts)
        log.warn(
            "socketio_test_suites is on: {engine_io} and {socket_io} serve the protocol test "
            "suites' echo servers, without authentication. For testing only.",
            engine_io=ENGINE_IO_PATH,
            socket_io=SOCKET_IO_PATH,
        )

    def close_all(self) -> None:
        """On shutdown: these sessions belong to no chatd session, so the
        hub's drain does not see them."""
        for endpoint in (self.engine_io, self.socket_io):
            endpoint.engine.close_all(CLOSE_GOING_AWAY, "server shutting down")
