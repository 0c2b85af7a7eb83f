"""The first bytes of every connection: a WebSocket upgrade goes straight
to its Autobahn factory, everything else to the twisted.web ``Site``.

Through the ``Site`` an upgrade is parsed twice: twisted.web builds a
``Request`` (headers, query arguments, resource traversal, its timers),
then Autobahn's ``WebSocketResource`` writes the request back out as bytes
for Autobahn to parse again.  That was about a fifth of the server's CPU
per connection in the connect benchmark.  Here the first segment of a
connection is read once: if it holds a whole ``GET`` request for one of
the ``routes`` with ``Upgrade: websocket``, the route's factory gets the
connection and the bytes, and Autobahn parses the request alone (and its
``openHandshakeTimeout`` is not needed: the request is whole, and
answered at once; ``open_handshake_timeout`` bounds the wait for the first
bytes here).  Anything else, a request split over several segments, a
second request on a kept-alive connection, a route that declines, is the
``Site``'s, which answers exactly as before: the fast path only ever
takes what the slow path would have handed to the same factory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.policies import ProtocolWrapper

Headers = dict[bytes, bytes]
UpgradeRoute = Callable[[bytes, bytes, Headers], Any]
"""``(path, query, headers)`` of a ``GET`` with ``Upgrade: websocket``
(header names lower-cased) → the WebSocket
factory that takes the connection, or None to leave it to the ``Site``."""

MAX_FIRST_REQUEST = 16384
"""A first segment longer than this is the ``Site``'s (it has the limits)."""


def parse_upgrade(data: bytes) -> tuple[bytes, bytes, Headers] | None:
    """``(path, query, headers)`` if ``data`` starts with a complete
    ``GET … HTTP/1.1`` request asking for a WebSocket upgrade, else None
    (anything unusual is the ``Site``'s to judge)."""
    end = data.find(b"\r\n\r\n")
    if end < 0 or end > MAX_FIRST_REQUEST or not data.startswith(b"GET /"):
        return None
    lines = data[:end].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1":
        return None
    headers: Headers = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            return None
        key = name.lower()
        if key in headers:
            return None  # a header given twice: which one counts is the Site's call
        headers[key] = value.strip()
    if headers.get(b"upgrade", b"").lower() != b"websocket":
        return None
    path, _, query = parts[1].partition(b"?")
    return path, query, headers


def no_delay(transport: Any) -> None:
    """Turn Nagle's algorithm off on a new connection.  chatd writes small
    frames as they are ready (an ack, then a push); with Nagle on, a frame
    written while the previous one is unacknowledged waits for the peer's
    delayed ACK, about 40 ms on Linux: that was the p99 of the latency
    benchmark.  Autobahn means to set it, but asks for its option before it
    has copied the options from its factory, and swallows the error.  Not
    every transport has the option (UNIX sockets); TLS passes it down."""
    try:
        transport.setTcpNoDelay(True)
    except Exception:  # no TCP under this transport
        pass


class FrontDoor(Protocol):
    """Waits for a connection's first segment, then hands the connection
    (and that segment) to the protocol that will serve it."""

    factory: FrontDoorFactory

    def __init__(self, addr: Any) -> None:
        self._addr = addr
        self._timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        factory = self.factory
        self._timer = factory.clock.callLater(factory.first_request_timeout, self._idle)
        no_delay(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self._cancel_timer()
        factory = self.factory
        target = None
        request = parse_upgrade(data)
        if request is not None:
            for route in factory.routes:
                upgrade = route(*request)
                if upgrade is not None:
                    target = upgrade.buildProtocol(self._addr)
                    break
        if target is None:
            target = factory.site.buildProtocol(self._addr)
        self._hand_over(target, data)

    def _hand_over(self, target: Protocol, data: bytes) -> None:
        transport: Any = self.transport
        if isinstance(transport, ProtocolWrapper):
            transport.wrappedProtocol = target  # TLS: the decrypted side
        else:
            transport.protocol = target
        target.makeConnection(transport)
        target.dataReceived(data)

    def connectionLost(self, reason: Any = None) -> None:
        self._cancel_timer()

    def _idle(self) -> None:
        """Connected and silent for ``open_handshake_timeout``: nothing a
        client would do, and what a slow-loris does."""
        self._timer = None
        transport: Any = self.transport
        if transport is not None:
            transport.loseConnection()

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()


class FrontDoorFactory(Factory[FrontDoor]):
    """The listening port's factory: one ``FrontDoor`` per connection."""

    def __init__(
        self, site: Any, routes: Sequence[UpgradeRoute], clock: Any, first_request_timeout: float
    ) -> None:
        self.site = site
        self.routes = tuple(routes)
        self.clock = clock
        self.first_request_timeout = first_request_timeout
        self.noisy = False

    def buildProtocol(self, addr: Any) -> FrontDoor:
        protocol = FrontDoor(addr)
        protocol.factory = self
        return protocol

    def doStart(self) -> None:
        super().doStart()
        self.site.doStart()

    def doStop(self) -> None:
        self.site.doStop()
        super().doStop()
