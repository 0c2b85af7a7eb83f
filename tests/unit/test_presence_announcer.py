"""The presence rules end to end in one process: LocalPresence reporting to
a PresenceAnnouncer over a fake store and publisher, with a Clock."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from chatd.clock import iso_from_ms
from chatd.domain.models import Published
from chatd.domain.presence import LocalPresence, PresenceAnnouncer
from chatd.errors import StoreUnavailable
from tests.unit.clock_time import ClockTime


class FakeStore:
    def __init__(self, audiences: dict[str, list[str]]) -> None:
        self.audiences = audiences
        self.closed: list[tuple[str, int]] = []
        self.down = False

    def presence_audience(self, user_id: str) -> Deferred[list[str]]:
        if self.down:
            return fail(StoreUnavailable("down"))
        return succeed(list(self.audiences.get(user_id, [])))

    def close_session(self, user_id: str, at_ms: int) -> Deferred[list[str]]:
        self.closed.append((user_id, at_ms))
        return self.presence_audience(user_id)


class FakePublisher:
    def __init__(self) -> None:
        self.sent: list[tuple[list[str], str, dict[str, Any]]] = []
        self.encodings = 0

    def publish(self, channel: str, event: Published) -> None:
        self.publish_many([channel], event)

    def publish_many(self, channels: list[str], event: Published) -> None:
        self.encodings += 1
        self.sent.append((channels, event.type, json.loads(event.data)))


def setup(audiences: dict[str, list[str]], grace: float = 3.0):
    clock = Clock()
    store = FakeStore(audiences)
    publisher = FakePublisher()
    announcer = PresenceAnnouncer(store, publisher)
    presence = LocalPresence(announcer, clock, grace, wall_clock=ClockTime(clock))
    return clock, store, publisher, announcer, presence


def test_online_is_announced_once_to_the_online_audience_only():
    _, _, publisher, _, presence = setup({"alice": ["bob", "carol", "dave"]})
    presence.opened("bob")
    presence.opened("carol")
    publisher.sent.clear()
    presence.opened("alice")
    presence.opened("alice")  # a second tab: no new announcement
    assert publisher.sent == [(["user:bob", "user:carol"], "user:online", {"userId": "alice"})]


def test_one_encoding_and_one_publish_for_the_whole_audience():
    audience = [f"u{i}" for i in range(50)]
    _, _, publisher, _, presence = setup({"alice": audience})
    for user in audience:
        presence.opened(user)
    publisher.sent.clear()
    publisher.encodings = 0
    presence.opened("alice")
    assert publisher.encodings == 1
    assert publisher.sent[0][0] == [f"user:{u}" for u in audience]


def test_nobody_online_in_the_audience_hears_nothing():
    _, _, publisher, _, presence = setup({"alice": ["bob"]})
    presence.opened("alice")
    assert publisher.sent == []


def test_offline_after_grace_with_last_seen_at_the_last_close():
    clock, store, publisher, _, presence = setup({"alice": ["bob"], "bob": ["alice"]})
    presence.opened("bob")
    clock.advance(100)
    presence.opened("alice")
    presence.opened("alice")
    presence.closed("alice")
    clock.advance(5)
    presence.closed("alice")  # the last one, at t=105 s
    publisher.sent.clear()
    clock.advance(2.9)
    assert publisher.sent == [] and store.closed == []
    clock.advance(0.2)
    assert store.closed == [("alice", 105_000)]
    assert publisher.sent == [
        (["user:bob"], "user:offline", {"userId": "alice", "lastSeen": iso_from_ms(105_000)})
    ]


def test_a_reconnect_within_grace_does_not_flap():
    clock, store, publisher, _, presence = setup({"alice": ["bob"]})
    presence.opened("bob")
    presence.opened("alice")
    publisher.sent.clear()
    presence.closed("alice")
    clock.advance(2)
    presence.opened("alice")
    clock.advance(10)
    assert publisher.sent == [] and store.closed == []


def test_offline_goes_to_those_of_the_audience_still_online():
    clock, _, publisher, _, presence = setup({"alice": ["bob", "carol"]})
    for user in ("bob", "carol", "alice"):
        presence.opened(user)
    presence.closed("carol")
    clock.advance(10)  # carol is gone
    publisher.sent.clear()
    presence.closed("alice")
    clock.advance(3.1)
    assert [(channels, kind) for channels, kind, _ in publisher.sent] == [
        (["user:bob"], "user:offline")
    ]


def test_status_answers_about_the_audience_only():
    _, _, _, announcer, presence = setup({"alice": ["bob", "carol"]})
    presence.opened("bob")
    presence.opened("mallory")  # online, but not in alice's audience
    assert announcer.status("alice", presence).result == {"userIds": ["bob"]}


def test_status_passes_a_store_failure_to_the_caller():
    _, store, _, announcer, presence = setup({})
    store.down = True
    failure = announcer.status("alice", presence)
    failures: list[Any] = []
    failure.addErrback(failures.append)
    assert failures and failures[0].check(StoreUnavailable)


def test_a_store_failure_while_announcing_is_logged_not_raised():
    _, store, publisher, announcer, presence = setup({"alice": ["bob"]})
    store.down = True
    done = announcer.went_online("alice", presence)
    assert done.called and done.result is None
    assert publisher.sent == []


def test_new_friends_hear_each_other_online_at_once():
    _, _, publisher, announcer, presence = setup({})
    presence.opened("alice")
    presence.opened("bob")
    publisher.sent.clear()
    announcer.befriended("alice", "bob", presence)
    assert publisher.sent == [
        (["user:bob"], "user:online", {"userId": "alice"}),
        (["user:alice"], "user:online", {"userId": "bob"}),
    ]
    publisher.sent.clear()
    announcer.befriended("alice", "zoe", presence)  # zoe is offline: only zoe hears
    assert publisher.sent == [(["user:zoe"], "user:online", {"userId": "alice"})]
