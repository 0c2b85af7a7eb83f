"""The shared ledger of user request budgets in Redis
(``chatd.domain.interfaces.SpendLedger``): ``P spent:<user>`` is a float
that every process adds what the user spent there to (INCRBYFLOAT), kept
for a minute after the last addition.  One script per exchange, however
many users: the keys are computed from the prefix inside it, as the
cluster's scripts do."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from chatd.broker.cluster import ClusterLink

KEEP_SECONDS = 60

_EXCHANGE = """
local p, keep = ARGV[1], tonumber(ARGV[2])
local totals = {}
for i = 3, #ARGV, 2 do
  local key = p .. 'spent:' .. ARGV[i]
  totals[#totals + 1] = redis.call('INCRBYFLOAT', key, ARGV[i + 1])
  redis.call('EXPIRE', key, keep)
end
return totals
"""


class RedisSpendLedger:
    def __init__(self, link: ClusterLink, keep: int = KEEP_SECONDS) -> None:
        self._link = link
        self._keep = keep

    def exchange(self, spent: dict[str, float]) -> Deferred[dict[str, float]]:
        users = list(spent)
        args: list[Any] = [self._link.prefix, self._keep]
        for user in users:
            args += [user, repr(float(spent[user]))]
        d = self._link.eval(_EXCHANGE, args)
        return d.addCallback(lambda totals: dict(zip(users, map(_number, totals), strict=True)))


def _number(value: Any) -> float:
    return float(value.decode() if isinstance(value, bytes) else value)
