"""The WebSocket echo at ``/ws/echo`` (``websocket_echo``, test only): off
by default, loopback only, and when on, an echo on ``/ws``'s protocol and
session (the hub counts it, shutdown drains it, the transport metric names
it) with the 16 MiB cap the Autobahn TestSuite needs, while ``/ws`` keeps
``max_message_size``.  The suite itself is tests/autobahn/run.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import pytest_twisted
import websockets
from twisted.web.client import Agent, readBody

from chatd.config import ConfigError, load_config
from tests.conftest import TEST_SECRET, make_config, start_server
from tests.wsclient import deferred

TIMEOUT = 5.0


async def get(server: Any, path: str) -> tuple[int, bytes]:
    from twisted.internet import reactor

    response = await Agent(reactor).request(b"GET", (server.http + path).encode())
    return response.code, await readBody(response)


async def connect(server: Any, path: str) -> Any:
    url = f"ws://127.0.0.1:{server.port}{path}"
    return await deferred(websockets.connect(url, open_timeout=TIMEOUT, max_size=None))


async def receive(ws: Any) -> Any:
    return await deferred(asyncio.wait_for(ws.recv(), TIMEOUT))


async def closed_with(ws: Any) -> int | None:
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            await receive(ws)
    return closed.value.rcvd.code if closed.value.rcvd is not None else None


@pytest_twisted.async_yield_fixture
async def start(tmp_path: Any) -> Any:
    started: list[Any] = []

    async def run(**overrides: Any) -> Any:
        config = make_config(tmp_path, f"sqlite:///{tmp_path}/chatd.sqlite3", **overrides)
        server = await start_server(config)
        started.append(server)
        return server

    yield run
    for server in started:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_the_echo_is_off_by_default(start):
    server = await start()
    assert server.config.websocket_echo is False
    status, body = await get(server, "/ws/echo")
    assert status == 404, body
    with pytest.raises(websockets.InvalidStatus) as refused:
        await connect(server, "/ws/echo")
    assert refused.value.response.status_code == 404


@pytest_twisted.ensureDeferred
async def test_the_echo_answers_on_the_ws_protocol_with_its_own_size_cap(start):
    server = await start(websocket_echo=True)
    ws = await connect(server, "/ws/echo")
    await deferred(ws.send("héllo, 🌍"))
    assert await receive(ws) == "héllo, 🌍"
    await deferred(ws.send(b"\x00\xffbinary"))
    assert await receive(ws) == b"\x00\xffbinary"
    await deferred(ws.send(""))
    assert await receive(ws) == ""
    # A fragmented message comes back whole, as one message.
    await deferred(ws.send(["frag", "mented"]))
    assert await receive(ws) == "fragmented"
    # Past /ws's max_message_size (64 KiB), which the echo raises to 16 MiB.
    big = b"x" * (2 * 1024 * 1024)
    await deferred(ws.send(big))
    assert await receive(ws) == big
    # It is one of chatd's sessions: counted by the hub, named in the metrics.
    status, health = await get(server, "/healthz")
    assert status == 200 and b'"connections":1' in health
    status, metrics = await get(server, "/metrics")
    assert b'chatd_connections_by_transport{transport="echo"} 1.0' in metrics
    # /ws keeps its cap.
    native = await connect(server, "/ws")
    await deferred(native.send(b"x" * (server.config.max_message_size + 1)))
    assert await closed_with(native) == 1009
    # Autobahn's checks stay on: a text message that is not UTF-8 closes 1007.
    await deferred(ws.send(b"\xc3\x28", text=True))
    assert await closed_with(ws) == 1007


@pytest_twisted.ensureDeferred
async def test_shutdown_drains_echo_connections_like_any_other(start):
    server = await start(websocket_echo=True)
    ws = await connect(server, "/ws/echo")
    await deferred(ws.send("still here"))
    assert await receive(ws) == "still here"
    await server.service.stopService()
    assert await closed_with(ws) == 1001


def test_the_echo_is_refused_unless_listening_on_loopback(tmp_path):
    values = {
        "data_dir": str(tmp_path),
        "jwt_secret": TEST_SECRET,
        "websocket_echo": "true",
    }
    assert load_config({**values, "listen": "tcp:0:interface=127.0.0.1"}, environ={}).websocket_echo
    with pytest.raises(ConfigError, match="websocket_echo"):
        load_config({**values, "listen": "tcp:0:interface=0.0.0.0"}, environ={})
    with pytest.raises(ConfigError, match="websocket_echo"):
        load_config({**values, "listen": "tcp:0"}, environ={})
