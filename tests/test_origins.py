"""Origins, framing and DNS rebinding over real loopback sockets: the one
origin policy (``allowed_origins``) on the WebSocket upgrade of every
binding and on the HTTP API (CORS), the console's framing headers, and the
demo-token endpoint's ``Host`` check (docs/security.md)."""

from __future__ import annotations

import json
import socket
import time

import pytest_twisted

from tests.conftest import make_config, start_server
from tests.test_http_limits import RawHttp, error_code, in_thread

WEBSOCKET_PATHS = [
    "/ws",
    "/ws/",
    "/ws/seed000",
    "/ws/chatflow",
    "/",
    "/socket.io/?EIO=4&transport=websocket",
]
FOREIGN = "https://evil.example"
LISTED = "https://app.example"


def _upgrade_status(port: int, path: str, origin: str | None, pieces: bool) -> int:
    """The status of a WebSocket upgrade, sent whole (the front door's fast
    path) or in pieces (the Site's)."""
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        step = 40 if pieces else len(request)
        for i in range(0, len(request), step):
            sock.sendall(request[i : i + step])
            if pieces:
                time.sleep(0.02)
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    return int(head.split(b" ")[1])


@pytest_twisted.ensureDeferred
async def test_every_websocket_binding_checks_the_origin(server_factory):
    server = await server_factory(allowed_origins=LISTED)
    own = f"http://127.0.0.1:{server.port}"
    for path in WEBSOCKET_PATHS:
        for pieces in (False, True):
            for origin, expected in ((FOREIGN, 403), ("null", 403)):
                status = await in_thread(_upgrade_status, server.port, path, origin, pieces)
                assert status == expected, (path, origin, pieces, status)
            for origin in (None, own, LISTED):
                status = await in_thread(_upgrade_status, server.port, path, origin, pieces)
                assert status == 101, (path, origin, pieces, status)


@pytest_twisted.ensureDeferred
async def test_by_default_only_the_servers_own_origin_and_non_browsers_pass(server_factory):
    server = await server_factory()
    assert await in_thread(_upgrade_status, server.port, "/ws", LISTED, False) == 403
    assert await in_thread(_upgrade_status, server.port, "/ws", None, False) == 101
    own = f"http://127.0.0.1:{server.port}"
    assert await in_thread(_upgrade_status, server.port, "/ws", own, False) == 101
    client = await server.connect("alice")  # the websockets library sends no Origin
    assert client.user_id == "alice"


def _api(
    port: int, method: str, path: str, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    client = RawHttp(port)
    try:
        client.send(client.request_head(method, path, {**headers, "Connection": "close"}))
        return client.response()
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_cors_on_the_http_api(server_factory):
    server = await server_factory(allowed_origins=LISTED)
    auth = {"Authorization": f"Bearer {server.token('alice')}"}
    path = "/websocket/me/status"
    status, headers, body = await in_thread(_api, server.port, "GET", path, auth)
    assert status == 200 and "access-control-allow-origin" not in headers  # no Origin: no CORS
    own = f"http://127.0.0.1:{server.port}"
    status, headers, _ = await in_thread(_api, server.port, "GET", path, {**auth, "Origin": own})
    assert status == 200 and "access-control-allow-origin" not in headers
    status, headers, body = await in_thread(
        _api, server.port, "GET", path, {**auth, "Origin": LISTED}
    )
    assert status == 200 and json.loads(body)["userId"] == "alice"
    assert headers["access-control-allow-origin"] == LISTED and headers["vary"] == "Origin"
    status, headers, body = await in_thread(
        _api, server.port, "GET", path, {**auth, "Origin": FOREIGN}
    )
    assert status == 403 and error_code(body) == "FORBIDDEN"
    assert "access-control-allow-origin" not in headers
    preflight = {
        "Origin": LISTED,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    status, headers, _ = await in_thread(_api, server.port, "OPTIONS", "/api/rooms", preflight)
    assert status == 204 and headers["access-control-allow-origin"] == LISTED
    assert "POST" in headers["access-control-allow-methods"]
    assert "DELETE" in headers["access-control-allow-methods"]
    assert headers["access-control-allow-headers"] == "authorization, content-type"
    status, _, _ = await in_thread(
        _api, server.port, "OPTIONS", "/api/rooms", {**preflight, "Origin": FOREIGN}
    )
    assert status == 403


@pytest_twisted.ensureDeferred
async def test_the_console_cannot_be_framed(server):
    status, headers, body = await in_thread(_api, server.port, "GET", "/", {})
    assert status == 200 and b"<html" in body.lower()
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"


def _demo_token(port: int, host: str | None) -> tuple[int, dict]:
    client = RawHttp(port)
    try:
        if host is None:
            head = b"GET /console/demo-token?user=demo-ann HTTP/1.1\r\nConnection: close\r\n\r\n"
        else:
            head = client.request_head(
                "GET", "/console/demo-token?user=demo-ann", {"Connection": "close"}, host=host
            )
        client.send(head)
        status, _, body = client.response()
        return status, json.loads(body)
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_demo_tokens_only_for_a_loopback_host_header(tmp_path):
    # The embedded default: no configured secret, loopback listening.
    config = make_config(tmp_path, f"sqlite:///{tmp_path}/chatd.sqlite3", jwt_secret=None)
    assert config.secret_generated
    server = await start_server(config)
    try:
        port = server.port
        for host in (
            f"127.0.0.1:{port}",
            f"localhost:{port}",
            f"LOCALHOST:{port}",
            f"[::1]:{port}",
        ):
            status, body = await in_thread(_demo_token, port, host)
            assert status == 200 and body["userId"] == "demo-ann", (host, body)
        for host in (
            f"evil.example:{port}",  # a DNS-rebinding page
            f"127.0.0.1.evil.example:{port}",
            f"127.0.0.1:{port + 1}",
            "localhost",  # no port: 80, not this server's
            f"192.0.2.1:{port}",
            None,
        ):
            status, body = await in_thread(_demo_token, port, host)
            assert status == 403 and body["error"]["code"] == "FORBIDDEN", (host, body)
            assert "DNS-rebinding" in body["error"]["message"]
    finally:
        await server.stop()
