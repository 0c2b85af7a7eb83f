"""Seed 002 ("Chat Flow", shared/seeds/002-chat-flow-rooms.md) against a
real ``twistd -n chatd`` over loopback: the README's frames as written, on
the bare ``ws://host:port/`` (no path), checked from the outside; the last
100 messages on join, also after a restart; a room shared with a native
``/ws`` client, where both see the same messages in the same order."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from websockets.sync.client import connect

from chatd.auth import mint_token
from chatd.config import Config
from tests.daemon import Daemon, clean_env, free_port
from tests.syncclient import Client as NativeClient

SECRET = "chatflow-test-secret-" + "x" * 20
CONFIG = Config(jwt_secret=SECRET)
TIMEOUT = 5.0


def token(user: str, **kwargs: Any) -> str:
    return mint_token(CONFIG, user, **kwargs)


class FlowClient:
    """A Chat Flow client: ``{type, payload, requestId}`` frames; replies
    are matched by ``requestId``, every other frame is kept in order."""

    def __init__(self, port: int, path: str = "/") -> None:
        # Unbounded queue: frames a test does not read must not stop the reader.
        url = f"ws://127.0.0.1:{port}{path}"
        self.ws = connect(url, open_timeout=10, max_queue=None).__enter__()
        self.inbox: list[dict[str, Any]] = []
        self.counter = 0

    def send(self, kind: str, payload: Any = None, request_id: Any = None) -> None:
        frame: dict[str, Any] = {"type": kind}
        if payload is not None:
            frame["payload"] = payload
        if request_id is not None:
            frame["requestId"] = request_id
        self.ws.send(json.dumps(frame))

    def request(self, kind: str, payload: Any = None) -> dict[str, Any]:
        self.counter += 1
        request_id = f"{kind.lower()}-{self.counter}"
        self.send(kind, payload, request_id)
        return self.next_matching(lambda f: f.get("requestId") == request_id)

    def ok(self, kind: str, payload: Any, answer: str) -> dict[str, Any]:
        frame = self.request(kind, payload)
        assert frame["type"] == answer, frame
        payload_out: dict[str, Any] = frame["payload"]
        return payload_out

    def fails(self, kind: str, payload: Any, code: str) -> dict[str, Any]:
        frame = self.request(kind, payload)
        assert frame["type"] == "ERROR" and frame["payload"]["code"] == code, frame
        return frame

    def next_matching(self, wanted: Any, timeout: float = TIMEOUT) -> dict[str, Any]:
        for i, frame in enumerate(self.inbox):
            if wanted(frame):
                return self.inbox.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no matching frame; inbox: {self.inbox[-5:]}")
            frame = json.loads(self.ws.recv(timeout=remaining))
            if wanted(frame):
                return frame
            self.inbox.append(frame)

    def next(self, kind: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        return self.next_matching(lambda f: f["type"] == kind, timeout)

    def none_before_pong(self, kind: str) -> None:
        """No ``kind`` frame came before the answer to a PING sent now: the
        server writes a connection's frames in order."""
        self.ok("PING", {}, "PONG")
        unexpected = [f for f in self.inbox if f["type"] == kind]
        assert not unexpected, unexpected

    def authenticate(self, user: str, username: str | None = None) -> dict[str, Any]:
        payload = {"token": token(user)}
        if username is not None:
            payload["username"] = username
        return self.ok("AUTHENTICATE", payload, "AUTH_SUCCESS")

    def closed_with(self, timeout: float = TIMEOUT) -> int | None:
        try:
            while True:
                self.inbox.append(json.loads(self.ws.recv(timeout=timeout)))
        except TimeoutError:
            raise
        except Exception:
            return self.ws.close_code

    def close(self) -> None:
        self.ws.close()


class Chatd:
    """One ``twistd -n chatd`` on a free port (restartable on the same
    data directory)."""

    def __init__(self, tmp_path: Any, *extra: str) -> None:
        self.port = free_port()
        self.args = [
            "--data-dir",
            str(tmp_path / "data"),
            "--listen",
            f"tcp:{self.port}:interface=127.0.0.1",
            "--jwt-secret",
            SECRET,
            *extra,
        ]
        self.cwd = str(tmp_path)
        self.daemon: Daemon | None = None

    def start(self) -> Chatd:
        self.daemon = Daemon(self.args, clean_env(), self.cwd)
        self.daemon.wait_healthy(self.port)
        return self

    def stop(self) -> None:
        if self.daemon is not None:
            daemon, self.daemon = self.daemon, None
            assert daemon.terminate(), daemon.output()

    def flow(self, path: str = "/") -> FlowClient:
        return FlowClient(self.port, path)

    def native(self, user: str) -> NativeClient:
        return NativeClient(f"ws://127.0.0.1:{self.port}/ws", token(user))


@pytest.fixture(scope="module")
def chatd(tmp_path_factory: Any) -> Iterator[Chatd]:
    server = Chatd(tmp_path_factory.mktemp("chatflow"), "--rate-limit", "50", "--rate-burst", "60")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def clients() -> Iterator[list[Any]]:
    opened: list[Any] = []
    yield opened
    for client in opened:
        client.close()


def test_the_readme_flow_on_the_bare_host(chatd: Chatd, clients: list[Any]) -> None:
    alice, bob = chatd.flow(), chatd.flow()
    clients += [alice, bob]
    # AUTHENTICATE exactly as in the README.
    alice.send(
        "AUTHENTICATE",
        {"token": token("alice"), "username": "Alice"},
        "unique_request_id",
    )
    assert alice.next("AUTH_SUCCESS") == {
        "type": "AUTH_SUCCESS",
        "payload": {"userId": "alice", "username": "Alice", "status": "online"},
        "requestId": "unique_request_id",
    }
    assert bob.authenticate("bob", "Bob")["username"] == "Bob"

    created = alice.ok(
        "CREATE_ROOM",
        {"name": "General Chat", "description": "General discussion", "type": "public"},
        "ROOM_CREATED",
    )["room"]
    assert set(created) == {"id", "name", "description", "type", "memberCount", "createdAt"}
    assert (created["name"], created["description"], created["type"]) == (
        "General Chat",
        "General discussion",
        "public",
    )
    room = created["id"]
    joined = alice.ok("JOIN_ROOM", {"roomId": room}, "ROOM_JOINED")
    assert joined["room"]["id"] == room and joined["messages"] == []
    joined = bob.ok("JOIN_ROOM", {"roomId": room}, "ROOM_JOINED")
    assert joined["room"]["memberCount"] == 2
    assert {u["userId"] for u in joined["users"]} == {"alice", "bob"}
    assert {"userId": "bob", "username": "Bob", "status": "online"} in joined["users"]

    sent = alice.request(
        "SEND_MESSAGE", {"roomId": room, "content": "Hello, world!", "type": "text"}
    )
    assert sent["type"] == "MESSAGE_SENT" and sent["requestId"].startswith("send_message-")
    for client in (alice, bob):
        new = client.next("NEW_MESSAGE")
        assert "requestId" not in new
        payload = new["payload"]
        assert set(payload) >= {
            "id",
            "roomId",
            "userId",
            "username",
            "content",
            "type",
            "timestamp",
        }
        assert payload["id"] == sent["payload"]["id"] and payload["roomId"] == room
        assert (payload["userId"], payload["content"], payload["type"]) == (
            "alice",
            "Hello, world!",
            "text",
        )
        assert payload["username"] in ("Alice", "alice")
        assert payload["timestamp"].endswith("Z")
    alice.none_before_pong("NEW_MESSAGE")  # the sender is told once

    # TYPING_STATUS as in the README (no requestId): the others hear it.
    bob.send("TYPING_STATUS", {"roomId": room, "isTyping": True})
    typing = alice.next("TYPING_UPDATE")["payload"]
    assert typing == {
        "roomId": room,
        "userId": "bob",
        "username": typing["username"],
        "isTyping": True,
    }
    assert typing["username"] in ("Bob", "bob")
    bob.none_before_pong("TYPING_UPDATE")

    assert bob.ok("LEAVE_ROOM", {"roomId": room}, "ROOM_LEFT") == {"roomId": room}
    alice.request("SEND_MESSAGE", {"roomId": room, "content": "bob has gone"})
    assert alice.next("NEW_MESSAGE")["payload"]["content"] == "bob has gone"
    bob.none_before_pong("NEW_MESSAGE")


def test_the_seed_error_codes_and_nothing_changes(chatd: Chatd, clients: list[Any]) -> None:
    alice, bob = chatd.flow(), chatd.flow("/ws/chatflow")
    clients += [alice, bob]
    # Before authenticating: UNAUTHORIZED, and the connection stays.
    alice.fails("JOIN_ROOM", {"roomId": "anything"}, "UNAUTHORIZED")
    alice.authenticate("alice")
    bob.authenticate("bob")

    alice.ws.send("this is not json")
    assert alice.next("ERROR")["payload"]["code"] == "INVALID_MESSAGE"
    alice.send("SEND_MESSAGE", "not an object", 17)
    error = alice.next("ERROR")
    assert error["requestId"] == 17 and error["payload"]["code"] == "INVALID_MESSAGE"
    alice.fails("NO_SUCH_TYPE", {}, "INVALID_MESSAGE")
    alice.fails("SEND_MESSAGE", {"roomId": "r", "content": 5}, "INVALID_MESSAGE")
    alice.fails("CREATE_ROOM", {"name": "x" * 101}, "INVALID_MESSAGE")
    alice.fails("JOIN_ROOM", {"roomId": "no-such-room"}, "ROOM_NOT_FOUND")

    private = alice.ok("CREATE_ROOM", {"name": "secret", "type": "private"}, "ROOM_CREATED")
    room = private["room"]["id"]
    bob.fails("JOIN_ROOM", {"roomId": room}, "NOT_A_MEMBER")
    bob.fails("SEND_MESSAGE", {"roomId": room, "content": "let me in"}, "NOT_A_MEMBER")
    bob.fails("TYPING_STATUS", {"roomId": room, "isTyping": True}, "NOT_A_MEMBER")
    bob.fails("SEND_MESSAGE", {"roomId": room, "content": "x" * 4001}, "INVALID_MESSAGE")
    joined = alice.ok("JOIN_ROOM", {"roomId": room}, "ROOM_JOINED")
    assert joined["messages"] == [] and joined["room"]["memberCount"] == 1

    for i in range(100):  # the burst is 60 (see the fixture)
        bob.send("PING", {}, i)
    answers = [bob.next_matching(lambda f, i=i: f.get("requestId") == i) for i in range(100)]
    limited = [a for a in answers if a["type"] == "ERROR"]
    assert limited and all(a["payload"]["code"] == "RATE_LIMIT_EXCEEDED" for a in limited)
    time.sleep(0.1)
    assert bob.ws.close_code is None
    assert bob.ok("PING", {}, "PONG")["timestamp"].endswith("Z")


def test_refused_tokens_are_unauthorized_and_close(chatd: Chatd, clients: list[Any]) -> None:
    for bad in ("not-a-jwt", jwt.encode({"sub": "eve"}, SECRET, algorithm="HS256")):
        client = chatd.flow()
        clients.append(client)
        error = client.request("AUTHENTICATE", {"token": bad, "username": "eve"})
        assert error["type"] == "ERROR" and error["payload"]["code"] == "UNAUTHORIZED"
        assert client.closed_with() == 4001


def test_a_token_with_the_upgrade_on_the_dialect_s_path(chatd: Chatd, clients: list[Any]) -> None:
    client = chatd.flow(f"/ws/chatflow?token={token('carol', name='Carol')}")
    clients.append(client)
    assert client.next("AUTH_SUCCESS") == {
        "type": "AUTH_SUCCESS",
        "payload": {"userId": "carol", "username": "Carol", "status": "online"},
    }


def test_a_room_shared_with_a_native_client(chatd: Chatd, clients: list[Any]) -> None:
    flow = chatd.flow()
    clients.append(flow)
    flow.authenticate("fiona")
    native = chatd.native("nadia")
    clients.append(native.ws)
    room = native.ok("chat:create", {"name": "mixed", "type": "public"})["room"]["id"]
    native.ok("chat:join", {"chatId": room})
    flow.ok("JOIN_ROOM", {"roomId": room}, "ROOM_JOINED")
    for i in range(10):  # interleaved and pipelined: the order is the server's
        flow.send("SEND_MESSAGE", {"roomId": room, "content": f"flow {i}", "type": "text"})
        native.ws.send(
            json.dumps({"type": "chat:message", "data": {"chatId": room, "content": f"native {i}"}})
        )
    seen_by_flow = [flow.next("NEW_MESSAGE")["payload"] for _ in range(20)]
    seen_by_native = [native.next("chat:message") for _ in range(20)]
    assert [m["id"] for m in seen_by_flow] == [m["id"] for m in seen_by_native]
    assert [m["seq"] for m in seen_by_flow] == list(range(1, 21))
    assert {m["content"] for m in seen_by_flow} == {
        f"{who} {i}" for who in ("flow", "native") for i in range(10)
    }
    by_user = {m["content"]: m["userId"] for m in seen_by_flow}
    assert by_user["flow 3"] == "fiona" and by_user["native 3"] == "nadia"
    native.ok("chat:typing", {"chatId": room, "isTyping": True})
    assert flow.next("TYPING_UPDATE")["payload"]["userId"] == "nadia"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_args(request: Any) -> list[str]:
    if request.param == "sqlite":
        return []
    return ["--database", request.getfixturevalue("pg_schema_url")]


def test_join_room_gives_the_last_100_messages_after_a_restart(
    tmp_path: Any, database_args: list[str]
) -> None:
    server = Chatd(tmp_path, *database_args).start()
    try:
        alice = server.flow()
        alice.authenticate("alice")
        room = alice.ok("CREATE_ROOM", {"name": "busy"}, "ROOM_CREATED")["room"]["id"]
        alice.ok("JOIN_ROOM", {"roomId": room}, "ROOM_JOINED")
        for i in range(120):
            alice.send("SEND_MESSAGE", {"roomId": room, "content": f"message {i}"}, i)
        acks = [alice.next_matching(lambda f, i=i: f.get("requestId") == i) for i in range(120)]
        assert {a["type"] for a in acks} == {"MESSAGE_SENT"}
        alice.close()
    finally:
        server.stop()

    server.start()
    try:
        bob = server.flow()
        bob.authenticate("bob")
        joined = bob.ok("JOIN_ROOM", {"roomId": room}, "ROOM_JOINED")
        assert [m["content"] for m in joined["messages"]] == [
            f"message {i}" for i in range(20, 120)
        ]
        assert [m["seq"] for m in joined["messages"]] == list(range(21, 121))
        older = bob.ok("GET_HISTORY", {"roomId": room, "before": 21, "limit": 100}, "HISTORY")
        assert [m["content"] for m in older["messages"]] == [f"message {i}" for i in range(20)]
        assert older["hasMore"] is False
        bob.close()
    finally:
        server.stop()
