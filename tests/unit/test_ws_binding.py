"""The native /ws binding (chatd/bindings/websocket.py) driven over a
``StringTransport``: real handshake bytes in, real frames out; Autobahn's
timers are off so nothing touches the global reactor."""

from __future__ import annotations

import json
import os
import struct
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from chatd.bindings.websocket import ChatdServerProtocol, ChatdWebSocketFactory, frame_event
from chatd.domain.models import Published
from chatd.protocol.envelope import wrap_push
from tests.unit.session_fakes import Harness, token

NO_TIMERS = {"open_handshake_timeout": 0, "close_handshake_timeout": 0, "ping_interval": 0}


def client_frame(payload: bytes, opcode: int = 1) -> bytes:
    """A masked client-to-server frame."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    else:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    return header + mask + masked


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The unmasked frames in ``data`` (after the handshake response)."""
    frames = []
    while data:
        opcode, length = data[0] & 0x0F, data[1] & 0x7F
        offset = 2
        if length == 126:
            (length,) = struct.unpack("!H", data[2:4])
            offset = 4
        elif length == 127:
            (length,) = struct.unpack("!Q", data[2:10])
            offset = 10
        frames.append((opcode, data[offset : offset + length]))
        data = data[offset + length :]
    return frames


class LenientTransport(StringTransport):
    """Like Twisted's TCP transport, unregistering no producer is a no-op
    (``StringTransport`` raises)."""

    def unregisterProducer(self) -> None:
        if self.producer is not None:
            super().unregisterProducer()


class Client:
    """One connection to a binding over a StringTransport."""

    def __init__(self, harness: Harness, path: str = "/ws", headers: dict[str, str] | None = None):
        self.factory = ChatdWebSocketFactory(harness.config, harness.hub)
        self.protocol: ChatdServerProtocol = self.factory.buildProtocol(
            IPv4Address("TCP", "127.0.0.1", 40000)
        )
        self.transport = LenientTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.protocol.makeConnection(self.transport)
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.protocol.dataReceived(
            (
                f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
            ).encode()
        )
        response, _, rest = self.transport.value().partition(b"\r\n\r\n")
        assert response.startswith(b"HTTP/1.1 101"), response
        self.transport.clear()
        self.pending = rest

    def send(self, obj: Any) -> None:
        self.protocol.dataReceived(client_frame(json.dumps(obj).encode()))

    def frames(self) -> list[tuple[int, bytes]]:
        data, self.pending = self.pending + self.transport.value(), b""
        self.transport.clear()
        return server_frames(data)

    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(payload) for opcode, payload in self.frames() if opcode == 1]


def close_code(frames: list[tuple[int, bytes]]) -> int | None:
    for opcode, payload in frames:
        if opcode == 8:
            return int(struct.unpack("!H", payload[:2])[0])
    return None


def test_auth_frame_then_a_request_gets_native_replies() -> None:
    h = Harness(**NO_TIMERS)
    client = Client(h)
    assert client.messages() == []
    client.send({"type": "auth", "id": "a1", "data": {"token": token("alice", h.config)}})
    pushed, acked = client.messages()
    session = client.protocol.session
    assert session is not None
    assert pushed == {
        "type": "authenticated",
        "data": {"userId": "alice", "connectionId": session.connection_id},
    }
    assert acked["type"] == "ack" and acked["id"] == "a1"
    client.send({"type": "echo", "id": "e1", "data": {"x": 1}})
    client.send({"type": "echo", "data": {"x": 2}})
    assert client.messages() == [
        {"type": "ack", "id": "e1", "data": {"echo": {"x": 1}}},
        {"type": "echoed", "data": {"echo": {"x": 2}}},
    ]


def test_reply_bytes_are_exactly_one_native_text_frame() -> None:
    h = Harness(**NO_TIMERS)
    client = Client(h, f"/ws?token={token('alice', h.config)}")
    client.frames()
    client.send({"type": "ping", "id": "p1"})
    raw = client.transport.value()
    body = b'{"type":"ack","id":"p1","data":{"pong":true}}'
    assert raw == bytes([0x81, len(body)]) + body


def test_token_in_the_query_or_the_bearer_header() -> None:
    h = Harness(**NO_TIMERS)
    by_query = Client(h, f"/ws?token={token('q', h.config)}")
    by_header = Client(h, headers={"Authorization": f"Bearer {token('b', h.config)}"})
    assert by_query.messages()[0]["data"]["userId"] == "q"
    assert by_header.messages()[0]["data"]["userId"] == "b"
    assert [s.identity.user_id for s in h.lifecycle.opened_sessions] == ["q", "b"]


def test_other_authorization_schemes_are_refused_with_4001() -> None:
    h = Harness(**NO_TIMERS)
    client = Client(h, headers={"Authorization": f"Basic {token('b', h.config)}"})
    frames = client.frames()
    [error] = [json.loads(p) for op, p in frames if op == 1]
    assert error["data"]["code"] == "UNAUTHORIZED"
    assert close_code(frames) == 4001


def test_malformed_frames_are_answered_and_the_connection_stays() -> None:
    h = Harness(**NO_TIMERS)
    client = Client(h, f"/ws?token={token('alice', h.config)}")
    client.frames()
    client.protocol.dataReceived(client_frame(b"{not json"))
    client.send({"type": "echo", "id": 7})
    client.send({"id": "r2", "data": {}})
    first, second, third = client.messages()
    assert first["data"] == {"code": "INVALID_MESSAGE", "message": "frame is not valid JSON"}
    assert "id" not in second and second["data"]["code"] == "INVALID_MESSAGE"
    assert third["id"] == "r2"
    assert client.protocol.state == client.protocol.STATE_OPEN


def test_driving_on_message_directly() -> None:
    h = Harness(**NO_TIMERS)
    client = Client(h, f"/ws?token={token('alice', h.config)}")
    client.frames()
    client.protocol.onMessage(b'{"type":"nope","id":"n1"}', False)
    [error] = client.messages()
    assert error["id"] == "n1" and error["data"]["code"] == "UNKNOWN_EVENT"


def test_fan_out_frames_go_through_send_frame_unchanged() -> None:
    h = Harness(**NO_TIMERS)
    client = Client(h, f"/ws?token={token('alice', h.config)}")
    client.frames()
    session = client.protocol.session
    assert session is not None
    frame = frame_event(Published("chat:message", b'{"seq":1}'))
    assert session.send_frame == client.transport.write, "no chatd frame per recipient"
    session.send_frame(frame)
    assert client.messages() == [json.loads(wrap_push("chat:message", b'{"seq":1}'))]


def test_the_session_is_the_transports_producer_and_pauses_without_a_buffer() -> None:
    h = Harness(max_send_buffer=100, **NO_TIMERS)
    client = Client(h, f"/ws?token={token('alice', h.config)}")
    client.frames()
    session = client.protocol.session
    assert client.transport.producer is session and client.transport.streaming
    session.pauseProducing()  # a StringTransport hides its buffer: count since the pause
    session.send_frame(frame_event(Published("x", b'"' + b"y" * 200 + b'"')))
    assert close_code(client.frames()) == 4029
    assert h.lifecycle.closed_sessions == [session]


def test_close_from_the_server_detaches_then_sends_the_close_frame() -> None:
    h = Harness(**NO_TIMERS)
    client = Client(h, f"/ws?token={token('alice', h.config)}")
    client.frames()
    session = client.protocol.session
    assert session is not None
    session.disconnect(1001, "server shutting down")
    assert close_code(client.frames()) == 1001, "1001 is allowed, unlike sendClose"
    session.send_event("late", {})
    assert client.frames() == []
    client.protocol.connectionLost(Failure(ConnectionDone()))
    assert len(h.hub) == 0


def test_client_close_leaves_the_domain() -> None:
    h = Harness(**NO_TIMERS)
    client = Client(h, f"/ws?token={token('alice', h.config)}")
    client.frames()
    session = client.protocol.session
    client.protocol.dataReceived(client_frame(struct.pack("!H", 1000), opcode=8))
    assert h.lifecycle.closed_sessions == [session]
    assert close_code(client.frames()) == 1000
