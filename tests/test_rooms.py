"""Rooms and messages over real WebSockets (PROTOCOL.md section 4), on
SQLite and PostgreSQL."""

from __future__ import annotations

import pytest_twisted

from tests.wsclient import gather


async def make_room(client, name="general", room_type="public", members=None):
    data = {"name": name, "type": room_type}
    if members is not None:
        data["members"] = members
    return (await client.ok("chat:create", data))["room"]


@pytest_twisted.ensureDeferred
async def test_create_join_message_typing_read_reaction(server):
    alice = await server.connect("alice")
    bob = await server.connect("bob")
    room = await make_room(alice, "General")
    assert room["name"] == "General" and room["type"] == "public"
    assert room["memberCount"] == 1 and room["lastSeq"] == 0 and room["createdAt"].endswith("Z")

    joined = await alice.ok("chat:join", {"chatId": room["id"]})
    assert joined["messages"] == [] and joined["hasMore"] is False and joined["users"] == ["alice"]
    joined = await bob.ok("chat:join", room["id"])  # a bare string is a chatId
    assert joined["room"]["memberCount"] == 2
    assert sorted(joined["users"]) == ["alice", "bob"]

    ack = await alice.ok("chat:message", {"chatId": room["id"], "content": "hello", "tempId": "t1"})
    assert ack["seq"] == 1 and ack["tempId"] == "t1" and ack["id"]
    for client in (alice, bob):
        push = (await client.next("chat:message"))["data"]
        assert push == {
            "id": ack["id"],
            "chatId": room["id"],
            "seq": 1,
            "userId": "alice",
            "content": "hello",
            "tempId": "t1",
            "createdAt": ack["createdAt"],
        }

    await bob.ok("chat:typing", {"chatId": room["id"], "isTyping": True})
    typing = (await alice.next("chat:typing"))["data"]
    assert typing == {"chatId": room["id"], "userId": "bob", "isTyping": True}
    await bob.none_before("chat:typing")  # no echo to the typist (alice's push was the fan-out)
    await bob.ok("chat:typing", {"chatId": room["id"], "isTyping": False})
    assert (await alice.next("chat:typing"))["data"]["isTyping"] is False

    await bob.ok("chat:read", {"chatId": room["id"], "messageId": ack["id"]})
    read = (await alice.next("chat:read"))["data"]
    assert read == {"chatId": room["id"], "userId": "bob", "messageId": ack["id"], "seq": 1}

    await bob.ok("chat:reaction", {"messageId": ack["id"], "reaction": "👍"})
    reaction = (await alice.next("chat:reaction"))["data"]
    assert reaction == {
        "chatId": room["id"],
        "messageId": ack["id"],
        "userId": "bob",
        "reaction": "👍",
        "removed": False,
    }
    await bob.ok("chat:reaction", {"messageId": ack["id"], "reaction": "👍", "remove": True})
    assert (await alice.next("chat:reaction"))["data"]["removed"] is True

    history = await bob.ok("chat:history", {"chatId": room["id"]})
    assert [m["seq"] for m in history["messages"]] == [1] and history["hasMore"] is False

    await bob.ok("chat:leave", {"chatId": room["id"]})
    await alice.ok("chat:message", {"chatId": room["id"], "content": "after leave"})
    await alice.next("chat:message")
    await bob.none_before("chat:message")


@pytest_twisted.ensureDeferred
async def test_requests_without_id_get_confirmation_events(server):
    alice = await server.connect("alice")
    await alice.send("chat:create", {"name": "r", "type": "public"})
    room = (await alice.next("chat:created"))["data"]["room"]
    await alice.send("chat:join", {"chatId": room["id"]})
    joined = (await alice.next("chat:joined"))["data"]
    assert joined["room"]["id"] == room["id"] and "messages" in joined and "users" in joined
    await alice.send("chat:message", {"chatId": room["id"], "content": "x"})
    assert (await alice.next("chat:message"))["data"]["seq"] == 1
    await alice.send("chat:history", {"chatId": room["id"]})
    assert [m["content"] for m in (await alice.next("chat:history"))["data"]["messages"]] == ["x"]
    await alice.send("ping")
    assert (await alice.next("pong"))["data"]["timestamp"].endswith("Z")
    await alice.send("chat:leave", {"chatId": room["id"]})
    assert (await alice.next("chat:left"))["data"]["chatId"] == room["id"]
    # a failure without id: an error frame naming the event
    await alice.send("chat:join", {"chatId": "r_missing"})
    error = await alice.next("error")
    assert error["data"]["code"] == "ROOM_NOT_FOUND" and error["data"]["event"] == "chat:join"
    assert "id" not in error


@pytest_twisted.ensureDeferred
async def test_private_room_membership(server):
    alice = await server.connect("alice")
    bob = await server.connect("bob")
    mallory = await server.connect("mallory")
    room = await make_room(alice, "secret", "private", members=["bob"])
    assert room["memberCount"] == 2
    await alice.ok("chat:join", room["id"])
    await bob.ok("chat:join", room["id"])
    await mallory.fails("chat:join", room["id"], "NOT_A_MEMBER")
    await mallory.fails("chat:message", {"chatId": room["id"], "content": "hi"}, "NOT_A_MEMBER")
    await mallory.fails("chat:history", {"chatId": room["id"]}, "NOT_A_MEMBER")
    ack = await alice.ok("chat:message", {"chatId": room["id"], "content": "secret"})
    await mallory.fails("chat:reaction", {"messageId": ack["id"], "reaction": "x"}, "NOT_A_MEMBER")
    await mallory.fails("chat:read", {"chatId": room["id"], "messageId": ack["id"]}, "NOT_A_MEMBER")
    await mallory.none_before("chat:message")  # published before alice's ack
    # a member may send without having joined on this connection
    bob2 = await server.connect("bob")
    await bob2.ok("chat:message", {"chatId": room["id"], "content": "from a second tab"})
    assert (await alice.next("chat:message"))["data"]["content"] == "secret"
    assert (await alice.next("chat:message"))["data"]["content"] == "from a second tab"


@pytest_twisted.ensureDeferred
async def test_public_room_needs_join_before_sending(server):
    alice = await server.connect("alice")
    bob = await server.connect("bob")
    room = await make_room(alice)
    await bob.fails("chat:message", {"chatId": room["id"], "content": "hi"}, "NOT_A_MEMBER")
    await bob.fails("chat:message", {"chatId": "r_nope", "content": "hi"}, "ROOM_NOT_FOUND")
    await bob.fails("chat:typing", {"chatId": room["id"], "isTyping": True}, "NOT_A_MEMBER")
    history = await bob.ok("chat:history", {"chatId": room["id"]})  # public rooms are readable
    assert history["messages"] == []


@pytest_twisted.ensureDeferred
async def test_messages_sent_right_behind_a_join_wait_for_it(server):
    """A client may send chat:join and chat:message back to back (seed
    001's example does): the messages wait for that connection's join of
    the room and are stored in the order sent; a failed join lets them
    fail as a non-member's would."""
    alice = await server.connect("alice")
    public = await make_room(alice)
    private = await make_room(alice, name="secret", room_type="private")
    for user in ("bob", "carol"):
        client = await server.connect(user)
        await client.send("chat:join", public["id"], "j")
        for i in range(3):
            await client.send("chat:message", {"chatId": public["id"], "content": str(i)}, f"m{i}")
        joined = await client.reply("j")
        assert joined["type"] == "ack", joined
        acks = [await client.reply(f"m{i}") for i in range(3)]
        assert [a["type"] for a in acks] == ["ack"] * 3, acks
        seqs = [a["data"]["seq"] for a in acks]
        assert seqs == sorted(seqs)
    dave = await server.connect("dave")
    await dave.send("chat:join", private["id"], "j")
    await dave.send("chat:message", {"chatId": private["id"], "content": "x"}, "m")
    assert (await dave.reply("j"))["data"]["code"] == "NOT_A_MEMBER"
    assert (await dave.reply("m"))["data"]["code"] == "NOT_A_MEMBER"


@pytest_twisted.ensureDeferred
async def test_history_paging_and_join_pages(server):
    alice = await server.connect("alice")
    room = await make_room(alice)
    for i in range(1, 131):
        await alice.send("chat:message", {"chatId": room["id"], "content": f"m{i}"}, f"s{i}")
    for i in range(1, 131):
        assert (await alice.reply(f"s{i}"))["type"] == "ack"
    bob = await server.connect("bob")
    joined = await bob.ok("chat:join", room["id"])
    assert [m["seq"] for m in joined["messages"]] == list(range(81, 131)) and joined[
        "hasMore"
    ] is True
    since = await bob.ok("chat:join", {"chatId": room["id"], "since": 10})
    assert [m["seq"] for m in since["messages"]] == list(range(11, 111)) and since[
        "hasMore"
    ] is True
    newest = await bob.ok("chat:history", {"chatId": room["id"], "limit": 500})
    assert [m["seq"] for m in newest["messages"]] == list(range(31, 131)) and newest[
        "hasMore"
    ] is True
    before = await bob.ok("chat:history", {"chatId": room["id"], "before": 31, "limit": 20})
    assert [m["seq"] for m in before["messages"]] == list(range(11, 31)) and before[
        "hasMore"
    ] is True
    after = await bob.ok("chat:history", {"chatId": room["id"], "after": 120})
    assert [m["seq"] for m in after["messages"]] == list(range(121, 131)) and after[
        "hasMore"
    ] is False
    window = await bob.ok("chat:history", {"chatId": room["id"], "after": 5, "before": 9})
    assert [m["seq"] for m in window["messages"]] == [6, 7, 8] and window["hasMore"] is False


@pytest_twisted.ensureDeferred
async def test_concurrent_senders_get_one_gap_free_order(server):
    """3 clients × 50 concurrent messages: every member sees all 150 in the
    same order with seq 1..150."""
    clients = [await server.connect(user) for user in ("alice", "bob", "carol")]
    room = await make_room(clients[0])
    for client in clients:
        await client.ok("chat:join", room["id"])

    async def blast(client, tag):
        for i in range(50):
            await client.send(
                "chat:message", {"chatId": room["id"], "content": f"{tag}{i}"}, f"{tag}{i}"
            )

    await gather(*(blast(c, t) for c, t in zip(clients, "abc", strict=False)))
    seen = []
    for client in clients:
        frames = await client.collect("chat:message", 150)
        seen.append([(f["data"]["seq"], f["data"]["content"]) for f in frames])
    assert [seq for seq, _ in seen[0]] == list(range(1, 151))
    assert seen[0] == seen[1] == seen[2]
    for client, tag in zip(clients, "abc", strict=False):
        for i in range(50):
            assert (await client.reply(f"{tag}{i}"))["type"] == "ack"
    # per-sender order is kept inside the global order
    for tag in "abc":
        mine = [c for _, c in seen[0] if c.startswith(tag)]
        assert mine == [f"{tag}{i}" for i in range(50)]


@pytest_twisted.ensureDeferred
async def test_typing_stops_by_itself_on_leave_and_on_disconnect(server):
    alice = await server.connect("alice")
    bob = await server.connect("bob")
    room = await make_room(alice)
    await alice.ok("chat:join", room["id"])
    await bob.ok("chat:join", room["id"])
    await bob.ok("chat:typing", {"chatId": room["id"], "isTyping": True})
    assert (await alice.next("chat:typing"))["data"]["isTyping"] is True
    await bob.ok("chat:leave", room["id"])
    assert (await alice.next("chat:typing"))["data"] == {
        "chatId": room["id"],
        "userId": "bob",
        "isTyping": False,
    }
    await bob.ok("chat:join", room["id"])
    await bob.ok("chat:typing", {"chatId": room["id"], "isTyping": True})
    assert (await alice.next("chat:typing"))["data"]["isTyping"] is True
    await bob.close()
    assert (await alice.next("chat:typing"))["data"]["isTyping"] is False
