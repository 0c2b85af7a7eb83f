"""Seed 002's dialect (chatd/bindings/chatflow.py): the codec on a real
``Session`` whose native routes are fakes the test answers (so the order
of native requests and of the frames back is visible), the fan-out framer
on its own, and the dialect over Autobahn on a ``StringTransport``."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred

from chatd.bindings import chatflow
from chatd.bindings.chatflow import (
    CHATFLOW,
    JOIN_MESSAGES,
    MAX_HELD,
    MAX_HELD_BYTES,
    MAX_IN_FLIGHT,
    ChatFlowCodec,
    frame_chatflow,
    framer,
    last_messages,
    seed_code,
)
from chatd.bindings.dialects import root_dialects
from chatd.bindings.websocket import ChatdWebSocketFactory
from chatd.domain.models import Published, encode_body
from chatd.errors import ChatError, ErrorCode
from chatd.protocol.dispatch import Route
from chatd.session.session import Session
from tests.unit.session_fakes import Harness, RecordingBinding, token
from tests.unit.test_ws_binding import LenientTransport, client_frame, server_frames

WAIT = object()
NATIVE_EVENTS = (
    "ping",
    "chat:create",
    "chat:join",
    "chat:leave",
    "chat:message",
    "chat:typing",
    "chat:history",
)


def message(seq: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"m{seq}",
        "chatId": "r1",
        "seq": seq,
        "userId": "bob",
        "content": f"text {seq}",
        "createdAt": "2026-01-01T00:00:00.000Z",
        **extra,
    }


ROOM = {
    "id": "r1",
    "name": "General Chat",
    "description": "General discussion",
    "type": "public",
    "memberCount": 2,
    "createdAt": "2026-01-01T00:00:00.000Z",
    "lastSeq": 150,
}
SEED_ROOM = {k: v for k, v in ROOM.items() if k != "lastSeq"}


class FakeNative:
    """Native routes: each call is recorded; the answer is ``answers[event]``
    (data, an exception to raise, or ``WAIT`` for a Deferred the test
    fires from ``waiting``)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.answers: dict[str, Any] = {event: {} for event in NATIVE_EVENTS}
        self.answers["ping"] = {"timestamp": "2026-01-01T00:00:00.000Z"}
        self.waiting: dict[str, list[Deferred[Any]]] = {}

    def routes(self) -> dict[str, Route]:
        return {e: Route(lambda data: data, partial(self._handle, e), None) for e in NATIVE_EVENTS}

    def _handle(self, event: str, conn: Any, data: Any) -> Any:
        self.calls.append((event, data))
        answer = self.answers[event]
        if answer is WAIT:
            d: Deferred[Any] = Deferred()
            self.waiting.setdefault(event, []).append(d)
            return d
        if isinstance(answer, Exception):
            raise answer
        return answer

    def events(self) -> list[str]:
        return [event for event, _ in self.calls]


class CodecBinding(RecordingBinding):
    """A binding that frames through the codec under test."""

    def __init__(self, codec: ChatFlowCodec) -> None:
        super().__init__()
        self.codec = codec
        self.framer = codec.framer

    def frame_ack(self, request_id: str, data: Any) -> bytes:
        return self.codec.frame_ack(request_id, data)

    def frame_push(self, event_type: str, data: Any) -> bytes:
        return self.codec.frame_push(event_type, data)

    def frame_error(
        self, code: str, message: str, request_id: str | None, event: str | None
    ) -> bytes:
        return self.codec.frame_error(code, message, request_id, event)


class Conn:
    """One Chat Flow connection on a real session."""

    def __init__(self, harness: Harness, user: str | None = "alice") -> None:
        self.codec = ChatFlowCodec()
        self.binding = CodecBinding(self.codec)
        self.session: Session = harness.hub.session(self.binding, "tcp4:127.0.0.1:1")
        self.session.open(token(user, harness.config) if user is not None else None)
        self.read = 0

    def send(self, frame: Any) -> None:
        self.raw(json.dumps(frame).encode())

    def raw(self, payload: bytes, binary: bool = False) -> None:
        self.codec.received(self.session, payload, binary)

    def frames(self) -> list[dict[str, Any]]:
        """The frames written since the last call, decoded."""
        written, self.read = self.binding.fast[self.read :], len(self.binding.fast)
        out = []
        for chunk in written:
            for opcode, payload in server_frames(chunk):
                assert opcode == 1, "text frames only"
                out.append(json.loads(payload))
        return out

    def one(self) -> dict[str, Any]:
        [frame] = self.frames()
        return frame


def harness(native: FakeNative, **overrides: Any) -> Harness:
    return Harness(native.routes(), **overrides)


def authenticated(native: FakeNative, **overrides: Any) -> tuple[Harness, Conn]:
    h = harness(native, **overrides)
    conn = Conn(h)
    assert conn.one()["type"] == "AUTH_SUCCESS"
    return h, conn


# -- recognising the dialect ----------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "AUTHENTICATE", "payload": {"token": "t"}, "requestId": "1"},
        {"type": "auth", "payload": {}},
        {"type": "ping", "requestId": 3},
        {"type": "JOIN_ROOM"},
    ],
)
def test_claims_the_seeds_frames(frame: dict[str, Any]) -> None:
    assert CHATFLOW.claims(frame)


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "auth", "data": {"token": "t"}},
        {"type": "authenticate", "token": "t"},
        {"type": "chat:join", "id": "1", "data": "r1"},
        {"type": 5},
        {"type": "123"},
        {},
    ],
)
def test_leaves_native_and_seed_000_frames_alone(frame: dict[str, Any]) -> None:
    assert not CHATFLOW.claims(frame)


def test_the_dialect_gives_a_fresh_codec_per_connection() -> None:
    first, second = CHATFLOW.codec(), CHATFLOW.codec()
    assert isinstance(first, ChatFlowCodec) and first is not second
    assert CHATFLOW.name == "chatflow" and first.transport_name == "chatflow"
    assert CHATFLOW.framer is frame_chatflow is framer and first.framer is frame_chatflow


# -- the fan-out framer ---------------------------------------------------------------


def fan_out(event_type: str, data: dict[str, Any]) -> dict[str, Any] | None:
    frame = frame_chatflow(Published(event_type, encode_body(data)))
    if frame == b"":
        return None
    [(opcode, payload)] = server_frames(frame)
    assert opcode == 1
    decoded: dict[str, Any] = json.loads(payload)
    return decoded


def test_a_room_message_is_new_message() -> None:
    assert fan_out("chat:message", message(7)) == {
        "type": "NEW_MESSAGE",
        "payload": {
            "id": "m7",
            "roomId": "r1",
            "userId": "bob",
            "username": "bob",
            "content": "text 7",
            "type": "text",
            "timestamp": "2026-01-01T00:00:00.000Z",
            "seq": 7,
        },
    }
    named = fan_out("chat:message", message(8, username="Bob B."))
    assert named is not None and named["payload"]["username"] == "Bob B."


def test_typing_presence_and_removal_have_seed_forms() -> None:
    assert fan_out("chat:typing", {"chatId": "r1", "userId": "bob", "isTyping": True}) == {
        "type": "TYPING_UPDATE",
        "payload": {"roomId": "r1", "userId": "bob", "username": "bob", "isTyping": True},
    }
    assert fan_out("user:online", {"userId": "bob"}) == {
        "type": "USER_STATUS",
        "payload": {"userId": "bob", "username": "bob", "status": "online"},
    }
    offline = fan_out("user:offline", {"userId": "bob", "lastSeen": "2026-01-01T00:00:00.000Z"})
    assert offline is not None and offline["payload"]["status"] == "offline"
    assert offline["payload"]["lastSeen"] == "2026-01-01T00:00:00.000Z"
    assert fan_out("chat:left", {"chatId": "r1", "removed": True}) == {
        "type": "ROOM_LEFT",
        "payload": {"roomId": "r1", "removed": True},
    }


@pytest.mark.parametrize(
    "event_type",
    [
        "chat:read",
        "chat:reaction",
        "notification",
        "message",
        "message:receive",
        "friend:request",
        "friend:accepted",
        "live:message",
        "live:viewer-count",
        "live:status",
        "something:new",
    ],
)
def test_events_without_a_chat_flow_form_are_dropped(event_type: str) -> None:
    assert frame_chatflow(Published(event_type, b'{"userId":"bob"}')) == b""


def test_an_event_body_that_is_no_object_is_dropped() -> None:
    assert frame_chatflow(Published("chat:message", b'"r1"')) == b""


def test_the_session_s_own_pushes_use_the_same_shapes() -> None:
    codec = ChatFlowCodec()
    [(_, payload)] = server_frames(codec.frame_push("chat:left", {"chatId": "r1", "removed": True}))
    assert json.loads(payload) == {
        "type": "ROOM_LEFT",
        "payload": {"roomId": "r1", "removed": True},
    }
    assert codec.frame_push("notification", {"id": "n1", "title": "hi"}) == b""


# -- authentication ---------------------------------------------------------------------


def test_authenticate_gets_one_auth_success_echoing_the_request_id() -> None:
    native = FakeNative()
    h = harness(native)
    conn = Conn(h, user=None)
    conn.send(
        {
            "type": "AUTHENTICATE",
            "payload": {"token": token("alice", h.config), "username": "Alice"},
            "requestId": "auth-1",
        }
    )
    assert conn.frames() == [
        {
            "type": "AUTH_SUCCESS",
            "payload": {"userId": "alice", "username": "Alice", "status": "online"},
            "requestId": "auth-1",
        }
    ]
    assert conn.session.identity is not None and conn.session.identity.name == "Alice"


def test_a_token_offered_with_the_upgrade_is_answered_with_auth_success() -> None:
    h = harness(FakeNative())
    conn = Conn(h, user="alice")
    assert conn.frames() == [
        {
            "type": "AUTH_SUCCESS",
            "payload": {"userId": "alice", "username": "alice", "status": "online"},
        }
    ]


def test_bad_authenticate_payloads_are_refused_and_the_connection_stays() -> None:
    h = harness(FakeNative())
    conn = Conn(h, user=None)
    for payload in ({}, {"token": ""}, {"token": 5}, {"token": "t", "username": 7}):
        conn.send({"type": "AUTHENTICATE", "payload": payload, "requestId": "a"})
        error = conn.one()
        assert error["type"] == "ERROR" and error["requestId"] == "a", payload
        assert error["payload"]["code"] == "INVALID_MESSAGE"
    assert conn.binding.closes == [] and conn.session.identity is None
    conn.send({"type": "AUTHENTICATE", "payload": {"token": token("bob", h.config)}})
    assert conn.one()["payload"]["userId"] == "bob"


def test_a_refused_token_is_unauthorized_and_closes_like_on_ws() -> None:
    h = harness(FakeNative())
    conn = Conn(h, user=None)
    conn.send({"type": "AUTHENTICATE", "payload": {"token": "nope"}, "requestId": 9})
    error = conn.one()
    assert error["type"] == "ERROR" and error["requestId"] == 9
    assert error["payload"]["code"] == "UNAUTHORIZED"
    assert conn.binding.close_codes() == [4001]


def test_another_users_token_on_an_authenticated_connection_is_unauthorized() -> None:
    h, conn = authenticated(FakeNative())
    conn.send(
        {"type": "AUTHENTICATE", "payload": {"token": token("bob", h.config)}, "requestId": "x"}
    )
    error = conn.one()
    assert error["payload"]["code"] == "UNAUTHORIZED" and error["requestId"] == "x"
    assert conn.session.identity is not None and conn.session.identity.user_id == "alice"


def test_requests_before_authenticating_are_unauthorized() -> None:
    native = FakeNative()
    conn = Conn(harness(native), user=None)
    conn.send(
        {"type": "SEND_MESSAGE", "payload": {"roomId": "r1", "content": "hi"}, "requestId": "s"}
    )
    assert conn.one()["payload"] == {"code": "UNAUTHORIZED", "message": "authenticate first"}
    assert native.calls == []


# -- request ids and bad frames ---------------------------------------------------------


def test_request_ids_are_echoed_whatever_their_kind_and_repeats_are_fine() -> None:
    native = FakeNative()
    conn = Conn(harness(native), user=None)
    for request_id in ("same", "same", 42, 1.5):
        conn.send({"type": "PING", "payload": {}, "requestId": request_id})
    conn.send({"type": "PING"})
    frames = conn.frames()
    assert [f.get("requestId") for f in frames] == ["same", "same", 42, 1.5, None]
    assert all(f["type"] == "PONG" for f in frames)
    assert "requestId" not in frames[-1]
    assert frames[0]["payload"] == {"timestamp": "2026-01-01T00:00:00.000Z"}


@pytest.mark.parametrize(
    ("payload", "binary", "echo"),
    [
        (b"not json", False, None),
        (b"[1, 2]", False, None),
        (b'{"type": "PING"}', True, None),
        (b'{"payload": {}, "requestId": "r"}', False, "r"),
        (b'{"type": 5, "requestId": "r"}', False, "r"),
        (b'{"type": "PING", "payload": [1], "requestId": "r"}', False, "r"),
        (b'{"type": "PING", "payload": "x", "requestId": "r"}', False, "r"),
        (b'{"type": "NO_SUCH_THING", "requestId": "r"}', False, "r"),
        (b'{"type": "PING", "requestId": {"a": 1}}', False, None),
        (b'{"type": "PING", "requestId": true}', False, None),
        (b'{"type": "PING", "requestId": NaN}', False, None),
        (b'{"type": "PING", "requestId": "' + b"x" * 129 + b'"}', False, None),
        (b'{"type": "' + b"T" * 65 + b'", "requestId": "r"}', False, "r"),
        (b'{"type": "JOIN_ROOM", "payload": {}, "requestId": "r"}', False, "r"),
        (b'{"type": "JOIN_ROOM", "payload": {"roomId": 5}, "requestId": "r"}', False, "r"),
        (b'{"type": "JOIN_ROOM", "payload": {"roomId": " "}, "requestId": "r"}', False, "r"),
        (b'{"type": "LEAVE_ROOM", "payload": {"roomId": "' + b"r" * 129 + b'"}}', False, None),
        (b'{"type": "SEND_MESSAGE", "payload": {"content": "x"}, "requestId": "r"}', False, "r"),
        (
            b'{"type": "SEND_MESSAGE", "payload": {"roomId": "r1", "content": "x", "type": 3}}',
            False,
            None,
        ),
        (b'{"type": "TYPING_STATUS", "payload": {"isTyping": true}, "requestId": "r"}', False, "r"),
    ],
)
def test_bad_frames_get_invalid_message_and_change_nothing(
    payload: bytes, binary: bool, echo: Any
) -> None:
    native = FakeNative()
    _, conn = authenticated(native)
    conn.raw(payload, binary)
    error = conn.one()
    assert error["type"] == "ERROR" and error["payload"]["code"] == "INVALID_MESSAGE"
    assert error.get("requestId") == echo
    assert native.calls == [] and conn.binding.closes == []
    conn.send({"type": "PING", "requestId": "after"})
    assert conn.one()["requestId"] == "after"


def test_native_validation_errors_come_back_as_invalid_message() -> None:
    native = FakeNative()
    native.answers["chat:message"] = ChatError(
        ErrorCode.PAYLOAD_TOO_LARGE, "content is longer than 4000 characters"
    )
    _, conn = authenticated(native)
    conn.send({"type": "SEND_MESSAGE", "payload": {"roomId": "r1", "content": "x"}, "requestId": 1})
    assert conn.one() == {
        "type": "ERROR",
        "payload": {"code": "INVALID_MESSAGE", "message": "content is longer than 4000 characters"},
        "requestId": 1,
    }


EXPECTED_CODES = {
    ErrorCode.UNAUTHORIZED: "UNAUTHORIZED",
    ErrorCode.FORBIDDEN: "NOT_A_MEMBER",
    ErrorCode.INVALID_MESSAGE: "INVALID_MESSAGE",
    ErrorCode.UNKNOWN_EVENT: "INVALID_MESSAGE",
    ErrorCode.ROOM_NOT_FOUND: "ROOM_NOT_FOUND",
    ErrorCode.NOT_A_MEMBER: "NOT_A_MEMBER",
    ErrorCode.USER_NOT_FOUND: "INVALID_MESSAGE",
    ErrorCode.RATE_LIMIT_EXCEEDED: "RATE_LIMIT_EXCEEDED",
    ErrorCode.PAYLOAD_TOO_LARGE: "INVALID_MESSAGE",
    ErrorCode.UNAVAILABLE: "SERVER_ERROR",
    ErrorCode.SERVER_ERROR: "SERVER_ERROR",
}


@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_native_error_code_maps_onto_the_seeds(code: ErrorCode) -> None:
    native = FakeNative()
    native.answers["chat:message"] = ChatError(code, "because")
    _, conn = authenticated(native)
    conn.send(
        {"type": "SEND_MESSAGE", "payload": {"roomId": "r1", "content": "x"}, "requestId": "s"}
    )
    assert conn.one()["payload"] == {"code": EXPECTED_CODES[code], "message": "because"}


def test_forbidden_outside_a_room_and_unforeseen_codes() -> None:
    assert seed_code(ErrorCode.FORBIDDEN, "AUTHENTICATE") == "UNAUTHORIZED"
    assert seed_code(ErrorCode.FORBIDDEN, "JOIN_HISTORY") == "NOT_A_MEMBER"
    assert seed_code("SOMETHING_NEW", "PING") == "SERVER_ERROR"


def test_an_unexpected_failure_is_server_error_and_the_connection_lives() -> None:
    native = FakeNative()
    native.answers["chat:leave"] = RuntimeError("boom")
    _, conn = authenticated(native)
    conn.send({"type": "LEAVE_ROOM", "payload": {"roomId": "r1"}, "requestId": "l"})
    error = conn.one()
    assert error["payload"]["code"] == "SERVER_ERROR" and error["requestId"] == "l"
    conn.send({"type": "PING", "requestId": "p"})
    assert conn.one()["type"] == "PONG"


def test_a_failure_inside_the_codec_is_server_error_not_a_dropped_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(codec: ChatFlowCodec, session: Session, request: Any) -> None:
        raise KeyError("a bug")

    monkeypatch.setitem(chatflow._REQUESTS, "PING", broken)
    _, conn = authenticated(FakeNative())
    conn.send({"type": "PING", "requestId": "p"})
    assert conn.one()["payload"]["code"] == "SERVER_ERROR"
    assert conn.binding.closes == []


def test_the_session_s_rate_limit_echoes_the_request_id() -> None:
    native = FakeNative()
    _, conn = authenticated(native, rate_limit=0.001, rate_burst=2)
    for i in range(3):
        conn.send({"type": "PING", "requestId": f"p{i}"})
    frames = conn.frames()
    assert [f["type"] for f in frames] == ["PONG", "PONG", "ERROR"]
    assert frames[2]["payload"]["code"] == "RATE_LIMIT_EXCEEDED"
    assert frames[2]["requestId"] == "p2"


def test_requests_in_flight_are_bounded() -> None:
    native = FakeNative()
    native.answers["chat:message"] = WAIT
    _, conn = authenticated(native, rate_limit=10_000.0, rate_burst=10_000)
    for i in range(MAX_IN_FLIGHT + 1):
        conn.send(
            {"type": "SEND_MESSAGE", "payload": {"roomId": "r1", "content": "x"}, "requestId": i}
        )
    error = conn.one()
    assert error["payload"]["code"] == "RATE_LIMIT_EXCEEDED"
    assert error["requestId"] == MAX_IN_FLIGHT
    assert len(native.calls) == MAX_IN_FLIGHT
    native.waiting["chat:message"][0].callback({"id": "m1", "seq": 1, "createdAt": "T"})
    assert conn.one()["requestId"] == 0
    conn.send(
        {"type": "SEND_MESSAGE", "payload": {"roomId": "r1", "content": "x"}, "requestId": "ok"}
    )
    assert len(native.calls) == MAX_IN_FLIGHT + 1


# -- rooms and messages -----------------------------------------------------------------


def test_create_room_defaults_to_public_and_answers_room_created() -> None:
    native = FakeNative()
    native.answers["chat:create"] = {"room": ROOM}
    _, conn = authenticated(native)
    conn.send({"type": "CREATE_ROOM", "payload": {"name": "General Chat"}, "requestId": "c"})
    assert native.calls == [
        (
            "chat:create",
            {"name": "General Chat", "description": None, "type": "public", "members": None},
        )
    ]
    assert conn.one() == {"type": "ROOM_CREATED", "payload": {"room": SEED_ROOM}, "requestId": "c"}


def test_join_room_reads_100_messages_before_joining_and_merges_them() -> None:
    native = FakeNative()
    native.answers["chat:history"] = WAIT
    native.answers["chat:join"] = WAIT
    # a reply of 100 messages: more than the harness's 1,000-byte send bound
    _, conn = authenticated(native, max_send_buffer=1_000_000)
    conn.send({"type": "JOIN_ROOM", "payload": {"roomId": "r1"}, "requestId": "j"})
    assert native.calls == [("chat:history", {"chatId": "r1", "limit": JOIN_MESSAGES})]
    # Sent right behind the join: waits for it, in order.
    conn.send(
        {"type": "SEND_MESSAGE", "payload": {"roomId": "r1", "content": "hi"}, "requestId": "s"}
    )
    conn.send({"type": "PING", "requestId": "p"})
    assert native.events() == ["chat:history"] and conn.frames() == []
    native.waiting["chat:history"][0].callback(
        {"chatId": "r1", "messages": [message(s) for s in range(41, 141)], "hasMore": True}
    )
    assert native.events() == ["chat:history", "chat:join", "chat:message", "ping"]
    assert native.calls[1] == ("chat:join", {"chatId": "r1"})
    assert [f["requestId"] for f in conn.frames()] == ["s", "p"]  # fakes answer at once
    native.waiting["chat:join"][0].callback(
        {
            "room": ROOM,
            "messages": [message(s) for s in range(101, 151)],
            "users": ["alice", "bob"],
            "hasMore": True,
        }
    )
    joined = conn.one()
    assert joined["type"] == "ROOM_JOINED" and joined["requestId"] == "j"
    assert joined["payload"]["room"] == SEED_ROOM
    assert [m["seq"] for m in joined["payload"]["messages"]] == list(range(51, 151))
    assert joined["payload"]["messages"][0]["roomId"] == "r1"
    assert joined["payload"]["users"] == [
        {"userId": "alice", "username": "alice", "status": "online"},
        {"userId": "bob", "username": "bob", "status": "online"},
    ]


def test_a_join_room_that_fails_sends_its_error_before_what_waited() -> None:
    native = FakeNative()
    native.answers["chat:history"] = WAIT
    _, conn = authenticated(native)
    conn.send({"type": "JOIN_ROOM", "payload": {"roomId": "nope"}, "requestId": "j"})
    conn.send({"type": "PING", "requestId": "p"})
    native.waiting["chat:history"][0].errback(ChatError(ErrorCode.ROOM_NOT_FOUND, "no room"))
    error, pong = conn.frames()
    assert error == {
        "type": "ERROR",
        "payload": {"code": "ROOM_NOT_FOUND", "message": "no room"},
        "requestId": "j",
    }
    assert pong["type"] == "PONG"
    assert "chat:join" not in native.events()


def test_a_private_room_of_others_is_not_a_member() -> None:
    native = FakeNative()
    native.answers["chat:history"] = ChatError(ErrorCode.NOT_A_MEMBER, "private")
    _, conn = authenticated(native)
    conn.send({"type": "JOIN_ROOM", "payload": {"roomId": "r1"}, "requestId": "j"})
    assert conn.one()["payload"]["code"] == "NOT_A_MEMBER"
    assert native.events() == ["chat:history"]


def test_what_waits_behind_a_join_is_bounded() -> None:
    native = FakeNative()
    native.answers["chat:history"] = WAIT
    _, conn = authenticated(native, rate_limit=10_000.0, rate_burst=10_000)
    conn.send({"type": "JOIN_ROOM", "payload": {"roomId": "r1"}})
    for i in range(MAX_HELD + 1):
        conn.send({"type": "PING", "requestId": i})
    error = conn.one()
    assert error["payload"]["code"] == "RATE_LIMIT_EXCEEDED" and error["requestId"] == MAX_HELD
    native.waiting["chat:history"][0].errback(ChatError(ErrorCode.ROOM_NOT_FOUND, "no room"))
    frames = conn.frames()
    assert [f["type"] for f in frames] == ["ERROR"] + ["PONG"] * MAX_HELD


def test_the_bytes_waiting_behind_a_join_are_bounded_too() -> None:
    native = FakeNative()
    native.answers["chat:history"] = WAIT
    _, conn = authenticated(native, rate_limit=10_000.0, rate_burst=10_000)
    conn.send({"type": "JOIN_ROOM", "payload": {"roomId": "r1"}})
    big = {"roomId": "r1", "content": "x" * 30_000}
    fits = MAX_HELD_BYTES // 30_100
    for i in range(fits + 1):
        conn.send({"type": "SEND_MESSAGE", "payload": big, "requestId": i})
    error = conn.one()
    assert error["payload"]["code"] == "RATE_LIMIT_EXCEEDED" and error["requestId"] == fits
    native.waiting["chat:history"][0].callback({"messages": [], "hasMore": False})
    assert native.events().count("chat:message") == fits


def test_a_second_join_waits_for_the_first() -> None:
    native = FakeNative()
    native.answers["chat:history"] = WAIT
    _, conn = authenticated(native)
    conn.send({"type": "JOIN_ROOM", "payload": {"roomId": "r1"}, "requestId": 1})
    conn.send({"type": "JOIN_ROOM", "payload": {"roomId": "r2"}, "requestId": 2})
    conn.send({"type": "PING", "requestId": 3})
    native.waiting["chat:history"][0].callback({"messages": [], "hasMore": False})
    assert native.events() == ["chat:history", "chat:join", "chat:history"]
    native.waiting["chat:history"][1].callback({"messages": [], "hasMore": False})
    assert native.events()[-2:] == ["chat:join", "ping"]


def test_last_messages_merges_only_where_the_pages_meet() -> None:
    join_page = [message(s) for s in range(151, 201)]
    history = [message(s) for s in range(90, 190)]
    merged = last_messages(history, join_page, has_more=True)
    assert [m["seq"] for m in merged] == list(range(101, 201))
    gap = [message(s) for s in range(1, 100)]
    assert last_messages(gap, join_page, has_more=True) == join_page
    assert last_messages([], join_page, has_more=True) == join_page
    whole = [message(s) for s in range(1, 11)]
    assert last_messages([message(1)], whole, has_more=False) == whole
    adjacent = [message(s) for s in range(101, 151)]
    assert [m["seq"] for m in last_messages(adjacent, join_page, True)][:1] == [101]


def test_send_message_confirms_the_sender_once_and_only_with_a_request_id() -> None:
    native = FakeNative()
    native.answers["chat:message"] = {"id": "m9", "seq": 9, "createdAt": "2026-01-01T00:00:00.000Z"}
    _, conn = authenticated(native)
    conn.send(
        {
            "type": "SEND_MESSAGE",
            "payload": {"roomId": "r1", "content": "Hello, world!", "type": "text"},
            "requestId": "s1",
        }
    )
    assert native.calls == [("chat:message", {"chatId": "r1", "content": "Hello, world!"})]
    assert conn.one() == {
        "type": "MESSAGE_SENT",
        "payload": {"id": "m9", "roomId": "r1", "seq": 9, "timestamp": "2026-01-01T00:00:00.000Z"},
        "requestId": "s1",
    }
    conn.send({"type": "SEND_MESSAGE", "payload": {"roomId": "r1", "content": "again"}})
    assert conn.frames() == []


def test_typing_leave_history_and_ping() -> None:
    native = FakeNative()
    native.answers["chat:history"] = {"chatId": "r1", "messages": [message(3)], "hasMore": False}
    native.answers["chat:leave"] = {"chatId": "r1"}
    _, conn = authenticated(native)
    conn.send({"type": "TYPING_STATUS", "payload": {"roomId": "r1", "isTyping": True}})
    assert native.calls[-1] == ("chat:typing", {"chatId": "r1", "isTyping": True})
    assert conn.frames() == []
    conn.send({"type": "GET_HISTORY", "payload": {"roomId": "r1", "before": 4}, "requestId": "h"})
    assert native.calls[-1] == (
        "chat:history",
        {"chatId": "r1", "before": 4, "after": None, "limit": None},
    )
    history = conn.one()
    assert history["type"] == "HISTORY" and history["requestId"] == "h"
    assert history["payload"]["roomId"] == "r1" and history["payload"]["hasMore"] is False
    assert [m["id"] for m in history["payload"]["messages"]] == ["m3"]
    conn.send({"type": "LEAVE_ROOM", "payload": {"roomId": "r1"}, "requestId": "l"})
    assert conn.one() == {"type": "ROOM_LEFT", "payload": {"roomId": "r1"}, "requestId": "l"}


def test_typing_errors_are_answered() -> None:
    native = FakeNative()
    native.answers["chat:typing"] = ChatError(ErrorCode.NOT_A_MEMBER, "join first")
    _, conn = authenticated(native)
    conn.send(
        {"type": "TYPING_STATUS", "payload": {"roomId": "r1", "isTyping": True}, "requestId": 5}
    )
    assert conn.one() == {
        "type": "ERROR",
        "payload": {"code": "NOT_A_MEMBER", "message": "join first"},
        "requestId": 5,
    }


# -- over Autobahn ----------------------------------------------------------------------


def handshake(factory: ChatdWebSocketFactory, path: str) -> tuple[Any, LenientTransport]:
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = LenientTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    protocol.makeConnection(transport)
    protocol.dataReceived(
        (
            f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    assert transport.value().startswith(b"HTTP/1.1 101")
    transport.clear()
    return protocol, transport


def received(transport: LenientTransport) -> list[dict[str, Any]]:
    data = transport.value()
    transport.clear()
    return [json.loads(p) for op, p in server_frames(data) if op == 1]


NO_TIMERS = {"close_handshake_timeout": 0, "ping_interval": 0}


def test_the_dialect_over_autobahn_on_its_own_path() -> None:
    h = Harness(FakeNative().routes(), **NO_TIMERS)
    factory = ChatdWebSocketFactory(h.config, h.hub, CHATFLOW)
    protocol, transport = handshake(factory, "/ws/chatflow")
    frame = {
        "type": "AUTHENTICATE",
        "payload": {"token": token("alice", h.config)},
        "requestId": "a",
    }
    protocol.dataReceived(client_frame(json.dumps(frame).encode()))
    assert received(transport) == [
        {
            "type": "AUTH_SUCCESS",
            "payload": {"userId": "alice", "username": "alice", "status": "online"},
            "requestId": "a",
        }
    ]
    assert protocol.session.framer is frame_chatflow


def test_on_root_a_chat_flow_first_frame_picks_the_dialect() -> None:
    h = Harness(FakeNative().routes(), **NO_TIMERS)
    factory = ChatdWebSocketFactory(h.config, h.hub, None, root_dialects())
    protocol, transport = handshake(factory, "/")
    frame = {"type": "AUTHENTICATE", "payload": {"token": token("bob", h.config)}, "requestId": 1}
    protocol.dataReceived(client_frame(json.dumps(frame).encode()))
    [success] = received(transport)
    assert success["type"] == "AUTH_SUCCESS" and success["requestId"] == 1
    assert protocol.session.framer is frame_chatflow
    assert isinstance(protocol.codec, ChatFlowCodec)
    protocol.dataReceived(client_frame(b"{oops"))
    [error] = received(transport)
    assert error["type"] == "ERROR" and error["payload"]["code"] == "INVALID_MESSAGE"
