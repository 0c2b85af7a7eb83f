"""chatd.storage.fair: the database's turns go round the owners of the
waiting jobs, so one owner's backlog cannot hold up another's job."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, ensureDeferred, succeed

from chatd.attribution import SERVER, current_owner, owned_by
from chatd.storage.fair import FairScheduler


class Pool:
    """Transactions that finish when the test says so, in start order."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self._pending: list[Deferred[str]] = []

    def job(self, name: str) -> Any:
        def start() -> Deferred[str]:
            self.started.append(name)
            d: Deferred[str] = Deferred()
            self._pending.append(d)
            return d

        return start

    def finish_one(self) -> None:
        d = self._pending.pop(0)
        d.callback(self.started[len(self.started) - len(self._pending) - 1])

    def finish_all(self) -> None:
        while self._pending:
            self.finish_one()


def test_an_idle_pool_starts_a_job_at_once() -> None:
    pool, fair = Pool(), FairScheduler(1)
    results: list[str] = []
    fair.submit(pool.job("a1"), "alice").addCallback(results.append)
    assert pool.started == ["a1"]
    pool.finish_one()
    assert results == ["a1"]


def test_a_backlog_of_one_owner_waits_its_turn_behind_each_other_owner() -> None:
    pool, fair = Pool(), FairScheduler(1)
    results: list[str] = []
    for i in range(1, 6):
        fair.submit(pool.job(f"m{i}"), "mallory").addCallback(results.append)
    fair.submit(pool.job("a1"), "alice").addCallback(results.append)
    fair.submit(pool.job("s1"), SERVER).addCallback(results.append)
    assert fair.waiting == 6
    pool.finish_all()
    while pool._pending:
        pool.finish_all()
    # mallory's second job waits for alice's and the server's single ones
    assert pool.started == ["m1", "m2", "a1", "s1", "m3", "m4", "m5"]
    assert sorted(results) == sorted(pool.started)
    assert fair.waiting == 0


def test_one_owners_jobs_keep_their_order() -> None:
    pool, fair = Pool(), FairScheduler(1)
    fair.submit(pool.job("busy"), "bob")
    for name in ("a1", "a2", "a3"):
        fair.submit(pool.job(name), "alice")
    while pool._pending:
        pool.finish_all()
    assert pool.started == ["busy", "a1", "a2", "a3"]


def test_width_jobs_run_at_once_and_the_next_starts_before_callbacks() -> None:
    pool, fair = Pool(), FairScheduler(2)
    seen_started: list[list[str]] = []
    first = fair.submit(pool.job("x1"), "x")
    fair.submit(pool.job("y1"), "y")
    fair.submit(pool.job("z1"), "z")
    assert pool.started == ["x1", "y1"]
    first.addCallback(lambda _: seen_started.append(list(pool.started)))
    pool.finish_one()
    # z1 was handed to the pool before x1's callbacks ran
    assert seen_started == [["x1", "y1", "z1"]]


def test_a_failed_job_fails_its_caller_and_the_line_moves_on() -> None:
    pool, fair = Pool(), FairScheduler(1)
    failed: list[str] = []
    first = fair.submit(pool.job("a1"), "alice")
    second = fair.submit(lambda: succeed("b1"), "bob")
    first.addErrback(lambda f: failed.append(f.getErrorMessage()))
    pool._pending.pop(0).errback(RuntimeError("disk full"))
    assert failed == ["disk full"]
    assert second.result == "b1"


def test_a_job_that_raises_when_started_fails_only_its_caller() -> None:
    pool, fair = Pool(), FairScheduler(1)
    fair.submit(pool.job("a1"), "alice")

    def broken() -> Deferred[str]:
        raise ValueError("no connection")

    failed = fair.submit(broken, "bob")
    after = fair.submit(pool.job("c1"), "carol")
    errors: list[str] = []
    failed.addErrback(lambda f: errors.append(f.getErrorMessage()))
    pool.finish_one()
    assert errors == ["no connection"]
    assert pool.started == ["a1", "c1"]
    pool.finish_one()
    assert after.result == "c1"


def test_the_owner_comes_from_the_request_context_through_awaits() -> None:
    pool, fair = Pool(), FairScheduler(1)
    fair.submit(pool.job("busy"), "bob")
    waiter: Deferred[None] = Deferred()
    owners: list[str] = []

    async def handler() -> None:
        await waiter
        owners.append(current_owner())
        await fair.submit(pool.job("alice-later"))

    with owned_by("alice"):
        ensureDeferred(handler())
    assert current_owner() == SERVER
    waiter.callback(None)  # resumed outside the with block
    assert owners == ["alice"]
    fair.submit(pool.job("b2"), "bob")
    while pool._pending:
        pool.finish_all()
    assert pool.started == ["busy", "alice-later", "b2"]


def test_width_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FairScheduler(0)
