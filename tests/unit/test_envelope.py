"""Envelope parsing and encoding (PROTOCOL.md section 3) and the typed
requests of chatd/protocol/requests.py."""

from __future__ import annotations

import json

import pytest

from chatd.errors import ChatError, ErrorCode
from chatd.protocol import requests as rq
from chatd.protocol.envelope import (
    MAX_ID_LENGTH,
    MAX_TYPE_LENGTH,
    Envelope,
    EnvelopeError,
    encode_ack,
    encode_error,
    encode_push,
    parse_envelope,
    wrap_push,
)


def frame(obj) -> bytes:
    return json.dumps(obj).encode()


# -- parse_envelope: valid frames -------------------------------------------------


def test_valid_frame_with_id():
    env = parse_envelope(frame({"type": "chat:join", "id": "r1", "data": {"chatId": "c"}}))
    assert env == Envelope("chat:join", "r1", {"chatId": "c"})


def test_valid_frame_without_id_and_null_id():
    assert parse_envelope(frame({"type": "ping", "data": {}})) == Envelope("ping", None, {})
    assert parse_envelope(frame({"type": "ping", "id": None})) == Envelope("ping", None, None)


def test_valid_frame_without_data():
    assert parse_envelope(frame({"type": "ping"})) == Envelope("ping", None, None)


@pytest.mark.parametrize("data", ["room-1", 42, [1, 2], True, None])
def test_bare_data_is_passed_through(data):
    env = parse_envelope(frame({"type": "chat:join", "id": "x", "data": data}))
    assert env.data == data and env.type == "chat:join" and env.id == "x"


def test_text_payload_is_accepted():
    assert parse_envelope('{"type":"ping","id":"1"}') == Envelope("ping", "1", None)


def test_limits_are_inclusive():
    env = parse_envelope(frame({"type": "t" * MAX_TYPE_LENGTH, "id": "i" * MAX_ID_LENGTH}))
    assert env.type == "t" * MAX_TYPE_LENGTH and env.id == "i" * MAX_ID_LENGTH


def test_non_ascii_utf8_frame():
    env = parse_envelope('{"type":"chat:message","id":"é","data":{"content":"héllo 👋"}}'.encode())
    assert env.id == "é" and env.data == {"content": "héllo 👋"}


# -- parse_envelope: invalid frames ------------------------------------------------


def invalid_envelope(payload) -> EnvelopeError:
    with pytest.raises(EnvelopeError) as info:
        parse_envelope(payload)
    error = info.value
    assert isinstance(error, ChatError)
    assert error.code == ErrorCode.INVALID_MESSAGE
    return error


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xfe{}",  # not UTF-8
        b'{"type":"ping","data":"\xc3"}',  # truncated UTF-8 sequence
        b"",  # empty
        b"not json",
        b'{"type": "ping"',  # truncated JSON
        "{'type': 'ping'}",  # Python, not JSON
    ],
)
def test_not_utf8_or_not_json(payload):
    error = invalid_envelope(payload)
    assert error.request_id is None and error.event is None


def test_deeply_nested_json_is_invalid_message_not_a_crash():
    # A couple of kilobytes of brackets fit well inside the 64 KiB frame
    # limit; the JSON decoder gives up with RecursionError, which must still
    # surface as INVALID_MESSAGE (a bad frame never closes the connection).
    error = invalid_envelope(b"[" * 5000 + b"]" * 5000)
    assert error.request_id is None
    nested = b'{"type":"chat:message","id":"n1","data":' + b"[" * 5000 + b"]" * 5000 + b"}"
    invalid_envelope(nested)


@pytest.mark.parametrize(
    "payload", [b"[]", b'["type", "ping"]', b'"ping"', b"42", b"null", b"true"]
)
def test_not_an_object(payload):
    error = invalid_envelope(payload)
    assert error.request_id is None and error.event is None
    assert "object" in error.message


@pytest.mark.parametrize(
    "bad_id", [7, 1.5, True, False, [], {}, ["a"], "", "x" * (MAX_ID_LENGTH + 1)]
)
def test_bad_id_keeps_event_but_not_id(bad_id):
    error = invalid_envelope(frame({"type": "chat:join", "id": bad_id, "data": {}}))
    assert error.request_id is None
    assert error.event == "chat:join"
    assert "'id'" in error.message


def test_bad_id_and_overlong_type_keep_neither():
    error = invalid_envelope(frame({"type": "t" * (MAX_TYPE_LENGTH + 1), "id": 5}))
    assert error.request_id is None and error.event is None


@pytest.mark.parametrize("body", [{"id": "r9"}, {"id": "r9", "type": None}])
def test_type_missing_keeps_id(body):
    error = invalid_envelope(frame(body))
    assert error.request_id == "r9" and error.event is None
    assert "'type'" in error.message


@pytest.mark.parametrize("bad_type", [5, True, [], {}, ["ping"], ""])
def test_type_wrong_type_or_empty_keeps_id(bad_type):
    error = invalid_envelope(frame({"type": bad_type, "id": "r9"}))
    assert error.request_id == "r9" and error.event is None
    assert "'type'" in error.message


def test_type_too_long_keeps_id():
    error = invalid_envelope(frame({"type": "t" * (MAX_TYPE_LENGTH + 1), "id": "r9"}))
    assert error.request_id == "r9" and error.event is None
    assert str(MAX_TYPE_LENGTH) in error.message


def test_type_missing_without_id():
    error = invalid_envelope(frame({"data": {}}))
    assert error.request_id is None and error.event is None


# -- encoders ------------------------------------------------------------------------


def test_encode_ack():
    raw = encode_ack("r1", {"room": {"id": "c1"}})
    assert isinstance(raw, bytes)
    assert json.loads(raw) == {"type": "ack", "id": "r1", "data": {"room": {"id": "c1"}}}


def test_encode_ack_empty_result():
    assert json.loads(encode_ack("r2", {})) == {"type": "ack", "id": "r2", "data": {}}


def test_encode_error_with_id_has_no_event():
    raw = encode_error("NOT_A_MEMBER", "not a member", "r1", "chat:join")
    assert json.loads(raw) == {
        "type": "error",
        "id": "r1",
        "data": {"code": "NOT_A_MEMBER", "message": "not a member"},
    }


def test_encode_error_without_id_names_event():
    raw = encode_error("ROOM_NOT_FOUND", "no such room", None, "chat:join")
    assert json.loads(raw) == {
        "type": "error",
        "data": {"code": "ROOM_NOT_FOUND", "message": "no such room", "event": "chat:join"},
    }


def test_encode_error_without_id_or_event():
    raw = encode_error("INVALID_MESSAGE", "frame is not valid JSON")
    assert json.loads(raw) == {
        "type": "error",
        "data": {"code": "INVALID_MESSAGE", "message": "frame is not valid JSON"},
    }


def test_encode_error_accepts_error_code_enum():
    raw = encode_error(ErrorCode.UNAUTHORIZED, "bad token", "a1")
    assert json.loads(raw)["data"]["code"] == "UNAUTHORIZED"


def test_encode_push():
    raw = encode_push("chat:typing", {"chatId": "c", "userId": "u", "isTyping": True})
    assert json.loads(raw) == {
        "type": "chat:typing",
        "data": {"chatId": "c", "userId": "u", "isTyping": True},
    }


def test_wrap_push_matches_encode_push():
    data = {"id": "m1", "content": 'quote " and \\ and é and 👋', "seq": 3}
    body = json.dumps(data).encode()
    wrapped = wrap_push("chat:message", body)
    assert json.loads(wrapped) == {"type": "chat:message", "data": data}
    assert json.loads(wrapped) == json.loads(encode_push("chat:message", data))


def test_wrap_push_escapes_event_type():
    wrapped = wrap_push('we"ird\\type', b"{}")
    assert json.loads(wrapped) == {"type": 'we"ird\\type', "data": {}}


def test_error_frames_round_trip_through_parse_fields():
    # What a client receives for a bad frame: the readable parts survive.
    error = invalid_envelope(frame({"type": 5, "id": "keep"}))
    assert json.loads(encode_error(error.code, error.message, error.request_id, error.event)) == {
        "type": "error",
        "id": "keep",
        "data": {"code": "INVALID_MESSAGE", "message": error.message},
    }


# -- typed requests --------------------------------------------------------------------


def refused(parse, data, code=ErrorCode.INVALID_MESSAGE, field=None) -> ChatError:
    with pytest.raises(ChatError) as info:
        parse(data)
    assert info.value.code == code
    if field is not None:
        assert f"'{field}'" in info.value.message
    return info.value


LONE = "\ud800"  # a lone surrogate: what json.loads gives for "\ud800"


def test_lone_surrogate_comes_from_json():
    assert parse_envelope(b'{"type":"x","data":{"content":"\\ud800"}}').data["content"] == LONE


# Auth


def test_auth_parse():
    assert rq.Auth.parse({"token": "abc"}) == rq.Auth("abc")


@pytest.mark.parametrize("data", [None, {}, {"token": None}])
def test_auth_missing_token(data):
    refused(rq.Auth.parse, data, field="token")


@pytest.mark.parametrize("token", [1, ["a"], {"t": 1}, True])
def test_auth_token_wrong_type(token):
    refused(rq.Auth.parse, {"token": token}, field="token")


@pytest.mark.parametrize("data", ["token", ["token"], 5])
def test_auth_data_not_an_object(data):
    assert "must be an object" in refused(rq.Auth.parse, data).message


def test_auth_lone_surrogate():
    refused(rq.Auth.parse, {"token": "ab" + LONE}, field="token")


# Ping


@pytest.mark.parametrize("data", [None, {}, {"extra": 1}, "anything"])
def test_ping_parse(data):
    assert rq.Ping.parse(data) == rq.Ping()


# ChatCreate


def test_chat_create_full():
    req = rq.ChatCreate.parse(
        {"name": "General", "description": "d", "type": "private", "members": ["bob", "carol"]}
    )
    assert req == rq.ChatCreate("General", "d", "private", ["bob", "carol"])


def test_chat_create_minimal_defaults():
    req = rq.ChatCreate.parse({"name": "n", "type": "public"})
    assert req == rq.ChatCreate("n", "", "public", [])
    assert (
        rq.ChatCreate.parse({"name": "n", "type": "public", "description": None, "members": None})
        == req
    )


@pytest.mark.parametrize(
    "data, field",
    [
        ({"type": "public"}, "name"),
        ({"name": None, "type": "public"}, "name"),
        ({"name": 5, "type": "public"}, "name"),
        ({"name": "   ", "type": "public"}, "name"),
        ({"name": "", "type": "public"}, "name"),
        ({"name": "n"}, "type"),
        ({"name": "n", "type": 1}, "type"),
        ({"name": "n", "type": "secret"}, "type"),
        ({"name": "n", "type": "PUBLIC"}, "type"),
        ({"name": "n", "type": "public", "description": 5}, "description"),
        ({"name": "n", "type": "public", "description": "x" * 1_000_001}, "description"),
        ({"name": "n", "type": "public", "members": "bob"}, "members"),
        ({"name": "n", "type": "public", "members": {"bob": 1}}, "members"),
        ({"name": "n", "type": "public", "members": [5]}, "members"),
        ({"name": "n", "type": "public", "members": [""]}, "members"),
        ({"name": "n", "type": "public", "members": [" "]}, "members"),
        ({"name": "n", "type": "public", "members": [None]}, "members"),
        ({"name": "n", "type": "public", "members": ["u" * 129]}, "members"),
    ],
)
def test_chat_create_field_errors(data, field):
    refused(rq.ChatCreate.parse, data, field=field)


def test_chat_create_member_id_limit_inclusive():
    assert rq.ChatCreate.parse({"name": "n", "type": "public", "members": ["u" * 128]}).members == [
        "u" * 128
    ]


@pytest.mark.parametrize(
    "data",
    [
        {"name": "a" + LONE, "type": "public"},
        {"name": "n", "type": "public", "description": LONE},
        {"name": "n", "type": "public", "members": ["bob" + LONE]},
    ],
)
def test_chat_create_lone_surrogates(data):
    refused(rq.ChatCreate.parse, data)


@pytest.mark.parametrize("data", [None, "General", ["General"]])
def test_chat_create_data_not_an_object(data):
    refused(rq.ChatCreate.parse, data)


# ChatJoin / ChatLeave


def test_chat_join_object_and_bare_string():
    assert rq.ChatJoin.parse({"chatId": "c1"}) == rq.ChatJoin("c1", None)
    assert rq.ChatJoin.parse({"chatId": "c1", "since": 0}) == rq.ChatJoin("c1", 0)
    assert rq.ChatJoin.parse({"chatId": "c1", "since": 17}) == rq.ChatJoin("c1", 17)
    assert rq.ChatJoin.parse({"chatId": "c1", "since": None}) == rq.ChatJoin("c1", None)
    assert rq.ChatJoin.parse("c1") == rq.ChatJoin("c1", None)
    assert rq.ChatJoin.parse("c" * 128) == rq.ChatJoin("c" * 128, None)


@pytest.mark.parametrize(
    "data, field",
    [
        (None, "chatId"),
        ({}, "chatId"),
        ({"chatId": None}, "chatId"),
        ({"chatId": 5}, "chatId"),
        ({"chatId": ["c"]}, "chatId"),
        ({"chatId": ""}, "chatId"),
        ({"chatId": "  "}, "chatId"),
        ({"chatId": "c" * 129}, "chatId"),
        ({"chatId": "c" + LONE}, "chatId"),
        ("", "chatId"),
        ("   ", "chatId"),
        ("c" * 129, "chatId"),
        ("c" + LONE, "chatId"),
        ({"chatId": "c", "since": -1}, "since"),
        ({"chatId": "c", "since": "3"}, "since"),
        ({"chatId": "c", "since": 1.5}, "since"),
        ({"chatId": "c", "since": 2.0}, "since"),
        ({"chatId": "c", "since": True}, "since"),
        ({"chatId": "c", "since": False}, "since"),
    ],
)
def test_chat_join_errors(data, field):
    refused(rq.ChatJoin.parse, data, field=field)


@pytest.mark.parametrize("data", [5, ["c1"], True])
def test_chat_join_data_not_object_or_string(data):
    assert "must be an object" in refused(rq.ChatJoin.parse, data).message


def test_chat_leave():
    assert rq.ChatLeave.parse({"chatId": "c1"}) == rq.ChatLeave("c1")
    assert rq.ChatLeave.parse("c1") == rq.ChatLeave("c1")
    assert rq.ChatLeave.parse({"chatId": "c1", "since": "ignored"}) == rq.ChatLeave("c1")


@pytest.mark.parametrize(
    "data",
    [
        None,
        {},
        {"chatId": 1},
        {"chatId": ""},
        "",
        "c" * 129,
        {"chatId": "c" * 129},
        "x" + LONE,
        [1],
    ],
)
def test_chat_leave_errors(data):
    refused(rq.ChatLeave.parse, data)


# ChatMessage


def test_chat_message():
    assert rq.ChatMessage.parse({"chatId": "c", "content": "hi"}) == rq.ChatMessage("c", "hi", None)
    assert rq.ChatMessage.parse(
        {"chatId": "c", "content": "hi", "tempId": "t" * 64}
    ) == rq.ChatMessage("c", "hi", "t" * 64)
    assert rq.ChatMessage.parse({"chatId": "c", "content": "hi", "tempId": None}).temp_id is None


def test_chat_message_content_length_is_left_to_the_domain():
    # The configurable limit (max_content_length, PAYLOAD_TOO_LARGE) is the
    # domain's; the parser takes any string.
    assert rq.ChatMessage.parse({"chatId": "c", "content": "x" * 10_000}).content == "x" * 10_000


@pytest.mark.parametrize(
    "data, field",
    [
        ({"content": "hi"}, "chatId"),
        ({"chatId": 3, "content": "hi"}, "chatId"),
        ({"chatId": " ", "content": "hi"}, "chatId"),
        ({"chatId": "c" * 129, "content": "hi"}, "chatId"),
        ({"chatId": "c"}, "content"),
        ({"chatId": "c", "content": None}, "content"),
        ({"chatId": "c", "content": 5}, "content"),
        ({"chatId": "c", "content": ["hi"]}, "content"),
        ({"chatId": "c", "content": "a" + LONE + "b"}, "content"),
        ({"chatId": "c", "content": "hi", "tempId": 5}, "tempId"),
        ({"chatId": "c", "content": "hi", "tempId": "t" * 65}, "tempId"),
        ({"chatId": "c", "content": "hi", "tempId": LONE}, "tempId"),
    ],
)
def test_chat_message_errors(data, field):
    refused(rq.ChatMessage.parse, data, field=field)


@pytest.mark.parametrize("data", [None, "c", ["c", "hi"]])
def test_chat_message_data_not_object(data):
    refused(rq.ChatMessage.parse, data)


# ChatTyping


def test_chat_typing():
    assert rq.ChatTyping.parse({"chatId": "c", "isTyping": True}) == rq.ChatTyping("c", True)
    assert rq.ChatTyping.parse({"chatId": "c", "isTyping": False}) == rq.ChatTyping("c", False)


@pytest.mark.parametrize(
    "data, field",
    [
        ({"chatId": "c"}, "isTyping"),
        ({"chatId": "c", "isTyping": None}, "isTyping"),
        ({"chatId": "c", "isTyping": "true"}, "isTyping"),
        ({"chatId": "c", "isTyping": "false"}, "isTyping"),
        ({"chatId": "c", "isTyping": 1}, "isTyping"),
        ({"chatId": "c", "isTyping": 0}, "isTyping"),
        ({"isTyping": True}, "chatId"),
        ({"chatId": "", "isTyping": True}, "chatId"),
        ({"chatId": "c" * 129, "isTyping": True}, "chatId"),
    ],
)
def test_chat_typing_errors(data, field):
    refused(rq.ChatTyping.parse, data, field=field)


# ChatRead


def test_chat_read():
    assert rq.ChatRead.parse({"chatId": "c", "messageId": "m" * 128}) == rq.ChatRead("c", "m" * 128)


@pytest.mark.parametrize(
    "data, field",
    [
        ({"chatId": "c"}, "messageId"),
        ({"chatId": "c", "messageId": 4}, "messageId"),
        ({"chatId": "c", "messageId": ""}, "messageId"),
        ({"chatId": "c", "messageId": "m" * 129}, "messageId"),
        ({"chatId": "c", "messageId": LONE}, "messageId"),
        ({"messageId": "m"}, "chatId"),
        ({"chatId": None, "messageId": "m"}, "chatId"),
    ],
)
def test_chat_read_errors(data, field):
    refused(rq.ChatRead.parse, data, field=field)


# ChatReaction


def test_chat_reaction():
    assert rq.ChatReaction.parse({"messageId": "m", "reaction": "👍"}) == rq.ChatReaction(
        "m", "👍", False
    )
    assert rq.ChatReaction.parse(
        {"messageId": "m", "reaction": "👍", "remove": True}
    ) == rq.ChatReaction("m", "👍", True)
    assert (
        rq.ChatReaction.parse({"messageId": "m", "reaction": "r" * 64, "remove": None}).remove
        is False
    )


@pytest.mark.parametrize(
    "data, field",
    [
        ({"reaction": "x"}, "messageId"),
        ({"messageId": 1, "reaction": "x"}, "messageId"),
        ({"messageId": "m" * 129, "reaction": "x"}, "messageId"),
        ({"messageId": "m"}, "reaction"),
        ({"messageId": "m", "reaction": ""}, "reaction"),
        ({"messageId": "m", "reaction": 7}, "reaction"),
        ({"messageId": "m", "reaction": "r" * 65}, "reaction"),
        ({"messageId": "m", "reaction": LONE}, "reaction"),
        ({"messageId": "m", "reaction": "x", "remove": "true"}, "remove"),
        ({"messageId": "m", "reaction": "x", "remove": "false"}, "remove"),
        ({"messageId": "m", "reaction": "x", "remove": 1}, "remove"),
    ],
)
def test_chat_reaction_errors(data, field):
    refused(rq.ChatReaction.parse, data, field=field)


# ChatHistory


def test_chat_history_defaults():
    assert rq.ChatHistory.parse({"chatId": "c"}) == rq.ChatHistory("c", None, None, 50)
    assert rq.ChatHistory.parse({"chatId": "c", "limit": None}).limit == 50


@pytest.mark.parametrize(
    "limit, expected", [(1, 1), (99, 99), (100, 100), (101, 100), (10_000, 100)]
)
def test_chat_history_limit_is_capped_at_100(limit, expected):
    assert rq.ChatHistory.parse({"chatId": "c", "limit": limit}).limit == expected


def test_chat_history_cursors():
    req = rq.ChatHistory.parse({"chatId": "c", "before": 10, "after": 0, "limit": 5})
    assert req == rq.ChatHistory("c", 10, 0, 5)


@pytest.mark.parametrize(
    "data, field",
    [
        ({}, "chatId"),
        ({"chatId": 1}, "chatId"),
        ({"chatId": "c", "limit": 0}, "limit"),
        ({"chatId": "c", "limit": -5}, "limit"),
        ({"chatId": "c", "limit": "10"}, "limit"),
        ({"chatId": "c", "limit": 2.5}, "limit"),
        ({"chatId": "c", "limit": True}, "limit"),
        ({"chatId": "c", "before": -1}, "before"),
        ({"chatId": "c", "before": "5"}, "before"),
        ({"chatId": "c", "before": True}, "before"),
        ({"chatId": "c", "after": -1}, "after"),
        ({"chatId": "c", "after": 1.0}, "after"),
        ({"chatId": "c", "after": False}, "after"),
    ],
)
def test_chat_history_errors(data, field):
    refused(rq.ChatHistory.parse, data, field=field)


@pytest.mark.parametrize("field", ["before", "after", "limit"])
@pytest.mark.parametrize("value", [2**63, 2**64, 10**30])
def test_integers_beyond_64_bits_are_refused_before_storage(field, value):
    error = refused(rq.ChatHistory.parse, {"chatId": "c", field: value}, field=field)
    assert "2^63" in error.message


def test_the_largest_64_bit_integer_is_a_value_like_any():
    largest = 2**63 - 1
    req = rq.ChatHistory.parse(
        {"chatId": "c", "before": largest, "after": largest, "limit": largest}
    )
    assert (req.before, req.after, req.limit) == (largest, largest, 100)
    assert rq.ChatJoin.parse({"chatId": "c", "since": largest}).since == largest
    refused(rq.ChatJoin.parse, {"chatId": "c", "since": 2**63}, field="since")


# helpers shared by the parsers


def test_required_str_too_long_code_is_configurable():
    assert (
        refused(lambda d: rq.required_str(d, "f", 3), {"f": "abcd"}, field="f").code
        == ErrorCode.INVALID_MESSAGE
    )
    error = refused(
        lambda d: rq.required_str(d, "f", 3, too_long=ErrorCode.PAYLOAD_TOO_LARGE),
        {"f": "abcd"},
        code=ErrorCode.PAYLOAD_TOO_LARGE,
        field="f",
    )
    assert "3" in error.message
    assert rq.required_str({"f": "abc"}, "f", 3) == "abc"


def test_required_bool_false_is_present():
    assert rq.required_bool({"b": False}, "b") is False
    assert rq.optional_bool({}, "b", default=True) is True


def test_iso_timestamps_match_datetime_across_second_boundaries() -> None:
    """iso_from_ms formats the date and second once per second (a cache):
    every millisecond around a boundary, and far-apart times, still read as
    datetime would write them."""
    from datetime import UTC, datetime

    from chatd.clock import iso_from_ms

    def reference(ms: int) -> str:
        dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"

    samples = [*range(1_796_153_558_990, 1_796_153_559_010), 0, 999, 1000, 253_402_300_799_999]
    samples += [1_796_153_558_123, 86_400_000, 1_796_153_558_124]  # back and forth
    for ms in samples:
        assert iso_from_ms(ms) == reference(ms), ms
