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

What the ``Site`` gets is an ``HttpConnection``: twisted.web's HTTP/1.1
channel with the bounds an open port needs (a header deadline, a cap on
open HTTP connections per client address, and a body that can be left
unread; docs/security.md, "The HTTP front").
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.policies import ProtocolWrapper
from twisted.web.http import HTTPChannel

from chatd.addresses import AddressCounts

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


# -- the HTTP side: twisted.web's channel, bounded -------------------------------------

_MAX_LENGTH_DIGITS = 19
"""Digits of the largest Content-Length read as it is (2**63 has 19)."""


def address_key(counts: AddressCounts, address: Any) -> str | None:
    """The key a peer (a Twisted address) is counted under by ``counts``."""
    host = getattr(address, "host", None)
    return counts.key(host if isinstance(host, str) else None)


def error_response(status: bytes, code: str, message: str, *headers: bytes) -> bytes:
    """A whole ``HTTP/1.1`` error answer with chatd's JSON error body, for
    what the channel answers itself (there is no ``Request`` to answer
    through); the connection closes after it."""
    body = json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":"))
    head = [
        b"HTTP/1.1 " + status,
        b"Content-Type: application/json",
        b"Cache-Control: no-store",
        b"Connection: close",
        b"Content-Length: %d" % len(body),
        *headers,
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body.encode()


class HttpConnection(HTTPChannel):
    """twisted.web's HTTP/1.1 channel with the bounds an open port needs.

    - **A header deadline.**  A request's headers must be complete within
      ``site.header_timeout`` seconds, counted from the hand-over by the
      front door, and on a kept-alive connection from the end of the
      previous answer; else 408 (nothing if not one byte of the request
      came: an idle kept-alive connection) and the connection closes.
      twisted.web's own timer is an idle timer that every byte restarts,
      so a header line every few seconds kept a connection for ever.
    - **A cap per client address** (``site.open_connections``): a
      connection over it is answered 429 at once and closed.  A connection
      stops counting when it closes, or when a WebSocket resource takes its
      transport over (Autobahn's ``WebSocketResource`` sets the channel's
      transport to None, and never tells it more): an open WebSocket is no
      HTTP connection, and upgrades that the front door hands to Autobahn
      directly never count at all.
    - **A body left unread** (for ``chatd.web.site.BoundedRequest``):
      ``skip_body`` answers a request from its headers alone, ``cut_body``
      ends a body at its limit; either way the connection closes after
      the answer and the rest of the body is never read.
    """

    site: Any
    """The ``Site`` sets it (``Site.buildProtocol``); chatd's has
    ``header_timeout`` and ``open_connections``."""

    def __init__(self) -> None:
        self._link: Any = None
        super().__init__()
        self._deadline: IDelayedCall | None = None
        self._heard = False
        self._counted: str | None = None
        self._refused = False
        self._unread = False

    @property
    def transport(self) -> Any:
        return self._link

    @transport.setter
    def transport(self, value: Any) -> None:
        self._link = value
        if value is None:
            self._uncount()  # taken over (a WebSocket): no HTTP connection any more

    # -- opening, the cap --------------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        key = address_key(self.site.open_connections, self.transport.getPeer())
        if key is not None:
            if not self.site.open_connections.acquire(key):
                self._refuse()
                return
            self._counted = key
        self._await_request()

    def _refuse(self) -> None:
        self._refused = True
        cap = self.site.open_connections.cap
        retry = max(1, math.ceil(self.site.header_timeout))
        self.transport.write(
            error_response(
                b"429 Too Many Requests",
                "RATE_LIMIT_EXCEEDED",
                f"too many open HTTP connections from this address (at most {cap}); "
                "open WebSocket connections do not count",
                b"Retry-After: %d" % retry,
            )
        )
        self.loseConnection()

    def _uncount(self) -> None:
        key, self._counted = self._counted, None
        if key is not None:
            self.site.open_connections.release(key)

    # -- headers ------------------------------------------------------------------------

    def headerReceived(self, line: bytes) -> bool:
        """A Content-Length of more digits than any body chatd takes could
        need (a 64-bit count) is read as that many: twisted.web would
        ``int()`` all of them, and past 4,300 digits Python refuses, which
        dropped the connection with a traceback.  Now it is an ordinary
        over-the-limit length, answered 413 before any body is read."""
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"content-length":
            digits = value.strip(b" \t")
            if len(digits) > _MAX_LENGTH_DIGITS and digits.isdigit():
                line = b"Content-Length: " + b"9" * (_MAX_LENGTH_DIGITS + 1)
        return bool(super().headerReceived(line))

    # -- the header deadline -------------------------------------------------------------

    def _await_request(self) -> None:
        """Headers of a new request are due (a new connection, or a
        kept-alive one whose previous answer is done)."""
        self._stop_deadline()
        self._heard = False
        self._deadline = self.callLater(self.site.header_timeout, self._headers_late)

    def _stop_deadline(self) -> None:
        deadline, self._deadline = self._deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def _headers_late(self) -> None:
        self._deadline = None
        transport = self.transport
        if transport is None:
            return
        if self._heard:
            transport.write(
                error_response(
                    b"408 Request Timeout",
                    "REQUEST_TIMEOUT",
                    f"the request headers did not arrive within {self.site.header_timeout:g} seconds",
                )
            )
        # As twisted.web's own timeout: abort if the close does not finish.
        self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)
        self.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        if self._deadline is not None and data:
            self._heard = True
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        self._stop_deadline()
        super().allHeadersReceived()

    def requestDone(self, request: Any) -> None:
        # Armed before twisted.web replays pipelined bytes, whose headers,
        # if complete, stop it again.
        if self.persistent:
            self._await_request()
        super().requestDone(request)

    def connectionLost(self, reason: Any = None) -> None:
        self._stop_deadline()
        self._uncount()
        super().connectionLost(reason)

    # -- bodies that are not read (chatd.web.site.BoundedRequest) ------------------------

    def pending_request_line(self) -> tuple[bytes, bytes]:
        """The method and target of the request whose headers just came
        (twisted.web keeps them on the channel until its body is in)."""
        return self._command, self._path

    def skip_body(self) -> None:
        """From ``Request.gotLength``: answer this request from its headers
        alone; its body, if any, is never read."""
        self.length = 0
        self._stop_reading()

    def cut_body(self) -> None:
        """From ``Request.handleContentChunk``: the body is over its limit;
        it ends here (the request is answered with what it has) and the
        rest is never read."""
        self._stop_reading()

    def _stop_reading(self) -> None:
        self.persistent = False
        self._unread = True
        self._networkProducer.pauseProducing()

    def rawDataReceived(self, data: bytes) -> None:
        if self._unread:
            return  # the rest of a body nobody reads; the connection closes after the answer
        super().rawDataReceived(data)
        if self._unread and not self._handlingRequest:
            # cut_body during that segment, and the body did not end in it
            self.allContentReceived()
