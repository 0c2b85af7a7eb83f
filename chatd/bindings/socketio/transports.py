"""What the engine asks of an Engine.IO transport, and the registry's two
framers for Socket.IO connections.

A transport writes bytes already in its own format: a WebSocket transport
takes complete WebSocket frames (one Engine.IO packet each), a polling
transport takes packets each ending with ``\\x1e`` (the queue is cut into
one HTTP response per GET).  Either way, bytes of one format concatenate,
which is what lets the registry hand a connection one write per channel.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Protocol

from twisted.internet.interfaces import IPushProducer

from chatd.bindings.socketio.eio import SEPARATOR
from chatd.bindings.socketio.sio import notification_message, wrap_event
from chatd.bindings.websocket import frame_text
from chatd.domain.models import Published

Write = Callable[[bytes], None]


def frame_event_websocket(event: Published) -> bytes:
    """The registry's framer for WebSocket-transport connections: the
    Engine.IO message ``42["<type>",<data>]`` in one WebSocket text frame,
    which the fast writer puts straight on the socket."""
    return b"".join(frame_text(b"4" + packet) for packet in event_packets(event))


def frame_event_polling(event: Published) -> bytes:
    """The registry's framer for polling connections: the same message as
    a polling record, ``42["<type>",<data>]\\x1e``."""
    return b"".join(b"4" + packet + SEPARATOR for packet in event_packets(event))


def event_packets(event: Published) -> list[bytes]:
    """The Socket.IO EVENTs one pushed event becomes: its own, and for a
    ``notification`` also seed 004's ``message`` form of it."""
    packets = [wrap_event(event.type, event.data)]
    if event.type == "notification":
        extra = notification_message(json.loads(event.data))
        if extra is not None:
            packets.append(extra)
    return packets


class Transport(Protocol):
    """One Engine.IO transport of one session, as the engine and the
    Socket.IO binding use it."""

    @property
    def name(self) -> str:
        """``"polling"`` or ``"websocket"``, as in the query string."""

    @property
    def framer(self) -> Callable[[Published], bytes]:
        """The registry's framer for connections on this transport."""

    def frame(self, packet: bytes) -> bytes:
        """One Engine.IO packet in this transport's format."""

    def write(self, data: bytes) -> None:
        """Bytes in this transport's format, through its fastest path."""

    def fast_writer(self) -> Write:
        """``write`` itself, for the session's fan-out path."""

    def write_queued(self, data: bytes) -> None:
        """Bytes through the transport's buffering path."""

    def buffered_bytes(self) -> int | None:
        """Bytes written but not yet taken by the peer (``None``: unknown)."""

    def register_producer(self, producer: IPushProducer) -> None:
        """Tell ``producer`` when this transport's buffer is full."""

    def unregister_producer(self) -> None: ...

    def close(self, code: int, reason: str) -> None:
        """Close after what is already written (a close code of
        PROTOCOL.md section 3, for the log and a WebSocket close frame)."""

    def abort(self) -> None:
        """Drop the transport now."""
