"""Fakes for the session-layer unit tests: a binding that records what its
session writes, a lifecycle that records opens and closes, and a hub on a
``Clock``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.task import Clock

from chatd.auth import TokenVerifier, mint_token
from chatd.config import Config
from chatd.domain.models import Published
from chatd.domain.turn import EndOfTurn
from chatd.metrics import Metrics
from chatd.protocol.dispatch import Dispatcher, Route
from chatd.protocol.envelope import encode_ack, encode_error, encode_push, wrap_push
from chatd.session.hub import SessionHub
from chatd.session.session import Session

SECRET = "unit-test-secret-unit-test-secret"


def config(**overrides: Any) -> Config:
    values: dict[str, Any] = {
        "jwt_secret": SECRET,
        "rate_limit": 10.0,
        "rate_burst": 5,
        "auth_timeout": 10.0,
        "max_send_buffer": 1000,
    }
    values.update(overrides)
    return Config(**values)


def token(user: str, cfg: Config | None = None) -> str:
    return mint_token(cfg or config(), user, ttl=3600)


def wrap_event(event: Published) -> bytes:
    """Fan-out frames as the native envelope, unframed."""
    return wrap_push(event.type, event.data)


class RecordingBinding:
    """A binding whose frames are the native envelopes unframed, so tests
    read them as JSON.  ``buffered`` is what ``buffered_bytes`` answers
    (``None``: a transport that hides its write buffer)."""

    corks = True  # one stream: replies may wait for the end of the turn

    def __init__(self, buffered: int | None = 0) -> None:
        self.framer = wrap_event
        self.fast: list[bytes] = []
        self.queued: list[bytes] = []
        self.buffered = buffered
        self.closes: list[tuple[int, str]] = []
        self.aborted = False

    def frame_ack(self, request_id: str, data: Any) -> bytes:
        return encode_ack(request_id, data)

    def frame_push(self, event_type: str, data: Any) -> bytes:
        return encode_push(event_type, data)

    def frame_error(
        self, code: str, message: str, request_id: str | None, event: str | None
    ) -> bytes:
        return encode_error(code, message, request_id, event)

    def fast_writer(self) -> Any:
        return self.fast.append

    def write_queued(self, data: bytes) -> None:
        self.queued.append(data)

    def buffered_bytes(self) -> int | None:
        return self.buffered

    def close_transport(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))

    def abort_transport(self) -> None:
        self.aborted = True

    def sent(self) -> list[dict[str, Any]]:
        """Everything written, both paths, decoded (in write order per path:
        the fast path first)."""
        return [json.loads(b) for b in self.fast + self.queued]

    def close_codes(self) -> list[int]:
        return [code for code, _ in self.closes]


@dataclass
class RecordingLifecycle:
    opened_sessions: list[Any] = field(default_factory=list)
    closed_sessions: list[Any] = field(default_factory=list)
    switched: list[tuple[Any, Any]] = field(default_factory=list)

    def opened(self, conn: Any) -> None:
        self.opened_sessions.append(conn)

    def closed(self, conn: Any) -> None:
        self.closed_sessions.append(conn)

    def framer_switched(self, conn: Any, previous: Any) -> None:
        self.switched.append((conn, previous))


class Harness:
    """A hub on a ``Clock`` with echo routes, and helpers to open sessions."""

    def __init__(
        self, routes: dict[str, Route] | None = None, turn: bool = False, **overrides: Any
    ) -> None:
        """``turn``: replies wait for the end of the turn (``EndOfTurn``,
        as in the server) instead of being written at once."""
        self.config = config(**overrides)
        self.clock = Clock()
        self.clock.advance(1000)
        self.turn = EndOfTurn(self.clock) if turn else None
        self.lifecycle = RecordingLifecycle()
        self.metrics = Metrics()
        self.dispatcher = Dispatcher(routes if routes is not None else echo_routes(), self.metrics)
        self.hub = SessionHub(
            self.config,
            self.clock,
            TokenVerifier.from_config(self.config),
            self.lifecycle,  # type: ignore[arg-type]
            self.dispatcher,
            self.metrics,
            turn=self.turn,
        )

    def open(
        self, user: str | None = "alice", buffered: int | None = 0
    ) -> tuple[Session, RecordingBinding]:
        binding = RecordingBinding(buffered)
        session = self.hub.session(binding, "tcp4:127.0.0.1:1")
        session.open(token(user, self.config) if user is not None else None)
        return session, binding

    def errors(self, code: str) -> float:
        value = self.metrics.registry.get_sample_value("chatd_errors_total", {"code": code})
        return value or 0.0


def echo_routes() -> dict[str, Route]:
    return {
        "ping": Route(lambda data: data, lambda c, r: {"pong": True}, "pong"),
        "echo": Route(lambda data: data, lambda c, r: {"echo": r}, "echoed"),
    }
