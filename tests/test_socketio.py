"""The Socket.IO binding over real loopback sockets, with the independent
``python-socketio`` client (on aiohttp, in the reactor's asyncio loop):
polling then upgrade, WebSocket only, every way to authenticate, rooms
with and without acks, a room shared with a ``/ws`` client, and a backend
push.  Waits are for events with a deadline, never fixed sleeps."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import pytest_twisted
import socketio

from tests.daemon import Daemon, clean_env, free_port, run_module
from tests.test_http_api import API_KEY, http
from tests.wsclient import deferred

TIMEOUT = 5.0


class SioClient:
    """A python-socketio ``AsyncClient`` that keeps every event in order,
    so a test can wait for one and still assert on the others."""

    def __init__(self) -> None:
        self.client = socketio.AsyncClient(reconnection=False)
        self.inbox: list[tuple[str, Any]] = []
        self._arrived = asyncio.Event()
        self.connect_errors: list[Any] = []
        self.disconnects: list[Any] = []
        self.client.on("*", self._event)
        self.client.on("connect_error", self._connect_error)
        self.client.on("disconnect", self._disconnect)

    async def _event(self, event: str, *args: Any) -> None:
        self.inbox.append((event, args[0] if args else None))
        self._arrived.set()

    async def _connect_error(self, data: Any) -> None:
        self.connect_errors.append(data)
        self._arrived.set()

    async def _disconnect(self, *reason: Any) -> None:
        self.disconnects.append(reason)
        self._arrived.set()

    async def connect(self, url: str, **kwargs: Any) -> SioClient:
        kwargs.setdefault("wait_timeout", TIMEOUT)
        await deferred(self.client.connect(url, **kwargs))
        return self

    @property
    def transport(self) -> str:
        return self.client.transport()

    async def emit(self, event: str, data: Any = None) -> None:
        await deferred(self.client.emit(event, data))

    async def call(self, event: str, data: Any = None) -> Any:
        """Emit with an ack callback; the ack's argument."""
        return await deferred(self.client.call(event, data, timeout=TIMEOUT))

    async def ok(self, event: str, data: Any = None) -> Any:
        result = await self.call(event, data)
        assert isinstance(result, dict) and "error" not in result, f"{event}: {result}"
        return result

    async def next(self, event: str, where: Any = None) -> Any:
        """The first ``event`` (whose data matches ``where``), taken out of
        the inbox; waits for it at most ``TIMEOUT`` seconds."""
        return await deferred(self._next(event, where))

    async def _next(self, event: str, where: Any) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while True:
            for index, (name, data) in enumerate(self.inbox):
                if name == event and (where is None or where(data)):
                    del self.inbox[index]
                    return data
            self._arrived.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no {event} within {TIMEOUT}s; inbox: {self.inbox[-5:]}")
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                pass

    async def wait_until(self, predicate: Any) -> None:
        await deferred(self._wait_until(predicate))

    async def _wait_until(self, predicate: Any) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while not predicate():
            self._arrived.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError("condition not met in time")
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                pass

    async def close(self) -> None:
        if self.client.connected:
            await deferred(self.client.disconnect())
        # Let aiohttp close its session whatever the state.
        eio = self.client.eio
        if getattr(eio, "http", None) is not None and not eio.http.closed:
            await deferred(eio.http.close())


@pytest.fixture
def sio_clients():
    made: list[SioClient] = []

    def make() -> SioClient:
        client = SioClient()
        made.append(client)
        return client

    yield made, make


async def _close_all(made: list[SioClient]) -> None:
    for client in made:
        await client.close()


def _base(server: Any) -> str:
    return server.http


# -- connecting and authenticating ----------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_polling_then_upgrade_with_auth_payload(server, sio_clients):
    made, make = sio_clients
    try:
        client = await make().connect(_base(server), auth={"token": server.token("alice")})
        authenticated = await client.next("authenticated")
        assert authenticated["userId"] == "alice"
        assert authenticated["connectionId"] == client.client.get_sid()
        await client.wait_until(lambda: client.transport == "websocket")
        assert (await client.ok("ping"))["timestamp"].endswith("Z")
    finally:
        await _close_all(made)


@pytest_twisted.ensureDeferred
async def test_websocket_only_with_header_token(server, sio_clients):
    made, make = sio_clients
    try:
        client = await make().connect(
            _base(server),
            headers={"Authorization": f"Bearer {server.token('bob')}"},
            transports=["websocket"],
        )
        assert client.transport == "websocket"
        assert (await client.next("authenticated"))["userId"] == "bob"
    finally:
        await _close_all(made)


@pytest_twisted.ensureDeferred
async def test_polling_only_with_query_token(server, sio_clients):
    made, make = sio_clients
    try:
        client = await make().connect(
            f"{_base(server)}?token={server.token('carol')}", transports=["polling"]
        )
        assert client.transport == "polling"
        assert (await client.next("authenticated"))["userId"] == "carol"
        assert "timestamp" in await client.ok("ping")
    finally:
        await _close_all(made)


@pytest.mark.parametrize("transports", [["polling"], ["websocket"]])
@pytest_twisted.ensureDeferred
async def test_bad_or_missing_token_is_a_connect_error(server, sio_clients, transports):
    made, make = sio_clients
    try:
        for auth in ({"token": "not-a-jwt"}, None):
            client = make()
            with pytest.raises(socketio.exceptions.ConnectionError):
                await client.connect(_base(server), auth=auth, transports=transports)
            await client.wait_until(lambda c=client: bool(c.connect_errors))
            assert client.connect_errors[0]["data"]["code"] == "UNAUTHORIZED"
            assert "authentication" in client.connect_errors[0]["message"]
    finally:
        await _close_all(made)


# -- rooms and messages -----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_room_with_and_without_acks(server, sio_clients):
    made, make = sio_clients
    try:
        alice = await make().connect(_base(server), auth={"token": server.token("alice")})
        bob = await make().connect(
            _base(server), auth={"token": server.token("bob")}, transports=["websocket"]
        )
        room = (await alice.ok("chat:create", {"name": "sio", "type": "public"}))["room"]
        await alice.ok("chat:join", {"chatId": room["id"]})
        # Without an ack callback the confirmation comes as its named event.
        await bob.emit("chat:join", room["id"])
        joined = await bob.next("chat:joined")
        assert joined["room"]["id"] == room["id"]
        sent = await alice.ok(
            "chat:message", {"chatId": room["id"], "content": "hi", "tempId": "t"}
        )
        assert sent["seq"] == 1 and sent["tempId"] == "t"
        pushed = await bob.next("chat:message")
        assert pushed["content"] == "hi" and pushed["userId"] == "alice"
        await bob.emit("chat:message", {"chatId": room["id"], "content": "hello"})
        assert (await alice.next("chat:message", lambda m: m["seq"] == 2))["content"] == "hello"
        # An error with an ack id comes back in the ack; without one, as `error`.
        failed = await bob.call("chat:join", {"chatId": "r_missing"})
        assert failed["error"]["code"] == "ROOM_NOT_FOUND"
        await bob.emit("chat:nope", {})
        error = await bob.next("error")
        assert error["code"] == "UNKNOWN_EVENT" and error["event"] == "chat:nope"
    finally:
        await _close_all(made)


@pytest_twisted.ensureDeferred
async def test_mixed_room_sees_one_order(server, sio_clients):
    made, make = sio_clients
    try:
        native = await server.connect("nat")
        polling = await make().connect(
            _base(server), auth={"token": server.token("pol")}, transports=["polling"]
        )
        upgraded = await make().connect(_base(server), auth={"token": server.token("upg")})
        room = (await native.ok("chat:create", {"name": "mixed", "type": "public"}))["room"]
        for client in (polling, upgraded):
            await client.ok("chat:join", {"chatId": room["id"]})
        await native.ok("chat:join", {"chatId": room["id"]})
        for i in range(6):
            sender = (native, polling, upgraded)[i % 3]
            data = {"chatId": room["id"], "content": f"m{i}"}
            if sender is native:
                await native.send("chat:message", data)
            else:
                await sender.emit("chat:message", data)
        seen_native = [
            (f["data"]["seq"], f["data"]["content"])
            for f in await native.collect("chat:message", 6)
        ]
        for client in (polling, upgraded):
            seen = [
                (m["seq"], m["content"])
                for m in [await client.next("chat:message") for _ in range(6)]
            ]
            assert seen == seen_native
        assert [seq for seq, _ in seen_native] == [1, 2, 3, 4, 5, 6]
    finally:
        await _close_all(made)


@pytest_twisted.ensureDeferred
async def test_backend_push_reaches_socketio(server_factory, sio_clients):
    made, make = sio_clients
    try:
        server = await server_factory(api_key=API_KEY)
        client = await make().connect(_base(server), auth={"token": server.token("dana")})
        await client.next("authenticated")
        status, answer = await http(
            server,
            "POST",
            "/websocket/message/user",
            API_KEY,
            {"userId": "dana", "type": "chat", "data": {"x": 1}},
        )
        assert status == 200 and answer["delivered"] == 1
        message = await client.next("message")
        assert message["type"] == "chat" and message["data"] == {"x": 1}
        status, answer = await http(server, "DELETE", "/websocket/users/dana/disconnect", API_KEY)
        assert answer == {"disconnected": 1}
        await client.wait_until(lambda: bool(client.disconnects))
    finally:
        await _close_all(made)


@pytest_twisted.ensureDeferred
async def test_metrics_count_connections_per_transport(server, sio_clients):
    from tests.test_http_api import _metrics_text

    made, make = sio_clients
    try:
        polling = await make().connect(
            _base(server), auth={"token": server.token("ivy")}, transports=["polling"]
        )
        websocket = await make().connect(
            _base(server), auth={"token": server.token("jon")}, transports=["websocket"]
        )
        native = await server.connect("kim")
        for client in (polling, websocket):
            await client.next("authenticated")
        status, text, _ = await _metrics_text(server)
        assert status == 200
        for transport in ("ws", "socketio-polling", "socketio-websocket"):
            assert f'chatd_connections_by_transport{{transport="{transport}"}} 1.0' in text
        assert native.is_open
    finally:
        await _close_all(made)


@pytest_twisted.ensureDeferred
async def test_seed_004_reads_notifications_from_the_message_event(server_factory, sio_clients):
    """Seed 004's clients read everything from socket.on('message'): a
    notification is {type: "notification", data: {title, body, ...}} there,
    live and when handed over on the next connect; chatd's own
    ``notification`` event comes too."""
    server = await server_factory(api_key=API_KEY)
    made, make = sio_clients
    body = {"category": "message", "priority": "normal"}
    try:
        live = await make().connect(_base(server), auth={"token": server.token("gail")})
        await live.next("authenticated")
        status, answer = await http(
            server,
            "POST",
            "/websocket/notification",
            API_KEY,
            {"userId": "gail", "title": "New Message", "body": "You have mail", "data": body},
        )
        assert status == 200 and answer["delivered"] == 1
        message = await live.next("message")
        native = await live.next("notification")
        assert message["type"] == "notification"
        assert message["data"] == {
            **body,
            "id": answer["id"],
            "kind": "notification",
            "title": "New Message",
            "body": "You have mail",
        }
        assert message["timestamp"] == native["createdAt"] and native["id"] == answer["id"]
        # Kept for an offline user, and then handed over in both forms.
        status, answer = await http(
            server,
            "POST",
            "/websocket/notification",
            API_KEY,
            {"userId": "hank", "title": "Later", "body": "while you were away"},
        )
        assert status == 200 and answer["delivered"] == 0
        later = await make().connect(
            _base(server), auth={"token": server.token("hank")}, transports=["websocket"]
        )
        message = await later.next("message")
        assert message["type"] == "notification" and message["data"]["title"] == "Later"
        assert message["data"]["body"] == "while you were away"
        assert (await later.next("notification"))["id"] == answer["id"]
    finally:
        await _close_all(made)


@pytest_twisted.ensureDeferred
async def test_shutdown_drains_socketio_sessions_like_the_others(server, sio_clients):
    made, make = sio_clients
    try:
        upgraded = await make().connect(_base(server), auth={"token": server.token("erin")})
        polling = await make().connect(
            _base(server), auth={"token": server.token("finn")}, transports=["polling"]
        )
        for client in (upgraded, polling):
            await client.next("authenticated")
        assert len(server.service.hub) == 2
        from twisted.internet import reactor

        started = reactor.seconds()
        await server.service.stopService()
        # Closed by the drain, not by its timeout.
        assert reactor.seconds() - started < server.config.shutdown_timeout
        assert len(server.service.hub) == 0
        for client in (upgraded, polling):
            await client.wait_until(lambda c=client: bool(c.disconnects))
    finally:
        await _close_all(made)


# -- the raw protocol on a real socket ----------------------------------------------------


async def _raw(server: Any, query: str = "") -> Any:
    import websockets

    url = f"ws://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=websocket{query}"
    return await deferred(websockets.connect(url, open_timeout=TIMEOUT))


async def _recv(ws: Any) -> Any:
    return await deferred(asyncio.wait_for(ws.recv(), TIMEOUT))


@pytest_twisted.ensureDeferred
async def test_raw_websocket_handshake_errors_and_limits(server_factory):
    import json

    import websockets

    server = await server_factory(socketio_max_payload=1000)
    status, body = await http(server, "GET", "/socket.io/?EIO=3&transport=polling")
    assert status == 400 and body["code"] == 5 and "Socket.IO v2" in body["message"]
    status, body = await http(server, "GET", "/socket.io/?EIO=4&transport=websocket&sid=x")
    assert (status, body) == (400, {"code": 1, "message": "Session ID unknown"})
    ws = await _raw(server)
    opened = json.loads((await _recv(ws))[1:])
    assert opened["upgrades"] == [] and opened["maxPayload"] == 1000
    await deferred(ws.send('40{"token":"bad"}'))
    refused = await _recv(ws)
    assert refused.startswith("44") and json.loads(refused[2:])["data"]["code"] == "UNAUTHORIZED"
    await deferred(ws.send("40" + json.dumps({"token": server.token("gus")})))
    assert (await _recv(ws)).startswith("40{")
    assert json.loads((await _recv(ws))[2:])[0] == "authenticated"
    await deferred(ws.send('42["ping","' + "x" * 1000 + '"]'))
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await _recv(ws)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    # A packet that is not Engine.IO ends that session only.
    other = await _raw(server)
    await _recv(other)
    await deferred(other.send("abc"))
    with pytest.raises(websockets.ConnectionClosed):
        await _recv(other)
    third = await _raw(server)  # the server goes on
    assert (await _recv(third)).startswith("0{")
    await deferred(third.close())


def test_disconnect_then_close_is_a_clean_closing_handshake(tmp_path):
    """socket.io-client's disconnect() sends 41 and its WebSocket close right
    behind it: the client must get chatd's close frame back.  Both frames go
    in one TCP write to a real twistd process, so they reach chatd in one
    read (a close of chatd's own, crossing the client's, used to lose its
    close frame: 1006 in the browser)."""
    port = free_port()
    data = tmp_path / "data"
    env = clean_env()
    args = ["--data-dir", str(data), "--listen", f"tcp:{port}:interface=127.0.0.1"]
    daemon = Daemon(args, env, str(tmp_path))
    try:
        daemon.wait_healthy(port)
        token = run_module(["token", "lena", "--data-dir", str(data)], env, str(tmp_path))
        with RawWebSocket(port, "/socket.io/?EIO=4&transport=websocket") as ws:
            assert ws.read_text().startswith("0{")
            ws.send_text("40" + json.dumps({"token": token.stdout.strip()}))
            assert ws.read_text().startswith("40{")
            assert "authenticated" in ws.read_text()
            ws.send_raw(ws.frame(0x1, b"41") + ws.frame(0x8, (1000).to_bytes(2, "big")))
            opcode, payload = ws.read_frame()
            assert opcode == 0x8 and payload[:2] == (1000).to_bytes(2, "big")
    finally:
        assert daemon.terminate(), daemon.output()


class RawWebSocket:
    """A WebSocket client by hand, so a test can put two frames into one
    TCP write (no client library lets it)."""

    def __init__(self, port: int, path: str) -> None:
        import base64
        import os
        import socket

        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._recv()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def __enter__(self) -> RawWebSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        assert chunk, "the server closed the TCP connection"
        return chunk

    def _take(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self.buffer += self._recv()
        taken, self.buffer = self.buffer[:n], self.buffer[n:]
        return taken

    @staticmethod
    def frame(opcode: int, payload: bytes) -> bytes:
        import os

        mask = os.urandom(4)
        assert len(payload) < 65536
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        if len(payload) < 126:
            head = bytes([0x80 | opcode, 0x80 | len(payload)])
        else:
            head = bytes([0x80 | opcode, 0x80 | 126]) + len(payload).to_bytes(2, "big")
        return head + mask + masked

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_text(self, text: str) -> None:
        self.send_raw(self.frame(0x1, text.encode()))

    def read_frame(self) -> tuple[int, bytes]:
        first, second = self._take(2)
        length = second & 0x7F
        if length == 126:
            length = int.from_bytes(self._take(2), "big")
        elif length == 127:
            length = int.from_bytes(self._take(8), "big")
        return first & 0x0F, self._take(length)

    def read_text(self) -> str:
        opcode, payload = self.read_frame()
        assert opcode == 0x1, (opcode, payload)
        return payload.decode()
