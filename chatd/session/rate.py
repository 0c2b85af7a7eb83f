"""Request rate limits: the per-connection bucket, the per-user buckets a
user's connections share, and what each request costs.

Two buckets stand in front of every request of an authenticated session:
its own ``TokenBucket`` (frames per second, so one connection cannot flood)
and its user's (``UserBuckets``: cost per second across all of the user's
connections in this process, so opening more connections buys no more
work).  The user's bucket is charged ``request_cost``: what the request
makes storage do, roughly in units of one ``chat:message``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatd.domain.chat import JOIN_PAGE, MAX_PAGE, SINCE_PAGE
from chatd.domain.interfaces import SpendLedger

log = Logger()


class TokenBucket:
    """``rate`` tokens per second up to ``burst``.  ``strikes`` counts
    refused requests and only starts over after a full second without a
    refusal, so a client that keeps flooding accumulates strikes even
    though a request squeezes through now and then."""

    __slots__ = ("rate", "burst", "tokens", "stamp", "strikes", "last_refusal")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now
        self.strikes = 0
        self.last_refusal = 0.0

    def level(self, now: float) -> float:
        """The tokens there are at ``now`` (nothing is spent)."""
        return min(self.burst, self.tokens + (now - self.stamp) * self.rate)

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens if there are that many; otherwise spend
        nothing and count a strike.  A cost above the burst costs the whole
        burst: such a request passes only on a full bucket."""
        # Inline rather than through ``level``: this runs for every frame.
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        if cost > self.burst:
            cost = self.burst
        self.stamp = now
        if tokens >= cost:
            self.tokens = tokens - cost
            if self.strikes and now - self.last_refusal >= 1.0:
                self.strikes = 0
            return True
        self.tokens = tokens
        self.strikes += 1
        self.last_refusal = now
        return False

    def wait(self, now: float, cost: float = 1.0) -> float:
        """Seconds until ``cost`` tokens are there (0: now), for the
        refusal's "retry in" hint."""
        missing = min(cost, self.burst) - self.level(now)
        return max(0.0, missing / self.rate)


# -- what a request costs --------------------------------------------------------

FLAT_COSTS: dict[str, float] = {
    # may create a direct-message room and a notification
    "message:send": 2.0,
    # a stored request, a notification and a push
    "friend:request": 5.0,
    "friend:accept": 2.0,
    "friend:decline": 2.0,
    "friend:remove": 2.0,
    # three reads / an audience query
    "friends:list": 2.0,
    "status:request": 2.0,
}
"""Costs that do not depend on the request's data; anything else not named
here or in ``request_cost`` costs 1 (``chat:message``, ``ping``, ``auth``,
typing, reads, reactions, live events, unknown events)."""

MAX_MEMBERS = 100
"""The default of ``max_members_per_request``."""

HISTORY_DEFAULT = 50
"""``chat:history``'s ``limit`` when the request names none."""


def request_cost(event_type: str, data: Any, max_members: int = MAX_MEMBERS) -> float:
    """What a request costs its user's bucket, read from the raw request
    (before it is parsed: a request the parser then refuses costs its
    sender all the same, so malformed expensive requests buy nothing).

    * ``chat:create``: 1 + the number of entries in ``members`` (each is a
      membership row), counted up to ``max_members`` (the per-request cap:
      a longer list is refused before it reaches storage);
    * ``chat:history``: 1 + ``limit`` / 10 (default 50, capped at 100);
    * ``chat:join``: 1 + the page it reads / 10 (50 messages, 100 with
      ``since``);
    * ``FLAT_COSTS`` for the rest, else 1."""
    fields = data if isinstance(data, dict) else None
    if event_type == "chat:create":
        members = fields.get("members") if fields is not None else None
        return 1.0 + (min(len(members), max_members) if isinstance(members, list) else 0)
    if event_type == "chat:history":
        limit = fields.get("limit") if fields is not None else None
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            limit = HISTORY_DEFAULT
        return 1.0 + min(limit, MAX_PAGE) / 10
    if event_type == "chat:join":
        since = fields.get("since") if fields is not None else None
        return 1.0 + (JOIN_PAGE if since is None else SINCE_PAGE) / 10
    return FLAT_COSTS.get(event_type, 1.0)


# -- the per-user buckets --------------------------------------------------------


class _UserEntry:
    __slots__ = ("bucket", "holders", "expiry")

    def __init__(self, bucket: TokenBucket) -> None:
        self.bucket = bucket
        self.holders = 0
        self.expiry: IDelayedCall | None = None


class UserBuckets:
    """One bucket per user with an authenticated session in this process,
    shared by all of that user's sessions (``join`` when a session
    authenticates, ``leave`` when it goes), so a user's budget is the same
    over one connection or twenty.

    A bucket outlives its user's last session until it would have refilled:
    otherwise closing and reopening a connection would be a way to a full
    bucket.  ``holders`` is also the user's count of sessions, which the
    per-user connection limit reads.

    With several chatd processes (Redis), ``SharedSpending`` charges each
    process's buckets what the users spent on the others."""

    def __init__(self, rate: float, burst: int, clock: IReactorTime) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._users: dict[str, _UserEntry] = {}

    def __len__(self) -> int:
        """Buckets kept (the users' with sessions, and the refilling)."""
        return len(self._users)

    def holders(self, user_id: str) -> int:
        entry = self._users.get(user_id)
        return entry.holders if entry is not None else 0

    def join(self, user_id: str) -> TokenBucket:
        """A session of the user authenticated: the bucket it shares."""
        entry = self._users.get(user_id)
        if entry is None:
            entry = _UserEntry(TokenBucket(self.rate, self.burst, self._clock.seconds()))
            self._users[user_id] = entry
        elif entry.expiry is not None:
            if entry.expiry.active():
                entry.expiry.cancel()
            entry.expiry = None
        entry.holders += 1
        return entry.bucket

    def leave(self, user_id: str) -> None:
        """A session of the user went away (called once per ``join``)."""
        entry = self._users.get(user_id)
        if entry is None or entry.holders <= 0:
            return
        entry.holders -= 1
        if entry.holders:
            return
        refill = entry.bucket.wait(self._clock.seconds(), float(self.burst))
        if refill <= 0:
            del self._users[user_id]
        else:
            entry.expiry = self._clock.callLater(refill, self._expire, user_id)

    def _expire(self, user_id: str) -> None:
        entry = self._users.get(user_id)
        if entry is not None and entry.holders == 0:
            del self._users[user_id]

    def charge(self, user_id: str, cost: float) -> None:
        """Take ``cost`` from the user's bucket whatever it holds (what the
        user spent on other processes), down to one burst in debt at most."""
        entry = self._users.get(user_id)
        if entry is None:
            return
        bucket, now = entry.bucket, self._clock.seconds()
        bucket.tokens = max(-bucket.burst, bucket.level(now) - cost)
        bucket.stamp = now


SHARE_INTERVAL = 0.5
"""Seconds between two exchanges of what the users spent."""


class SharedSpending:
    """One request budget per user across the processes of a deployment.

    Each process keeps its users' buckets (``UserBuckets``) and charges
    them at once, as alone; every ``interval`` it adds what each user spent
    here to a shared ledger and charges each bucket what the user spent on
    the other processes meanwhile.  So a user's sustained rate over all
    processes is the budget's, not the budget times the processes; a burst
    can pass on each process before the next exchange (at most one burst
    each), and the ledger's lag is ``interval``.

    Only users who spent here since the last exchange are exchanged; a user
    idle here for two exchanges starts from the ledger's total again, so
    what they spent elsewhere meanwhile, while this process had nothing to
    protect, is not charged later."""

    def __init__(
        self,
        buckets: UserBuckets,
        ledger: SpendLedger,
        clock: IReactorTime,
        interval: float = SHARE_INTERVAL,
    ) -> None:
        self._buckets = buckets
        self._ledger = ledger
        self._interval = interval
        self._pending: dict[str, float] = {}
        self._seen: dict[str, tuple[float, int]] = {}  # user -> (total, exchange)
        self._exchange_no = 0
        self._busy = False
        self._loop = LoopingCall(self._exchange)
        self._loop.clock = clock
        self._done: Deferred[LoopingCall] | None = None

    def spent(self, user_id: str, cost: float) -> None:
        """A request of the user passed its bucket here."""
        self._pending[user_id] = self._pending.get(user_id, 0.0) + cost

    def start(self) -> None:
        self._done = self._loop.start(self._interval, now=False)

    def stop(self) -> Deferred[None] | None:
        if self._loop.running:
            self._loop.stop()
        done, self._done = self._done, None
        return done.addCallback(lambda _: None) if done is not None else None

    def _exchange(self) -> Deferred[None] | None:
        if self._busy or not self._pending:
            return None
        pending, self._pending = self._pending, {}
        self._busy = True
        self._exchange_no += 1
        d = self._ledger.exchange(pending)
        d.addCallbacks(self._charge, self._failed, callbackArgs=(pending,), errbackArgs=(pending,))
        return d.addBoth(self._idle)

    def _charge(self, totals: dict[str, float], pending: dict[str, float]) -> None:
        number = self._exchange_no
        for user, total in totals.items():
            seen = self._seen.get(user)
            if seen is not None and seen[1] >= number - 2:
                others = total - seen[0] - pending.get(user, 0.0)
                if others > 0:
                    self._buckets.charge(user, others)
            self._seen[user] = (total, number)
        if len(self._seen) > 4 * len(totals) + 1024:
            self._seen = {u: s for u, s in self._seen.items() if s[1] >= number - 2}

    def _failed(self, failure: Failure, pending: dict[str, float]) -> None:
        """The ledger is out of reach: each process limits alone until it
        is back; what was spent here is added with the next exchange."""
        for user, cost in pending.items():
            self._pending[user] = self._pending.get(user, 0.0) + cost
        log.debug("sharing user budgets failed: {error}", error=failure.getErrorMessage())

    def _idle(self, _: object) -> None:
        self._busy = False
