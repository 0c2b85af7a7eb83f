"""Per-room delivery order across nodes (chatd/domain/ordering.py), driven
by a task.Clock and a fake storage read-back whose Deferreds the tests fire."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from chatd.domain import ordering
from chatd.domain.models import Published
from chatd.domain.ordering import GAP_TIMEOUT, RoomOrder

ROOM = "room:r1"


def ev(seq: int | None, room: str = ROOM) -> Published:
    return Published("chat:message", f'{{"room":"{room}","seq":{seq}}}'.encode(), seq=seq)


class Harness:
    def __init__(self, gap_timeout: float = GAP_TIMEOUT) -> None:
        self.clock = Clock()
        self.delivered: list[tuple[str, int | None]] = []
        self.fetches: list[tuple[str, int, int]] = []
        self.pending: list[Deferred[list[Published]]] = []
        self.order = RoomOrder(self.clock, self._deliver, self._fetch, gap_timeout=gap_timeout)

    def _deliver(self, channel: str, event: Published) -> None:
        self.delivered.append((channel, event.seq))

    def _fetch(self, channel: str, after_seq: int, count: int) -> Deferred[list[Published]]:
        self.fetches.append((channel, after_seq, count))
        d: Deferred[list[Published]] = Deferred()
        self.pending.append(d)
        return d

    def seqs(self, channel: str = ROOM) -> list[int | None]:
        return [seq for ch, seq in self.delivered if ch == channel]

    def offer(self, *seqs: int, channel: str = ROOM) -> None:
        for seq in seqs:
            self.order.offer(channel, ev(seq, channel))

    def started(self, last_seq: int, channel: str = ROOM) -> Harness:
        self.order.follow(channel)
        self.order.start(channel, last_seq)
        return self


@pytest.fixture
def h() -> Harness:
    return Harness()


def test_in_order_passes_straight_through(h):
    h.started(0)
    h.offer(1, 2, 3)
    assert h.seqs() == [1, 2, 3]
    assert h.order.state(ROOM) == (4, [])
    assert h.clock.getDelayedCalls() == []


def test_a_room_not_followed_passes_through_untouched(h):
    h.order.offer("room:other", ev(7, "room:other"))
    h.order.offer("room:other", ev(3, "room:other"))
    h.order.offer("room:other", ev(None, "room:other"))
    assert h.delivered == [("room:other", 7), ("room:other", 3), ("room:other", None)]
    assert h.order.state("room:other") is None
    assert h.clock.getDelayedCalls() == []


def test_events_before_start_are_held_then_released_in_order(h):
    """Those the first snapshot holds (3, 4) still go to the registry, which
    hands them only to connections whose own join snapshot is older."""
    h.order.follow(ROOM)
    h.offer(6, 4, 5, 3, 7)
    assert h.delivered == []
    assert h.clock.getDelayedCalls() == []
    h.order.start(ROOM, 4)  # the join snapshot holds up to seq 4
    assert h.seqs() == [3, 4, 5, 6, 7]
    assert h.order.state(ROOM) == (8, [])
    assert h.clock.getDelayedCalls() == []


def test_a_second_follow_and_start_change_nothing(h):
    h.started(10)
    h.offer(11)
    h.order.follow(ROOM)
    h.order.start(ROOM, 2)
    h.offer(12)
    assert h.seqs() == [11, 12]
    assert h.order.state(ROOM) == (13, [])


def test_start_of_a_room_not_followed_is_ignored(h):
    h.order.start(ROOM, 5)
    assert h.order.state(ROOM) is None
    h.offer(1)
    assert h.seqs() == [1]


def test_out_of_order_is_delivered_in_order(h):
    h.started(1)
    h.offer(3)
    assert h.seqs() == []
    assert h.order.state(ROOM) == (2, [3])
    assert len(h.clock.getDelayedCalls()) == 1
    h.offer(2)
    assert h.seqs() == [2, 3]
    assert h.order.state(ROOM) == (4, [])
    assert h.clock.getDelayedCalls() == []  # the gap timer is gone
    h.clock.advance(GAP_TIMEOUT * 4)
    assert h.fetches == []


def test_a_gap_filled_in_time_never_reads_storage(h):
    h.started(0)
    h.offer(4, 3, 2)
    h.clock.advance(GAP_TIMEOUT * 0.9)
    h.offer(1)
    assert h.seqs() == [1, 2, 3, 4]
    h.clock.advance(GAP_TIMEOUT * 4)
    assert h.fetches == []
    assert h.order.filled == h.order.skipped == 0


def test_an_unfilled_gap_is_read_back_from_storage(h):
    h.started(1)  # next expected: 2
    h.offer(5, 6)
    h.clock.advance(GAP_TIMEOUT - 0.01)
    assert h.fetches == []
    h.clock.advance(0.02)
    assert h.fetches == [(ROOM, 1, 3)]  # after seq 1, the 3 missing (2, 3, 4)
    assert h.seqs() == []
    h.pending[0].callback([ev(2), ev(3), ev(4)])
    assert h.seqs() == [2, 3, 4, 5, 6]
    assert h.order.filled == 3
    assert h.order.skipped == 0
    assert h.order.state(ROOM) == (7, [])
    assert h.clock.getDelayedCalls() == []
    h.offer(7)
    assert h.seqs()[-1] == 7


def test_read_back_events_in_any_order_are_delivered_in_order(h):
    h.started(0)
    h.offer(4)
    h.clock.advance(GAP_TIMEOUT)
    assert h.fetches == [(ROOM, 0, 3)]
    h.pending[0].callback([ev(3), ev(1), ev(2)])
    assert h.seqs() == [1, 2, 3, 4]


def test_the_gap_timer_runs_from_the_first_held_event(h):
    h.started(0)
    h.offer(3)
    h.clock.advance(GAP_TIMEOUT / 2)
    h.offer(4)  # does not push the deadline back
    h.clock.advance(GAP_TIMEOUT / 2)
    assert h.fetches == [(ROOM, 0, 2)]


def test_duplicates_and_old_seqs_are_dropped(h):
    h.started(5)
    h.offer(6, 6, 5, 3, 7, 6)
    assert h.seqs() == [6, 7]
    h.offer(9, 9)  # a duplicate of a held event
    h.offer(8)
    assert h.seqs() == [6, 7, 8, 9]
    assert h.clock.getDelayedCalls() == []


def test_a_late_real_event_after_its_read_back_is_dropped(h):
    h.started(0)
    h.offer(3)
    h.clock.advance(GAP_TIMEOUT)
    h.pending[0].callback([ev(1), ev(2)])
    assert h.seqs() == [1, 2, 3]
    h.offer(2, 1)  # the real publishes finally arrive
    h.offer(4)
    assert h.seqs() == [1, 2, 3, 4]


def test_read_back_ignores_events_outside_the_gap(h):
    h.started(2)
    h.offer(5)
    h.clock.advance(GAP_TIMEOUT)
    assert h.fetches == [(ROOM, 2, 2)]
    # storage answers generously: an old one, the gap, and one past it
    h.pending[0].callback([ev(1), ev(2), ev(3), ev(4), ev(5), ev(6)])
    assert h.seqs() == [3, 4, 5]
    assert h.order.state(ROOM) == (6, [])
    h.offer(6)
    assert h.seqs() == [3, 4, 5, 6]


def test_a_failed_read_back_skips_ahead_and_delivers_the_held(h):
    h.started(0)
    h.offer(4, 5)
    h.clock.advance(GAP_TIMEOUT)
    assert h.fetches == [(ROOM, 0, 3)]
    h.pending[0].errback(RuntimeError("database is down"))
    assert h.seqs() == [4, 5]
    assert h.order.skipped == 3
    assert h.order.filled == 0
    assert h.order.state(ROOM) == (6, [])
    assert h.clock.getDelayedCalls() == []
    h.offer(3, 6)  # too late for 3
    assert h.seqs() == [4, 5, 6]


def test_a_short_read_back_skips_what_storage_does_not_have(h):
    h.started(0)
    h.offer(5)
    h.clock.advance(GAP_TIMEOUT)
    assert h.fetches == [(ROOM, 0, 4)]
    h.pending[0].callback([ev(1), ev(2)])  # 3 and 4 are not in storage
    assert h.seqs() == [1, 2, 5]
    assert h.order.filled == 2
    assert h.order.skipped == 2
    assert h.order.state(ROOM) == (6, [])
    assert h.clock.getDelayedCalls() == []


def test_a_read_back_with_a_hole_skips_the_hole(h):
    h.started(0)
    h.offer(4)
    h.clock.advance(GAP_TIMEOUT)
    h.pending[0].callback([ev(1), ev(3)])
    assert h.seqs() == [1, 3, 4]
    assert h.order.skipped == 1
    assert h.order.state(ROOM) == (5, [])
    assert h.clock.getDelayedCalls() == []


def test_an_empty_read_back_skips_the_whole_gap(h):
    h.started(0)
    h.offer(3)
    h.clock.advance(GAP_TIMEOUT)
    h.pending[0].callback([])
    assert h.seqs() == [3]
    assert h.order.skipped == 2
    assert h.clock.getDelayedCalls() == []


def test_too_many_held_reads_the_gap_at_once(h, monkeypatch):
    monkeypatch.setattr(ordering, "MAX_HELD", 3)
    h.started(0)
    h.offer(3, 4)
    assert h.fetches == []
    h.offer(5)  # the third held one
    assert h.fetches == [(ROOM, 0, 2)]
    assert h.clock.getDelayedCalls() == []  # the gap timer was replaced by the read
    h.offer(6)  # held while reading; no second read
    assert h.fetches == [(ROOM, 0, 2)]
    h.pending[0].callback([ev(1), ev(2)])
    assert h.seqs() == [1, 2, 3, 4, 5, 6]
    assert h.clock.getDelayedCalls() == []


def test_a_gap_longer_than_max_fill_is_skipped_without_reading(h):
    h.started(0)
    first = ordering.MAX_FILL + 2  # MAX_FILL + 1 missing
    h.offer(first, first + 1)
    h.clock.advance(GAP_TIMEOUT)
    assert h.fetches == []
    assert h.seqs() == [first, first + 1]
    assert h.order.skipped == ordering.MAX_FILL + 1
    assert h.order.state(ROOM) == (first + 2, [])
    assert h.clock.getDelayedCalls() == []


def test_a_gap_of_exactly_max_fill_is_read(h, monkeypatch):
    monkeypatch.setattr(ordering, "MAX_FILL", 3)
    h.started(0)
    h.offer(4)
    h.clock.advance(GAP_TIMEOUT)
    assert h.fetches == [(ROOM, 0, 3)]
    h.pending[0].callback([ev(1), ev(2), ev(3)])
    assert h.seqs() == [1, 2, 3, 4]


def test_a_gap_of_max_fill_plus_one_is_skipped(h, monkeypatch):
    monkeypatch.setattr(ordering, "MAX_FILL", 3)
    h.started(0)
    h.offer(5)
    h.clock.advance(GAP_TIMEOUT)
    assert h.fetches == []
    assert h.seqs() == [5]
    assert h.order.skipped == 4


def test_forget_cancels_the_gap_timer(h):
    h.started(0)
    h.offer(3)
    assert len(h.clock.getDelayedCalls()) == 1
    h.order.forget(ROOM)
    assert h.clock.getDelayedCalls() == []
    assert h.order.state(ROOM) is None
    h.clock.advance(GAP_TIMEOUT * 4)
    assert h.fetches == []
    h.offer(1)  # not followed any more: straight through
    assert h.seqs() == [1]


def test_forget_of_a_room_not_followed_is_harmless(h):
    h.order.forget(ROOM)
    assert h.order.state(ROOM) is None


def test_stop_cancels_every_timer(h):
    h.started(0)
    h.started(0, channel="room:r2")
    h.offer(3)
    h.offer(5, channel="room:r2")
    assert len(h.clock.getDelayedCalls()) == 2
    h.order.stop()
    assert h.clock.getDelayedCalls() == []
    assert h.order.state(ROOM) is None
    assert h.order.state("room:r2") is None


def test_a_read_back_finishing_after_forget_delivers_nothing(h):
    h.started(0)
    h.offer(3)
    h.clock.advance(GAP_TIMEOUT)
    h.order.forget(ROOM)
    h.pending[0].callback([ev(1), ev(2)])
    assert h.delivered == []
    assert h.clock.getDelayedCalls() == []


def test_a_read_back_of_a_forgotten_then_refollowed_room_is_ignored(h):
    h.started(0)
    h.offer(3)
    h.clock.advance(GAP_TIMEOUT)
    h.order.forget(ROOM)
    h.started(10)  # joined again: a new stream start
    h.pending[0].callback([ev(1), ev(2)])
    assert h.delivered == []
    h.offer(11)
    assert h.seqs() == [11]


def test_a_failed_read_back_after_forget_is_harmless(h):
    h.started(0)
    h.offer(3)
    h.clock.advance(GAP_TIMEOUT)
    h.order.forget(ROOM)
    h.pending[0].errback(RuntimeError("gone"))
    assert h.delivered == []
    assert h.order.skipped == 0


def test_events_during_a_fill_wait_for_it_then_come_out_in_order(h):
    h.started(0)
    h.offer(3)
    h.clock.advance(GAP_TIMEOUT)
    assert h.fetches == [(ROOM, 0, 2)]
    # while reading: the next expected one, a duplicate, and later ones
    h.offer(1, 5, 4, 3)
    assert h.seqs() == []
    assert h.clock.getDelayedCalls() == []  # no timer while filling
    h.pending[0].callback([ev(1), ev(2)])
    assert h.seqs() == [1, 2, 3, 4, 5]
    assert h.order.state(ROOM) == (6, [])
    assert h.fetches == [(ROOM, 0, 2)]
    assert h.clock.getDelayedCalls() == []


def test_a_late_real_event_during_a_fill_is_delivered_once(h):
    h.started(0)
    h.offer(3)
    h.clock.advance(GAP_TIMEOUT)
    h.offer(2)  # the real one arrives while it is being read back
    h.pending[0].callback([ev(1), ev(2)])
    assert h.seqs() == [1, 2, 3]


# -- bugs found while writing these tests -------------------------------------------


def test_a_second_gap_behind_the_filled_one_is_not_skipped_unread(h):
    """Two gaps: held {3, 6}, expecting 1.  The read-back fills 1..2, then 3
    goes out and 4..5 are still missing.  Nothing has asked storage for 4..5
    and they have had no time to arrive, yet RoomOrder skips them at once as
    "not found in storage" (``_filled`` compares against ``min(held)`` rather
    than the ``first_held`` it asked up to)."""
    h.started(0)
    h.offer(3, 6)
    h.clock.advance(GAP_TIMEOUT)
    assert h.fetches == [(ROOM, 0, 2)]
    h.pending[0].callback([ev(1), ev(2)])
    assert h.seqs() == [1, 2, 3]
    assert h.order.skipped == 0
    assert h.order.state(ROOM) == (4, [6])
    # the second gap gets its own wait and read-back
    h.clock.advance(GAP_TIMEOUT)
    assert h.fetches == [(ROOM, 0, 2), (ROOM, 3, 2)]
    h.pending[1].callback([ev(4), ev(5)])
    assert h.seqs() == [1, 2, 3, 4, 5, 6]
    assert h.order.skipped == 0


def test_a_gap_after_a_fill_gets_its_own_timer(h):
    """The same bug seen from the wire: 5 and 6 arrive during the fill of
    1..2 while 4 is still on its way.  After the fill 4 is skipped at once,
    and when the real 4 arrives a moment later it is dropped as old: this
    node never delivers 4 although it was published and stored."""
    h.started(0)
    h.offer(3)
    h.clock.advance(GAP_TIMEOUT)
    h.offer(5, 6)  # arrive during the fill; 4 is still on its way
    h.pending[0].callback([ev(1), ev(2)])
    assert h.seqs() == [1, 2, 3]
    assert h.order.state(ROOM) == (4, [5, 6])
    assert len(h.clock.getDelayedCalls()) == 1
    h.offer(4)
    assert h.seqs() == [1, 2, 3, 4, 5, 6]
    assert h.clock.getDelayedCalls() == []
    assert h.order.skipped == 0


def test_a_real_event_arriving_during_a_failed_fill_is_not_stranded(h):
    """Expecting 2, holding 4; the read-back of 2..3 is under way when the
    real 3 arrives (held, as everything is during a fill).  The read fails:
    ``_fill_failed`` skips to 4, and 3 (below the new next seq) stays in
    ``held`` forever, re-arming the gap timer every ``gap_timeout``."""
    h.started(1)
    h.offer(4)
    h.clock.advance(GAP_TIMEOUT)
    assert h.fetches == [(ROOM, 1, 2)]
    h.offer(3)
    h.pending[0].errback(RuntimeError("database is down"))
    delivered = h.seqs()
    assert 4 in delivered
    assert delivered == sorted(set(delivered))  # in order, never twice
    assert h.order.state(ROOM) == (5, [])
    assert h.clock.getDelayedCalls() == []
    h.clock.advance(GAP_TIMEOUT * 10)
    assert h.fetches == [(ROOM, 1, 2)]


def test_a_failed_fill_with_a_late_arrival_does_not_stall_the_room(h):
    """The consequence of the stranded event above: ``min(held)`` is now
    below the next seq, so ``_gap_expired`` computes ``missing <= 0`` for
    every later gap and never reads it back; the room stalls (everything
    after the next lost publish is held until MAX_HELD, and even then
    nothing is read)."""
    h.started(1)
    h.offer(4)
    h.clock.advance(GAP_TIMEOUT)
    h.offer(3)
    h.pending[0].errback(RuntimeError("database is down"))
    h.offer(6)  # 5 was lost
    h.clock.advance(GAP_TIMEOUT * 2)
    assert h.fetches == [(ROOM, 1, 2), (ROOM, 4, 1)]
    h.pending[1].callback([ev(5)])
    assert h.seqs()[-2:] == [5, 6]
