"""The front door: a whole first-segment WebSocket upgrade for a route goes
to that route's factory; everything else, byte for byte, to the Site."""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from chatd.bindings.socketio.origins import OriginPolicy
from chatd.web.front import FrontDoorFactory, parse_upgrade

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
