"""Presence counting and the grace period, with a Clock."""

from __future__ import annotations

from twisted.internet.task import Clock

from chatd.domain.social import Presence, dm_room_id


def tracker(grace: float = 3.0):
    clock = Clock()
    presence = Presence(clock, grace)
    events: list[tuple[str, str]] = []
    presence.on_online = lambda user: events.append(("online", user))
    presence.on_offline = lambda user, closed_at: events.append(("offline", user))
    return clock, presence, events


def test_first_connection_announces_online_once():
    _, presence, events = tracker()
    presence.opened("alice")
    presence.opened("alice")
    assert events == [("online", "alice")]
    assert presence.is_online("alice") and presence.connections("alice") == 2


def test_offline_only_after_the_last_connection_and_the_grace_period():
    clock, presence, events = tracker(3.0)
    presence.opened("alice")
    presence.opened("alice")
    presence.closed("alice")
    clock.advance(10)
    assert events == [("online", "alice")]
    presence.closed("alice")
    clock.advance(2.9)
    assert events == [("online", "alice")] and presence.is_online("alice")
    clock.advance(0.2)
    assert events == [("online", "alice"), ("offline", "alice")]
    assert not presence.is_online("alice")


def test_last_seen_is_when_the_last_connection_closed():
    clock = Clock()
    presence = Presence(clock, 3.0, wall_clock=lambda: int(clock.seconds() * 1000))
    seen: list[int] = []
    presence.on_offline = lambda user, closed_at: seen.append(closed_at)
    clock.advance(10)
    presence.opened("alice")
    presence.closed("alice")
    clock.advance(3.1)
    assert seen == [10_000]  # not 13,100: the grace period is not part of it


def test_reconnect_within_grace_is_silent():
    clock, presence, events = tracker(3.0)
    presence.opened("alice")
    presence.closed("alice")
    clock.advance(1)
    presence.opened("alice")
    clock.advance(10)
    assert events == [("online", "alice")]


def test_online_among_and_stop():
    clock, presence, _ = tracker(3.0)
    presence.opened("a")
    presence.opened("b")
    presence.closed("b")
    assert presence.online_among(["a", "b", "c"]) == ["a", "b"]  # b is in its grace period
    presence.stop()
    assert clock.getDelayedCalls() == []


def test_dm_room_id_is_symmetric_and_safe():
    assert dm_room_id("alice", "bob") == dm_room_id("bob", "alice")
    assert dm_room_id("a", "b:c") != dm_room_id("a:b", "c")
    room = dm_room_id("weird id/with:chars", "x")
    assert room.startswith("dm_") and room[3:].isalnum()
