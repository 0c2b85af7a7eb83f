"""The native ``/ws`` binding on Autobahn (PROTOCOL.md section 3).

Thin by design: ``ChatdServerProtocol`` takes the token offered with the
upgrade (``Authorization: Bearer`` or ``?token=``), parses envelopes into
``(type, id, data)`` for its ``Session``, encodes what the session sends
back as native envelopes in WebSocket frames, and supplies the transport.
Authentication, limits, slow consumers and dispatch are the session's.

``frame_event`` is the registry's framer for this binding: one WebSocket
frame per event, built without a factory, so the registry can exist before
any binding does.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import PreparedMessage
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred

from chatd.bindings.socket_write import (
    Write,
    buffered_bytes,
    defer_autobahn_pformat,
    direct_writer,
    socket_transport,
)
from chatd.config import Config
from chatd.domain.models import Published
from chatd.protocol.envelope import (
    EnvelopeError,
    encode_ack,
    encode_error,
    encode_push,
    parse_envelope,
    wrap_push,
)
from chatd.session.hub import SessionHub
from chatd.session.session import Session


def frame_text(payload: bytes) -> bytes:
    """One unmasked, uncompressed WebSocket text frame (server to client)."""
    frame: bytes = PreparedMessage(payload, False, False, True).payloadHybi
    return frame


def frame_event(event: Published) -> bytes:
    """The registry's framer: an event as a native push, framed once for
    every recipient on this binding."""
    return frame_text(wrap_push(event.type, event.data))


def protocol_options(
    max_payload: int,
    close_handshake_timeout: float,
    ping_interval: float = 0,
    ping_timeout: float = 0,
) -> dict[str, Any]:
    """Every Autobahn option chatd's WebSocket endpoints rely on, set
    explicitly (``setProtocolOptions`` re-applies some defaults on each call,
    and Autobahn's own leave sizes unlimited and auto-ping off): bounded
    frames and messages, the closing handshake's timeout, no compression
    on the fan-out path, no fragmentation, no status page.  Origins are
    checked before the upgrade (``allowedOrigins`` is not where chatd
    decides).

    Autobahn's opening-handshake timer is off: both ways in (the front
    door, ``chatd.web.front``, and the ``Site``'s ``WebSocketResource``)
    hand Autobahn a complete request, which it answers in the same call, so
    the timer could never fire, and it cost a txaio timer per connection.
    The wait for that request is the front door's (``open_handshake_timeout``)
    or the ``Site``'s."""
    return {
        "maxFramePayloadSize": max_payload,
        "maxMessagePayloadSize": max_payload,
        "openHandshakeTimeout": 0,
        "closeHandshakeTimeout": close_handshake_timeout,
        "autoPingInterval": ping_interval,
        "autoPingTimeout": ping_timeout if ping_interval else 0,
        "autoPingRestartOnAnyTraffic": True,
        "perMessageCompressionAccept": lambda offers: None,
        "utf8validateIncoming": True,
        "failByDrop": False,
        "echoCloseCodeReason": False,
        "allowedOrigins": ["*"],
        "allowNullOrigin": True,
        "tcpNoDelay": True,
        "autoFragmentSize": 0,
        "webStatus": False,
    }


def offered_token(request: ConnectionRequest) -> str | None:
    """The token that came with the upgrade: a bearer ``Authorization``
    header (any other scheme offers an empty, hence failing, token), else
    the first ``?token=``."""
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, credentials = header.partition(" ")
        return credentials.strip() if scheme.lower() == "bearer" else ""
    tokens = request.params.get("token")
    return tokens[0] if tokens else None


class ChatdServerProtocol(WebSocketServerProtocol):
    """One ``/ws`` connection: the ``Binding`` of its ``Session``."""

    factory: ChatdWebSocketFactory
    # Fan-out frames for every /ws connection (one prepared frame per event).
    framer = staticmethod(frame_event)
    transport_name = "ws"

    def __init__(self) -> None:
        super().__init__()
        self.session: Session | None = None
        self._offered_token: str | None = None
        self._owner: FileDescriptor | None = None

    def _transport(self) -> Any:
        """Twisted's transport (a TCP connection, or TLS over one)."""
        return self.transport

    # -- Autobahn's callbacks ------------------------------------------------------

    def onConnect(self, request: ConnectionRequest) -> None:
        self._offered_token = offered_token(request)

    def onOpen(self) -> None:
        transport = self._transport()
        self._owner = socket_transport(transport)
        session = self.session = self.factory.hub.session(self, self.peer)
        transport.unregisterProducer()
        transport.registerProducer(session, True)
        token, self._offered_token = self._offered_token, None
        session.open(token)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        session = self.session
        if session is None:
            return
        try:
            envelope = parse_envelope(payload)
        except EnvelopeError as e:
            session.malformed(e.code, e.message, e.request_id, e.event)
            return
        except Exception:
            session.failed()
            return
        session.received(envelope.type, envelope.id, envelope.data)

    def sendCloseFrame(
        self, code: int | None = None, reasonUtf8: bytes | None = None, isReply: bool = False
    ) -> None:
        # Whoever starts the closing handshake, no event frame may follow
        # the close frame: the session leaves the registry first.
        if self.session is not None:
            self.session.detach()
        super().sendCloseFrame(code, reasonUtf8, isReply)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.session is not None:
            self.session.closed(wasClean, code, reason)

    # -- Binding (what the session asks of its transport) ---------------------------

    def frame_ack(self, request_id: str, data: Any) -> bytes:
        return frame_text(encode_ack(request_id, data))

    def frame_push(self, event_type: str, data: Any) -> bytes:
        return frame_text(encode_push(event_type, data))

    def frame_error(
        self, code: str, message: str, request_id: str | None, event: str | None
    ) -> bytes:
        return frame_text(encode_error(code, message, request_id, event))

    def fast_writer(self) -> Write:
        return direct_writer(self._transport(), self._owner)

    def write_queued(self, data: bytes) -> None:
        self._transport().write(data)

    def buffered_bytes(self) -> int | None:
        return buffered_bytes(self._owner)

    def close_transport(self, code: int, reason: str) -> None:
        """Any code of PROTOCOL.md section 3, 1001 included (which
        Autobahn's public ``sendClose`` refuses)."""
        if self.state == self.STATE_OPEN:
            self.sendCloseFrame(code, reason.encode("utf-8"), isReply=False)

    def abort_transport(self) -> None:
        self.dropConnection(abort=True)


class ChatdWebSocketFactory(WebSocketServerFactory):
    """The ``/ws`` endpoint: Autobahn's options from ``config``, sessions
    from ``hub`` (which ``connections`` and ``shutdown`` are views of)."""

    def __init__(self, config: Config, hub: SessionHub) -> None:
        super().__init__(server="chatd")
        defer_autobahn_pformat()
        self.protocol = ChatdServerProtocol
        self.hub = hub
        self.connections = hub.open
        self.setProtocolOptions(
            **protocol_options(
                config.max_message_size,
                config.close_handshake_timeout,
                ping_interval=config.ping_interval,
                ping_timeout=config.ping_timeout,
            )
        )

    def shutdown(self, timeout: float) -> Deferred[None]:
        """Close every session with 1001 and wait (at most ``timeout``) for
        the closing handshakes; stragglers are aborted."""
        return self.hub.shutdown(timeout)
