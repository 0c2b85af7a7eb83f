"""Viewer counting and the coalesced count pushes, with a Clock."""

from __future__ import annotations

from twisted.internet.task import Clock

from chatd.domain.live import CoalescedCounts, LocalViewers


def setup(interval: float = 0.5):
    clock = Clock()
    viewers = LocalViewers()
    pushed: list[tuple[str, int]] = []
    counts = CoalescedCounts(clock, interval, viewers.count, lambda s, n: pushed.append((s, n)))
    return clock, viewers, counts, pushed


def test_users_not_connections():
    viewers = LocalViewers()
    viewers.add("s", "alice")
    viewers.add("s", "alice")
    viewers.add("s", "bob")
    assert viewers.count("s") == 2
    viewers.remove("s", "alice")
    assert viewers.count("s") == 2
    viewers.remove("s", "alice")
    viewers.remove("s", "nobody")
    assert viewers.count("s") == 1


def test_a_storm_of_changes_is_a_few_pushes_and_the_last_is_exact():
    clock, viewers, counts, pushed = setup(0.5)
    for i in range(200):  # 200 changes over one second
        if i % 2:
            viewers.remove("s", f"u{i - 1}")
        else:
            viewers.add("s", f"u{i}")
        if i % 10 == 0:
            viewers.add("s", f"keep{i}")
        counts.changed("s")
        clock.advance(0.005)
    clock.advance(5)
    assert len(pushed) <= 4, pushed
    assert pushed[-1] == ("s", viewers.count("s")) == ("s", 20)


def test_pushes_are_spaced_by_the_interval():
    clock, viewers, counts, pushed = setup(0.5)
    for i in range(10):  # one new viewer every 0.1 s
        viewers.add("s", f"u{i}")
        counts.changed("s")
        clock.advance(0.1)
    clock.advance(1)
    assert [n for _, n in pushed] == [1, 6, 10]


def test_no_push_when_the_value_came_back():
    clock, viewers, counts, pushed = setup(0.5)
    viewers.add("s", "a")
    counts.changed("s")
    clock.advance(0)
    viewers.add("s", "b")
    counts.changed("s")
    viewers.remove("s", "b")
    counts.changed("s")
    clock.advance(1)
    assert pushed == [("s", 1)]


def test_stop_cancels_pending_pushes():
    clock, viewers, counts, pushed = setup(0.5)
    viewers.add("s", "a")
    counts.changed("s")
    counts.stop()
    assert clock.getDelayedCalls() == []
