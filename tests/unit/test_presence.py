"""The local presence tracker: connection counts and the grace period, with a Clock."""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from chatd.domain.interfaces import OnlineDirectory
from chatd.domain.presence import LocalPresence
from chatd.domain.social import dm_room_id
from tests.unit.clock_time import ClockTime


class Transitions:
    """A PresenceListener that records what it is told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.seen: list[int] = []
        self.pending: Deferred[None] | None = None

    def went_online(self, user_id: str, online: OnlineDirectory) -> Deferred[None]:
        self.events.append(("online", user_id))
        return succeed(None)

    def went_offline(self, user_id: str, at_ms: int, online: OnlineDirectory) -> Deferred[None]:
        self.events.append(("offline", user_id))
        self.seen.append(at_ms)
        return self.pending if self.pending is not None else succeed(None)


def tracker(grace: float = 3.0):
    clock = Clock()
    listener = Transitions()
    presence = LocalPresence(listener, clock, grace, wall_clock=ClockTime(clock))
    return clock, presence, listener


def test_first_connection_announces_online_once():
    _, presence, listener = tracker()
    presence.opened("alice")
    presence.opened("alice")
    assert listener.events == [("online", "alice")]
    assert presence.is_online("alice") and presence.connections("alice") == 2


def test_offline_only_after_the_last_connection_and_the_grace_period():
    clock, presence, listener = tracker(3.0)
    presence.opened("alice")
    presence.opened("alice")
    presence.closed("alice")
    clock.advance(10)
    assert listener.events == [("online", "alice")]
    presence.closed("alice")
    clock.advance(2.9)
    assert listener.events == [("online", "alice")] and presence.is_online("alice")
    assert presence.connections("alice") == 0  # in the grace period: nobody to push to
    clock.advance(0.2)
    assert listener.events == [("online", "alice"), ("offline", "alice")]
    assert not presence.is_online("alice")


def test_last_seen_is_when_the_last_connection_closed():
    clock, presence, listener = tracker(3.0)
    clock.advance(10)
    presence.opened("alice")
    presence.closed("alice")
    clock.advance(3.1)
    assert listener.seen == [10_000]  # not 13,100: the grace period is not part of it


def test_reconnect_within_grace_is_silent():
    clock, presence, listener = tracker(3.0)
    presence.opened("alice")
    presence.closed("alice")
    clock.advance(1)
    presence.opened("alice")
    clock.advance(10)
    assert listener.events == [("online", "alice")]


def test_online_among_and_stop():
    clock, presence, _ = tracker(3.0)
    presence.opened("a")
    presence.opened("b")
    presence.closed("b")
    assert presence.online_among(["a", "b", "c"]) == ["a", "b"]  # b is in its grace period
    stopped = presence.stop()
    assert clock.getDelayedCalls() == []
    assert stopped.called


def test_stop_waits_for_an_offline_announcement_still_running():
    clock, presence, listener = tracker(1.0)
    listener.pending = Deferred()
    presence.opened("alice")
    presence.closed("alice")
    clock.advance(1)
    stopped = presence.stop()
    assert not stopped.called
    listener.pending.callback(None)
    assert stopped.called


def test_counts_for_the_http_api():
    _, presence, _ = tracker()
    presence.opened("a")
    presence.opened("a")
    presence.opened("b")
    assert presence.connection_counts(["a", "c"]).result == {"a": 2, "c": 0}
    assert presence.connected_users().result == {"a": 2, "b": 1}
    assert presence.total_connections().result == 3
    assert presence.local_counts() == {"a": 2, "b": 1}


def test_dm_room_id_is_symmetric_and_safe():
    assert dm_room_id("alice", "bob") == dm_room_id("bob", "alice")
    assert dm_room_id("a", "b:c") != dm_room_id("a:b", "c")
    room = dm_room_id("weird id/with:chars", "x")
    assert room.startswith("dm_") and room[3:].isalnum()
