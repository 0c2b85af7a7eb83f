"""The fan-out fast write path, and the only place chatd reaches into
Twisted's and Autobahn's internals.

Why it exists: a broadcast to 1,000 receivers through Autobahn's
``sendPreparedMessage`` formats debug-log arguments and updates traffic
statistics per recipient, and Twisted's ``transport.write`` registers the
socket for writability and sends only after the next poll (two
``epoll_ctl`` calls per recipient per turn).  Writing straight to the
socket while Twisted holds nothing queued for it delivers several times as
many frames per second (STYLE.md, "Facts that bite").

What it relies on, checked against **Twisted 26.10.0** and **autobahn
26.11.1** (``TESTED_WITH``; tests/unit/test_socket_write.py fails, naming
these versions, when any of it changes):

* ``twisted.internet.abstract.FileDescriptor`` (the base of the TCP
  transport) keeps unsent bytes in ``dataBuffer`` from index ``offset`` on,
  plus ``_tempDataLen`` bytes in ``_tempDataBuffer`` not yet joined into it;
  ``connected`` and ``disconnecting`` say whether writes are still taken.
* The TCP transport (``twisted.internet.tcp.Connection``) has the
  non-blocking ``socket``; when TLS was started inside it (``listenSSL``)
  its ``TLS`` flag is true and the raw socket must never be written to.
* ``TLSMemoryBIOProtocol`` forwards unknown attributes to the transport
  below it, so it is told apart by type and walked through its instance
  ``transport`` attribute, never asked for ``socket`` or ``dataBuffer``.
* ``autobahn.websocket.protocol`` pretty-prints each connection's
  configuration with the module-level name ``pformat`` for a debug line.
"""

from __future__ import annotations

import pprint
from collections.abc import Callable
from typing import Any

import autobahn.websocket.protocol as autobahn_protocol
from twisted.internet.abstract import FileDescriptor

TESTED_WITH = {"twisted": "26.10.0", "autobahn": "26.11.1"}
"""The versions whose internals this module was last checked against."""

Write = Callable[[bytes], None]

_MAX_WRAPPERS = 4


def socket_transport(transport: object) -> FileDescriptor | None:
    """The transport that owns the socket and its write buffer (TLS wraps
    one), or ``None`` when there is none to be found.

    Checked by type: a TLS protocol wrapper forwards unknown attributes to
    the transport below it, so asking it for ``socket`` or ``dataBuffer``
    would answer with the raw TCP connection's (and writing there would
    bypass encryption)."""
    for _ in range(_MAX_WRAPPERS):
        if isinstance(transport, FileDescriptor):
            return transport
        attributes = getattr(transport, "__dict__", None)
        transport = attributes.get("transport") if attributes is not None else None
        if transport is None:
            return None
    return None


def buffered_bytes(owner: FileDescriptor | None) -> int | None:
    """Bytes Twisted holds for ``owner`` that the kernel has not taken yet,
    or ``None`` for a transport that does not expose its buffer."""
    if owner is None:
        return None
    tcp: Any = owner
    try:
        return len(tcp.dataBuffer) - tcp.offset + tcp._tempDataLen
    except AttributeError:
        return None


def direct_writer(transport: Any, owner: FileDescriptor | None) -> Write:
    """The write used for fan-out while ``transport`` keeps up.

    On a plain TCP transport with nothing queued, the bytes go to the
    socket at once.  Whatever the kernel does not take right away, and
    everything while Twisted holds queued bytes of this connection (acks,
    replies), goes through ``transport.write``, so ordering and
    backpressure stay Twisted's.  TLS and every other transport get
    ``transport.write`` itself.  The returned function is what the session
    hands the registry as ``send_frame``: one Python frame per recipient."""
    if (
        owner is not transport
        or not hasattr(owner, "socket")
        or not hasattr(owner, "dataBuffer")
        or getattr(owner, "TLS", False)
    ):
        write: Write = transport.write
        return write
    tcp: Any = owner
    sock_send = tcp.socket.send
    queued_write: Write = tcp.write

    def send(frame: bytes) -> None:
        if (
            tcp._tempDataLen
            or tcp.offset != len(tcp.dataBuffer)
            or tcp.disconnecting
            or not tcp.connected
        ):
            queued_write(frame)
            return
        try:
            sent = sock_send(frame)
        except BlockingIOError:
            sent = 0
        except OSError:
            queued_write(frame)  # let Twisted's path find and report the error
            return
        if sent < len(frame):
            queued_write(frame[sent:])

    return send


class LazyPformat:
    """Formats only if a log observer ever formats it."""

    __slots__ = ("_value",)

    def __init__(self, value: object) -> None:
        self._value = value

    def __format__(self, spec: str) -> str:
        return format(pprint.pformat(self._value), spec)

    def __str__(self) -> str:
        return pprint.pformat(self._value)


def defer_autobahn_pformat() -> None:
    """Make Autobahn's per-connection configuration dump lazy.

    Autobahn pretty-prints every connection's configuration for a debug log
    line as the connection opens, whether or not debug logging is on: about
    a fifth of chatd's CPU per accepted connection (py-spy).  Handing it a
    lazy value keeps the debug line and drops the cost.

    Called by the binding's factory, not done on import: importing a module
    should not change a third-party module for everyone who imports it
    (tests, tools), and an explicit call keeps the patch visible where it
    is relied on.  Idempotent."""
    autobahn_protocol.pformat = LazyPformat  # type: ignore[assignment]


def frame_text(payload: bytes) -> bytes:
    """One unmasked, uncompressed WebSocket text frame (server to client),
    built without a protocol instance, so framers can exist before any."""
    frame: bytes = autobahn_protocol.PreparedMessage(payload, False, False, True).payloadHybi
    return frame
