"""Live streams (PROTOCOL.md section 4 "Live streams") over real sockets,
on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest_twisted

from tests.conftest import make_config, start_server
from tests.wsclient import deferred, gather

INTERVAL = 0.25


async def live_server(server_factory, **overrides):
    return await server_factory(viewer_count_interval=INTERVAL, **overrides)


async def counts_until_quiet(client, quiet: float = INTERVAL * 4) -> list[int]:
    counts = []
    while True:
        try:
            frame = await client.next("live:viewer-count", timeout=quiet)
        except TimeoutError:
            return counts
        counts.append(frame["data"]["count"])


@pytest_twisted.ensureDeferred
async def test_join_counts_users_not_tabs_and_drops_on_leave_and_disconnect(server_factory):
    server = await live_server(server_factory)
    host = await server.connect("host")
    await host.ok("live:status", {"streamId": "s1", "status": "started"})
    joined = await host.ok("live:join", "s1")  # a bare string is a streamId
    assert joined == {"streamId": "s1", "viewerCount": 1, "status": "started"}
    tab1 = await server.connect("alice")
    tab2 = await server.connect("alice")
    assert (await tab1.ok("live:join", {"streamId": "s1"}))["viewerCount"] == 2
    assert (await tab2.ok("live:join", {"streamId": "s1"}))["viewerCount"] == 2  # same user
    assert (await counts_until_quiet(host))[-1] == 2
    await tab1.ok("live:leave", {"streamId": "s1"})
    # alice still has a tab.  Timed: counts are pushed on a coalescing
    # timer, and no event marks a count that was rightly not pushed.
    await host.nothing("live:viewer-count", within=INTERVAL * 3)
    await tab2.close()
    assert (await counts_until_quiet(host))[-1] == 1
    # without an id: live:joined confirms
    bob = await server.connect("bob")
    await bob.send("live:join", {"streamId": "s1"})
    assert (await bob.next("live:joined"))["data"]["viewerCount"] == 2


@pytest_twisted.ensureDeferred
async def test_churn_gives_a_handful_of_pushes_and_the_exact_final_count(server_factory):
    server = await live_server(server_factory)
    watcher = await server.connect("watcher")
    await watcher.ok("live:join", "churn")
    assert await counts_until_quiet(watcher) == [1]
    viewers = [await server.connect(f"viewer{i}") for i in range(20)]

    async def churn(client, rounds):
        for _ in range(rounds):
            await client.send("live:join", "churn")
            await client.send("live:leave", "churn")
        await client.send("live:join", "churn")
        await client.ok("ping")

    started = asyncio.get_event_loop().time()
    await gather(
        *(churn(v, 5) for v in viewers)
    )  # 20 x (5 joins + 5 leaves + 1 join) = 220 changes
    elapsed = asyncio.get_event_loop().time() - started
    counts = await counts_until_quiet(watcher)
    assert counts[-1] == 21, counts
    assert len(counts) <= elapsed / INTERVAL + 3, (len(counts), elapsed, counts)
    assert (await watcher.ok("live:join", "churn"))["viewerCount"] == 21
    for v in viewers[:5]:
        await v.close()
    assert (await counts_until_quiet(watcher))[-1] == 16


@pytest_twisted.ensureDeferred
async def test_messages_and_reactions_reach_every_viewer(server_factory):
    server = await live_server(server_factory)
    host = await server.connect("host")
    await host.ok("live:status", {"streamId": "show", "status": "started"})
    viewers = [await server.connect(f"v{i}") for i in range(5)]
    for client in (host, *viewers):
        await client.ok("live:join", "show")
    outsider = await server.connect("outsider")

    ack = await viewers[0].ok("live:message", {"streamId": "show", "content": "hello stream"})
    for client in (host, *viewers):
        frame = (await client.next("live:message"))["data"]
        assert (
            frame["id"] == ack["id"]
            and frame["userId"] == "v0"
            and frame["content"] == "hello stream"
        )
        assert frame["streamId"] == "show" and frame["createdAt"].endswith("Z")
    await viewers[1].ok("live:reaction", {"streamId": "show", "emoji": "🔥"})
    for client in (host, *viewers):
        assert (await client.next("live:reaction"))["data"] == {
            "streamId": "show",
            "userId": "v1",
            "emoji": "🔥",
        }
    await outsider.none_before("live:message")  # the viewers' pushes were the fan-out
    await outsider.fails("live:message", {"streamId": "show", "content": "x"}, "NOT_A_MEMBER")


@pytest_twisted.ensureDeferred
async def test_only_the_host_controls_status_and_ended_streams_refuse_chat(server_factory):
    server = await live_server(server_factory)
    host = await server.connect("host")
    viewer = await server.connect("viewer")
    await viewer.ok("live:join", "gig")
    await viewer.fails(
        "live:message", {"streamId": "gig", "content": "x"}, "ROOM_NOT_FOUND"
    )  # unknown stream
    await host.ok("live:status", {"streamId": "gig", "status": "started"})  # first to start: host
    assert (await viewer.next("live:status"))["data"] == {"streamId": "gig", "status": "started"}
    await viewer.fails("live:status", {"streamId": "gig", "status": "ended"}, "FORBIDDEN")
    await viewer.ok("live:message", {"streamId": "gig", "content": "great show"})
    await host.ok("live:status", {"streamId": "gig", "status": "ended"})
    assert (await viewer.next("live:status"))["data"] == {"streamId": "gig", "status": "ended"}
    await viewer.fails("live:message", {"streamId": "gig", "content": "x"}, "FORBIDDEN")
    await viewer.fails("live:reaction", {"streamId": "gig", "emoji": "👏"}, "FORBIDDEN")
    await viewer.fails("live:status", {"streamId": "gig", "status": "bogus"}, "INVALID_MESSAGE")
    await viewer.fails("live:reaction", {"streamId": "gig"}, "INVALID_MESSAGE")
    assert (await viewer.request("ping"))["type"] == "ack"


@pytest_twisted.ensureDeferred
async def test_a_reaction_flood_is_limited_per_user(server_factory):
    server = await live_server(server_factory, reaction_rate=5)
    host = await server.connect("host")
    await host.ok("live:status", {"streamId": "s", "status": "started"})
    flooder = await server.connect("flooder")
    flooder_tab = await server.connect("flooder")
    calm = await server.connect("calm")
    for client in (host, flooder, flooder_tab, calm):
        await client.ok("live:join", "s")
    results = []
    started = asyncio.get_event_loop().time()
    for i in range(30):
        client = flooder if i % 2 else flooder_tab  # two tabs share one limit
        results.append(
            (await client.request("live:reaction", {"streamId": "s", "emoji": "x"}))["type"]
        )
    elapsed = asyncio.get_event_loop().time() - started
    # a burst of 10 plus what 5/s refilled meanwhile, however slow the machine
    assert results.count("ack") <= 10 + 5 * elapsed + 1 and "error" in results
    refused = await flooder.fails(
        "live:reaction", {"streamId": "s", "emoji": "x"}, "RATE_LIMIT_EXCEEDED"
    )
    assert "per second" in refused["data"]["message"]
    assert (await calm.request("live:reaction", {"streamId": "s", "emoji": "y"}))["type"] == "ack"
    await deferred(asyncio.sleep(0.5))
    assert (await flooder.request("live:reaction", {"streamId": "s", "emoji": "x"}))[
        "type"
    ] == "ack"


@pytest_twisted.ensureDeferred
async def test_host_and_status_survive_a_restart(tmp_path, database_url):
    config = make_config(tmp_path, database_url)
    first = await start_server(config)
    host = await first.connect("host")
    await host.ok("live:status", {"streamId": "kept", "status": "started"})
    await first.stop()
    second = await start_server(config)
    try:
        viewer = await second.connect("viewer")
        assert (await viewer.ok("live:join", "kept"))["status"] == "started"
        await viewer.fails("live:status", {"streamId": "kept", "status": "ended"}, "FORBIDDEN")
        host = await second.connect("host")
        await host.ok("live:status", {"streamId": "kept", "status": "ended"})
    finally:
        await second.stop()


@pytest_twisted.ensureDeferred
async def test_one_connections_reactions_keep_their_order(server_factory):
    """Across the expiry of the cached stream status, too (it used to let a
    later reaction overtake the ones waiting for the refresh)."""
    server = await live_server(server_factory, reaction_rate=100000)
    host = await server.connect("host")
    await host.ok("live:status", {"streamId": "order", "status": "started"})
    sender = await server.connect("sender")
    viewer = await server.connect("viewer")
    for client in (sender, viewer):
        await client.ok("live:join", "order")
    sent = []
    for burst in range(3):
        for i in range(60):
            emoji = f"{burst}-{i}"
            sent.append(emoji)
            await sender.send("live:reaction", {"streamId": "order", "emoji": emoji}, f"r{emoji}")
        await deferred(asyncio.sleep(1.1))  # let the cached status expire
    received = [(await viewer.next("live:reaction"))["data"]["emoji"] for _ in sent]
    assert received == sent
    for emoji in sent:
        assert (await sender.reply(f"r{emoji}"))["type"] == "ack"
