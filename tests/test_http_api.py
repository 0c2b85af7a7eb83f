"""The HTTP API for backends (PROTOCOL.md section 6, seed-compatible
endpoints), over real HTTP on the same port as /ws: credentials, bodies,
and pushes that arrive on real WebSockets."""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers

API_KEY = "backend-api-key-0123456789"


async def http(
    server,
    method: str,
    path: str,
    token: str | None = None,
    body: Any = None,
    raw: bytes | None = None,
) -> tuple[int, Any]:
    from io import BytesIO

    from twisted.internet import reactor

    headers = Headers({b"content-type": [b"application/json"]})
    if token is not None:
        headers.addRawHeader(b"authorization", f"Bearer {token}".encode())
    payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    producer = FileBodyProducer(BytesIO(payload)) if payload is not None else None
    response = await Agent(reactor).request(
        method.encode(), (server.http + path).encode(), headers, producer
    )
    text = await readBody(response)
    return response.code, json.loads(text) if text else None


@pytest.fixture
def api_server(server_factory):
    return server_factory(api_key=API_KEY, presence_grace=0.2)


ADMIN_ENDPOINTS = [
    ("POST", "/websocket/message/user", {"userId": "u1", "type": "chat", "data": {"x": 1}}),
    ("POST", "/websocket/message/users", {"userIds": ["u1", "u2"], "type": "chat", "data": {}}),
    ("POST", "/websocket/message/broadcast", {"type": "system", "data": {"message": "hi"}}),
    ("POST", "/websocket/notification", {"userId": "u1", "title": "T", "body": "B"}),
    ("GET", "/websocket/users/connected", None),
    ("GET", "/websocket/users/u1/status", None),
    ("DELETE", "/websocket/users/u1/disconnect", None),
]


@pytest_twisted.ensureDeferred
async def test_credentials_on_every_endpoint(api_server):
    server = await api_server
    admin = server.token("root", admin=True)
    plain = server.token("plain")
    for method, path, body in ADMIN_ENDPOINTS:
        status, answer = await http(server, method, path, None, body)
        assert status == 401 and answer["error"]["code"] == "UNAUTHORIZED", (path, answer)
        status, answer = await http(server, method, path, "not-a-token", body)
        assert status == 401, (path, answer)
        status, answer = await http(server, method, path, plain, body)
        assert status == 403 and answer["error"]["code"] == "FORBIDDEN", (path, answer)
        for credential in (admin, API_KEY):
            status, answer = await http(server, method, path, credential, body)
            assert status == 200, (path, status, answer)
    status, me = await http(server, "GET", "/websocket/me/status", plain)
    assert status == 200 and me == {
        "userId": "plain",
        "online": False,
        "connections": 0,
        "lastSeen": None,
    }
    assert (await http(server, "GET", "/websocket/me/status"))[0] == 401
    assert (await http(server, "GET", "/websocket/me/status", API_KEY))[0] == 400


@pytest_twisted.ensureDeferred
async def test_bad_requests_name_the_field(api_server):
    server = await api_server
    key = API_KEY
    cases = [
        ("/websocket/message/user", {"type": "chat", "data": {}}, "'userId'"),
        ("/websocket/message/user", {"userId": 5, "type": "chat", "data": {}}, "'userId'"),
        ("/websocket/message/user", {"userId": "u", "data": {}}, "'type'"),
        ("/websocket/message/user", {"userId": "u", "type": "chat"}, "'data'"),
        ("/websocket/message/users", {"userIds": "u", "type": "chat", "data": {}}, "'userIds'"),
        ("/websocket/message/users", {"userIds": [], "type": "chat", "data": {}}, "'userIds'"),
        ("/websocket/notification", {"userId": "u", "body": "b"}, "'title'"),
        ("/websocket/message/broadcast", [1, 2], "JSON object"),
    ]
    for path, body, named in cases:
        status, answer = await http(server, "POST", path, key, body)
        assert status == 400 and named in answer["error"]["message"], (path, body, answer)
    status, answer = await http(server, "POST", "/websocket/message/broadcast", key, raw=b"{nope")
    assert status == 400 and "JSON" in answer["error"]["message"]
    status, answer = await http(
        server,
        "POST",
        "/websocket/message/broadcast",
        key,
        raw=b'{"type":"x","data":"' + b"a" * (1 << 20) + b'"}',
    )
    assert status == 413 and answer["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert (await http(server, "GET", "/websocket/nothing-here", key))[0] == 404
    assert (await http(server, "GET", "/websocket/message/user", key))[0] == 405


@pytest_twisted.ensureDeferred
async def test_pushes_reach_real_websockets(api_server):
    server = await api_server
    alice = await server.connect("alice")
    alice2 = await server.connect("alice")
    bob = await server.connect("bob")

    status, answer = await http(
        server,
        "POST",
        "/websocket/message/user",
        API_KEY,
        {"userId": "alice", "type": "chat", "data": {"message": "Hello!"}},
    )
    assert status == 200 and answer == {"delivered": 2}
    for client in (alice, alice2):
        pushed = (await client.next("message"))["data"]
        assert (
            pushed["type"] == "chat"
            and pushed["data"] == {"message": "Hello!"}
            and pushed["timestamp"]
        )
    await bob.none_before("message")

    answer = (
        await http(
            server,
            "POST",
            "/websocket/message/users",
            API_KEY,
            {"userIds": ["alice", "bob", "ghost"], "type": "announcement", "data": {"t": 1}},
        )
    )[1]
    assert answer == {"delivered": 3}
    for client in (alice, alice2, bob):
        assert (await client.next("message"))["data"]["type"] == "announcement"

    answer = (
        await http(
            server,
            "POST",
            "/websocket/message/broadcast",
            API_KEY,
            {"type": "system", "data": {"level": "info"}},
        )
    )[1]
    assert answer == {"delivered": 3}
    for client in (alice, alice2, bob):
        assert (await client.next("message"))["data"]["data"] == {"level": "info"}

    status, answer = await http(
        server,
        "POST",
        "/websocket/notification",
        API_KEY,
        {"userId": "bob", "title": "New", "body": "You have mail", "data": {"p": "n"}},
    )
    assert status == 200 and answer["delivered"] == 1 and answer["id"]
    note = (await bob.next("notification"))["data"]
    assert (
        note["id"] == answer["id"] and note["title"] == "New" and note["message"] == "You have mail"
    )
    assert note["data"] == {"p": "n"} and note["type"] == "notification"


@pytest_twisted.ensureDeferred
async def test_notification_to_an_offline_user_is_kept(api_server):
    server = await api_server
    status, answer = await http(
        server,
        "POST",
        "/websocket/notification",
        API_KEY,
        {"userId": "carol", "title": "While away", "body": "kept"},
    )
    assert status == 200 and answer["delivered"] == 0
    carol = await server.connect("carol")
    assert (await carol.next("notification"))["data"]["id"] == answer["id"]


@pytest_twisted.ensureDeferred
async def test_status_connected_and_disconnect(api_server):
    server = await api_server
    admin = server.token("root", admin=True)
    alice = await server.connect("alice")
    alice2 = await server.connect("alice")
    bob = await server.connect("bob")
    connected = (await http(server, "GET", "/websocket/users/connected", admin))[1]
    assert connected == {
        "users": [{"userId": "alice", "connections": 2}, {"userId": "bob", "connections": 1}],
        "count": 2,
    }
    status = (await http(server, "GET", "/websocket/users/alice/status", admin))[1]
    assert status == {"userId": "alice", "online": True, "connections": 2, "lastSeen": None}
    never = (await http(server, "GET", "/websocket/users/nobody/status", admin))[1]
    assert never == {"userId": "nobody", "online": False, "connections": 0, "lastSeen": None}
    mine = (await http(server, "GET", "/websocket/me/status", server.token("bob")))[1]
    assert mine["online"] is True and mine["connections"] == 1

    answer = (await http(server, "DELETE", "/websocket/users/alice/disconnect", admin))[1]
    assert answer == {"disconnected": 2}
    assert await alice.closed() == 4003 and await alice2.closed() == 4003
    assert bob.is_open
    from tests.test_social import settle

    await settle(0.5)
    after = (await http(server, "GET", "/websocket/users/alice/status", admin))[1]
    assert (
        after["online"] is False and after["connections"] == 0 and after["lastSeen"].endswith("Z")
    )


@pytest_twisted.ensureDeferred
async def test_the_status_api_tells_the_story_the_presence_pushes_tell(server_factory):
    """Right after the last connection closes the user is still online
    (the grace period: no user:offline yet, so no lastSeen); once the push
    has gone out, offline with its lastSeen."""
    server = await server_factory(api_key=API_KEY, presence_grace=1.0)
    bob = await server.connect("bob")
    alice = await server.connect("alice")
    await bob.ok("friend:request", {"userId": "alice"})
    await alice.ok("friend:accept", {"userId": "bob"})
    await alice.close()
    during = (await http(server, "GET", "/websocket/users/alice/status", API_KEY))[1]
    assert during == {"userId": "alice", "online": True, "connections": 0, "lastSeen": None}
    offline = await bob.next("user:offline", timeout=5)
    after = (await http(server, "GET", "/websocket/users/alice/status", API_KEY))[1]
    assert after["online"] is False and after["connections"] == 0
    assert after["lastSeen"] == offline["data"]["lastSeen"]


@pytest_twisted.ensureDeferred
async def test_readyz_answers_when_storage_does(api_server):
    server = await api_server
    status, body = await http(server, "GET", "/readyz")
    assert status == 200 and body == {"status": "ready", "storage": "ok"}


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics")


async def _metrics_text(server, token=None) -> tuple[int, str, bytes]:
    from twisted.internet import reactor

    headers = Headers()
    if token:
        headers.addRawHeader(b"authorization", f"Bearer {token}".encode())
    response = await Agent(reactor).request(b"GET", (server.http + "/metrics").encode(), headers)
    body = await readBody(response)
    content_type = response.headers.getRawHeaders(b"content-type", [b""])[0]
    return response.code, body.decode(), content_type


@pytest_twisted.ensureDeferred
async def test_metrics_count_what_happens(api_server):
    server = await api_server
    alice = await server.connect("alice")
    bob = await server.connect("bob")
    room = (await alice.ok("chat:create", {"name": "m", "type": "public"}))["room"]["id"]
    await alice.ok("chat:join", room)
    await bob.ok("chat:join", room)
    for i in range(3):
        await alice.ok("chat:message", {"chatId": room, "content": f"m{i}"})
    await bob.fails("chat:join", "r_missing", "ROOM_NOT_FOUND")
    await bob.collect("chat:message", 3)
    status, text, content_type = await _metrics_text(server)
    assert status == 200 and content_type.startswith(b"text/plain")
    assert _metric(text, "chatd_connections") == 2
    assert 'chatd_connections_by_transport{transport="ws"} 2.0' in text
    assert _metric(text, "chatd_authenticated_users") == 2
    assert _metric(text, "chatd_rooms_joined") == 1
    assert 'chatd_events_in_total{type="chat:message"} 3.0' in text
    assert 'chatd_errors_total{code="ROOM_NOT_FOUND"} 1.0' in text
    assert _metric(text, "chatd_fanout_deliveries_total") >= 6
    assert _metric(text, "chatd_pushes_out_total") >= 3
    assert _metric(text, "chatd_message_store_seconds_count") >= 1
    assert _metric(text, "chatd_message_batch_size_sum") == 3
    assert _metric(text, "chatd_broker_publish_seconds_count") >= 3


@pytest_twisted.ensureDeferred
async def test_metrics_can_require_the_api_key(server_factory):
    server = await server_factory(api_key=API_KEY, metrics_require_auth=True)
    assert (await _metrics_text(server))[0] == 401
    assert (await _metrics_text(server, server.token("plain")))[0] == 401
    assert (await _metrics_text(server, API_KEY))[0] == 200
    assert (await _metrics_text(server, server.token("root", admin=True)))[0] == 200


@pytest_twisted.ensureDeferred
async def test_console_page_and_demo_tokens(server_factory):
    from twisted.internet import reactor

    configured = await server_factory()  # a configured secret: no demo tokens
    response = await Agent(reactor).request(b"GET", (configured.http + "/").encode())
    page = await readBody(response)
    assert response.code == 200 and b"chatd console" in page
    csp = response.headers.getRawHeaders(b"content-security-policy")[0]
    assert b"default-src 'none'" in csp and b"connect-src 'self' ws: wss:" in csp
    assert (await http(configured, "GET", "/console/demo-token?user=demo-x"))[0] == 404

    embedded = await server_factory(jwt_secret=None)  # the embedded default generates one
    status, body = await http(embedded, "GET", "/console/demo-token?user=demo-x")
    assert status == 200 and body["userId"] == "demo-x"
    client = await embedded.connect_with_token(body["token"])
    assert client.user_id == "demo-x"
    assert (await http(embedded, "GET", "/console/demo-token?user=alice"))[0] == 400


@pytest_twisted.ensureDeferred
async def test_notification_sizes_are_limited(api_server):
    server = await api_server
    for title, body in (("t" * 201, "b"), ("t", "b" * 4001)):
        status, answer = await http(
            server,
            "POST",
            "/websocket/notification",
            API_KEY,
            {"userId": "u", "title": title, "body": body},
        )
        assert status == 413 and answer["error"]["code"] == "PAYLOAD_TOO_LARGE"
        assert "'title' is limited to 200 and 'body' to 4000" in answer["error"]["message"]
    status, _ = await http(
        server,
        "POST",
        "/websocket/notification",
        API_KEY,
        {"userId": "u", "title": "t" * 200, "body": "b" * 4000},
    )
    assert status == 200


# -- POST /api/friend-requests: a friend request made in the backend ------------------------


async def ask(server, body: Any, credential: str = API_KEY) -> tuple[int, Any]:
    return await http(server, "POST", "/api/friend-requests", credential, body)


@pytest_twisted.ensureDeferred
async def test_friend_requests_from_the_backend_need_admin_credentials(api_server):
    server = await api_server
    body = {"fromUserId": "alice", "toUserId": "bob"}
    assert (await ask(server, body, None))[0] == 401
    assert (await ask(server, body, "not-a-token"))[0] == 401
    status, answer = await ask(server, body, server.token("alice"))
    assert status == 403 and answer["error"]["code"] == "FORBIDDEN"
    status, answer = await ask(server, body, server.token("root", admin=True))
    assert status == 200 and answer["status"] == "requested"
    assert (await ask(server, body))[1]["status"] == "pending"  # the API key


@pytest_twisted.ensureDeferred
async def test_a_backend_friend_request_reaches_the_target_like_a_clients(api_server):
    server = await api_server
    alice = await server.connect("alice")
    bob = await server.connect("bob")
    status, answer = await ask(server, {"fromUserId": "alice", "toUserId": "bob"})
    assert status == 200
    assert answer == {"fromUserId": "alice", "toUserId": "bob", "status": "requested"}
    assert (await bob.next("friend:request"))["data"] == {"fromUserId": "alice"}
    note = (await bob.next("notification"))["data"]
    assert note["type"] == "friend_request" and note["data"] == {"fromUserId": "alice"}
    assert note["message"] == "alice sent you a friend request"
    listed = await bob.ok("friends:list")
    assert [r["userId"] for r in listed["incoming"]] == ["alice"]
    assert [r["userId"] for r in (await alice.ok("friends:list"))["outgoing"]] == ["bob"]
    # Asking again changes nothing and pushes nothing (as friend:request).
    assert (await ask(server, {"fromUserId": "alice", "toUserId": "bob"}))[1]["status"] == "pending"
    await bob.nothing("friend:request")
    await bob.ok("friend:accept", {"userId": "alice"})
    assert (await alice.next("friend:accepted"))["data"] == {"userId": "bob"}
    again = await ask(server, {"fromUserId": "bob", "toUserId": "alice"})
    assert again[1]["status"] == "friends"
    await alice.nothing("friend:request")


@pytest_twisted.ensureDeferred
async def test_a_backend_friend_request_waits_for_an_offline_target(api_server):
    server = await api_server
    status, answer = await ask(server, {"fromUserId": "dave", "toUserId": "carol"})
    assert status == 200 and answer["status"] == "requested"
    carol = await server.connect("carol")
    note = (await carol.next("notification"))["data"]
    assert note["type"] == "friend_request" and note["data"] == {"fromUserId": "dave"}
    assert [r["userId"] for r in (await carol.ok("friends:list"))["incoming"]] == ["dave"]
    # The other way round it accepts the pending request: both are friends.
    status, answer = await ask(server, {"fromUserId": "carol", "toUserId": "dave"})
    assert status == 200 and answer["status"] == "accepted"
    assert (await carol.next("friend:accepted"))["data"] == {"userId": "dave"}
    assert [f["userId"] for f in (await carol.ok("friends:list"))["friends"]] == ["dave"]


@pytest_twisted.ensureDeferred
async def test_a_bad_backend_friend_request_is_refused_and_changes_nothing(api_server):
    server = await api_server
    bob = await server.connect("bob")
    cases = [
        ({"toUserId": "bob"}, "'fromUserId' is required"),
        ({"fromUserId": "alice"}, "'toUserId' is required"),
        ({"fromUserId": 7, "toUserId": "bob"}, "'fromUserId' has the wrong type"),
        ({"fromUserId": "alice", "toUserId": ["bob"]}, "'toUserId' has the wrong type"),
        ({"fromUserId": "", "toUserId": "bob"}, "'fromUserId' must be a user id"),
        ({"fromUserId": "alice", "toUserId": "   "}, "'toUserId' must be a user id"),
        ({"fromUserId": "a" * 129, "toUserId": "bob"}, "1 to 128 characters"),
        ({"fromUserId": "alice", "toUserId": "bob\x00"}, "NUL"),
        ({"fromUserId": "bob", "toUserId": "bob"}, "must be different users"),
        (["alice", "bob"], "JSON object"),
        (None, "JSON object"),
    ]
    for body, message in cases:
        status, answer = await ask(server, body)
        assert status == 400, (body, answer)
        assert (
            answer["error"]["code"] == "INVALID_MESSAGE" and message in answer["error"]["message"]
        )
    await bob.nothing("friend:request")
    listed = await bob.ok("friends:list")
    assert listed == {"friends": [], "incoming": [], "outgoing": []}
    assert (await http(server, "GET", "/api/friend-requests", API_KEY))[0] == 405
