"""Direct messages, presence, friends and notifications (PROTOCOL.md
section 4) over real sockets, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import pytest_twisted

from tests.conftest import make_config, start_server
from tests.wsclient import deferred

GRACE = 0.3


async def fast_presence(server_factory, **overrides):
    return await server_factory(presence_grace=GRACE, **overrides)


async def settle(seconds: float = GRACE + 0.3) -> None:
    await deferred(asyncio.sleep(seconds))


async def befriend(a, b):
    """Make two online users friends and consume what that pushes (the
    acceptance and each other's presence)."""
    await a.ok("friend:request", {"userId": b.user_id})
    await b.ok("friend:accept", {"userId": a.user_id})
    for me, other in ((a, b), (b, a)):
        assert (await me.next("friend:accepted"))["data"] == {"userId": other.user_id}
        assert (await me.next("user:online"))["data"] == {"userId": other.user_id}
    await b.next("friend:request")
    await b.next("notification")
    # A presence announcement still in flight from before the friendship
    # may repeat user:online (announcements are idempotent); let it land.
    for client in (a, b):
        await client.drain(0.3)
        client.inbox = [f for f in client.inbox if f["type"] != "user:online"]


# -- direct messages -----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_direct_message_reaches_every_connection_of_the_recipient(server):
    alice = await server.connect("alice")
    bob_phone = await server.connect("bob")
    bob_laptop = await server.connect("bob")
    alice_tab2 = await server.connect("alice")

    ack = await alice.ok(
        "message:send",
        {"recipientId": "bob", "content": "hi bob", "tempId": "t1", "sessionId": "s1"},
    )
    message = ack["message"]
    assert (
        message["senderId"] == "alice"
        and message["recipientId"] == "bob"
        and message["userId"] == "alice"
    )
    assert (
        message["content"] == "hi bob"
        and message["tempId"] == "t1"
        and message["sessionId"] == "s1"
    )
    assert message["seq"] == 1 and message["chatId"].startswith("dm_")
    for client in (bob_phone, bob_laptop, alice_tab2):
        assert (await client.next("message:receive"))["data"]["message"] == message
    await alice.none_before("message:receive")  # not to the sending connection

    # the same room whoever writes first; seq goes on
    reply = await bob_phone.ok("message:send", {"recipientId": "alice", "content": "hi alice"})
    assert reply["message"]["chatId"] == message["chatId"] and reply["message"]["seq"] == 2
    assert (await alice.next("message:receive"))["data"]["message"]["content"] == "hi alice"

    # without an id: message:sent confirms
    await alice.send("message:send", {"recipientId": "bob", "content": "third", "tempId": "t3"})
    sent = (await alice.next("message:sent"))["data"]["message"]
    assert sent["content"] == "third" and sent["tempId"] == "t3"


@pytest_twisted.ensureDeferred
async def test_direct_message_errors(server):
    alice = await server.connect("alice")
    await server.connect("bob")
    await alice.fails(
        "message:send", {"recipientId": "nobody-ever", "content": "x"}, "USER_NOT_FOUND"
    )
    await alice.fails("message:send", {"recipientId": "alice", "content": "x"}, "INVALID_MESSAGE")
    await alice.fails("message:send", {"recipientId": "bob", "content": ""}, "INVALID_MESSAGE")
    await alice.fails("message:send", {"recipientId": "bob"}, "INVALID_MESSAGE")
    await alice.fails(
        "message:send", {"recipientId": "bob", "content": "x" * 4001}, "PAYLOAD_TOO_LARGE"
    )
    # without an id, failures are message:error with the tempId
    await alice.send(
        "message:send", {"recipientId": "nobody-ever", "content": "x", "tempId": "lost-1"}
    )
    error = (await alice.next("message:error"))["data"]
    assert error == {"code": "USER_NOT_FOUND", "message": error["message"], "tempId": "lost-1"}
    await alice.send("message:send", {"recipientId": "bob", "tempId": "lost-2"})
    assert (await alice.next("message:error"))["data"]["code"] == "INVALID_MESSAGE"
    assert (await alice.request("ping"))["type"] == "ack"


@pytest_twisted.ensureDeferred
async def test_direct_messages_limited_to_friends_when_configured(server_factory):
    server = await server_factory(dm_policy="friends")
    alice = await server.connect("alice")
    bob = await server.connect("bob")
    await alice.fails("message:send", {"recipientId": "bob", "content": "hi"}, "FORBIDDEN")
    await befriend(alice, bob)
    assert (await alice.ok("message:send", {"recipientId": "bob", "content": "hi"}))["message"][
        "seq"
    ] == 1


@pytest_twisted.ensureDeferred
async def test_dm_room_has_history_since_reads_and_reactions(server):
    alice = await server.connect("alice")
    bob = await server.connect("bob")
    first = (await alice.ok("message:send", {"recipientId": "bob", "content": "one"}))["message"]
    await alice.ok("message:send", {"recipientId": "bob", "content": "two"})
    room = first["chatId"]
    history = await bob.ok("chat:history", {"chatId": room})
    assert [m["content"] for m in history["messages"]] == ["one", "two"]
    joined = await bob.ok("chat:join", {"chatId": room, "since": 1})
    assert [m["content"] for m in joined["messages"]] == ["two"]
    await alice.ok("chat:join", room)
    await bob.ok("chat:read", {"chatId": room, "messageId": first["id"]})
    assert (await alice.next("chat:read"))["data"]["userId"] == "bob"
    await bob.ok("chat:reaction", {"messageId": first["id"], "reaction": "❤"})
    assert (await alice.next("chat:reaction"))["data"]["reaction"] == "❤"
    mallory = await server.connect("mallory")
    await mallory.fails("chat:join", room, "NOT_A_MEMBER")
    await mallory.fails("chat:history", {"chatId": room}, "NOT_A_MEMBER")


@pytest_twisted.ensureDeferred
async def test_dm_history_survives_a_restart(tmp_path, database_url):
    config = make_config(tmp_path, database_url)
    first = await start_server(config)
    alice = await first.connect("alice")
    await first.connect("bob")
    room = (await alice.ok("message:send", {"recipientId": "bob", "content": "before restart"}))[
        "message"
    ]["chatId"]
    await first.stop()
    second = await start_server(config)
    try:
        bob = await second.connect("bob")
        history = await bob.ok("chat:history", {"chatId": room})
        assert [m["content"] for m in history["messages"]] == ["before restart"]
        alice = await second.connect("alice")
        reply = await alice.ok("message:send", {"recipientId": "bob", "content": "after"})
        assert reply["message"]["seq"] == 2 and reply["message"]["chatId"] == room
        # bob is known from before the restart even when offline now
        await bob.close()
        assert (await alice.ok("message:send", {"recipientId": "bob", "content": "offline"}))[
            "message"
        ]["seq"] == 3
    finally:
        await second.stop()


# -- presence ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_presence_reaches_friends_and_room_mates_never_strangers(server_factory):
    server = await fast_presence(server_factory)
    friend = await server.connect("friend")
    mate = await server.connect("mate")
    stranger = await server.connect("stranger")
    alice = await server.connect("alice")
    await befriend(alice, friend)
    room = (await alice.ok("chat:create", {"name": "r", "type": "private", "members": ["mate"]}))[
        "room"
    ]
    await alice.close()
    for viewer in (friend, mate):
        offline = (await viewer.next("user:offline"))["data"]
        assert offline["userId"] == "alice" and offline["lastSeen"].endswith("Z")

    alice = await server.connect("alice")
    for viewer in (friend, mate):
        assert (await viewer.next("user:online"))["data"] == {"userId": "alice"}
    status = await friend.ok("status:request")
    assert "alice" in status["userIds"] and "stranger" not in status["userIds"]
    assert (await mate.ok("status:request"))["userIds"] == ["alice"]
    assert (await stranger.ok("status:request"))["userIds"] == []

    await alice.close()
    await friend.next("user:offline")
    # one publish tells the whole audience: what friend got was the fan-out
    await stranger.none_before("user:online")
    await stranger.none_before("user:offline")
    assert room["id"]


@pytest_twisted.ensureDeferred
async def test_two_tabs_offline_only_after_the_last_closes(server_factory):
    server = await fast_presence(server_factory)
    friend = await server.connect("friend")
    tab1 = await server.connect("alice")
    await befriend(tab1, friend)
    tab2 = await server.connect("alice")
    # A second tab is not news.  Timed: an announcement would follow an
    # audience lookup in the store, which no reply here waits for.
    await friend.nothing("user:online", within=0.2)
    await tab1.close()
    # Timed, past the grace period: no event marks a timer that did not start.
    await friend.nothing("user:offline", within=GRACE + 0.3)
    assert "alice" in (await friend.ok("status:request"))["userIds"]
    await tab2.close()
    offline = (await friend.next("user:offline", timeout=GRACE + 2))["data"]
    assert offline["userId"] == "alice"
    assert "alice" not in (await friend.ok("status:request"))["userIds"]
    listed = await friend.ok("friends:list")
    assert listed["friends"] == [{"userId": "alice", "online": False}]


@pytest_twisted.ensureDeferred
async def test_a_reload_within_the_grace_period_does_not_flap(server_factory):
    """A reload cancels the offline timer; the last close starts it again,
    and it does fire, a grace period later."""
    grace = 1.0
    server = await server_factory(presence_grace=grace)
    friend = await server.connect("friend")
    alice = await server.connect("alice")
    await befriend(alice, friend)
    await alice.close()
    alice = await server.connect("alice")
    # Stay connected past the grace period, so a timer the reload did not
    # cancel fires in here (no event marks a timer that did not fire).
    await deferred(asyncio.sleep(grace + 0.5))
    loop = asyncio.get_event_loop()
    left, left_ms = loop.time(), time.time_ns() // 1_000_000
    await alice.close()
    offline = (await friend.next("user:offline", timeout=grace + 5))["data"]
    waited = loop.time() - left
    # The first user:offline is the last close's: neither the reload's
    # (which would have come during the hold) nor an early one.
    assert waited >= grace - 0.05, f"user:offline {waited:.3f} s after the close; grace {grace} s"
    assert offline["userId"] == "alice"
    last_seen = datetime.fromisoformat(offline["lastSeen"]).timestamp() * 1000
    assert last_seen >= left_ms, (offline, left_ms)
    assert [f for f in friend.inbox if f["type"] in ("user:online", "user:offline")] == []


@pytest_twisted.ensureDeferred
async def test_strangers_learn_nothing_about_presence(server_factory):
    """Every way a stranger could ask or be told: pushes on connect and
    disconnect, status:request, friends:list, a pending (unaccepted)
    request, a declined one, and a removed friendship."""
    server = await fast_presence(server_factory)
    stranger = await server.connect("stranger")
    alice = await server.connect("alice")
    assert (await stranger.ok("status:request"))["userIds"] == []
    # Timed: the announcement follows an audience lookup in the store, and
    # nobody else is told of alice's first connection.
    await stranger.nothing("user:online", within=0.2)
    # A friend of alice's witnesses each announcement that must skip the
    # stranger: both go out in one publish.
    witness = await server.connect("witness")
    await befriend(alice, witness)

    # asking for friendship does not open the door
    await stranger.ok("friend:request", {"userId": "alice"})
    assert (await stranger.ok("status:request"))["userIds"] == []
    listed = await stranger.ok("friends:list")
    assert listed["friends"] == [] and [r["userId"] for r in listed["outgoing"]] == ["alice"]
    await alice.ok("friend:decline", {"userId": "stranger"})
    await alice.close()
    await witness.next("user:offline", timeout=GRACE + 5)
    await stranger.none_before("user:offline")

    # a friendship that ended stops the pushes
    alice = await server.connect("alice")
    await witness.next("user:online")
    await befriend(alice, stranger)
    await alice.ok("friend:remove", {"userId": "stranger"})
    await alice.close()
    await witness.next("user:offline", timeout=GRACE + 5)
    await stranger.none_before("user:offline")
    assert (await stranger.ok("status:request"))["userIds"] == []
    assert (await stranger.ok("friends:list"))["friends"] == []


@pytest_twisted.ensureDeferred
async def test_writing_a_direct_message_does_not_reveal_presence(server_factory):
    """A stranger who DMs you shares a room with you, but a DM room does not
    put them in your presence audience."""
    server = await fast_presence(server_factory)
    alice = await server.connect("alice")
    witness = await server.connect("witness")  # alice's friend: sees what must skip stranger
    await befriend(alice, witness)
    stranger = await server.connect("stranger")
    room = (await stranger.ok("message:send", {"recipientId": "alice", "content": "hello?"}))[
        "message"
    ]["chatId"]
    assert (await stranger.ok("chat:join", room))["users"] == ["stranger"]
    assert (await stranger.ok("status:request"))["userIds"] == []
    await alice.close()
    await witness.next("user:offline", timeout=GRACE + 5)
    await stranger.none_before("user:offline")
    alice = await server.connect("alice")
    await witness.next("user:online")
    await stranger.none_before("user:online")
    # alice answering does not change that either; friendship does
    await alice.ok("message:send", {"recipientId": "stranger", "content": "who are you?"})
    assert (await stranger.ok("status:request"))["userIds"] == []
    await befriend(alice, stranger)
    assert (await stranger.ok("status:request"))["userIds"] == ["alice"]
    assert sorted((await stranger.ok("chat:join", room))["users"]) == ["alice", "stranger"]


# -- friends -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_friend_request_live_accept_and_immediate_presence(server):
    alice = await server.connect("alice")
    bob = await server.connect("bob")
    await alice.ok("friend:request", {"userId": "bob"})
    assert (await bob.next("friend:request"))["data"] == {"fromUserId": "alice"}
    note = (await bob.next("notification"))["data"]
    assert note["type"] == "friend_request" and note["data"] == {"fromUserId": "alice"}
    incoming = (await bob.ok("friends:list"))["incoming"]
    assert [r["userId"] for r in incoming] == ["alice"] and incoming[0]["createdAt"].endswith("Z")

    await bob.ok("friend:accept", {"userId": "alice"})
    assert (await alice.next("friend:accepted"))["data"] == {"userId": "bob"}
    assert (await bob.next("friend:accepted"))["data"] == {"userId": "alice"}
    # new friends see each other's status at once
    assert (await alice.next("user:online"))["data"] == {"userId": "bob"}
    assert (await bob.next("user:online"))["data"] == {"userId": "alice"}
    assert (await alice.ok("friends:list"))["friends"] == [{"userId": "bob", "online": True}]
    assert "bob" in (await alice.ok("status:request"))["userIds"]

    await alice.ok("friend:remove", {"userId": "bob"})
    assert (await bob.ok("friends:list"))["friends"] == []


@pytest_twisted.ensureDeferred
async def test_pending_request_for_an_offline_user_waits_in_incoming(server):
    bob = await server.connect("bob")
    await bob.close()
    alice = await server.connect("alice")
    await alice.ok("friend:request", {"userId": "bob"})
    assert [r["userId"] for r in (await alice.ok("friends:list"))["outgoing"]] == ["bob"]
    bob = await server.connect("bob")
    assert (await bob.next("notification"))["data"]["type"] == "friend_request"
    assert [r["userId"] for r in (await bob.ok("friends:list"))["incoming"]] == ["alice"]
    await bob.ok("friend:decline", {"userId": "alice"})
    assert (await bob.ok("friends:list"))["incoming"] == []
    assert (await alice.ok("friends:list"))["outgoing"] == []


@pytest_twisted.ensureDeferred
async def test_friend_request_errors_and_mutual_requests(server):
    alice = await server.connect("alice")
    bob = await server.connect("bob")
    await alice.fails("friend:request", {"userId": "ghost"}, "USER_NOT_FOUND")
    await alice.fails("friend:request", {"userId": "alice"}, "INVALID_MESSAGE")
    await alice.fails("friend:request", {}, "INVALID_MESSAGE")
    await alice.fails("friend:accept", {"userId": "bob"}, "INVALID_MESSAGE")  # nothing pending
    await alice.ok("friend:request", {"userId": "bob"})
    await alice.ok("friend:request", {"userId": "bob"})  # asking twice is harmless
    await bob.ok("friend:request", {"userId": "alice"})  # asking back accepts
    assert (await alice.next("friend:accepted"))["data"] == {"userId": "bob"}
    assert [f["userId"] for f in (await bob.ok("friends:list"))["friends"]] == ["alice"]


# -- notifications and pushes -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_notification_while_offline_arrives_once_and_not_after_ack(server):
    social = server.service.social
    alice = await server.connect("alice")
    await alice.close()
    first = await social.notify("alice", "system", "Welcome", "first note", {"k": 1})
    second = await social.notify("alice", "system", "Again", "second note")

    alice = await server.connect("alice")
    got = [(await alice.next("notification"))["data"] for _ in range(2)]
    assert [n["id"] for n in got] == [first.id, second.id]  # oldest first
    assert got[0] == {
        "id": first.id,
        "type": "system",
        "title": "Welcome",
        "message": "first note",
        "data": {"k": 1},
        "createdAt": got[0]["createdAt"],
    }
    # Exactly once on this connection.  Timed (here and below): the delivery
    # on connect follows a store read that no reply on this connection waits for.
    await alice.nothing("notification", within=0.3)

    await alice.ok("notification:ack", {"id": first.id})
    await alice.close()
    alice = await server.connect("alice")
    again = (await alice.next("notification"))["data"]
    assert again["id"] == second.id  # not acknowledged yet, so handed over again
    await alice.nothing("notification", within=0.3)
    await alice.ok("notification:ack", {"id": second.id})
    await alice.fails("notification:ack", {"id": "n_unknown"}, "INVALID_MESSAGE")
    await alice.close()
    alice = await server.connect("alice")
    await alice.nothing("notification", within=0.3)


@pytest_twisted.ensureDeferred
async def test_live_notification_and_someone_elses_cannot_be_acked(server):
    alice = await server.connect("alice")
    bob = await server.connect("bob")
    note = await server.service.social.notify("alice", "alert", "Heads up", "live one")
    assert (await alice.next("notification"))["data"]["id"] == note.id
    await bob.none_before("notification")  # published before alice got hers
    await bob.fails("notification:ack", {"id": note.id}, "INVALID_MESSAGE")


@pytest_twisted.ensureDeferred
async def test_free_form_message_push_to_users_and_to_everyone(server):
    alice = await server.connect("alice")
    bob = await server.connect("bob")
    server.service.social.push_message(["alice"], "update", {"version": 2})
    pushed = (await alice.next("message"))["data"]
    assert (
        pushed["type"] == "update"
        and pushed["data"] == {"version": 2}
        and pushed["timestamp"].endswith("Z")
    )
    await bob.none_before("message")
    server.service.social.push_message(None, "system", {"text": "maintenance"})
    for client in (alice, bob):
        assert (await client.next("message"))["data"]["data"] == {"text": "maintenance"}


@pytest_twisted.ensureDeferred
async def test_chat_message_into_a_dm_room_follows_the_dm_rules(server_factory):
    server = await server_factory(dm_policy="friends")
    alice = await server.connect("alice")
    bob = await server.connect("bob")
    await befriend(alice, bob)
    room = (await alice.ok("message:send", {"recipientId": "bob", "content": "one"}))["message"][
        "chatId"
    ]
    await bob.next("message:receive")
    ack = await bob.ok("chat:message", {"chatId": room, "content": "two", "tempId": "t2"})
    assert ack["seq"] == 2 and ack["tempId"] == "t2"
    assert (await alice.next("message:receive"))["data"]["message"]["content"] == "two"
    await alice.ok("friend:remove", {"userId": "bob"})
    await bob.fails("chat:message", {"chatId": room, "content": "three"}, "FORBIDDEN")
    mallory = await server.connect("mallory")
    await mallory.fails("chat:message", {"chatId": room, "content": "hi"}, "NOT_A_MEMBER")


@pytest_twisted.ensureDeferred
async def test_friend_answers_check_the_other_user(server):
    alice = await server.connect("alice")
    for event in ("friend:accept", "friend:decline", "friend:remove"):
        await alice.fails(event, {"userId": "ghost"}, "USER_NOT_FOUND")
        await alice.fails(event, {"userId": "alice"}, "INVALID_MESSAGE")


@pytest_twisted.ensureDeferred
async def test_a_dm_to_an_offline_user_leaves_a_notification(server):
    bob = await server.connect("bob")
    await bob.close()
    alice = await server.connect("alice")
    sent = (await alice.ok("message:send", {"recipientId": "bob", "content": "are you there?"}))[
        "message"
    ]
    bob = await server.connect("bob")
    note = (await bob.next("notification"))["data"]
    assert note["type"] == "direct_message" and note["message"] == "are you there?"
    assert note["data"] == {"chatId": sent["chatId"], "messageId": sent["id"], "senderId": "alice"}
    # online recipients get message:receive, not a notification
    await alice.ok("message:send", {"recipientId": "bob", "content": "good"})
    await bob.next("message:receive")
    await bob.none_before("notification")  # a notification is stored and sent before the ack


@pytest_twisted.ensureDeferred
async def test_answering_a_request_settles_its_notification(server):
    bob = await server.connect("bob")
    alice = await server.connect("alice")
    carol = await server.connect("carol")
    await alice.ok("friend:request", {"userId": "bob"})
    await carol.ok("friend:request", {"userId": "bob"})
    await bob.ok("friend:accept", {"userId": "alice"})
    await bob.ok("friend:decline", {"userId": "carol"})
    await bob.close()
    bob = await server.connect("bob")
    # Timed: the delivery on connect follows a store read no reply waits for.
    await bob.nothing("notification", within=0.3)


@pytest_twisted.ensureDeferred
async def test_quick_direct_messages_keep_their_order(server):
    alice = await server.connect("alice")
    bob = await server.connect("bob")
    for i in range(30):
        await alice.send("message:send", {"recipientId": "bob", "content": f"dm{i}"}, f"d{i}")
    received = [(await bob.next("message:receive"))["data"]["message"] for _ in range(30)]
    assert [m["content"] for m in received] == [f"dm{i}" for i in range(30)]
    assert [m["seq"] for m in received] == list(range(1, 31))
    for i in range(30):
        assert (await alice.reply(f"d{i}"))["type"] == "ack"
