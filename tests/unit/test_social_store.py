"""The social queries of the store on SQLite and PostgreSQL: who is in a
presence audience, the friend-request state machine, notifications."""

from __future__ import annotations

import pytest_twisted

from chatd.domain.models import Notification
from tests.unit.test_store import db_url, make_room, open_store, store  # noqa: F401  (fixtures)


@pytest_twisted.ensureDeferred
async def test_presence_audience_is_friends_and_room_mates_only(store):  # noqa: F811
    await make_room(store, "alice", ["mate"])
    await make_room(store, "other", ["stranger"])
    assert await store.request_friend("alice", "friend", 1) == "requested"
    assert await store.presence_audience("alice") == ["mate"]  # a request is not a friendship
    assert await store.accept_friend("friend", "alice", 2) is True
    assert await store.presence_audience("alice") == ["friend", "mate"]
    assert await store.presence_audience("friend") == ["alice"]
    assert await store.in_audience("mate", "alice") and await store.in_audience("friend", "alice")
    assert not await store.in_audience("stranger", "alice")
    assert await store.remove_friend("alice", "friend") is True
    assert await store.presence_audience("friend") == []


@pytest_twisted.ensureDeferred
async def test_friend_request_state_machine(store):  # noqa: F811
    assert await store.request_friend("a", "b", 1) == "requested"
    assert await store.request_friend("a", "b", 2) == "pending"
    lists = await store.friend_lists("b")
    assert [r.user_id for r in lists.incoming] == ["a"] and lists.friends == []
    assert [r.user_id for r in (await store.friend_lists("a")).outgoing] == ["b"]
    assert await store.request_friend("b", "a", 3) == "accepted"  # mutual
    assert (await store.friend_lists("a")).friends == ["b"]
    assert (await store.friend_lists("b")).incoming == []
    assert await store.request_friend("a", "b", 4) == "friends"
    assert await store.accept_friend("a", "b", 5) is False
    assert await store.request_friend("c", "a", 6) == "requested"
    assert await store.decline_friend("a", "c") is True
    assert await store.decline_friend("a", "c") is False
    assert await store.set_friendship("x", "y", True, 7) is True
    assert await store.are_friends("y", "x")
    assert await store.set_friendship("x", "y", False, 8) is True
    assert not await store.are_friends("x", "y")


@pytest_twisted.ensureDeferred
async def test_users_and_last_seen(store):  # noqa: F811
    assert not await store.user_exists("alice")
    await store.touch_user("alice", "Alice", 10)
    await store.touch_user("alice", None, 20)  # a token without a name keeps the old one
    assert await store.user_exists("alice")
    assert await store.last_seen("alice") is None
    await store.set_last_seen("alice", 30)
    assert await store.last_seen("alice") == 30
    await make_room(store, "bob", ["carol"])
    assert await store.user_exists("carol")  # a room member is known before connecting


@pytest_twisted.ensureDeferred
async def test_notifications_unread_oldest_first_until_acked(store):  # noqa: F811
    for i, created in enumerate((30, 10, 20)):
        await store.add_notification(
            Notification(f"n{i}", "alice", "t", "title", "m", {"i": i} if i else None, created)
        )
    await store.add_notification(Notification("other", "bob", "t", "title", "m", None, 5))
    unread = await store.unread_notifications("alice", 100)
    assert (
        [n.id for n in unread] == ["n1", "n2", "n0"]
        and unread[0].data == {"i": 1}
        and unread[2].data is None
    )
    assert await store.ack_notification("alice", "n1", 40) is True
    assert await store.ack_notification("alice", "n1", 50) is True  # twice is fine
    assert await store.ack_notification("bob", "n2", 50) is False  # not bob's
    assert [n.id for n in await store.unread_notifications("alice", 100)] == ["n2", "n0"]
    assert [n.id for n in await store.unread_notifications("alice", 1)] == ["n2"]


@pytest_twisted.ensureDeferred
async def test_open_and_close_session_are_one_transaction_each(store):  # noqa: F811
    await store.add_notification(Notification("n1", "alice", "t", "title", "m", None, 5))
    waiting = await store.open_session("alice", "Alice", 10, 100)
    assert [n.id for n in waiting] == ["n1"] and await store.user_exists("alice")
    assert [n.id for n in await store.open_session("alice", None, 20, 100)] == [
        "n1"
    ]  # name kept, no write
    await make_room(store, "alice", ["bob"])
    assert await store.close_session("alice", 30) == ["bob"]
    assert await store.last_seen("alice") == 30
