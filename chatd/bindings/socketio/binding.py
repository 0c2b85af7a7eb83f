"""The Socket.IO v5 layer of one Engine.IO session, which is the chatd
``Binding`` of the ``Session`` made when the client connects to ``/``.

Translation, and nothing else (the session authenticates, limits and
dispatches, as for ``/ws``):

* CONNECT ``/`` with ``auth: {token}`` (else the token of the handshake
  request: ``Authorization: Bearer`` or ``?token=``) opens a session with
  that token.  Success is the CONNECT reply ``40{"sid":<connectionId>}``
  followed by the ``authenticated`` event; a refused or missing token is
  CONNECT_ERROR ``44{"message","data":{"code":"UNAUTHORIZED"}}`` and the
  Engine.IO session stays open for another CONNECT, until
  ``connect_timeout``.  Any other namespace gets CONNECT_ERROR too.
* EVENT ``[name, data]`` is ``session.received(name, ack_id, data)``; the
  session's ack goes back as ACK ``43<id>[data]``, an error with an ack id
  as ``43<id>[{"error":{"code","message"}}]``, pushes and confirmations
  as EVENTs ``42["type",data]``.
* A close of the session (4001, 4003, 4008, 4029) is DISCONNECT ``41``
  then the Engine.IO close; a shutdown (1001) closes the Engine.IO session
  only, so clients reconnect as they do when a Socket.IO server restarts.
* Binary EVENTs are decoded (their attachments collected) and refused:
  chatd has no binary event.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from chatd.bindings.socketio import sio
from chatd.bindings.socketio.engine import EngineSocket
from chatd.bindings.socketio.transports import Transport, Write
from chatd.domain.interfaces import Framer
from chatd.errors import ErrorCode
from chatd.session.hub import SessionHub
from chatd.session.session import CLOSE_GOING_AWAY, CLOSE_UNAUTHENTICATED, Session

log = Logger(namespace="chatd.bindings.socketio")

CLOSE_NORMAL = 1000


class SocketIOConnection:
    """One Socket.IO connection: the engine's ``SocketHandler`` and the
    session's ``Binding``."""

    def __init__(self, engine: EngineSocket, hub: SessionHub, connect_timeout: float) -> None:
        self._engine = engine
        self._hub = hub
        self._connect_timeout = connect_timeout
        self.session: Session | None = None
        self._connecting = False
        self._connected = False
        self._assembler: sio.BinaryAssembler | None = None
        self._connect_timer: IDelayedCall | None = None

    # -- SocketHandler (what the engine tells us) ------------------------------------

    def opened(self) -> None:
        self._wait_for_connect()

    def message(self, data: str | bytes) -> None:
        if isinstance(data, bytes):
            self._attachment(data)
            return
        if self._assembler is not None:
            self._binary_incomplete()
        try:
            packet = sio.decode(data)
        except sio.SocketIOError as e:
            self._undecodable(e)
            return
        self._dispatch(packet)

    def transport_changed(self, previous: Transport) -> None:
        """Polling became WebSocket: fan-out frames the WebSocket way and
        the session produces for the new transport's buffer."""
        session = self.session
        previous.unregister_producer()
        if session is None:
            return
        current = self._engine.transport
        session.switch_framer(current.framer)
        current.register_producer(session)
        session.resumeProducing()

    def closing(self) -> None:
        if self.session is not None:
            self.session.detach()

    def closed(self, clean: bool, code: int, reason: str) -> None:
        self._cancel_connect_timer()
        session, self.session = self.session, None
        self._connected = self._connecting = False
        if session is not None:
            session.closed(clean, code, reason)

    # -- Socket.IO packets ----------------------------------------------------------------

    def _dispatch(self, packet: sio.SioPacket) -> None:
        kind = packet.type
        if kind == sio.CONNECT:
            self._connect(packet)
        elif packet.namespace != sio.DEFAULT_NAMESPACE:
            return  # never connected there: ignored, as Socket.IO does
        elif kind == sio.DISCONNECT:
            self._client_disconnect()
        elif kind == sio.EVENT:
            self._event(packet)
        elif kind in (sio.BINARY_EVENT, sio.BINARY_ACK):
            self._assembler = sio.BinaryAssembler(packet)
        elif kind == sio.ACK:
            self._refuse(packet, "chatd sends no event that waits for an ack")
        else:
            self._refuse(packet, "clients do not send CONNECT_ERROR")

    def _connect(self, packet: sio.SioPacket) -> None:
        if packet.namespace != sio.DEFAULT_NAMESPACE:
            self._send_sio(
                sio.encode_connect_error(
                    "Invalid namespace", {"code": "INVALID_NAMESPACE"}, packet.namespace
                )
            )
            return
        if self.session is not None:
            if self._connected:
                self._send_sio(sio.encode_connect(self.session.connection_id))
            return
        token = self._token(packet.data)
        if token is None:
            self._send_sio(
                sio.encode_connect_error(
                    "authentication required: send auth {token}, an Authorization header or ?token=",
                    {"code": ErrorCode.UNAUTHORIZED.value},
                )
            )
            return
        self._open_session(token)

    def _token(self, auth: dict[str, Any] | None) -> Any:
        """The CONNECT's ``auth.token``, else the handshake's token."""
        if auth is not None and "token" in auth:
            return auth["token"]
        return self._engine.offered_token

    def _open_session(self, token: Any) -> None:
        engine = self._engine
        session = self.session = self._hub.session(self, engine.peer)
        engine.transport.register_producer(session)
        self._connecting = True
        # A token that is no string is the verifier's to refuse, like any.
        session.open(token if isinstance(token, str) else _not_a_string(token))

    def _client_disconnect(self) -> None:
        session = self.session
        if session is None:
            return
        self.session = None
        self._connected = self._connecting = False
        session.closed(True, CLOSE_NORMAL, "client namespace disconnect")
        # The Engine.IO connection is the client's to close (socket.io-client
        # sends its WebSocket close right behind the 41; closing from here as
        # well would cross it, and Autobahn drops the TCP connection before
        # our close frame is out).  It may also CONNECT again; if it does
        # neither, the connect timeout ends it.
        self._wait_for_connect()

    def _event(self, packet: sio.SioPacket) -> None:
        session = self.session
        if session is None or not self._connected:
            return  # not connected to "/": ignored, as Socket.IO does
        args = packet.data
        name = args[0]
        ack = str(packet.ack_id) if packet.ack_id is not None else None
        if len(args) > 2:
            session.malformed(
                ErrorCode.INVALID_MESSAGE, "a chatd event takes one data argument", ack, name
            )
            return
        session.received(name, ack, args[1] if len(args) == 2 else None)

    def _refuse(self, packet: sio.SioPacket, message: str) -> None:
        if self.session is not None and self._connected:
            ack = str(packet.ack_id) if packet.ack_id is not None else None
            self.session.malformed(ErrorCode.INVALID_MESSAGE, message, ack, packet.event)

    def _undecodable(self, error: sio.SocketIOError) -> None:
        """A packet that is no Socket.IO: an error the client can correlate
        while connected; before that there is nothing to answer, and the
        session ends as a Socket.IO server ends it."""
        if self.session is not None and self._connected:
            ack = str(error.ack_id) if error.ack_id is not None else None
            self.session.malformed(ErrorCode.INVALID_MESSAGE, error.message, ack, error.event)
        else:
            self._engine.protocol_error(error.message)

    # -- binary attachments --------------------------------------------------------------

    def _attachment(self, data: bytes) -> None:
        assembler = self._assembler
        if assembler is None:
            if self.session is not None and self._connected:
                self.session.malformed(
                    ErrorCode.INVALID_MESSAGE, "a binary attachment without its packet"
                )
            return
        try:
            packet = assembler.add(data)
        except sio.SocketIOError as e:
            self._assembler = None
            self._undecodable(e)
            return
        if packet is not None:
            self._assembler = None
            self._refuse(packet, "binary attachments are not supported: chatd has no binary event")

    def _binary_incomplete(self) -> None:
        assembler, self._assembler = self._assembler, None
        if assembler is not None:
            self._refuse(assembler.packet, "a binary packet's attachments did not all arrive")

    # -- the connect timeout --------------------------------------------------------------

    def _wait_for_connect(self) -> None:
        self._cancel_connect_timer()
        self._connect_timer = self._hub.clock.callLater(
            self._connect_timeout, self._connect_timed_out
        )

    def _connect_timed_out(self) -> None:
        self._connect_timer = None
        if self.session is None:
            self._engine.close(CLOSE_UNAUTHENTICATED, "no Socket.IO connect in time")

    def _cancel_connect_timer(self) -> None:
        if self._connect_timer is not None and self._connect_timer.active():
            self._connect_timer.cancel()
        self._connect_timer = None

    # -- Binding (what the session asks of us) -------------------------------------------

    @property
    def framer(self) -> Framer:
        return self._engine.transport.framer

    @property
    def transport_name(self) -> str:
        """For the metrics: ``socketio-polling`` or ``socketio-websocket``."""
        return "socketio-" + self._engine.transport.name

    @property
    def transport(self) -> Any:
        """For diagnostics, like ``/ws``'s protocol attribute."""
        return self._engine.transport

    def _frame(self, packet: bytes) -> bytes:
        """A Socket.IO packet as an Engine.IO message on the current transport."""
        return self._engine.transport.frame(b"4" + packet)

    def _send_sio(self, packet: bytes) -> None:
        self._engine.send(b"4" + packet)

    def frame_ack(self, request_id: str, data: Any) -> bytes:
        return self._frame(sio.encode_ack(int(request_id), data))

    def frame_push(self, event_type: str, data: Any) -> bytes:
        event = self._frame(sio.encode_event(event_type, data))
        if event_type == "notification":
            # The notifications handed over on connect, in seed 004's form too.
            extra = sio.notification_message(data)
            if extra is not None:
                event += self._frame(extra)
        if self._connecting and event_type == "authenticated":
            # The token was good: the CONNECT reply goes first.
            self._connecting, self._connected = False, True
            self._cancel_connect_timer()
            session = self.session
            assert session is not None
            return self._frame(sio.encode_connect(session.connection_id)) + event
        return event

    def frame_error(
        self, code: str, message: str, request_id: str | None, event: str | None
    ) -> bytes:
        if self._connecting:
            return self._frame(sio.encode_connect_error(message, {"code": str(code)}))
        body = {"code": str(code), "message": message}
        if request_id is not None:
            return self._frame(sio.encode_ack(int(request_id), {"error": body}))
        if event is not None:
            body["event"] = event
        return self._frame(sio.encode_event("error", body))

    @property
    def corks(self) -> bool:
        return self._engine.transport.name == "websocket"

    def fast_writer(self) -> Write:
        transport = self._engine.transport
        if transport.name == "websocket":
            return transport.fast_writer()
        # A polling session may upgrade: write through whichever transport
        # is current (one call more, for these sessions only).
        return self._write

    def _write(self, data: bytes) -> None:
        self._engine.transport.write(data)

    def write_queued(self, data: bytes) -> None:
        self._engine.transport.write_queued(data)

    def buffered_bytes(self) -> int | None:
        return self._engine.transport.buffered_bytes()

    def close_transport(self, code: int, reason: str) -> None:
        session = self.session
        if self._connecting and session is not None:
            # Refused at CONNECT: the CONNECT_ERROR went out; the Engine.IO
            # session may CONNECT again until the connect timeout.
            self.session = None
            self._connecting = False
            self._engine.transport.unregister_producer()
            session.closed(True, code, reason)
            self._wait_for_connect()
            return
        if code != CLOSE_GOING_AWAY and self._connected:
            self._send_sio(sio.encode_disconnect())
        self._engine.close(code, reason)

    def abort_transport(self) -> None:
        self._engine.fail(1006, "aborted")


def _not_a_string(token: Any) -> str:
    """What a non-string ``auth.token`` is verified as: an empty token,
    which the verifier refuses with its usual message."""
    return ""
