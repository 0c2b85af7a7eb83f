"""The binding-neutral session (chatd/session/session.py): authentication,
rate limit, replies and errors, slow consumers, closing.  A recording
binding and a ``Clock``; no reactor, no sockets."""

from __future__ import annotations

from twisted.logger import LogLevel, globalLogPublisher

from chatd.errors import ErrorCode
from chatd.session.rate import TokenBucket
from chatd.session.session import (
    CLOSE_GOING_AWAY,
    CLOSE_POLICY,
    CLOSE_SLOW_CONSUMER,
    CLOSE_UNAUTHENTICATED,
)
from tests.unit.session_fakes import Harness, token


def captured_events() -> tuple[list[dict], object]:
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    return events, events.append


def stop_capturing(observer: object) -> None:
    globalLogPublisher.removeObserver(observer)  # type: ignore[arg-type]


# -- authentication -----------------------------------------------------------------


def test_token_with_the_upgrade_authenticates_at_open_with_one_log_line() -> None:
    h = Harness()
    events, observer = captured_events()
    try:
        session, binding = h.open("alice")
    finally:
        stop_capturing(observer)
    assert session.identity is not None and session.identity.user_id == "alice"
    [pushed] = binding.sent()
    assert pushed == {
        "type": "authenticated",
        "data": {"userId": "alice", "connectionId": session.connection_id},
    }
    assert h.lifecycle.opened_sessions == [session]
    opens = [e for e in events if e.get("event") == "connection.open"]
    assert [e["user"] for e in opens] == ["alice"]
    assert opens[0]["log_namespace"] == "chatd.protocol.websocket", "log filters select on it"
    assert not [e for e in events if e.get("event") == "auth.ok"]
    assert session in h.hub.open and len(h.hub) == 1


def test_bad_token_with_the_upgrade_is_refused_and_closed_4001() -> None:
    h = Harness()
    binding_session, binding = h.open(None)
    session = h.hub.session(binding, "peer")
    events, observer = captured_events()
    try:
        session.open("not-a-jwt")
    finally:
        stop_capturing(observer)
    assert session.identity is None
    error = binding.sent()[-1]
    assert error["type"] == "error" and error["data"]["code"] == ErrorCode.UNAUTHORIZED
    assert error["data"]["event"] == "auth" and "id" not in error
    assert binding.close_codes() == [CLOSE_UNAUTHENTICATED]
    opens = [e for e in events if e.get("event") == "connection.open"]
    assert [e["user"] for e in opens] == [None], "the open is still logged, once"
    assert h.lifecycle.opened_sessions == []


def test_first_frame_auth_with_id_gets_the_push_and_the_ack() -> None:
    h = Harness()
    session, binding = h.open(None)
    assert binding.sent() == []
    session.received("auth", "a1", {"token": token("bob", h.config)})
    push, ack = binding.sent()
    data = {"userId": "bob", "connectionId": session.connection_id}
    assert push == {"type": "authenticated", "data": data}
    assert ack == {"type": "ack", "id": "a1", "data": data}
    assert h.lifecycle.opened_sessions == [session]
    h.clock.advance(60)
    assert binding.closes == [], "the auth timer was cancelled"


def test_requests_before_auth_are_unauthorized_except_ping() -> None:
    h = Harness()
    session, binding = h.open(None)
    session.received("echo", "e1", {"x": 1})
    session.received("ping", "p1", {})
    error, pong = binding.sent()
    assert error == {
        "type": "error",
        "id": "e1",
        "data": {"code": "UNAUTHORIZED", "message": "authenticate first"},
    }
    assert pong == {"type": "ack", "id": "p1", "data": {"pong": True}}
    assert binding.closes == []


def test_auth_timeout_closes_4001() -> None:
    h = Harness(auth_timeout=5.0)
    session, binding = h.open(None)
    h.clock.advance(4.9)
    assert binding.closes == []
    h.clock.advance(0.2)
    assert binding.close_codes() == [CLOSE_UNAUTHENTICATED]


def test_auth_frame_without_token_is_invalid_and_closes_an_unauthenticated_session() -> None:
    h = Harness()
    session, binding = h.open(None)
    session.received("auth", "a1", {})
    [error] = binding.sent()
    assert error["id"] == "a1" and error["data"]["code"] == ErrorCode.INVALID_MESSAGE
    assert binding.close_codes() == [CLOSE_UNAUTHENTICATED]


def test_token_refresh_for_the_same_user_is_acked() -> None:
    h = Harness()
    session, binding = h.open("alice")
    session.received("auth", "r1", {"token": token("alice", h.config)})
    assert binding.sent()[-1]["type"] == "ack"
    assert h.lifecycle.opened_sessions == [session], "a refresh opens nothing again"


def test_token_refresh_with_another_user_is_forbidden_and_keeps_the_identity() -> None:
    h = Harness()
    session, binding = h.open("alice")
    session.received("auth", "r1", {"token": token("mallory", h.config)})
    error = binding.sent()[-1]
    assert error["id"] == "r1" and error["data"]["code"] == ErrorCode.FORBIDDEN
    assert session.identity is not None and session.identity.user_id == "alice"
    assert binding.closes == []


def test_failed_token_refresh_keeps_the_session_open() -> None:
    h = Harness()
    session, binding = h.open("alice")
    session.received("auth", "r1", {"token": "garbage"})
    error = binding.sent()[-1]
    assert error["id"] == "r1" and error["data"]["code"] == ErrorCode.UNAUTHORIZED
    assert binding.closes == [] and session.identity is not None


# -- errors -----------------------------------------------------------------------------


def test_malformed_frames_get_the_readable_id_and_are_counted() -> None:
    h = Harness()
    session, binding = h.open("alice")
    events, observer = captured_events()
    try:
        session.malformed(ErrorCode.INVALID_MESSAGE, "frame is not valid JSON")
        session.malformed(ErrorCode.INVALID_MESSAGE, "bad", "r9", None)
    finally:
        stop_capturing(observer)
    first, second = binding.sent()[1:]
    assert first == {
        "type": "error",
        "data": {"code": "INVALID_MESSAGE", "message": "frame is not valid JSON"},
    }
    assert second["id"] == "r9"
    assert h.errors("INVALID_MESSAGE") == 2
    logged = [e for e in events if e.get("event") == "error.sent"]
    assert [(e["code"], e["user"]) for e in logged] == [("INVALID_MESSAGE", "alice")] * 2


def test_a_failing_binding_encoder_is_answered_with_server_error() -> None:
    h = Harness()
    session, binding = h.open("alice")
    calls = []

    def broken(request_id, data):  # type: ignore[no-untyped-def]
        calls.append(request_id)
        raise RuntimeError("boom")

    binding.frame_ack = broken  # type: ignore[method-assign]
    events, observer = captured_events()
    try:
        session.received("echo", "e1", {})
    finally:
        stop_capturing(observer)
    assert calls == ["e1"]
    assert binding.sent()[-1]["data"]["code"] == ErrorCode.SERVER_ERROR
    assert any(e.get("log_level") == LogLevel.critical for e in events)


# -- rate limit ---------------------------------------------------------------------------


def test_over_the_burst_requests_are_refused_then_flooding_closes_4008() -> None:
    h = Harness(rate_limit=1.0, rate_burst=3)
    session, binding = h.open("alice")
    for i in range(3):
        session.received("echo", f"e{i}", {})
    assert [f["type"] for f in binding.sent()[1:]] == ["ack"] * 3
    for i in range(3):
        session.received("echo", f"x{i}", {})
    refused = binding.sent()[4:]
    assert [f["data"]["code"] for f in refused] == ["RATE_LIMIT_EXCEEDED"] * 3
    assert refused[0]["id"] == "x0"
    assert binding.closes == []
    session.received("echo", "x3", {})
    assert binding.close_codes() == [CLOSE_POLICY]
    session.received("echo", "after", {})
    assert len(binding.sent()) == 7, "nothing is sent once the session is closing"


def test_rate_limited_malformed_frame_gets_an_uncorrelated_error() -> None:
    h = Harness(rate_limit=1.0, rate_burst=1)
    session, binding = h.open("alice")
    session.received("echo", "e1", {})
    session.malformed(ErrorCode.INVALID_MESSAGE, "bad", "r1", "echo")
    assert binding.sent()[-1] == {
        "type": "error",
        "data": {"code": "RATE_LIMIT_EXCEEDED", "message": "too many requests; slow down"},
    }


def test_a_flood_that_squeezes_a_request_through_now_and_then_is_still_closed() -> None:
    """Strikes start over only after a full second without a refusal; if
    they were reset whenever a request passed, this client would never be
    closed."""
    h = Harness(rate_limit=10.0, rate_burst=5)
    session, binding = h.open("alice")
    passed = 0
    for _ in range(200):
        if binding.closes:
            break
        h.clock.advance(0.1)  # one token per 0.1 s: every burst lets one through
        for i in range(3):
            before = len(binding.sent())
            session.received("echo", f"f{i}", {})
            if binding.sent()[before:] and binding.sent()[-1]["type"] == "ack":
                passed += 1
    assert passed > 0, "requests did squeeze through"
    assert binding.close_codes() == [CLOSE_POLICY]


def test_strikes_start_over_after_a_quiet_second() -> None:
    bucket = TokenBucket(rate=1.0, burst=1, now=0.0)
    assert bucket.take(0.0)
    assert not bucket.take(0.1) and not bucket.take(0.2)
    assert bucket.strikes == 2
    assert bucket.take(1.1), "a token came back"
    assert bucket.strikes == 2, "less than a second since the last refusal"
    assert bucket.take(3.0)
    assert bucket.strikes == 0


# -- slow consumers -------------------------------------------------------------------------


def test_fan_out_path_is_the_binding_writer_until_paused() -> None:
    h = Harness()
    session, binding = h.open("alice")
    assert session.send_frame == binding.fast.append, "no Python frame of ours per recipient"
    session.pauseProducing()
    assert session.send_frame != binding.fast.append
    session.send_frame(b"x" * 10)
    assert binding.queued == [b"x" * 10]
    session.resumeProducing()
    assert session.send_frame == binding.fast.append
    session.pauseProducing()
    session.stopProducing()
    assert session.send_frame == binding.fast.append


def test_paused_consumer_with_an_exposed_buffer_is_closed_past_the_limit() -> None:
    h = Harness(max_send_buffer=1000)
    session, binding = h.open("alice", buffered=0)
    session.pauseProducing()
    binding.buffered = 900
    session.send_frame(b"y" * 100)  # 900 + 100: not over
    assert binding.closes == [] and binding.queued == [b"y" * 100]
    binding.buffered = 950
    session.send_frame(b"z" * 100)
    assert binding.close_codes() == [CLOSE_SLOW_CONSUMER]
    assert binding.queued == [b"y" * 100], "the frame over the limit is not written"
    assert h.lifecycle.closed_sessions == [session], "it left the domain before the close"


def test_exposed_buffer_that_drains_while_paused_is_not_mistaken_for_a_stall() -> None:
    h = Harness(max_send_buffer=1000)
    session, binding = h.open("alice", buffered=0)
    session.pauseProducing()
    for _ in range(50):
        binding.buffered = 500  # the client reads steadily, a little behind
        session.send_frame(b"w" * 100)
    assert binding.closes == []


def test_hidden_buffer_counts_the_backlog_since_the_pause() -> None:
    h = Harness(max_send_buffer=1000)
    session, binding = h.open("alice", buffered=None)
    session.send_frame(b"f" * 5000)  # before the pause: not counted
    session.pauseProducing()
    for _ in range(10):
        session.send_frame(b"b" * 100)  # exactly 1000 since the pause
    assert binding.closes == []
    assert len(binding.queued) == 10
    session.send_frame(b"b")
    assert binding.close_codes() == [CLOSE_SLOW_CONSUMER]


def test_resume_resets_the_hidden_backlog_and_restores_the_fast_path() -> None:
    h = Harness(max_send_buffer=1000)
    session, binding = h.open("alice", buffered=None)
    session.pauseProducing()
    for _ in range(9):
        session.send_frame(b"b" * 100)
    session.resumeProducing()
    assert session.send_frame == binding.fast.append
    session.pauseProducing()
    for _ in range(9):
        session.send_frame(b"b" * 100)
    assert binding.closes == [], "the backlog starts over at each pause"
    session.pauseProducing()  # Twisted repeats it on every write while full
    session.send_frame(b"b" * 200)
    assert binding.close_codes() == [CLOSE_SLOW_CONSUMER]


def test_replies_take_the_same_path_as_fan_out() -> None:
    h = Harness(max_send_buffer=10)
    session, binding = h.open("alice", buffered=None)
    session.pauseProducing()
    session.received("echo", "e1", {"x": "y" * 100})
    assert binding.close_codes() == [CLOSE_SLOW_CONSUMER]


# -- closing ---------------------------------------------------------------------------------


def test_close_detaches_first_and_closed_logs_once() -> None:
    h = Harness()
    session, binding = h.open("alice")
    h.clock.advance(2.5)
    session.disconnect(4003, "bye")
    assert binding.closes == [(4003, "bye")]
    assert h.lifecycle.closed_sessions == [session]
    session.send_event("late", {})
    session.send_frame(b"late")
    assert len(binding.sent()) == 1
    events, observer = captured_events()
    try:
        session.closed(True, 4003, "bye")
        session.closed(True, 4003, "bye")
    finally:
        stop_capturing(observer)
    closes = [e for e in events if e.get("event") == "connection.close"]
    assert len(closes) == 1 and closes[0]["seconds"] == 2.5 and closes[0]["user"] == "alice"
    assert h.lifecycle.closed_sessions == [session]
    assert len(h.hub) == 0


def test_unauthenticated_session_closing_does_not_touch_the_domain() -> None:
    h = Harness()
    session, binding = h.open(None)
    session.closed(False, 1006, None)
    assert h.lifecycle.closed_sessions == []
    h.clock.advance(60)
    assert binding.closes == [], "the auth timer went with the session"


def test_shutdown_closes_every_session_1001_and_aborts_stragglers() -> None:
    h = Harness()
    quick, quick_binding = h.open("alice")
    slow, slow_binding = h.open("bob")
    done = h.hub.shutdown(5.0)
    assert quick_binding.close_codes() == [CLOSE_GOING_AWAY]
    assert slow_binding.close_codes() == [CLOSE_GOING_AWAY]
    fired: list[object] = []
    done.addCallback(fired.append)
    quick.closed(True, 1001, "server shutting down")
    assert not fired
    h.clock.advance(5.0)
    assert slow_binding.aborted and not quick_binding.aborted
    slow.closed(False, 1006, None)
    assert fired == [None]
    assert h.clock.getDelayedCalls() == []


def test_shutdown_with_nobody_connected_is_immediate() -> None:
    h = Harness()
    fired: list[object] = []
    h.hub.shutdown(5.0).addCallback(fired.append)
    assert fired == [None]


def test_switching_the_framer_tells_the_domain_once_authenticated() -> None:
    h = Harness()
    anonymous, _ = h.open(user=None)
    anonymous.switch_framer(len)  # any callable stands for another binding's framer
    assert anonymous.framer is len and h.lifecycle.switched == []  # not in the registry yet
    session, binding = h.open()
    new_writer: list[bytes] = []
    binding.fast_writer = lambda: new_writer.append  # type: ignore[method-assign]
    session.switch_framer(len)
    assert session.framer is len
    assert h.lifecycle.switched == [(session, binding.framer)]
    session.send_frame(b"x")  # the new transport's fast writer, asked for again
    assert new_writer == [b"x"]
    session.switch_framer(len)  # the same framer again: nothing moves
    assert len(h.lifecycle.switched) == 1


def test_a_bindings_quiet_requests_spend_no_rate_and_their_errors_are_not_the_clients() -> None:
    h = Harness(rate_limit=1.0, rate_burst=1)
    session, binding = h.open("alice")
    events, observer = captured_events()
    try:
        for i in range(5):
            session.received("echo", f"q{i}", {}, quiet=True)
        session.received("no-such-event", "q9", {}, quiet=True)
        session.received("echo", "client", {})
    finally:
        stop_capturing(observer)
    sent = binding.sent()[1:]
    assert [f["type"] for f in sent[:5]] == ["ack"] * 5
    assert sent[5]["type"] == "error" and sent[5]["id"] == "q9"
    # The client's own request still had its whole burst left.
    assert sent[6] == {"type": "ack", "id": "client", "data": {"echo": {}}}
    assert h.errors("UNKNOWN_EVENT") == 0
    assert not [e for e in events if e.get("event") == "error.sent"]
    # A client's error is counted as ever.
    h.clock.advance(1)
    session.received("no-such-event", "c2", {})
    assert binding.sent()[-1]["data"]["code"] == "UNKNOWN_EVENT"
    assert h.errors("UNKNOWN_EVENT") == 1
