"""Socket.IO polling across two chatd processes on one passed socket, with
no sticky sessions: two real ``twistd chatd`` instances adopt the same
listening socket (as ``chatd@.service`` instances do) and share
PostgreSQL and Redis (as the cluster tests' nodes do).

The clients are ``python-socketio`` ``AsyncClient``s with
``transports=["polling"]`` whose HTTP session closes its connection after
every request, so each GET and POST is a new TCP connection that either
process may accept.  A request that lands on the process without the
session only works because it is handed to the owner over the runtime
directory's UNIX sockets (chatd/bindings/socketio/handoff.py); without that
it is an unknown sid and the client drops."""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import secrets
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import socketio

from chatd.auth import mint_token
from chatd.config import Config
from tests.cluster import requires_redis
from tests.daemon import clean_env
from tests.test_operations import _activated

SECRET = "processes-secret-" + "p" * 40
TIMEOUT = 10.0
NODE = re.compile(r"Socket\.IO polling handoff: process ([0-9a-f]{8}) at ")
SUMMARY = re.compile(
    r"Socket\.IO polling handoff: forwarded (\d+) requests .* answered (\d+) for them"
)


class Polling:
    """One polling-only client, its events in order, a fresh TCP connection
    for every request."""

    def __init__(self) -> None:
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        self.client = socketio.AsyncClient(reconnection=False, http_session=self.http)
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.disconnects: list[Any] = []
        self.client.on("*", self._event)
        self.client.on("disconnect", self._disconnect)

    async def _event(self, event: str, *args: Any) -> None:
        await self.events.put((event, args[0] if args else None))

    async def _disconnect(self, *reason: Any) -> None:
        self.disconnects.append(reason)

    async def connect(self, port: int, token: str) -> Polling:
        await self.client.connect(
            f"http://127.0.0.1:{port}",
            transports=["polling"],
            auth={"token": token},
            wait_timeout=TIMEOUT,
        )
        return self

    @property
    def node(self) -> str:
        return str(self.client.eio.sid).split(".")[0]

    async def ok(self, event: str, data: Any) -> Any:
        result = await self.client.call(event, data, timeout=TIMEOUT)
        assert isinstance(result, dict) and "error" not in result, f"{event}: {result}"
        return result

    async def message(self, content: str) -> Any:
        """The room message with this content (the client's own messages
        come back to it too: skipped)."""
        while True:
            name, data = await asyncio.wait_for(self.events.get(), TIMEOUT)
            if name == "chat:message" and data["content"] == content:
                return data

    async def close(self) -> None:
        if self.client.connected:
            await self.client.disconnect()
        await self.http.close()


def _wait_for(logs: list[Path], pattern: re.Pattern[str], procs: list[Any]) -> list[str]:
    deadline = time.monotonic() + 30
    while True:
        texts = [log.read_text(errors="replace") for log in logs]
        found = [pattern.search(text) for text in texts]
        if all(found):
            return [m.group(1) for m in found if m is not None]
        assert time.monotonic() < deadline, texts
        assert all(p.poll() is None for p in procs), texts
        time.sleep(0.1)


def test_polling_sessions_span_two_processes_on_one_socket(tmp_path, pg_schema_url):
    redis = requires_redis()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    prefix = f"t{secrets.token_hex(4)}:"
    logs = [tmp_path / f"i{index}.log" for index in range(2)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for index in range(2):
            args = [
                "--data-dir",  # siblings: both default to runtime dir tmp_path/chatd-run
                str(tmp_path / f"i{index}"),
                "--database",
                pg_schema_url,
                "--redis",
                redis,
                "--redis-prefix",
                prefix,
                "--jwt-secret",
                SECRET,
                "--presence-grace",
                "0.2",
            ]
            procs.append(_activated(listener, args, clean_env(), logs[index]))
        listener.close()  # only the instances hold it now, as with systemd
        nodes = _wait_for(logs, NODE, procs)
        _wait_for(logs, re.compile(r"(listening on) "), procs)
        assert len(set(nodes)) == 2
        assert (tmp_path / "chatd-run").is_dir()
        token = {user: mint_token(Config(jwt_secret=SECRET), user) for user in ("alice", "bob")}

        async def scenario() -> None:
            clients: list[Polling] = []
            try:
                await _exchange_then_drain(port, token, nodes, procs, clients)
            finally:
                for client in clients:
                    await client.close()

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, scenario()).result(timeout=120)
        survivor = procs[1] if procs[0].poll() is not None else procs[0]
        survivor.send_signal(signal.SIGTERM)
        assert survivor.wait(20) in (0, -signal.SIGTERM)
        texts = [log.read_text(errors="replace") for log in logs]
        for text in texts:
            assert "chatd stopped" in text, text
            # Each process served some of the clients' requests itself...
            assert "/socket.io/ HTTP/1.1" in text, text
        # ...and requests reached the process without their session, which
        # handed them to the owner.
        summaries = [SUMMARY.search(text) for text in texts]
        assert all(summaries), texts
        forwarded = [int(m.group(1)) for m in summaries if m]
        answered = [int(m.group(2)) for m in summaries if m]
        assert sum(forwarded) > 0 and sum(answered) > 0, (forwarded, answered)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


async def _exchange_then_drain(
    port: int,
    token: dict[str, str],
    nodes: list[str],
    procs: list[subprocess.Popen[bytes]],
    clients: list[Polling],
) -> None:
    # One client's session on each process (a handshake lands where it may).
    alice = await Polling().connect(port, token["alice"])
    clients.append(alice)
    bob: Polling | None = None
    for _ in range(40):
        candidate = await Polling().connect(port, token["bob"])
        clients.append(candidate)
        if candidate.node != alice.node:
            bob = candidate
            break
        await candidate.close()
    assert bob is not None, "every handshake landed on one process"
    assert {alice.node, bob.node} == set(nodes)
    room = (await alice.ok("chat:create", {"name": "procs", "type": "public"}))["room"]["id"]
    for client in (alice, bob):
        await client.ok("chat:join", {"chatId": room})
    # Polls and posts: each a new connection, to either process.
    for round_ in range(15):
        await alice.ok("chat:message", {"chatId": room, "content": f"a{round_}"})
        assert (await bob.message(f"a{round_}"))["content"] == f"a{round_}"
        await bob.ok("chat:message", {"chatId": room, "content": f"b{round_}"})
        assert (await alice.message(f"b{round_}"))["content"] == f"b{round_}"
    # SIGTERM alice's process: her session is drained (the Engine.IO close,
    # which reaches her through the other process once this one stopped
    # accepting), bob's goes on.
    owner = procs[nodes.index(alice.node)]
    owner.send_signal(signal.SIGTERM)
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while alice.client.connected:
        assert asyncio.get_running_loop().time() < deadline, "alice was not disconnected"
        await asyncio.sleep(0.05)
    assert alice.disconnects and alice.disconnects[0][0] == "server disconnect", alice.disconnects
    assert await asyncio.to_thread(owner.wait, 20) in (0, -signal.SIGTERM)
    for round_ in range(5):
        sent = await bob.ok("chat:message", {"chatId": room, "content": f"after{round_}"})
        assert sent
        assert (await bob.message(f"after{round_}"))["content"] == f"after{round_}"
    assert bob.client.connected and not bob.disconnects
    # A client of the stopped process reconnects, to the one that runs on.
    again = await Polling().connect(port, token["alice"])
    clients.append(again)
    assert again.node == bob.node
    await again.ok("chat:join", {"chatId": room})
    await again.ok("chat:message", {"chatId": room, "content": "back"})
    assert (await bob.message("back"))["content"] == "back"
