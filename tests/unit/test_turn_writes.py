"""One write per connection per turn: a session's replies wait for the end
of the reactor's turn (chatd.domain.turn) and leave with the turn's fan-out
for that connection, in the order they were made."""

from __future__ import annotations

import json

from twisted.internet.task import Clock

from chatd.domain.turn import SMALL_FANOUT, EndOfTurn
from chatd.session.session import CLOSE_SLOW_CONSUMER
from tests.unit.session_fakes import Harness


def frames(write: bytes) -> list[dict]:
    """The native envelopes in one write (each is one JSON object)."""
    text, decoder, found, at = write.decode(), json.JSONDecoder(), [], 0
    while at < len(text):
        frame, at = decoder.raw_decode(text, at)
        found.append(frame)
    return found


def opened(h: Harness):
    session, binding = h.open("alice")
    h.clock.advance(0)  # the authenticated push of the open
    binding.fast.clear()
    return session, binding


def test_a_reply_and_the_turns_push_leave_in_one_write_reply_first() -> None:
    h = Harness(turn=True)
    session, binding = opened(h)
    session.received("ping", "p1", {})
    assert binding.fast == []  # held until the turn ends
    session.send_frame(b'{"type":"chat:message","data":{"seq":1}}')  # the registry's fan-out
    h.clock.advance(0)
    assert len(binding.fast) == 1
    assert [f["type"] for f in frames(binding.fast[0])] == ["ack", "chat:message"]


def test_without_a_turn_every_reply_is_written_at_once() -> None:
    h = Harness()
    session, binding = h.open("alice")
    binding.fast.clear()
    session.received("ping", "p1", {})
    assert [f["type"] for f in frames(binding.fast[0])] == ["ack"]


def test_several_replies_of_one_turn_keep_their_order() -> None:
    h = Harness(turn=True)
    session, binding = opened(h)
    session.received("echo", "e1", {"n": 1})
    session.received("ping", "p1", {})
    session.received("echo", "e2", {"n": 2})
    h.clock.advance(0)
    assert [f.get("id") for f in frames(b"".join(binding.fast))] == ["e1", "p1", "e2"]
    assert len(binding.fast) == 1


def test_a_close_sends_what_was_answered_before_it() -> None:
    h = Harness(turn=True)
    session, binding = opened(h)
    session.received("ping", "p1", {})
    session.close(4008, "policy")
    assert [f.get("id") for f in frames(binding.fast[0])] == ["p1"]
    assert binding.close_codes() == [4008]
    h.clock.advance(0)
    assert len(binding.fast) == 1  # nothing more after the close


def test_a_transport_that_went_away_drops_what_was_held() -> None:
    h = Harness(turn=True)
    session, binding = opened(h)
    session.received("ping", "p1", {})
    session.closed(False, 1006, "")
    h.clock.advance(0)
    assert binding.fast == []


def test_held_replies_count_against_the_send_buffer_bound() -> None:
    h = Harness(turn=True, max_send_buffer=1000, rate_limit=1000.0, rate_burst=1000)
    session, binding = opened(h)
    for n in range(40):  # each ack is ~50 bytes: together past the 1,000
        session.received("echo", f"e{n}", {"n": n})
    assert binding.close_codes() == [CLOSE_SLOW_CONSUMER]
    h.clock.advance(0)
    assert binding.fast == []  # the held ones were dropped with the session


def test_a_paused_transport_gets_the_held_bytes_on_its_checked_path() -> None:
    h = Harness(turn=True, max_send_buffer=100_000)
    session, binding = opened(h)
    session.received("ping", "p1", {})
    session.pauseProducing()  # the transport filled meanwhile
    session.send_frame(b'{"type":"x","data":{}}')  # still held behind the reply
    h.clock.advance(0)
    assert binding.fast == [] and len(binding.queued) == 1
    assert [f["type"] for f in frames(binding.queued[0])] == ["ack", "x"]


def test_the_fanout_runs_before_the_held_replies_and_work_they_cause_runs_too() -> None:
    clock = Clock()
    turn = EndOfTurn(clock)
    order: list[str] = []
    turn.on_fanout(lambda: order.append("fanout"), lambda: 5)

    def release() -> None:
        order.append("release")
        turn.fanout_due()  # a reply that completes a join flushes again

    turn.cork(release)
    turn.fanout_due()
    clock.advance(0)
    assert order == ["fanout", "release", "fanout"]
    assert clock.getDelayedCalls() == []


def test_one_failing_release_does_not_cost_the_others_their_writes() -> None:
    clock = Clock()
    turn = EndOfTurn(clock)
    done: list[str] = []

    def broken() -> None:
        raise RuntimeError("boom")

    turn.cork(broken)
    turn.cork(lambda: done.append("second"))
    clock.advance(0)
    assert done == ["second"]


def test_a_large_fanout_goes_after_the_held_replies() -> None:
    """An ack must not wait for a thousand writes: past SMALL_FANOUT the
    held replies leave first."""
    clock = Clock()
    turn = EndOfTurn(clock)
    order: list[str] = []
    turn.on_fanout(lambda: order.append("fanout"), lambda: SMALL_FANOUT + 1)
    turn.fanout_due()
    turn.cork(lambda: order.append("release"))
    clock.advance(0)
    assert order == ["release", "fanout"]
