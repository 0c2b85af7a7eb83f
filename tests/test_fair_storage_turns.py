"""One caller's backlog of storage work does not hold up another user's
ack: the database's turns go round the callers (chatd.storage.fair).
Observed before: another user's chat:message ack went from 2 ms to seconds
while one caller kept the storage thread busy with large transactions.

chatd's own requests are mostly several short transactions in a row, which
first come, first served already interleaves; a burst of large single
transactions does not interleave: here a backend creating rooms of 5,000
members each, twenty at once, while bob chats."""

from __future__ import annotations

import asyncio
import json
import time

import pytest_twisted
from twisted.internet.defer import Deferred, DeferredList

from tests.test_http_api import API_KEY, http
from tests.wsclient import deferred

CREATES = 20
MEMBERS = 5000


@pytest_twisted.ensureDeferred
async def test_a_backlog_of_large_transactions_waits_behind_another_users_message(
    server_factory,
):
    server = await server_factory(api_key=API_KEY)
    bob = await server.connect("bob")
    room = (await bob.ok("chat:create", {"name": "chat", "type": "public"}))["room"]["id"]
    answered: list[float] = []

    async def create(n: int) -> None:
        members = [f"member-{n}-{m}" for m in range(MEMBERS)]
        body = {"name": f"import {n}", "type": "private", "members": members}
        status, _ = await http(server, "POST", "/api/rooms", API_KEY, body)
        assert status == 200
        answered.append(time.monotonic())

    creating = DeferredList(
        [Deferred.fromCoroutine(create(n)) for n in range(CREATES)],
        fireOnOneErrback=True,
        consumeErrors=True,
    )
    while not server.service.store._fair.waiting:  # the creates are queued
        await deferred(asyncio.sleep(0.005))
    frame = {"type": "chat:message", "id": "b1", "data": {"chatId": room, "content": "hi"}}
    await deferred(bob.ws.send(json.dumps(frame)))
    reply = await bob.reply("b1", timeout=60)
    acked = time.monotonic()
    assert reply["type"] == "ack", reply
    await creating
    before = sum(1 for t in answered if t < acked)
    # First come, first served answered bob after all twenty; in turns each
    # of his message's few transactions waits for at most one creation.
    assert before <= 6, f"bob's ack came after {before} of the {CREATES} room creations"
