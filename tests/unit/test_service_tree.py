"""chatd's service tree on a MemoryReactorClock: the children and their
order, a clean start and drain, and a start that fails (one line on stderr,
status 1, what had started is stopped again)."""

from __future__ import annotations

import io
import os
import sys
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock

from chatd.config import load_config
from chatd.lifecycle import ComponentService
from chatd.service import ChatdService, with_backlog

SECRET = "unit-test-secret-0123456789"


def build(tmp_path: Any, **kwargs: Any) -> tuple[ChatdService, MemoryReactorClock]:
    reactor = MemoryReactorClock()
    config = load_config(
        {
            "listen": "tcp:0:interface=127.0.0.1",
            "data_dir": str(tmp_path),
            "database": f"sqlite:///{tmp_path}/chatd.sqlite3",
            "jwt_secret": SECRET,
        },
        environ={},
    )
    return ChatdService(config, reactor, **kwargs), reactor


def names(service: ChatdService) -> list[str]:
    return [child.name for child in service]


def test_the_children_in_start_order(tmp_path: Any) -> None:
    service, _ = build(tmp_path)
    assert names(service) == [
        "storage",
        "broker",
        "domain timers",
        "socket.io handoff",
        "connections",
        "pending writes",
        "listener",
    ]


def test_start_binds_in_the_privileged_step_and_stop_drains_everything(tmp_path: Any) -> None:
    service, reactor = build(tmp_path)
    service.privilegedStartService()
    assert len(reactor.tcpServers) == 1  # bound before startService (privileges)
    assert reactor.tcpServers[0][2] == 511  # not Twisted's 50: bursts of connects queue
    started = service.startService()
    assert started.called
    assert service.port is not None
    assert all(child.running for child in service)
    stopped: list[Any] = []
    service.stopService().addBoth(stopped.append)
    assert stopped == [None]
    assert not any(child.running for child in service)
    assert service.port is None


class StepFails:
    """A child whose start fails, added after everything else."""

    def start(self) -> None:
        raise RuntimeError("the disk is on fire")

    def stop(self) -> None:
        raise AssertionError("a child that did not start is not stopped")


def test_a_failed_start_is_passed_up_and_stops_what_started(tmp_path: Any) -> None:
    service, _ = build(tmp_path)
    ComponentService.of("broken", StepFails()).setServiceParent(service)
    service.privilegedStartService()
    failures: list[Any] = []
    service.startService().addErrback(failures.append)
    assert len(failures) == 1 and "disk is on fire" in str(failures[0].value)
    assert not any(child.running for child in service)


def test_under_twistd_a_failed_start_is_one_line_and_exit_status_1(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    service, reactor = build(tmp_path, exit_on_failure=True)
    ComponentService.of("broken", StepFails()).setServiceParent(service)
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "__stderr__", stderr)
    service.privilegedStartService()
    result: list[Any] = []
    service.startService().addBoth(result.append)
    assert result == [None]  # handled: nothing unhandled for twistd to print
    assert stderr.getvalue() == "chatd: cannot start: the disk is on fire\n"
    # twistd runs the reactor after starting the tree: it is stopped as soon
    # as it runs, and the process then ends with status 1.
    assert (reactor.stop, (), {}) in reactor.whenRunningHooks
    assert (os._exit, (1,), {}) in reactor.triggers["after"]["shutdown"]


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("tcp:8080:interface=127.0.0.1", "tcp:8080:interface=127.0.0.1:backlog=511"),
        ("tcp6:8080", "tcp6:8080:backlog=511"),
        ("unix:/run/chatd.sock", "unix:/run/chatd.sock:backlog=511"),
        ("tcp:8080:backlog=64", "tcp:8080:backlog=64"),
        ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),
    ],
)
def test_the_listen_backlog_is_raised_unless_given(listen: str, expected: str) -> None:
    assert with_backlog(listen) == expected
