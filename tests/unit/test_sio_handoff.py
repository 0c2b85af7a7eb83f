"""The sid names its process, and a polling request for another process's
sid is handed to that process over its UNIX socket (handoff.py).

The sid tests are pure.  The forwarding tests run two Engine.IO resources
in this process, over real loopback sockets: the one a client reaches
("front", on TCP) and the owner of the session (on its UNIX socket in a
shared runtime directory), plus a fake owner where a test needs to control
the answer."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from chatd.bindings.socketio import eio
from chatd.bindings.socketio.engine import (
    EngineServer,
    EngineSettings,
    EngineSocket,
    make_sid,
    new_node_id,
    sid_node,
)
from chatd.bindings.socketio.handoff import Handoff, socket_name
from chatd.bindings.socketio.origins import OriginPolicy
from chatd.bindings.socketio.polling import PollingTransport
from chatd.bindings.socketio.resource import SocketIOResource
from chatd.bindings.socketio.transports import Transport
from chatd.bindings.socketio.websocket import EngineWebSocketFactory
from chatd.config import default_runtime_dir

reactor: Any = _reactor

# -- the sid ---------------------------------------------------------------------------


def test_a_sid_names_its_process_and_keeps_144_random_bits() -> None:
    node = new_node_id()
    assert len(node) == 8 and int(node, 16) >= 0
    sids = {make_sid(node) for _ in range(1000)}
    assert len(sids) == 1000
    for sid in sids:
        prefix, dot, random_part = sid.partition(".")
        assert (prefix, dot) == (node, ".")
        assert len(random_part) == 24  # token_urlsafe(18): 18 bytes, 144 bits >= 128
        assert sid_node(sid) == node


@pytest.mark.parametrize(
    "sid",
    [
        "",
        "nope",
        "0123abcd",
        "0123abcd.",
        "0123ABCD." + "a" * 24,  # upper-case hex is not what chatd makes
        "0123abc." + "a" * 24,
        "../../etc." + "a" * 24,
        "0123abcd." + "a" * 23,
        "0123abcd." + "a" * 25,
        "0123abcd." + "a/" * 12,
        "0123abcd.." + "a" * 23,
    ],
)
def test_anything_else_names_no_process(sid: str) -> None:
    assert sid_node(sid) is None


def test_the_runtime_directory_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/chatd:/run/other")
    assert default_runtime_dir("/var/lib/chatd/1") == "/run/chatd"
    monkeypatch.delenv("RUNTIME_DIRECTORY")
    # Sibling data directories share it.
    assert default_runtime_dir("/var/lib/chatd/1") == "/var/lib/chatd/chatd-run"
    assert default_runtime_dir("/var/lib/chatd/2/") == "/var/lib/chatd/chatd-run"


# -- two processes' resources ------------------------------------------------------------


class Handler:
    """The Socket.IO layer's place: records what the engine tells it."""

    def __init__(self, socket: EngineSocket) -> None:
        self.socket = socket
        self.messages: list[str | bytes] = []
        self.closed_with: tuple[bool, int, str] | None = None

    def opened(self) -> None:
        pass

    def message(self, data: str | bytes) -> None:
        self.messages.append(data)

    def transport_changed(self, previous: Transport) -> None:
        pass

    def closing(self) -> None:
        pass

    def closed(self, clean: bool, code: int, reason: str) -> None:
        self.closed_with = (clean, code, reason)


class Process:
    """One process's Engine.IO resource, its handoff and its listening TCP
    port (the shared socket's stand-in)."""

    def __init__(self, directory: str, node: str, max_payload: int = 1000) -> None:
        settings = EngineSettings(ping_interval=60, ping_timeout=30, max_payload=max_payload)

        def polling(socket: EngineSocket) -> PollingTransport:
            return PollingTransport(socket, reactor, 1.0)

        self.engine = EngineServer(settings, reactor, Handler, polling, node=node)
        self.handoff = Handoff(self.engine, reactor, directory, release_timeout=1.0)
        self.resource = SocketIOResource(
            self.engine, EngineWebSocketFactory(self.engine, 1), OriginPolicy(()), self.handoff
        )
        self.site = Site(self.resource)
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port.getHost().port}/socket.io/"

    async def stop(self) -> None:
        await self.handoff.stop()
        await self.port.stopListening()


@pytest.fixture
def runtime_dir() -> Iterator[str]:
    # Short, so the socket path fits a UNIX socket whatever pytest's tmp_path.
    with tempfile.TemporaryDirectory(prefix="sio-") as directory:
        yield os.path.join(directory, "run")


async def http(
    url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    producer = FileBodyProducer(_bytes_io(body)) if body is not None else None
    raw = Headers({k: [v] for k, v in (headers or {}).items()})
    response = await Agent(reactor).request(method.encode(), url.encode(), raw, producer)
    return response.code, await readBody(response)


def _bytes_io(body: bytes) -> Any:
    from io import BytesIO

    return BytesIO(body)


def query(sid: str | None = None, transport: str = "polling") -> str:
    return f"?EIO=4&transport={transport}" + (f"&sid={sid}" if sid else "")


async def handshake(process: Process) -> str:
    code, body = await http(process.url + query())
    assert code == 200, body
    return str(json.loads(body[1:])["sid"])


def error(body: bytes) -> tuple[int, str]:
    data = json.loads(body)
    return data["code"], data["message"]


@pytest_twisted.ensureDeferred
async def test_the_local_socket_is_private_and_goes_away(runtime_dir: str) -> None:
    owner = Process(runtime_dir, "0000000a")
    owner.handoff.start(owner.resource.render_handoff)
    try:
        path = os.path.join(runtime_dir, socket_name("0000000a"))
        assert owner.handoff.path == path
        assert stat.S_IMODE(os.stat(runtime_dir).st_mode) == 0o700
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        await owner.stop()
    assert not os.path.exists(path)


@pytest_twisted.ensureDeferred
async def test_a_taken_name_draws_another_process_id(runtime_dir: str) -> None:
    os.makedirs(runtime_dir, mode=0o700)
    open(os.path.join(runtime_dir, socket_name("0000000b")), "w").close()
    process = Process(runtime_dir, "0000000b")
    process.handoff.start(process.resource.render_handoff)
    try:
        assert process.engine.node != "0000000b"
        sid = await handshake(process)
        assert sid_node(sid) == process.engine.node
    finally:
        await process.stop()


@pytest_twisted.ensureDeferred
async def test_polling_through_another_process(runtime_dir: str) -> None:
    owner, front = Process(runtime_dir, "0000000a"), Process(runtime_dir, "0000000f")
    owner.handoff.start(owner.resource.render_handoff)
    front.handoff.start(front.resource.render_handoff)
    try:
        sid = await handshake(owner)
        socket = owner.engine.get(sid)
        assert socket is not None and front.engine.get(sid) is None
        handler = socket.handler
        assert isinstance(handler, Handler)
        # A POST reaches the owner's session.
        code, body = await http(front.url + query(sid), "POST", b"4hello\x1e4world")
        assert (code, body) == (200, b"ok")
        assert handler.messages == ["hello", "world"]
        # A GET waits as long as the owner holds it, then relays its answer.
        pending = Deferred.fromCoroutine(http(front.url + query(sid)))
        await _turns(10)
        assert not pending.called
        socket.send(eio.encode(eio.MESSAGE, "pushed"))
        assert await pending == (200, b"4pushed")
        assert (front.handoff.forwarded, owner.handoff.answered) == (2, 2)
        # The owner's own rules apply: a second pending GET ends the session.
        first = Deferred.fromCoroutine(http(front.url + query(sid)))
        await _turns(10)
        code, body = await http(front.url + query(sid))
        assert code == 400 and error(body)[0] == eio.ErrorCode.BAD_REQUEST
        await first
        assert handler.closed_with is not None and not socket.open
        # The session is gone: the owner says so, through the front.
        code, body = await http(front.url + query(sid))
        assert (code, error(body)) == (400, (1, "Session ID unknown"))
    finally:
        await front.stop()
        await owner.stop()


@pytest_twisted.ensureDeferred
async def test_the_body_limit_applies_before_forwarding(runtime_dir: str) -> None:
    owner, front = Process(runtime_dir, "0000000a"), Process(runtime_dir, "0000000f")
    seen: list[int] = []

    def spy(request: Request) -> Any:
        seen.append(len(request.content.read()))
        request.content.seek(0)
        return owner.resource.render_handoff(request)

    owner.handoff.start(spy)
    try:
        sid = await handshake(owner)
        socket = owner.engine.get(sid)
        assert socket is not None
        code, body = await http(front.url + query(sid), "POST", b"4" + b"x" * 5000)
        assert code == 413 and b"Payload too large" in body
        assert seen == [0]  # the instruction went over, not the body
        assert not socket.open
    finally:
        await front.stop()
        await owner.stop()


@pytest_twisted.ensureDeferred
async def test_a_client_that_goes_away_drops_the_owners_get(runtime_dir: str) -> None:
    owner, front = Process(runtime_dir, "0000000a"), Process(runtime_dir, "0000000f")
    owner.handoff.start(owner.resource.render_handoff)
    try:
        sid = await handshake(owner)
        socket = owner.engine.get(sid)
        assert socket is not None
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", front.port.getHost().port)
        client = await connectProtocol(endpoint, Protocol())
        client.transport.write(
            f"GET /socket.io/{query(sid)} HTTP/1.1\r\nHost: x\r\n\r\n".encode()  # type: ignore[union-attr]
        )
        await _until(lambda: front.handoff._in_flight)
        client.transport.abortConnection()  # type: ignore[union-attr]
        await _until(lambda: not socket.open)
        handler = socket.handler
        assert isinstance(handler, Handler) and handler.closed_with is not None
        assert handler.closed_with[1] == 1006  # as for a client connected to the owner
    finally:
        await front.stop()
        await owner.stop()


@pytest_twisted.ensureDeferred
async def test_no_such_process_is_an_unknown_sid(runtime_dir: str) -> None:
    front = Process(runtime_dir, "0000000f")
    front.handoff.start(front.resource.render_handoff)
    try:
        for method, body in (("GET", None), ("POST", b"4x")):
            code, answer = await http(front.url + query(make_sid("0000000e")), method, body)
            assert (code, error(answer)) == (400, (1, "Session ID unknown"))
        # A stale socket file (its process was killed) is no process either.
        with open(os.path.join(runtime_dir, socket_name("0000000d")), "w"):
            pass
        code, answer = await http(front.url + query(make_sid("0000000d")))
        assert (code, error(answer)) == (400, (1, "Session ID unknown"))
        assert front.handoff.unreachable == 3
        # Not a sid chatd makes: unknown, without trying anything.
        code, answer = await http(front.url + query("../../x"))
        assert (code, error(answer)) == (400, (1, "Session ID unknown"))
        assert front.handoff.forwarded == 3
    finally:
        await front.stop()


@pytest_twisted.ensureDeferred
async def test_a_websocket_upgrade_elsewhere_is_refused_so_the_client_keeps_polling(
    runtime_dir: str,
) -> None:
    owner, front = Process(runtime_dir, "0000000a"), Process(runtime_dir, "0000000f")
    owner.handoff.start(owner.resource.render_handoff)
    try:
        sid = await handshake(owner)
        code, body = await http(
            front.url + query(sid, "websocket"),
            headers={"Upgrade": "websocket", "Connection": "Upgrade"},
        )
        assert code == 400
        assert error(body)[0] == eio.ErrorCode.BAD_REQUEST and b"keep polling" in body
        assert owner.engine.get(sid) is not None  # still polling
    finally:
        await front.stop()
        await owner.stop()


@pytest_twisted.ensureDeferred
async def test_the_local_socket_serves_local_sessions_only(runtime_dir: str) -> None:
    """What comes over the local socket is never forwarded again."""
    owner = Process(runtime_dir, "0000000a")
    owner.handoff.start(owner.resource.render_handoff)
    try:
        request_to_owner = FakeOwnerAgent(runtime_dir, "0000000a")
        code, body = await request_to_owner.get(query(make_sid("0000000f")))
        assert (code, error(body)) == (400, (1, "Session ID unknown"))
    finally:
        await owner.stop()


@pytest_twisted.ensureDeferred
async def test_stopping_releases_the_gets_it_holds_for_others(runtime_dir: str) -> None:
    """A process that stops answers the GETs it forwarded with the owner's
    noop, so their clients poll again (through a process that runs on)."""
    owner, front = Process(runtime_dir, "0000000a"), Process(runtime_dir, "0000000f")
    owner.handoff.start(owner.resource.render_handoff)
    front.handoff.start(front.resource.render_handoff)
    try:
        sid = await handshake(owner)
        pending = Deferred.fromCoroutine(http(front.url + query(sid)))
        await _until(lambda: front.handoff._in_flight)
        await front.handoff.stop()
        assert await pending == (200, b"6")
        socket = owner.engine.get(sid)
        assert socket is not None and socket.open  # the session goes on
    finally:
        await front.stop()
        await owner.stop()


@pytest_twisted.ensureDeferred
async def test_an_owner_that_dies_while_answering_is_an_unknown_sid(runtime_dir: str) -> None:
    os.makedirs(runtime_dir, mode=0o700)
    dying = Dying()
    port = reactor.listenUNIX(os.path.join(runtime_dir, socket_name("0000000c")), Site(dying))
    front = Process(runtime_dir, "0000000f")
    try:
        pending = Deferred.fromCoroutine(http(front.url + query(make_sid("0000000c"))))
        await _until(lambda: dying.requests)
        dying.requests[0].channel.transport.abortConnection()  # type: ignore[union-attr]
        code, body = await pending
        assert (code, error(body)) == (400, (1, "Session ID unknown"))
    finally:
        await front.stop()
        await port.stopListening()


class Dying(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Request] = []

    def render(self, request: Request) -> Any:
        self.requests.append(request)
        return NOT_DONE_YET


class FakeOwnerAgent:
    """Talks to a process's local socket directly, as another process would."""

    def __init__(self, directory: str, node: str) -> None:
        from chatd.bindings.socketio.handoff import _ToProcess

        self._agent = Agent.usingEndpointFactory(reactor, _ToProcess(reactor, directory, 5))
        self._node = node

    async def get(self, q: str) -> tuple[int, bytes]:
        uri = f"http://{self._node}/socket.io/{q}".encode()
        response = await self._agent.request(b"GET", uri, Headers(), None)
        return response.code, await readBody(response)


async def _turns(count: int) -> None:
    for _ in range(count):
        d: Deferred[None] = Deferred()
        reactor.callLater(0.001, d.callback, None)
        await d


async def _until(condition: Any, timeout: float = 5.0) -> None:
    deadline = reactor.seconds() + timeout
    while not condition():
        assert reactor.seconds() < deadline, "timed out"
        await _turns(1)
