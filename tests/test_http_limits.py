"""The HTTP front over real loopback sockets: bodies judged before they are
read, the header deadline, and the cap on open HTTP connections per
address (docs/security.md, "The HTTP front").

The client is a plain blocking socket in a thread, so a test decides
exactly which bytes are sent and when: "answered before the body" means
the answer arrived while the client had sent the headers only."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import pytest_twisted

from tests.wsclient import deferred

API_KEY = "backend-api-key-0123456789"
MAX_BODY = 1 << 20
HUGE = 100 * MAX_BODY


class RawHttp:
    """One HTTP/1.1 connection, byte by byte."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request_head(
        self, method: str, path: str, headers: dict[str, str] | None = None, host: str | None = None
    ) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host or f'127.0.0.1:{self.port}'}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buffer += chunk
        return bool(chunk)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        """The next response: status, headers (lower-cased names), body
        (by Content-Length, or up to the close)."""
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                raise ConnectionError(f"closed before a response: {self.buffer!r}")
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if status < 200 or status in (204, 304):
            body = b""
        elif "content-length" in headers:
            length = int(headers["content-length"])
            while len(self.buffer) < length and self._fill():
                pass
            body, self.buffer = self.buffer[:length], self.buffer[length:]
        elif headers.get("transfer-encoding") == "chunked":
            body = self._chunked()
        else:
            while self._fill():
                pass
            body, self.buffer = self.buffer, b""
        return status, headers, body

    def _chunked(self) -> bytes:
        body = b""
        while True:
            while b"\r\n" not in self.buffer:
                self._fill()
            size_line, _, self.buffer = self.buffer.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(self.buffer) < size + 2:
                self._fill()
            body += self.buffer[:size]
            self.buffer = self.buffer[size + 2 :]
            if size == 0:
                return body

    def closed(self, within: float = 5.0) -> bool:
        """True once the server closed the connection (EOF or reset)."""
        self.sock.settimeout(within)
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


def in_thread(function: Any, *args: Any) -> Any:
    return deferred(asyncio.to_thread(function, *args))


def error_code(body: bytes) -> str:
    return json.loads(body)["error"]["code"]


def _answered_from_headers(
    port: int, method: str, path: str, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes, bool]:
    """Send only the headers; the answer, and whether the connection then
    closed."""
    client = RawHttp(port)
    try:
        client.send(client.request_head(method, path, headers))
        status, answer_headers, body = client.response()
        return status, answer_headers, body, client.closed()
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_a_huge_body_without_credentials_is_refused_before_it_is_sent(server_factory):
    server = await server_factory(api_key=API_KEY)
    headers = {"Content-Type": "application/json", "Content-Length": str(HUGE)}
    status, answer, body, closed = await in_thread(
        _answered_from_headers, server.port, "POST", "/api/rooms", headers
    )
    assert status == 401 and error_code(body) == "UNAUTHORIZED"
    assert answer["connection"] == "close" and closed
    # A client that waits for "100 Continue" gets the refusal instead.
    status, _, body, closed = await in_thread(
        _answered_from_headers,
        server.port,
        "POST",
        "/api/rooms",
        {**headers, "Expect": "100-continue"},
    )
    assert status == 401 and closed


@pytest_twisted.ensureDeferred
async def test_method_path_credentials_and_length_are_checked_from_the_headers(server_factory):
    server = await server_factory(api_key=API_KEY)
    plain = server.token("plain")
    length = {"Content-Type": "application/json", "Content-Length": str(HUGE)}
    cases = [
        ("POST", "/api/rooms", {"Authorization": f"Bearer {API_KEY}"}, 413, "PAYLOAD_TOO_LARGE"),
        ("POST", "/api/rooms", {"Authorization": "Bearer not-a-token"}, 401, "UNAUTHORIZED"),
        ("POST", "/api/rooms", {"Authorization": f"Bearer {plain}"}, 403, "FORBIDDEN"),
        ("POST", "/api/no-such-thing", {"Authorization": f"Bearer {API_KEY}"}, 404, "NOT_FOUND"),
        (
            "POST",
            "/websocket/users/connected",
            {"Authorization": f"Bearer {API_KEY}"},
            405,
            "METHOD_NOT_ALLOWED",
        ),
        ("POST", "/healthz", {}, 405, None),
        ("PUT", "/no/such/path", {}, 404, None),
        ("POST", "/", {}, 405, None),
    ]
    for method, path, credentials, expected, code in cases:
        status, _, body, closed = await in_thread(
            _answered_from_headers, server.port, method, path, {**length, **credentials}
        )
        assert status == expected, (method, path, status, body[:200])
        assert code is None or error_code(body) == code, (path, body)
        assert closed, (method, path)
    # A length of more digits than Python's int() takes (4,300) is just too
    # long: 413, not a dropped connection and a traceback.
    for digits in (20, 5000):
        status, _, body, closed = await in_thread(
            _answered_from_headers,
            server.port,
            "POST",
            "/api/rooms",
            {"Content-Length": "9" * digits, "Authorization": f"Bearer {API_KEY}"},
        )
        assert (status, error_code(body), closed) == (413, "PAYLOAD_TOO_LARGE", True), digits
    # /healthz answers a chunked POST (the 200 MiB case) from its headers too.
    status, _, _, closed = await in_thread(
        _answered_from_headers, server.port, "POST", "/healthz", {"Transfer-Encoding": "chunked"}
    )
    assert status == 405 and closed
    # The server goes on.
    status, _, body, _ = await in_thread(
        _answered_from_headers, server.port, "GET", "/healthz", {"Connection": "close"}
    )
    assert status == 200 and json.loads(body)["status"] == "ok"


def _chunked_over(port: int, path: str, headers: dict[str, str], total: int) -> tuple[int, bytes]:
    """``total`` bytes of a chunked body, in 64 KiB chunks, and never the
    last chunk: only a server that cuts the body at its limit answers."""
    client = RawHttp(port)
    try:
        client.send(client.request_head("POST", path, {**headers, "Transfer-Encoding": "chunked"}))
        chunk = b"x" * 65536
        sent = 0
        while sent < total:
            client.send(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            sent += len(chunk)
        status, _, body = client.response()
        assert client.closed()
        return status, body
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_a_chunked_body_is_cut_at_the_limit_with_413(server_factory):
    server = await server_factory(api_key=API_KEY)
    status, body = await in_thread(
        _chunked_over,
        server.port,
        "/api/rooms",
        {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        MAX_BODY + 65536,
    )
    assert status == 413 and error_code(body) == "PAYLOAD_TOO_LARGE"


def _post(port: int, path: str, headers: dict[str, str], body: bytes, chunked: bool) -> Any:
    client = RawHttp(port)
    try:
        if chunked:
            client.send(
                client.request_head("POST", path, {**headers, "Transfer-Encoding": "chunked"})
            )
            client.send(b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
            return client.response()
        headers = {**headers, "Content-Length": str(len(body))}
        if headers.get("Expect") == "100-continue":
            client.send(client.request_head("POST", path, headers))
            interim = client.response()
            assert interim[0] == 100, interim
            client.send(body)
        else:
            client.send(client.request_head("POST", path, headers) + body)
        return client.response()
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_bodies_within_the_limit_are_read_as_before(server_factory):
    server = await server_factory(api_key=API_KEY)
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    for index, (chunked, extra) in enumerate(
        [(True, {}), (False, {}), (False, {"Expect": "100-continue"})]
    ):
        room = json.dumps({"id": f"room-{index}", "name": "r", "type": "public"}).encode()
        status, _, body = await in_thread(
            _post, server.port, "/api/rooms", {**headers, **extra}, room, chunked
        )
        assert status == 200, (chunked, extra, body)
        assert json.loads(body)["room"]["id"] == f"room-{index}"
    # Just under the limit is still a body the API reads (and refuses as JSON).
    status, _, body = await in_thread(
        _post, server.port, "/api/rooms", headers, b" " * (MAX_BODY - 1) + b"{", True
    )
    assert status == 400 and error_code(body) == "INVALID_MESSAGE"


def _polling_session(port: int) -> str:
    client = RawHttp(port)
    try:
        client.send(client.request_head("GET", "/socket.io/?EIO=4&transport=polling"))
        status, _, body = client.response()
        assert status == 200, body
        return str(json.loads(body[1:])["sid"])
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_socketio_polling_keeps_its_own_body_limit(server_factory):
    server = await server_factory(socketio_max_payload=1000)
    sid = await in_thread(_polling_session, server.port)
    path = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
    status, _, body = await in_thread(_post, server.port, path, {}, b"40", False)
    assert (status, body) == (200, b"ok")
    status, body = await in_thread(_chunked_over, server.port, path, {}, 65536)
    assert status == 413 and b"Payload too large" in body
    sid = await in_thread(_polling_session, server.port)
    path = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
    status, _, body, closed = await in_thread(
        _answered_from_headers, server.port, "POST", path, {"Content-Length": str(HUGE)}
    )
    assert status == 413 and closed


# -- the header deadline -----------------------------------------------------------------


def _trickle(port: int, every: float, for_at_most: float) -> tuple[bytes, float]:
    """A request line, then a header line every ``every`` seconds, never the
    end of the headers; what the server sent, and how long it took it to
    close."""
    client = RawHttp(port)
    started = time.monotonic()
    try:
        client.send(b"GET /healthz HTTP/1.1\r\n")
        client.sock.settimeout(every)
        line = 0
        while time.monotonic() - started < for_at_most:
            try:
                client.send(b"X-Trickle-%d: 1\r\n" % line)
                line += 1
                chunk = client.sock.recv(65536)
            except TimeoutError:
                continue
            except (ConnectionResetError, BrokenPipeError):
                break
            if not chunk:
                break
            client.buffer += chunk
        return client.buffer, time.monotonic() - started
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_a_trickling_client_is_closed_at_the_header_deadline(server_factory):
    server = await server_factory(http_header_timeout=0.5)
    answer, seconds = await in_thread(_trickle, server.port, 0.1, 10.0)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert error_code(answer.partition(b"\r\n\r\n")[2]) == "REQUEST_TIMEOUT"
    assert seconds < 9.0  # closed by the deadline, not by the test giving up


def _idle_after_one_request(port: int) -> tuple[int, bool, bytes]:
    client = RawHttp(port)
    try:
        client.send(client.request_head("GET", "/healthz"))
        status, _, _ = client.response()
        closed = client.closed(within=8.0)
        return status, closed, client.buffer
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_an_idle_kept_alive_connection_is_closed_without_an_answer(server_factory):
    server = await server_factory(http_header_timeout=0.5)
    status, closed, extra = await in_thread(_idle_after_one_request, server.port)
    assert status == 200 and closed and extra == b""


# -- open HTTP connections per address -----------------------------------------------------


def _hold(port: int) -> RawHttp:
    """An HTTP connection whose request is not finished (it counts)."""
    client = RawHttp(port)
    client.send(b"GET /healthz HTTP/1.1\r\n")
    return client


def _upgrade_through_the_site(port: int) -> socket.socket:
    """A WebSocket upgrade sent in pieces (the Site's, not the front
    door's fast path), left open."""
    request = (
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(0, len(request), 40):
        sock.sendall(request[i : i + 40])
        time.sleep(0.02)
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def _one_request(port: int) -> tuple[int, dict[str, str], bytes]:
    client = RawHttp(port)
    try:
        client.send(client.request_head("GET", "/healthz", {"Connection": "close"}))
        return client.response()
    finally:
        client.close()


async def _counted(server: Any, expected: int) -> None:
    open_connections = server.service.site.open_connections
    for _ in range(100):
        if open_connections["127.0.0.1"] == expected:
            return
        await deferred(asyncio.sleep(0.02))
    assert open_connections["127.0.0.1"] == expected


@pytest_twisted.ensureDeferred
async def test_open_http_connections_are_capped_per_address_and_websockets_are_not(
    server_factory,
):
    # Loopback is exempt by default (a reverse proxy's address): count it here.
    server = await server_factory(max_http_connections_per_ip=3, ip_limit_exempt=())
    upgraded = await in_thread(_upgrade_through_the_site, server.port)
    held = []
    try:
        await _counted(server, 0)  # the upgraded WebSocket is no HTTP connection
        for _ in range(3):
            held.append(await in_thread(_hold, server.port))
        await _counted(server, 3)
        status, headers, body = await in_thread(_one_request, server.port)
        assert status == 429 and error_code(body) == "RATE_LIMIT_EXCEEDED"
        assert int(headers["retry-after"]) >= 1
        # WebSockets are not starved: the front door hands them to Autobahn.
        alice = await server.connect("alice")
        assert alice.user_id == "alice"
        held.pop().close()
        await _counted(server, 2)
        status, _, _ = await in_thread(_one_request, server.port)
        assert status == 200
    finally:
        for client in held:
            client.close()
        upgraded.close()
