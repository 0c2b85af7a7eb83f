"""Wall-clock time.  Times travel as epoch milliseconds inside chatd and
as ISO-8601 UTC strings with milliseconds on the wire.

The domain never reads the system clock itself: it is handed a
``WallClock`` (the reactor's ``IReactorTime`` stays the clock for timers and
durations), so tests pin timestamps instead of matching whatever "now" was.
``now_ms``/``now_iso`` remain for code outside the domain (migrations,
health pages) that has nothing to inject a clock into.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class WallClock(Protocol):
    """The time of day, for timestamps that leave the process."""

    def now_ms(self) -> int:
        """Milliseconds since the Unix epoch."""
        ...


class SystemWallClock:
    """The operating system's clock."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


SYSTEM_CLOCK: WallClock = SystemWallClock()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def iso_from_ms(ms: int) -> str:
    """``2026-12-01T17:46:39.123Z``.  Made for every message and presence
    change on the wire, so the date-and-second part is formatted once per
    second (a one-entry cache; times are mostly "now") rather than through
    ``datetime`` each time."""
    seconds, millis = divmod(ms, 1000)
    cached = _second_prefix
    if cached[0] != seconds:
        prefix = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        cached = _cache_second(seconds, prefix)
    return f"{cached[1]}{millis:03d}Z"


_second_prefix: tuple[int, str] = (-1, "")


def _cache_second(seconds: int, prefix: str) -> tuple[int, str]:
    global _second_prefix
    _second_prefix = (seconds, prefix)
    return _second_prefix


def now_iso() -> str:
    return iso_from_ms(now_ms())
