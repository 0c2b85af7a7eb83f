"""Display names on messages over real sockets: a sender named by its
token (``name``) or by its ``auth {token, name}`` frame is the
``username`` of its messages, live, in ``chat:history`` and in a rejoin
with ``since`` (the name is stored with the message)."""

from __future__ import annotations

import pytest_twisted

from tests.wsclient import WsClient


@pytest_twisted.ensureDeferred
async def test_a_named_senders_messages_carry_username_live_and_in_history(server):
    alice = await WsClient.open(server.url, token=server.token("alice", name="Alice A."))
    bob = await server.connect("bob")  # a token without a name
    carol = await WsClient.open(server.url)
    await carol.send("auth", {"token": server.token("carol"), "name": "Carol C."})
    await carol.next("authenticated")
    server.clients.extend([alice, carol])
    room = (await alice.ok("chat:create", {"name": "Team", "type": "public"}))["room"]
    for client in (alice, bob, carol):
        await client.ok("chat:join", {"chatId": room["id"]})

    await alice.ok("chat:message", {"chatId": room["id"], "content": "from alice"})
    await bob.ok("chat:message", {"chatId": room["id"], "content": "from bob"})
    await carol.ok("chat:message", {"chatId": room["id"], "content": "from carol"})
    expected = [("from alice", "Alice A."), ("from bob", None), ("from carol", "Carol C.")]
    live = [(await bob.next("chat:message"))["data"] for _ in expected]
    assert [(m["content"], m.get("username")) for m in live] == expected
    assert "username" not in live[1]

    history = await bob.ok("chat:history", {"chatId": room["id"]})
    assert [(m["content"], m.get("username")) for m in history["messages"]] == expected
    await bob.ok("chat:leave", {"chatId": room["id"]})
    rejoined = await bob.ok("chat:join", {"chatId": room["id"], "since": 1})
    assert [(m["content"], m.get("username")) for m in rejoined["messages"]] == expected[1:]
