"""ChatService without a socket: send, ack and push; limits; backend
operations; the injected clocks."""

from __future__ import annotations

import pytest
import pytest_twisted

from chatd.domain.models import ActingUser, Limits
from chatd.errors import ChatError, ErrorCode
from tests.unit.domain_world import T0, T0_ISO, World, build_world


@pytest_twisted.async_yield_fixture
async def world(tmp_path):
    world = build_world(str(tmp_path / "chat.sqlite3"), Limits(max_members_by_user=3))
    yield world
    await world.store.close()


async def _room(world: World, creator: str = "alice", members=("bob",), kind="private") -> str:
    alice = ActingUser.named(creator)
    created = await world.chat.create_room(alice, "Team", "", kind, list(members))
    return created["room"]["id"]


async def _refused(d, code: ErrorCode) -> ChatError:
    with pytest.raises(ChatError) as caught:
        await d
    assert caught.value.code == code, caught.value
    return caught.value


@pytest_twisted.ensureDeferred
async def test_a_message_is_acked_and_pushed_to_every_joined_connection(world):
    room_id = await _room(world)
    alice, bob = world.connect("alice"), world.connect("bob")
    await world.join(alice, room_id)
    await world.join(bob, room_id)
    ack = await world.chat.send_message(alice, room_id, "hello", "t1")
    assert ack["seq"] == 1 and ack["tempId"] == "t1" and ack["createdAt"] == T0_ISO
    for conn in (alice, bob):
        (pushed,) = conn.events("chat:message")
        assert pushed["id"] == ack["id"] and pushed["content"] == "hello"
        assert pushed["userId"] == "alice" and pushed["createdAt"] == T0_ISO
    assert world.publish_seconds == [0.0]  # measured on the reactor clock


@pytest_twisted.ensureDeferred
async def test_a_caller_without_a_connection_sends_like_one_that_did_not_join(world):
    room_id = await _room(world)
    bob = world.connect("bob")
    await world.join(bob, room_id)
    ack = await world.chat.send_message(ActingUser.named("alice"), room_id, "from afar", None)
    assert [m["id"] for m in bob.events("chat:message")] == [ack["id"]]
    await _refused(
        world.chat.send_message(ActingUser.named("eve"), room_id, "x", None),
        ErrorCode.NOT_A_MEMBER,
    )
    await _refused(
        world.chat.send_message(ActingUser.named("eve"), "nope", "x", None),
        ErrorCode.ROOM_NOT_FOUND,
    )


@pytest_twisted.ensureDeferred
async def test_the_backend_posts_for_anyone_in_a_group_room(world):
    room_id = await _room(world)
    bob = world.connect("bob")
    await world.join(bob, room_id)
    wire = await world.chat.post_for_backend("system", room_id, "deploy at 5")
    assert wire["userId"] == "system" and wire["seq"] == 1
    assert bob.events("chat:message") == [wire]
    await _refused(world.chat.post_for_backend("system", "nope", "x"), ErrorCode.ROOM_NOT_FOUND)


def test_limits_are_checked_before_anything_is_stored(world):
    alice = ActingUser.named("alice")
    with pytest.raises(ChatError) as caught:
        world.chat.send_message(alice, "r", "x" * 4001, None)
    assert caught.value.code == ErrorCode.PAYLOAD_TOO_LARGE
    with pytest.raises(ChatError) as caught:
        world.chat.send_message(alice, "r", "   ", None)
    assert caught.value.code == ErrorCode.INVALID_MESSAGE
    with pytest.raises(ChatError) as caught:
        world.chat.create_room(alice, "n", "", "public", ["a", "b", "c", "d"])
    assert caught.value.code == ErrorCode.PAYLOAD_TOO_LARGE
    with pytest.raises(ChatError) as caught:
        world.chat.create_room(alice, "n" * 101, "", "public", [])
    assert caught.value.code == ErrorCode.PAYLOAD_TOO_LARGE


@pytest_twisted.ensureDeferred
async def test_the_backend_has_a_member_limit_of_its_own(world):
    members = ["a", "b", "c", "d"]  # over the user's limit of 3 here
    room = await world.chat.create_room_for_backend("big", "Big", "", "private", members)
    assert room is not None and room.member_count == 4 and room.created_at_ms == T0
    assert await world.chat.create_room_for_backend("big", "Again", "", "public", []) is None
    too_many = [f"u{n}" for n in range(world.limits.max_members_by_backend + 1)]
    with pytest.raises(ChatError) as caught:
        world.chat.create_room_for_backend(None, "Huge", "", "private", too_many)
    assert caught.value.code == ErrorCode.PAYLOAD_TOO_LARGE


@pytest_twisted.ensureDeferred
async def test_members_removed_by_the_backend_leave_at_once(world):
    room_id = await _room(world)
    bob = world.connect("bob")
    await world.join(bob, room_id)
    assert await world.chat.add_member(room_id, "carol") is True
    assert sorted(await world.chat.members(room_id)) == ["alice", "bob", "carol"]
    assert await world.chat.remove_member(room_id, "bob") == (True, 1)
    assert bob.events("chat:left") == [{"chatId": room_id, "removed": True}]
    await _refused(world.chat.room(room_id, reader="bob"), ErrorCode.NOT_A_MEMBER)
    assert (await world.chat.room(room_id, reader="carol")).id == room_id
    await _refused(world.chat.add_member("nope", "bob"), ErrorCode.ROOM_NOT_FOUND)


@pytest_twisted.ensureDeferred
async def test_reactions_and_reads_are_stamped_by_the_wall_clock(world):
    room_id = await _room(world)
    alice, bob = world.connect("alice"), world.connect("bob")
    await world.join(alice, room_id)
    await world.join(bob, room_id)
    ack = await world.chat.send_message(alice, room_id, "hi", None)
    world.wall.ms = T0 + 5000
    await world.chat.react(bob, ack["id"], "+1", False)
    assert alice.events("chat:reaction")[0]["reaction"] == "+1"
    assert bob.events("chat:reaction") == []  # not echoed to the reacting connection
    await world.chat.mark_read(ActingUser.named("bob"), room_id, ack["id"])
    assert alice.events("chat:read")[0]["seq"] == 1


def test_pong_tells_the_wall_clock(world):
    assert world.chat.pong() == {"timestamp": T0_ISO}


def test_ids_are_random_hex_never_repeated_and_fresh_after_fork() -> None:
    import os
    import re

    from chatd.domain.publishing import new_id

    ids = [new_id("m_") for _ in range(5000)]  # more than one 4 KiB buffer
    assert all(re.fullmatch(r"m_[0-9a-f]{20}", i) for i in ids)
    assert len(set(ids)) == len(ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id must not be the parent's next
        os.write(write, new_id("m_").encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert child != new_id("m_") and child not in ids
