"""The Redis broker without Redis: URL parsing (chatd/broker/target.py),
the event wire format and ``RedisBroker`` over a fake link
(chatd/broker/redis.py), driven by a task.Clock."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

# txredisapi imports the global reactor; pytest-twisted has installed the
# asyncio one before collection, so this import must not replace it.
from chatd.broker import redis as redis_broker
from chatd.broker.redis import READY_TIMEOUT, RedisBroker, decode_event, encode_event
from chatd.broker.target import RedisTarget
from chatd.domain.models import Published
from chatd.errors import BrokerUnavailable

# -- RedisTarget.parse ----------------------------------------------------------------


def test_the_imported_reactor_is_the_asyncio_one():
    from twisted.internet import reactor
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    assert isinstance(reactor, AsyncioSelectorReactor)
    assert redis_broker.txredisapi.reactor is reactor


def test_parse_plain_host_defaults():
    target = RedisTarget.parse("redis://cache.example")
    assert target == RedisTarget("cache.example", 6379, 0, None, None, False)
    assert target.safe() == "redis://cache.example:6379/0"


def test_parse_port_and_db():
    target = RedisTarget.parse("redis://127.0.0.1:6380/3")
    assert (target.host, target.port, target.db, target.tls) == ("127.0.0.1", 6380, 3, False)


def test_parse_trailing_slash_is_db_zero():
    assert RedisTarget.parse("redis://h:1/").db == 0


def test_parse_rediss_is_tls():
    target = RedisTarget.parse("rediss://secure.example:6390/2")
    assert target.tls is True
    assert (target.host, target.port, target.db) == ("secure.example", 6390, 2)
    assert target.safe() == "rediss://secure.example:6390/2"


def test_parse_user_and_password():
    target = RedisTarget.parse("redis://app:s3cr%40t@h:6379/1")
    assert target.username == "app"
    assert target.password == "s3cr@t"
    assert target.safe() == "redis://app@h:6379/1"
    assert "s3cr" not in target.safe()


def test_parse_password_only():
    target = RedisTarget.parse("redis://:hunter2@h/0")
    assert target.username is None
    assert target.password == "hunter2"
    assert target.safe() == "redis://h:6379/0"
    assert "hunter2" not in target.safe()


def test_parse_ipv6_host():
    target = RedisTarget.parse("redis://[::1]:7000/5")
    assert (target.host, target.port, target.db) == ("::1", 7000, 5)


@pytest.mark.parametrize(
    "url",
    [
        "http://h:6379/0",
        "h:6379",
        "",
        "redis+sentinel://h/0",
        "unix:///tmp/redis.sock",
    ],
)
def test_parse_rejects_other_schemes(url):
    with pytest.raises(ValueError):
        RedisTarget.parse(url)


@pytest.mark.parametrize("url", ["redis://h:notaport/0", "redis://h:99999/0", "redis://h:-1/0"])
def test_parse_rejects_bad_ports(url):
    with pytest.raises(ValueError, match="port"):
        RedisTarget.parse(url)


@pytest.mark.parametrize(
    "url", ["redis://h:6379/zero", "redis://h/1/2", "redis://h/-1", "redis://h/1.5"]
)
def test_parse_rejects_bad_databases(url):
    with pytest.raises(ValueError, match="database"):
        RedisTarget.parse(url)


def test_parse_rejects_port_zero():
    """Port 0 cannot be connected to; ``parts.port or 6379`` quietly turns
    it into the default port instead of rejecting it."""
    with pytest.raises(ValueError, match="port"):
        RedisTarget.parse("redis://h:0/0")


def test_parse_rejects_a_missing_host():
    with pytest.raises(ValueError, match="host"):
        RedisTarget.parse("redis:///0")


# -- encode_event / decode_event ------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        Published("chat:message", b'{"a":1}'),
        Published("chat:message", b'{"a":1}', skip_user="alice"),
        Published("chat:message", b'{"a":1}', skip_connection="c-1"),
        Published("chat:message", b'{"a":1}', seq=42),
        Published("chat:message", b'{"a":1}', "alice", "c-1", 0),
        Published("presence:update", b""),
    ],
)
def test_encode_decode_round_trip(event):
    node, decoded = decode_event(encode_event("node-a", event))
    assert node == "node-a"
    assert decoded == event


def test_the_wire_format_is_one_json_header_line_then_the_body():
    payload = encode_event("n1", Published("t", b'{"x":2}', "u", "c", 7))
    assert payload == b'["n1","t","u","c",7]\n{"x":2}'


def test_the_body_keeps_its_bytes_even_with_newlines():
    body = json.dumps({"content": "line one\nline two\r\n\ttab", "n": [1, 2]}).encode()
    assert b"\\n" in body
    pretty = b'{\n  "content": "a\\nb"\n}\n'  # raw newlines in the body too
    for data in (body, pretty, b"\n", b"\n\n"):
        event = Published("chat:message", data, seq=3)
        _, decoded = decode_event(encode_event("n", event))
        assert decoded.data == data


def test_unicode_survives():
    data = json.dumps({"content": "héllo 🌍 Привет 中文"}, ensure_ascii=False).encode()
    event = Published("chat:message", data, skip_user="ünïcødé-üser", skip_connection="连接", seq=9)
    node, decoded = decode_event(encode_event("nœud-1", event))
    assert node == "nœud-1"
    assert decoded == event
    assert json.loads(decoded.data)["content"] == "héllo 🌍 Привет 中文"


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not json\n{}",
        b"[1,2]\n{}",
        b"5\n{}",
        b"null\n{}",
        b"\xff\xfe\n{}",
        b'["a","b","c","d","e","f"]\n',
    ],
)
def test_decode_rejects_malformed_payloads_with_value_or_type_error(payload):
    with pytest.raises((ValueError, TypeError)):
        decode_event(payload)


# -- RedisBroker over a fake link -----------------------------------------------------


class FakeSubscriber:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[bytes]]] = []
        self.replies: list[tuple[str, list[bytes], Deferred[Any]]] = []

    def subscribe(self, channels: list[bytes]) -> Deferred[Any]:
        return self._call("subscribe", channels)

    def unsubscribe(self, channels: list[bytes]) -> Deferred[Any]:
        return self._call("unsubscribe", channels)

    def _call(self, name: str, channels: list[bytes]) -> Deferred[Any]:
        self.calls.append((name, list(channels)))
        d: Deferred[Any] = Deferred()
        self.replies.append((name, list(channels), d))
        return d

    def reply(self, name: str, channel: bytes, result: Any = None) -> None:
        for call, channels, d in self.replies:
            if call == name and channels == [channel] and not d.called:
                d.callback(result)
                return
        raise AssertionError(f"no pending {name} of {channel!r}")

    def reply_all(self) -> None:
        for _, _, d in self.replies:
            if not d.called:
                d.callback(None)


class FakeLink:
    def __init__(self, prefix: str = "chatd:", node: str = "node-a") -> None:
        self.prefix = prefix
        self.node = node
        self.many_channel = (prefix + "many").encode()
        self.subscriber: FakeSubscriber | None = FakeSubscriber()
        self.listeners: list[Any] = []
        self.published: list[tuple[bytes, bytes]] = []
        self.publish_result: Any = None
        self.started = 0
        self.stopped = 0
        self.pings = 0

    def add_listener(self, listener: Any) -> None:
        self.listeners.append(listener)

    def on_message(self, channel: bytes, payload: bytes) -> None:
        """What the real link does with a message off the control channel."""
        for listener in self.listeners:
            listener.message_received(channel, payload)

    def subscriber_connected(self) -> None:
        for listener in self.listeners:
            listener.subscriber_connected()

    def publish(self, channel: bytes, payload: bytes) -> Deferred[Any]:
        self.published.append((channel, payload))
        if self.publish_result is not None:
            return self.publish_result
        return succeed(1)

    def ping(self) -> Deferred[None]:
        self.pings += 1
        return succeed(None)

    def start(self) -> None:
        self.started += 1

    def stop(self) -> Deferred[None]:
        self.stopped += 1
        return succeed(None)


class Setup:
    def __init__(self) -> None:
        self.clock = Clock()
        self.link = FakeLink()
        self.broker = RedisBroker(self.link, self.clock)  # type: ignore[arg-type]
        self.received: list[tuple[str, Published]] = []
        self.broker.set_receiver(lambda channel, event: self.received.append((channel, event)))

    @property
    def sub(self) -> FakeSubscriber:
        assert self.link.subscriber is not None
        return self.link.subscriber

    def turn(self) -> None:
        self.clock.advance(0)

    def incoming(self, channel: str, payload: bytes) -> None:
        self.link.on_message(b"chatd:ch:" + channel.encode(), payload)


@pytest.fixture
def s() -> Setup:
    return Setup()


def test_the_broker_registers_with_the_link(s):
    assert s.link.listeners == [s.broker]


def test_subscribe_is_sent_on_the_next_turn_with_the_prefix(s):
    s.broker.subscribe("room:1")
    assert s.sub.calls == []
    assert s.broker.is_subscribed("room:1")
    s.turn()
    assert s.sub.calls == [("subscribe", [b"chatd:ch:room:1"])]


def test_a_burst_of_subscriptions_is_one_pass_with_one_subscribe_per_channel(s):
    for _ in range(5):
        s.broker.subscribe("room:1")
    s.broker.subscribe("room:2")
    assert len(s.clock.getDelayedCalls()) == 1
    s.turn()
    assert sorted(s.sub.calls) == [
        ("subscribe", [b"chatd:ch:room:1"]),
        ("subscribe", [b"chatd:ch:room:2"]),
    ]
    s.turn()
    assert len(s.sub.calls) == 2


def test_subscribe_and_unsubscribe_in_one_turn_send_nothing(s):
    s.broker.subscribe("room:1")
    s.broker.unsubscribe("room:1")
    s.turn()
    assert s.sub.calls == []
    assert not s.broker.is_subscribed("room:1")


def test_unsubscribe_and_subscribe_again_in_one_turn_send_nothing(s):
    s.broker.subscribe("room:1")
    s.turn()
    s.broker.unsubscribe("room:1")
    s.broker.subscribe("room:1")
    s.turn()
    assert s.sub.calls == [("subscribe", [b"chatd:ch:room:1"])]


def test_subscriptions_are_counted(s):
    s.broker.subscribe("room:1")
    s.broker.subscribe("room:1")
    s.turn()
    s.broker.unsubscribe("room:1")
    s.turn()
    assert s.broker.is_subscribed("room:1")
    assert s.sub.calls == [("subscribe", [b"chatd:ch:room:1"])]
    s.broker.unsubscribe("room:1")
    assert not s.broker.is_subscribed("room:1")
    s.turn()
    assert s.sub.calls == [
        ("subscribe", [b"chatd:ch:room:1"]),
        ("unsubscribe", [b"chatd:ch:room:1"]),
    ]


def test_unsubscribe_of_a_channel_never_subscribed_sends_nothing(s):
    s.broker.unsubscribe("room:9")
    s.turn()
    assert s.sub.calls == []
    assert not s.broker.is_subscribed("room:9")
    s.broker.subscribe("room:9")  # the count did not go negative
    s.turn()
    assert s.broker.is_subscribed("room:9")
    assert s.sub.calls == [("subscribe", [b"chatd:ch:room:9"])]


def test_nothing_is_sent_while_the_subscriber_is_down(s):
    s.link.subscriber = None
    s.broker.subscribe("room:1")
    s.turn()  # no connection to send on: must not raise
    assert s.broker.is_subscribed("room:1")


def test_publish_delivers_locally_once_and_publishes_once(s):
    s.broker.subscribe("room:1")
    s.turn()
    event = Published("chat:message", b'{"m":1}', skip_user="alice", seq=5)
    d = s.broker.publish("room:1", event)
    results: list[Any] = []
    d.addCallback(results.append)
    assert results == [None]
    assert s.received == [("room:1", event)]
    assert s.link.published == [(b"chatd:ch:room:1", encode_event("node-a", event))]
    assert s.broker.published == 1
    # Redis echoes it back to this node: dropped, still delivered exactly once
    s.incoming("room:1", s.link.published[0][1])
    assert s.received == [("room:1", event)]


def test_publish_without_a_local_subscription_only_publishes(s):
    event = Published("chat:message", b"{}")
    s.broker.publish("room:1", event)
    assert s.received == []
    assert len(s.link.published) == 1


def test_publish_before_the_subscribe_is_sent_still_delivers_locally(s):
    s.broker.subscribe("room:1")  # not yet sent to Redis
    event = Published("chat:message", b"{}")
    s.broker.publish("room:1", event)
    assert s.received == [("room:1", event)]


def test_publish_without_a_receiver_publishes(s):
    broker = RedisBroker(s.link, s.clock)  # type: ignore[arg-type]
    broker.subscribe("room:1")
    broker.publish("room:1", Published("t", b"{}"))
    assert len(s.link.published) == 1


def test_a_failed_publish_is_counted_and_swallowed(s):
    s.broker.subscribe("room:1")
    pending: Deferred[Any] = Deferred()
    s.link.publish_result = pending
    event = Published("t", b"{}")
    d = s.broker.publish("room:1", event)
    pending.errback(BrokerUnavailable("redis unavailable: down"))
    results: list[Any] = []
    d.addBoth(results.append)
    assert results == [None]
    assert s.broker.publish_failures == 1
    assert s.received == [("room:1", event)]  # local delivery still happened


def test_a_message_from_another_node_is_delivered_without_the_prefix(s):
    s.broker.subscribe("user:bob")
    s.turn()
    event = Published("notification", '{"t":"ü"}'.encode(), "alice", "c9", None)
    s.incoming("user:bob", encode_event("node-b", event))
    assert s.received == [("user:bob", event)]


def test_a_message_for_a_channel_no_longer_wanted_is_dropped(s):
    s.broker.subscribe("room:1")
    s.turn()
    s.broker.unsubscribe("room:1")
    s.incoming("room:1", encode_event("node-b", Published("t", b"{}")))
    assert s.received == []


def test_a_message_outside_the_channel_prefix_is_ignored(s):
    s.broker.subscribe("room:1")
    s.link.on_message(b"other:ch:room:1", encode_event("node-b", Published("t", b"{}")))
    s.link.on_message(b"room:1", encode_event("node-b", Published("t", b"{}")))
    assert s.received == []


@pytest.mark.parametrize(
    "payload",
    [b"", b"garbage", b"{not json}\n{}", b"[1]\n{}", b"42\n{}", b"null\n{}", b"\xff\n{}"],
)
def test_malformed_payloads_are_dropped_without_raising(s, payload):
    s.broker.subscribe("room:1")
    s.turn()
    s.incoming("room:1", payload)
    assert s.received == []
    # and the next good one still goes through
    event = Published("t", b"{}", seq=1)
    s.incoming("room:1", encode_event("node-b", event))
    assert s.received == [("room:1", event)]


def test_messages_before_a_receiver_is_set_are_dropped():
    link = FakeLink()
    broker = RedisBroker(link, Clock())  # type: ignore[arg-type]
    broker.subscribe("room:1")
    link.on_message(b"chatd:ch:room:1", encode_event("node-b", Published("t", b"{}")))  # no raise


def fired(d: Deferred[Any]) -> bool:
    results: list[Any] = []
    d.addBoth(results.append)
    return bool(results)


def test_ready_fires_after_the_subscribe_reply(s):
    s.broker.subscribe("room:1")
    ready = s.broker.ready("room:1")
    done: list[Any] = []
    ready.addCallback(done.append)
    s.turn()
    assert done == []
    s.sub.reply("subscribe", b"chatd:ch:room:1")
    assert done == [None]
    assert s.clock.getDelayedCalls() == []  # the timeout was cancelled
    assert fired(s.broker.ready("room:1"))  # active now: at once


def test_ready_fires_every_waiter(s):
    s.broker.subscribe("room:1")
    waiters = [s.broker.ready("room:1") for _ in range(3)]
    s.turn()
    s.sub.reply("subscribe", b"chatd:ch:room:1")
    assert all(fired(w) for w in waiters)
    assert s.clock.getDelayedCalls() == []


def test_ready_is_immediate_when_redis_is_down(s):
    s.link.subscriber = None
    s.broker.subscribe("room:1")
    assert fired(s.broker.ready("room:1"))
    assert len(s.clock.getDelayedCalls()) == 1  # the sync pass, no ready timeout


def test_ready_is_immediate_for_a_channel_not_subscribed(s):
    assert fired(s.broker.ready("room:nobody"))


def test_ready_times_out(s):
    s.broker.subscribe("room:1")
    ready = s.broker.ready("room:1")
    s.turn()
    s.clock.advance(READY_TIMEOUT - 0.01)
    assert not ready.called
    s.clock.advance(0.02)
    assert ready.called
    assert s.clock.getDelayedCalls() == []
    # a reply arriving afterwards is harmless
    s.sub.reply("subscribe", b"chatd:ch:room:1")
    assert fired(s.broker.ready("room:1"))


def test_a_failed_subscribe_wakes_ready_and_is_retried_later(s):
    s.broker.subscribe("room:1")
    ready = s.broker.ready("room:1")
    s.turn()
    _, _, d = s.sub.replies[0]
    d.errback(RuntimeError("subscribe failed"))
    assert ready.called
    assert not s.broker.ready("room:1").called  # not active: a new waiter waits
    # a new subscriber connection sends it again
    new = FakeSubscriber()
    s.link.subscriber = new
    s.link.subscriber_connected()
    assert new.calls == [("subscribe", [b"chatd:ch:room:1"])]


def test_a_new_subscriber_gets_every_wanted_channel_again(s):
    for channel in ("room:1", "room:2", "user:bob"):
        s.broker.subscribe(channel)
    s.broker.subscribe("room:gone")
    s.turn()
    s.sub.reply_all()
    s.broker.unsubscribe("room:gone")
    s.turn()
    new = FakeSubscriber()
    s.link.subscriber = new
    s.link.subscriber_connected()
    assert sorted(new.calls) == [
        ("subscribe", [b"chatd:ch:room:1"]),
        ("subscribe", [b"chatd:ch:room:2"]),
        ("subscribe", [b"chatd:ch:user:bob"]),
    ]
    # not active on the new connection until it confirms
    waiter = s.broker.ready("room:1")
    assert not waiter.called
    new.reply("subscribe", b"chatd:ch:room:1")
    assert waiter.called


def test_subscriptions_made_while_down_are_sent_when_the_subscriber_returns(s):
    s.link.subscriber = None
    s.broker.subscribe("room:1")
    s.turn()
    new = FakeSubscriber()
    s.link.subscriber = new
    s.link.subscriber_connected()
    assert new.calls == [("subscribe", [b"chatd:ch:room:1"])]
    s.turn()
    assert len(new.calls) == 1  # not twice


def test_a_late_reply_from_the_old_subscriber_does_not_mark_the_new_one_active(s):
    s.broker.subscribe("room:1")
    s.turn()
    old = s.sub
    new = FakeSubscriber()
    s.link.subscriber = new
    s.link.subscriber_connected()
    old.reply("subscribe", b"chatd:ch:room:1")
    assert not s.broker.ready("room:1").called


def test_ping_start_and_stop_go_to_the_link(s):
    assert fired(s.broker.ping())
    assert s.link.pings == 1
    assert fired(s.broker.start())
    assert s.link.started == 1
    s.broker.subscribe("room:1")
    waiter = s.broker.ready("room:1")
    assert fired(s.broker.stop())
    assert s.link.stopped == 1
    assert waiter.called  # nobody is left waiting
    assert s.clock.getDelayedCalls() == []  # the sync pass and the ready timeout


def test_publish_many_is_one_publish_and_reaches_local_and_remote_listeners_once():
    setup = Setup()
    broker = setup.broker
    broker.subscribe("user:a")
    broker.subscribe("user:c")
    event = Published("user:online", b'{"userId":"x"}')
    broker.publish_many(["user:a", "user:b", "user:c"], event)
    assert [channel for channel, _ in setup.received] == ["user:a", "user:c"]
    assert len(setup.link.published) == 1
    channel, payload = setup.link.published[0]
    assert channel == b"chatd:many"
    # the echo from Redis is dropped; another node's multi publish is delivered
    setup.link.on_message(channel, payload)
    assert len(setup.received) == 2
    remote = payload.replace(b'"node-a"', b'"node-b"', 1)
    setup.link.on_message(channel, remote)
    assert [c for c, _ in setup.received[2:]] == ["user:a", "user:c"]


def test_a_malformed_channel_list_is_dropped():
    setup = Setup()
    setup.broker.subscribe("user:a")
    setup.link.on_message(b"chatd:many", b'["node-b","t",null,null,null,"user:a"]\n{}')
    setup.link.on_message(b"chatd:many", b'["node-b","t",null,null,null,[1]]\n{}')
    assert setup.received == []
