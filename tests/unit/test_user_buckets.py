"""The per-user request budget and the connection limits of the session
layer (chatd/session/rate.py, hub.py, session.py): weighted token buckets,
one bucket per user shared by the user's sessions, and the per-process,
per-address and per-user connection caps.  A ``Clock``, a recording
binding; no reactor, no sockets."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from chatd.addresses import AddressCounts
from chatd.broker.memory import InProcessBroker
from chatd.domain.chat import ChatService
from chatd.domain.models import ActingUser, Limits, NewMessage, Room
from chatd.domain.publishing import Publisher
from chatd.domain.registry import LocalRegistry
from chatd.errors import ErrorCode
from chatd.session.hub import peer_address
from chatd.session.rate import TokenBucket, UserBuckets, request_cost
from chatd.session.session import (
    CLOSE_TOO_MANY_CONNECTIONS,
    CLOSE_TRY_AGAIN_LATER,
    Session,
)
from tests.unit.domain_world import FakeWallClock
from tests.unit.session_fakes import Harness, RecordingBinding, token

# -- the weighted bucket ------------------------------------------------------------


def test_a_bucket_spends_the_cost_and_refuses_what_it_does_not_hold() -> None:
    bucket = TokenBucket(rate=10.0, burst=20, now=0.0)
    assert bucket.take(0.0, 15.0)
    assert not bucket.take(0.0, 6.0), "5 left"
    assert bucket.take(0.0, 5.0)
    assert bucket.wait(0.0, 4.0) == pytest.approx(0.4)
    assert bucket.take(0.4, 4.0)


def test_a_cost_above_the_burst_passes_only_on_a_full_bucket() -> None:
    bucket = TokenBucket(rate=1.0, burst=10, now=0.0)
    assert bucket.take(0.0, 1000.0), "clamped to the burst: the full bucket pays it"
    assert bucket.level(0.0) == 0.0
    assert not bucket.take(5.0, 1000.0)
    assert bucket.wait(5.0, 1000.0) == pytest.approx(5.0)
    assert bucket.take(10.0, 1000.0)


def test_request_costs_follow_the_documented_table() -> None:
    members = [f"u{i}" for i in range(30)]
    assert request_cost("chat:create", {"name": "r", "type": "private", "members": members}) == 31
    assert request_cost("chat:create", {"name": "r", "type": "public"}) == 1
    assert request_cost("chat:history", {"chatId": "r"}) == 6
    assert request_cost("chat:history", {"chatId": "r", "limit": 100}) == 11
    assert request_cost("chat:history", {"chatId": "r", "limit": 10**9}) == 11
    assert request_cost("chat:history", {"chatId": "r", "limit": True}) == 6
    assert request_cost("chat:join", "r") == 6
    assert request_cost("chat:join", {"chatId": "r", "since": 3}) == 11
    assert request_cost("friend:request", {"userId": "b"}) == 5
    assert request_cost("message:send", {"recipientId": "b", "content": "x"}) == 2
    assert request_cost("chat:message", {"chatId": "r", "content": "x"}) == 1
    assert request_cost("no:such", ["odd", "data"]) == 1
    assert request_cost("chat:create", "not an object") == 1
    # Counted up to the per-request cap: a longer list never reaches storage.
    assert request_cost("chat:create", {"members": members * 10}) == 101
    assert request_cost("chat:create", {"members": members}, max_members=5) == 6


# -- one bucket per user --------------------------------------------------------------


def test_sessions_of_one_user_share_one_bucket_and_it_outlives_them_until_refilled() -> None:
    clock = Clock()
    buckets = UserBuckets(rate=2.0, burst=10, clock=clock)
    first, second = buckets.join("alice"), buckets.join("alice")
    assert first is second and buckets.holders("alice") == 2
    assert buckets.join("bob") is not first
    assert first.take(clock.seconds(), 8.0)
    buckets.leave("alice")
    buckets.leave("alice")
    assert buckets.holders("alice") == 0 and len(buckets) == 2
    # Reconnecting before the refill gets the same drained bucket back.
    clock.advance(1.0)
    again = buckets.join("alice")
    assert again is first and not again.take(clock.seconds(), 5.0)
    buckets.leave("alice")
    clock.advance(4.0)  # 8 spent, 2 per second: full again after 4 s
    assert len(buckets) == 1, "alice's refilled bucket is dropped"
    assert buckets.join("alice") is not first


def test_a_full_bucket_is_dropped_when_its_last_session_leaves() -> None:
    clock = Clock()
    buckets = UserBuckets(rate=2.0, burst=10, clock=clock)
    buckets.join("alice")
    buckets.leave("alice")
    buckets.leave("alice")  # an extra leave changes nothing
    assert len(buckets) == 0 and clock.getDelayedCalls() == []


def test_a_users_sessions_spend_from_the_same_budget_and_others_are_untouched() -> None:
    h = Harness(rate_limit=1000.0, rate_burst=1000, user_rate_limit=0.001, user_rate_burst=6)
    (a1, b1), (a2, b2) = h.open("alice"), h.open("alice")
    bob, bob_binding = h.open("bob")
    for i in range(3):
        a1.received("ping", f"a1-{i}", None)
        a2.received("ping", f"a2-{i}", None)
    a2.received("ping", "a2-over", None)
    bob.received("ping", "b", None)
    assert [f["type"] for f in b1.sent()[1:]] == ["ack"] * 3
    *acks, refused = b2.sent()[1:]
    assert [f["type"] for f in acks] == ["ack"] * 3
    assert refused["id"] == "a2-over" and refused["data"]["code"] == ErrorCode.RATE_LIMIT_EXCEEDED
    assert "across its connections" in refused["data"]["message"]
    assert bob_binding.sent()[-1] == {"type": "ack", "id": "b", "data": {"pong": True}}
    assert b2.closes == [], "the user's limit refuses; it never closes"


def test_the_user_bucket_charges_the_request_cost() -> None:
    h = Harness(rate_limit=1000.0, rate_burst=1000, user_rate_limit=0.001, user_rate_burst=12)
    session, binding = h.open("alice")
    members = [f"u{i}" for i in range(9)]
    session.received("echo", "c1", {"members": members})  # an unknown cost: 1
    session.received("chat:create", "c2", {"members": members})  # 10
    session.received("chat:create", "c3", {"members": members})  # 10 more: refused
    session.received("ping", "p", None)  # 1 still there
    replies = {f["id"]: f for f in binding.sent()[1:]}
    assert replies["c2"]["data"]["code"] == ErrorCode.UNKNOWN_EVENT, "passed to the dispatcher"
    assert replies["c3"]["data"]["code"] == ErrorCode.RATE_LIMIT_EXCEEDED
    assert replies["p"]["type"] == "ack"


def test_unauthenticated_frames_are_not_charged_to_anyone() -> None:
    h = Harness(rate_limit=1000.0, rate_burst=1000, user_rate_limit=0.001, user_rate_burst=2)
    session, binding = h.open(None)
    for i in range(5):
        session.received("ping", f"p{i}", None)
    assert [f["type"] for f in binding.sent()] == ["ack"] * 5
    session.received("auth", "a", {"token": token("alice", h.config)})
    for i in range(3):
        session.received("ping", f"after{i}", None)
    replies = {f.get("id"): f for f in binding.sent()}
    assert replies["after0"]["type"] == replies["after1"]["type"] == "ack", "a full bucket"
    assert replies["after2"]["data"]["code"] == ErrorCode.RATE_LIMIT_EXCEEDED


def test_a_closed_session_leaves_its_users_bucket() -> None:
    h = Harness()
    session, _ = h.open("alice")
    assert h.hub.user_buckets.holders("alice") == 1
    session.closed(True, 1000, "bye")
    assert h.hub.user_buckets.holders("alice") == 0


# -- connection limits ---------------------------------------------------------------------


def open_from(
    h: Harness, peer: str, user: str | None = "alice"
) -> tuple[Session, RecordingBinding]:
    binding = RecordingBinding()
    session = h.hub.session(binding, peer)
    session.open(token(user, h.config) if user is not None else None)
    return session, binding


def test_the_connection_limit_per_user_refuses_the_one_over_it_with_4013() -> None:
    h = Harness(max_connections_per_user=2)
    (s1, _), (s2, _) = h.open("alice"), h.open("alice")
    s3, b3 = h.open("alice")
    assert b3.close_codes() == [CLOSE_TOO_MANY_CONNECTIONS]
    [error] = b3.sent()
    assert error["data"]["code"] == ErrorCode.RATE_LIMIT_EXCEEDED
    assert error["data"]["message"] == "too many connections for this user"
    assert s3.identity is None and h.lifecycle.opened_sessions == [s1, s2]
    assert h.hub.user_buckets.holders("alice") == 2
    bob, bob_binding = h.open("bob")
    assert bob_binding.closes == [] and bob.identity is not None
    s3.closed(True, CLOSE_TOO_MANY_CONNECTIONS, "")
    assert h.hub.user_buckets.holders("alice") == 2, "the refused one was never counted"
    s1.closed(True, 1000, "")
    s4, b4 = h.open("alice")
    assert b4.closes == [] and s4.identity is not None


def test_the_user_limit_applies_to_an_auth_frame_too_and_answers_its_id() -> None:
    h = Harness(max_connections_per_user=1)
    h.open("alice")
    session, binding = h.open(None)
    session.received("auth", "a1", {"token": token("alice", h.config)})
    [error] = binding.sent()
    assert error["id"] == "a1" and error["data"]["code"] == ErrorCode.RATE_LIMIT_EXCEEDED
    assert binding.close_codes() == [CLOSE_TOO_MANY_CONNECTIONS]


def test_the_connection_limit_per_address_counts_open_transports() -> None:
    h = Harness(max_connections_per_ip=2, ip_limit_exempt=())
    first, _ = open_from(h, "tcp4:10.0.0.1:1000")
    open_from(h, "tcp4:10.0.0.1:1001", None)  # unauthenticated: counted all the same
    over, over_binding = open_from(h, "tcp4:10.0.0.1:1002", "bob")
    assert over_binding.close_codes() == [CLOSE_TOO_MANY_CONNECTIONS]
    [error] = over_binding.sent()
    assert error["data"] == {
        "code": "RATE_LIMIT_EXCEEDED",
        "message": "too many connections from this address",
    }
    assert over not in h.hub.open and over.identity is None
    _, other = open_from(h, "tcp4:10.0.0.2:1000")
    assert other.closes == []
    over.closed(True, CLOSE_TOO_MANY_CONNECTIONS, "")
    assert h.hub.per_address["10.0.0.1"] == 2
    first.closed(True, 1000, "")
    _, again = open_from(h, "tcp:10.0.0.1:1003")  # Socket.IO's form of the same address
    assert again.closes == []


def test_exempt_addresses_and_unix_peers_are_not_counted() -> None:
    h = Harness(max_connections_per_ip=1, ip_limit_exempt=("127.0.0.0/8", "::1/128"))
    for port in range(3):
        _, binding = open_from(h, f"tcp4:127.0.0.1:{port}")
        assert binding.closes == []
        _, binding = open_from(h, f"tcp6:::ffff:127.0.0.1:{port}")
        assert binding.closes == []
        _, binding = open_from(h, "unix:/run/chatd.sock")
        assert binding.closes == []
    assert len(h.hub.per_address) == 0


def test_the_process_limit_refuses_with_1013_and_frees_a_place_on_close() -> None:
    h = Harness(max_connections=2)
    first, _ = h.open("alice")
    h.open("bob")
    over, binding = h.open("carol")
    assert binding.close_codes() == [CLOSE_TRY_AGAIN_LATER] and len(h.hub) == 2
    assert binding.sent()[0]["data"]["code"] == ErrorCode.RATE_LIMIT_EXCEEDED
    over.closed(True, CLOSE_TRY_AGAIN_LATER, "")
    first.closed(True, 1000, "")
    _, binding = h.open("carol")
    assert binding.closes == []


def test_peer_addresses_are_read_from_every_descriptor_form() -> None:
    assert peer_address("tcp4:192.0.2.7:5555") == "192.0.2.7"
    assert peer_address("tcp6:2001:db8::1:5555") == "2001:db8::1"
    assert peer_address("tcp:192.0.2.7:80") == "192.0.2.7"
    assert peer_address("unix:/tmp/s") is None
    assert peer_address("tcp4:nonsense") is None
    assert peer_address(None) is None
    counts = AddressCounts(1, ("10.0.0.0/8",))
    assert counts.key(peer_address("tcp4:10.1.2.3:1")) is None
    assert counts.key(peer_address("tcp6:::ffff:10.1.2.3:1")) is None
    assert counts.key(peer_address("tcp4:11.1.2.3:1")) == "11.1.2.3"


# -- one user's backlog in the storage queue ------------------------------------------------


class HeldStore:
    """A store whose every call is recorded and answered only when the test
    says, in the order the calls came (as chatd's one storage thread does)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []
        self._waiting: list[tuple[Deferred[Any], Any]] = []

    def _held(self, name: str, user: str | None, result: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((name, user))
        self._waiting.append((d, result))
        return d

    def count_rooms_created_by(self, user_id: str) -> Deferred[Any]:
        return self._held("count", user_id, 0)

    def create_room(self, room: Room, creator: str | None, members: list[str]) -> Deferred[Any]:
        return self._held("create", creator, room)

    def is_member(self, room_id: str, user_id: str) -> Deferred[Any]:
        return self._held("is_member", user_id, True)

    def append_message(self, message: NewMessage) -> Deferred[Any]:
        return self._held("append", message.user_id, message.stored(1))

    def answer_all(self) -> None:
        while self._waiting:
            d, result = self._waiting.pop(0)
            d.callback(result)


def test_one_users_backlog_of_creations_holds_one_place_in_the_storage_queue() -> None:
    """Five chat:create from one user, then another user's chat:message: the
    message reaches storage behind the first creation only, and is stored
    before the second starts (without the per-user order all five creations
    would be queued ahead of it)."""
    broker = InProcessBroker()
    registry = LocalRegistry(broker)
    clock = Clock()
    store = HeldStore()
    chat = ChatService(
        store,  # type: ignore[arg-type]
        Publisher(broker, registry, clock),
        registry,
        clock,
        FakeWallClock(),
        Limits(),
    )
    mallory, victim = ActingUser.named("mallory"), ActingUser.named("victim")
    creations = [chat.create_room(mallory, f"r{i}", "", "private", ["x"]) for i in range(5)]
    acked = chat.send_message(victim, "r_victim", "hello", None)
    assert store.calls == [("count", "mallory"), ("is_member", "victim")]
    store.answer_all()
    victim_stored = store.calls.index(("append", "victim"))
    second_creation = [i for i, call in enumerate(store.calls) if call == ("count", "mallory")][1]
    assert victim_stored < second_creation, store.calls
    assert [call for call in store.calls if call[1] == "mallory"] == [
        ("count", "mallory"),
        ("create", "mallory"),
    ] * 5, "one creation after the other"
    results: list[Any] = []
    for d in [*creations, acked]:
        d.addCallback(results.append)
    assert len(results) == 6 and results[-1]["seq"] == 1
    assert chat._creating == {}, "the user's lock is dropped once idle"
