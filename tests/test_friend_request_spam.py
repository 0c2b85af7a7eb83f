"""Friend-request spam (issue 15, item 9) over real sockets, on SQLite and
PostgreSQL: asking, withdrawing and asking again gives the target one
``friend:request`` push and one stored notification per cooldown, however
many rounds; the repeats are still stored as requests."""

from __future__ import annotations

import asyncio

import pytest_twisted

from tests.test_http_api import API_KEY, http
from tests.wsclient import deferred

ROUNDS = 30


async def stored_requests_notices(server, user_id: str) -> int:
    """The friend-request notifications stored for ``user_id``, read or not."""
    store = server.service.store

    def count(cur, user):
        cur.execute(
            store.engine.sql(
                "SELECT COUNT(*) FROM notifications WHERE user_id = ? AND type = 'friend_request'"
            ),
            (user,),
        )
        return int(cur.fetchone()[0])

    return await store.run(count, user_id)


def of_type(client, event: str) -> list[dict]:
    return [f for f in client.inbox if f.get("type") == event]


async def ask_and_withdraw(asker, target: str, rounds: int) -> None:
    for _ in range(rounds):
        await asker.ok("friend:request", {"userId": target})
        await asker.ok("friend:remove", {"userId": target})


@pytest_twisted.ensureDeferred
async def test_repeated_requests_give_an_online_target_one_push_and_one_notification(server):
    victim = await server.connect("victim")
    mallory = await server.connect("mallory")
    await ask_and_withdraw(mallory, "victim", ROUNDS)
    await victim.ok("ping")  # a barrier: what came before is in the inbox
    pushes = of_type(victim, "friend:request")
    notes = of_type(victim, "notification")
    assert [p["data"] for p in pushes] == [{"fromUserId": "mallory"}]
    assert [n["data"]["type"] for n in notes] == ["friend_request"]
    assert await stored_requests_notices(server, "victim") == 1
    # The repeats are requests all the same: the last one is pending.
    victim.inbox.clear()
    await mallory.ok("friend:request", {"userId": "victim"})
    await victim.none_before("friend:request")
    assert [r["userId"] for r in (await victim.ok("friends:list"))["incoming"]] == ["mallory"]
    assert await stored_requests_notices(server, "victim") == 1
    # Its one notification is handed over on the next connection, as a
    # pending request's is (the withdrawal had settled it).
    await victim.close()
    victim = await server.connect("victim")
    note = (await victim.next("notification"))["data"]
    assert note["type"] == "friend_request" and note["data"] == {"fromUserId": "mallory"}
    # Timed: the hand-over follows a store read no reply waits for.
    await victim.nothing("notification", within=0.3)
    # Accepting works as for any request.
    await victim.ok("friend:accept", {"userId": "mallory"})
    assert (await mallory.next("friend:accepted"))["data"] == {"userId": "victim"}


@pytest_twisted.ensureDeferred
async def test_an_offline_target_finds_one_notification(server):
    victim = await server.connect("victim")
    await victim.close()
    mallory = await server.connect("mallory")
    await ask_and_withdraw(mallory, "victim", ROUNDS)
    await mallory.ok("friend:request", {"userId": "victim"})
    assert await stored_requests_notices(server, "victim") == 1
    victim = await server.connect("victim")
    assert (await victim.next("notification"))["data"]["data"] == {"fromUserId": "mallory"}
    await victim.nothing("notification", within=0.3)


@pytest_twisted.ensureDeferred
async def test_the_cooldown_is_per_pair_and_a_declined_repeat_stays_quiet(server):
    victim = await server.connect("victim")
    mallory = await server.connect("mallory")
    carol = await server.connect("carol")
    await ask_and_withdraw(mallory, "victim", 3)
    await carol.ok("friend:request", {"userId": "victim"})  # another asker: notified
    await victim.ok("ping")  # a barrier: what came before is in the inbox
    assert [p["data"]["fromUserId"] for p in of_type(victim, "friend:request")] == [
        "mallory",
        "carol",
    ]
    victim.inbox.clear()
    await victim.ok("friend:decline", {"userId": "carol"})
    await carol.ok("friend:request", {"userId": "victim"})
    await victim.none_before("friend:request")
    await victim.close()
    victim = await server.connect("victim")
    await victim.nothing("notification", within=0.3)  # declined: not handed over again


@pytest_twisted.ensureDeferred
async def test_the_cooldown_is_a_setting(server_factory):
    every_time = await server_factory(friend_request_cooldown=0)
    victim = await every_time.connect("victim")
    mallory = await every_time.connect("mallory")
    await ask_and_withdraw(mallory, "victim", 3)
    await victim.ok("ping")  # a barrier: what came before is in the inbox
    assert len(of_type(victim, "friend:request")) == 3

    short = await server_factory(friend_request_cooldown=0.3)
    victim = await short.connect("victim2")
    mallory = await short.connect("mallory2")
    await ask_and_withdraw(mallory, "victim2", 2)
    await deferred(asyncio.sleep(0.4))  # past the cooldown of the first notification
    await mallory.ok("friend:request", {"userId": "victim2"})
    await victim.ok("ping")  # a barrier: what came before is in the inbox
    assert len(of_type(victim, "friend:request")) == 2


@pytest_twisted.ensureDeferred
async def test_the_backends_requests_follow_the_same_rule(server_factory):
    server = await server_factory(api_key=API_KEY)
    victim = await server.connect("victim")
    body = {"fromUserId": "mallory", "toUserId": "victim"}
    for _ in range(5):
        status, answer = await http(server, "POST", "/api/friend-requests", API_KEY, body)
        assert status == 200 and answer["status"] == "requested", answer
        status, _ = await http(server, "DELETE", "/api/friendships/mallory/victim", API_KEY)
        assert status == 200
    await victim.ok("ping")  # a barrier: what came before is in the inbox
    assert len(of_type(victim, "friend:request")) == 1
    assert len(of_type(victim, "notification")) == 1
