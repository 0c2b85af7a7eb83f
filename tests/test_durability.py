"""What survives: history across a restart, `since` recovery of exactly the
missed messages, and UNAVAILABLE while the database is away (nothing
half-done, recovery without a restart)."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import protocol
from twisted.internet.defer import maybeDeferred
from twisted.protocols.portforward import ProxyFactory

from chatd.storage.engines import engine_for
from chatd.storage.schema import migrate
from tests.conftest import make_config, requires_postgres, start_server
from tests.test_http_api import API_KEY, http


@pytest_twisted.ensureDeferred
async def test_restart_keeps_history_and_since_gets_exactly_the_missed(tmp_path, database_url):
    config = make_config(tmp_path, database_url)
    first = await start_server(config)
    alice = await first.connect("alice")
    bob = await first.connect("bob")
    room = (await alice.ok("chat:create", {"name": "r", "type": "public"}))["room"]
    await alice.ok("chat:join", room["id"])
    await bob.ok("chat:join", room["id"])
    for i in range(1, 6):
        await alice.ok("chat:message", {"chatId": room["id"], "content": f"before {i}"})
    last_seen_by_bob = max(f["data"]["seq"] for f in await bob.collect("chat:message", 5))
    await bob.close()
    for i in range(6, 9):
        await alice.ok("chat:message", {"chatId": room["id"], "content": f"missed {i}"})
    await first.stop()

    second = await start_server(config)
    try:
        bob = await second.connect("bob")
        joined = await bob.ok("chat:join", {"chatId": room["id"], "since": last_seen_by_bob})
        assert [m["content"] for m in joined["messages"]] == ["missed 6", "missed 7", "missed 8"]
        assert joined["hasMore"] is False and joined["room"]["lastSeq"] == 8
        history = await bob.ok("chat:history", {"chatId": room["id"]})
        assert [m["seq"] for m in history["messages"]] == list(range(1, 9))
        alice = await second.connect("alice")
        await alice.ok("chat:join", room["id"])
        ack = await alice.ok("chat:message", {"chatId": room["id"], "content": "after restart"})
        assert ack["seq"] == 9
        assert (await bob.next("chat:message"))["data"]["seq"] == 9
    finally:
        await second.stop()


class _Switch:
    """A TCP proxy in front of PostgreSQL that the test can cut and restore."""

    def __init__(self, host: str, port: int) -> None:
        from twisted.internet import reactor

        self.factory = ProxyFactory(host, port)
        self.factory.protocol = _TrackedProxy
        self.factory.live = set()
        self.reactor = reactor
        self.port = None
        self.number = 0

    def up(self) -> None:
        self.port = self.reactor.listenTCP(self.number, self.factory, interface="127.0.0.1")
        self.number = self.port.getHost().port

    async def down(self) -> None:
        if self.port is None:
            return
        port, self.port = self.port, None
        await maybeDeferred(port.stopListening)
        for proxy in list(self.factory.live):
            proxy.transport.abortConnection()


class _TrackedProxy(ProxyFactory.protocol):
    def connectionMade(self) -> None:
        self.factory.live.add(self)
        super().connectionMade()

    def connectionLost(self, reason: protocol.connectionDone = protocol.connectionDone) -> None:
        self.factory.live.discard(self)
        super().connectionLost(reason)


@pytest_twisted.ensureDeferred
async def test_database_outage_gives_unavailable_and_recovers(tmp_path, pg_schema_url):
    requires_postgres()
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(pg_schema_url)
    switch = _Switch(parts.hostname or "127.0.0.1", parts.port or 5432)
    switch.up()
    proxied = urlunsplit(
        parts._replace(
            netloc=f"{parts.username + '@' if parts.username else ''}127.0.0.1:{switch.number}"
        )
    )
    # Migrations block (they run before the reactor in twistd), so apply
    # them directly: the proxy lives on this very reactor.
    migrate(engine_for(pg_schema_url))
    server = await start_server(make_config(tmp_path, proxied, api_key=API_KEY), prepare=False)
    try:
        alice = await server.connect("alice")
        room = (await alice.ok("chat:create", {"name": "r", "type": "public"}))["room"]
        await alice.ok("chat:join", room["id"])
        assert (await alice.ok("chat:message", {"chatId": room["id"], "content": "one"}))[
            "seq"
        ] == 1
        await alice.next("chat:message")

        await switch.down()
        await alice.fails("chat:message", {"chatId": room["id"], "content": "lost?"}, "UNAVAILABLE")
        await alice.fails("chat:history", {"chatId": room["id"]}, "UNAVAILABLE")
        await alice.fails("chat:create", {"name": "r2", "type": "public"}, "UNAVAILABLE")
        await alice.none_before("chat:message")  # and the connection still answers
        status, body = await http(server, "GET", "/readyz")
        assert (
            status == 503
            and body["status"] == "unavailable"
            and body["storage"].startswith("unavailable")
        )
        status, body = await http(
            server, "POST", "/api/rooms", API_KEY, {"name": "x", "type": "public"}
        )
        assert status == 503 and body["error"]["code"] == "UNAVAILABLE"
        status, body = await http(
            server,
            "POST",
            "/websocket/notification",
            API_KEY,
            {"userId": "alice", "title": "t", "body": "b"},
        )
        assert status == 503 and body["error"]["code"] == "UNAVAILABLE"

        switch.up()
        status, body = await http(server, "GET", "/readyz")
        assert status == 200 and body == {"status": "ready", "storage": "ok"}
        ack = await alice.ok("chat:message", {"chatId": room["id"], "content": "two"})
        assert ack["seq"] == 2, "the refused message must not have taken a seq"
        history = await alice.ok("chat:history", {"chatId": room["id"]})
        assert [m["content"] for m in history["messages"]] == ["one", "two"]
    finally:
        await server.stop()
        await switch.down()
