"""Seed 000's dialect (chatd/bindings/seed000.py) with a fake session: the
requests each client frame becomes, what each reply, error and push turns
into, and the fan-out framer's rendering of every native event."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from chatd.bindings.seed000 import (
    MAX_PENDING,
    PAST_EVERY_MESSAGE,
    SEED000,
    Seed000Codec,
    frame_event,
)
from chatd.domain.models import Identity, Published, dm_room_id, encode_body
from tests.unit.test_ws_binding import server_frames

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
WIRE = {
    "id": "m_1",
    "chatId": "r_1",
    "seq": 7,
    "userId": "bob",
    "content": "hi",
    "createdAt": "2026-12-01T10:00:00.123Z",
}


class FakeSession:
    """Records what the codec asks of its session.  ``auth_as`` is who an
    ``auth`` request authenticates (None: the token is refused)."""

    def __init__(self, user: str | None = "alice", auth_as: str | None = None) -> None:
        self.identity = Identity(user) if user is not None else None
        self.auth_as = auth_as
        self.requests: list[tuple[str, str | None, Any]] = []
        self.refused: list[tuple[str, str, str | None, str | None]] = []
        self.failures = 0
        self.quiet: list[str | None] = []

    def received(
        self, event_type: str, request_id: str | None, data: Any, quiet: bool = False
    ) -> None:
        self.requests.append((event_type, request_id, data))
        if quiet:
            self.quiet.append(request_id)
        if event_type == "auth" and self.auth_as is not None:
            self.identity = Identity(self.auth_as)

    def malformed(
        self, code: str, message: str, request_id: str | None = None, event: str | None = None
    ) -> None:
        self.refused.append((code, message, request_id, event))

    def failed(self) -> None:
        self.failures += 1


class Later:
    """The codec's ``later``, run by hand."""

    def __init__(self) -> None:
        self.calls: list[Callable[[], None]] = []

    def __call__(self, call: Callable[[], None]) -> None:
        self.calls.append(call)

    def run(self) -> None:
        while self.calls:
            self.calls.pop(0)()


def decoded(frame: bytes) -> dict[str, Any]:
    """One server text frame's JSON."""
    [(opcode, payload)] = server_frames(frame)
    assert opcode == 1
    result: dict[str, Any] = json.loads(payload)
    return result


def make(session: FakeSession | None = None) -> tuple[Seed000Codec, FakeSession, Later]:
    later = Later()
    return Seed000Codec(later), session or FakeSession(), later


def send(codec: Seed000Codec, session: FakeSession, frame: Any) -> None:
    payload = frame if isinstance(frame, bytes) else json.dumps(frame).encode()
    codec.received(session, payload, False)  # type: ignore[arg-type]


def last(session: FakeSession) -> tuple[str, str | None, Any]:
    return session.requests[-1]


# -- the dialect ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "authenticate", "token": "t"},
        {"type": "message", "data": {"receiverId": "b", "content": "x"}},
        {"type": "typing_start", "data": {"friendId": "b"}},
        {"type": "typing_stop"},
        {"type": "join_room", "data": {"roomId": "r"}},
        {"type": "leave_room", "data": {"roomId": "r"}},
    ],
)
def test_claims_a_first_frame_of_seed_000(frame: dict[str, Any]) -> None:
    assert SEED000.claims(frame)


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "auth", "data": {"token": "t"}},
        {"type": "chat:join", "data": "r"},
        {"type": "AUTHENTICATE", "payload": {"token": "t"}},
        {"type": "authenticate", "payload": {"token": "t"}},
        {"type": "join_room", "requestId": "1"},
        {"type": ["message"]},
        {"token": "t"},
    ],
)
def test_claims_nothing_else(frame: dict[str, Any]) -> None:
    assert not SEED000.claims(frame)


def test_each_connection_has_a_codec_of_its_own() -> None:
    first, second = SEED000.codec(), SEED000.codec()
    assert first is not second and first.transport_name == "seed000"
    assert SEED000.name == "seed000" and first.framer is SEED000.framer is frame_event


# -- authentication ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "authenticate", "token": "tok"},
        {"type": "authenticate", "data": {"token": "tok"}},
    ],
)
def test_authenticate_then_join_the_friends_conversations(frame: dict[str, Any]) -> None:
    codec, session, later = make(FakeSession(user=None, auth_as="alice"))
    send(codec, session, frame)
    assert session.requests[0] == ("auth", None, {"token": "tok"})
    friends, request_id, _ = last(session)
    assert friends == "friends:list" and request_id is not None
    listed = {"friends": [{"userId": "bob", "online": True}, {"userId": "carol"}, "junk"]}
    assert codec.frame_ack(request_id, listed) == b""
    later.run()
    joins = [r for r in session.requests if r[0] == "chat:join"]
    assert [data for _, _, data in joins] == [
        {"chatId": dm_room_id("alice", "bob"), "since": PAST_EVERY_MESSAGE},
        {"chatId": dm_room_id("alice", "carol"), "since": PAST_EVERY_MESSAGE},
    ]
    # A failed quiet join (no conversation yet) tells the client nothing.
    assert codec.frame_error("ROOM_NOT_FOUND", "no room", joins[1][1], "chat:join") == b""
    # Only once per connection.
    send(codec, session, {"type": "authenticate", "token": "tok"})
    assert [r[0] for r in session.requests].count("friends:list") == 1


def test_a_refused_token_goes_to_the_session_as_is() -> None:
    codec, session, _ = make(FakeSession(user=None))
    send(codec, session, {"type": "authenticate", "token": 5})
    assert session.requests == [("auth", None, {"token": 5})]
    error = decoded(codec.frame_error("UNAUTHORIZED", "bad token", None, "auth"))
    assert error["type"] == "error" and ISO_MS.match(error["timestamp"])
    assert error["data"] == {
        "code": "UNAUTHORIZED",
        "message": "bad token",
        "event": "authenticate",
    }


def test_a_token_from_the_upgrade_joins_on_the_first_frame() -> None:
    codec, session, _ = make()
    send(codec, session, {"type": "join_room", "data": {"roomId": "r"}})
    assert [r[0] for r in session.requests] == ["friends:list", "chat:join"]


def test_authenticated_is_rendered_with_the_display_name() -> None:
    codec, _, _ = make()
    hello = decoded(
        codec.frame_push("authenticated", {"userId": "a", "connectionId": "c_1", "name": "Al"})
    )
    assert hello["type"] == "authenticated" and ISO_MS.match(hello["timestamp"])
    assert hello["data"] == {"userId": "a", "connectionId": "c_1", "name": "Al", "username": "Al"}


# -- messages ----------------------------------------------------------------------------------------


def booted(user: str = "alice") -> tuple[Seed000Codec, FakeSession, Later]:
    """A codec whose session authenticated, its friends' list answered."""
    codec, session, later = make(FakeSession(user))
    send(codec, session, {"type": "join_room", "data": {"roomId": "warmup"}})
    _, listed, _ = session.requests[0]
    codec.frame_ack(str(listed), {"friends": []})
    session.requests.clear()
    return codec, session, later


def test_a_direct_message_is_message_send_and_confirmed_as_message_sent() -> None:
    codec, session, later = booted()
    send(
        codec,
        session,
        {
            "type": "message",
            "data": {"receiverId": "bob", "content": "hi", "messageType": "TEXT", "tempId": "t1"},
        },
    )
    event, request_id, data = last(session)
    assert event == "message:send" and request_id is not None
    assert data == {"recipientId": "bob", "content": "hi", "tempId": "t1"}
    room = dm_room_id("alice", "bob")
    wire = {**WIRE, "chatId": room, "userId": "alice", "senderId": "alice", "recipientId": "bob"}
    sent = decoded(codec.frame_ack(request_id, {"message": wire}))
    assert sent["type"] == "message_sent" and sent["data"] == sent["message"]
    assert sent["timestamp"] == WIRE["createdAt"]
    assert sent["message"] == {
        **wire,
        "receiverId": "bob",
        "roomId": room,
        "messageType": "TEXT",
    }
    # The conversation is joined afterwards, for the partner's typing.
    assert last(session)[0] == "message:send"
    later.run()
    assert last(session)[0] == "chat:join" and last(session)[2]["chatId"] == room


def test_a_room_message_is_chat_message_and_confirmed_with_the_stored_fields() -> None:
    codec, session, _ = booted()
    send(codec, session, {"type": "message", "data": {"chatId": "r_1", "content": "yo"}})
    event, request_id, data = last(session)
    assert event == "chat:message" and data == {"chatId": "r_1", "content": "yo"}
    assert request_id is not None
    ack = {"id": "m_9", "seq": 3, "createdAt": "2026-12-01T10:00:00.000Z"}
    sent = decoded(codec.frame_ack(request_id, ack))
    assert sent["type"] == "message_sent"
    assert sent["message"] == {
        "id": "m_9",
        "chatId": "r_1",
        "roomId": "r_1",
        "seq": 3,
        "userId": "alice",
        "senderId": "alice",
        "content": "yo",
        "messageType": "TEXT",
        "createdAt": "2026-12-01T10:00:00.000Z",
    }


def test_top_level_fields_are_read_when_there_is_no_data() -> None:
    codec, session, _ = booted()
    send(codec, session, {"type": "message", "roomId": "r_1", "content": "yo"})
    assert last(session)[0] == "chat:message"


def test_a_failed_message_is_an_error_naming_the_seed_event() -> None:
    codec, session, _ = booted()
    send(codec, session, {"type": "message", "data": {"receiverId": "nobody", "content": "x"}})
    _, request_id, _ = last(session)
    error = decoded(codec.frame_error("USER_NOT_FOUND", "unknown", request_id, "message:send"))
    assert error["data"] == {"code": "USER_NOT_FOUND", "message": "unknown", "event": "message"}
    # Answered once: a second reply for the same id has nothing to answer.
    assert codec.frame_ack(str(request_id), {}) == b""


# -- typing ----------------------------------------------------------------------------------------------


def test_typing_joins_the_conversation_first_and_the_latest_state_wins() -> None:
    codec, session, later = booted()
    room = dm_room_id("alice", "bob")
    send(codec, session, {"type": "typing_start", "data": {"userId": "alice", "friendId": "bob"}})
    assert session.requests == []
    later.run()
    event, join_id, data = last(session)
    assert event == "chat:join" and data == {"chatId": room, "since": PAST_EVERY_MESSAGE}
    send(codec, session, {"type": "typing_stop", "data": {"friendId": "bob"}})
    send(codec, session, {"type": "typing_start", "data": {"friendId": "bob"}})
    assert codec.frame_ack(str(join_id), {"room": {}, "messages": []}) == b""
    assert last(session)[0] == "chat:join"  # not inside the join's reply
    later.run()
    event, typing_id, data = last(session)
    assert event == "chat:typing" and data == {"chatId": room, "isTyping": True}
    assert [r[0] for r in session.requests].count("chat:typing") == 1
    assert codec.frame_ack(str(typing_id), {}) == b""
    # Joined: the next one goes straight out.
    send(codec, session, {"type": "typing_stop", "data": {"friendId": "bob"}})
    assert last(session)[0:3:2] == ("chat:typing", {"chatId": room, "isTyping": False})


def test_typing_with_nobody_to_type_to_is_an_error() -> None:
    codec, session, later = booted()
    send(codec, session, {"type": "typing_start", "data": {"friendId": "mallory"}})
    later.run()
    _, join_id, _ = last(session)
    error = decoded(codec.frame_error("ROOM_NOT_FOUND", "room?", join_id, "chat:join"))
    assert error["data"]["code"] == "ROOM_NOT_FOUND" and error["data"]["event"] == "typing_start"
    assert "no conversation" in error["data"]["message"]
    # Tried again next time.
    send(codec, session, {"type": "typing_start", "data": {"friendId": "mallory"}})
    later.run()
    assert last(session)[0] == "chat:join" and last(session)[1] != join_id


def test_typing_in_a_room_goes_straight_to_chat_typing() -> None:
    codec, session, _ = booted()
    send(codec, session, {"type": "typing_start", "data": {"roomId": "r_1"}})
    event, request_id, data = last(session)
    assert event == "chat:typing" and data == {"chatId": "r_1", "isTyping": True}
    error = decoded(codec.frame_error("NOT_A_MEMBER", "join first", request_id, "chat:typing"))
    assert error["data"]["event"] == "typing_start"


# -- rooms ---------------------------------------------------------------------------------------------------


def test_join_room_is_answered_with_room_joined() -> None:
    codec, session, _ = booted()
    send(codec, session, {"type": "join_room", "data": {"roomId": "r_1", "since": 2}})
    event, request_id, data = last(session)
    assert event == "chat:join" and data == {"chatId": "r_1", "since": 2}
    snapshot = {"room": {"id": "r_1"}, "messages": [WIRE], "users": ["bob"], "hasMore": False}
    joined = decoded(codec.frame_ack(str(request_id), snapshot))
    assert joined["type"] == "room_joined"
    assert joined["data"] == {
        "roomId": "r_1",
        "chatId": "r_1",
        "room": {"id": "r_1"},
        "messages": [{**WIRE, "senderId": "bob", "roomId": "r_1", "messageType": "TEXT"}],
        "users": ["bob"],
        "hasMore": False,
    }


def test_join_room_with_a_friend_is_the_conversation_and_counts_as_joined() -> None:
    codec, session, _ = booted()
    room = dm_room_id("alice", "bob")
    send(codec, session, {"type": "join_room", "data": {"friendId": "bob"}})
    _, request_id, data = last(session)
    assert data == {"chatId": room}
    codec.frame_ack(str(request_id), {"messages": []})
    send(codec, session, {"type": "typing_start", "data": {"friendId": "bob"}})
    assert last(session)[0] == "chat:typing"


def test_leave_room_and_being_removed_are_room_left() -> None:
    codec, session, _ = booted()
    send(codec, session, {"type": "leave_room", "data": {"chatId": "r_1"}})
    event, request_id, data = last(session)
    assert event == "chat:leave" and data == {"chatId": "r_1"}
    left = decoded(codec.frame_ack(str(request_id), {"chatId": "r_1"}))
    assert left["type"] == "room_left" and left["data"] == {"roomId": "r_1", "chatId": "r_1"}
    removed = decoded(codec.frame_push("chat:left", {"chatId": "r_2", "removed": True}))
    assert removed["data"] == {"roomId": "r_2", "chatId": "r_2", "removed": True}


# -- bad frames ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "code", "event"),
    [
        (b"not json", "INVALID_MESSAGE", None),
        (b"[1]", "INVALID_MESSAGE", None),
        (b'{"type": 5}', "INVALID_MESSAGE", None),
        (b'{"type": ""}', "INVALID_MESSAGE", None),
        (json.dumps({"type": "x" * 65}).encode(), "INVALID_MESSAGE", None),
        (b'{"type": "bogus"}', "UNKNOWN_EVENT", "bogus"),
        (b'{"type": "message", "data": [1]}', "INVALID_MESSAGE", "message"),
        (b'{"type": "message", "data": {"content": "x"}}', "INVALID_MESSAGE", "message"),
        (
            b'{"type": "message", "data": {"receiverId": "b", "roomId": "r", "content": "x"}}',
            "INVALID_MESSAGE",
            "message",
        ),
        (
            b'{"type": "message", "data": {"receiverId": " ", "content": "x"}}',
            "INVALID_MESSAGE",
            "message",
        ),
        (
            json.dumps({"type": "message", "data": {"receiverId": "b" * 129}}).encode(),
            "INVALID_MESSAGE",
            "message",
        ),
        (
            b'{"type": "message", "data": {"receiverId": "b", "content": "x", "messageType": "FILE"}}',
            "INVALID_MESSAGE",
            "message",
        ),
        (
            b'{"type": "message", "data": {"receiverId": "b", "content": "x", "messageType": 1}}',
            "INVALID_MESSAGE",
            "message",
        ),
        (
            b'{"type": "typing_start", "data": {"friendId": "alice"}}',
            "INVALID_MESSAGE",
            "typing_start",
        ),
        (b'{"type": "typing_stop", "data": {"friendId": 3}}', "INVALID_MESSAGE", "typing_stop"),
        (b'{"type": "join_room", "data": {}}', "INVALID_MESSAGE", "join_room"),
        (
            b'{"type": "join_room", "data": {"roomId": "r", "since": true}}',
            "INVALID_MESSAGE",
            "join_room",
        ),
        (
            b'{"type": "leave_room", "data": {"roomId": "r", "friendId": "b"}}',
            "INVALID_MESSAGE",
            "leave_room",
        ),
    ],
)
def test_a_bad_frame_is_refused_and_sends_no_request(
    payload: bytes, code: str, event: str | None
) -> None:
    codec, session, later = booted()
    send(codec, session, payload)
    later.run()
    assert session.requests == []
    [(refused_code, message, request_id, refused_event)] = session.refused
    assert (refused_code, request_id, refused_event) == (code, None, event), message
    error = decoded(codec.frame_error(code, message, None, refused_event))
    assert error["data"].get("event") == event and error["data"]["code"] == code


def test_a_binary_frame_is_refused() -> None:
    codec, session, _ = booted()
    codec.received(session, b'{"type": "message"}', True)  # type: ignore[arg-type]
    assert session.requests == [] and session.refused[0][0] == "INVALID_MESSAGE"


def test_typing_to_a_friend_before_authenticating_is_unauthorized() -> None:
    codec, session, _ = make(FakeSession(user=None))
    send(codec, session, {"type": "typing_start", "data": {"friendId": "bob"}})
    assert session.refused[0][0] == "UNAUTHORIZED" and session.refused[0][3] == "typing_start"


def test_an_unexpected_failure_is_the_sessions_server_error() -> None:
    codec, session, _ = booted()

    def broken(*args: Any) -> None:
        raise RuntimeError("boom")

    session.received = broken  # type: ignore[method-assign]
    send(codec, session, {"type": "message", "data": {"roomId": "r", "content": "x"}})
    assert session.failures == 1


def test_the_map_of_pending_requests_is_bounded() -> None:
    codec, session, _ = booted()
    for i in range(MAX_PENDING + 1):
        send(codec, session, {"type": "leave_room", "data": {"roomId": f"r{i}"}})
    first_id, newest_id = session.requests[0][1], session.requests[-1][1]
    assert codec.frame_ack(str(first_id), {}) == b""  # forgotten
    assert decoded(codec.frame_ack(str(newest_id), {}))["type"] == "room_left"
    # An error for a forgotten request still says which seed event failed.
    error = decoded(codec.frame_error("UNAVAILABLE", "later", str(first_id), "chat:leave"))
    assert error["data"]["event"] == "leave_room"


# -- fan-out --------------------------------------------------------------------------------------------------


def published(event_type: str, data: Any) -> bytes:
    return frame_event(Published(event_type, encode_body(data)))


def test_a_direct_message_push_is_message_with_the_message_twice() -> None:
    wire = {**WIRE, "chatId": "dm_x", "senderId": "bob", "recipientId": "alice", "username": "Bob"}
    frame = decoded(published("message:receive", {"message": wire}))
    assert frame["type"] == "message" and frame["data"] == frame["message"]
    assert frame["message"]["receiverId"] == "alice" and frame["message"]["username"] == "Bob"
    assert frame["timestamp"] == WIRE["createdAt"]


def test_a_room_message_is_message_and_a_conversations_room_copy_is_dropped() -> None:
    frame = decoded(published("chat:message", WIRE))
    assert frame["message"] == {**WIRE, "senderId": "bob", "roomId": "r_1", "messageType": "TEXT"}
    assert published("chat:message", {**WIRE, "chatId": "dm_abc"}) == b""


def test_typing_presence_and_friend_requests_take_seed_names() -> None:
    typing = decoded(published("chat:typing", {"chatId": "r_1", "userId": "b", "isTyping": True}))
    assert typing["type"] == "typing"
    assert typing["data"] == {"chatId": "r_1", "roomId": "r_1", "userId": "b", "isTyping": True}
    for native, seed in (
        ("user:online", "user_online"),
        ("user:offline", "user_offline"),
        ("friend:request", "friend_request"),
    ):
        frame = decoded(published(native, {"userId": "b"}))
        assert frame["type"] == seed and frame["data"] == {"userId": "b"}
        assert ISO_MS.match(frame["timestamp"])


def test_a_backend_push_is_already_seed_000s_format() -> None:
    body = {
        "type": "system",
        "data": {"text": "maintenance"},
        "timestamp": "2026-12-01T10:00:00.000Z",
    }
    assert decoded(published("message", body)) == body


def test_other_native_events_keep_their_names() -> None:
    frame = decoded(published("chat:read", {"chatId": "r_1", "userId": "b", "seq": 3}))
    assert frame["type"] == "chat:read" and frame["data"]["seq"] == 3
    note = decoded(SEED000.codec().frame_push("notification", {"id": "n_1", "title": "T"}))
    assert note["type"] == "notification" and note["data"] == {"id": "n_1", "title": "T"}


def test_the_conversations_a_frame_names_are_found_once_per_frame() -> None:
    from chatd.bindings.seed000 import conversations_in

    a, b = dm_room_id("alice", "bob"), dm_room_id("alice", "carol")
    frame = (
        b'{"type":"message","data":{"chatId":"'
        + a.encode()
        + b'"},"message":{"chatId":"'
        + a.encode()
        + b'"}}{"type":"message","data":{"chatId":"'
        + b.encode()
        + b'"}}'
    )
    assert conversations_in(frame) == (a, b)
    assert conversations_in(frame) is conversations_in(frame)  # the same bytes: kept
    assert conversations_in(b'{"type":"message","data":{"chatId":"r_1"}}') == ()
