"""The end of the reactor's turn: where the writes of one turn meet.

Fan-out is batched until the turn ends (the registry frames every event of
the turn once per binding and writes each recipient once).  A reply to one
connection (an ack, an error, an event for that connection alone) used to
be written at once, so a sender's ack and its own push of the same
message were two writes, two system calls, a turn apart; at everyday load
(one message at a time, a few recipients each) the sends were the largest
part of the reactor thread's time.

``EndOfTurn`` runs what waits for the end of the turn from one
``callLater(0)``, in a fixed order: first the fan-out, then the replies
held back for single connections (``cork``), which have taken that
fan-out's bytes for their connection behind the replies.  So a connection
gets what one turn made for it in one write, in the order it was made:
replies as they were answered, then the pushes of the turn, as before.

Only while the turn's fan-out is small (``SMALL_FANOUT`` writes or fewer:
everyday load, a few rooms of a few members).  A large one goes after the
held replies instead: the ack of a message to a room of a thousand would
otherwise wait for a thousand writes, and a sender that keeps a window of
messages in flight would send more slowly (measured: a fifth fewer
deliveries per second in the fan-out benchmark, as fewer messages were
batched per turn).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

log = Logger()


SMALL_FANOUT = 64
"""Writes of a turn's fan-out up to which held replies wait for it."""


class EndOfTurn:
    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._call: IDelayedCall | None = None
        self._fanout: Callable[[], None] | None = None
        self._fanout_writes: Callable[[], int] = lambda: 0
        self._fanout_due = False
        self._corked: list[Callable[[], None]] = []

    def on_fanout(self, flush: Callable[[], None], writes: Callable[[], int]) -> None:
        """The registry's flush, run at the end of every turn in which
        ``fanout_due`` was called, and how many writes it has queued (about:
        the listeners of the channels with events)."""
        self._fanout = flush
        self._fanout_writes = writes

    def fanout_due(self) -> None:
        self._fanout_due = True
        if self._call is None:
            self._call = self._clock.callLater(0, self._run)

    def cork(self, release: Callable[[], None]) -> None:
        """``release`` (a connection's held-back writes) runs at the end of
        the turn, after the fan-out."""
        self._corked.append(release)
        if self._call is None:
            self._call = self._clock.callLater(0, self._run)

    def _run(self) -> None:
        self._call = None
        # What the releases and the fan-out cause in turn (a reply that
        # ends a join and flushes its held events) is done in this turn too.
        while self._fanout_due or self._corked:
            if self._fanout_due and self._corked and self._fanout_writes() > SMALL_FANOUT:
                self._release_all()  # a large fan-out goes after the replies
            if self._fanout_due:
                self._fanout_due = False
                if self._fanout is not None:
                    _safely(self._fanout)
            self._release_all()

    def _release_all(self) -> None:
        corked, self._corked = self._corked, []
        for release in corked:
            _safely(release)


def _safely(work: Callable[[], None]) -> None:
    """One connection's failure must not cost the others their writes."""
    try:
        work()
    except Exception:
        log.failure("end-of-turn write failed")
