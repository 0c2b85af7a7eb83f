"""A client that stops reading is closed with 4029 instead of growing the
server's memory, and the other members keep getting everything."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct

import pytest_twisted

from tests.wsclient import deferred


class RawReader:
    """A WebSocket client written against the socket directly, so the test
    decides exactly when bytes are read (client libraries keep reading
    into their own queues)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, token: str) -> RawReader:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await deferred(asyncio.get_event_loop().sock_connect(sock, ("127.0.0.1", port)))
        # a small StreamReader limit: once it holds that much, it stops reading the socket
        reader, writer = await deferred(asyncio.open_connection(sock=sock, limit=4096))
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await deferred(reader.readuntil(b"\r\n\r\n"))
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    def send(self, obj: dict) -> None:
        payload = json.dumps(obj).encode()
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        assert len(payload) < 126
        self.writer.write(bytes([0x81, 0x80 | len(payload)]) + mask + masked)

    async def frame(self) -> tuple[int, bytes]:
        head = await deferred(self.reader.readexactly(2))
        length = head[1] & 0x7F
        if length == 126:
            length = struct.unpack("!H", await deferred(self.reader.readexactly(2)))[0]
        elif length == 127:
            length = struct.unpack("!Q", await deferred(self.reader.readexactly(8)))[0]
        return head[0] & 0x0F, await deferred(self.reader.readexactly(length))

    async def close_code(self) -> int:
        """Read everything that was queued for us; return the close code."""
        while True:
            opcode, payload = await self.frame()
            if opcode == 8:
                return struct.unpack("!H", payload[:2])[0]


@pytest_twisted.ensureDeferred
async def test_slow_consumer_is_closed_with_4029_and_others_keep_going(server_factory):
    limit = 256 * 1024
    server = await server_factory(
        max_send_buffer=limit, rate_limit=100000, rate_burst=100000, shutdown_timeout=1
    )
    sender = await server.connect("sender")
    room = (await sender.ok("chat:create", {"name": "r", "type": "public"}))["room"]
    await sender.ok("chat:join", room["id"])
    healthy = await server.connect("healthy")
    await healthy.ok("chat:join", room["id"])

    stalled = await RawReader.open(server.port, server.token("stalled"))
    stalled.send({"type": "chat:join", "id": "j", "data": {"chatId": room["id"]}})
    factory = server.service.factory

    def stalled_connection():
        return next(
            (c for c in factory.connections if c.identity and c.identity.user_id == "stalled"), None
        )

    for _ in range(100):
        conn = stalled_connection()
        if conn is not None and server.service.registry.is_joined(conn, room["id"]):
            break
        await sender.ok("ping")
    conn = stalled_connection()
    assert conn is not None

    content = "x" * 3900
    sent = 0
    peak = 0
    while not conn._detached and sent < 5000:
        for _ in range(50):
            await sender.send("chat:message", {"chatId": room["id"], "content": content})
        sent += 50
        await sender.ok("ping")
        for _ in range(50):
            await healthy.next("chat:message")
        transport = conn.transport
        peak = max(peak, len(transport.dataBuffer) - transport.offset + transport._tempDataLen)
    assert conn._detached, (
        f"the stalled reader was never cut off after {sent} messages (joined={server.service.registry.is_joined(conn, room['id'])}, peak={peak}, backlog={conn._backlog})"
    )
    # Bounded: the buffer never held much more than the limit plus one write burst.
    assert peak < limit + 64 * 1024 + 50 * 4096, peak

    assert await stalled.close_code() == 4029
    ack = await sender.ok("chat:message", {"chatId": room["id"], "content": "after"})
    assert ack["seq"] == sent + 1
    assert (await healthy.next("chat:message"))["data"]["seq"] == sent + 1
    stalled.writer.close()


@pytest_twisted.ensureDeferred
async def test_peer_that_never_answers_pings_is_dropped(server_factory):
    # Autobahn's timers (txaio's batched timer) round deadlines down to
    # whole seconds, so sub-second values are not meaningful here.
    server = await server_factory(ping_interval=2, ping_timeout=1.5)
    silent = await RawReader.open(server.port, server.token("silent"))
    opcode, payload = await silent.frame()
    assert opcode == 1 and json.loads(payload)["type"] == "authenticated"
    opcode, _ = await silent.frame()
    assert opcode == 9, "the server pings an idle peer"
    # no pong: the server gives up and drops (aborts) the TCP connection
    try:
        await deferred(asyncio.wait_for(silent.reader.read(), 3))
    except ConnectionResetError:
        pass
    assert not server.service.factory.connections
    silent.writer.close()


@pytest_twisted.ensureDeferred
async def test_shutdown_sends_the_pushes_of_what_it_acknowledged(server_factory):
    import websockets
    from twisted.internet.defer import ensureDeferred

    server = await server_factory(rate_limit=100000, rate_burst=100000)
    alice = await server.connect("alice")
    room = (await alice.ok("chat:create", {"name": "r", "type": "public"}))["room"]["id"]
    await alice.ok("chat:join", room)
    for i in range(100):
        await alice.send("chat:message", {"chatId": room, "content": str(i)}, f"m{i}")
    await alice.next("ack")  # writes are in flight
    stopping = ensureDeferred(server.service.stopService())
    acked, pushed = set(), set()
    try:
        while True:
            frame = await alice.next_matching(lambda f: True, timeout=10)
            if frame["type"] == "ack":
                acked.add(frame["data"]["id"])
            elif frame["type"] == "chat:message":
                pushed.add(frame["data"]["id"])
    except websockets.ConnectionClosed as e:
        assert e.rcvd is not None and e.rcvd.code == 1001
    await stopping
    assert acked and acked <= pushed, (
        f"{len(acked - pushed)} acknowledged messages were never pushed"
    )
