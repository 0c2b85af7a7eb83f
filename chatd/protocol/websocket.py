"""The native ``/ws`` binding on Autobahn.

``ChatdServerProtocol`` is one client connection: it authenticates (header,
``?token=`` or a first ``auth`` frame), parses envelopes, hands requests to
the shared ``Dispatcher`` and writes replies.  It is the domain's
``Connection``: the registry hands it prepared frames through
``send_frame``, which writes the bytes straight to the transport — the
fan-out fast path (one frame per event, nothing per recipient but the
write).

Slow consumers: the connection registers a streaming producer on its
transport, so Twisted tells it when the kernel stops taking bytes.  From
then until the buffer drains, every fan-out byte is counted; past
``max_send_buffer`` the connection stops receiving events and is closed
with 4029, so one stalled client cannot grow the server's memory.
"""

from __future__ import annotations

import pprint
import secrets
from collections.abc import Callable
from typing import Any

import autobahn.websocket.protocol as _autobahn_protocol
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from chatd.auth import AuthError, TokenVerifier
from chatd.config import Config
from chatd.domain.models import Identity, Published
from chatd.domain.sessions import Sessions
from chatd.errors import ChatError, ErrorCode
from chatd.metrics import Metrics
from chatd.protocol.dispatch import Dispatcher
from chatd.protocol.envelope import (
    Envelope,
    EnvelopeError,
    encode_ack,
    encode_error,
    encode_push,
    parse_envelope,
    wrap_push,
)
from chatd.protocol.requests import Auth

log = Logger()


class _LazyPformat:
    """Formats only if a log observer ever formats it."""

    __slots__ = ("_value",)

    def __init__(self, value: Any) -> None:
        self._value = value

    def __format__(self, spec: str) -> str:
        return format(pprint.pformat(self._value), spec)

    def __str__(self) -> str:
        return pprint.pformat(self._value)


# Autobahn pretty-prints every connection's configuration for a debug log
# line as the connection opens, whether or not debug logging is on: about a
# fifth of chatd's CPU per accepted connection (py-spy).  Handing it a lazy
# value keeps the debug line and drops the cost.
_autobahn_protocol.pformat = _LazyPformat

CLOSE_GOING_AWAY = 1001
CLOSE_UNAUTHENTICATED = 4001
CLOSE_BY_ADMIN = 4003
CLOSE_POLICY = 4008
CLOSE_SLOW_CONSUMER = 4029


def _discard(data: bytes) -> None:
    """Where frames go once a connection is closing."""


@implementer(IPushProducer)
class _SendBufferWatch:
    """Told by the transport when its write buffer is over the high-water
    mark (pause) and when it drained (resume)."""

    def __init__(self, conn: ChatdServerProtocol) -> None:
        self._conn = conn

    def pauseProducing(self) -> None:
        # Twisted calls this on every write while the buffer is full.
        self._conn._paused()

    def resumeProducing(self) -> None:
        self._conn._resumed()

    def stopProducing(self) -> None:
        self._conn._resumed()


def _socket_transport(transport: Any) -> Any:
    """The transport that owns the socket's write buffer (TLS wraps one).

    Checked by type: a TLS protocol wrapper forwards unknown attributes to
    the transport below it, so asking it for ``socket`` or ``dataBuffer``
    would answer with the raw TCP connection's (and writing there would
    bypass encryption)."""
    for _ in range(4):
        if isinstance(transport, FileDescriptor):
            return transport
        transport = transport.__dict__.get("transport") if hasattr(transport, "__dict__") else None
        if transport is None:
            return None
    return None


def _buffered_bytes(transport: Any) -> int | None:
    if transport is None:
        return None
    try:
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    except AttributeError:
        return None


class _TokenBucket:
    """Requests per second per connection.  ``strikes`` counts refused
    requests and only starts over after a full second without a refusal, so
    a client that keeps flooding accumulates strikes even though a request
    squeezes through now and then."""

    __slots__ = ("rate", "burst", "tokens", "stamp", "strikes", "last_refusal")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now
        self.strikes = 0
        self.last_refusal = 0.0

    def take(self, now: float) -> bool:
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            if self.strikes and now - self.last_refusal >= 1.0:
                self.strikes = 0
            return True
        self.tokens = tokens
        self.strikes += 1
        self.last_refusal = now
        return False


class ChatdServerProtocol(WebSocketServerProtocol):
    factory: ChatdWebSocketFactory

    def __init__(self) -> None:
        super().__init__()
        self.connection_id = "c_" + secrets.token_hex(8)
        self.identity: Identity | None = None
        self._offered_token: str | None = None
        self._auth_timer: IDelayedCall | None = None
        # The fan-out fast path: while the transport takes bytes, send_frame
        # IS transport.write (no Python frame of ours per recipient); while
        # it is paused, the checked variant; once closing, a sink.
        self.send_frame: Callable[[bytes], None] = _discard
        self._backlog: int | None = None
        self._buffer_owner: Any = None
        self._fast_send: Callable[[bytes], None] = _discard
        self._bucket: _TokenBucket | None = None
        self._detached = False
        self._open_logged = True

    # -- opening and authentication -----------------------------------------

    def onConnect(self, request: ConnectionRequest) -> None:
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, credentials = header.partition(" ")
            self._offered_token = credentials.strip() if scheme.lower() == "bearer" else ""
        else:
            tokens = request.params.get("token")
            if tokens:
                self._offered_token = tokens[0]
        return None

    def onOpen(self) -> None:
        factory = self.factory
        factory.connections[self] = None
        self._opened_at = factory.clock.seconds()
        self._bucket = _TokenBucket(
            factory.config.rate_limit, factory.config.rate_burst, factory.clock.seconds()
        )
        self._buffer_owner = _socket_transport(self.transport)
        self._fast_send = self._fast_sender()
        self.send_frame = self._fast_send
        self.transport.unregisterProducer()
        self.transport.registerProducer(_SendBufferWatch(self), True)
        if self._offered_token is not None:
            # One log line for the open, with the user when the token in the
            # URL or header is good (the common case: open + auth in one).
            token, self._offered_token = self._offered_token, None
            self._open_logged = False
            self._authenticate(token, None)
        else:
            self._log_open(None)
            self._auth_timer = factory.clock.callLater(
                factory.config.auth_timeout, self._auth_timed_out
            )

    def _log_open(self, user: str | None) -> None:
        self._open_logged = True
        log.info(
            "connection {connection} opened from {peer} as {user}",
            event="connection.open",
            connection=self.connection_id,
            peer=self.peer,
            user=user,
        )

    def _auth_timed_out(self) -> None:
        self._auth_timer = None
        if self.identity is None:
            log.info(
                "connection {connection} did not authenticate in time",
                event="auth.failed",
                connection=self.connection_id,
                reason="timeout",
            )
            self.close_with(CLOSE_UNAUTHENTICATED, "authentication timeout")

    def _authenticate(self, token: Any, envelope: Envelope | None) -> None:
        try:
            identity = self.factory.verifier.verify(token)
        except AuthError as e:
            if not self._open_logged:
                self._log_open(None)
            log.info(
                "authentication failed on {connection}: {reason}",
                event="auth.failed",
                connection=self.connection_id,
                user=self.identity.user_id if self.identity else None,
                reason=str(e),
            )
            self._error(
                ErrorCode.UNAUTHORIZED,
                f"authentication failed: {e}",
                envelope.id if envelope else None,
                "auth",
            )
            if self.identity is None:
                self.close_with(CLOSE_UNAUTHENTICATED, "authentication failed")
            # An authenticated connection whose token refresh failed keeps
            # the identity it proved; the bad frame alone closes nothing.
            return
        first = self.identity is None
        if not first:
            if identity.user_id != self.identity.user_id:
                self.reply_error(
                    envelope,
                    ErrorCode.FORBIDDEN,
                    "connection is already authenticated as another user",
                )
                return
            self.identity = identity
        else:
            self.identity = identity
            if self._auth_timer is not None and self._auth_timer.active():
                self._auth_timer.cancel()
            self._auth_timer = None
        data = {"userId": identity.user_id, "connectionId": self.connection_id}
        self.send_event("authenticated", data)
        if envelope is not None and envelope.id is not None:
            self._send(encode_ack(envelope.id, data))
        if first:
            if not self._open_logged:
                self._log_open(identity.user_id)
            else:
                log.info(
                    "connection {connection} authenticated as {user}",
                    event="auth.ok",
                    connection=self.connection_id,
                    user=identity.user_id,
                )
            self.factory.sessions.opened(self)

    # -- requests -------------------------------------------------------------

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """No frame, however malformed, may escape into Autobahn (which
        would drop the connection): anything unexpected is logged and
        answered with SERVER_ERROR."""
        if self._detached:
            return
        try:
            self._on_frame(payload)
        except Exception:
            log.failure(
                "unexpected failure handling a frame on {connection}", connection=self.connection_id
            )
            self._error(ErrorCode.SERVER_ERROR, "internal error; the request was not completed")

    def _on_frame(self, payload: bytes) -> None:
        bucket = self._bucket
        if bucket is not None and not bucket.take(self.factory.clock.seconds()):
            self._rate_limited(payload, bucket)
            return
        try:
            envelope = parse_envelope(payload)
        except EnvelopeError as e:
            self._error(e.code, e.message, e.request_id, e.event)
            return
        if envelope.type == "auth":
            self._on_auth(envelope)
            return
        self.factory.dispatcher.dispatch(self, envelope, self.identity is not None)

    def _on_auth(self, envelope: Envelope) -> None:
        try:
            request = Auth.parse(envelope.data)
        except ChatError as e:
            self.reply_error(envelope, e.code, e.message)
            if self.identity is None:
                self.close_with(CLOSE_UNAUTHENTICATED, "authentication failed")
            return
        self._authenticate(request.token, envelope)

    def _rate_limited(self, payload: bytes, bucket: _TokenBucket) -> None:
        if bucket.strikes > self.factory.config.rate_burst:
            log.info(
                "closing flooding connection {connection} ({user})",
                event="connection.flooding",
                connection=self.connection_id,
                user=self.identity.user_id if self.identity else None,
            )
            self.close_with(CLOSE_POLICY, "flooding")
            return
        try:
            envelope = parse_envelope(payload)
        except EnvelopeError:
            envelope = Envelope("", None, None)
        self.reply_error(envelope, ErrorCode.RATE_LIMIT_EXCEEDED, "too many requests; slow down")

    # -- Responder ------------------------------------------------------------

    def reply(self, envelope: Envelope, confirmation: str | None, data: dict[str, Any]) -> None:
        if envelope.id is not None:
            self._send(encode_ack(envelope.id, data))
        elif confirmation is not None:
            self._send(encode_push(confirmation, data))

    def reply_error(self, envelope: Envelope | None, code: str, message: str) -> None:
        if envelope is None:
            self._error(code, message)
        else:
            self._error(code, message, envelope.id, envelope.type or None)

    def _error(
        self, code: str, message: str, request_id: str | None = None, event: str | None = None
    ) -> None:
        self.note_error(code, event)
        self._send(encode_error(code, message, request_id, event))

    def note_error(self, code: str, request: str | None) -> None:
        """Count and log an error sent to this connection (the code and the
        request's event type; never the request's content)."""
        metrics = self.factory.metrics
        if metrics is not None:
            metrics.error(code)
        log.info(
            "sent {code} to {connection} ({user}) for {request}",
            event="error.sent",
            code=str(code),
            request=request,
            connection=self.connection_id,
            user=self.identity.user_id if self.identity else None,
        )

    # -- Connection (what the domain sends through) ------------------------------

    def _paused(self) -> None:
        if self._backlog is None and not self._detached:
            self._backlog = 0
            self.send_frame = self._send_checked

    def _resumed(self) -> None:
        if self._backlog is not None and not self._detached:
            self._backlog = None
            self.send_frame = self._fast_send

    def _fast_sender(self) -> Callable[[bytes], None]:
        """The write used for fan-out while the transport keeps up.

        On a plain TCP transport with nothing queued, hand the bytes to the
        socket at once: Twisted's own path would register the socket for
        writability, send after the next poll, and unregister it again — two
        epoll_ctl calls and several Python frames per recipient per turn.
        Whatever the kernel does not take right away, and everything while
        Twisted holds queued bytes of this connection (acks, replies), goes
        through ``transport.write``, so ordering and backpressure stay
        Twisted's.  TLS and other transports always use ``transport.write``."""
        transport = self.transport
        tcp = self._buffer_owner
        if (
            tcp is not transport
            or not hasattr(tcp, "socket")
            or not hasattr(tcp, "dataBuffer")
            or getattr(tcp, "TLS", False)
        ):
            # TLS started inside the TCP transport (listenSSL does that): its
            # write encrypts, the raw socket must never be written to.
            return transport.write
        sock_send = tcp.socket.send
        write = tcp.write

        def send(frame: bytes) -> None:
            if (
                tcp._tempDataLen
                or tcp.offset != len(tcp.dataBuffer)
                or tcp.disconnecting
                or not tcp.connected
            ):
                write(frame)
                return
            try:
                sent = sock_send(frame)
            except BlockingIOError:
                sent = 0
            except OSError:
                write(frame)  # let Twisted's path find and report the error
                return
            if sent < len(frame):
                write(frame[sent:])

        return send

    def _send_checked(self, frame: bytes) -> None:
        if self._behind(len(frame)):
            self._overflowed()
        else:
            self.transport.write(frame)

    def _behind(self, adding: int) -> bool:
        """Only asked while the transport is paused: is this connection more
        than ``max_send_buffer`` bytes behind?  Twisted's socket transports
        expose their buffer, so a client that reads steadily but stays a
        little behind is not mistaken for a stalled one; for others count
        what was queued since the pause."""
        limit = self.factory.config.max_send_buffer
        buffered = _buffered_bytes(self._buffer_owner)
        if buffered is None:
            self._backlog = (self._backlog or 0) + adding
            return self._backlog > limit
        return buffered + adding > limit

    def send_event(self, event_type: str, data: dict[str, Any]) -> None:
        self._send(encode_push(event_type, data))

    def _send(self, payload: bytes) -> None:
        """A reply or an event for this connection only: framed here and
        handed to the same write as fan-out, so an ack goes out at once
        instead of queueing behind the turn's fan-out to everyone else."""
        if not self._detached:
            self.send_frame(self.factory.prepareMessage(payload).payloadHybi)

    def _overflowed(self) -> None:
        log.warn(
            "closing slow consumer {connection} ({user}): more than {limit} bytes waiting",
            event="connection.slow",
            connection=self.connection_id,
            user=self.identity.user_id if self.identity else None,
            limit=self.factory.config.max_send_buffer,
        )
        self.close_with(CLOSE_SLOW_CONSUMER, "slow consumer: send buffer overflowed")

    # -- closing --------------------------------------------------------------

    def disconnect(self, code: int, reason: str) -> None:
        self.close_with(code, reason)

    def close_with(self, code: int, reason: str) -> None:
        """Close with a code of PROTOCOL.md section 3 (1001 included, which
        Autobahn's public sendClose does not allow)."""
        if self.state == self.STATE_OPEN:
            self.sendCloseFrame(code, reason.encode("utf-8"), isReply=False)
        else:
            self._detach()

    def sendCloseFrame(
        self, code: int | None = None, reasonUtf8: bytes | None = None, isReply: bool = False
    ) -> None:
        # Whoever starts the closing handshake, no event frame may follow
        # the close frame: leave the registry first.
        self._detach()
        super().sendCloseFrame(code, reasonUtf8, isReply)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self._detach()
        if self.factory.connections.pop(self, 0) is None:
            opened = getattr(self, "_opened_at", None)
            log.info(
                "connection {connection} ({user}) closed with {code} {reason}",
                event="connection.close",
                connection=self.connection_id,
                user=self.identity.user_id if self.identity else None,
                code=code,
                reason=reason or "",
                clean=wasClean,
                seconds=round(self.factory.clock.seconds() - opened, 3)
                if opened is not None
                else None,
            )
        closed = self.factory.closed_waiters.pop(self, None)
        if closed is not None:
            closed.callback(None)

    def _detach(self) -> None:
        if self._detached:
            return
        self._detached = True
        self.send_frame = _discard
        if self._auth_timer is not None and self._auth_timer.active():
            self._auth_timer.cancel()
        self._auth_timer = None
        if self.identity is not None:
            self.factory.sessions.closed(self)


class ChatdWebSocketFactory(WebSocketServerFactory):
    protocol = ChatdServerProtocol

    def __init__(
        self,
        config: Config,
        clock: IReactorTime,
        verifier: TokenVerifier,
        sessions: Sessions,
        dispatcher: Dispatcher,
    ) -> None:
        super().__init__(server="chatd")
        self.config = config
        self.clock = clock
        self.verifier = verifier
        self.sessions = sessions
        self.metrics: Metrics | None = None
        self.dispatcher = dispatcher
        self.connections: dict[ChatdServerProtocol, None] = {}
        self.closed_waiters: dict[ChatdServerProtocol, Deferred[None]] = {}
        self.setProtocolOptions(
            maxFramePayloadSize=config.max_message_size,
            maxMessagePayloadSize=config.max_message_size,
            openHandshakeTimeout=config.open_handshake_timeout,
            closeHandshakeTimeout=config.close_handshake_timeout,
            autoPingInterval=config.ping_interval,
            autoPingTimeout=config.ping_timeout if config.ping_interval else 0,
            autoPingRestartOnAnyTraffic=True,
            perMessageCompressionAccept=lambda offers: None,
            utf8validateIncoming=True,
            failByDrop=False,
            echoCloseCodeReason=False,
            allowedOrigins=["*"],
            allowNullOrigin=True,
            tcpNoDelay=True,
            autoFragmentSize=0,
            webStatus=False,
        )

    def frame(self, event: Published) -> bytes:
        """The framer the registry uses: one prepared frame per event."""
        return self.prepareMessage(wrap_push(event.type, event.data)).payloadHybi

    def shutdown(self, timeout: float) -> Deferred[None]:
        """Close every connection with 1001 and wait (at most ``timeout``)
        for the closing handshakes."""
        waiting = []
        for conn in list(self.connections):
            d: Deferred[None] = Deferred()
            self.closed_waiters[conn] = d
            waiting.append(d)
            conn.close_with(CLOSE_GOING_AWAY, "server shutting down")
        if not waiting:
            return succeed(None)
        all_closed = DeferredList(waiting)
        timer = self.clock.callLater(timeout, self._abort_remaining)
        all_closed.addBoth(lambda _: timer.cancel() if timer.active() else None)
        return all_closed.addCallback(lambda _: None)

    def _abort_remaining(self) -> None:
        for conn in list(self.connections):
            conn.dropConnection(abort=True)
