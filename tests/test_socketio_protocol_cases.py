"""Every case of the protocols' own test suites, against chatd's test mode.

socketio/engine.io-protocol and socketio/socket.io-protocol each check a
server with a mocha suite (``test-suite/test-suite.js``).  This module has
one test per case of those suites, named after it, doing what the case
does: raw HTTP requests (a new connection each, like ``fetch``) and raw
WebSocket frames over loopback, with the same expectations.  The suites'
code is not here; docs/socketio.md says how to run them as they are.

The server is one chatd with ``socketio_test_suites`` on (shared by the
module: storage plays no part): ``/engine.io/`` is the Engine.IO suite's
echo server, ``/testsuite/socket.io/`` the Socket.IO suite's, both on
chatd's own engine with the suites' ping interval of 300 ms and timeout of
200 ms, so the heartbeat cases take well under a second.  The Socket.IO
suite repeats most Engine.IO cases on its own path: those are parametrized
over both paths (``engine.io`` / ``socket.io``).

Where a suite case asserts nothing (its WebSocket handshake failures only
create the socket), the test here checks what the case's name says.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import pytest_twisted
import websockets

from chatd.bindings.socketio import testsuite
from tests.conftest import make_config, start_server
from tests.wsclient import deferred

TIMEOUT = 5.0
PING_INTERVAL = testsuite.PING_INTERVAL
PING_TIMEOUT = testsuite.PING_TIMEOUT

ENGINE_IO = testsuite.ENGINE_IO_PATH
SOCKET_IO = testsuite.SOCKET_IO_PATH
BOTH = pytest.mark.parametrize("path", [ENGINE_IO, SOCKET_IO], ids=["engine.io", "socket.io"])
"""The Engine.IO cases that both suites have, each on its suite's path."""


@pytest_twisted.async_yield_fixture(scope="module")
async def base(tmp_path_factory: Any) -> Any:
    """``http://127.0.0.1:<port>`` of a chatd in test mode."""
    tmp = tmp_path_factory.mktemp("suites")
    server = await start_server(
        make_config(tmp, f"sqlite:///{tmp}/chatd.sqlite3", socketio_test_suites=True)
    )
    yield server.http
    await server.stop()


def case(fn: Callable[..., Awaitable[None]]) -> Any:
    """An asyncio test body as a pytest-twisted test (the reactor runs on
    the asyncio loop, so aiohttp and websockets share it with chatd)."""

    @functools.wraps(fn)
    @pytest_twisted.ensureDeferred
    async def test(*args: Any, **kwargs: Any) -> None:
        await deferred(asyncio.wait_for(fn(*args, **kwargs), 3 * TIMEOUT))

    return test


# -- the suites' helpers --------------------------------------------------------------


async def fetch(url: str, method: str = "GET", body: str | None = None) -> tuple[int, str]:
    """One request on a connection of its own, like the suites' ``fetch``."""
    async with aiohttp.ClientSession() as session:
        async with session.request(method, url, data=body) as response:
            return response.status, await response.text()


def query(base: str, path: str, extra: str = "", scheme: str = "http") -> str:
    host = base.replace("http", scheme, 1)
    return f"{host}{path}?EIO=4&transport={extra}"


def polling(base: str, path: str, sid: str | None = None) -> str:
    return query(base, path, "polling" + (f"&sid={sid}" if sid else ""))


def websocket(base: str, path: str, sid: str | None = None) -> str:
    return query(base, path, "websocket" + (f"&sid={sid}" if sid else ""), "ws")


async def open_polling(base: str, path: str) -> str:
    """The suites' ``initLongPollingSession``: a handshake, its sid."""
    status, body = await fetch(polling(base, path))
    assert status == 200 and body.startswith("0"), (status, body)
    sid: str = json.loads(body[1:])["sid"]
    return sid


async def connect(url: str) -> Any:
    return await websockets.connect(url, open_timeout=TIMEOUT, max_size=None)


async def recv(ws: Any) -> str | bytes:
    data: str | bytes = await asyncio.wait_for(ws.recv(), TIMEOUT)
    return data


async def packets(ws: Any, count: int) -> list[str | bytes]:
    """The suite's ``waitForPackets``: the next ``count`` packets, pings
    left out."""
    found: list[str | bytes] = []
    while len(found) < count:
        data = await recv(ws)
        if data != "2":
            found.append(data)
    return found


async def closed(ws: Any) -> None:
    """The suites' ``waitFor(socket, "close")``: whatever comes first, the
    server closes the connection."""
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            await recv(ws)


async def refused(url: str) -> None:
    """A WebSocket handshake that the server answers with 400."""
    with pytest.raises(websockets.InvalidStatus) as error:
        await connect(url)
    assert error.value.response.status_code == 400


def open_packet(data: str | bytes, upgrades: list[str]) -> None:
    """The handshake as both suites check it, to the key."""
    assert isinstance(data, str) and data.startswith("0")
    value = json.loads(data[1:])
    assert set(value) == {"sid", "upgrades", "pingInterval", "pingTimeout", "maxPayload"}
    assert isinstance(value["sid"], str)
    assert value["upgrades"] == upgrades
    assert value["pingInterval"] == round(PING_INTERVAL * 1000) == 300
    assert value["pingTimeout"] == round(PING_TIMEOUT * 1000) == 200
    assert value["maxPayload"] == 1000000


# == Engine.IO: handshake ==============================================================


@BOTH
@case
async def test_handshake_polling_successfully_opens_a_session(base: str, path: str) -> None:
    status, body = await fetch(polling(base, path))
    assert status == 200
    open_packet(body, ["websocket"])


@BOTH
@case
async def test_handshake_polling_fails_with_an_invalid_eio_query_parameter(
    base: str, path: str
) -> None:
    assert (await fetch(f"{base}{path}?transport=polling"))[0] == 400
    assert (await fetch(f"{base}{path}?EIO=abc&transport=polling"))[0] == 400


@BOTH
@case
async def test_handshake_polling_fails_with_an_invalid_transport_query_parameter(
    base: str, path: str
) -> None:
    assert (await fetch(f"{base}{path}?EIO=4"))[0] == 400
    assert (await fetch(f"{base}{path}?EIO=4&transport=abc"))[0] == 400


@BOTH
@case
async def test_handshake_polling_fails_with_an_invalid_request_method(base: str, path: str) -> None:
    assert (await fetch(polling(base, path), "POST"))[0] == 400
    assert (await fetch(polling(base, path), "PUT"))[0] == 400


@BOTH
@case
async def test_handshake_websocket_successfully_opens_a_session(base: str, path: str) -> None:
    ws = await connect(websocket(base, path))
    open_packet(await recv(ws), [])
    await ws.close()


@BOTH
@case
async def test_handshake_websocket_fails_with_an_invalid_eio_query_parameter(
    base: str, path: str
) -> None:
    ws_base = base.replace("http", "ws", 1)
    await refused(f"{ws_base}{path}?transport=websocket")
    await refused(f"{ws_base}{path}?EIO=abc&transport=websocket")


@BOTH
@case
async def test_handshake_websocket_fails_with_an_invalid_transport_query_parameter(
    base: str, path: str
) -> None:
    ws_base = base.replace("http", "ws", 1)
    await refused(f"{ws_base}{path}?EIO=4")
    await refused(f"{ws_base}{path}?EIO=4&transport=abc")


# == Engine.IO: message (the Engine.IO suite only: its server echoes) =================


@pytest.mark.parametrize(
    "payload",
    ["4hello", "4test1\x1e4test2\x1e4test3", "4hello\x1ebAQIDBA=="],
    ids=[
        "sends_and_receives_a_payload_containing_one_plain_text_packet",
        "sends_and_receives_a_payload_containing_several_plain_text_packets",
        "sends_and_receives_a_payload_containing_plain_text_and_binary_packets",
    ],
)
@case
async def test_message_polling(base: str, payload: str) -> None:
    sid = await open_polling(base, ENGINE_IO)
    assert await fetch(polling(base, ENGINE_IO, sid), "POST", payload) == (200, "ok")
    assert await fetch(polling(base, ENGINE_IO, sid)) == (200, payload)


@case
async def test_message_polling_closes_the_session_upon_invalid_packet_format(base: str) -> None:
    sid = await open_polling(base, ENGINE_IO)
    assert (await fetch(polling(base, ENGINE_IO, sid), "POST", "abc"))[0] == 400
    assert (await fetch(polling(base, ENGINE_IO, sid)))[0] == 400


@case
async def test_message_polling_closes_the_session_upon_duplicate_poll_requests(base: str) -> None:
    sid = await open_polling(base, ENGINE_IO)

    async def burst() -> tuple[int, str]:
        await asyncio.sleep(0.005)
        return await fetch(polling(base, ENGINE_IO, sid) + "&t=burst")

    first, second = await asyncio.gather(fetch(polling(base, ENGINE_IO, sid)), burst())
    assert first == (200, "1")
    assert second[0] in (400, 500)
    assert (await fetch(polling(base, ENGINE_IO, sid)))[0] == 400


@case
async def test_message_websocket_sends_and_receives_a_plain_text_packet(base: str) -> None:
    ws = await connect(websocket(base, ENGINE_IO))
    await recv(ws)  # handshake
    await ws.send("4hello")
    assert await recv(ws) == "4hello"
    await ws.close()


@case
async def test_message_websocket_sends_and_receives_a_binary_packet(base: str) -> None:
    ws = await connect(websocket(base, ENGINE_IO))
    await recv(ws)  # handshake
    await ws.send(bytes([1, 2, 3, 4]))
    assert await recv(ws) == bytes([1, 2, 3, 4])
    await ws.close()


@case
async def test_message_websocket_closes_the_session_upon_invalid_packet_format(base: str) -> None:
    ws = await connect(websocket(base, ENGINE_IO))
    await recv(ws)  # handshake
    await ws.send("abc")
    await closed(ws)


# == Engine.IO: heartbeat ===============================================================


@BOTH
@case
async def test_heartbeat_polling_sends_ping_pong_packets(base: str, path: str) -> None:
    sid = await open_polling(base, path)
    for _ in range(3):
        assert await fetch(polling(base, path, sid)) == (200, "2")
        assert (await fetch(polling(base, path, sid), "POST", "3"))[0] == 200


@BOTH
@case
async def test_heartbeat_polling_closes_the_session_upon_ping_timeout(base: str, path: str) -> None:
    sid = await open_polling(base, path)
    # The suite sleeps exactly interval + timeout, which races the server's
    # timer on a loaded machine; a tenth of a second more keeps it honest.
    await asyncio.sleep(PING_INTERVAL + PING_TIMEOUT + 0.1)
    assert (await fetch(polling(base, path, sid)))[0] == 400


@BOTH
@case
async def test_heartbeat_websocket_sends_ping_pong_packets(base: str, path: str) -> None:
    ws = await connect(websocket(base, path))
    await recv(ws)  # handshake
    for _ in range(3):
        assert await recv(ws) == "2"
        await ws.send("3")
    await ws.close()


@BOTH
@case
async def test_heartbeat_websocket_closes_the_session_upon_ping_timeout(
    base: str, path: str
) -> None:
    ws = await connect(websocket(base, path))
    started = time.monotonic()
    await closed(ws)  # the ping is never answered
    assert time.monotonic() - started >= PING_INTERVAL


# == Engine.IO: close ===================================================================


@BOTH
@case
async def test_close_polling_forcefully_closes_the_session(base: str, path: str) -> None:
    sid = await open_polling(base, path)
    poll, push = await asyncio.gather(
        fetch(polling(base, path, sid)), fetch(polling(base, path, sid), "POST", "1")
    )
    assert poll == (200, "6") and push == (200, "ok")
    assert (await fetch(polling(base, path, sid)))[0] == 400


@BOTH
@case
async def test_close_websocket_forcefully_closes_the_session(base: str, path: str) -> None:
    ws = await connect(websocket(base, path))
    await recv(ws)  # handshake
    await ws.send("1")
    await closed(ws)


# == Engine.IO: upgrade =================================================================


@BOTH
@case
async def test_upgrade_successfully_upgrades_from_http_long_polling_to_websocket(
    base: str, path: str
) -> None:
    sid = await open_polling(base, path)
    ws = await connect(websocket(base, path, sid))
    await ws.send("2probe")
    assert await recv(ws) == "3probe"
    # The GET that comes during the upgrade is released with a noop.
    assert await fetch(polling(base, path, sid)) == (200, "6")
    await ws.send("5")
    if path == ENGINE_IO:
        await ws.send("4hello")
        assert await recv(ws) == "4hello"
    await ws.close()


@BOTH
@case
async def test_upgrade_ignores_http_requests_with_same_sid_after_upgrade(
    base: str, path: str
) -> None:
    sid = await open_polling(base, path)
    ws = await connect(websocket(base, path, sid))
    await ws.send("2probe")
    await ws.send("5")
    assert (await fetch(polling(base, path, sid)))[0] == 400
    assert await recv(ws) == "3probe"
    if path == ENGINE_IO:
        await ws.send("4hello")
        assert await recv(ws) == "4hello"
    await ws.close()


@BOTH
@case
async def test_upgrade_ignores_websocket_connection_with_same_sid_after_upgrade(
    base: str, path: str
) -> None:
    sid = await open_polling(base, path)
    ws = await connect(websocket(base, path, sid))
    await ws.send("2probe")
    await ws.send("5")
    assert await recv(ws) == "3probe"
    # Accepted, then closed by the server (not refused with an HTTP error).
    second = await connect(websocket(base, path, sid))
    await closed(second)
    if path == ENGINE_IO:
        await ws.send("4hello")
        assert await recv(ws) == "4hello"
    await ws.close()


# == Socket.IO: connect ===================================================================


async def socketio(base: str) -> Any:
    """The suite's ``initSocketIOConnection``: connected to ``/``, the
    ``auth`` event read."""
    ws = await connect(websocket(base, SOCKET_IO))
    await recv(ws)  # Engine.IO handshake
    await ws.send("40")
    assert str(await recv(ws)).startswith("40")
    assert await recv(ws) == '42["auth",{}]'
    return ws


def connect_reply(data: str | bytes, prefix: str) -> None:
    assert isinstance(data, str) and data.startswith(prefix)
    handshake = json.loads(data[len(prefix) :])
    assert set(handshake) == {"sid"} and isinstance(handshake["sid"], str)


@pytest.mark.parametrize(
    ("sent", "prefix", "auth"),
    [
        ("40", "40", '42["auth",{}]'),
        ('40{"token":"123"}', "40", '42["auth",{"token":"123"}]'),
        ("40/custom,", "40/custom,", '42/custom,["auth",{}]'),
        ('40/custom,{"token":"abc"}', "40/custom,", '42/custom,["auth",{"token":"abc"}]'),
    ],
    ids=[
        "should_allow_connection_to_the_main_namespace",
        "should_allow_connection_to_the_main_namespace_with_a_payload",
        "should_allow_connection_to_a_custom_namespace",
        "should_allow_connection_to_a_custom_namespace_with_a_payload",
    ],
)
@case
async def test_socketio_connect(base: str, sent: str, prefix: str, auth: str) -> None:
    ws = await connect(websocket(base, SOCKET_IO))
    await recv(ws)  # Engine.IO handshake
    await ws.send(sent)
    connect_reply(await recv(ws), prefix)
    assert await recv(ws) == auth
    await ws.close()


@case
async def test_socketio_connect_should_disallow_connection_to_an_unknown_namespace(
    base: str,
) -> None:
    ws = await connect(websocket(base, SOCKET_IO))
    await recv(ws)  # Engine.IO handshake
    await ws.send("40/random")
    assert await recv(ws) == '44/random,{"message":"Invalid namespace"}'
    await ws.close()


@case
async def test_socketio_connect_should_disallow_connection_with_an_invalid_handshake(
    base: str,
) -> None:
    ws = await connect(websocket(base, SOCKET_IO))
    await recv(ws)  # Engine.IO handshake
    await ws.send("4abc")
    await closed(ws)


@case
async def test_socketio_connect_should_close_the_connection_if_no_handshake_is_received(
    base: str,
) -> None:
    # The suite's client never answers a ping, so the heartbeat closes it
    # first there; answering them here shows the connect timeout itself.
    ws = await connect(websocket(base, SOCKET_IO))
    started = time.monotonic()
    await recv(ws)  # Engine.IO handshake
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            if await recv(ws) == "2":
                await ws.send("3")
    assert time.monotonic() - started >= testsuite.CONNECT_TIMEOUT - 0.05


# == Socket.IO: disconnect ================================================================


@case
async def test_socketio_disconnect_should_disconnect_from_the_main_namespace(base: str) -> None:
    ws = await socketio(base)
    await ws.send("41")
    assert await recv(ws) == "2"  # the Engine.IO session goes on
    await ws.close()


@case
async def test_socketio_disconnect_should_connect_then_disconnect_from_a_custom_namespace(
    base: str,
) -> None:
    ws = await socketio(base)
    assert await recv(ws) == "2"  # ping (left unanswered, as the suite does)
    await ws.send("40/custom")
    connect_reply(await recv(ws), "40/custom,")
    assert await recv(ws) == '42/custom,["auth",{}]'
    await ws.send("41/custom")
    await ws.send('42["message","message to main namespace"]')
    assert await recv(ws) == '42["message-back","message to main namespace"]'
    await ws.close()


# == Socket.IO: message ===================================================================


@case
async def test_socketio_message_should_send_a_plain_text_packet(base: str) -> None:
    ws = await socketio(base)
    await ws.send('42["message",1,"2",{"3":[true]}]')
    assert await recv(ws) == '42["message-back",1,"2",{"3":[true]}]'
    await ws.close()


PLACEHOLDERS = '{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}'


@case
async def test_socketio_message_should_send_a_packet_with_binary_attachments(base: str) -> None:
    ws = await socketio(base)
    await ws.send(f'452-["message",{PLACEHOLDERS}]')
    await ws.send(bytes([1, 2, 3]))
    await ws.send(bytes([4, 5, 6]))
    assert await packets(ws, 3) == [
        f'452-["message-back",{PLACEHOLDERS}]',
        bytes([1, 2, 3]),
        bytes([4, 5, 6]),
    ]
    await ws.close()


@case
async def test_socketio_message_should_send_a_plain_text_packet_with_an_ack(base: str) -> None:
    ws = await socketio(base)
    await ws.send('42456["message-with-ack",1,"2",{"3":[false]}]')
    assert await recv(ws) == '43456[1,"2",{"3":[false]}]'
    await ws.close()


@case
async def test_socketio_message_should_send_a_packet_with_binary_attachments_and_an_ack(
    base: str,
) -> None:
    ws = await socketio(base)
    await ws.send(f'452-789["message-with-ack",{PLACEHOLDERS}]')
    await ws.send(bytes([1, 2, 3]))
    await ws.send(bytes([4, 5, 6]))
    assert await packets(ws, 3) == [
        f"462-789[{PLACEHOLDERS}]",
        bytes([1, 2, 3]),
        bytes([4, 5, 6]),
    ]
    await ws.close()


@pytest.mark.parametrize(
    "sent",
    ["4abc", "42{}", '42abc["message-with-ack",1,"2",{"3":[false]}]'],
    ids=[
        "should_close_the_connection_upon_invalid_format_unknown_packet_type",
        "should_close_the_connection_upon_invalid_format_invalid_payload_format",
        "should_close_the_connection_upon_invalid_format_invalid_ack_id",
    ],
)
@case
async def test_socketio_message_invalid_format(base: str, sent: str) -> None:
    ws = await socketio(base)
    await ws.send(sent)
    await closed(ws)
