"""Wire dialects over one WebSocket binding (PROTOCOL.md section 7).

chatd speaks several JSON dialects over a plain WebSocket: its own
envelope (``/ws``) and the formats of the servers it replaces (seed 000 at
``/ws/seed000``, seed 002 "Chat Flow" at ``/ws/chatflow``).  They differ only
in how frames look, so each is a ``Dialect``: a fan-out ``framer`` (one
encode per event for every connection of the dialect) and, per connection,
a ``Codec`` that turns the client's frames into the session's requests
(``session.received(type, id, data)``) and the session's answers back into
frames.  Authentication, limits, dispatch and fan-out are the session's
and the domain's, the same for all.

On ``/`` the dialect is not known until the client speaks: a connection
there starts with a ``Chooser``, which reads the first frame that fits a
dialect (``Dialect.claims``, asked in order) and hands the connection to
that dialect's codec for good.  Until then nothing is pushed (a token
offered with the upgrade is only checked once the dialect is known), and a
frame that fits none gets the native protocol's error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from chatd.bindings.socket_write import frame_text
from chatd.domain.interfaces import Framer
from chatd.domain.models import Published
from chatd.errors import ErrorCode
from chatd.protocol.envelope import (
    EnvelopeError,
    encode_ack,
    encode_error,
    encode_push,
    parse_envelope,
    strict_loads,
    wrap_push,
)

if TYPE_CHECKING:
    from chatd.session.session import Session


class Codec(Protocol):
    """One connection's translation between its dialect's frames and its
    session.  ``frame_*`` return ready WebSocket frames (``frame_text``),
    or ``b""`` for something the dialect has no form for."""

    @property
    def framer(self) -> Framer: ...

    @property
    def transport_name(self) -> str:
        """For the metrics (``ws``, ``seed000``, ``chatflow``)."""

    def received(self, session: Session, payload: bytes, binary: bool) -> None:
        """A whole message from the client."""

    def frame_ack(self, request_id: str, data: Any) -> bytes: ...

    def frame_push(self, event_type: str, data: Any) -> bytes: ...

    def frame_error(
        self, code: str, message: str, request_id: str | None, event: str | None
    ) -> bytes: ...


class Dialect(Protocol):
    """A wire format: its name (the path under ``/ws/``, and the metrics'
    transport name), its fan-out framer and a codec per connection."""

    name: str

    @property
    def framer(self) -> Framer: ...

    def claims(self, frame: dict[str, Any]) -> bool:
        """Whether a first frame on ``/`` (a JSON object) is this
        dialect's."""

    def codec(self) -> Codec: ...


def json_object(payload: bytes) -> dict[str, Any] | None:
    """A text frame's JSON object, or None for anything else (not UTF-8,
    not strict JSON, as NaN or Infinity are not, nested too deeply, not an
    object)."""
    try:
        obj = strict_loads(payload)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


# -- the native envelope ---------------------------------------------------------------


def frame_event(event: Published) -> bytes:
    """The native framer: an event as a native push, framed once for every
    recipient on this dialect."""
    return frame_text(wrap_push(event.type, event.data))


class NativeCodec:
    """chatd's own envelope (PROTOCOL.md section 3).  It keeps no state, so
    every native connection shares ``NATIVE_CODEC``."""

    framer = staticmethod(frame_event)
    transport_name = "ws"

    def received(self, session: Session, payload: bytes, binary: bool) -> None:
        try:
            envelope = parse_envelope(payload)
        except EnvelopeError as e:
            session.malformed(e.code, e.message, e.request_id, e.event)
            return
        except Exception:
            session.failed()
            return
        session.received(envelope.type, envelope.id, envelope.data)

    def frame_ack(self, request_id: str, data: Any) -> bytes:
        return frame_text(encode_ack(request_id, data))

    def frame_push(self, event_type: str, data: Any) -> bytes:
        return frame_text(encode_push(event_type, data))

    def frame_error(
        self, code: str, message: str, request_id: str | None, event: str | None
    ) -> bytes:
        return frame_text(encode_error(code, message, request_id, event))


NATIVE_CODEC = NativeCodec()


class NativeDialect:
    name = "ws"
    framer = staticmethod(frame_event)

    def claims(self, frame: dict[str, Any]) -> bool:
        """Any object with a string ``type``: the native protocol is the
        last one asked on ``/``, after the seeds' distinctive shapes."""
        return isinstance(frame.get("type"), str)

    def codec(self) -> Codec:
        return NATIVE_CODEC


NATIVE = NativeDialect()


# -- choosing on "/" -----------------------------------------------------------------------


class Chooser:
    """The codec of a ``/`` connection until its first frame that fits a
    dialect: errors before that are native ones."""

    framer = staticmethod(frame_event)
    transport_name = "ws"

    def __init__(self, owner: Any, dialects: tuple[Dialect, ...], offered_token: str | None):
        self._owner = owner
        self._dialects = dialects
        self._offered_token = offered_token

    def received(self, session: Session, payload: bytes, binary: bool) -> None:
        frame = None if binary else json_object(payload)
        dialect = self._choose(frame) if frame is not None else None
        if dialect is None:
            session.malformed(
                ErrorCode.INVALID_MESSAGE,
                "this frame fits none of the protocols spoken on /: send a JSON object "
                "with a string 'type' (see docs/dialects.md)",
            )
            return
        codec = dialect.codec()
        self._owner.use_codec(codec)
        session.switch_framer(codec.framer)
        token, self._offered_token = self._offered_token, None
        if token is not None:
            session.received("auth", None, {"token": token})
        codec.received(session, payload, binary)

    def _choose(self, frame: dict[str, Any]) -> Dialect | None:
        for dialect in self._dialects:
            if dialect.claims(frame):
                return dialect
        return None

    def frame_ack(self, request_id: str, data: Any) -> bytes:
        return NATIVE_CODEC.frame_ack(request_id, data)

    def frame_push(self, event_type: str, data: Any) -> bytes:
        return NATIVE_CODEC.frame_push(event_type, data)

    def frame_error(
        self, code: str, message: str, request_id: str | None, event: str | None
    ) -> bytes:
        return NATIVE_CODEC.frame_error(code, message, request_id, event)
