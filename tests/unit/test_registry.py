"""The local registry and fan-out (chatd/domain/registry.py) on the
in-process broker."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from chatd.broker.memory import InProcessBroker
from chatd.domain.models import Identity, Published
from chatd.domain.registry import LocalRegistry, room_channel, user_channel
from chatd.protocol.envelope import wrap_push


@dataclass(eq=False)
class FakeConnection:
    connection_id: str
    identity: Identity | None
    framer: Any
    frames: list = field(default_factory=list)
    fail: bool = False

    def send_frame(self, frame):
        if self.fail:
            raise RuntimeError("transport exploded")
        self.frames.append(frame)

    def send_event(self, event_type, data):
        self.frames.append(("event", event_type, data))


def conn(connection_id: str, user: str, framer: Any = None) -> FakeConnection:
    """A connection of the test's binding (``framer`` fixture) by default."""
    return FakeConnection(connection_id, Identity(user), framer or _BINDING[0])


_BINDING: list[Any] = [None]


class CountingFramer:
    def __init__(self):
        self.calls: list[Published] = []

    def __call__(self, event: Published) -> bytes:
        self.calls.append(event)
        return wrap_push(event.type, event.data)


@pytest.fixture
def broker():
    return InProcessBroker()


@pytest.fixture(autouse=True)
def framer():
    """The framer of the test's one binding; ``conn()`` uses it."""
    _BINDING[0] = CountingFramer()
    return _BINDING[0]


@pytest.fixture
def registry(broker):
    return LocalRegistry(broker)


def event(
    n: int | None = None, skip_user=None, skip_connection=None, event_type="chat:message"
) -> Published:
    data = json.dumps({"n": n}).encode()
    return Published(event_type, data, skip_user=skip_user, skip_connection=skip_connection, seq=n)


def ns(c: FakeConnection) -> list:
    return [json.loads(f)["data"]["n"] for f in c.frames]


def join(registry: LocalRegistry, c: FakeConnection, room_id: str, last_seq: int = 0) -> None:
    assert registry.begin_join(c, room_id) is True
    registry.complete_join(c, room_id, last_seq)


def online(registry, *conns):
    for c in conns:
        registry.add_connection(c)
    return conns


# -- fan-out ---------------------------------------------------------------------------------------


def test_framer_called_once_per_event(registry, broker, framer):
    conns = online(registry, *(conn(f"c{i}", f"u{i % 3}") for i in range(7)))
    for c in conns:
        join(registry, c, "r1")
    broker.publish(room_channel("r1"), event(1))
    broker.publish(room_channel("r1"), event(2))
    assert len(framer.calls) == 2
    for c in conns:
        assert ns(c) == [1, 2]
    # the very same bytes object goes to every recipient
    assert len({id(c.frames[0]) for c in conns}) == 1


def test_no_framing_without_listeners(registry, broker, framer):
    registry.receive(room_channel("empty"), event(1))
    broker.publish(room_channel("empty"), event(1))
    assert framer.calls == []


def test_user_channel(registry, broker):
    tab1, tab2, bob = online(registry, conn("c1", "alice"), conn("c2", "alice"), conn("c3", "bob"))
    assert broker.is_subscribed(user_channel("alice")) and broker.is_subscribed(user_channel("bob"))
    broker.publish(user_channel("alice"), event(5))
    assert ns(tab1) == [5] and ns(tab2) == [5] and bob.frames == []
    assert sorted(c.connection_id for c in registry.connections_of("alice")) == ["c1", "c2"]
    assert sorted(registry.online_users()) == ["alice", "bob"]
    assert registry.online_among(["bob", "zed", "alice"]) == ["bob", "alice"]
    assert registry.connection_count() == 3


def test_skip_user(registry, broker):
    tab1, tab2, bob = online(registry, conn("c1", "alice"), conn("c2", "alice"), conn("c3", "bob"))
    for c in (tab1, tab2, bob):
        join(registry, c, "r1")
    broker.publish(room_channel("r1"), event(1, skip_user="alice"))
    assert tab1.frames == [] and tab2.frames == [] and ns(bob) == [1]


def test_skip_connection(registry, broker):
    tab1, tab2, bob = online(registry, conn("c1", "alice"), conn("c2", "alice"), conn("c3", "bob"))
    for c in (tab1, tab2, bob):
        join(registry, c, "r1")
    broker.publish(room_channel("r1"), event(1, skip_connection="c1"))
    assert tab1.frames == [] and ns(tab2) == [1] and ns(bob) == [1]


def test_failing_recipient_does_not_stop_delivery(registry, broker):
    a, bad, b = online(registry, conn("c1", "a"), conn("c2", "bad"), conn("c3", "b"))
    for c in (a, bad, b):
        join(registry, c, "r1")
    bad.fail = True
    broker.publish(room_channel("r1"), event(1))
    broker.publish(room_channel("r1"), event(2))
    assert ns(a) == [1, 2] and ns(b) == [1, 2] and bad.frames == []


# -- joining -----------------------------------------------------------------------------------------


def test_join_buffers_until_complete(registry, broker):
    early, joiner = online(registry, conn("c1", "alice"), conn("c2", "bob"))
    join(registry, early, "r1")
    assert registry.begin_join(joiner, "r1") is True
    assert registry.begin_join(joiner, "r1") is False  # already joining
    assert not registry.is_joined(joiner, "r1")
    for n in (1, 2, 3, None, 4):
        broker.publish(room_channel("r1"), event(n))
    assert joiner.frames == []
    assert ns(early) == [1, 2, 3, None, 4]
    joiner.frames.append(b'{"type":"ack","data":{"n":"reply"}}')  # the join reply goes out first
    registry.complete_join(joiner, "r1", 2)
    assert ns(joiner) == ["reply", 3, None, 4]
    assert registry.is_joined(joiner, "r1")
    assert registry.begin_join(joiner, "r1") is False  # already joined
    broker.publish(room_channel("r1"), event(5))
    assert ns(joiner)[-1] == 5 and ns(early)[-1] == 5


def test_join_buffer_honours_skips(registry, broker):
    (joiner,) = online(registry, conn("c1", "alice"))
    registry.begin_join(joiner, "r1")
    broker.publish(room_channel("r1"), event(1, skip_user="alice"))
    broker.publish(room_channel("r1"), event(2, skip_connection="c1"))
    broker.publish(room_channel("r1"), event(3, skip_connection="other"))
    registry.complete_join(joiner, "r1", 0)
    assert ns(joiner) == [3]


def test_join_buffer_alone_frames_once(registry, broker, framer):
    a, b, c = online(registry, conn("c1", "a"), conn("c2", "b"), conn("c3", "c"))
    for joiner in (a, b, c):
        registry.begin_join(joiner, "r1")
    broker.publish(room_channel("r1"), event(1))
    assert framer.calls == []  # held events are framed when released
    registry.complete_join(a, "r1", 0)
    registry.complete_join(b, "r1", 1)
    registry.complete_join(c, "r1", 0)
    assert ns(a) == [1] and b.frames == [] and ns(c) == [1]
    assert len(framer.calls) == 1 and a.frames[0] is c.frames[0]


# -- one frame per binding ----------------------------------------------------------


def test_each_binding_gets_its_own_frame_made_once_per_event(registry, broker, framer):
    other = CountingFramer()
    native = [conn(f"n{i}", f"u{i}") for i in range(3)]
    foreign = [conn(f"f{i}", f"v{i}", framer=other) for i in range(2)]
    online(registry, *native, *foreign)
    for c in native + foreign:
        join(registry, c, "r1")
    broker.publish(room_channel("r1"), event(7))
    assert len(framer.calls) == 1 and len(other.calls) == 1
    assert all(ns(c) == [7] for c in native + foreign)
    assert native[0].frames[0] is native[2].frames[0]
    assert foreign[0].frames[0] is foreign[1].frames[0]


def test_a_binding_without_recipients_frames_nothing(registry, broker, framer):
    other = CountingFramer()
    a, b = online(registry, conn("c1", "a"), conn("c2", "b", framer=other))
    join(registry, a, "r1")
    broker.publish(room_channel("r1"), event(1))
    assert len(framer.calls) == 1 and other.calls == []


def test_a_switched_framer_applies_to_every_channel_the_connection_listens_on(
    registry, broker, framer
):
    upgraded = CountingFramer()
    a, b = online(registry, conn("c1", "a"), conn("c2", "b"))
    for c in (a, b):
        join(registry, c, "r1")
    broker.publish(room_channel("r1"), event(1))
    previous, a.framer = a.framer, upgraded
    registry.framer_switched(a, previous)
    broker.publish(room_channel("r1"), event(2))
    broker.publish(user_channel("a"), event(3))
    assert ns(a) == [1, 2, 3] and ns(b) == [1, 2]
    assert [e.seq for e in upgraded.calls] == [2, 3]
    assert [e.seq for e in framer.calls] == [1, 2]
    registry.remove_connection(a)  # leaves the new framer's groups, not a stale one
    broker.publish(room_channel("r1"), event(4))
    assert ns(a) == [1, 2, 3] and ns(b) == [1, 2, 4]
    assert [e.seq for e in upgraded.calls] == [2, 3]


def test_abort_join(registry, broker):
    (joiner,) = online(registry, conn("c1", "alice"))
    registry.begin_join(joiner, "r1")
    assert broker.is_subscribed(room_channel("r1"))
    broker.publish(room_channel("r1"), event(1))
    registry.abort_join(joiner, "r1")
    assert not broker.is_subscribed(room_channel("r1"))
    assert not registry.is_joined(joiner, "r1")
    registry.complete_join(joiner, "r1", 0)  # too late: nothing happens
    broker.publish(room_channel("r1"), event(2))
    assert joiner.frames == [] and not registry.is_joined(joiner, "r1")
    registry.abort_join(joiner, "r1")  # idempotent


def test_abort_join_keeps_other_listeners_subscribed(registry, broker):
    member, joiner = online(registry, conn("c1", "a"), conn("c2", "b"))
    join(registry, member, "r1")
    registry.begin_join(joiner, "r1")
    registry.abort_join(joiner, "r1")
    assert broker.is_subscribed(room_channel("r1"))
    broker.publish(room_channel("r1"), event(1))
    assert ns(member) == [1] and joiner.frames == []


# -- leaving and disconnecting -----------------------------------------------------------------------


def test_leave_unsubscribes_with_last_listener(registry, broker):
    a, b = online(registry, conn("c1", "a"), conn("c2", "b"))
    join(registry, a, "r1")
    join(registry, b, "r1")
    assert registry.leave(a, "r1") is True
    assert registry.leave(a, "r1") is False
    assert broker.is_subscribed(room_channel("r1"))
    broker.publish(room_channel("r1"), event(1))
    assert a.frames == [] and ns(b) == [1]
    assert registry.leave(b, "r1") is True
    assert not broker.is_subscribed(room_channel("r1"))
    assert list(registry.room_connections("r1")) == []
    assert broker.is_subscribed(user_channel("a"))  # the user channel stays


def test_leave_while_joining_aborts(registry, broker):
    (joiner,) = online(registry, conn("c1", "a"))
    registry.begin_join(joiner, "r1")
    assert registry.leave(joiner, "r1") is False
    assert not broker.is_subscribed(room_channel("r1"))


def test_remove_connection(registry, broker):
    a, a2, b = online(registry, conn("c1", "alice"), conn("c2", "alice"), conn("c3", "bob"))
    join(registry, a, "r1")
    join(registry, a, "r2")
    join(registry, b, "r2")
    registry.begin_join(a, "r3")
    assert sorted(registry.remove_connection(a)) == ["r1", "r2"]
    assert not broker.is_subscribed(room_channel("r1"))
    assert broker.is_subscribed(room_channel("r2"))
    assert not broker.is_subscribed(room_channel("r3"))
    assert broker.is_subscribed(user_channel("alice"))  # a2 is still there
    assert registry.connections_of("alice") == [a2]
    assert registry.remove_connection(a2) == []
    assert not broker.is_subscribed(user_channel("alice"))
    assert registry.online_users() == ["bob"]
    registry.complete_join(a, "r3", 0)  # a late join reply for a gone connection
    assert not broker.is_subscribed(room_channel("r3"))
    assert registry.remove_connection(a) == []  # idempotent
    broker.publish(room_channel("r2"), event(1))
    assert ns(b) == [1] and a.frames == []


def test_leave_room_everywhere(registry, broker):
    tab1, tab2, bob = online(registry, conn("c1", "alice"), conn("c2", "alice"), conn("c3", "bob"))
    join(registry, tab1, "r1")
    join(registry, tab2, "r1")
    join(registry, bob, "r1")
    assert registry.leave_room_everywhere("r1", "alice") == [tab1, tab2]
    assert [c.connection_id for c in registry.room_connections("r1")] == ["c3"]
    assert registry.leave_room_everywhere("r1", "alice") == []
    assert broker.is_subscribed(room_channel("r1"))


def test_subscription_counts_balance(registry, broker):
    conns = online(registry, *(conn(f"c{i}", "u") for i in range(5)))
    for c in conns:
        join(registry, c, "r1")
    for c in conns[:-1]:
        registry.remove_connection(c)
        assert broker.is_subscribed(room_channel("r1")) and broker.is_subscribed(user_channel("u"))
    registry.remove_connection(conns[-1])
    assert not broker.is_subscribed(room_channel("r1")) and not broker.is_subscribed(
        user_channel("u")
    )


# -- batching per reactor turn (the production path, with a clock) ---------------


def test_a_burst_is_one_write_per_recipient_in_order(framer):
    from twisted.internet.task import Clock

    clock = Clock()
    broker = InProcessBroker()
    registry = LocalRegistry(broker, clock)
    a, b = conn("c1", "alice"), conn("c2", "bob")
    for c in (a, b):
        registry.add_connection(c)
        join(registry, c, "r")
    for n in (1, 2, 3):
        broker.publish(room_channel("r"), event(n))
    assert a.frames == [] and b.frames == []  # nothing before the turn ends
    clock.advance(0)
    assert len(framer.calls) == 3, "each event framed once"
    assert len(a.frames) == 1 and a.frames[0] is b.frames[0], "one shared write per recipient"
    assert a.frames[0] == b"".join(
        wrap_push("chat:message", json.dumps({"n": n}).encode()) for n in (1, 2, 3)
    )


def test_routing_changes_split_the_burst_but_keep_the_order():
    from twisted.internet.task import Clock

    clock = Clock()
    broker = InProcessBroker()
    registry = LocalRegistry(broker, clock)
    a, b = conn("c1", "alice"), conn("c2", "bob")
    for c in (a, b):
        registry.add_connection(c)
        join(registry, c, "r")
    broker.publish(room_channel("r"), event(1))
    broker.publish(room_channel("r"), event(2, skip_user="alice"))
    broker.publish(room_channel("r"), event(3))
    clock.advance(0)

    def numbers(c):
        return [json.loads(line)["data"]["n"] for f in c.frames for line in _split_frames(f)]

    assert numbers(a) == [1, 3]
    assert numbers(b) == [1, 2, 3]


def _split_frames(blob: bytes) -> list[bytes]:
    """The test framer emits JSON objects back to back; split them."""
    decoder = json.JSONDecoder()
    text, out, i = blob.decode(), [], 0
    while i < len(text):
        obj, end = decoder.raw_decode(text, i)
        out.append(json.dumps(obj).encode())
        i = end
    return out


def test_join_completing_before_the_flush_still_filters_by_seq():
    from twisted.internet.task import Clock

    clock = Clock()
    broker = InProcessBroker()
    registry = LocalRegistry(broker, clock)
    c = conn("c1", "alice")
    registry.add_connection(c)
    assert registry.begin_join(c, "r")
    broker.publish(room_channel("r"), event(5))  # already in the snapshot
    broker.publish(room_channel("r"), event(6))  # not yet
    registry.complete_join(c, "r", last_seq=5)
    clock.advance(0)
    assert ns(c) == [6]


def test_one_event_on_many_channels_is_framed_once():
    from chatd.broker.memory import InProcessBroker
    from chatd.domain.models import Identity, Published
    from chatd.domain.registry import LocalRegistry, user_channel

    framed: list[Published] = []

    def framer(event: Published) -> bytes:
        framed.append(event)
        return event.data

    class Conn:
        def __init__(self, user: str) -> None:
            self.connection_id = "c-" + user
            self.identity = Identity(user, None, None)
            self.framer = framer
            self.frames: list[bytes] = []

        def send_frame(self, frame: bytes) -> None:
            self.frames.append(frame)

    broker = InProcessBroker()
    registry = LocalRegistry(broker)
    conns = [Conn(f"u{i}") for i in range(5)]
    for conn in conns:
        registry.add_connection(conn)
    event = Published("user:online", b'{"userId":"x"}')
    broker.publish_many([user_channel(c.identity.user_id) for c in conns], event)
    assert len(framed) == 1
    assert all(conn.frames == [b'{"userId":"x"}'] for conn in conns)
