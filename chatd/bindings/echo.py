"""The WebSocket echo at ``/ws/echo`` (setting ``websocket_echo``, test only,
off by default): what the Autobahn TestSuite (``wstest -m fuzzingclient``)
needs to test chatd's WebSocket layer, see tests/autobahn/run.py and
docs/security.md.

It is a dialect of the plain-WebSocket binding like the seeds' (a
``Codec`` under ``ChatdServerProtocol``, built by ``ChatdWebSocketFactory``
with ``protocol_options``), so the suite runs against exactly what ``/ws``
runs: the same protocol class, the same Autobahn options, a ``Session`` in
the one hub, and the same outgoing path: every message goes back through
``Session.send_frame``, which is ``bindings/socket_write.py``'s direct
writer while the socket keeps up and the session's checked write (4029 for
a slow consumer) while it does not, the path fan-out takes.  Only the
message-size cap differs: the suite's large-message cases (9.*) send up
to 16 MiB.

The echo is answered for any connection, authenticated or not (like the
Socket.IO test suites' servers); the session's rules still apply, so an
unauthenticated connection is closed at ``auth_timeout`` (the suite's
runner raises it).  That is why the setting is refused unless chatd
listens on loopback.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from autobahn.websocket.protocol import PreparedMessage

from chatd.bindings.websocket import ChatdWebSocketFactory
from chatd.config import Config
from chatd.domain.models import Published

if TYPE_CHECKING:
    from chatd.session.hub import SessionHub
    from chatd.session.session import Session

ECHO_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
"""The echo's frame and message cap: the TestSuite's largest message
(case 9.1.6, 16 MiB).  ``max_message_size`` still caps every other
endpoint."""


def no_event_frame(event: Published) -> bytes:
    """The echo has no form for chatd's events (its connections join
    nothing, so none should reach it)."""
    return b""


def frame_message(payload: bytes, binary: bool) -> bytes:
    """One unmasked, uncompressed, unfragmented server frame, text or binary
    as the client's message was (Autobahn's framing, as ``frame_text``)."""
    frame: bytes = PreparedMessage(payload, binary, False, True).payloadHybi
    return frame


class EchoCodec:
    """Sends every message back as it came, through the session's write.
    Stateless: every echo connection shares ``ECHO_CODEC``."""

    framer = staticmethod(no_event_frame)
    transport_name = "echo"

    def received(self, session: Session, payload: bytes, binary: bool) -> None:
        session.send_frame(frame_message(payload, binary))

    def frame_ack(self, request_id: str, data: Any) -> bytes:
        return b""

    def frame_push(self, event_type: str, data: Any) -> bytes:
        return b""

    def frame_error(
        self, code: str, message: str, request_id: str | None, event: str | None
    ) -> bytes:
        return b""


ECHO_CODEC = EchoCodec()


class EchoDialect:
    """The echo as a ``Dialect``: served at ``/ws/echo``, never chosen on
    ``/`` (it is not in ``root_dialects``, and claims nothing anyway)."""

    name = "echo"
    framer = staticmethod(no_event_frame)

    def claims(self, frame: dict[str, Any]) -> bool:
        return False

    def codec(self) -> EchoCodec:
        return ECHO_CODEC


ECHO = EchoDialect()


def echo_factory(config: Config, hub: SessionHub) -> ChatdWebSocketFactory:
    """``/ws``'s factory class and options, with the echo dialect and room
    for the suite's largest message."""
    size = max(config.max_message_size, ECHO_MAX_MESSAGE_SIZE)
    return ChatdWebSocketFactory(replace(config, max_message_size=size), hub, ECHO)
