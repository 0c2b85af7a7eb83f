"""The plain-WebSocket binding on Autobahn: ``/ws`` (the native envelope,
PROTOCOL.md section 3), the seeds' dialects at their own paths, and ``/``,
where the first frame picks the dialect (``chatd.bindings.codec``).

Thin by design: ``ChatdServerProtocol`` takes the token offered with the
upgrade (``Authorization: Bearer`` or ``?token=``), hands each message to
its connection's ``Codec`` (which turns it into the session's requests),
encodes what the session sends back through the same codec, and supplies
the transport.  Authentication, limits, slow consumers and dispatch are the
session's.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred

from chatd.bindings.codec import NATIVE, Chooser, Codec, Dialect, frame_event
from chatd.bindings.socket_write import (
    Write,
    buffered_bytes,
    defer_autobahn_pformat,
    direct_writer,
    frame_text,
    socket_transport,
)
from chatd.bindings.socketio.origins import OriginPolicy
from chatd.config import Config
from chatd.domain.interfaces import Framer
from chatd.session.hub import SessionHub
from chatd.session.session import Session

__all__ = [
    "ChatdServerProtocol",
    "ChatdWebSocketFactory",
    "frame_event",
    "frame_text",
    "offered_token",
    "protocol_options",
]


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
    chatd's ``OriginPolicy``'s, checked in ``onConnect`` (``allowedOrigins``
    is not where chatd decides).

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
    """One plain-WebSocket connection: the ``Binding`` of its ``Session``,
    speaking its factory's dialect (or, on ``/``, the one its first frame
    picks)."""

    factory: ChatdWebSocketFactory

    def __init__(self) -> None:
        super().__init__()
        self.session: Session | None = None
        self.codec: Codec = NATIVE.codec()
        self._offered_token: str | None = None
        self._owner: FileDescriptor | None = None

    def _transport(self) -> Any:
        """Twisted's transport (a TCP connection, or TLS over one)."""
        return self.transport

    @property
    def framer(self) -> Framer:
        """Fan-out frames for this connection's dialect (one prepared frame
        per event for all of them)."""
        return self.codec.framer

    @property
    def transport_name(self) -> str:
        return self.codec.transport_name

    def use_codec(self, codec: Codec) -> None:
        """The dialect is known (on ``/``: the first frame picked it)."""
        self.codec = codec
        self._bind_codec()

    def _bind_codec(self) -> None:
        """A codec that keeps its session (seed 000's) is told it as soon as
        both exist, before any frame: a token in the URL authenticates at
        open."""
        bind = getattr(self.codec, "bind_session", None)
        if bind is not None and self.session is not None:
            bind(self.session)

    # -- Autobahn's callbacks ------------------------------------------------------

    def onConnect(self, request: ConnectionRequest) -> None:
        # The one origin policy (allowed_origins), whichever way the upgrade
        # came (the front door or the Site): a foreign page gets 403.
        headers = request.headers
        if not self.factory.origins.allows_origin(headers.get("origin"), headers.get("host")):
            raise ConnectionDeny(403, "Forbidden: this Origin is not allowed (allowed_origins)")
        self._offered_token = offered_token(request)

    def onOpen(self) -> None:
        transport = self._transport()
        self._owner = socket_transport(transport)
        token, self._offered_token = self._offered_token, None
        dialect = self.factory.dialect
        if dialect is None:
            # On "/": nothing is pushed, the token not even checked, until
            # the first frame has picked the dialect.
            self.codec = Chooser(self, self.factory.dialects, token)
            token = None
        else:
            self.codec = dialect.codec()
        session = self.session = self.factory.hub.session(self, self.peer)
        self._bind_codec()
        transport.unregisterProducer()
        transport.registerProducer(session, True)
        session.open(token)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        session = self.session
        if session is not None:
            self.codec.received(session, payload, isBinary)

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
        return self.codec.frame_ack(request_id, data)

    def frame_push(self, event_type: str, data: Any) -> bytes:
        return self.codec.frame_push(event_type, data)

    def frame_error(
        self, code: str, message: str, request_id: str | None, event: str | None
    ) -> bytes:
        return self.codec.frame_error(code, message, request_id, event)

    corks = True  # one WebSocket over one stream: replies may join the turn's write

    def fast_writer(self) -> Write:
        write = direct_writer(self._transport(), self._owner)
        # A dialect that must see its own fan-out (seed 000 notices new
        # direct conversations) wraps the write; the others pay nothing.
        wrap = getattr(self.codec, "wrap_writer", None)
        return wrap(write) if wrap is not None else write

    def write_queued(self, data: bytes) -> None:
        self._transport().write(data)

    def buffered_bytes(self) -> int | None:
        return buffered_bytes(self._owner)

    def pause_reading(self) -> None:
        """Stop reading the client's frames (the session asks while the
        client is far behind on what it was sent); TCP pushes back on it.
        Twisted's transports are push producers of what they read (a TLS
        wrapper hands this to the TCP connection below it)."""
        self._transport().pauseProducing()

    def resume_reading(self) -> None:
        """Read the client's frames again (the transport drained)."""
        self._transport().resumeProducing()

    def close_transport(self, code: int, reason: str) -> None:
        """Any code of PROTOCOL.md section 3, 1001 included (which
        Autobahn's public ``sendClose`` refuses)."""
        if self.state == self.STATE_OPEN:
            self.sendCloseFrame(code, reason.encode("utf-8"), isReply=False)

    def abort_transport(self) -> None:
        self.dropConnection(abort=True)


class ChatdWebSocketFactory(WebSocketServerFactory):
    """One plain-WebSocket endpoint: Autobahn's options from ``config``,
    sessions from ``hub`` (which ``connections`` and ``shutdown`` are views
    of).  ``dialect`` is the endpoint's (``/ws``: native); None is ``/``,
    where the first frame picks one of ``dialects``, asked in order."""

    def __init__(
        self,
        config: Config,
        hub: SessionHub,
        dialect: Dialect | None = NATIVE,
        dialects: tuple[Dialect, ...] = (NATIVE,),
    ) -> None:
        super().__init__(server="chatd")
        defer_autobahn_pformat()
        self.protocol = ChatdServerProtocol
        self.hub = hub
        self.dialect = dialect
        self.dialects = dialects
        self.connections = hub.open
        self.origins = OriginPolicy(config.allowed_origins)
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
