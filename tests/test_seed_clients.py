"""The Socket.IO seeds' own client examples (seeds 001, 003 and 004, the
"Client Connection Example" / "Example Client Code" blocks of their
READMEs), run unchanged with the real socket.io-client 4 against chatd,
with what each README says should happen checked from the outside: what
the app prints, what other users and the HTTP API see.

The scripts are tests/js/sioclient/seeds/*.mjs: the README block as is,
the URL and the token read from the environment (the app's
configuration), nothing else changed; ``test_the_copies_are_the_readmes``
checks that against shared/seeds when that directory is there.  Node runs
them under harness.mjs, which turns each console.log/console.error into a
JSON line.  The app runs until the test has seen what it waits for (each
wait has a deadline), then gets SIGTERM; it is killed if it lingers.

Needs ``node`` and ``npm ci --prefix tests/js/sioclient`` (.ci/run does
it); skips without them unless CHATD_TEST_REQUIRE_SERVICES is set."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from tests.daemon import end_process
from tests.test_http_api import API_KEY, http
from tests.test_socketio_node_client import CLIENT_DIR, ISO, require_client
from tests.wsclient import deferred

SEEDS = CLIENT_DIR / "seeds"
SEED_READMES = Path(__file__).resolve().parent.parent.parent / "shared" / "seeds"
TIMEOUT = 5.0

# script -> (README, the heading above its block, [(README literal, the copy's text)])
COPIES: dict[str, tuple[str, str, list[tuple[str, str]]]] = {
    "001-socketio-social-live.mjs": (
        "001-socketio-social-live.md",
        "## Client Connection Example",
        [
            ("'http://localhost:3001'", "process.env.CHATD_URL"),
            ("'your-jwt-token'", "process.env.CHATD_TOKEN"),
        ],
    ),
    "003-socketio-direct-messages.mjs": (
        "003-socketio-direct-messages.md",
        "## Client Connection Example",
        [
            ('"ws://localhost:3001"', "process.env.CHATD_WS_URL"),
            ('"your-jwt-token"', "process.env.CHATD_TOKEN"),
        ],
    ),
    "004-socketio-rest-push.mjs": (
        "004-socketio-rest-push.md",
        "#### Example Client Code",
        [
            ("'http://localhost:8090'", "process.env.CHATD_URL"),
            ("'Bearer YOUR_JWT_TOKEN'", "`Bearer ${process.env.CHATD_TOKEN}`"),
        ],
    ),
}


class SeedApp:
    """One seed script under node; its console output, line by line."""

    def __init__(self, proc: Any) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []
        self.stderr = b""
        self._arrived = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, script: str, **env: str) -> SeedApp:
        proc = await asyncio.create_subprocess_exec(
            "node",
            "--import",
            str(SEEDS / "harness.mjs"),
            str(SEEDS / script),
            cwd=SEEDS,
            env={**os.environ, **env},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                self.lines.append({"level": "raw", "args": [line.decode()]})
            self._arrived.set()
        self._arrived.set()

    def printed(self, first: str) -> list[list[Any]]:
        """The args of every line printed so far whose first arg is ``first``."""
        return [line["args"] for line in self.lines if line["args"][:1] == [first]]

    async def expect(self, first: str, where: Any = lambda args: True) -> list[Any]:
        """Wait (at most TIMEOUT) for a printed line starting with
        ``first`` whose args match ``where``; its args."""
        return await deferred(self._expect(first, where))

    async def _expect(self, first: str, where: Any) -> list[Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while True:
            for args in self.printed(first):
                if where(args):
                    return args
            if self._reader.done():
                raise AssertionError(f"the app exited before {first!r}: {self._report()}")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"the app did not print {first!r}: {self._report()}")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                pass

    def _report(self) -> str:
        return f"printed {self.lines}, exit {self.proc.returncode}"

    async def stop(self) -> None:
        await deferred(self._stop())

    async def _stop(self) -> None:
        await end_process(self.proc, TIMEOUT)
        await self._reader
        assert self.proc.stderr is not None
        self.stderr = await self.proc.stderr.read()


@pytest.fixture
def seed_apps():
    require_client()
    started: list[SeedApp] = []

    async def start(script: str, server: Any, user: str) -> SeedApp:
        app = await deferred(
            SeedApp.start(
                script,
                CHATD_URL=server.http,
                CHATD_WS_URL=f"ws://127.0.0.1:{server.port}",
                CHATD_TOKEN=server.token(user),
            )
        )
        started.append(app)
        return app

    return started, start


async def _stop_all(started: list[SeedApp]) -> None:
    for app in started:
        await app.stop()


# -- the copies ---------------------------------------------------------------------------


def readme_block(readme: str, heading: str) -> str:
    text = (SEED_READMES / readme).read_text()
    after = text[text.index(heading + "\n") :]
    match = re.search(r"```(?:typescript|javascript)\n(.*?)```", after, re.S)
    assert match is not None, (readme, heading)
    return match.group(1)


@pytest.mark.parametrize("script", sorted(COPIES))
def test_the_copies_are_the_readmes(script: str) -> None:
    readme, heading, substitutions = COPIES[script]
    if not (SEED_READMES / readme).is_file():
        pytest.skip(f"{SEED_READMES / readme} is not here (it lives beside the repository)")
    copy = (SEEDS / script).read_text()
    snippet = copy.split("// ---- seed README snippet begins\n")[1]
    snippet = snippet.split("// ---- seed README snippet ends\n")[0]
    for literal, configured in substitutions:
        assert snippet.count(configured) == 1, (script, configured)
        snippet = snippet.replace(configured, literal)
    assert snippet == readme_block(readme, heading)


# -- seed 001: social app, chat and live --------------------------------------------------


async def run_seed_001(server_factory: Any, seed_apps: Any, member_already: bool) -> None:
    """The README: connect with ``auth: {token}``, join 'chat-id-123', send
    'Hello, world!', log every ``chat:message``. chatd pushes a message to
    every member, the sender included, so the app logs its own message
    too, and then the other members'.

    Run for a user who is a member already (the backend added them, or
    they joined before): for a new user the example's back-to-back join
    and message fail most of the time (NOT_A_MEMBER, logged as "Socket
    error:"), see test_seed_001_join_then_message_back_to_back."""
    started, start = seed_apps
    server = await server_factory(api_key=API_KEY)
    try:
        # The room the README joins, made by the backend as an app would.
        status, answer = await http(
            server,
            "POST",
            "/api/rooms",
            API_KEY,
            {"id": "chat-id-123", "name": "Chat 123", "type": "public"},
        )
        assert status in (200, 201), answer
        if member_already:
            status, answer = await http(
                server, "PUT", "/api/rooms/chat-id-123/members/app-user", API_KEY
            )
            assert status == 200, answer
        member = await server.connect("member")
        await member.ok("chat:join", {"chatId": "chat-id-123"})
        app = await start("001-socketio-social-live.mjs", server, "app-user")
        await app.expect("Connected to WebSocket server")
        heard = (await member.next("chat:message"))["data"]
        assert heard["content"] == "Hello, world!" and heard["userId"] == "app-user"
        _, own = await app.expect("New message:")
        assert own["id"] == heard["id"] and own["chatId"] == "chat-id-123"
        await member.ok("chat:message", {"chatId": "chat-id-123", "content": "hi app"})
        _, other = await app.expect("New message:", lambda a: a[1]["userId"] == "member")
        assert other["content"] == "hi app" and other["seq"] == heard["seq"] + 1
        assert app.printed("Socket error:") == []
    finally:
        await _stop_all(started)


async def _polling(server: Any, method: str, query: str, body: bytes | None = None) -> bytes:
    from io import BytesIO

    from twisted.internet import reactor
    from twisted.web.client import Agent, FileBodyProducer, readBody

    url = f"{server.http}/socket.io/?EIO=4&transport=polling{query}"
    producer = FileBodyProducer(BytesIO(body)) if body is not None else None
    request = Agent(reactor).request(method.encode(), url.encode(), None, producer)
    request.addTimeout(TIMEOUT, reactor)
    response = await request
    assert response.code == 200, (method, query, response.code)
    return await readBody(response)


@pytest_twisted.ensureDeferred
async def test_seed_001_join_then_message_back_to_back(server_factory):
    """Seed 001's example emits ``chat:join`` and ``chat:message`` before it
    is connected; socket.io-client buffers both and, over polling, sends
    them in one POST.  The same POST, by hand, for five new users: each
    message must be accepted (pushed back to the sender, as to every
    member).  Before chatd made a connection's messages to a room wait for
    its join of that room, about one in ten got through (the join lost the
    race in storage), so five in a row do not pass by luck."""
    server = await server_factory(api_key=API_KEY)
    status, answer = await http(
        server, "POST", "/api/rooms", API_KEY, {"id": "chat-id-123", "name": "c", "type": "public"}
    )
    assert status in (200, 201), answer
    outcomes = [await _join_then_message(server, f"new-user-{i}") for i in range(5)]
    assert outcomes == [("accepted", "Hello, world!")] * 5


async def _join_then_message(server: Any, user: str) -> tuple[str, Any]:
    sid = json.loads((await _polling(server, "GET", ""))[1:])["sid"]
    query = f"&sid={sid}"
    await _polling(
        server, "POST", query, b"40" + json.dumps({"token": server.token(user)}).encode()
    )
    assert (await _polling(server, "GET", query)).startswith(b"40{")
    join = b'42["chat:join","chat-id-123"]'
    message = b'42["chat:message",{"chatId":"chat-id-123","content":"Hello, world!"}]'
    await _polling(server, "POST", query, join + b"\x1e" + message)
    outcome: tuple[str, Any] | None = None
    while outcome is None:
        for packet in (await _polling(server, "GET", query)).split(b"\x1e"):
            if packet.startswith(b"42"):
                name, data = json.loads(packet[2:])
                if name == "chat:message":
                    outcome = ("accepted", data["content"])
                elif name == "error":
                    outcome = (data["code"], data.get("event"))
    await _polling(server, "POST", query, b"1")  # the client's close
    await _polling(server, "GET", query)  # takes the last packet: the session ends
    return outcome


@pytest_twisted.ensureDeferred
async def test_seed_001_client_already_a_member(server_factory, seed_apps):
    await run_seed_001(server_factory, seed_apps, member_already=True)


# -- seed 003: direct messages and presence ---------------------------------------------


@pytest_twisted.ensureDeferred
async def test_seed_003_client_sends_receives_and_sees_presence(server_factory, seed_apps):
    """The README: ``io("ws://…", {auth: {token}})``, ``message:send`` to
    "user-id", ``message:receive`` logged, ``user:online`` / ``user:offline``
    of others logged.  "user-id" is a real user here, a friend of the app's
    user (synced by the backend), so presence reaches the app."""
    started, start = seed_apps
    server = await server_factory(api_key=API_KEY, presence_grace=0.1)
    try:
        friend = await server.connect("user-id")
        status, answer = await http(server, "PUT", "/api/friendships/app-user/user-id", API_KEY)
        assert status == 200, answer
        app = await start("003-socketio-direct-messages.mjs", server, "app-user")
        await app.expect("Connected to WebSocket server")
        received = (await friend.next("message:receive"))["data"]["message"]
        assert received["content"] == "Hello!" and received["senderId"] == "app-user"
        assert received["recipientId"] == "user-id"
        assert received["sessionId"] == "optional-session-id"
        await friend.close()
        await app.expect("User user-id is now offline")
        friend = await server.connect("user-id")
        await app.expect("User user-id is now online")
        await friend.ok("message:send", {"recipientId": "app-user", "content": "Hi there"})
        _, message = await app.expect("New message:")
        # chatd's message:receive is {message: {...}} (PROTOCOL.md 4); the
        # README's handler names its argument "message" and logs it whole.
        assert message["message"]["content"] == "Hi there"
        assert message["message"]["senderId"] == "user-id"
        await friend.close()
    finally:
        await _stop_all(started)


# -- seed 004: backend pushes over the HTTP API ------------------------------------------


@pytest_twisted.ensureDeferred
async def test_seed_004_client_gets_pong_and_every_backend_push(server_factory, seed_apps):
    """The README: connect with an ``Authorization: Bearer`` header, log
    ``authenticated``, ``pong`` (after ``emit('ping')``) and every
    ``message``; the backend sends through the README's HTTP endpoints with
    the README's bodies, and each push arrives as ``{type, data,
    timestamp}`` (a notification as ``{type: 'notification', data: {title,
    body, ...}}``); the connection endpoints see the user."""
    started, start = seed_apps
    server = await server_factory(api_key=API_KEY)
    user = "user123"
    try:
        app = await start("004-socketio-rest-push.mjs", server, user)
        await app.expect("Connected to WebSocket server")
        _, authenticated = await app.expect("Authenticated:")
        assert authenticated["userId"] == user and authenticated["connectionId"]
        _, pong = await app.expect("Received pong:")
        assert ISO.match(pong["timestamp"])

        status, connected = await http(server, "GET", "/websocket/users/connected", API_KEY)
        assert status == 200
        assert connected["users"] == [{"userId": user, "connections": 1}]
        assert connected["count"] == 1
        status, state = await http(server, "GET", f"/websocket/users/{user}/status", API_KEY)
        assert (status, state["online"], state["connections"]) == (200, True, 1)
        status, me = await http(server, "GET", "/websocket/me/status", server.token(user))
        assert status == 200 and me["userId"] == user and me["connections"] == 1

        pushes = [
            (
                "/websocket/message/user",
                {"userId": user, "type": "chat", "data": {"message": "Hello!", "sender": "system"}},
            ),
            (
                "/websocket/message/users",
                {
                    "userIds": [user, "user456"],
                    "type": "announcement",
                    "data": {"title": "System Update", "message": "System will be updated tonight"},
                },
            ),
            (
                "/websocket/message/broadcast",
                {
                    "type": "system",
                    "data": {"message": "Welcome to our platform!", "level": "info"},
                },
            ),
        ]
        for path, body in pushes:
            status, answer = await http(server, "POST", path, API_KEY, body)
            assert (status, answer) == (200, {"delivered": 1}), path
            _, message = await app.expect(
                "Received message:", lambda a, t=body["type"]: a[1]["type"] == t
            )
            assert message["data"] == body["data"] and ISO.match(message["timestamp"]), path

        notification = {
            "userId": user,
            "title": "New Message",
            "body": "You have received a new message",
            "data": {"category": "message", "priority": "normal"},
        }
        status, answer = await http(
            server, "POST", "/websocket/notification", API_KEY, notification
        )
        assert status == 200 and answer["delivered"] == 1
        _, message = await app.expect("Received message:", lambda a: a[1]["type"] == "notification")
        data = message["data"]
        assert data["title"] == "New Message" and data["body"] == "You have received a new message"
        assert data["category"] == "message" and data["priority"] == "normal"
        assert data["id"] == answer["id"] and ISO.match(message["timestamp"])

        status, answer = await http(
            server, "DELETE", f"/websocket/users/{user}/disconnect", API_KEY
        )
        assert (status, answer) == (200, {"disconnected": 1})
        status, state = await http(server, "GET", f"/websocket/users/{user}/status", API_KEY)
        assert state["connections"] == 0
    finally:
        await _stop_all(started)
