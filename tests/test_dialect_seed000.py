"""Seed 000's clients (shared/seeds/000-ws-chat-friends.md) against a real
``twistd -n chatd`` over loopback: the README's example client run as
written under Node (on the bare ``ws://host:port``, no path), then direct
messages, typing, presence, rooms, bad frames, a restart, and a native
``/ws`` client in the same conversations.

The daemon is one subprocess for the module (each test uses users and rooms
of its own); the restart test runs its own.  The README example runs under
``node --experimental-websocket`` (the browser's WebSocket, which the
snippet uses as a global; no npm package needed)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from chatd.auth import mint_token
from chatd.config import Config
from tests.daemon import Daemon, clean_env, end_process, free_port
from tests.wsclient import WsClient, deferred

SECRET = "seed000-test-secret-" + "s" * 32
API_KEY = "seed000-api-key-0123456789"
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
TIMEOUT = 5.0

CLIENT_DIR = Path(__file__).resolve().parent / "js" / "seed000"
SEED_README = (
    Path(__file__).resolve().parent.parent.parent / "shared" / "seeds" / "000-ws-chat-friends.md"
)
README_BLOCK = "\n".join(
    [
        "const ws = new WebSocket('ws://localhost:3002');",
        "",
        "ws.onopen = () => {",
        "  // Send authentication",
        "  ws.send(JSON.stringify({",
        "    type: 'authenticate',",
        "    token: 'your-jwt-token-here'",
        "  }));",
        "};",
        "",
        "ws.onmessage = (event) => {",
        "  const data = JSON.parse(event.data);",
        "  ",
        "  switch (data.type) {",
        "    case 'authenticated':",
        "      console.log('Authenticated successfully');",
        "      break;",
        "    case 'message':",
        "      console.log('New message:', data.message);",
        "      break;",
        "    // Handle other events...",
        "  }",
        "};",
        "",
    ]
)
"""The README's "Example client authentication" block, verbatim."""
SUBSTITUTIONS = [
    ("'ws://localhost:3002'", "process.env.CHATD_WS_URL"),
    ("'your-jwt-token-here'", "process.env.CHATD_TOKEN"),
]


class Chatd:
    """``twistd -n chatd`` on a free port, SQLite in its own data dir."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.root = f"ws://127.0.0.1:{self.port}/"
        self.native = f"ws://127.0.0.1:{self.port}/ws"
        self.http = f"http://127.0.0.1:{self.port}"
        self.args = [
            "--listen",
            f"tcp:{self.port}:interface=127.0.0.1",
            "--data-dir",
            str(workdir / "data"),
            "--jwt-secret",
            SECRET,
            "--api-key",
            API_KEY,
            "--presence-grace",
            "0.2",
        ]
        self.daemon: Daemon | None = None
        self._minting = Config(jwt_secret=SECRET)

    def start(self) -> None:
        self.daemon = Daemon(self.args, clean_env(), str(self.workdir))
        self.daemon.wait_healthy(self.port)

    def stop(self) -> None:
        if self.daemon is not None:
            assert self.daemon.terminate(), self.daemon.output()
            self.daemon = None

    def token(self, user: str, name: str | None = None) -> str:
        return mint_token(self._minting, user, ttl=600, name=name)


@pytest.fixture(scope="module")
def chatd(tmp_path_factory: Any) -> Any:
    server = Chatd(tmp_path_factory.mktemp("seed000"))
    server.start()
    yield server
    server.stop()


@pytest_twisted.async_yield_fixture
async def clients() -> Any:
    """Every client a test opens, closed at its end."""
    opened: list[WsClient] = []
    yield opened
    for client in opened:
        if client.is_open:
            await client.close()


def users(*names: str) -> list[str]:
    """User ids of this test's own (the module shares one daemon)."""
    tag = secrets.token_hex(3)
    return [f"{name}-{tag}" for name in names]


async def seed(chatd: Chatd, opened: list[WsClient], user: str, url: str | None = None) -> WsClient:
    """A seed-000 client: connect (to the bare host unless told), send the
    README's ``authenticate`` frame, wait for ``authenticated``."""
    client = await WsClient.open(url or chatd.root, expect_auth=False)
    opened.append(client)
    await send(client, {"type": "authenticate", "token": chatd.token(user)})
    hello = await client.next("authenticated")
    assert hello["data"]["userId"] == user and ISO_MS.match(hello["timestamp"]), hello
    client.user_id = user
    return client


async def native(chatd: Chatd, opened: list[WsClient], user: str) -> WsClient:
    client = await WsClient.open(chatd.native, token=chatd.token(user))
    opened.append(client)
    return client


async def send(client: WsClient, frame: Any) -> None:
    await client.send_raw(frame if isinstance(frame, str | bytes) else json.dumps(frame))


async def dm(client: WsClient, receiver: str, content: str) -> dict[str, Any]:
    """The README's ``message`` event; returns the confirmation's message."""
    await send(
        client,
        {
            "type": "message",
            "data": {"receiverId": receiver, "content": content, "messageType": "TEXT"},
        },
    )
    sent = await client.next_matching(
        lambda f: (
            f["type"] in ("message_sent", "error") and f["data"].get("content", content) == content
        )
    )
    assert sent["type"] == "message_sent", sent
    assert sent["data"] == sent["message"], sent
    return sent["message"]


async def api(chatd: Chatd, method: str, path: str, body: Any = None) -> Any:
    """The HTTP API as the backend (the API key)."""

    def call() -> tuple[int, Any]:
        request = urllib.request.Request(
            chatd.http + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
                return answer.status, json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    status, answer = await deferred(asyncio.to_thread(call))
    assert status == 200, (method, path, status, answer)
    return answer


async def befriend(chatd: Chatd, a: str, b: str) -> None:
    await api(chatd, "PUT", f"/api/friendships/{a}/{b}")


async def public_room(chatd: Chatd) -> str:
    created = await api(chatd, "POST", "/api/rooms", {"name": "lounge", "type": "public"})
    room_id: str = created["room"]["id"]
    return room_id


def is_content(content: str) -> Any:
    return lambda data: isinstance(data, dict) and data.get("content") == content


# -- the README's example client ------------------------------------------------------------


def test_the_copy_is_the_readmes_example() -> None:
    """tests/js/seed000/readme-client.mjs is the README block, only the URL
    and the token read from the environment."""
    copy = (CLIENT_DIR / "readme-client.mjs").read_text()
    snippet = copy.split("// ---- seed README snippet begins\n")[1]
    snippet = snippet.split("// ---- seed README snippet ends\n")[0]
    for literal, configured in SUBSTITUTIONS:
        assert snippet.count(configured) == 1, configured
        snippet = snippet.replace(configured, literal)
    assert snippet == README_BLOCK
    if SEED_README.is_file():  # it lives beside the repository, not in it
        text = SEED_README.read_text()
        after = text[text.index("Example client authentication:") :]
        block = re.search(r"```javascript\n(.*?)```", after, re.S)
        assert block is not None and block.group(1) == README_BLOCK


class NodeApp:
    """readme-client.mjs under node; what it printed, one JSON line each."""

    def __init__(self, proc: Any) -> None:
        self.proc = proc
        self.lines: list[list[Any]] = []

    @classmethod
    async def start(cls, url: str, token: str) -> NodeApp:
        node = shutil.which("node")
        assert node is not None, "node (>= 20.10) is needed to run seed 000's README client"
        proc = await asyncio.create_subprocess_exec(
            node,
            "--experimental-websocket",
            "--no-warnings",
            "--import",
            str(CLIENT_DIR / "harness.mjs"),
            str(CLIENT_DIR / "readme-client.mjs"),
            cwd=CLIENT_DIR,
            env={**os.environ, "CHATD_WS_URL": url, "CHATD_TOKEN": token},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def printed(self, first: str, where: Any = lambda args: True) -> list[Any]:
        """The args of the first line starting with ``first`` that matches."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        for args in self.lines:
            if args[:1] == [first] and where(args):
                return args
        while loop.time() < deadline:
            assert self.proc.stdout is not None
            try:
                line = await asyncio.wait_for(self.proc.stdout.readline(), deadline - loop.time())
            except TimeoutError:
                break
            if not line:
                break
            args = json.loads(line)["args"]
            self.lines.append(args)
            if args[:1] == [first] and where(args):
                return args
        stderr = b""
        if self.proc.returncode is not None and self.proc.stderr is not None:
            stderr = await self.proc.stderr.read()
        raise AssertionError(f"the app did not print {first!r}: {self.lines} {stderr!r}")

    async def stop(self) -> None:
        await end_process(self.proc, TIMEOUT)


@pytest_twisted.ensureDeferred
async def test_the_readme_client_runs_unchanged_on_the_bare_host(chatd, clients):
    carol, dave, erin = users("carol", "dave", "erin")
    app = await deferred(NodeApp.start(f"ws://127.0.0.1:{chatd.port}", chatd.token(carol)))
    try:
        await deferred(app.printed("Authenticated successfully"))
        # A direct message from a native /ws client, then one from a seed client.
        dave_ws = await native(chatd, clients, dave)
        await dave_ws.ok("message:send", {"recipientId": carol, "content": "hello from /ws"})
        _, message = await deferred(
            app.printed("New message:", lambda args: args[1]["content"] == "hello from /ws")
        )
        assert message["senderId"] == dave and message["receiverId"] == carol
        assert message["messageType"] == "TEXT" and ISO_MS.match(message["createdAt"])
        erin_seed = await seed(chatd, clients, erin)
        await dm(erin_seed, carol, "hello from seed 000")
        _, message = await deferred(
            app.printed("New message:", lambda args: args[1]["content"] == "hello from seed 000")
        )
        assert message["senderId"] == erin and message["seq"] == 1
    finally:
        await deferred(app.stop())


# -- direct messages --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_direct_messages_both_ways(chatd, clients):
    alice, bob = users("alice", "bob")
    alice_1 = await seed(chatd, clients, alice)
    bob_seed = await seed(chatd, clients, bob, url=f"ws://127.0.0.1:{chatd.port}/ws/seed000")
    alice_2 = await seed(chatd, clients, alice)

    sent = await dm(alice_1, bob, "hi bob")
    assert sent["senderId"] == alice and sent["receiverId"] == bob and sent["seq"] == 1
    assert sent["content"] == "hi bob" and sent["messageType"] == "TEXT"
    for client in (bob_seed, alice_2):  # the recipient, and the sender's other tab
        frame = await client.next("message")
        assert frame["data"] == frame["message"] == sent, frame
        assert frame["timestamp"] == sent["createdAt"] and ISO_MS.match(frame["timestamp"])

    reply = await dm(bob_seed, alice, "hi alice")
    assert reply["chatId"] == sent["chatId"] and reply["seq"] == 2
    assert (await alice_2.next("message"))["message"]["content"] == "hi alice"
    # The sending connection got message_sent, not a copy as message.
    received = await alice_1.none_before(
        "message",
        until=lambda f: f["type"] == "message" and f["data"]["content"] == "hi alice",
        where=is_content("hi bob"),
    )
    assert received["message"] == reply


# -- typing and presence ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_typing_reaches_the_friend_in_the_conversation(chatd, clients):
    alice, bob, mallory = users("alice", "bob", "mallory")
    await befriend(chatd, alice, bob)
    alice_1 = await seed(chatd, clients, alice)
    bob_seed = await seed(chatd, clients, bob)
    await dm(alice_1, bob, "are you there?")
    await bob_seed.next("message")

    # Bob's first typing joins the conversation's room, then goes out.
    await send(bob_seed, {"type": "typing_start", "data": {"userId": bob, "friendId": alice}})
    typing = await alice_1.next("typing")
    assert typing["data"]["userId"] == bob and typing["data"]["isTyping"] is True
    assert typing["data"]["roomId"] == typing["data"]["chatId"]
    assert typing["data"]["chatId"].startswith("dm_")
    await send(bob_seed, {"type": "typing_stop", "data": {"userId": bob, "friendId": alice}})
    typing = await alice_1.next("typing")
    assert typing["data"]["userId"] == bob and typing["data"]["isTyping"] is False

    # A new connection of a friend has the conversation joined for it.
    alice_2 = await seed(chatd, clients, alice)
    await send(alice_2, {"type": "typing_start", "data": {"friendId": bob}})
    typing = await bob_seed.next("typing")
    assert typing["data"]["userId"] == alice and typing["data"]["isTyping"] is True
    await send(bob_seed, {"type": "typing_start", "data": {"friendId": alice}})
    assert (await alice_2.next("typing"))["data"]["userId"] == bob

    # Nobody to type to: no conversation with mallory yet.
    await seed(chatd, clients, mallory)
    await send(alice_1, {"type": "typing_start", "data": {"friendId": mallory}})
    error = await alice_1.next("error")
    assert error["data"]["code"] == "ROOM_NOT_FOUND" and error["data"]["event"] == "typing_start"


@pytest_twisted.ensureDeferred
async def test_a_conversation_started_while_connected_carries_typing_at_once(chatd, clients):
    """Bob is online when Alice writes to him for the first time; without
    writing or typing back, he hears her typing (his connection noticed
    the new conversation in the message it was sent, and joined it)."""
    alice, bob = users("alice", "bob")
    await befriend(chatd, alice, bob)
    bob_seed = await seed(chatd, clients, bob)
    alice_seed = await seed(chatd, clients, alice)
    await dm(alice_seed, bob, "first words")
    assert (await bob_seed.next("message"))["message"]["content"] == "first words"
    await send(alice_seed, {"type": "typing_start", "data": {"friendId": bob}})
    typing = await bob_seed.next("typing")
    assert typing["data"]["userId"] == alice and typing["data"]["isTyping"] is True


@pytest_twisted.ensureDeferred
async def test_presence_and_friend_requests_reach_friends_only(chatd, clients):
    alice, bob, mallory, frank = users("alice", "bob", "mallory", "frank")
    await befriend(chatd, alice, bob)
    alice_seed = await seed(chatd, clients, alice)
    mallory_seed = await seed(chatd, clients, mallory)

    bob_seed = await seed(chatd, clients, bob)
    online = await alice_seed.next("user_online")
    assert online["data"] == {"userId": bob} and ISO_MS.match(online["timestamp"])
    await bob_seed.close()
    offline = await alice_seed.next("user_offline")
    assert offline["data"]["userId"] == bob and ISO_MS.match(offline["data"]["lastSeen"])
    # Mallory is no friend: a reply to a frame sent now comes after anything
    # that fan-out had sent her.
    await send(mallory_seed, {"type": "no_such_event"})
    await mallory_seed.none_before(
        "user_online", until=lambda f: f["type"] == "error", where=lambda d: d["userId"] == bob
    )
    assert not [f for f in mallory_seed.inbox if f["type"] == "user_offline"]

    frank_ws = await native(chatd, clients, frank)
    await frank_ws.ok("friend:request", {"userId": alice})
    request = await alice_seed.next("friend_request")
    assert request["data"] == {"fromUserId": frank} and ISO_MS.match(request["timestamp"])


# -- rooms ------------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_join_leave_and_room_messages(chatd, clients):
    alice, bob = users("alice", "bob")
    room = await public_room(chatd)
    alice_seed = await seed(chatd, clients, alice)
    bob_seed = await seed(chatd, clients, bob)

    await send(alice_seed, {"type": "join_room", "data": {"roomId": room}})
    joined = (await alice_seed.next("room_joined"))["data"]
    assert joined["roomId"] == room and joined["room"]["id"] == room
    assert joined["messages"] == [] and joined["users"] == [alice] and joined["hasMore"] is False
    await send(bob_seed, {"type": "join_room", "data": {"chatId": room}})
    assert (await bob_seed.next("room_joined"))["data"]["roomId"] == room

    await send(alice_seed, {"type": "message", "data": {"roomId": room, "content": "hello room"}})
    sent = (await alice_seed.next("message_sent"))["message"]
    assert sent["roomId"] == room and sent["seq"] == 1 and sent["senderId"] == alice
    for client in (alice_seed, bob_seed):
        pushed = await client.next("message")
        assert pushed["message"]["id"] == sent["id"] and pushed["data"]["roomId"] == room

    await send(bob_seed, {"type": "typing_start", "data": {"roomId": room}})
    typing = (await alice_seed.next("typing"))["data"]
    assert typing == {"chatId": room, "roomId": room, "userId": bob, "isTyping": True}

    await send(bob_seed, {"type": "leave_room", "data": {"roomId": room}})
    assert (await bob_seed.next("room_left"))["data"]["roomId"] == room
    # Leaving stopped bob's typing for the others.
    assert (await alice_seed.next("typing"))["data"]["isTyping"] is False
    await send(alice_seed, {"type": "message", "data": {"roomId": room, "content": "gone?"}})
    await alice_seed.next("message_sent")
    await send(bob_seed, {"type": "join_room", "data": {"roomId": room, "since": 1}})
    rejoined = (await bob_seed.next("room_joined"))["data"]
    assert [m["content"] for m in rejoined["messages"]] == ["gone?"]
    assert rejoined["messages"][0]["messageType"] == "TEXT"
    assert not [
        f for f in bob_seed.inbox if f["type"] == "message" and is_content("gone?")(f["data"])
    ]


# -- bad frames -----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_bad_frames_get_the_error_form_and_change_nothing(chatd, clients):
    alice, bob = users("alice", "bob")
    # Before authenticating: refused, not closed.
    early = await WsClient.open(chatd.root, expect_auth=False)
    clients.append(early)
    await send(early, {"type": "message", "data": {"receiverId": bob, "content": "x"}})
    error = await early.next("error")
    assert error["data"]["code"] == "UNAUTHORIZED" and error["data"]["event"] == "message"
    await send(early, {"type": "authenticate", "data": {"token": chatd.token(alice)}})
    assert (await early.next("authenticated"))["data"]["userId"] == alice

    bob_seed = await seed(chatd, clients, bob)
    alice_seed = await seed(chatd, clients, alice)
    bad: list[tuple[Any, str, str | None]] = [
        ("not json", "INVALID_MESSAGE", None),
        ("[1, 2]", "INVALID_MESSAGE", None),
        (b"\x00binary", "INVALID_MESSAGE", None),
        ({"type": 5}, "INVALID_MESSAGE", None),
        ({"type": "bogus"}, "UNKNOWN_EVENT", "bogus"),
        ({"type": "message", "data": "hello"}, "INVALID_MESSAGE", "message"),
        ({"type": "message", "data": {"receiverId": bob}}, "INVALID_MESSAGE", "message"),
        (
            {"type": "message", "data": {"receiverId": 5, "content": "x"}},
            "INVALID_MESSAGE",
            "message",
        ),
        (
            {"type": "message", "data": {"receiverId": bob, "content": 7}},
            "INVALID_MESSAGE",
            "message",
        ),
        (
            {"type": "message", "data": {"receiverId": bob, "roomId": "r", "content": "x"}},
            "INVALID_MESSAGE",
            "message",
        ),
        (
            {
                "type": "message",
                "data": {"receiverId": bob, "content": "x", "messageType": "IMAGE"},
            },
            "INVALID_MESSAGE",
            "message",
        ),
        (
            {"type": "message", "data": {"receiverId": bob, "content": "x" * 4001}},
            "PAYLOAD_TOO_LARGE",
            "message",
        ),
        (
            {"type": "message", "data": {"receiverId": "nobody-ever", "content": "x"}},
            "USER_NOT_FOUND",
            "message",
        ),
        ({"type": "typing_start", "data": {"friendId": alice}}, "INVALID_MESSAGE", "typing_start"),
        ({"type": "typing_stop", "data": {}}, "INVALID_MESSAGE", "typing_stop"),
        ({"type": "join_room", "data": {"roomId": ""}}, "INVALID_MESSAGE", "join_room"),
        (
            {"type": "join_room", "data": {"roomId": "r", "since": -1}},
            "INVALID_MESSAGE",
            "join_room",
        ),
        ({"type": "join_room", "data": {"roomId": "no-such-room"}}, "ROOM_NOT_FOUND", "join_room"),
        ({"type": "leave_room", "data": {"roomId": ["r"]}}, "INVALID_MESSAGE", "leave_room"),
    ]
    for frame, code, event in bad:
        await send(alice_seed, frame)
        error = await alice_seed.next("error")
        assert error["data"]["code"] == code, (frame, error)
        assert error["data"].get("event") == event, (frame, error)
        assert ISO_MS.match(error["timestamp"])
    # The connection works, and nothing of the bad frames reached bob.
    await dm(alice_seed, bob, "still here")
    first = await bob_seed.next("message")
    assert first["message"]["content"] == "still here" and first["message"]["seq"] == 1

    # A bad token on a fresh connection: error, then closed with 4001 as on /ws.
    stranger = await WsClient.open(chatd.root, expect_auth=False)
    clients.append(stranger)
    await send(stranger, {"type": "authenticate", "token": "not-a-jwt"})
    error = await stranger.next("error")
    assert error["data"]["code"] == "UNAUTHORIZED" and error["data"]["event"] == "authenticate"
    assert await stranger.closed() == 4001


# -- restarts --------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_history_survives_a_daemon_restart(tmp_path, clients):
    server = Chatd(tmp_path)
    server.start()
    try:
        room = await public_room(server)
        alice_seed = await seed(server, clients, "alice")
        await seed(server, clients, "bob")
        await dm(alice_seed, "bob", "before the restart")
        await send(alice_seed, {"type": "join_room", "data": {"roomId": room}})
        await alice_seed.next("room_joined")
        await send(
            alice_seed, {"type": "message", "data": {"roomId": room, "content": "in the room"}}
        )
        await alice_seed.next("message_sent")

        server.stop()
        server.start()
        alice_again = await seed(server, clients, "alice")
        await send(alice_again, {"type": "join_room", "data": {"friendId": "bob"}})
        conversation = (await alice_again.next("room_joined"))["data"]
        assert [m["content"] for m in conversation["messages"]] == ["before the restart"]
        assert conversation["messages"][0]["senderId"] == "alice"
        await send(alice_again, {"type": "join_room", "data": {"roomId": room}})
        lounge = (await alice_again.next("room_joined"))["data"]
        assert [m["content"] for m in lounge["messages"]] == ["in the room"]
        assert (await dm(alice_again, "bob", "after the restart"))["seq"] == 2
    finally:
        server.stop()


# -- with native clients ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_native_client_in_the_same_room_and_dm_sees_the_same_order(chatd, clients):
    alice, nina = users("alice", "nina")
    room = await public_room(chatd)
    alice_seed = await seed(chatd, clients, alice)
    nina_ws = await native(chatd, clients, nina)
    await send(alice_seed, {"type": "join_room", "data": {"roomId": room}})
    await alice_seed.next("room_joined")
    await nina_ws.ok("chat:join", {"chatId": room})

    # Both write at once, without waiting for each other.
    for i in range(5):
        await send(alice_seed, {"type": "message", "data": {"roomId": room, "content": f"a{i}"}})
        await nina_ws.send("chat:message", {"chatId": room, "content": f"n{i}"})
    seen_by_alice = [f["message"] for f in await alice_seed.collect("message", 10)]
    seen_by_nina = [f["data"] for f in await nina_ws.collect("chat:message", 10)]
    assert [m["id"] for m in seen_by_alice] == [m["id"] for m in seen_by_nina]
    assert [m["seq"] for m in seen_by_alice] == list(range(1, 11))
    assert sorted(m["content"] for m in seen_by_alice) == sorted(
        [f"a{i}" for i in range(5)] + [f"n{i}" for i in range(5)]
    )

    # A direct conversation between the two, watched from a second
    # connection on each side (the sending connections get confirmations).
    alice_tab = await seed(chatd, clients, alice)
    nina_tab = await native(chatd, clients, nina)
    for i in range(4):
        await send(
            alice_seed, {"type": "message", "data": {"receiverId": nina, "content": f"da{i}"}}
        )
        await nina_ws.send("message:send", {"recipientId": alice, "content": f"dn{i}"})
    on_alice_tab = [f["message"] for f in await alice_tab.collect("message", 8)]
    on_nina_tab = [f["data"]["message"] for f in await nina_tab.collect("message:receive", 8)]
    assert [m["id"] for m in on_alice_tab] == [m["id"] for m in on_nina_tab]
    assert [m["seq"] for m in on_alice_tab] == list(range(1, 9))
    assert {m["chatId"] for m in on_alice_tab} == {on_nina_tab[0]["chatId"]}
    # Each side saw the other's messages in that same order.
    assert [m["content"] for m in await _messages(alice_seed, 4)] == [
        m["content"] for m in on_alice_tab if m["senderId"] == nina
    ]


async def _messages(client: WsClient, count: int) -> list[dict[str, Any]]:
    return [f["message"] for f in await client.collect("message", count)]
