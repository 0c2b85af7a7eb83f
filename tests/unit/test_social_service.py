"""Direct messages and friends without a socket: every way into a DM room
gives the same pushes; an offline recipient gets a stored notification;
dm_policy "friends"; friend requests."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import succeed

from chatd.domain.direct import dm_room_id
from chatd.domain.models import ActingUser
from chatd.domain.social import SocialService
from chatd.errors import ChatError, ErrorCode
from tests.unit.domain_world import T0_ISO, World, build_world


@pytest_twisted.async_yield_fixture
async def world(tmp_path):
    world = build_world(str(tmp_path / "social.sqlite3"))
    yield world
    await world.store.close()


@pytest_twisted.async_yield_fixture
async def friends_only(tmp_path):
    world = build_world(str(tmp_path / "friends.sqlite3"), dm_policy="friends")
    yield world
    await world.store.close()


class QuietAnnouncer:
    """Presence announcing is not under test here: only what a new
    friendship tells the pair (each hears the other is online)."""

    def __init__(self, world: World) -> None:
        self._world = world

    def status(self, user_id: str, online: Any) -> Any:
        return succeed({"userIds": []})

    def befriended(self, a: str, b: str, online: Any) -> None:
        for subject, viewer in ((a, b), (b, a)):
            if online.is_online(subject):
                self._world.publisher.to_user(viewer, "user:online", {"userId": subject})


def social_of(world: World) -> SocialService:
    return SocialService(
        chat=world.chat,
        registry=world.registry,
        presence=world.presence,  # type: ignore[arg-type]
        announcer=QuietAnnouncer(world),  # type: ignore[arg-type]
        direct=world.direct,
        notifications=world.notifications,
        wall_clock=world.wall,
    )


def _received(conn) -> list[dict[str, Any]]:
    return [event["message"] for event in conn.events("message:receive")]


@pytest_twisted.ensureDeferred
async def test_every_way_into_a_dm_room_pushes_the_same(world):
    alice, alice_phone, bob = world.connect("alice"), world.connect("alice"), world.connect("bob")
    sent = (await world.direct.send(alice, "bob", "one", "t1", "s1"))["message"]
    room_id = dm_room_id("alice", "bob")
    assert sent["chatId"] == room_id and sent["createdAt"] == T0_ISO
    ack = await world.chat.send_message(alice, room_id, "two", "t2")
    posted = await world.chat.post_for_backend("alice", room_id, "three")

    assert [m["content"] for m in _received(bob)] == ["one", "two", "three"]
    assert [m["content"] for m in _received(alice_phone)] == ["one", "two", "three"]
    assert _received(alice) == _received(bob)[2:]  # the sending connection is skipped
    two, three = _received(bob)[1:]
    assert ack == {"id": two["id"], "seq": 2, "createdAt": T0_ISO, "tempId": "t2"}
    assert two["senderId"] == "alice" and two["recipientId"] == "bob"
    assert posted == three and three["seq"] == 3


@pytest_twisted.ensureDeferred
async def test_an_offline_recipient_gets_a_notification_whichever_way_it_came(world):
    world.disconnect(world.connect("bob"))  # known, no connection
    await world.store.touch_user("bob", None, 0)
    alice = world.connect("alice", name="Alice")
    await world.direct.send(alice, "bob", "first", None, None)
    world.wall.ms += 1
    room_id = dm_room_id("alice", "bob")
    await world.chat.post_for_backend("alice", room_id, "second")
    notes = await world.store.unread_notifications("bob", 10)
    assert [n.message for n in notes] == ["first", "second"]
    assert {n.title for n in notes} == {"New message from Alice", "New message from alice"}
    assert all(n.type == "direct_message" and n.data["chatId"] == room_id for n in notes)


@pytest_twisted.ensureDeferred
async def test_only_the_pair_posts_into_a_dm_room(world):
    world.connect("bob")
    await world.direct.send(ActingUser.named("alice"), "bob", "hi", None, None)
    room_id = dm_room_id("alice", "bob")
    with pytest.raises(ChatError) as caught:
        await world.chat.post_for_backend("eve", room_id, "x")
    assert caught.value.code == ErrorCode.NOT_A_MEMBER


@pytest_twisted.ensureDeferred
async def test_unknown_recipients_and_self_messages_are_refused(world):
    alice = world.connect("alice")
    with pytest.raises(ChatError) as caught:
        await world.direct.send(alice, "ghost", "x", None, None)
    assert caught.value.code == ErrorCode.USER_NOT_FOUND
    with pytest.raises(ChatError) as caught:
        await world.direct.send(alice, "alice", "x", None, None)
    assert caught.value.code == ErrorCode.INVALID_MESSAGE


@pytest_twisted.ensureDeferred
async def test_dm_policy_friends_holds_for_message_send_and_chat_message(friends_only):
    world = friends_only
    social = social_of(world)
    alice, bob = world.connect("alice"), world.connect("bob")
    with pytest.raises(ChatError) as caught:
        await world.direct.send(alice, "bob", "hi", None, None)
    assert caught.value.code == ErrorCode.FORBIDDEN
    assert await social.set_friendship("alice", "bob", True) is True
    assert bob.events("friend:accepted") == [{"userId": "alice"}]
    assert bob.events("user:online") == [{"userId": "alice"}]
    await world.direct.send(alice, "bob", "now we can", None, None)
    assert await social.set_friendship("alice", "bob", False) is True
    with pytest.raises(ChatError) as caught:
        await world.chat.send_message(alice, dm_room_id("alice", "bob"), "and now?", None)
    assert caught.value.code == ErrorCode.FORBIDDEN


@pytest_twisted.ensureDeferred
async def test_a_friend_request_is_pushed_and_notified(world):
    social = social_of(world)
    alice, bob = world.connect("alice", name="Alice"), world.connect("bob")
    await social.request_friend(alice, "bob")
    assert bob.events("friend:request") == [{"fromUserId": "alice"}]
    (note,) = bob.events("notification")
    assert note["type"] == "friend_request" and note["createdAt"] == T0_ISO
    assert "Alice" in note["message"]
    await social.accept_friend(bob, "alice")
    assert alice.events("friend:accepted") == [{"userId": "bob"}]
    friends = await social.friends(alice)
    assert friends["friends"] == [{"userId": "bob", "online": True}]
    await social.ack_notification(bob, note["id"])
    assert await world.store.unread_notifications("bob", 10) == []
    with pytest.raises(ChatError) as caught:
        await social.ack_notification(bob, "n_nope")
    assert caught.value.code == ErrorCode.INVALID_MESSAGE


def test_a_backend_push_is_stamped_by_the_wall_clock(world):
    social = social_of(world)
    alice = world.connect("alice")
    social.push_message(["alice"], "chat", {"x": 1})
    assert alice.events("message") == [{"type": "chat", "data": {"x": 1}, "timestamp": T0_ISO}]


@pytest_twisted.ensureDeferred
async def test_a_backend_friend_request_has_the_effects_of_the_users_own(world):
    """``request_friend_for_backend`` (POST /api/friend-requests): the same
    store outcome and pushes as ``friend:request``, for users the backend
    names whether or not they ever connected here."""
    social = social_of(world)
    bob = world.connect("bob")
    assert await social.request_friend_for_backend("alice", "bob") == "requested"
    assert bob.events("friend:request") == [{"fromUserId": "alice"}]
    (note,) = bob.events("notification")
    assert note["message"] == "alice sent you a friend request"
    assert await social.request_friend_for_backend("alice", "bob") == "pending"
    assert len(bob.events("friend:request")) == 1
    assert await social.request_friend_for_backend("bob", "alice") == "accepted"
    assert bob.events("friend:accepted") == [{"userId": "alice"}]
    assert await social.request_friend_for_backend("alice", "bob") == "friends"
    # Neither user has to be known: the request waits in the store.
    assert await social.request_friend_for_backend("ghost", "nobody") == "requested"
    incoming = (await world.store.friend_lists("nobody")).incoming
    assert [r.user_id for r in incoming] == ["ghost"]
    with pytest.raises(ChatError) as caught:
        await social.request_friend_for_backend("bob", "bob")
    assert caught.value.code == ErrorCode.INVALID_MESSAGE
