"""The WebSocket transport of Engine.IO, on Autobahn.

Each text frame is one Engine.IO packet, each binary frame one binary
message.  A connection with a ``sid`` is an upgrade probe of that polling
session; one without is a handshake over WebSocket.  Autobahn's own pings
are off (Engine.IO has its heartbeat), its message limit is
``max_payload`` (over it: close 1009, as on ``/ws``).

Writes to the socket take the same fast path as ``/ws``
(``socket_write.direct_writer``): fan-out bytes of a WebSocket-transport
client go straight to its socket.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IPushProducer

from chatd.bindings.socket_write import (
    buffered_bytes,
    defer_autobahn_pformat,
    direct_writer,
    socket_transport,
)
from chatd.bindings.socketio import eio
from chatd.bindings.socketio.engine import EngineServer, EngineSocket
from chatd.bindings.socketio.transports import Write, frame_event_websocket
from chatd.bindings.websocket import frame_text, offered_token, protocol_options

CLOSE_PROTOCOL_ERROR = 1002


class WebSocketTransport:
    """The ``Transport`` face of one Engine.IO WebSocket connection."""

    name = "websocket"
    framer = staticmethod(frame_event_websocket)
    # One per connection: slots keep an idle connection's memory down.
    __slots__ = ("_protocol", "_tcp", "_owner", "write")

    def __init__(self, protocol: EngineWebSocketProtocol) -> None:
        self._protocol = protocol
        transport: Any = protocol.transport
        self._tcp = transport
        self._owner: FileDescriptor | None = socket_transport(transport)
        self.write: Write = direct_writer(transport, self._owner)

    def frame(self, packet: bytes) -> bytes:
        return frame_text(packet)

    def fast_writer(self) -> Write:
        return self.write

    def write_queued(self, data: bytes) -> None:
        self._tcp.write(data)

    def buffered_bytes(self) -> int | None:
        return buffered_bytes(self._owner)

    def register_producer(self, producer: IPushProducer) -> None:
        self._tcp.unregisterProducer()
        self._tcp.registerProducer(producer, True)

    def unregister_producer(self) -> None:
        self._tcp.unregisterProducer()

    def close(self, code: int, reason: str) -> None:
        self._protocol.close_with(code, reason)

    def abort(self) -> None:
        self._protocol.dropConnection(abort=True)


class EngineWebSocketProtocol(WebSocketServerProtocol):
    """One WebSocket under ``/socket.io/``."""

    factory: EngineWebSocketFactory

    def __init__(self) -> None:
        super().__init__()
        self._sid: str | None = None
        self._token: str | None = None
        self._socket: EngineSocket | None = None
        self._transport: WebSocketTransport | None = None
        self._probe = False

    def onConnect(self, request: ConnectionRequest) -> None:
        sids = request.params.get("sid")
        self._sid = sids[0] if sids else None
        self._token = offered_token(request)

    def onOpen(self) -> None:
        transport = self._transport = WebSocketTransport(self)
        server = self.factory.engine
        if self._sid is None:
            self._socket = server.open_websocket(transport, self.peer, self._token)
            return
        socket = server.get(self._sid)
        if socket is None or not socket.probe(transport):
            self.close_with(CLOSE_PROTOCOL_ERROR, "this session cannot upgrade")
            return
        self._socket, self._probe = socket, True

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        socket, transport = self._socket, self._transport
        if socket is None or transport is None:
            return
        if isBinary:
            packet = eio.Packet(eio.MESSAGE, payload)
        else:
            try:
                packet = eio.decode_text(payload.decode("utf-8"))
            except eio.EngineIOError as e:
                self._bad_packet(socket, transport, str(e))
                return
        if self._probe and socket.transport is not transport:
            socket.probe_received(transport, packet)
        else:
            socket.received(packet)

    def _bad_packet(self, socket: EngineSocket, transport: WebSocketTransport, reason: str) -> None:
        if socket.transport is transport:
            socket.protocol_error(reason)
        else:
            socket.probe_closed(transport)
            self.close_with(CLOSE_PROTOCOL_ERROR, reason)

    def sendCloseFrame(
        self, code: int | None = None, reasonUtf8: bytes | None = None, isReply: bool = False
    ) -> None:
        # Whoever starts the closing handshake, no packet may follow it.
        if self._socket is not None and self._transport is not None:
            self._socket.transport_closing(self._transport)
        super().sendCloseFrame(code, reasonUtf8, isReply)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        socket, transport = self._socket, self._transport
        if socket is not None and transport is not None:
            socket.transport_closed(transport, wasClean, code or 1006, reason or "")

    def close_with(self, code: int, reason: str) -> None:
        """Any close code, 1001 and 4xxx included (Autobahn's public
        ``sendClose`` refuses 1001)."""
        if self.state == self.STATE_OPEN:
            self.sendCloseFrame(code, reason.encode("utf-8"), isReply=False)


class EngineWebSocketFactory(WebSocketServerFactory):
    """Autobahn's side of ``/socket.io/``: the options, and the engine the
    connections belong to."""

    def __init__(
        self,
        engine: EngineServer,
        close_handshake_timeout: float,
    ) -> None:
        super().__init__(server="chatd")
        defer_autobahn_pformat()
        self.protocol = EngineWebSocketProtocol
        self.engine = engine
        max_payload = engine.settings.max_payload
        # Engine.IO pings itself (no Autobahn auto-ping); the resource
        # checked the Origin before handing the upgrade over.
        self.setProtocolOptions(**protocol_options(max_payload, close_handshake_timeout))
