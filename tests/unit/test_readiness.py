"""``GET /readyz`` answers within ``database_timeout`` whatever hangs behind
it: each check is bounded (chatd.service), and the checks run side by side
(chatd.web.site ``Ready``).  A fake clock; twisted.web's DummyRequest."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from chatd.service import _bounded
from chatd.web.site import Ready


def _get(ready: Ready) -> DummyRequest:
    request = DummyRequest([b""])
    request._disconnected = False
    ready.render_GET(request)
    return request


def _body(request: DummyRequest) -> Any:
    return json.loads(b"".join(request.written))


def test_a_check_that_never_answers_is_unavailable_at_the_bound():
    clock = Clock()
    never: Deferred[None] = Deferred()
    ready = Ready(
        {
            "storage": partial(_bounded, lambda: succeed(None), 5.0, clock),
            "redis": partial(_bounded, lambda: never, 5.0, clock),
        }
    )
    request = _get(ready)
    clock.advance(4.9)
    assert not request.finished
    clock.advance(0.1)
    assert request.finished and request.responseCode == 503
    assert _body(request) == {
        "status": "unavailable",
        "storage": "ok",
        "redis": "unavailable: no answer within 5 s",
    }
    never.callback(None)  # a late answer changes nothing, and is not an error
    assert request.finished == 1


def test_the_checks_run_side_by_side():
    """Two checks that each hang: one bound, not two, before the answer."""
    clock = Clock()
    ready = Ready({name: partial(_bounded, Deferred, 5.0, clock) for name in ("storage", "redis")})
    request = _get(ready)
    clock.advance(5.0)
    assert request.finished and request.responseCode == 503
    assert set(_body(request).values()) == {"unavailable", "unavailable: no answer within 5 s"}


def test_answers_in_time_are_ready():
    clock = Clock()
    pending: Deferred[None] = Deferred()
    ready = Ready({"storage": partial(_bounded, lambda: pending, 5.0, clock)})
    request = _get(ready)
    clock.advance(1.0)
    pending.callback(None)
    assert request.responseCode == 200 and _body(request) == {"status": "ready", "storage": "ok"}
    assert not clock.getDelayedCalls(), "the bound's timer is cancelled"
