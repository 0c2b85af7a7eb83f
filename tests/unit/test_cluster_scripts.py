"""The cluster's Lua scripts (chatd/broker/cluster.py) on a real Redis,
through a tiny synchronous RESP client on a stdlib socket.  Every test works
under a key prefix of its own and deletes its keys afterwards.

Needs CHATD_TEST_REDIS_URL (e.g. redis://127.0.0.1:6379/0); skipped without
it unless CHATD_TEST_REQUIRE_SERVICES is set."""

from __future__ import annotations

import os
import socket
from typing import Any
from uuid import uuid4

import pytest

from chatd.broker.cluster import (
    COUNTS,
    HEARTBEAT_SCRIPT,
    REAP,
    TOTAL,
    USER_LEAVE,
    USER_SET,
    VIEW_CHANGE,
)
from chatd.broker.target import RedisTarget

REDIS_ENV = "CHATD_TEST_REDIS_URL"
TIMEOUT_MS = 15000


class RedisError(Exception):
    pass


class Resp:
    """Just enough RESP2 for these tests."""

    def __init__(self, target: RedisTarget) -> None:
        self.sock = socket.create_connection((target.host, target.port), timeout=5)
        self.file = self.sock.makefile("rb")
        if target.password is not None:
            if target.username:
                self.call("AUTH", target.username, target.password)
            else:
                self.call("AUTH", target.password)
        self.call("SELECT", target.db)

    def call(self, *args: Any) -> Any:
        out = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.sock.sendall(b"".join(out))
        return self._read()

    def _read(self) -> Any:
        line = self.file.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RedisError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self.file.read(size + 2)
            return data[:-2].decode()
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self._read() for _ in range(size)]
        raise RedisError(f"unexpected reply {line!r}")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def requires_redis() -> RedisTarget:
    url = os.environ.get(REDIS_ENV) or None
    if url is None:
        if os.environ.get("CHATD_TEST_REQUIRE_SERVICES"):
            pytest.fail(f"{REDIS_ENV} is not set but CHATD_TEST_REQUIRE_SERVICES is")
        pytest.skip(f"{REDIS_ENV} is not set (CI sets it; see .ci/run)")
    return RedisTarget.parse(url)


class Scripts:
    """The scripts as the cluster code calls them, under one prefix."""

    def __init__(self, redis: Resp, prefix: str) -> None:
        self.r = redis
        self.p = prefix

    def eval(self, script: str, *args: Any) -> Any:
        return self.r.call("EVAL", script, 0, *args)

    def user_set_full(self, node: str, user: str, count: int, delta: int) -> list[int]:
        """[became online, node was missing from the nodes set]"""
        return self.eval(USER_SET, self.p, node, user, count, delta)

    def user_set(self, node: str, user: str, count: int, delta: int) -> int:
        return self.user_set_full(node, user, count, delta)[0]

    def user_leave(self, node: str, user: str) -> int:
        return self.eval(USER_LEAVE, self.p, node, user)

    def heartbeat(self, node: str, conns: int) -> int:
        return self.eval(HEARTBEAT_SCRIPT, self.p, node, conns)

    def reap(self, timeout_ms: int = TIMEOUT_MS, only: str = "") -> list[Any]:
        return self.eval(REAP, self.p, timeout_ms, only)

    def view_full(self, node: str, stream: str, user: str, adding: bool) -> list[int]:
        """[viewer count, node was missing from the nodes set]"""
        return self.eval(VIEW_CHANGE, self.p, node, stream, user, "1" if adding else "0")

    def view(self, node: str, stream: str, user: str, adding: bool) -> int:
        return self.view_full(node, stream, user, adding)[0]

    def counts(self, *users: str) -> dict[str, int]:
        flat = self.eval(COUNTS, self.p, *users)
        return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}

    def total(self) -> int:
        return self.eval(TOTAL, self.p)

    # -- direct reads and writes -------------------------------------------------------

    def online(self) -> set[str]:
        return set(self.r.call("SMEMBERS", self.p + "online"))

    def hash(self, key: str) -> dict[str, str]:
        flat = self.r.call("HGETALL", self.p + key)
        return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}

    def members(self, key: str) -> set[str]:
        return set(self.r.call("SMEMBERS", self.p + key))

    def nodes(self) -> dict[str, int]:
        flat = self.r.call("ZRANGE", self.p + "nodes", 0, -1, "WITHSCORES")
        return {flat[i]: int(float(flat[i + 1])) for i in range(0, len(flat), 2)}

    def server_ms(self) -> int:
        seconds, micros = self.r.call("TIME")
        return int(seconds) * 1000 + int(micros) // 1000

    def silent_since(self, node: str, ms: int) -> None:
        """Pretend ``node`` heartbeat last at ``ms`` (Redis time)."""
        self.r.call("ZADD", self.p + "nodes", ms, node)

    def keys(self) -> list[str]:
        found: list[str] = []
        cursor = "0"
        while True:
            cursor, batch = self.r.call("SCAN", cursor, "MATCH", self.p + "*", "COUNT", 1000)
            found.extend(batch)
            if cursor == "0":
                return found


@pytest.fixture
def scripts() -> Any:
    target = requires_redis()
    redis = Resp(target)
    prefix = f"ut{uuid4().hex[:8]}:"
    s = Scripts(redis, prefix)
    try:
        yield s
    finally:
        keys = s.keys()
        if keys:
            redis.call("DEL", *keys)
        assert s.keys() == []
        redis.close()


def parse_reap(flat: list[Any]) -> tuple[dict[str, int], list[str]]:
    """(users now offline -> last seen ms, streams whose counts changed)."""
    offline: dict[str, int] = {}
    streams: list[str] = []
    i = 0
    while i < len(flat):
        if flat[i] == "o":
            offline[flat[i + 1]] = int(float(flat[i + 2]))
            i += 3
        else:
            assert flat[i] == "s", flat
            streams.append(flat[i + 1])
            i += 2
    return offline, streams


# -- USER_SET / USER_LEAVE -----------------------------------------------------------------


def test_first_user_set_puts_the_user_online(scripts):
    assert scripts.user_set("n1", "alice", 1, 1) == 1
    assert scripts.online() == {"alice"}
    assert scripts.hash("user:alice") == {"n1": "1"}
    assert scripts.members("node:n1:users") == {"alice"}
    assert scripts.hash("nodeconns") == {"n1": "1"}


def test_a_second_connection_or_node_is_not_a_transition(scripts):
    assert scripts.user_set("n1", "alice", 1, 1) == 1
    assert scripts.user_set("n1", "alice", 2, 1) == 0  # second connection, same node
    assert scripts.user_set("n2", "alice", 1, 1) == 0  # another node
    assert scripts.hash("user:alice") == {"n1": "2", "n2": "1"}
    assert scripts.hash("nodeconns") == {"n1": "2", "n2": "1"}
    assert scripts.online() == {"alice"}


def test_user_set_with_delta_zero_leaves_nodeconns_alone(scripts):
    """A re-registration after a reconnect sends the count with delta 0."""
    scripts.heartbeat("n1", 5)
    assert scripts.user_set("n1", "alice", 3, 0) == 1
    assert scripts.hash("nodeconns") == {"n1": "5"}
    assert scripts.hash("user:alice") == {"n1": "3"}


def test_user_leave_goes_offline_only_when_the_last_node_leaves(scripts):
    scripts.user_set("n1", "alice", 1, 1)
    scripts.user_set("n2", "alice", 1, 1)
    assert scripts.user_leave("n1", "alice") == 0
    assert scripts.online() == {"alice"}
    assert scripts.hash("user:alice") == {"n2": "1"}
    assert scripts.members("node:n1:users") == set()
    assert scripts.user_leave("n2", "alice") == 1
    assert scripts.online() == set()
    assert scripts.hash("user:alice") == {}
    # leaving again (or a node that never held the user) is not a transition
    assert scripts.user_leave("n2", "alice") == 0
    assert scripts.user_leave("n3", "alice") == 0


def test_back_online_after_leaving(scripts):
    scripts.user_set("n1", "alice", 1, 1)
    assert scripts.user_leave("n1", "alice") == 1
    assert scripts.user_set("n2", "alice", 1, 1) == 1
    assert scripts.online() == {"alice"}


def test_users_are_independent(scripts):
    assert scripts.user_set("n1", "alice", 1, 1) == 1
    assert scripts.user_set("n1", "bob", 1, 1) == 1
    assert scripts.user_leave("n1", "alice") == 1
    assert scripts.online() == {"bob"}
    assert scripts.members("node:n1:users") == {"bob"}


# -- HEARTBEAT -----------------------------------------------------------------------------


def test_heartbeat_registers_the_node_with_redis_time(scripts):
    before = scripts.server_ms()
    assert scripts.heartbeat("n1", 4) == 1  # new (or reaped) node
    after = scripts.server_ms()
    assert scripts.heartbeat("n1", 6) == 0
    assert before <= scripts.nodes()["n1"] <= after + 5
    assert scripts.hash("nodeconns") == {"n1": "6"}


def test_a_reaped_node_sees_it_on_its_next_heartbeat(scripts):
    scripts.heartbeat("n1", 1)
    scripts.silent_since("n1", scripts.server_ms() - 60_000)
    scripts.reap()
    assert "n1" not in scripts.nodes()
    assert scripts.heartbeat("n1", 1) == 1


# -- REAP ----------------------------------------------------------------------------------


def test_reap_takes_out_a_silent_node(scripts):
    now = scripts.server_ms()
    old = now - 60_000
    # n1 (about to die) holds alice alone and bob together with n2
    scripts.heartbeat("n1", 3)
    scripts.heartbeat("n2", 1)
    scripts.user_set("n1", "alice", 2, 2)
    scripts.user_set("n1", "bob", 1, 1)
    scripts.user_set("n2", "bob", 1, 1)
    assert scripts.view("n1", "s1", "alice", True) == 1
    assert scripts.view("n2", "s1", "bob", True) == 2
    assert scripts.view("n1", "s1", "bob", True) == 2
    assert scripts.view("n1", "s2", "alice", True) == 1
    scripts.silent_since("n1", old)

    offline, streams = parse_reap(scripts.reap())

    assert offline == {"alice": old}
    assert sorted(streams) == ["s1", "s1", "s2"]
    assert scripts.online() == {"bob"}
    assert scripts.hash("user:alice") == {}
    assert scripts.hash("user:bob") == {"n2": "1"}
    assert scripts.hash("viewers:s1") == {"bob": "1"}  # bob still watches from n2
    assert scripts.hash("viewers:s2") == {}
    assert set(scripts.nodes()) == {"n2"}
    assert scripts.hash("nodeconns") == {"n2": "2"}  # heartbeat 1, then bob's +1
    assert scripts.members("node:n1:users") == set()
    assert scripts.members("node:n1:viewing") == set()
    assert scripts.total() == 2


def test_reap_leaves_live_nodes_alone(scripts):
    scripts.heartbeat("n1", 1)
    scripts.user_set("n1", "alice", 1, 1)
    scripts.view("n1", "s1", "alice", True)
    scripts.silent_since("n1", scripts.server_ms() - TIMEOUT_MS + 5_000)  # late, not dead
    assert scripts.reap() == []
    assert scripts.online() == {"alice"}
    assert scripts.hash("viewers:s1") == {"alice": "1"}
    assert "n1" in scripts.nodes()


def test_reaping_is_claimed_once(scripts):
    scripts.heartbeat("n1", 1)
    scripts.user_set("n1", "alice", 1, 1)
    scripts.view("n1", "s1", "alice", True)
    scripts.silent_since("n1", scripts.server_ms() - 60_000)
    first = scripts.reap()
    assert parse_reap(first)[0].keys() == {"alice"}
    assert scripts.reap() == []  # another node's sweep finds nothing left
    assert scripts.online() == set()


def test_reap_of_several_dead_nodes(scripts):
    old = scripts.server_ms() - 60_000
    scripts.user_set("n1", "alice", 1, 1)
    scripts.user_set("n2", "alice", 1, 1)
    scripts.user_set("n2", "bob", 1, 1)
    scripts.silent_since("n1", old)
    scripts.silent_since("n2", old - 1_000)
    offline, streams = parse_reap(scripts.reap())
    # alice goes offline once, when her last node is reaped
    assert offline == {"alice": old, "bob": old - 1_000}
    assert streams == []
    assert scripts.online() == set()
    assert scripts.nodes() == {}


def test_a_clean_leave_reaps_exactly_that_node(scripts):
    scripts.heartbeat("n1", 1)
    scripts.heartbeat("n2", 1)
    seen = scripts.nodes()["n1"]
    scripts.user_set("n1", "alice", 1, 1)
    scripts.user_set("n2", "bob", 1, 1)
    scripts.view("n1", "s1", "alice", True)
    offline, streams = parse_reap(scripts.reap(0, "n1"))
    assert offline == {"alice": seen}
    assert streams == ["s1"]
    assert scripts.online() == {"bob"}
    assert set(scripts.nodes()) == {"n2"}
    assert scripts.hash("viewers:s1") == {}


def test_a_clean_leave_of_a_node_missing_from_nodes_uses_redis_time(scripts):
    scripts.user_set("n1", "alice", 1, 1)
    scripts.r.call("ZREM", scripts.p + "nodes", "n1")
    before = scripts.server_ms()
    offline, _ = parse_reap(scripts.reap(0, "n1"))
    assert before <= offline["alice"] <= scripts.server_ms()
    assert scripts.online() == set()


# -- a node holding state is always reapable -------------------------------------------------


def test_user_set_registers_a_node_that_never_heartbeat(scripts):
    before = scripts.server_ms()
    scripts.user_set("n1", "alice", 1, 1)
    assert before <= scripts.nodes()["n1"] <= scripts.server_ms()
    scripts.silent_since("n1", before - 60_000)
    offline, _ = parse_reap(scripts.reap())
    assert offline.keys() == {"alice"}
    assert scripts.online() == set()


def test_view_change_registers_a_node_that_never_heartbeat(scripts):
    before = scripts.server_ms()
    scripts.view("n1", "s1", "alice", True)
    assert before <= scripts.nodes()["n1"] <= scripts.server_ms()
    scripts.silent_since("n1", before - 60_000)
    _, streams = parse_reap(scripts.reap())
    assert streams == ["s1"]
    assert scripts.hash("viewers:s1") == {}


def test_registration_does_not_count_as_a_heartbeat(scripts):
    old = scripts.server_ms() - 60_000
    scripts.heartbeat("n1", 1)
    scripts.silent_since("n1", old)
    scripts.user_set("n1", "alice", 1, 1)
    scripts.view("n1", "s1", "alice", True)
    assert scripts.nodes() == {"n1": old}
    assert parse_reap(scripts.reap())[0] == {"alice": old}


def test_a_clean_leave_of_a_node_that_never_heartbeat_reports_its_registration(scripts):
    t0 = scripts.server_ms()
    scripts.user_set("n1", "alice", 1, 1)
    t1 = scripts.server_ms()
    offline, _ = parse_reap(scripts.reap(0, "n1"))
    assert t0 <= offline["alice"] <= t1


def test_a_reaped_node_learns_it_even_if_a_user_change_came_before_its_heartbeat(scripts):
    """n1 stalls (a long pause, not a disconnect), n2 reaps it: alice and bob
    go offline cluster-wide although both are still connected to n1.  When
    n1 resumes, a connection of carol's may open before n1's next heartbeat;
    the script that registers carol puts n1 back and says so, so n1
    registers its local state again (``Cluster.reregister``)."""
    scripts.heartbeat("n1", 2)
    scripts.user_set("n1", "alice", 1, 1)
    scripts.user_set("n1", "bob", 1, 1)
    scripts.silent_since("n1", scripts.server_ms() - 60_000)
    assert parse_reap(scripts.reap())[0].keys() == {"alice", "bob"}
    # n1 resumes: a new connection first, then its heartbeat
    assert scripts.user_set_full("n1", "carol", 1, 1) == [1, 1], "n1 cannot tell it was reaped"
    assert scripts.heartbeat("n1", 3) == 0
    assert scripts.user_set_full("n1", "dave", 1, 1) == [1, 0]
    # the same through a viewer change
    scripts.silent_since("n1", scripts.server_ms() - 60_000)
    parse_reap(scripts.reap())
    assert scripts.view_full("n1", "s", "carol", True) == [1, 1]


# -- VIEW_CHANGE ---------------------------------------------------------------------------


def test_view_change_counts_users_not_connections_nor_nodes(scripts):
    assert scripts.view("n1", "s1", "alice", True) == 1
    assert scripts.view("n1", "s1", "alice", True) == 1  # same node again: no change
    assert scripts.view("n2", "s1", "alice", True) == 1  # same user on another node
    assert scripts.hash("viewers:s1") == {"alice": "2"}
    assert scripts.view("n1", "s1", "bob", True) == 2
    assert scripts.view("n1", "s1", "alice", False) == 2  # still watching from n2
    assert scripts.hash("viewers:s1") == {"alice": "1", "bob": "1"}
    assert scripts.view("n2", "s1", "alice", False) == 1
    assert scripts.view("n2", "s1", "alice", False) == 1  # removing twice is harmless
    assert scripts.hash("viewers:s1") == {"bob": "1"}
    assert scripts.view("n1", "s1", "bob", False) == 0
    assert scripts.hash("viewers:s1") == {}


def test_view_change_keeps_streams_apart(scripts):
    assert scripts.view("n1", "s1", "alice", True) == 1
    assert scripts.view("n1", "s2", "alice", True) == 1
    assert scripts.view("n1", "s1", "alice", False) == 0
    assert scripts.hash("viewers:s2") == {"alice": "1"}
    assert scripts.members("node:n1:viewing") == {"s2\0alice"}


def test_removing_a_viewer_a_node_never_added_changes_nothing(scripts):
    scripts.view("n1", "s1", "alice", True)
    assert scripts.view("n2", "s1", "alice", False) == 1
    assert scripts.hash("viewers:s1") == {"alice": "1"}


# -- COUNTS / TOTAL ------------------------------------------------------------------------


def test_counts_sum_a_users_connections_over_nodes(scripts):
    scripts.user_set("n1", "alice", 2, 2)
    scripts.user_set("n2", "alice", 3, 3)
    scripts.user_set("n1", "bob", 1, 1)
    assert scripts.counts("alice", "bob", "nobody") == {"alice": 5, "bob": 1, "nobody": 0}
    assert scripts.counts("bob") == {"bob": 1}


def test_counts_star_lists_the_online_users(scripts):
    assert scripts.counts("*") == {}
    scripts.user_set("n1", "alice", 2, 2)
    scripts.user_set("n2", "alice", 1, 1)
    scripts.user_set("n2", "bob", 1, 1)
    scripts.user_set("n2", "carol", 1, 1)
    scripts.user_leave("n2", "carol")
    assert scripts.counts("*") == {"alice": 3, "bob": 1}


def test_total_sums_nodeconns(scripts):
    assert scripts.total() == 0
    scripts.heartbeat("n1", 4)
    scripts.heartbeat("n2", 6)
    assert scripts.total() == 10
    scripts.user_set("n1", "alice", 1, 1)  # a new connection on n1
    assert scripts.total() == 11
    scripts.user_set("n2", "bob", 0, -2)
    assert scripts.total() == 9
    scripts.heartbeat("n1", 0)  # the heartbeat sets the node's count outright
    assert scripts.total() == 4


def test_the_prefix_keeps_clusters_apart(scripts):
    other = Scripts(scripts.r, scripts.p + "other:")
    try:
        scripts.user_set("n1", "alice", 1, 1)
        assert other.user_set("n1", "alice", 1, 1) == 1
        assert other.online() == {"alice"}
        other.silent_since("n1", other.server_ms() - 60_000)
        other.reap()
        assert other.online() == set()
        assert scripts.online() == {"alice"}
    finally:
        keys = other.keys()
        if keys:
            scripts.r.call("DEL", *keys)
