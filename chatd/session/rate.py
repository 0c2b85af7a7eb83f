"""The per-session request rate limit."""

from __future__ import annotations


class TokenBucket:
    """Requests per second per session.  ``strikes`` counts refused
    requests and only starts over after a full second without a refusal, so
    a client that keeps flooding accumulates strikes even though a request
    squeezes through now and then."""

    __slots__ = ("rate", "burst", "tokens", "stamp", "strikes", "last_refusal")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now
        self.strikes = 0
        self.last_refusal = 0.0

    def take(self, now: float) -> bool:
        """Spend a token if there is one; otherwise count a strike."""
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            if self.strikes and now - self.last_refusal >= 1.0:
                self.strikes = 0
            return True
        self.tokens = tokens
        self.strikes += 1
        self.last_refusal = now
        return False
