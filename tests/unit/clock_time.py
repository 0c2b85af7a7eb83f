"""A WallClock that reads a task.Clock, so timestamps follow advance()."""

from __future__ import annotations

from twisted.internet.task import Clock


class ClockTime:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)
