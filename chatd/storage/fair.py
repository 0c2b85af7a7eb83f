"""Fair turns at the database for the users behind the requests.

The pool runs one transaction at a time on SQLite (a few on PostgreSQL),
first come first served.  One user's burst of expensive requests (rooms
with many members, long histories) then queues ahead of everyone else's:
observed, another user's ``chat:message`` ack went from 2 ms to 10 s while
one connection created rooms within its rate limit.

``FairScheduler`` keeps at most ``width`` transactions on the pool (its
thread count, so the pool's own FIFO never holds anything) and keeps the
rest waiting per owner: the user a request came from, or the server's own
work (the message group commit, batched session bookkeeping).  When a
transaction ends the next one is taken from the owner after the one that
went last, round robin, so a waiting job is delayed by at most one job of
each other owner with work waiting, whatever the size of their backlogs.
Jobs of one owner keep their order.

The owner of a job is ``chatd.attribution.current_owner()`` unless the
caller names one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from chatd.attribution import current_owner

T = TypeVar("T")

Job = tuple[Callable[[], "Deferred[Any]"], "Deferred[Any]"]


class FairScheduler:
    """See the module docstring."""

    def __init__(self, width: int) -> None:
        if width < 1:
            raise ValueError("width must be at least 1")
        self._width = width
        self._running = 0
        # Owners with jobs waiting, in turn order (dicts keep insertion order).
        self._waiting: dict[str, deque[Job]] = {}

    @property
    def waiting(self) -> int:
        """Jobs not started yet (for the metrics and the tests)."""
        return sum(len(jobs) for jobs in self._waiting.values())

    def submit(self, start: Callable[[], Deferred[T]], owner: str | None = None) -> Deferred[T]:
        """Run ``start()`` (which hands a transaction to the pool and returns
        its Deferred) now if the pool has room, else in ``owner``'s turn."""
        if self._running < self._width and not self._waiting:
            return self._start(start)
        done: Deferred[T] = Deferred()
        key = owner if owner is not None else current_owner()
        queue = self._waiting.get(key)
        if queue is None:
            queue = self._waiting[key] = deque()
        queue.append((start, done))
        return done

    def _start(self, start: Callable[[], Deferred[T]]) -> Deferred[T]:
        self._running += 1
        try:
            d = start()
        except BaseException:
            self._running -= 1
            raise
        # The next job starts before this one's callbacks run, so the
        # database works while the reactor delivers the results.
        return d.addBoth(self._finished)

    def _finished(self, result: T | Failure) -> T | Failure:
        self._running -= 1
        self._start_next()
        return result

    def _start_next(self) -> None:
        while self._running < self._width and self._waiting:
            owner = next(iter(self._waiting))
            queue = self._waiting.pop(owner)
            start, done = queue.popleft()
            if queue:
                self._waiting[owner] = queue  # to the back of the line
            try:
                d = self._start(start)
            except BaseException:
                done.errback(Failure())
                continue
            d.chainDeferred(done)
