"""Scale-out (PROTOCOL.md section 5): several real chatd processes sharing
PostgreSQL and Redis behave as one server.  Every test starts its own
``twistd -n chatd`` processes on free loopback ports, a fresh PostgreSQL
schema and its own Redis key prefix, and stops them all."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tests.certs import make_certificates
from tests.cluster import Cluster, PrivateRedis, pubsub_channels, requires_redis
from tests.syncclient import Client


@pytest.fixture
def cluster(tmp_path, pg_schema_url):
    running = Cluster(tmp_path, pg_schema_url, requires_redis())
    yield running
    unclean = running.stop()
    assert not unclean, "a node did not stop cleanly:\n" + "\n----\n".join(unclean)


def _room(creator: Client, *members: str, kind: str = "public") -> str:
    return creator.ok("chat:create", {"name": "cluster", "type": kind, "members": list(members)})[
        "room"
    ]["id"]


def test_room_events_cross_nodes_exactly_once(cluster):
    a, b, c = cluster.start(3)
    alice, bob, carol = (
        cluster.client(a, "alice"),
        cluster.client(b, "bob"),
        cluster.client(c, "carol"),
    )
    room = _room(alice)
    for client in (alice, bob, carol):
        client.ok("chat:join", {"chatId": room})
    sent = []
    for client, text in ((alice, "from a"), (bob, "from b"), (carol, "from c")):
        sent.append(client.ok("chat:message", {"chatId": room, "content": text}))
    for client in (alice, bob, carol):
        got = [client.next("chat:message") for _ in range(3)]
        assert [m["content"] for m in got] == ["from a", "from b", "from c"]
        assert [m["seq"] for m in got] == [1, 2, 3]
    # Exactly once, no echo from Redis: a message published by another node
    # after these is a barrier (an echo or a second copy would come first).
    for client, text in ((alice, "barrier a"), (bob, "barrier b")):
        client.ok("chat:message", {"chatId": room, "content": text})
    for client, barrier in ((alice, "barrier b"), (bob, "barrier a"), (carol, "barrier a")):
        client.none_before(
            "chat:message",
            until=lambda f, barrier=barrier: (
                f["type"] == "chat:message" and f["data"]["content"] == barrier
            ),
            where=lambda m: m["content"].startswith("from "),
        )
    bob.ok("chat:typing", {"chatId": room, "isTyping": True})
    for client in (alice, carol):
        assert client.next("chat:typing") == {"chatId": room, "userId": "bob", "isTyping": True}
    carol.ok("chat:read", {"chatId": room, "messageId": sent[0]["id"]})
    assert alice.next("chat:read")["userId"] == "carol"
    assert bob.next("chat:read")["userId"] == "carol"
    alice.ok("chat:reaction", {"chatId": room, "messageId": sent[1]["id"], "reaction": "+1"})
    for client in (bob, carol):
        assert client.next("chat:reaction")["userId"] == "alice"
    # Nodes subscribe to a room while a local connection has joined it, and
    # unsubscribe when the last one leaves (one channel, whatever the nodes).
    room_channel = f"{cluster.prefix}ch:room:{room}"
    assert room_channel in pubsub_channels(cluster.redis_url, cluster.prefix + "*")
    for client in (alice, bob, carol):
        client.ok("chat:leave", {"chatId": room})
    deadline = time.monotonic() + 5
    while room_channel in pubsub_channels(cluster.redis_url, cluster.prefix + "*"):
        assert time.monotonic() < deadline, (
            "a node is still subscribed to the room it has no listener for"
        )
        time.sleep(0.05)
    assert f"{cluster.prefix}ch:user:alice" in pubsub_channels(
        cluster.redis_url, cluster.prefix + "*"
    )


def test_a_users_request_budget_is_one_across_nodes(cluster):
    """alice on two nodes: together her requests pass at one budget's rate
    (user_rate_limit 2/s, burst 4), not at one budget per node."""
    a, b = cluster.start(2, extra=["--user-rate-limit", "2", "--user-rate-burst", "4"])
    on_a, on_b = cluster.client(a, "alice"), cluster.client(b, "alice")
    passed = 0
    started = time.monotonic()
    while time.monotonic() - started < 5:  # each node asked ~8 times a second
        for client in (on_a, on_b):
            frame = client.request("ping", {})
            passed += frame["type"] == "ack"
        time.sleep(0.06)
    elapsed = time.monotonic() - started
    # one budget: 4 + 2/s x 5 s = 14 (a burst per node can pass before the
    # first exchange; the ledger lags by half a second); two budgets: 28
    one_budget = 4 + 2 * elapsed
    assert passed <= one_budget + 4 + 2, (passed, elapsed)
    assert passed >= 0.8 * one_budget, (passed, elapsed)


def test_presence_friends_and_direct_messages_cross_nodes(cluster):
    a, b = cluster.start(2)
    alice, bob = cluster.client(a, "alice"), cluster.client(b, "bob")
    bob.ok("friend:request", {"userId": "alice"})
    assert alice.next("friend:request") == {"fromUserId": "bob"}
    alice.ok("friend:accept", {"userId": "bob"})
    assert bob.next("friend:accepted") == {"userId": "alice"}
    assert alice.next("friend:accepted") == {"userId": "bob"}
    assert alice.next("user:online", where=lambda d: d["userId"] == "bob")
    assert bob.next("user:online", where=lambda d: d["userId"] == "alice")
    assert alice.ok("status:request", {}) == {"userIds": ["bob"]}
    assert alice.ok("friends:list", {})["friends"] == [{"userId": "bob", "online": True}]
    # A direct message from node A reaches bob on node B once.
    sent = alice.ok("message:send", {"recipientId": "bob", "content": "psst", "tempId": "t1"})[
        "message"
    ]
    received = bob.next("message:receive")["message"]
    assert received["id"] == sent["id"] and received["content"] == "psst"
    # once: a second copy would come before the next DM from node A
    alice.ok("message:send", {"recipientId": "bob", "content": "barrier"})
    bob.none_before(
        "message:receive",
        until=lambda f: (
            f["type"] == "message:receive" and f["data"]["message"]["content"] == "barrier"
        ),
    )
    # bob leaves node B: alice hears user:offline after the grace period;
    # bob comes back on node A: user:online again.
    bob.close()
    offline = alice.next("user:offline", timeout=10)
    assert offline["userId"] == "bob" and offline["lastSeen"]
    assert alice.ok("status:request", {}) == {"userIds": []}
    bob_again = cluster.client(a, "bob")
    assert alice.next("user:online", where=lambda d: d["userId"] == "bob")
    # bob on both nodes, one tab closes: still online, no flapping.
    bob_on_b = cluster.client(b, "bob")
    bob_again.close()
    # Timed, past the grace period: no event marks a timer that did not start.
    alice.nothing("user:offline", cluster.grace + 1.0)
    assert alice.ok("status:request", {}) == {"userIds": ["bob"]}
    bob_on_b.ok("ping", {})


def test_live_viewer_counts_are_per_user_across_nodes(cluster):
    a, b, c = cluster.start(3)
    host = cluster.client(a, "host")
    host.ok("live:join", {"streamId": "s1"})
    host.ok("live:status", {"streamId": "s1", "status": "started"})
    viewers = [
        cluster.client(b, "v1"),
        cluster.client(c, "v2"),
        cluster.client(b, "v3"),
        cluster.client(c, "v3"),
    ]
    for viewer in viewers:
        viewer.ok("live:join", {"streamId": "s1"})
    # host, v1, v2, v3 (on two nodes) = 4 users
    for client in (host, *viewers):
        assert _settled_count(client, 4) == 4
    host.ok("live:message", {"streamId": "s1", "content": "hello viewers"})
    for viewer in viewers:
        assert viewer.next("live:message")["content"] == "hello viewers"
    viewers[1].ok("live:reaction", {"streamId": "s1", "emoji": "🔥"})
    for client in (host, viewers[0], viewers[2], viewers[3]):
        assert client.next("live:reaction")["userId"] == "v2"
    viewers[3].ok("live:leave", {"streamId": "s1"})  # v3 still watches on node B
    viewers[1].close()  # v2 gone
    for client in (host, viewers[0]):
        assert _settled_count(client, 3) == 3
    host.ok("live:status", {"streamId": "s1", "status": "ended"})
    for viewer in (viewers[0], viewers[2]):
        assert viewer.next("live:status") == {"streamId": "s1", "status": "ended"}


def _settled_count(client: Client, expected: int, timeout: float = 10) -> int:
    """The last live:viewer-count pushed once it reaches ``expected`` (or the
    last one seen when the time is up)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = client.next("live:viewer-count", timeout=max(0.05, deadline - time.monotonic()))[
                "count"
            ]
        except TimeoutError:
            break
        if last == expected:
            return last
    return last


def test_http_api_on_any_node_reaches_every_node(cluster):
    a, b = cluster.start(2)
    alice, bob = cluster.client(a, "alice"), cluster.client(b, "bob")
    bob2 = cluster.client(b, "bob")
    status, answer = cluster.http(
        a, "POST", "/websocket/message/user", {"userId": "bob", "type": "chat", "data": {"x": 1}}
    )
    assert status == 200 and answer == {"delivered": 2}
    for client in (bob, bob2):
        assert client.next("message")["data"] == {"x": 1}
    status, answer = cluster.http(
        b,
        "POST",
        "/websocket/message/users",
        {"userIds": ["alice", "bob"], "type": "alert", "data": "both"},
    )
    assert status == 200 and answer == {"delivered": 3}
    for client in (alice, bob, bob2):
        assert client.next("message")["data"] == "both"
    status, answer = cluster.http(
        a, "POST", "/websocket/message/broadcast", {"type": "system", "data": "all"}
    )
    assert status == 200 and answer == {"delivered": 3}
    for client in (alice, bob, bob2):
        assert client.next("message")["data"] == "all"
    status, answer = cluster.http(
        a, "POST", "/websocket/notification", {"userId": "bob", "title": "t", "body": "b"}
    )
    assert status == 200 and answer["delivered"] == 2
    for client in (bob, bob2):
        assert client.next("notification")["title"] == "t"
    status, answer = cluster.http(b, "GET", "/websocket/users/connected")
    assert status == 200 and answer == {
        "users": [{"userId": "alice", "connections": 1}, {"userId": "bob", "connections": 2}],
        "count": 2,
    }
    status, answer = cluster.http(a, "GET", "/websocket/users/bob/status")
    assert status == 200 and answer["online"] is True and answer["connections"] == 2
    # Room membership removed through node A: bob's connections on B leave.
    room = alice.ok("chat:create", {"name": "api", "type": "private", "members": ["bob"]})["room"][
        "id"
    ]
    alice.ok("chat:join", {"chatId": room})
    bob.ok("chat:join", {"chatId": room})
    status, _ = cluster.http(a, "DELETE", f"/api/rooms/{room}/members/bob")
    assert status == 200
    assert bob.next("chat:left") == {"chatId": room, "removed": True}
    alice.ok("chat:message", {"chatId": room, "content": "after removal"})
    # A push to bob through node A is published after that message.
    status, _ = cluster.http(
        a, "POST", "/websocket/message/user", {"userId": "bob", "type": "barrier", "data": {}}
    )
    assert status == 200
    bob.none_before(
        "chat:message", until=lambda f: f["type"] == "message" and f["data"]["type"] == "barrier"
    )
    # Posting as a user and making friends through the API cross nodes too.
    status, _ = cluster.http(
        b, "POST", f"/api/rooms/{room}/messages", {"userId": "alice", "content": "via api"}
    )
    assert status == 200
    assert alice.next("chat:message", where=lambda m: m["content"] == "via api")
    status, _ = cluster.http(b, "PUT", "/api/friendships/alice/bob")
    assert status == 200
    assert alice.next("friend:accepted") == {"userId": "bob"}
    assert alice.next("user:online", where=lambda d: d["userId"] == "bob")
    # Disconnect through node A closes both of bob's connections on B.
    status, answer = cluster.http(a, "DELETE", "/websocket/users/bob/disconnect")
    assert status == 200 and answer == {"disconnected": 2}
    assert bob.closed_with() == 4003 and bob2.closed_with() == 4003
    alice.ok("ping", {})


def test_per_room_order_is_the_same_on_every_node(cluster):
    nodes = cluster.start(3)
    senders = [cluster.client(node, f"sender{i}") for i, node in enumerate(nodes)]
    receivers = [cluster.client(node, f"reader{i}") for i, node in enumerate(nodes)]
    room = _room(senders[0])
    for client in (*senders, *receivers):
        client.ok("chat:join", {"chatId": room})
    per_sender = 60
    errors: list[BaseException] = []

    def send_all(client: Client, index: int) -> None:
        try:
            for n in range(per_sender):
                client.ws.send(
                    f'{{"type":"chat:message","id":"s{n}","data":{{"chatId":"{room}","content":"{index}-{n}"}}}}'
                )
            for _ in range(per_sender):
                assert client.next("ack", timeout=20, where=None)
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=send_all, args=(s, i)) for i, s in enumerate(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    total = per_sender * len(senders)
    sequences = []
    for receiver in receivers:
        got = [receiver.next("chat:message", timeout=20) for _ in range(total)]
        sequences.append([(m["seq"], m["content"]) for m in got])
    # Nothing more: a message from another node than the receiver's comes
    # after any extra copy of these.
    senders[0].ok("chat:message", {"chatId": room, "content": "barrier 0"})
    senders[1].ok("chat:message", {"chatId": room, "content": "barrier 1"})
    for receiver, barrier in zip(receivers, ("barrier 1", "barrier 0", "barrier 0"), strict=True):
        receiver.none_before(
            "chat:message",
            until=lambda f, barrier=barrier: (
                f["type"] == "chat:message" and f["data"]["content"] == barrier
            ),
            where=lambda m: not m["content"].startswith("barrier"),
        )
    assert [seq for seq, _ in sequences[0]] == list(range(1, total + 1))
    assert sequences[0] == sequences[1] == sequences[2]
    # each sender's own messages keep their order
    for index in range(len(senders)):
        mine = [content for _, content in sequences[0] if content.startswith(f"{index}-")]
        assert mine == [f"{index}-{n}" for n in range(per_sender)]


def test_a_killed_node_s_users_go_offline_and_leave_the_counts(cluster):
    a, b = cluster.start(2)
    alice = cluster.client(a, "alice")
    bob = cluster.client(b, "bob")
    bob.ok("friend:request", {"userId": "alice"})
    alice.ok("friend:accept", {"userId": "bob"})
    alice.ok("live:join", {"streamId": "show"})
    bob.ok("live:join", {"streamId": "show"})
    assert _settled_count(alice, 2) == 2
    assert alice.ok("status:request", {}) == {"userIds": ["bob"]}
    killed_at = time.monotonic()
    cluster.kill(b)
    offline = alice.next("user:offline", timeout=35, where=lambda d: d["userId"] == "bob")
    took = time.monotonic() - killed_at
    assert took < 35 and offline["lastSeen"]
    assert _settled_count(alice, 1) == 1
    status, answer = cluster.http(a, "GET", "/websocket/users/connected")
    assert answer["users"] == [{"userId": "alice", "connections": 1}]
    status, answer = cluster.http(a, "GET", "/websocket/users/bob/status")
    assert answer["online"] is False and answer["lastSeen"]
    # A restarted node is a new node: bob back on it counts once.
    (b2,) = cluster.start(1)
    bob = cluster.client(b2, "bob")
    assert alice.next("user:online", where=lambda d: d["userId"] == "bob")
    bob.ok("live:join", {"streamId": "show"})
    assert _settled_count(alice, 2) == 2
    print(f"offline {took:.1f} s after SIGKILL")


def test_redis_outage_keeps_local_service_and_loses_nothing(tmp_path, pg_schema_url):
    redis = PrivateRedis(tmp_path / "redis")
    redis.start()
    cluster = Cluster(tmp_path, pg_schema_url, redis.url)
    try:
        a, b = cluster.start(2)
        alice, carol, bob = (
            cluster.client(a, "alice"),
            cluster.client(a, "carol"),
            cluster.client(b, "bob"),
        )
        room = _room(alice)
        for client in (alice, carol, bob):
            client.ok("chat:join", {"chatId": room})

        redis.stop()
        status, body = _wait_status(cluster, a, 503)
        assert "redis" in body and "unavailable" in body
        # Node A keeps serving its own users: stored, acknowledged, delivered.
        acked = [
            alice.ok("chat:message", {"chatId": room, "content": f"outage {n}"})["seq"]
            for n in range(5)
        ]
        assert [carol.next("chat:message")["content"] for _ in range(5)] == [
            f"outage {n}" for n in range(5)
        ]
        acked += [bob.ok("chat:message", {"chatId": room, "content": "from b"})["seq"]]
        assert _metric(cluster, a, "chatd_redis_up") == 0
        assert _metric(cluster, a, "chatd_broker_publish_failures_total") >= 5

        redis.start()
        for node in (a, b):
            _wait_status(cluster, node, 200, timeout=30)
        acked.append(alice.ok("chat:message", {"chatId": room, "content": "after"})["seq"])
        assert sorted(acked) == list(range(1, 8))
        # Every connection ends up with every message once, in seq order:
        # what crossed no node during the outage is read back from storage.
        for client, first in ((alice, 1), (carol, 6), (bob, 1)):
            assert [m["seq"] for m in _messages_until(client, 7)] == list(range(first, 8))
        assert _metric(cluster, b, "chatd_room_gap_reads_total") >= 5  # 1-5 came from storage
        assert _metric(cluster, a, "chatd_redis_up") == 1
        # A client reconnecting with `since` gets everything stored meanwhile.
        late = cluster.client(b, "bob")
        joined = late.ok("chat:join", {"chatId": room, "since": 0})
        assert [m["seq"] for m in joined["messages"]] == list(range(1, 8))
        # Fan-out across nodes works again.
        bob.ok("chat:message", {"chatId": room, "content": "back"})
        assert alice.next("chat:message", where=lambda m: m["content"] == "back")
    finally:
        unclean = cluster.stop()
        redis.stop()
    assert not unclean, unclean


def _wait_status(cluster: Cluster, node: Any, wanted: int, timeout: float = 15) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    while True:
        status, body = cluster.http(node, "GET", "/readyz", auth=False)
        if status == wanted:
            return status, str(body)
        if time.monotonic() > deadline:
            raise AssertionError(f"/readyz stayed {status} {body}")
        time.sleep(0.2)


def _metric(cluster: Cluster, node: Any, name: str) -> float:
    _, text = cluster.http(node, "GET", "/metrics")
    for line in str(text).splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def _messages_until(client: Client, last_seq: int) -> list[dict[str, Any]]:
    got = []
    while not got or got[-1]["seq"] < last_seq:
        got.append(client.next("chat:message", timeout=10))
    return got


def test_rediss_checks_the_certificate(tmp_path, pg_schema_url):
    files = make_certificates(tmp_path / "tls", ["localhost"])
    redis = PrivateRedis(tmp_path / "redis", tls=files)
    redis.start()
    trusted = Cluster(tmp_path / "ok", pg_schema_url, f"rediss://localhost:{redis.port}/0")
    wrong_name = Cluster(tmp_path / "name", pg_schema_url, f"rediss://127.0.0.1:{redis.port}/0")
    unknown_ca = Cluster(tmp_path / "ca", pg_schema_url, f"rediss://localhost:{redis.port}/0")
    try:
        a, b = trusted.start(2, extra=["--redis-ca", str(files["ca"])])
        alice, bob = trusted.client(a, "alice"), trusted.client(b, "bob")
        room = _room(alice)
        alice.ok("chat:join", {"chatId": room})
        bob.ok("chat:join", {"chatId": room})
        alice.ok("chat:message", {"chatId": room, "content": "over tls"})
        assert bob.next("chat:message")["content"] == "over tls"
        # A certificate that does not name the host, or one from a CA the
        # node does not trust: no connection, and /readyz says why.
        refused = wrong_name.start(1, ["--redis-ca", str(files["ca"])], ready=False)
        refused += unknown_ca.start(1, ready=False)
        time.sleep(2)
        for cluster, node, why in (
            (wrong_name, refused[0], "Mismatch"),
            (unknown_ca, refused[1], "certificate verify failed"),
        ):
            status, body = cluster.http(node, "GET", "/readyz", auth=False)
            assert status == 503 and why in body["redis"], body
    finally:
        unclean = trusted.stop() + wrong_name.stop() + unknown_ca.stop()
        redis.stop()
    assert not unclean, unclean
