"""The native /api endpoints (PROTOCOL.md section 6): rooms, members,
history, posting as a user, the friend graph and streams."""

from __future__ import annotations

import pytest_twisted

from tests.test_http_api import API_KEY, http


async def native_server(server_factory):
    return await server_factory(api_key=API_KEY, presence_grace=0.2)


@pytest_twisted.ensureDeferred
async def test_credentials_on_native_endpoints(server_factory):
    server = await native_server(server_factory)
    admin = server.token("root", admin=True)
    plain = server.token("plain")
    status, created = await http(
        server, "POST", "/api/rooms", admin, {"id": "ops", "name": "Ops", "type": "private"}
    )
    assert status == 200 and created["room"]["id"] == "ops"
    admin_only = [
        ("POST", "/api/rooms", {"name": "x", "type": "public"}),
        ("PUT", "/api/rooms/ops/members/carol", None),
        ("DELETE", "/api/rooms/ops/members/carol", None),
        ("POST", "/api/rooms/ops/messages", {"userId": "carol", "content": "hi"}),
        ("PUT", "/api/friendships/a/b", None),
        ("DELETE", "/api/friendships/a/b", None),
        ("PUT", "/api/streams/s1", {"hostId": "host"}),
    ]
    for method, path, body in admin_only:
        assert (await http(server, method, path, None, body))[0] == 401, path
        assert (await http(server, method, path, plain, body))[0] == 403, path
        for credential in (admin, API_KEY):
            status, answer = await http(server, method, path, credential, body)
            assert status == 200, (path, answer)
    # admin or member
    for path in ("/api/rooms/ops", "/api/rooms/ops/messages"):
        assert (await http(server, "GET", path))[0] == 401
        assert (await http(server, "GET", path, plain))[0] == 403
        assert (await http(server, "GET", path, API_KEY))[0] == 200
    await http(server, "PUT", "/api/rooms/ops/members/plain", API_KEY)
    status, room = await http(server, "GET", "/api/rooms/ops", plain)
    assert status == 200 and "plain" in room["members"]
    assert (await http(server, "GET", "/api/rooms/nope", API_KEY))[0] == 404
    assert (await http(server, "GET", "/api/rooms/nope/messages", API_KEY))[0] == 404


@pytest_twisted.ensureDeferred
async def test_rooms_created_by_the_backend_work_over_websocket(server_factory):
    server = await native_server(server_factory)
    status, answer = await http(
        server,
        "POST",
        "/api/rooms",
        API_KEY,
        {
            "id": "team-42",
            "name": "Team",
            "description": "d",
            "type": "private",
            "members": ["alice", "bob"],
        },
    )
    assert status == 200 and answer["room"]["memberCount"] == 2
    status, answer = await http(
        server, "POST", "/api/rooms", API_KEY, {"id": "team-42", "name": "T", "type": "public"}
    )
    assert status == 409
    for body, named in (
        ({"name": "x", "type": "nope"}, "'type'"),
        ({"type": "public"}, "'name'"),
        ({"id": "dm_x", "name": "x", "type": "public"}, "'id'"),
    ):
        status, answer = await http(server, "POST", "/api/rooms", API_KEY, body)
        assert status == 400 and named in answer["error"]["message"], answer

    alice = await server.connect("alice")
    bob = await server.connect("bob")
    await alice.ok("chat:join", "team-42")
    await bob.ok("chat:join", "team-42")
    status, posted = await http(
        server,
        "POST",
        "/api/rooms/team-42/messages",
        API_KEY,
        {"userId": "system", "content": "deploy at 5"},
    )
    assert (
        status == 200 and posted["message"]["seq"] == 1 and posted["message"]["userId"] == "system"
    )
    for client in (alice, bob):
        assert (await client.next("chat:message"))["data"]["content"] == "deploy at 5"
    status, page = await http(
        server, "GET", "/api/rooms/team-42/messages?limit=10&after=0", server.token("alice")
    )
    assert status == 200 and [m["content"] for m in page["messages"]] == ["deploy at 5"]
    assert (await http(server, "GET", "/api/rooms/team-42/messages?limit=x", API_KEY))[0] == 400

    # removing a member makes their connections leave at once
    status, answer = await http(server, "DELETE", "/api/rooms/team-42/members/bob", API_KEY)
    assert status == 200 and answer == {"removed": True, "connectionsLeft": 1}
    assert (await bob.next("chat:left"))["data"] == {"chatId": "team-42", "removed": True}
    await alice.ok("chat:message", {"chatId": "team-42", "content": "bob is gone"})
    await alice.next("chat:message")
    await bob.none_before("chat:message")
    await bob.fails("chat:join", "team-42", "NOT_A_MEMBER")
    await http(server, "PUT", "/api/rooms/team-42/members/carol", API_KEY)
    carol = await server.connect("carol")
    assert (await carol.ok("chat:join", "team-42"))["room"]["memberCount"] == 2


@pytest_twisted.ensureDeferred
async def test_friendships_from_the_backend_move_presence_at_once(server_factory):
    server = await native_server(server_factory)
    alice = await server.connect("alice")
    bob = await server.connect("bob")
    status, answer = await http(server, "PUT", "/api/friendships/alice/bob", API_KEY)
    assert status == 200 and answer == {"friends": True, "created": True}
    assert (await alice.next("friend:accepted"))["data"] == {"userId": "bob"}
    assert (await alice.next("user:online"))["data"] == {"userId": "bob"}
    assert (await bob.next("user:online"))["data"] == {"userId": "alice"}
    assert (await alice.ok("friends:list"))["friends"] == [{"userId": "bob", "online": True}]
    assert (await http(server, "PUT", "/api/friendships/alice/bob", API_KEY))[1]["created"] is False
    assert (await http(server, "PUT", "/api/friendships/alice/alice", API_KEY))[0] == 400
    status, answer = await http(server, "DELETE", "/api/friendships/bob/alice", API_KEY)
    assert status == 200 and answer["removed"] is True
    assert (await alice.ok("friends:list"))["friends"] == []


@pytest_twisted.ensureDeferred
async def test_streams_with_a_host_named_by_the_backend(server_factory):
    server = await native_server(server_factory)
    status, answer = await http(
        server, "PUT", "/api/streams/concert", API_KEY, {"hostId": "star", "title": "Live!"}
    )
    assert status == 200 and answer == {
        "streamId": "concert",
        "hostId": "star",
        "status": "idle",
        "title": "Live!",
    }
    assert (await http(server, "PUT", "/api/streams/concert", API_KEY, {}))[0] == 400
    fan = await server.connect("fan")
    star = await server.connect("star")
    assert (await fan.ok("live:join", "concert"))["status"] == "idle"
    await fan.fails("live:status", {"streamId": "concert", "status": "started"}, "FORBIDDEN")
    await star.ok("live:status", {"streamId": "concert", "status": "started"})
    assert (await fan.next("live:status"))["data"]["status"] == "started"
    # the backend can hand the stream to another host
    await http(server, "PUT", "/api/streams/concert", API_KEY, {"hostId": "fan"})
    await fan.ok("live:status", {"streamId": "concert", "status": "ended"})


async def _until(predicate, timeout: float = 5.0) -> None:
    """Wait until the server has seen what the test did (a close, say)."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    waited = 0.0
    while not predicate():
        assert waited < timeout, "timed out"
        await deferLater(reactor, 0.02, lambda: None)
        waited += 0.02


@pytest_twisted.ensureDeferred
async def test_posting_into_a_dm_room_over_http_is_a_direct_message(server_factory):
    """POST /api/rooms/{dm_…}/messages is exactly a message:send from that
    user: message:receive for the recipient (and the sender's connections),
    and a stored notification for a recipient with no connection."""
    server = await native_server(server_factory)
    alice = await server.connect("alice")
    bob = await server.connect("bob")
    first = (await alice.ok("message:send", {"recipientId": "bob", "content": "hi"}))["message"]
    await bob.next("message:receive")
    dm = first["chatId"]

    status, posted = await http(
        server, "POST", f"/api/rooms/{dm}/messages", API_KEY, {"userId": "alice", "content": "web"}
    )
    assert status == 200, posted
    assert posted["message"]["senderId"] == "alice" and posted["message"]["recipientId"] == "bob"
    for client in (bob, alice):
        received = (await client.next("message:receive"))["data"]["message"]
        assert received["content"] == "web" and received["id"] == posted["message"]["id"]
        assert received["chatId"] == dm and received["seq"] == first["seq"] + 1

    # only one of the pair can post into a DM room (there is no recipient else)
    status, answer = await http(
        server, "POST", f"/api/rooms/{dm}/messages", API_KEY, {"userId": "eve", "content": "x"}
    )
    assert status == 403 and answer["error"]["code"] == "NOT_A_MEMBER"

    await bob.close()
    await _until(lambda: server.service.presence.connections("bob") == 0)
    status, posted = await http(
        server,
        "POST",
        f"/api/rooms/{dm}/messages",
        API_KEY,
        {"userId": "alice", "content": "while you were away"},
    )
    assert status == 200
    bob = await server.connect("bob")
    note = (await bob.next("notification"))["data"]
    assert note["type"] == "direct_message" and note["message"] == "while you were away"
    assert note["data"] == {"chatId": dm, "messageId": posted["message"]["id"], "senderId": "alice"}


@pytest_twisted.ensureDeferred
async def test_member_limits_at_creation_are_one_rule_for_both_entry_points(server_factory):
    """One Limits object: a user may name 100 members in chat:create (the
    max_members_per_request default), the backend 10,000 in POST
    /api/rooms; over it both refuse with PAYLOAD_TOO_LARGE (413 over HTTP),
    before anything is stored."""
    server = await native_server(server_factory)
    alice = await server.connect("alice")
    many = [f"u{n}" for n in range(1001)]
    await alice.fails(
        "chat:create",
        {"name": "big", "type": "private", "members": many[:101]},
        "PAYLOAD_TOO_LARGE",
    )
    await alice.ok("chat:create", {"name": "ok", "type": "private", "members": many[:100]})

    status, answer = await http(
        server, "POST", "/api/rooms", API_KEY, {"name": "big", "type": "private", "members": many}
    )
    assert status == 200 and answer["room"]["memberCount"] == 1001
    too_many = [f"u{n}" for n in range(10001)]
    body = {"id": "huge", "name": "huge", "type": "private", "members": too_many}
    status, answer = await http(server, "POST", "/api/rooms", API_KEY, body)
    assert status == 413 and answer["error"]["code"] == "PAYLOAD_TOO_LARGE", answer
    assert (await http(server, "GET", "/api/rooms/huge", API_KEY))[0] == 404

    body = {"userIds": too_many, "type": "chat", "data": {}}
    status, answer = await http(server, "POST", "/websocket/message/users", API_KEY, body)
    assert status == 413 and answer["error"]["code"] == "PAYLOAD_TOO_LARGE", answer
    # names and descriptions: the same limits and the same refusal as chat:create
    body = {"name": "n" * 101, "type": "public"}
    status, answer = await http(server, "POST", "/api/rooms", API_KEY, body)
    assert status == 413 and answer["error"]["code"] == "PAYLOAD_TOO_LARGE"
    await alice.fails("chat:create", {"name": "n" * 101, "type": "public"}, "PAYLOAD_TOO_LARGE")
