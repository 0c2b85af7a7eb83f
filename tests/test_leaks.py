"""Connections that come and go leave nothing behind: after many
connect / auth / join / disconnect cycles every per-connection and per-user
table of the server is empty again, every session object is collectable,
and the process's memory is back where it was after a warm-up.

The default run is short (``CHATD_TEST_LEAK_CYCLES``, 500 cycles); the long
one, 10,000 cycles, is a separate command (docs/security.md, "Leaks")::

    CHATD_TEST_LEAK_CYCLES=10000 .venv/bin/python -m pytest -q -s tests/test_leaks.py
"""

from __future__ import annotations

import gc
import os
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from tests.wsclient import WsClient

CYCLES = int(os.environ.get("CHATD_TEST_LEAK_CYCLES", "500"))
WARM_UP = 200
GRACE = 0.05


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def tables(service: Any) -> dict[str, int]:
    """Every table of the server that holds something per connection, per
    user, per room followed or per pending operation."""
    hub, registry, presence, chat = service.hub, service.registry, service.presence, service.chat
    found = {
        "hub.open": len(hub.open),
        "hub._closed_waiters": len(hub._closed_waiters),
        "hub._address_of": len(hub._address_of),
        "hub.per_address": len(hub.per_address),
        "hub.user_buckets": len(hub.user_buckets),
        "presence._counts": len(presence._counts),
        "presence._going": len(presence._going),
        "presence._closed_at": len(presence._closed_at),
        "presence._leaving": len(presence._leaving),
        "chat._joins": len(chat._joins),
        "chat.typing._active": len(chat.typing._active),
        "live._watching": len(service.live._watching),
        "broker._subscriptions": len(service.broker._subscriptions),
        "registry.order._rooms": len(registry.order._rooms) if registry.order else 0,
    }
    for name in ("_queue", "_listeners", "_groups", "_joining", "_channels_of", "_users"):
        found[f"registry.{name}"] = len(getattr(registry, name))
    found["registry._retained"] = len(registry._retained)
    return found


async def until(condition: Callable[[], bool], timeout: float = 10) -> bool:
    """Wait for ``condition`` (at most ``timeout`` seconds); whether it held."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await deferLater(reactor, 0.005, lambda: None)
    return True


async def cycle(server: Any, user: str, room: str, sessions: list[Any]) -> None:
    """Connect, authenticate with an ``auth`` frame, join, disconnect; wait
    until the server has seen the close."""
    client = await WsClient.open(server.url)
    connection = (await client.ok("auth", {"token": server.token(user)}))["connectionId"]
    await client.ok("chat:join", {"chatId": room})
    session = next(s for s in server.service.hub.open if s.connection_id == connection)
    sessions.append(weakref.ref(session))
    await client.close()
    hub = server.service.hub
    assert await until(lambda: session not in hub.open), "the server never saw the close"


@pytest_twisted.ensureDeferred
async def test_connect_auth_join_disconnect_cycles_leave_nothing_behind(server_factory):
    server = await server_factory(
        presence_grace=GRACE,
        user_rate_limit=100000,
        user_rate_burst=1000,
        max_connections_per_user=1000,
    )
    owner = await server.connect("owner")
    room = (await owner.ok("chat:create", {"name": "lobby", "type": "public"}))["room"]["id"]
    await owner.ok("chat:join", {"chatId": room})
    service = server.service
    sessions: list[Any] = []
    client_ids = iter(range(10**9))

    async def run(count: int) -> None:
        for _ in range(count):
            await cycle(server, f"u{next(client_ids)}", room, sessions)
            owner.inbox.clear()  # presence pushes (the owner shares a room with each)

    await run(WARM_UP)
    gc.collect()
    started = rss_kib()
    await run(CYCLES)
    await owner.close()
    empty = dict.fromkeys(tables(service), 0)
    await until(lambda: tables(service) == empty)  # grace timers, user buckets
    gc.collect()
    ended = rss_kib()

    left = {name: size for name, size in tables(service).items() if size}
    assert not left, f"left behind: {left}"
    alive = [ref for ref in sessions if ref() is not None]
    assert not alive, f"{len(alive)} of {len(sessions)} sessions were never freed"
    growth = (ended - started) / started
    print(
        f"\n{CYCLES} cycles after {WARM_UP} to warm up: RSS {started} KiB -> {ended} KiB"
        f" ({growth:+.1%})"
    )
    assert growth < 0.10, f"RSS grew {growth:.1%} over {CYCLES} cycles ({started} -> {ended} KiB)"
