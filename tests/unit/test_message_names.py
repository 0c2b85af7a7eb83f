"""Display names on messages, without a socket: the sender's identity
``name`` is the message's ``username`` in the live push, the ack's
message (DMs), history and the join snapshot; a sender without a name (the
HTTP API acting for a user) gives a message without the field."""

from __future__ import annotations

import pytest_twisted

from chatd.domain.direct import dm_room_id
from chatd.domain.models import ActingUser
from tests.unit.domain_world import World, build_world


@pytest_twisted.async_yield_fixture
async def world(tmp_path):
    world = build_world(str(tmp_path / "names.sqlite3"))
    yield world
    await world.store.close()


async def _room(world: World) -> str:
    created = await world.chat.create_room(
        ActingUser.named("alice"), "Team", "", "private", ["bob"]
    )
    return created["room"]["id"]


def _names(messages) -> list[tuple[str, str | None]]:
    return [(m["content"], m.get("username", None)) for m in messages]


@pytest_twisted.ensureDeferred
async def test_a_room_message_carries_its_senders_name_live_and_later(world):
    room_id = await _room(world)
    alice, bob = world.connect("alice", name="Alice A."), world.connect("bob")
    await world.join(alice, room_id)
    await world.join(bob, room_id)
    await world.chat.send_message(alice, room_id, "named", None)
    await world.chat.send_message(bob, room_id, "unnamed", None)
    await world.chat.post_for_backend("carol", room_id, "by the backend")
    expected = [("named", "Alice A."), ("unnamed", None), ("by the backend", None)]
    assert _names(bob.events("chat:message")) == expected
    assert "username" not in bob.events("chat:message")[1]
    history = await world.chat.history(bob, room_id, None, None, 10)
    assert _names(history["messages"]) == expected
    later = world.connect("bob")
    assert _names((await world.join(later, room_id))["messages"]) == expected


@pytest_twisted.ensureDeferred
async def test_a_direct_message_carries_its_senders_name(world):
    alice, bob = world.connect("alice", name="Alice A."), world.connect("bob")
    sent = (await world.direct.send(alice, "bob", "hi", None, None))["message"]
    assert sent["username"] == "Alice A."
    (received,) = bob.events("message:receive")
    assert received["message"]["username"] == "Alice A."
    await world.chat.send_message(bob, dm_room_id("alice", "bob"), "hello", None)
    page = await world.chat.history(alice, dm_room_id("alice", "bob"), None, None, 10)
    assert _names(page["messages"]) == [("hi", "Alice A."), ("hello", None)]
