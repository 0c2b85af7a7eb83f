"""The dispatcher (chatd/protocol/dispatch.py) against a recording
responder: routes, refusals, errors, Deferred results, ``Outcome``."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import globalLogPublisher

from chatd.domain.chat import Outcome
from chatd.domain.models import Identity
from chatd.errors import ChatError, ErrorCode
from chatd.metrics import Metrics
from chatd.protocol import requests as rq
from chatd.protocol.dispatch import Dispatcher, Route


class Responder:
    connection_id = "c_test"

    def __init__(self, user: str | None = "alice") -> None:
        self.identity = Identity(user) if user is not None else None
        self.calls: list[tuple[Any, ...]] = []

    def reply(self, request_id: str | None, confirmation: str | None, data: Any) -> None:
        self.calls.append(("reply", request_id, confirmation, data))

    def reply_error(
        self, request_id: str | None, event: str | None, code: str, message: str
    ) -> None:
        self.calls.append(("error", request_id, event, code, message))

    def note_error(self, code: str, request: str | None) -> None:
        self.calls.append(("noted", code, request))

    def send_event(self, event_type: str, data: dict[str, Any]) -> None:
        self.calls.append(("event", event_type, data))

    def send_frame(self, frame: Any) -> None:
        self.calls.append(("frame", frame))

    def disconnect(self, code: int, reason: str) -> None:
        self.calls.append(("disconnect", code))


def refuse(c: Any, r: Any) -> Any:
    raise ChatError(ErrorCode.ROOM_NOT_FOUND, "no such room")


def crash(c: Any, r: Any) -> Any:
    raise ZeroDivisionError("handler bug")


def dispatcher(**routes: Route) -> Dispatcher:
    table = {
        "ping": Route(rq.Ping.parse, lambda c, r: {"t": 1}, "pong"),
        "echo": Route(lambda d: d, lambda c, r: {"echo": r}, "echoed"),
        "silent": Route(lambda d: d, lambda c, r: {}, None),
        "message:send": Route(lambda d: d, refuse, "message:sent", "message:error"),
    }
    table.update({name.replace("_", ":"): route for name, route in routes.items()})
    return Dispatcher(table, Metrics())


def test_route_result_is_acked_with_an_id_and_confirmed_without() -> None:
    d, r = dispatcher(), Responder()
    d.dispatch(r, "echo", "e1", {"a": 1})
    d.dispatch(r, "echo", None, {"a": 2})
    d.dispatch(r, "silent", None, {})
    assert r.calls == [
        ("reply", "e1", "echoed", {"echo": {"a": 1}}),
        ("reply", None, "echoed", {"echo": {"a": 2}}),
        ("reply", None, None, {}),
    ]


def test_unknown_event() -> None:
    d, r = dispatcher(), Responder()
    d.dispatch(r, "nope", "n1", {})
    assert r.calls == [("error", "n1", "nope", ErrorCode.UNKNOWN_EVENT, "unknown event 'nope'")]


def test_unauthorized_before_auth_except_public_events() -> None:
    d, r = dispatcher(), Responder(user=None)
    d.dispatch(r, "echo", "e1", {})
    d.dispatch(r, "ping", "p1", None)
    assert r.calls == [
        ("error", "e1", "echo", ErrorCode.UNAUTHORIZED, "authenticate first"),
        ("reply", "p1", "pong", {"t": 1}),
    ]


def test_chat_error_becomes_an_error_reply() -> None:
    d, r = dispatcher(room=Route(lambda d: d, refuse, "roomed")), Responder()
    d.dispatch(r, "room", "r1", {})
    assert r.calls == [("error", "r1", "room", ErrorCode.ROOM_NOT_FOUND, "no such room")]


def test_invalid_data_is_refused_by_the_parser() -> None:
    d, r = dispatcher(typed=Route(rq.Auth.parse, lambda c, r: {}, None)), Responder()
    d.dispatch(r, "typed", "t1", "not an object")
    [(kind, request_id, event, code, _)] = r.calls
    assert (kind, request_id, event, code) == ("error", "t1", "typed", ErrorCode.INVALID_MESSAGE)


def test_id_less_message_send_failure_is_a_message_error_event_with_temp_id() -> None:
    d, r = dispatcher(), Responder()
    d.dispatch(r, "message:send", None, {"tempId": "t1"})
    d.dispatch(r, "message:send", None, {"tempId": 5})
    d.dispatch(r, "message:send", "m1", {"tempId": "t1"})
    assert r.calls == [
        ("noted", ErrorCode.ROOM_NOT_FOUND, "message:send"),
        (
            "event",
            "message:error",
            {"code": "ROOM_NOT_FOUND", "message": "no such room", "tempId": "t1"},
        ),
        ("noted", ErrorCode.ROOM_NOT_FOUND, "message:send"),
        ("event", "message:error", {"code": "ROOM_NOT_FOUND", "message": "no such room"}),
        ("error", "m1", "message:send", ErrorCode.ROOM_NOT_FOUND, "no such room"),
    ]


def test_unexpected_exception_is_server_error_and_logged() -> None:
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        d, r = dispatcher(bug=Route(lambda d: d, crash, None)), Responder()
        d.dispatch(r, "bug", "b1", {})
        d.dispatch(r, "echo", "e1", {})
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert r.calls[0] == (
        "error",
        "b1",
        "bug",
        ErrorCode.SERVER_ERROR,
        "internal error; the request was not completed",
    )
    assert r.calls[1][0] == "reply", "the session lives on"
    failed = [e for e in events if e.get("event") == "request.failed"]
    assert len(failed) == 1 and failed[0]["log_failure"].check(ZeroDivisionError)


def test_deferred_results_and_failures() -> None:
    later: Deferred[Any] = Deferred()
    d = dispatcher(
        now=Route(lambda d: d, lambda c, r: succeed({"ok": 1}), "done"),
        later=Route(lambda d: d, lambda c, r: later, "done"),
        refused=Route(lambda d: d, lambda c, r: fail(ChatError(ErrorCode.FORBIDDEN, "no")), None),
        broken=Route(lambda d: d, lambda c, r: fail(ZeroDivisionError()), None),
    )
    r = Responder()
    d.dispatch(r, "now", "n1", {})
    d.dispatch(r, "later", "l1", {})
    d.dispatch(r, "refused", "f1", {})
    d.dispatch(r, "broken", "b1", {})
    assert r.calls[0] == ("reply", "n1", "done", {"ok": 1})
    assert r.calls[1] == ("error", "f1", "refused", ErrorCode.FORBIDDEN, "no")
    assert r.calls[2][:4] == ("error", "b1", "broken", ErrorCode.SERVER_ERROR)
    later.callback({"ok": 2})
    assert r.calls[3] == ("reply", "l1", "done", {"ok": 2})


def test_outcome_after_reply_runs_after_the_reply() -> None:
    r = Responder()
    order: list[str] = []

    def after() -> None:
        order.append("after")
        r.calls.append(("after",))

    d = dispatcher(join=Route(lambda d: d, lambda c, r_: Outcome({"room": 1}, after), "joined"))
    d.dispatch(r, "join", "j1", {})
    deferred_outcome: Deferred[Any] = Deferred()
    d2 = dispatcher(join=Route(lambda d: d, lambda c, r_: deferred_outcome, "joined"))
    d2.dispatch(r, "join", None, {})
    deferred_outcome.callback(Outcome({"room": 2}, after))
    assert r.calls == [
        ("reply", "j1", "joined", {"room": 1}),
        ("after",),
        ("reply", None, "joined", {"room": 2}),
        ("after",),
    ]


def test_events_in_are_counted_with_unknown_types_under_one_label() -> None:
    d, r = dispatcher(), Responder()
    d.dispatch(r, "echo", None, {})
    d.dispatch(r, "whatever-1", None, {})
    d.dispatch(r, "whatever-2", None, {})
    assert d.metrics is not None
    sample = d.metrics.registry.get_sample_value
    assert sample("chatd_events_in_total", {"type": "echo"}) == 1
    assert sample("chatd_events_in_total", {"type": "unknown"}) == 2
