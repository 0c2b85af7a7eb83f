"""The Engine.IO and Socket.IO packet codecs: what real clients send, and
malformed input, each refused with an error that says what is wrong."""

from __future__ import annotations

import json

import pytest

from chatd.bindings.socketio import eio, sio
from chatd.bindings.socketio.transports import frame_event_polling, frame_event_websocket
from chatd.domain.models import Published

# -- Engine.IO -----------------------------------------------------------------------


def test_engineio_text_packets():
    assert eio.decode_text("4hello") == eio.Packet("4", "hello")
    assert eio.decode_text("2probe") == eio.Packet("2", "probe")
    assert eio.decode_text("3") == eio.Packet("3", "")
    assert eio.decode_text("6").type == eio.NOOP


def test_engineio_payload_split_on_record_separator_with_binary():
    packets = eio.decode_payload(b"4hello\x1ebAQIDBA==\x1e3")
    assert packets == [
        eio.Packet("4", "hello"),
        eio.Packet("4", b"\x01\x02\x03\x04"),
        eio.Packet("3", ""),
    ]
    assert packets[1].is_binary and not packets[0].is_binary


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty packet"),
        (b"4a\x1e\x1e4b", "empty packet"),
        (b"9x", "unknown packet type '9'"),
        (b"abc", "unknown packet type 'a'"),
        (b"\xff\xfe", "not UTF-8"),
        (b"b!!!", "not valid base64"),
    ],
)
def test_engineio_malformed_payloads(body, message):
    with pytest.raises(eio.EngineIOError, match=message):
        eio.decode_payload(body)


def test_engineio_open_packet_is_milliseconds():
    packet = eio.open_packet("abc", ["websocket"], 25.0, 20.0, 100000)
    assert packet.startswith(b"0")
    assert json.loads(packet[1:]) == {
        "sid": "abc",
        "upgrades": ["websocket"],
        "pingInterval": 25000,
        "pingTimeout": 20000,
        "maxPayload": 100000,
    }


def test_engineio_error_body():
    assert json.loads(eio.error_body(1, "Session ID unknown")) == {
        "code": 1,
        "message": "Session ID unknown",
    }


# -- Socket.IO -----------------------------------------------------------------------


def test_socketio_connect_with_and_without_auth():
    assert sio.decode("0") == sio.SioPacket(sio.CONNECT)
    assert sio.decode('0{"token":"t"}').data == {"token": "t"}
    custom = sio.decode('0/admin,{"token":"t"}')
    assert (custom.namespace, custom.data) == ("/admin", {"token": "t"})
    assert sio.decode("0/admin").namespace == "/admin"


def test_socketio_events_and_acks():
    event = sio.decode('2["chat:join","r1"]')
    assert (event.type, event.event, event.ack_id, event.data) == (
        sio.EVENT,
        "chat:join",
        None,
        ["chat:join", "r1"],
    )
    with_ack = sio.decode('213["ping"]')
    assert (with_ack.ack_id, with_ack.data) == (13, ["ping"])
    namespaced = sio.decode('2/admin,7["x",{}]')
    assert (namespaced.namespace, namespaced.ack_id) == ("/admin", 7)
    ack = sio.decode('35[{"ok":true}]')
    assert (ack.type, ack.ack_id, ack.data) == (sio.ACK, 5, [{"ok": True}])
    assert sio.decode("1").type == sio.DISCONNECT


@pytest.mark.parametrize(
    ("text", "message", "ack_id"),
    [
        ("", "unknown packet type", None),
        ("9", "unknown packet type", None),
        ("x[]", "unknown packet type", None),
        ("٣[]", "unknown packet type", None),  # a digit, but not an ASCII one
        ("2", "non-empty array", None),
        ('2{"a":1}', "non-empty array", None),
        ("2[]", "non-empty array", None),
        ("21[1,2]", "first element must be its name", 1),
        ('2["' + "x" * 65 + '"]', "longer than 64", None),
        ("23[not json", "not valid JSON", 3),
        ("2" + "[" * 100000, "nested too deeply", None),
        ("2" + "1" * 16 + '["x"]', "more than 15 digits", None),
        ("3[1]", "ACK without an id", None),
        ("31{}", "ACK data must be an array", 1),
        ("0[1]", "CONNECT data must be an object", None),
        ('1{"x":1}', "DISCONNECT carries no data", None),
        ('5["x"]', "attachment count", None),
        ('50-["x"]', "1 to 64 attachments", None),
        ("4[]", "CONNECT_ERROR data must be an object", None),
    ],
)
def test_socketio_malformed_packets(text, message, ack_id):
    with pytest.raises(sio.SocketIOError, match=message) as caught:
        sio.decode(text)
    assert caught.value.ack_id == ack_id


def test_socketio_binary_event_is_reassembled():
    packet = sio.decode(
        '52-4["upload",{"a":{"_placeholder":true,"num":0},"b":[{"_placeholder":true,"num":1}]}]'
    )
    assert (packet.type, packet.attachments, packet.ack_id, packet.event) == (
        sio.BINARY_EVENT,
        2,
        4,
        "upload",
    )
    assembler = sio.BinaryAssembler(packet)
    assert assembler.add(b"\x01") is None
    done = assembler.add(b"\x02")
    assert done == sio.SioPacket(sio.EVENT, "/", 4, ["upload", {"a": b"\x01", "b": [b"\x02"]}])


def test_socketio_binary_placeholder_out_of_range():
    packet = sio.decode('51-["x",{"_placeholder":true,"num":3}]')
    with pytest.raises(sio.SocketIOError, match="names no attachment"):
        sio.BinaryAssembler(packet).add(b"")


def test_socketio_encoders():
    assert sio.encode_connect("c_1") == b'0{"sid":"c_1"}'
    assert sio.encode_connect_error("no", {"code": "UNAUTHORIZED"}) == (
        b'4{"message":"no","data":{"code":"UNAUTHORIZED"}}'
    )
    assert sio.encode_connect_error("Invalid namespace", None, "/admin") == (
        b'4/admin,{"message":"Invalid namespace"}'
    )
    assert sio.encode_event("pong", {"t": 1}) == b'2["pong",{"t":1}]'
    assert sio.encode_ack(12, {"ok": 1}) == b'312[{"ok":1}]'
    assert sio.wrap_event("chat:message", b'{"seq":1}') == b'2["chat:message",{"seq":1}]'
    # What we encode, we decode.
    assert sio.decode(sio.encode_event("x", [1, "2"]).decode()).data == ["x", [1, "2"]]


def test_fanout_framers_wrap_the_body_encoded_once():
    event = Published("chat:message", b'{"content":"hi"}')
    assert frame_event_polling(event) == b'42["chat:message",{"content":"hi"}]\x1e'
    frame = frame_event_websocket(event)
    payload = b'42["chat:message",{"content":"hi"}]'
    assert frame == bytes([0x81, len(payload)]) + payload
