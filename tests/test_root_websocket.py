"""A WebSocket on the bare host (``/``) and the per-dialect paths: the
first frame picks the dialect, nothing is pushed before it, a plain GET of
``/`` is still the console, and every way in (the front door's fast path,
the Site for a request split over segments) reaches the same endpoints."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.error
import urllib.request

import pytest_twisted

from tests.wsclient import WsClient, deferred

ROOT = "ws://127.0.0.1:{port}/"


@pytest_twisted.ensureDeferred
async def test_a_native_first_frame_on_root_speaks_native(server):
    url = ROOT.format(port=server.port)
    client = await WsClient.open(url, expect_auth=False)
    server.clients.append(client)
    await client.send("auth", {"token": server.token("alice")})
    hello = await client.next("authenticated")
    assert hello["data"]["userId"] == "alice"
    reply = await client.request("ping", {})
    assert reply["type"] == "ack"


@pytest_twisted.ensureDeferred
async def test_nothing_is_pushed_on_root_before_the_first_frame(server):
    """A token in the URL is checked only once the dialect is known."""
    url = ROOT.format(port=server.port)
    client = await WsClient.open(url, token=server.token("alice"), expect_auth=False)
    server.clients.append(client)
    await client.nothing("authenticated", within=0.5)
    reply = await client.request("ping", {})
    assert reply["type"] == "ack"
    assert (await client.next("authenticated"))["data"]["userId"] == "alice"


@pytest_twisted.ensureDeferred
async def test_a_frame_that_fits_no_dialect_gets_a_native_error_and_changes_nothing(server):
    url = ROOT.format(port=server.port)
    client = await WsClient.open(url, expect_auth=False)
    server.clients.append(client)
    for junk in ("not json", "[1, 2]", '{"no": "type"}', '{"type": 5}'):
        await client.send_raw(junk)
        error = await client.next("error")
        assert error["data"]["code"] == "INVALID_MESSAGE", junk
    await client.send("auth", {"token": server.token("bob")})
    assert (await client.next("authenticated"))["data"]["userId"] == "bob"


@pytest_twisted.ensureDeferred
async def test_a_root_connection_that_never_speaks_is_closed_by_the_auth_timeout(server_factory):
    server = await server_factory(auth_timeout=0.5)
    client = await WsClient.open(ROOT.format(port=server.port), expect_auth=False)
    server.clients.append(client)
    assert await client.closed(timeout=5) == 4001


@pytest_twisted.ensureDeferred
async def test_a_plain_get_of_root_is_still_the_console(server):
    def get() -> tuple[int, str]:
        with urllib.request.urlopen(f"{server.http}/", timeout=5) as r:
            return r.status, r.headers["content-type"]

    status, content_type = await deferred(asyncio.to_thread(get))
    assert status == 200 and content_type.startswith("text/html")


@pytest_twisted.ensureDeferred
async def test_ws_with_a_slash_is_native_and_unknown_paths_are_404(server):
    client = await WsClient.open(f"ws://127.0.0.1:{server.port}/ws/", token=server.token("carol"))
    server.clients.append(client)
    assert client.user_id == "carol"

    def status(path: str) -> int:
        request = urllib.request.Request(
            f"{server.http}{path}",
            headers={
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Version": "13",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    assert await deferred(asyncio.to_thread(status, "/ws/no-such-dialect")) == 404


def _upgrade_in_pieces(port: int, path: str, pieces: int) -> bytes:
    """A raw upgrade sent a few bytes at a time (so it is the Site's, not
    the front door's fast path); returns the response head."""
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        step = max(1, len(request) // pieces)
        for i in range(0, len(request), step):
            s.sendall(request[i : i + step])
            time.sleep(0.02)  # separate segments: the server reads them one by one
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
        return head


@pytest_twisted.ensureDeferred
async def test_an_upgrade_split_over_segments_reaches_the_same_endpoints(server):
    for path in ("/", "/ws", "/ws/seed000", "/ws/chatflow"):
        head = await deferred(asyncio.to_thread(_upgrade_in_pieces, server.port, path, 4))
        assert head.startswith(b"HTTP/1.1 101"), (path, head[:80])


@pytest_twisted.ensureDeferred
async def test_health_still_answers_through_the_front_door(server):
    def get() -> dict:
        with urllib.request.urlopen(f"{server.http}/healthz", timeout=5) as r:
            return json.loads(r.read())

    assert (await deferred(asyncio.to_thread(get)))["status"] == "ok"


@pytest_twisted.ensureDeferred
async def test_each_dialect_on_root_is_counted_under_its_own_transport(server):
    """The per-transport connection metric reads each session's dialect."""
    url = ROOT.format(port=server.port)
    seed = await WsClient.open(url, expect_auth=False)
    flow = await WsClient.open(url, expect_auth=False)
    server.clients += [seed, flow]
    await seed.send_raw(json.dumps({"type": "authenticate", "token": server.token("sam")}))
    await flow.send_raw(
        json.dumps({"type": "AUTHENTICATE", "payload": {"token": server.token("flo")}})
    )
    assert (await seed.next("authenticated"))["data"]["userId"] == "sam"
    assert (await flow.next("AUTH_SUCCESS"))["payload"]["userId"] == "flo"
    names = sorted(session.transport_name for session in server.service.open_sessions)
    assert names == ["chatflow", "seed000"]


@pytest_twisted.ensureDeferred
async def test_connections_are_accepted_without_nagle(server):
    """TCP_NODELAY on every accepted connection: a small frame written
    right after another must not wait for the client's delayed ACK."""
    client = await server.connect("alice")
    assert client.user_id == "alice"
    (session,) = list(server.service.open_sessions)
    transport = session.transport
    while not hasattr(transport, "getTcpNoDelay"):
        transport = transport.transport
    assert transport.getTcpNoDelay() is True
