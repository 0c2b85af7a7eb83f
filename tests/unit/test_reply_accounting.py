"""Replies count against ``max_send_buffer`` like fan-out does, and a
session far behind stops reading its client's frames.

Two transports: ``UnreadSocket`` keeps Twisted's own write buffer (it is a
``FileDescriptor``, the base of the TCP transport, so the binding reads the
buffer exactly and the producer calls are Twisted's), with a peer that
reads only when the test says so; ``StringTransport`` hides its buffer."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.abstract import FileDescriptor
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactor

from chatd.bindings.websocket import ChatdServerProtocol, ChatdWebSocketFactory
from chatd.session.session import CLOSE_SLOW_CONSUMER
from tests.unit.session_fakes import Harness, token
from tests.unit.test_ws_binding import NO_TIMERS, Client, client_frame, close_code, server_frames

PEER = IPv4Address("TCP", "127.0.0.1", 40000)


class UnreadSocket(FileDescriptor):
    """Twisted's write buffer over a peer that takes nothing until
    ``drain``: a client that stopped reading, then starts again."""

    def __init__(self, reactor: MemoryReactor) -> None:
        super().__init__(reactor)
        self.connected = 1
        self.received = bytearray()
        self._taking = 0
        self.startReading()

    def writeSomeData(self, data: bytes) -> int:
        taken = min(len(data), self._taking)
        self.received += data[:taken]
        self._taking -= taken
        return taken

    def drain(self) -> None:
        """The peer reads everything waiting (Twisted resumes its producer)."""
        while self.dataBuffer[self.offset :] or self._tempDataLen:
            self._taking = 1 << 30
            self.doWrite()

    def buffered(self) -> int:
        return len(self.dataBuffer) - self.offset + self._tempDataLen

    def getPeer(self) -> IPv4Address:
        return PEER

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 8080)

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def abortConnection(self) -> None:
        self.connected = 0


class StalledClient:
    """A /ws client over an ``UnreadSocket``."""

    def __init__(self, harness: Harness) -> None:
        self.reactor = MemoryReactor()
        self.transport = UnreadSocket(self.reactor)
        factory = ChatdWebSocketFactory(harness.config, harness.hub)
        self.protocol: ChatdServerProtocol = factory.buildProtocol(PEER)
        self.protocol.makeConnection(self.transport)
        self.protocol.dataReceived(
            (
                f"GET /ws?token={token('alice', harness.config)} HTTP/1.1\r\nHost: localhost\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        assert self.protocol.session is not None

    def echo(self, request_id: str, size: int) -> None:
        payload = {"type": "echo", "id": request_id, "data": {"x": "y" * size}}
        self.protocol.dataReceived(client_frame(json.dumps(payload).encode()))

    @property
    def reading(self) -> bool:
        return self.transport in self.reactor.getReaders()

    def messages(self) -> list[dict[str, Any]]:
        _, _, frames = bytes(self.transport.received).partition(b"\r\n\r\n")
        return [json.loads(p) for opcode, p in server_frames(frames) if opcode == 1]

    def close_code(self) -> int | None:
        _, _, frames = bytes(self.transport.received).partition(b"\r\n\r\n")
        return close_code(server_frames(frames))


def harness(max_send_buffer: int) -> Harness:
    return Harness(max_send_buffer=max_send_buffer, rate_burst=1000, **NO_TIMERS)


def test_a_reply_that_would_overflow_an_idle_buffer_closes_4029_unwritten() -> None:
    # The transport keeps up (nothing paused it): before the fix the reply
    # went into the buffer whole, whatever max_send_buffer said.
    client = StalledClient(harness(max_send_buffer=20_000))
    client.echo("big", 30_000)
    assert client.transport.buffered() < 20_000, "the reply was not buffered"
    client.transport.drain()
    assert client.close_code() == CLOSE_SLOW_CONSUMER
    assert not [m for m in client.messages() if m.get("id") == "big"]


def test_replies_are_held_within_the_bound_until_the_one_that_would_pass_it() -> None:
    limit = 100_000
    client = StalledClient(harness(max_send_buffer=limit))
    answered = 0
    for n in range(20):
        client.echo(f"e{n}", 9_000)
        if client.protocol.session is None or client.protocol.session._detached:
            break
        answered = n + 1
        assert client.transport.buffered() <= limit
    assert 0 < answered < 20
    assert client.transport.buffered() <= limit
    client.transport.drain()
    replies = [m["id"] for m in client.messages() if m["type"] == "ack"]
    assert replies == [f"e{n}" for n in range(answered)], "every reply written before the close"
    assert client.close_code() == CLOSE_SLOW_CONSUMER


def test_reading_pauses_past_half_the_bound_and_resumes_once_drained() -> None:
    limit = 200_000  # half of it above Twisted's high-water mark (64 KiB)
    client = StalledClient(harness(max_send_buffer=limit))
    sent = 0
    while client.reading:
        assert client.transport.buffered() <= limit // 2 + 10_000
        client.echo(f"e{sent}", 9_000)
        sent += 1
    assert client.transport.buffered() > limit // 2
    session = client.protocol.session
    assert session is not None and not session._detached, "held, not closed"
    client.transport.drain()
    assert client.reading, "the client reads again: so does the server"
    assert [m["id"] for m in client.messages() if m["type"] == "ack"] == [
        f"e{n}" for n in range(sent)
    ]
    client.echo("after", 10)
    client.transport.drain()
    assert client.messages()[-1]["id"] == "after"


def test_a_slow_consumer_closed_while_reading_is_paused_reads_again_once_drained() -> None:
    # So that a client that catches up can still complete the closing handshake.
    client = StalledClient(harness(max_send_buffer=100_000))
    for n in range(30):
        client.echo(f"e{n}", 9_000)
    session = client.protocol.session
    assert session is not None and session._detached
    assert not client.reading
    client.transport.drain()
    assert client.close_code() == CLOSE_SLOW_CONSUMER
    assert client.reading


def test_a_hidden_buffer_counts_a_reply_alone_against_the_bound() -> None:
    # StringTransport: the binding cannot see the buffer (buffered_bytes None).
    h = harness(max_send_buffer=2_000)
    client = Client(h, f"/ws?token={token('alice', h.config)}")
    client.frames()
    client.send({"type": "echo", "id": "small", "data": {"x": "y" * 1_000}})
    assert [m["id"] for m in client.messages()] == ["small"]
    client.send({"type": "echo", "id": "big", "data": {"x": "y" * 3_000}})
    assert close_code(client.frames()) == CLOSE_SLOW_CONSUMER


def test_a_hidden_buffer_pauses_reading_past_half_the_backlog_since_the_pause() -> None:
    h = harness(max_send_buffer=10_000)
    client = Client(h, f"/ws?token={token('alice', h.config)}")
    client.frames()
    session = client.protocol.session
    assert session is not None
    session.pauseProducing()
    client.send({"type": "echo", "id": "a", "data": {"x": "y" * 3_000}})
    assert client.transport.producerState == "producing"
    client.send({"type": "echo", "id": "b", "data": {"x": "y" * 3_000}})
    assert client.transport.producerState == "paused", "past half of 10,000 since the pause"
    session.resumeProducing()
    assert client.transport.producerState == "producing"
    assert [m["id"] for m in client.messages()] == ["a", "b"]


def test_a_transport_gone_while_reading_is_paused_is_not_resumed() -> None:
    h = harness(max_send_buffer=10_000)
    client = Client(h, f"/ws?token={token('alice', h.config)}")
    client.frames()
    session = client.protocol.session
    assert session is not None
    session.pauseProducing()
    for n in range(3):
        client.send({"type": "echo", "id": f"e{n}", "data": {"x": "y" * 2_000}})
    assert client.transport.producerState == "paused"
    session.stopProducing()
    assert client.transport.producerState == "paused"
