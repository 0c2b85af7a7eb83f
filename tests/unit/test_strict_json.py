"""Strict JSON both ways (issue 15, item 8): NaN, Infinity, -Infinity and
numbers beyond a double are refused in every binding's frames, and no
encoder of chatd's can write one (browsers' ``JSON.parse`` refuses them,
so such a frame would be lost on every client that received it)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from chatd.bindings import chatflow, seed000
from chatd.bindings.codec import json_object
from chatd.bindings.socketio import sio
from chatd.domain.chat import Outcome
from chatd.domain.models import encode_body
from chatd.errors import ErrorCode
from chatd.protocol.dispatch import Dispatcher, Route
from chatd.protocol.envelope import (
    EnvelopeError,
    NonFiniteNumber,
    encode_ack,
    encode_push,
    parse_envelope,
    strict_dumps,
    strict_loads,
)
from tests.unit.test_dispatch import Responder

NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1E400"]
NAN = float("nan")


def _texts(number: str) -> list[str]:
    return [
        number,
        f'{{"v":{number}}}',
        f'{{"type":"ping","data":{{"a":[1,{{"b":{number}}}]}}}}',
        f"[{number}]",
    ]


@pytest.mark.parametrize("number", NON_FINITE)
def test_strict_loads_refuses_non_finite_numbers_anywhere(number):
    for text in _texts(number):
        with pytest.raises(NonFiniteNumber):
            strict_loads(text)
        with pytest.raises(ValueError):  # what callers already catch
            strict_loads(text.encode())


def test_strict_loads_takes_every_number_json_has():
    text = '{"a":1.5,"b":-0.0,"c":1e308,"d":123456789012345678901234567890,"e":[0,-1,2E-3]}'
    assert strict_loads(text) == json.loads(text)
    assert strict_loads(b'"NaN"') == "NaN"  # a string is a string


@pytest.mark.parametrize("number", NON_FINITE)
def test_every_binding_refuses_the_frame(number):
    native = f'{{"type":"chat:message","id":"m1","data":{{"chatId":"r","n":{number}}}}}'
    with pytest.raises(EnvelopeError) as error:
        parse_envelope(native.encode())
    assert error.value.code == ErrorCode.INVALID_MESSAGE and "NaN" in error.value.message
    # seed 000, Chat Flow and the choice on "/" read frames with json_object.
    assert json_object(f'{{"type":"message","data":{{"n":{number}}}}}'.encode()) is None
    assert json_object(f'{{"type":"PING","payload":{{"n":{number}}}}}'.encode()) is None
    with pytest.raises(sio.SocketIOError) as refused:
        sio.decode(f'47["chat:message",{{"n":{number}}}]')
    assert refused.value.ack_id == 7 and "JSON" in refused.value.message


def test_chat_flow_request_ids_must_be_finite_numbers():
    assert json_object(b'{"type":"PING","requestId":1e999}') is None
    with pytest.raises(chatflow._Refused):
        chatflow._request_id({"requestId": NAN})


ENCODERS = {
    "native push": lambda v: encode_push("x", {"v": v}),
    "native ack": lambda v: encode_ack("a1", {"v": v}),
    "strict_dumps": lambda v: strict_dumps([v]),
    "event body (fan-out)": lambda v: encode_body({"v": v}),
    "seed 000 frame": lambda v: seed000.message_frame("message", {"v": v}),
    "Chat Flow frame": lambda v: chatflow.encode_frame("PONG", {"v": v}),
    "Socket.IO event": lambda v: sio.encode_event("x", {"v": v}),
    "Socket.IO ack": lambda v: sio.encode_ack(1, {"v": v}),
    "Socket.IO packet": lambda v: sio.encode_packet(sio.EVENT, ["x", v])[0],
}


@pytest.mark.parametrize("name", sorted(ENCODERS))
@pytest.mark.parametrize("value", [NAN, float("inf"), float("-inf")])
def test_no_encoder_writes_a_non_finite_number(name, value):
    with pytest.raises(ValueError):
        ENCODERS[name](value)
    assert ENCODERS[name](1.5)  # finite numbers go out as ever


def test_a_reply_that_cannot_be_encoded_is_a_server_error_not_a_broken_frame():
    """Input never carries a NaN; should a bug put one into a result, that
    request gets SERVER_ERROR and what waited for it is released."""

    class Framing(Responder):
        def reply(self, request_id: str | None, confirmation: str | None, data: Any) -> None:
            encode_ack(request_id or "-", data)  # the native codec's encoding
            super().reply(request_id, confirmation, data)

    released: list[bool] = []
    routes = {
        "bad": Route(lambda d: d, lambda c, r: {"v": NAN}, None),
        "later": Route(
            lambda d: d, lambda c, r: Outcome({"v": NAN}, lambda: released.append(True)), None
        ),
        "good": Route(lambda d: d, lambda c, r: {"v": 1.5}, None),
    }
    responder = Framing()
    dispatcher = Dispatcher(routes)
    for event in ("bad", "later", "good"):
        dispatcher.dispatch(responder, event, event[0], {})
    errors = [c for c in responder.calls if c[0] == "error"]
    assert [(c[1], c[3]) for c in errors] == [
        ("b", ErrorCode.SERVER_ERROR),
        ("l", ErrorCode.SERVER_ERROR),
    ]
    assert ("reply", "g", None, {"v": 1.5}) in responder.calls
    assert released == [True]
