"""chatd.session.rate.SharedSpending: a user's budget counts what the user
spends on every process sharing a ledger (Redis in a deployment)."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from chatd.session.rate import SharedSpending, UserBuckets


class Ledger:
    """The processes' shared totals, in memory: ``others`` adds spending
    of another process."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.calls: list[dict[str, float]] = []
        self.down = False

    def others(self, user: str, cost: float) -> None:
        self.totals[user] = self.totals.get(user, 0.0) + cost

    def exchange(self, spent: dict[str, float]) -> Deferred[dict[str, float]]:
        if self.down:
            return fail(ConnectionError("redis is down"))
        self.calls.append(dict(spent))
        for user, cost in spent.items():
            self.others(user, cost)
        return succeed({user: self.totals[user] for user in spent})


def world(rate: float = 1.0, burst: int = 10):
    clock = Clock()
    clock.advance(100)
    buckets = UserBuckets(rate, burst, clock)
    ledger = Ledger()
    shared = SharedSpending(buckets, ledger, clock, interval=0.5)
    shared.start()
    bucket = buckets.join("alice")
    return clock, bucket, ledger, shared


def spend(clock, bucket, shared, cost: float) -> bool:
    if bucket.take(clock.seconds(), cost):
        shared.spent("alice", cost)
        return True
    return False


def test_what_the_user_spends_elsewhere_is_charged_here() -> None:
    clock, bucket, ledger, shared = world(rate=1.0, burst=10)
    assert spend(clock, bucket, shared, 1)
    clock.advance(0.5)  # the first exchange: the baseline
    ledger.others("alice", 8)  # another process let 8 through meanwhile
    assert spend(clock, bucket, shared, 1)
    clock.advance(0.5)
    # 10 - 1 - 1 - 8 (+ the refill of the second) leaves no room for 2 more
    level = bucket.level(clock.seconds())
    assert level < 2, level
    assert ledger.calls == [{"alice": 1.0}, {"alice": 1.0}]


def test_a_process_alone_is_not_charged_for_its_own_spending() -> None:
    clock, bucket, ledger, shared = world(rate=1.0, burst=10)
    for _ in range(3):
        assert spend(clock, bucket, shared, 2)
        clock.advance(0.5)
    # 10 - 6 + 1.5 s x 1/s = 5.5, nothing more taken
    assert abs(bucket.level(clock.seconds()) - 5.5) < 1e-9


def test_sustained_spending_on_two_processes_is_held_to_one_budget() -> None:
    """Two processes' buckets over one ledger: together they let through
    about one budget's worth, not two."""
    clock = Clock()
    ledger = Ledger()
    processes = []
    for _ in range(2):
        buckets = UserBuckets(2.0, 4, clock)
        shared = SharedSpending(buckets, ledger, clock, interval=0.5)
        shared.start()
        processes.append((buckets.join("alice"), shared))
    passed = 0
    for _ in range(100):  # 10 s, each process asked 5 times a second
        for bucket, shared in processes:
            if bucket.take(clock.seconds(), 1.0):
                shared.spent("alice", 1.0)
                passed += 1
        clock.advance(0.1)
    # one budget: 4 + 2/s x 10 s = 24; each process alone would pass 48
    assert 20 <= passed <= 34, passed


def test_when_the_ledger_is_down_spending_waits_for_the_next_exchange() -> None:
    clock, bucket, ledger, shared = world()
    ledger.down = True
    assert spend(clock, bucket, shared, 1)
    clock.advance(0.5)
    ledger.down = False
    assert spend(clock, bucket, shared, 1)
    clock.advance(0.5)
    assert ledger.calls == [{"alice": 2.0}]  # nothing lost


def test_stop_ends_the_exchanges() -> None:
    clock, bucket, ledger, shared = world()
    shared.stop()
    spend(clock, bucket, shared, 1)
    clock.advance(5)
    assert ledger.calls == []
