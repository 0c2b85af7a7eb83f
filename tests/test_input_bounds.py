"""Input that must be refused cleanly, over real sockets (issue 15, items
5, 6, 8 and 10): integers beyond what storage holds, NaN and Infinity, path
segments decoded once, and tokens whose text no log or store can hold.
Every refusal names the field, changes nothing, leaves the connection
working and puts no traceback in the log."""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import jwt
import pytest_twisted
from twisted.logger import globalLogPublisher

from chatd.logs import JsonLinesObserver, TextLinesObserver
from tests.conftest import TEST_SECRET
from tests.test_http_api import API_KEY, http
from tests.wsclient import WsClient, deferred, open_chatflow, open_seed000

TOO_BIG = 2**63
LARGEST = 2**63 - 1
TIMEOUT = 5.0


def strict_json(text: str | bytes) -> Any:
    """What a browser's ``JSON.parse`` accepts: no NaN, no Infinity."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


@contextmanager
def failures_logged() -> Iterator[list[dict[str, Any]]]:
    """The events with a traceback (``log_failure``) logged meanwhile."""
    found: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if "log_failure" in event:
            found.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield found
    finally:
        globalLogPublisher.removeObserver(observe)


async def still_works(client: WsClient) -> None:
    frame = await client.request("ping")
    assert frame["type"] == "ack", frame


async def room_with_member(server: Any, user: str) -> tuple[WsClient, str]:
    client = await server.connect(user)
    room = (await client.ok("chat:create", {"name": "bounds", "type": "public"}))["room"]["id"]
    await client.ok("chat:join", {"chatId": room})
    await client.ok("chat:message", {"chatId": room, "content": "one"})
    return client, room


def refused_naming(frame: dict[str, Any], field: str) -> None:
    assert frame["type"] == "error", frame
    assert frame["data"]["code"] == "INVALID_MESSAGE", frame
    assert f"'{field}'" in frame["data"]["message"], frame


# -- item 5: integers beyond 64 bits ------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_huge_numbers_over_websocket_are_invalid_and_name_the_field(server):
    alice, room = await room_with_member(server, "alice")
    with failures_logged() as failures:
        for field in ("before", "after"):
            for value in (TOO_BIG, 10**30):
                frame = await alice.request("chat:history", {"chatId": room, field: value})
                refused_naming(frame, field)
        refused_naming(
            await alice.request("chat:history", {"chatId": room, "limit": TOO_BIG}), "limit"
        )
        refused_naming(
            await alice.request("chat:join", {"chatId": room, "since": TOO_BIG}), "since"
        )
        refused_naming(
            await alice.request("chat:history", {"chatId": room, "before": -1}), "before"
        )
        await still_works(alice)
        # The largest value storage holds is a value like any other.
        page = await alice.ok("chat:history", {"chatId": room, "before": LARGEST})
        assert [m["content"] for m in page["messages"]] == ["one"]
        joined = await alice.ok("chat:join", {"chatId": room, "since": LARGEST})
        assert joined["messages"] == []
    assert failures == []


class RawSocketIO:
    """Socket.IO over a raw WebSocket: the packets as written."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    @classmethod
    async def connect(cls, server: Any, user: str) -> RawSocketIO:
        import websockets

        url = f"ws://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=websocket"
        sio = cls(await deferred(websockets.connect(url, open_timeout=TIMEOUT)))
        assert (await sio.recv()).startswith("0{")
        await sio.send("40" + json.dumps({"token": server.token(user)}))
        assert (await sio.recv()).startswith("40{")
        assert json.loads((await sio.recv())[2:])[0] == "authenticated"
        return sio

    async def send(self, text: str) -> None:
        await deferred(self.ws.send(text))

    async def recv(self) -> str:
        while True:
            text: str = await deferred(asyncio.wait_for(self.ws.recv(), TIMEOUT))
            if text != "2":  # an Engine.IO ping
                return text
            await self.send("3")

    async def ack(self, ack_id: int) -> Any:
        """The argument of the ACK with this id (other packets skipped)."""
        prefix = f"43{ack_id}["
        while True:
            text = await self.recv()
            if text.startswith(prefix):
                return strict_json(text[len(prefix) - 1 :])[0]

    async def close(self) -> None:
        await deferred(self.ws.close())


@pytest_twisted.ensureDeferred
async def test_huge_numbers_in_every_dialect_are_invalid(server):
    alice, room = await room_with_member(server, "alice")
    with failures_logged() as failures:
        seed = await open_seed000(server, "sid")
        await seed.send_raw(
            json.dumps({"type": "join_room", "data": {"roomId": room, "since": TOO_BIG}})
        )
        error = await seed.next("error")
        assert error["data"]["code"] == "INVALID_MESSAGE" and "'since'" in error["data"]["message"]
        assert error["data"]["event"] == "join_room"
        await seed.send_raw(json.dumps({"type": "join_room", "data": {"roomId": room}}))
        assert (await seed.next("room_joined"))["data"]["roomId"] == room

        flow = await open_chatflow(server, "flo")
        for field in ("before", "after", "limit"):
            request = {
                "type": "GET_HISTORY",
                "payload": {"roomId": room, field: TOO_BIG},
                "requestId": field,
            }
            await flow.send_raw(json.dumps(request))
            answer = await flow.next_matching(lambda f, r=field: f.get("requestId") == r)
            assert answer["type"] == "ERROR", answer
            assert answer["payload"]["code"] == "INVALID_MESSAGE", answer
            assert f"'{field}'" in answer["payload"]["message"], answer
        await flow.send_raw(json.dumps({"type": "PING", "requestId": "p"}))
        assert (await flow.next_matching(lambda f: f.get("requestId") == "p"))["type"] == "PONG"

        sio = await RawSocketIO.connect(server, "sio")
        try:
            await sio.send("421" + json.dumps(["chat:join", {"chatId": room}]))
            assert "error" not in await sio.ack(1)
            history = {"chatId": room, "before": TOO_BIG}
            await sio.send("422" + json.dumps(["chat:history", history]))
            error = (await sio.ack(2))["error"]
            assert error["code"] == "INVALID_MESSAGE" and "'before'" in error["message"]
            await sio.send("423" + json.dumps(["ping", {}]))
            assert "timestamp" in await sio.ack(3)
        finally:
            await sio.close()
    assert failures == []
    await still_works(alice)


@pytest_twisted.ensureDeferred
async def test_http_history_refuses_huge_and_non_ascii_numbers_with_400(server_factory):
    server = await server_factory(api_key=API_KEY)
    _, room = await room_with_member(server, "alice")
    path = f"/api/rooms/{room}/messages"
    with failures_logged() as failures:
        for query, field in (
            ("before=99999999999999999999999", "before"),
            (f"before={TOO_BIG}", "before"),
            (f"after={TOO_BIG}", "after"),
            ("limit=%C2%B2", "limit"),  # "²": str.isdigit() says yes, int() says no
            ("after=%D9%A3", "after"),  # an Arabic-Indic three, which int() takes
            ("limit=-1", "limit"),
            ("before=1e3", "before"),
            ("before=" + "9" * 5000, "before"),
        ):
            status, answer = await http(server, "GET", f"{path}?{query}", API_KEY)
            assert status == 400, (query, status, answer)
            assert answer["error"]["code"] == "INVALID_MESSAGE", answer
            assert f"'{field}'" in answer["error"]["message"], (query, answer)
        status, answer = await http(server, "GET", f"{path}?before={LARGEST}&limit=007", API_KEY)
        assert status == 200 and [m["content"] for m in answer["messages"]] == ["one"]
    assert failures == []


# -- item 8: NaN and Infinity -------------------------------------------------------------

NON_FINITE = ("NaN", "Infinity", "-Infinity", "1e999", "-1e999")


def with_number(obj: Any, number: str) -> str:
    """``obj`` as JSON with each ``"N"`` written as ``number``, as a
    client's encoder might (Python's own writes ``NaN`` too)."""
    return json.dumps(obj, separators=(",", ":")).replace('"N"', number)


@pytest_twisted.ensureDeferred
async def test_non_finite_numbers_in_http_bodies_are_400_and_push_nothing(server_factory):
    server = await server_factory(api_key=API_KEY)
    bob = await server.connect("bob")
    with failures_logged() as failures:
        for number in NON_FINITE:
            for path, body in (
                ("/websocket/message/user", {"userId": "bob", "type": "x", "data": {"v": "N"}}),
                ("/websocket/message/users", {"userIds": ["bob"], "type": "x", "data": ["N"]}),
                ("/websocket/message/broadcast", {"type": "x", "data": {"v": {"w": "N"}}}),
                (
                    "/websocket/notification",
                    {"userId": "bob", "title": "t", "body": "b", "data": "N"},
                ),
            ):
                raw = with_number(body, number).encode()
                status, answer = await http(server, "POST", path, API_KEY, raw=raw)
                assert status == 400, (path, number, status, answer)
                assert answer["error"]["code"] == "INVALID_MESSAGE", answer
                assert "JSON" in answer["error"]["message"], answer
        status, _ = await http(
            server,
            "POST",
            "/websocket/message/user",
            API_KEY,
            raw=b'{"userId":"bob","type":"x","data":{"v":1.5}}',
        )
        assert status == 200
    assert failures == []
    # The first push bob gets is the good one: none of the refused got out.
    raw = await deferred(asyncio.wait_for(bob.ws.recv(), TIMEOUT))
    frame = strict_json(raw)
    assert frame["type"] == "message" and frame["data"]["data"] == {"v": 1.5}, frame


@pytest_twisted.ensureDeferred
async def test_non_finite_numbers_in_frames_are_invalid_in_every_binding(server):
    alice, room = await room_with_member(server, "alice")
    with failures_logged() as failures:
        for number in NON_FINITE:
            message = {"chatId": room, "content": "native", "n": "N"}
            await alice.send_raw(
                with_number({"type": "chat:message", "id": "m", "data": message}, number)
            )
            error = await alice.next("error")
            assert error["data"]["code"] == "INVALID_MESSAGE", error
            assert "JSON" in error["data"]["message"], error
        await still_works(alice)

        seed = await open_seed000(server, "sid")
        message = {"roomId": room, "content": "seed", "n": "N"}
        await seed.send_raw(with_number({"type": "message", "data": message}, "NaN"))
        assert (await seed.next("error"))["data"]["code"] == "INVALID_MESSAGE"

        flow = await open_chatflow(server, "flo")
        message = {"roomId": room, "content": "flow", "n": "N"}
        frame = {"type": "SEND_MESSAGE", "payload": message, "requestId": "s"}
        await flow.send_raw(with_number(frame, "Infinity"))
        error = await flow.next("ERROR")
        assert error["payload"]["code"] == "INVALID_MESSAGE", error

        sio = await RawSocketIO.connect(server, "sio")
        try:
            message = {"chatId": room, "content": "sio", "n": "N"}
            await sio.send("421" + with_number(["chat:message", message], "-Infinity"))
            error = (await sio.ack(1))["error"]
            assert error["code"] == "INVALID_MESSAGE" and "JSON" in error["message"], error
            await sio.send('422["ping",{}]')
            assert "timestamp" in await sio.ack(2)
        finally:
            await sio.close()

        root = await WsClient.open(f"ws://127.0.0.1:{server.port}/", expect_auth=False)
        server.clients.append(root)
        await root.send_raw(with_number({"type": "ping", "id": "p", "data": {"v": "N"}}, "NaN"))
        assert (await root.next("error"))["data"]["code"] == "INVALID_MESSAGE"
    assert failures == []
    page = await alice.ok("chat:history", {"chatId": room})
    assert [m["content"] for m in page["messages"]] == ["one"]


# -- item 6: path segments are decoded once ------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_path_segments_are_decoded_once(server_factory):
    server = await server_factory(api_key=API_KEY, presence_grace=0.1)
    upper = await server.connect("aA")
    encoded = await server.connect("a%41")
    slashed = await server.connect("a/ b")
    literal = await server.connect("a%2F b")
    for path, user in (
        ("/websocket/users/a%2541/status", "a%41"),
        ("/websocket/users/aA/status", "aA"),
        ("/websocket/users/a%41/status", "aA"),  # %41 is "A", once
        ("/websocket/users/a%2F%20b/status", "a/ b"),  # one segment, with its "/"
        ("/websocket/users/a%252F%20b/status", "a%2F b"),
    ):
        status, answer = await http(server, "GET", path, API_KEY)
        assert status == 200, (path, answer)
        assert answer["userId"] == user and answer["connections"] == 1, (path, answer)

    status, answer = await http(server, "DELETE", "/websocket/users/a%2541/disconnect", API_KEY)
    assert (status, answer) == (200, {"disconnected": 1})
    assert await encoded.closed() == 4003
    await still_works(upper)
    status, answer = await http(server, "DELETE", "/websocket/users/a%252F%20b/disconnect", API_KEY)
    assert (status, answer) == (200, {"disconnected": 1})
    assert await literal.closed() == 4003
    await still_works(slashed)
    status, answer = await http(server, "GET", "/websocket/users/aA/status", API_KEY)
    assert answer["connections"] == 1


@pytest_twisted.ensureDeferred
async def test_bad_path_parameters_are_400(server_factory):
    server = await server_factory(api_key=API_KEY)
    for path, field in (
        ("/websocket/users/%00/status", "user_id"),
        ("/websocket/users/%FF%FE/status", "user_id"),
        ("/websocket/users/%20/status", "user_id"),
        ("/websocket/users/" + "u" * 129 + "/status", "user_id"),
        ("/api/rooms/%ED%A0%80", "room_id"),  # an encoded lone surrogate
    ):
        status, answer = await http(server, "GET", path, API_KEY)
        assert status == 400, (path, status, answer)
        assert f"'{field}'" in answer["error"]["message"], answer
    # Unknown paths and methods are answered as before.
    assert (await http(server, "GET", "/websocket/users//status", API_KEY))[0] == 404
    assert (await http(server, "GET", "/websocket/users/connected/", API_KEY))[0] == 200
    assert (await http(server, "GET", "/websocket/%FF", API_KEY))[0] == 404


# -- item 10: text a token carries ----------------------------------------------------------


def _token(**claims: Any) -> str:
    return jwt.encode({"exp": int(time.time()) + 60, **claims}, TEST_SECRET, algorithm="HS256")


@pytest_twisted.ensureDeferred
async def test_a_token_with_a_lone_surrogate_is_refused_and_its_events_are_logged(server):
    text_log = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    json_log = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    observers = [TextLinesObserver(text_log), JsonLinesObserver(json_log)]
    for observer in observers:
        globalLogPublisher.addObserver(observer)
    try:
        for token in (
            _token(sub="\ud800"),
            _token(sub="ok\udfffuser"),
            _token(sub="alice", name="\ud83d"),
            _token(sub="alice", username="x\udc00"),
            _token(sub="nul\x00user"),
        ):
            client = await WsClient.open(server.url, token=token, expect_auth=False)
            error = await client.next("error")
            assert error["data"]["code"] == "UNAUTHORIZED", error
            assert "text" in error["data"]["message"] or "NUL" in error["data"]["message"]
            assert await client.closed() == 4001
            status, answer = await http(server, "GET", "/websocket/me/status", token)
            assert status == 401, answer
    finally:
        for observer in observers:
            globalLogPublisher.removeObserver(observer)
    text = text_log.buffer.getvalue().decode("utf-8")  # type: ignore[attr-defined]
    lines = json_log.buffer.getvalue().decode("utf-8").splitlines()  # type: ignore[attr-defined]
    records = [strict_json(line) for line in lines]
    closes = [r for r in records if r.get("event") == "connection.close"]
    refusals = [r for r in records if r.get("event") == "auth.failed"]
    assert len(closes) == 5 and len(refusals) == 5, records
    assert text.count("authentication failed on") == 5


# -- item 10: control characters never reach the text log raw ------------------------------

RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


@pytest_twisted.ensureDeferred
async def test_control_characters_from_clients_are_escaped_in_the_text_log(server):
    stream = io.StringIO()
    observer = TextLinesObserver(stream)
    globalLogPublisher.addObserver(observer)
    try:
        stranger = await WsClient.open(server.url)
        await stranger.send("\x1b[2J\x1b[31mfake\r\n2026 [chatd#info] forged\x00", {}, "t1")
        error = await stranger.reply("t1")
        assert error["data"]["code"] in ("UNKNOWN_EVENT", "UNAUTHORIZED"), error
        evil = await WsClient.open(server.url, token=_token(sub="eve\x1b]0;owned\x07\r\u2028x"))
        await still_works(evil)
        await _get_with_agent(server, "/healthz", "agent\x1b[5m\x9b[2J\u2028blink".encode())
        await evil.close()
        await stranger.close()
    finally:
        globalLogPublisher.removeObserver(observer)
    text = stream.getvalue()
    assert not RAW_CONTROL.search(text), [
        line for line in text.splitlines() if RAW_CONTROL.search(line)
    ]
    for line in text.split("\n")[:-1]:
        assert re.match(r"\d{4}-\d\d-\d\dT|\t", line), line
    assert "\\x1b[2J\\x1b[31mfake\\r\\n2026 [chatd#info] forged\\x00" in text
    assert " as eve\\x1b]0;owned\\x07\\r\\u2028x" in text
    assert "agent\\x1b[5m\\x9b[2J\\u2028blink" in text


async def _get_with_agent(server: Any, path: str, agent: bytes) -> None:
    """A raw HTTP/1.1 request: the header value sent byte for byte."""
    reader, writer = await deferred(asyncio.open_connection("127.0.0.1", server.port))
    writer.write(
        b"GET "
        + path.encode()
        + b" HTTP/1.1\r\nHost: localhost\r\nUser-Agent: "
        + agent
        + b"\r\nConnection: close\r\n\r\n"
    )
    response = await deferred(asyncio.wait_for(reader.read(), TIMEOUT))
    writer.close()
    assert response.startswith(b"HTTP/1.1 200"), response[:200]
