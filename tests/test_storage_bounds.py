"""What one user can make the store keep for others stays bounded: pending
friend requests per asker (``max_pending_friend_requests``) and stored
notifications per recipient (``max_notifications_per_user``)."""

from __future__ import annotations

import json

import pytest_twisted

from tests.test_http_api import API_KEY, http
from tests.test_http_limits import RawHttp, in_thread


async def stored(server, table: str, column: str, value: str) -> int:
    store = server.service.store

    def count(cur, v):
        cur.execute(store.engine.sql(f"SELECT COUNT(*) FROM {table} WHERE {column} = ?"), (v,))
        return int(cur.fetchone()[0])

    return await store.run(count, value)


def _post_friend_request(port: int, body: dict) -> tuple[int, dict[str, str], bytes]:
    client = RawHttp(port)
    try:
        payload = json.dumps(body).encode()
        head = client.request_head(
            "POST",
            "/api/friend-requests",
            {
                "Authorization": f"Bearer {API_KEY}",
                "Content-Type": "application/json",
                "Content-Length": str(len(payload)),
                "Connection": "close",
            },
        )
        client.send(head + payload)
        return client.response()
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_pending_friend_requests_are_capped_per_asker(server_factory):
    server = await server_factory(max_pending_friend_requests=3, api_key=API_KEY)
    mallory = await server.connect("mallory")
    for n in range(5):
        await (await server.connect(f"u{n}")).close()
    for n in range(3):
        await mallory.ok("friend:request", {"userId": f"u{n}"})
    await mallory.fails("friend:request", {"userId": "u3"}, "RATE_LIMIT_EXCEEDED")
    assert await stored(server, "friend_requests", "from_user", "mallory") == 3
    assert await stored(server, "notifications", "user_id", "u3") == 0
    await mallory.ok("friend:request", {"userId": "u0"})  # asking again is no new request
    # A backend's request on mallory's behalf meets the same cap: 429 + Retry-After.
    status, headers, body = await in_thread(
        _post_friend_request, server.port, {"fromUserId": "mallory", "toUserId": "u4"}
    )
    assert status == 429 and json.loads(body)["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    assert int(headers["retry-after"]) >= 1
    # An answer, or a withdrawal, frees a place.
    await mallory.ok("friend:remove", {"userId": "u0"})
    await mallory.ok("friend:request", {"userId": "u3"})
    assert await stored(server, "friend_requests", "from_user", "mallory") == 3
    assert mallory.is_open


@pytest_twisted.ensureDeferred
async def test_stored_notifications_keep_the_newest_per_user(server_factory):
    server = await server_factory(max_notifications_per_user=5, api_key=API_KEY)
    for n in range(8):
        status, _ = await http(
            server,
            "POST",
            "/websocket/notification",
            API_KEY,
            {"userId": "bob", "title": f"t{n}", "body": "b"},
        )
        assert status == 200
    assert await stored(server, "notifications", "user_id", "bob") == 5
    bob = await server.connect("bob")
    notes = [(await bob.next("notification"))["data"] for _ in range(5)]
    assert [n["title"] for n in notes] == ["t3", "t4", "t5", "t6", "t7"]
    await bob.none_before("notification")
    # Read ones go first: bob acknowledges two, two more arrive, and every
    # one he has not read yet is kept.
    for note in notes[:2]:
        await bob.ok("notification:ack", {"id": note["id"]})
    for title in ("t8", "t9"):
        status, _ = await http(
            server,
            "POST",
            "/websocket/notification",
            API_KEY,
            {"userId": "bob", "title": title, "body": "b"},
        )
        assert status == 200
    store = server.service.store

    def titles(cur):
        cur.execute(
            store.engine.sql("SELECT title FROM notifications WHERE user_id = ? ORDER BY title"),
            ("bob",),
        )
        return [row[0] for row in cur.fetchall()]

    assert await store.run(titles) == ["t5", "t6", "t7", "t8", "t9"]
    assert await stored(server, "notifications", "user_id", "carol") == 0  # others untouched
