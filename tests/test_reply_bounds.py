"""Replies cannot make a client's buffer (and the server's memory) grow
past ``max_send_buffer``: pages are cut by size as well as by count, a
reply that would pass the bound closes the client with 4029, and a client
far behind on what it was sent is not read from until it catches up.

The messages here are the worst case per character: 4,000 astral
characters, which chatd's JSON writes as 48,000 bytes of ``\\uXXXX``
escapes, so 100 of them were a 4.8 MB reply to a 96-byte request."""

from __future__ import annotations

import json
import struct
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from chatd.auth import mint_token
from chatd.config import Config
from chatd.domain.chat import MAX_PAGE_BYTES
from tests.daemon import Daemon, clean_env, free_port
from tests.test_backpressure_and_shutdown import RawReader
from tests.test_http_api import http
from tests.wsclient import WsClient

ASTRAL = "\U0001f600" * 4000
FAST = {
    "rate_limit": 100000,
    "rate_burst": 100000,
    "user_rate_limit": 100000,
    "user_rate_burst": 100000,
}
ENVELOPE = 200  # the reply's own keys around the page


async def room_of_big_messages(alice: WsClient, count: int) -> str:
    room = (await alice.ok("chat:create", {"name": "big", "type": "public"}))["room"]["id"]
    for n in range(count):
        await alice.send("chat:message", {"chatId": room, "content": ASTRAL}, f"m{n}")
    for n in range(count):
        frame = await alice.reply(f"m{n}", timeout=30)
        assert frame["type"] == "ack", frame
    return room


def page_bytes(page: dict[str, Any]) -> int:
    return len(json.dumps(page["messages"], separators=(",", ":")))


def assert_bounded(page: dict[str, Any]) -> None:
    assert page["messages"], "a page always holds a message"
    assert page_bytes(page) <= MAX_PAGE_BYTES, page_bytes(page)


async def page_back(client: WsClient, room: str, page: dict[str, Any]) -> list[int]:
    seqs = [m["seq"] for m in page["messages"]]
    while page["hasMore"]:
        page = await client.ok("chat:history", {"chatId": room, "before": seqs[0], "limit": 100})
        assert_bounded(page)
        seqs = [m["seq"] for m in page["messages"]] + seqs
    return seqs


async def page_on(client: WsClient, room: str, page: dict[str, Any]) -> list[int]:
    seqs = [m["seq"] for m in page["messages"]]
    while page["hasMore"]:
        page = await client.ok("chat:history", {"chatId": room, "after": seqs[-1], "limit": 100})
        assert_bounded(page)
        seqs += [m["seq"] for m in page["messages"]]
    return seqs


# -- pages cut by size ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_history_pages_are_cut_by_size_and_page_on_without_gaps(server_factory):
    server = await server_factory(**FAST)
    alice = await server.connect("alice")
    room = await room_of_big_messages(alice, 30)
    everything = list(range(1, 31))

    newest = await alice.ok("chat:history", {"chatId": room, "limit": 100})
    assert_bounded(newest)
    assert newest["hasMore"] is True and len(newest["messages"]) < 30
    assert newest["messages"][-1]["seq"] == 30, "a backward page keeps the newest"
    assert newest["messages"][0]["content"] == ASTRAL
    assert await page_back(alice, room, newest) == everything

    oldest = await alice.ok("chat:history", {"chatId": room, "after": 0, "limit": 100})
    assert_bounded(oldest)
    assert oldest["hasMore"] is True and oldest["messages"][0]["seq"] == 1
    assert await page_on(alice, room, oldest) == everything

    # A page the size allows whole is not cut, and hasMore stays honest.
    last = await alice.ok("chat:history", {"chatId": room, "after": 28, "limit": 100})
    assert [m["seq"] for m in last["messages"]] == [29, 30] and last["hasMore"] is False


@pytest_twisted.ensureDeferred
async def test_join_snapshots_are_cut_by_size_and_live_events_follow(server_factory):
    server = await server_factory(**FAST)
    alice = await server.connect("alice")
    room = await room_of_big_messages(alice, 30)

    bob = await server.connect("bob")
    joined = await bob.ok("chat:join", {"chatId": room})
    assert_bounded(joined)
    assert joined["hasMore"] is True and joined["messages"][-1]["seq"] == 30
    assert await page_back(bob, room, joined) == list(range(1, 31))

    carol = await server.connect("carol")
    since = await carol.ok("chat:join", {"chatId": room, "since": 0})
    assert_bounded(since)
    assert since["hasMore"] is True and since["messages"][0]["seq"] == 1
    assert await page_on(carol, room, since) == list(range(1, 31))

    await alice.ok("chat:message", {"chatId": room, "content": "live"})
    for client in (bob, carol):
        push = await client.next_matching(
            lambda f: f["type"] == "chat:message" and f["data"]["content"] == "live"
        )
        assert push["data"]["seq"] == 31


@pytest_twisted.ensureDeferred
async def test_http_history_is_cut_by_size_like_chat_history(server_factory):
    server = await server_factory(**FAST)
    alice = await server.connect("alice")
    room = await room_of_big_messages(alice, 30)
    status, page = await http(
        server, "GET", f"/api/rooms/{room}/messages?after=0&limit=100", server.token("alice")
    )
    assert status == 200
    assert_bounded(page)
    assert page["hasMore"] is True and page["messages"][0]["seq"] == 1


# -- a client that does not read -----------------------------------------------------------


def session_of(server: Any, user: str) -> Any:
    return next(
        (s for s in server.service.hub.open if s.identity and s.identity.user_id == user), None
    )


@pytest_twisted.ensureDeferred
async def test_a_client_that_stops_reading_is_held_at_the_bound_and_not_read(server_factory):
    server = await server_factory(**FAST)
    alice = await server.connect("alice")
    room = await room_of_big_messages(alice, 30)
    await alice.ok("chat:join", {"chatId": room})
    alice.inbox.clear()
    bound = server.config.max_send_buffer

    stalled = await RawReader.open(server.port, server.token("stalled"))
    session = None
    while session is None:
        await alice.ok("ping")
        session = session_of(server, "stalled")
    transport = session.transport
    stalled.send({"type": "chat:join", "id": "j", "data": room})
    requests = 1
    # One request at a time, each once the previous reply is written (a
    # client that asks now and then and never reads the answers).
    while transport in reactor.getReaders() and requests < 40:
        before = session._binding.buffered_bytes()
        stalled.send({"type": "chat:history", "id": f"h{requests}", "data": {"chatId": room}})
        requests += 1
        for _ in range(50):
            await alice.ok("ping")
            if session._binding.buffered_bytes() != before or session._detached:
                break
        assert not session._detached, "held, not closed: each page fits in the bound"
        assert session._binding.buffered_bytes() <= bound
    assert transport not in reactor.getReaders(), "the server stopped reading it"

    # What it sends now is not read, let alone acted on ...
    stalled.send({"type": "chat:message", "data": {"chatId": room, "content": "late"}})
    await alice.nothing("chat:message", within=0.5)
    # ... while everyone else is answered at once.
    bob = await server.connect("bob")
    page = await bob.ok("chat:history", {"chatId": room, "limit": 100}, timeout=2)
    assert_bounded(page)

    # Once it reads what it was sent, the server reads it again.
    acks = 0
    while True:
        opcode, payload = await stalled.frame()
        assert opcode == 1, "no close: it was held, not dropped"
        frame = json.loads(payload)
        acks += frame["type"] == "ack"
        if frame["type"] == "chat:message" and frame["data"]["content"] == "late":
            break
    assert acks == requests
    late = await alice.next("chat:message")
    assert late["data"]["content"] == "late"
    stalled.writer.close()


# -- the server's memory, in a process of its own -------------------------------------------

SECRET = "reply-bounds-secret-" + "r" * 40


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def reset_peak(pid: int) -> None:
    """Start VmHWM (peak RSS) over from the current RSS (Linux 4.0+)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


async def outcome(reader: RawReader, replies: int) -> str:
    """Read what a stalled client was sent: ``"4029"`` or ``"held"`` (every
    reply came once it read)."""
    acks = 0
    while acks < replies:
        opcode, payload = await Deferred.fromCoroutine(reader.frame()).addTimeout(20, reactor)
        if opcode == 8:
            code = struct.unpack("!H", payload[:2])[0]
            return str(code)
        if opcode == 1 and json.loads(payload)["type"] == "ack":
            acks += 1
    return "held"


@pytest_twisted.ensureDeferred
async def test_stalled_clients_cannot_grow_the_server_past_the_bound(tmp_path):
    stalled_clients, requests_each, bound = 40, 6, 512 * 1024
    port = free_port()
    daemon = Daemon(
        [
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--data-dir",
            str(tmp_path / "data"),
            "--jwt-secret",
            SECRET,
            "--rate-limit",
            "100000",
            "--rate-burst",
            "100000",
            "--user-rate-limit",
            "100000",
            "--user-rate-burst",
            "100000",
            "--max-send-buffer",
            str(bound),
            "--close-handshake-timeout",
            "60",
        ],
        clean_env(),
        str(tmp_path),
    )
    readers: list[RawReader] = []
    try:
        daemon.wait_healthy(port)
        config = Config(jwt_secret=SECRET)
        url = f"ws://127.0.0.1:{port}/ws"
        alice = await WsClient.open(url, token=mint_token(config, "alice"), max_size=None)
        room = await room_of_big_messages(alice, 100)
        for _ in range(3):  # warm up: the same reads the stalled clients make
            assert_bounded(await alice.ok("chat:history", {"chatId": room, "limit": 100}))
        pid = daemon.proc.pid
        baseline = status_kib(pid, "VmRSS")
        reset_peak(pid)

        for n in range(stalled_clients):
            reader = await RawReader.open(port, mint_token(config, f"stalled{n}"))
            readers.append(reader)
            for r in range(requests_each):
                reader.send({"type": "chat:history", "id": f"h{r}", "data": {"chatId": room}})
        # Storage reads are served in order: once a later request is
        # answered, every stalled client's requests have been.
        started = time.monotonic()
        page = await alice.ok("chat:history", {"chatId": room, "limit": 100}, timeout=30)
        answered_in = time.monotonic() - started
        assert_bounded(page)
        peak = status_kib(pid, "VmHWM")

        allowed = stalled_clients * bound // 1024 + 16 * 1024
        assert peak - baseline < allowed, (
            f"RSS grew {peak - baseline} KiB (baseline {baseline} KiB) for {stalled_clients}"
            f" stalled clients; allowed {allowed} KiB"
        )
        outcomes = [await outcome(reader, requests_each) for reader in readers]
        assert set(outcomes) <= {"4029", "held"}, outcomes
        print(
            f"\nRSS baseline {baseline} KiB, peak {peak} KiB (+{peak - baseline} KiB, allowed"
            f" {allowed}); outcomes {dict(Counter(outcomes))}; other client answered in"
            f" {answered_in:.2f} s"
        )
    finally:
        for reader in readers:
            reader.writer.close()
        daemon.terminate()
