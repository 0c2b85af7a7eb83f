"""Typing indicators with the server-side stop (chatd/domain/typing.py),
driven by a task.Clock."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from twisted.internet.task import Clock

from chatd.domain.models import Identity
from chatd.domain.typing import TYPING_TIMEOUT, TypingTracker


@dataclass(eq=False)
class FakeConnection:
    connection_id: str
    identity: Identity
    frames: list = field(default_factory=list)

    def send_frame(self, frame):
        self.frames.append(frame)

    def send_event(self, event_type, data):
        self.frames.append((event_type, data))


def conn(connection_id: str, user: str) -> FakeConnection:
    return FakeConnection(connection_id, Identity(user))


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def announced():
    return []


@pytest.fixture
def tracker(clock, announced):
    return TypingTracker(clock, lambda *args: announced.append(args))


def test_default_timeout_is_six_seconds():
    assert TYPING_TIMEOUT == 6.0


def test_true_announces_once(tracker, announced, clock):
    alice = conn("c1", "alice")
    tracker.update(alice, "r1", True)
    assert announced == [("r1", "alice", "c1", True)]
    assert tracker.is_typing("r1", "alice")
    assert len(clock.getDelayedCalls()) == 1


def test_repeated_true_rearms_without_announcing(tracker, announced, clock):
    alice = conn("c1", "alice")
    tracker.update(alice, "r1", True)
    clock.advance(5)
    tracker.update(alice, "r1", True)
    tracker.update(alice, "r1", True)
    assert announced == [("r1", "alice", "c1", True)]
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(5)  # 10 s after the first true, 5 s after the last
    assert announced == [("r1", "alice", "c1", True)]
    assert tracker.is_typing("r1", "alice")
    clock.advance(1.1)
    assert announced == [("r1", "alice", "c1", True), ("r1", "alice", "c1", False)]
    assert not tracker.is_typing("r1", "alice")


def test_false_announces_false(tracker, announced, clock):
    alice = conn("c1", "alice")
    tracker.update(alice, "r1", True)
    tracker.update(alice, "r1", False)
    assert announced == [("r1", "alice", "c1", True), ("r1", "alice", "c1", False)]
    assert not tracker.is_typing("r1", "alice")
    assert clock.getDelayedCalls() == []
    clock.advance(60)
    assert len(announced) == 2


def test_false_without_true_announces_nothing(tracker, announced):
    tracker.update(conn("c1", "alice"), "r1", False)
    assert announced == []


def test_repeated_false_announces_once(tracker, announced):
    alice = conn("c1", "alice")
    tracker.update(alice, "r1", True)
    tracker.update(alice, "r1", False)
    tracker.update(alice, "r1", False)
    assert [a[3] for a in announced] == [True, False]


def test_silence_announces_false_exactly_once(tracker, announced, clock):
    alice = conn("c1", "alice")
    tracker.update(alice, "r1", True)
    clock.advance(5.9)
    assert announced == [("r1", "alice", "c1", True)]
    clock.advance(0.2)
    assert announced == [("r1", "alice", "c1", True), ("r1", "alice", "c1", False)]
    clock.advance(100)
    assert len(announced) == 2
    assert clock.getDelayedCalls() == []
    # after expiry a new true is announced again
    tracker.update(alice, "r1", True)
    assert announced[-1] == ("r1", "alice", "c1", True)


def test_custom_timeout(clock, announced):
    tracker = TypingTracker(clock, lambda *a: announced.append(a), timeout=2.0)
    tracker.update(conn("c1", "alice"), "r1", True)
    clock.advance(1.9)
    assert len(announced) == 1
    clock.advance(0.2)
    assert announced[-1] == ("r1", "alice", "c1", False)


def test_rooms_and_users_are_independent(tracker, announced, clock):
    alice, bob = conn("c1", "alice"), conn("c2", "bob")
    tracker.update(alice, "r1", True)
    clock.advance(3)
    tracker.update(alice, "r2", True)
    tracker.update(bob, "r1", True)
    assert [a[:2] for a in announced] == [("r1", "alice"), ("r2", "alice"), ("r1", "bob")]
    clock.advance(3.1)  # only alice in r1 expires
    assert announced[-1] == ("r1", "alice", "c1", False) and len(announced) == 4
    assert tracker.is_typing("r2", "alice") and tracker.is_typing("r1", "bob")
    clock.advance(3)
    assert sorted(a[:2] for a in announced[4:]) == [("r1", "bob"), ("r2", "alice")]
    assert all(a[3] is False for a in announced[4:])


def test_stop_connection_for_some_rooms(tracker, announced, clock):
    alice, bob = conn("c1", "alice"), conn("c2", "bob")
    for room in ("r1", "r2", "r3"):
        tracker.update(alice, room, True)
    tracker.update(bob, "r1", True)
    announced.clear()
    tracker.stop_connection(alice, ["r1", "r3"])
    assert sorted(announced) == [("r1", "alice", "c1", False), ("r3", "alice", "c1", False)]
    assert tracker.is_typing("r2", "alice") and tracker.is_typing("r1", "bob")
    assert len(clock.getDelayedCalls()) == 2
    tracker.stop_connection(alice, ["r-not-typing"])
    assert len(announced) == 2


def test_stop_connection_for_all_rooms(tracker, announced, clock):
    alice, bob = conn("c1", "alice"), conn("c2", "bob")
    tracker.update(alice, "r1", True)
    tracker.update(alice, "r2", True)
    tracker.update(bob, "r1", True)
    announced.clear()
    tracker.stop_connection(alice)
    assert sorted(announced) == [("r1", "alice", "c1", False), ("r2", "alice", "c1", False)]
    assert not tracker.is_typing("r1", "alice") and not tracker.is_typing("r2", "alice")
    assert tracker.is_typing("r1", "bob")
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(10)  # the cancelled timers never fire
    assert announced[2:] == [("r1", "bob", "c2", False)]


def test_stop_connection_ignores_other_connections_of_same_user(tracker, announced):
    tab1, tab2 = conn("c1", "alice"), conn("c2", "alice")
    tracker.update(tab1, "r1", True)
    tracker.stop_connection(tab2)
    assert tracker.is_typing("r1", "alice") and len(announced) == 1


def test_stop_all_cancels_timers_silently(tracker, announced, clock):
    alice, bob = conn("c1", "alice"), conn("c2", "bob")
    tracker.update(alice, "r1", True)
    tracker.update(bob, "r2", True)
    announced.clear()
    tracker.stop_all()
    assert clock.getDelayedCalls() == []
    assert not tracker.is_typing("r1", "alice") and not tracker.is_typing("r2", "bob")
    clock.advance(60)
    assert announced == []
