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
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def now_iso() -> str:
    return iso_from_ms(now_ms())
