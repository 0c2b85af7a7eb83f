"""One user cannot stall the others (issue 15, item 2), over real sockets on
SQLite and PostgreSQL: the request budget a user's connections share, the
room quota, the member cap, and the connection limits per user, per
address and per process.  Small settings, and refills slow enough that no
timing can let a request through that the test counts as refused."""

from __future__ import annotations

import pytest
import pytest_twisted
import socketio

from tests.test_http_api import API_KEY, http
from tests.test_socketio import SioClient
from tests.wsclient import WsClient

SLOW = 0.001
"""A refill rate no test waits long enough to see a token of."""


async def refused(server, token: str | None = None) -> tuple[dict, int | None]:
    """Open a connection the server is to refuse: its error and close code."""
    client = await WsClient.open(server.url, token=token, expect_auth=False)
    server.clients.append(client)
    error = await client.next("error")
    return error["data"], await client.closed()


async def pings(clients: list[WsClient], count: int) -> list[str]:
    """``count`` pings spread round-robin over ``clients``: each one's reply
    type, or error code, in the order sent."""
    for i in range(count):
        await clients[i % len(clients)].send("ping", None, f"p{i}")
    outcome = []
    for i in range(count):
        frame = await clients[i % len(clients)].reply(f"p{i}")
        outcome.append(frame["type"] if frame["type"] == "ack" else frame["data"]["code"])
    return outcome


# -- the budget a user's connections share ------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_users_connections_share_one_budget(server_factory):
    """The same number of requests pass whether a user sends them over one
    connection or three; each connection's own limit is far above it, and
    another user is not affected."""
    server = await server_factory(user_rate_limit=SLOW, user_rate_burst=12)
    alice = await server.connect("alice")
    carol = [await server.connect("carol") for _ in range(3)]
    bob = await server.connect("bob")
    over_one = await pings([alice], 15)
    over_three = await pings(carol, 15)
    assert over_one == ["ack"] * 12 + ["RATE_LIMIT_EXCEEDED"] * 3
    # Across connections the server may read the frames in another order
    # than they were sent: the totals are what is shared.
    assert sorted(over_three) == sorted(over_one)
    assert await pings([bob], 12) == ["ack"] * 12
    for client in [alice, *carol]:
        assert client.is_open, "the user's limit refuses; it does not close"
    # A new connection of the same user starts from the same, empty budget.
    late = await server.connect("carol")
    assert await pings([late], 1) == ["RATE_LIMIT_EXCEEDED"]


@pytest_twisted.ensureDeferred
async def test_expensive_requests_cost_their_weight(server_factory):
    """chat:create costs 1 + its members: with a budget of 30, two creations
    of 10 members pass, a third does not, a ping (1) still does."""
    server = await server_factory(user_rate_limit=SLOW, user_rate_burst=30)
    alice = await server.connect("alice")
    members = [f"m{i}" for i in range(10)]
    create = {"name": "heavy", "type": "private", "members": members}
    await alice.ok("chat:create", create)
    await alice.ok("chat:create", create)
    frame = await alice.fails("chat:create", create, "RATE_LIMIT_EXCEEDED")
    assert "retry in" in frame["data"]["message"]
    await alice.ok("ping")


@pytest_twisted.ensureDeferred
async def test_a_users_excess_is_refused_at_once_not_queued_behind_storage(server_factory):
    """A flood of chat:create: the ones over the budget are answered before
    the ping sent after them (refused in their own turn, never queued for
    storage), the accepted ones all succeed, and another user's message is
    stored and acked meanwhile."""
    server = await server_factory(user_rate_limit=SLOW, user_rate_burst=67)
    mallory = await server.connect("mallory")
    bob = await server.connect("bob")
    room = (await bob.ok("chat:create", {"name": "bob's", "type": "public"}))["room"]["id"]
    await bob.ok("chat:join", {"chatId": room})
    create = {"name": "flood", "type": "private", "members": [f"m{i}" for i in range(10)]}
    for i in range(40):
        await mallory.send("chat:create", create, f"c{i}")
    await mallory.send("ping", None, "barrier")
    await mallory.reply("barrier")
    before_barrier = [f for f in mallory.inbox if f.get("type") == "error"]
    assert sorted(int(f["id"][1:]) for f in before_barrier) == list(range(6, 40))
    assert {f["data"]["code"] for f in before_barrier} == {"RATE_LIMIT_EXCEEDED"}
    ack = await bob.ok("chat:message", {"chatId": room, "content": "still here"})
    assert ack["seq"] == 1
    for i in range(6):
        assert (await mallory.reply(f"c{i}"))["type"] == "ack"


# -- quotas -------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_room_quota_counts_a_users_rooms_from_storage(server_factory):
    server = await server_factory(max_rooms_per_user=3, api_key=API_KEY)
    bob = await server.connect("bob")
    alice, alice_tab = await server.connect("alice"), await server.connect("alice")
    # Rooms alice did not create (the backend's, one she is a member of) do not count.
    body = {"name": "backend's", "type": "private", "members": ["alice"]}
    assert (await http(server, "POST", "/api/rooms", API_KEY, body))[0] == 200
    await alice.ok("message:send", {"recipientId": "bob", "content": "a DM room is no room"})
    for i in range(2):
        await alice.ok("chat:create", {"name": f"mine {i}", "type": "public"})
    await alice_tab.ok("chat:create", {"name": "mine 2", "type": "private"})
    over = {"name": "one too many", "type": "public"}
    frame = await alice.fails("chat:create", over, "RATE_LIMIT_EXCEEDED")
    assert "quota" in frame["data"]["message"] and "3 rooms" in frame["data"]["message"]
    await alice_tab.fails("chat:create", over, "RATE_LIMIT_EXCEEDED")
    await bob.ok("chat:create", {"name": "bob's own", "type": "public"})
    await alice.ok("ping")
    # Counted from storage: another server on the same database refuses too.
    other = await server_factory(max_rooms_per_user=3)
    alice_elsewhere = await other.connect("alice")
    await alice_elsewhere.fails("chat:create", over, "RATE_LIMIT_EXCEEDED")
    roomy = await server_factory(max_rooms_per_user=4)
    await (await roomy.connect("alice")).ok("chat:create", over)


@pytest_twisted.ensureDeferred
async def test_the_member_cap_per_request_defaults_to_100(server):
    alice = await server.connect("alice")
    members = [f"u{i}" for i in range(101)]
    frame = await alice.fails(
        "chat:create", {"name": "big", "type": "private", "members": members}, "PAYLOAD_TOO_LARGE"
    )
    assert "at most 100 members" in frame["data"]["message"]
    room = await alice.ok(
        "chat:create", {"name": "ok", "type": "private", "members": members[:100]}
    )
    assert room["room"]["memberCount"] == 101


@pytest_twisted.ensureDeferred
async def test_the_member_cap_is_a_setting(server_factory):
    server = await server_factory(max_members_per_request=3)
    alice = await server.connect("alice")
    create = {"name": "r", "type": "private", "members": ["a", "b", "c", "d"]}
    await alice.fails("chat:create", create, "PAYLOAD_TOO_LARGE")
    create["members"] = ["a", "b", "c"]
    await alice.ok("chat:create", create)


# -- connection limits ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_connections_of_a_user_are_capped_and_the_others_untouched(server_factory):
    server = await server_factory(max_connections_per_user=2)
    first, second = await server.connect("alice"), await server.connect("alice")
    error, code = await refused(server, server.token("alice"))
    assert code == 4013
    assert error["code"] == "RATE_LIMIT_EXCEEDED"
    assert error["message"] == "too many connections for this user"
    await first.ok("ping")
    await second.ok("ping")
    bob = await server.connect("bob")
    await bob.ok("ping")
    # An auth frame is refused the same way, with its id.
    late = await WsClient.open(server.url)
    server.clients.append(late)
    await late.fails("auth", {"token": server.token("alice")}, "RATE_LIMIT_EXCEEDED")
    assert await late.closed() == 4013
    # A closed connection frees its place.
    await second.close()
    again = await server.connect("alice")
    await again.ok("ping")


@pytest_twisted.ensureDeferred
async def test_the_connections_from_one_address_are_capped(server_factory):
    server = await server_factory(max_connections_per_ip=2, ip_limit_exempt="")
    alice = await server.connect("alice")
    anonymous = await WsClient.open(server.url)  # counted before it authenticates
    server.clients.append(anonymous)
    error, code = await refused(server, server.token("bob"))
    assert code == 4013
    assert error == {
        "code": "RATE_LIMIT_EXCEEDED",
        "message": "too many connections from this address",
    }
    await alice.ok("ping")
    await anonymous.ok("ping")
    await anonymous.close()
    bob = await server.connect("bob")
    await bob.ok("ping")


@pytest_twisted.ensureDeferred
async def test_loopback_is_exempt_from_the_address_limit_by_default(server_factory):
    """Behind a reverse proxy on the same host every client comes from
    loopback: by default that address is not counted."""
    server = await server_factory(max_connections_per_ip=1)
    clients = [await server.connect(f"user{i}") for i in range(3)]
    for client in clients:
        await client.ok("ping")


@pytest_twisted.ensureDeferred
async def test_the_process_limit_refuses_with_1013(server_factory):
    server = await server_factory(max_connections=2)
    alice, bob = await server.connect("alice"), await server.connect("bob")
    error, code = await refused(server, server.token("carol"))
    assert code == 1013 and error["code"] == "RATE_LIMIT_EXCEEDED"
    await alice.ok("ping")
    await bob.close()
    carol = await server.connect("carol")
    await carol.ok("ping")


@pytest_twisted.ensureDeferred
async def test_socketio_sessions_count_and_are_refused_at_connect(server_factory):
    """One hub for every binding: a Socket.IO session counts towards the
    user's limit, and a Socket.IO client over it gets the refusal as its
    CONNECT_ERROR."""
    server = await server_factory(max_connections_per_user=1)
    first, second = SioClient(), SioClient()
    try:
        await first.connect(server.http, auth={"token": server.token("alice")})
        assert (await first.next("authenticated"))["userId"] == "alice"
        error, code = await refused(server, server.token("alice"))
        assert code == 4013 and error["message"] == "too many connections for this user"
        with pytest.raises(socketio.exceptions.ConnectionError):
            await second.connect(server.http, auth={"token": server.token("alice")})
        await second.wait_until(lambda: bool(second.connect_errors))
        assert second.connect_errors[0]["data"]["code"] == "RATE_LIMIT_EXCEEDED"
        assert second.connect_errors[0]["message"] == "too many connections for this user"
        assert "timestamp" in await first.ok("ping")
    finally:
        await first.close()
        await second.close()
