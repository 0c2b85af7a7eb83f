"""The front door: a whole first-segment WebSocket upgrade for a route goes
to that route's factory; everything else, byte for byte, to the Site,
whose HTTP channel holds requests to a header deadline and client
addresses to a cap on open connections."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.web.resource import Resource

from chatd.addresses import AddressCounts
from chatd.bindings.socketio.origins import OriginPolicy
from chatd.web.front import FrontDoorFactory, address_key, parse_upgrade
from chatd.web.site import ChatdSite

UPGRADE = (
    b"GET /ws?token=abc HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: k\r\n\r\n"
)


class Recorder(Protocol):
    def __init__(self, name: str) -> None:
        self.name = name
        self.received = b""
        self.made = False

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class RecordingFactory(Factory[Recorder]):
    def __init__(self, name: str) -> None:
        self.name = name
        self.built: list[Recorder] = []
        self.timeOut = 30

    def buildProtocol(self, addr: Any) -> Recorder:
        p = Recorder(self.name)
        self.built.append(p)
        return p


def _door(routes: list[Any] | None = None) -> tuple[Any, RecordingFactory, RecordingFactory, Clock]:
    site, ws = RecordingFactory("site"), RecordingFactory("ws")
    clock = Clock()

    def ws_route(path: bytes, query: bytes, headers: dict[bytes, bytes]) -> Any:
        return ws if path == b"/ws" else None

    front = FrontDoorFactory(site, routes if routes is not None else [ws_route], clock, 10)
    return front, site, ws, clock


def _connect(front: Any) -> tuple[Any, StringTransport]:
    door = front.buildProtocol(None)
    transport = StringTransport()
    transport.protocol = door
    door.makeConnection(transport)
    return door, transport


def test_an_upgrade_goes_to_its_route_with_every_byte() -> None:
    front, site, ws, _ = _door()
    _, transport = _connect(front)
    transport.protocol.dataReceived(UPGRADE + b"\x81\x80frame")
    assert not site.built
    (target,) = ws.built
    assert transport.protocol is target and target.made
    assert target.received == UPGRADE + b"\x81\x80frame"


def test_everything_else_goes_to_the_site_unchanged() -> None:
    cases = [
        b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n",
        UPGRADE.replace(b"/ws?", b"/other?"),
        UPGRADE.replace(b"Upgrade: websocket", b"Upgrade: h2c"),
        UPGRADE.replace(b"HTTP/1.1", b"HTTP/1.0"),
        UPGRADE.replace(b"GET", b"POST"),
        UPGRADE.replace(b"Host: h\r\n", b"Host: h\r\nHost: i\r\n"),
        UPGRADE.replace(b"Host: h\r\n", b"bad header\r\n"),
        UPGRADE[:40],  # the request does not fit the first segment
        b"\x16\x03\x01 not http",
    ]
    for data in cases:
        front, site, ws, _ = _door()
        _, transport = _connect(front)
        transport.protocol.dataReceived(data)
        assert not ws.built, data
        (target,) = site.built
        assert transport.protocol is target and target.received == data


def test_a_route_that_declines_leaves_it_to_the_site() -> None:
    front, site, ws, _ = _door(routes=[lambda path, query, headers: None])
    _, transport = _connect(front)
    transport.protocol.dataReceived(UPGRADE)
    assert site.built and not ws.built


def test_a_silent_connection_is_closed_after_the_open_handshake_timeout() -> None:
    front, site, ws, clock = _door()
    _, transport = _connect(front)
    clock.advance(9.9)
    assert not transport.disconnecting
    clock.advance(0.1)
    assert transport.disconnecting
    assert not site.built and not ws.built


def test_data_or_a_close_cancels_the_idle_timer() -> None:
    front, _, _, clock = _door()
    door, transport = _connect(front)
    door.connectionLost(None)
    assert not clock.getDelayedCalls()
    _, transport = _connect(front)
    transport.protocol.dataReceived(UPGRADE)
    assert not clock.getDelayedCalls()


def test_over_tls_the_wrapped_protocol_is_replaced() -> None:
    front, _, ws, _ = _door()
    wrapper = ProtocolWrapper(WrappingFactory(front), front.buildProtocol(None))
    transport = StringTransport()
    wrapper.makeConnection(transport)
    wrapper.dataReceived(UPGRADE)
    (target,) = ws.built
    assert wrapper.wrappedProtocol is target and target.received == UPGRADE


def test_parse_upgrade_reads_the_path_query_and_headers() -> None:
    parsed = parse_upgrade(UPGRADE)
    assert parsed is not None
    path, query, headers = parsed
    assert (path, query) == (b"/ws", b"token=abc")
    assert headers[b"upgrade"] == b"websocket" and headers[b"host"] == b"h"


def test_socketio_route_takes_only_new_websocket_sessions_from_allowed_origins() -> None:
    from chatd.bindings.socketio.resource import SocketIOResource

    resource = SocketIOResource.__new__(SocketIOResource)
    resource._origins = OriginPolicy(("https://app.example",))
    resource._ws_factory = marker = object()
    route = resource.websocket_route
    ok = b"EIO=4&transport=websocket&token=t"
    assert route(b"/socket.io/", ok, {}) is marker
    assert route(b"/socket.io/", ok, {b"origin": b"https://app.example"}) is marker
    assert route(b"/socket.io/", ok, {b"origin": b"http://h", b"host": b"h"}) is marker
    assert route(b"/socket.io/", ok, {b"origin": b"https://evil.example"}) is None
    for query in (
        b"EIO=3&transport=websocket",
        b"EIO=4&transport=polling",
        b"EIO=4&transport=websocket&sid=abc",
        b"EIO=4&EIO=3&transport=websocket",
        b"EIO=4&transport=web%73ocket",
        b"transport=websocket",
    ):
        assert route(b"/socket.io/", query, {}) is None, query
    assert route(b"/socket.io", ok, {}) is None


# -- the Site's HTTP channel: header deadline, per-address cap ------------------------------


class _Ok(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"ok"


def _http_site(cap: int = 2, timeout: float = 1.0) -> tuple[ChatdSite, Clock]:
    clock = Clock()
    root = Resource()
    root.putChild(b"ok", _Ok())
    return ChatdSite(root, {}, timeout, AddressCounts(cap), clock), clock


def _http_connection(site: ChatdSite, host: str = "192.0.2.7") -> tuple[Any, StringTransport]:
    peer = IPv4Address("TCP", host, 40000)
    channel = site.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer)
    channel.makeConnection(transport)
    return channel, transport


def test_request_headers_must_be_complete_within_the_header_timeout() -> None:
    site, clock = _http_site(timeout=1.0)
    channel, transport = _http_connection(site)
    for line in (b"GET /ok HTTP/1.1\r\n", b"Host: h\r\n", b"X-Slow: 1\r\n"):
        channel.dataReceived(line)  # every byte restarted twisted.web's own timer
        clock.advance(0.25)
    assert not transport.disconnecting
    clock.advance(0.25)
    assert transport.value().startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b'"code":"REQUEST_TIMEOUT"' in transport.value() and transport.disconnecting


def test_a_kept_alive_connection_gets_the_deadline_again_and_idles_out_silently() -> None:
    site, clock = _http_site(timeout=1.0)
    channel, transport = _http_connection(site)
    channel.dataReceived(b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 OK") and transport.value().endswith(b"ok")
    transport.clear()
    clock.advance(0.9)
    channel.dataReceived(b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\n")  # in time: answered
    assert transport.value().startswith(b"HTTP/1.1 200 OK")
    transport.clear()
    clock.advance(1.0)  # nothing of a next request: closed without an answer
    assert transport.disconnecting and transport.value() == b""
    channel.connectionLost(None)
    assert not clock.getDelayedCalls()


def test_open_http_connections_are_capped_per_address() -> None:
    site, clock = _http_site(cap=2)
    first, _ = _http_connection(site)
    second, _ = _http_connection(site)
    other_address, other = _http_connection(site, "192.0.2.8")
    third, refused = _http_connection(site)
    assert refused.value().startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
    assert b"Retry-After: 1\r\n" in refused.value() and refused.disconnecting
    third.dataReceived(b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\n")  # not read
    assert b"200 OK" not in refused.value()
    assert not other.disconnecting
    assert site.open_connections["192.0.2.7"] == 2
    first.connectionLost(None)
    # A resource that takes the transport over (Autobahn's WebSocketResource
    # does exactly this) ends the HTTP connection.
    second.transport = None
    assert site.open_connections["192.0.2.7"] == 0
    third.connectionLost(None)  # the refused one was never counted
    assert site.open_connections["192.0.2.7"] == 0
    _, accepted = _http_connection(site)
    assert not accepted.disconnecting and len(site.open_connections) == 2


def test_clients_are_counted_by_ipv4_address_ipv6_64_and_not_over_unix_sockets() -> None:
    counts = AddressCounts(8)
    assert address_key(counts, IPv4Address("TCP", "127.0.0.1", 1)) == "127.0.0.1"
    a = address_key(counts, IPv6Address("TCP", "2001:db8:1:2:aaaa::1", 1))
    b = address_key(counts, IPv6Address("TCP", "2001:db8:1:2:bbbb::9", 1))
    assert a == b == "2001:db8:1:2::/64"
    assert address_key(counts, IPv6Address("TCP", "2001:db8:1:3::1", 1)) != a
    assert address_key(counts, IPv6Address("TCP", "::ffff:192.0.2.1", 1)) == "192.0.2.1"
    assert address_key(counts, UNIXAddress(b"/run/chatd.sock")) is None


def test_exempt_addresses_are_not_counted_for_http_either() -> None:
    """Behind a reverse proxy on the same host every client is loopback:
    ``ip_limit_exempt`` leaves it out of the HTTP cap as out of the
    sessions' one."""
    counts = AddressCounts(1, ("127.0.0.0/8", "::1/128"))
    assert address_key(counts, IPv4Address("TCP", "127.0.0.1", 1)) is None
    assert address_key(counts, IPv6Address("TCP", "::1", 1)) is None
    assert address_key(counts, IPv6Address("TCP", "::ffff:127.0.0.5", 1)) is None
    assert address_key(counts, IPv4Address("TCP", "192.0.2.1", 1)) == "192.0.2.1"


# -- bodies judged before they are read (chatd.web.site.BoundedRequest) --------------------


class _Echo(Resource):
    """Takes bodies of up to 10 bytes, and refuses longer ones itself, by
    the declared length or by reading one byte more (the contract of a
    resource with a ``BodyLimit``, which the HTTP API and Socket.IO keep)."""

    isLeaf = True

    def render_POST(self, request: Any) -> bytes:
        if request.getHeader(b"authorization") == b"no":
            request.setResponseCode(401)
            return b"who are you"
        declared = request.getHeader(b"content-length")
        body = request.content.read(11)
        if len(body) > 10 or (declared is not None and int(declared) > 10):
            request.setResponseCode(413)
            return b"too large"
        return b"got " + body


def _echo_limit(request: Any) -> int:
    """What the resource refuses whatever the body takes none; else 10."""
    return 0 if request.getHeader(b"authorization") == b"no" else 10


def _echo_site(limit: Any = _echo_limit) -> tuple[ChatdSite, Clock]:
    root = Resource()
    echo = _Echo()
    root.putChild(b"echo", echo)
    root.putChild(b"ok", _Ok())
    clock = Clock()
    return ChatdSite(root, {echo: limit}, 10.0, AddressCounts(8), clock), clock


CHUNKED = b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_a_chunked_body_within_its_limit_is_read_and_the_connection_kept() -> None:
    site, _ = _echo_site()
    channel, transport = _http_connection(site)
    channel.dataReceived(CHUNKED + b"5\r\nhello\r\n0\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 OK") and b"got hello" in transport.value()
    assert not transport.disconnecting


def test_a_chunked_body_is_cut_one_byte_past_its_limit_and_answered_once() -> None:
    for tail in (b"", b"0\r\n\r\n"):  # the last chunk in the same segment, or never
        site, _ = _echo_site()
        channel, transport = _http_connection(site)
        channel.dataReceived(CHUNKED + b"8\r\n12345678\r\n8\r\n12345678\r\n" + tail)
        assert transport.value().count(b"HTTP/1.1 ") == 1, tail
        assert transport.value().startswith(b"HTTP/1.1 413 ") and b"too large" in transport.value()
        assert b"Connection: close" in transport.value() and transport.disconnecting
        channel.dataReceived(b"8\r\n12345678\r\n")  # more of it: never read
        assert transport.value().count(b"HTTP/1.1 ") == 1


def test_a_declared_length_over_the_limit_or_a_refusal_is_answered_from_the_headers() -> None:
    site, _ = _echo_site()
    channel, transport = _http_connection(site)
    channel.dataReceived(b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 413 ") and transport.disconnecting
    channel, transport = _http_connection(site)  # refused whatever the body: no credentials
    channel.dataReceived(
        b"POST /echo HTTP/1.1\r\nHost: h\r\nAuthorization: no\r\nContent-Length: 5\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    assert transport.value().startswith(b"HTTP/1.1 401 ")  # the resource's own answer, no 100
    assert b"who are you" in transport.value() and transport.disconnecting
    # A resource that takes no body answers at once too (here: 405 for a POST).
    channel, transport = _http_connection(site)
    channel.dataReceived(b"POST /ok HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 405 ") and transport.disconnecting


def test_a_body_limit_that_fails_answers_without_reading_the_body() -> None:
    def broken(request: Any) -> int:
        raise RuntimeError("broken limit")

    site, _ = _echo_site(broken)
    channel, transport = _http_connection(site)
    channel.dataReceived(b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 OK") and b"got " in transport.value()
    assert b"got hello" not in transport.value() and transport.disconnecting
