"""The cluster membership's lifecycle and presence decisions over a fake
Redis link (the scripts themselves run on a real Redis in
test_cluster_scripts.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from chatd.broker.cluster import (
    HEARTBEAT_SCRIPT,
    REAP,
    USER_LEAVE,
    USER_SET,
    VIEW_CHANGE,
    Cluster,
)
from chatd.domain.interfaces import OnlineDirectory
from chatd.domain.live import LocalViewers
from chatd.domain.presence import LocalPresence
from chatd.errors import BrokerUnavailable
from tests.unit.clock_time import ClockTime

SCRIPTS = {
    HEARTBEAT_SCRIPT: "heartbeat",
    REAP: "reap",
    USER_SET: "user_set",
    USER_LEAVE: "user_leave",
    VIEW_CHANGE: "view_change",
}


class FakeLink:
    """Answers each script with what ``answers`` says (a value, or a
    callable of the arguments returning a Deferred); records every call."""

    prefix = "p:"
    node = "n1"
    control_channel = b"p:cluster"

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[Any]]] = []
        self.published: list[dict[str, Any]] = []
        self.listeners: list[Any] = []
        self.up = True
        self.answers: dict[str, Any] = {
            "heartbeat": 0,
            "reap": [],
            "user_set": [1, 0],
            "user_leave": 1,
            "view_change": [1, 0],
        }

    def eval(self, script: str, args: list[Any]) -> Deferred[Any]:
        name = SCRIPTS[script]
        self.calls.append((name, args))
        if not self.up:
            return fail(BrokerUnavailable("redis unavailable: down"))
        answer = self.answers[name]
        return answer(args) if callable(answer) else succeed(answer)

    def command(self, name: str, *args: Any) -> Deferred[Any]:
        self.calls.append((name, list(args)))
        if not self.up:
            return fail(BrokerUnavailable("redis unavailable: down"))
        return succeed([] if name == "smembers" else 0)

    def publish(self, channel: bytes, payload: bytes) -> Deferred[Any]:
        self.published.append(json.loads(payload))
        return succeed(1)

    def is_up(self) -> bool:
        return self.up

    def add_listener(self, listener: Any) -> None:
        self.listeners.append(listener)

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


class Announcer:
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def went_online(self, user_id: str, online: OnlineDirectory) -> Deferred[None]:
        self.events.append(("online", user_id, online))
        return succeed(None)

    def went_offline(self, user_id: str, at_ms: int, online: OnlineDirectory) -> Deferred[None]:
        self.events.append(("offline", user_id, at_ms))
        return succeed(None)


def cluster(connections: Callable[[], int] = lambda: 3, grace: float = 1.0):
    clock = Clock()
    link = FakeLink()
    announcer = Announcer()
    local = partial(LocalPresence, clock=clock, grace=grace, wall_clock=ClockTime(clock))
    membership = Cluster(link, clock, announcer, local, LocalViewers(), connections)
    return clock, link, announcer, membership


# -- start and stop ----------------------------------------------------------------------------


def test_start_fires_once_the_first_heartbeat_registered_the_node():
    clock, link, _, membership = cluster(lambda: 7)
    assert link.listeners == [membership]
    link.answers["heartbeat"] = 1  # a new node
    started = membership.start()
    assert started.called and started.result is None
    assert link.calls[0] == ("heartbeat", ["p:", "n1", 7])
    clock.advance(0)  # a new node registers its (empty) local state
    assert "smembers" in link.names()


def test_start_waits_for_the_link_then_registers():
    _, link, _, membership = cluster()
    link.up = False  # still connecting
    started = membership.start()
    assert not started.called
    link.up = True
    membership.link_up()
    assert started.called


def test_start_does_not_fail_when_redis_is_out_of_reach():
    _, link, _, membership = cluster()
    link.up = False
    started = membership.start()
    membership.link_down("connection refused")
    assert started.called and started.result is None  # logged; the node serves locally


def test_start_gives_up_waiting_after_the_start_timeout():
    clock, link, _, membership = cluster()
    link.up = False
    started = membership.start()
    clock.advance(membership.start_timeout - 0.1)
    assert not started.called
    clock.advance(0.2)
    assert started.called
    assert membership._beat.running  # it keeps trying


def test_heartbeat_and_sweep_run_every_interval():
    clock, link, _, membership = cluster()
    membership.start()
    clock.advance(membership.heartbeat_interval)
    assert link.names().count("heartbeat") == 2 and link.names().count("reap") == 1


def test_stop_waits_for_a_heartbeat_in_flight_then_leaves():
    clock, link, announcer, membership = cluster()
    membership.start()
    in_flight: Deferred[Any] = Deferred()
    link.answers["heartbeat"] = lambda args: in_flight
    link.answers["reap"] = ["o", "alice", "1234", "s", "stream1"]
    clock.advance(membership.heartbeat_interval)  # the second beat hangs
    stopped = membership.stop()
    assert not stopped.called and ("reap", ["p:", 0, "n1"]) not in link.calls
    in_flight.callback(0)
    assert stopped.called and stopped.result is None
    assert link.calls[-1] == ("reap", ["p:", 0, "n1"])
    assert ("offline", "alice", 1234) in announcer.events
    assert {"t": "off", "v": "alice", "n": "n1"} in link.published
    assert clock.getDelayedCalls() == []


def test_stop_logs_a_failed_leave_and_fires():
    _, link, _, membership = cluster()
    membership.start()
    link.up = False
    stopped = membership.stop()
    assert stopped.called and stopped.result is None


def test_stop_before_registering_settles_start():
    _, link, _, membership = cluster()
    link.up = False
    started = membership.start()
    membership.stop()
    assert started.called


def test_no_reregistration_after_stop():
    clock, link, _, membership = cluster()
    membership.start()
    membership.stop()
    calls = len(link.calls)
    membership.reregister()
    membership.subscriber_connected()
    clock.advance(10)
    assert len(link.calls) == calls


# -- presence decisions --------------------------------------------------------------------------


def test_the_node_that_made_the_user_online_announces_it():
    _, link, announcer, membership = cluster()
    presence = membership.presence
    presence.opened("alice")
    assert link.calls[-1] == ("user_set", ["p:", "n1", "alice", 1, 1])
    assert announcer.events == [("online", "alice", presence)]
    assert {"t": "on", "v": "alice", "n": "n1"} in link.published
    link.answers["user_set"] = [0, 0]
    presence.opened("alice")
    assert len(announcer.events) == 1


def test_online_on_another_node_is_not_announced_here():
    _, link, announcer, membership = cluster()
    link.answers["user_set"] = [0, 0]
    membership.presence.opened("alice")
    assert announcer.events == []


def test_offline_after_grace_only_when_no_node_holds_the_user():
    clock, link, announcer, membership = cluster(grace=1.0)
    presence = membership.presence
    clock.advance(5)
    presence.opened("alice")
    link.answers["user_set"] = [0, 0]  # the user's hash is not new any more
    presence.closed("alice")
    link.answers["user_leave"] = 0  # still on another node
    clock.advance(1.1)
    assert [e[0] for e in announcer.events] == ["online"]
    presence.opened("alice")
    presence.closed("alice")
    link.answers["user_leave"] = 1
    clock.advance(1.1)
    assert announcer.events[-1] == ("offline", "alice", 6100)


def test_redis_down_behaves_as_one_process():
    clock, link, announcer, membership = cluster(grace=1.0)
    link.up = False
    presence = membership.presence
    presence.opened("alice")
    assert announcer.events == [("online", "alice", presence)]
    presence.closed("alice")
    clock.advance(1.1)
    assert announcer.events[-1][:2] == ("offline", "alice")


def test_the_mirror_follows_control_messages():
    _, _, _, membership = cluster()
    presence = membership.presence
    membership.control_received(json.dumps({"t": "on", "v": "bob", "n": "n2"}).encode())
    assert presence.is_online("bob") and presence.connections("bob") == 1
    assert presence.online_among(["bob", "carol"]) == ["bob"]
    membership.control_received(json.dumps({"t": "off", "v": "bob", "n": "n2"}).encode())
    assert not presence.is_online("bob")
    membership.control_received(b"not json")  # dropped, logged


def test_a_reaped_node_is_announced_by_the_sweep():
    clock, link, announcer, membership = cluster()
    membership.start()
    link.answers["reap"] = ["o", "bob", "999"]
    clock.advance(membership.heartbeat_interval)
    assert ("offline", "bob", 999) in announcer.events
    assert membership.reaped_nodes == 1


# -- viewers -------------------------------------------------------------------------------------


def test_viewer_changes_reach_the_listeners():
    _, link, _, membership = cluster()
    viewers = membership.viewers
    changed: list[str] = []
    viewers.add_listener(changed.append)
    viewers.add("s1", "alice")
    assert changed == ["s1"] and viewers.count("s1") == 1
    assert {"t": "views", "v": "s1", "n": "n1"} in link.published
