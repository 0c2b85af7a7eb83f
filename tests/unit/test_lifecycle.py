"""The service tree: children start in order, each after the previous one's
Deferred; they stop in reverse, each waited for; failures pass up."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed

from chatd.lifecycle import AsyncMultiService, ComponentService


class Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.pending: dict[str, Deferred[None]] = {}

    def step(self, name: str, wait: bool = False, fails: bool = False) -> Any:
        def run() -> Deferred[None] | None:
            self.events.append(name)
            if fails:
                raise RuntimeError(f"{name} broke")
            if wait:
                d: Deferred[None] = Deferred()
                self.pending[name] = d
                return d
            return None

        return run

    def release(self, name: str) -> None:
        self.pending.pop(name).callback(None)


def tree(*children: ComponentService) -> AsyncMultiService:
    root = AsyncMultiService()
    for child in children:
        child.setServiceParent(root)
    return root


def test_children_start_in_order_each_after_the_previous_one_is_ready() -> None:
    r = Recorder()
    root = tree(
        ComponentService("a", r.step("start a", wait=True), r.step("stop a")),
        ComponentService("b", r.step("start b"), r.step("stop b")),
    )
    started = root.startService()
    assert r.events == ["start a"]  # b waits for a's Deferred
    assert not started.called
    r.release("start a")
    assert r.events == ["start a", "start b"]
    assert started.called


def test_children_stop_in_reverse_order_each_waited_for() -> None:
    r = Recorder()
    root = tree(
        ComponentService("a", None, r.step("stop a")),
        ComponentService("b", None, r.step("stop b", wait=True)),
        ComponentService("c", None, r.step("stop c")),
    )
    root.startService()
    stopped = root.stopService()
    assert r.events == ["stop c", "stop b"]  # a waits until b has stopped
    assert not stopped.called
    r.release("stop b")
    assert r.events == ["stop c", "stop b", "stop a"]
    assert stopped.called


def test_a_failed_start_stops_what_started_and_passes_the_failure_up() -> None:
    r = Recorder()
    root = tree(
        ComponentService("a", r.step("start a"), r.step("stop a")),
        ComponentService("b", r.step("start b"), r.step("stop b")),
        ComponentService("c", r.step("start c", fails=True), r.step("stop c")),
        ComponentService("d", r.step("start d"), r.step("stop d")),
    )
    failures: list[Any] = []
    root.startService().addErrback(failures.append)
    assert r.events == ["start a", "start b", "start c", "stop b", "stop a"]
    assert len(failures) == 1 and "c broke" in str(failures[0].value)
    assert not root.running


def test_a_child_that_fails_to_stop_does_not_keep_the_others_running() -> None:
    r = Recorder()
    root = tree(
        ComponentService("a", None, r.step("stop a")),
        ComponentService("b", None, r.step("stop b", fails=True)),
        ComponentService("c", None, r.step("stop c")),
    )
    root.startService()
    failures: list[Any] = []
    root.stopService().addErrback(failures.append)
    assert r.events == ["stop c", "stop b", "stop a"]
    assert len(failures) == 1 and "b broke" in str(failures[0].value)


def test_coroutine_steps_are_waited_for() -> None:
    gate: Deferred[None] = Deferred()
    events: list[str] = []

    async def start() -> None:
        await gate
        events.append("started")

    root = tree(ComponentService("a", start), ComponentService("b", lambda: succeed(None)))
    started = root.startService()
    assert events == [] and not started.called
    gate.callback(None)
    assert events == ["started"] and started.called


def test_the_root_starts_and_stops_a_nested_tree_in_order() -> None:
    r = Recorder()
    inner = tree(
        ComponentService("x", r.step("start x"), r.step("stop x")),
        ComponentService("y", r.step("start y"), r.step("stop y")),
    )
    inner.setName("inner")
    root = AsyncMultiService()
    ComponentService("a", r.step("start a"), r.step("stop a")).setServiceParent(root)
    inner.setServiceParent(root)
    root.startService()
    root.stopService()
    assert r.events == ["start a", "start x", "start y", "stop y", "stop x", "stop a"]


@pytest.mark.parametrize("stage", ["start", "stop"])
def test_a_synchronous_exception_becomes_a_failed_deferred(stage: str) -> None:
    def broken() -> None:
        raise ValueError("no")

    child = ComponentService("a", broken if stage == "start" else None, broken)
    failures: list[Any] = []
    child.startService().addErrback(failures.append)
    if stage == "stop":
        child.stopService().addErrback(failures.append)
    assert len(failures) == 1 and failures[0].check(ValueError)
