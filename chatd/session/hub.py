"""What every session of a server shares, and the server's open sessions."""

from __future__ import annotations

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IReactorTime

from chatd.auth import TokenVerifier
from chatd.config import Config
from chatd.metrics import Metrics
from chatd.protocol.dispatch import Dispatcher
from chatd.session.lifecycle import Sessions
from chatd.session.session import CLOSE_GOING_AWAY, Binding, Session


class SessionHub:
    """The settings, services and bookkeeping the sessions of one server
    share, whatever their binding: one hub can serve every binding, so the
    connection count and the shutdown drain cover them all.

    ``open`` holds every session whose transport opened and has not closed
    yet (authenticated or not); ``len(hub)`` counts them.  The composition
    root may hand the table in (``open_sessions``), so that what is built
    before the hub (the cluster's heartbeat) can count the connections."""

    def __init__(
        self,
        config: Config,
        clock: IReactorTime,
        verifier: TokenVerifier,
        lifecycle: Sessions,
        dispatcher: Dispatcher,
        metrics: Metrics | None = None,
        open_sessions: dict[Session, None] | None = None,
    ) -> None:
        self.clock = clock
        self.verifier = verifier
        self.lifecycle = lifecycle
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.rate_limit = config.rate_limit
        self.rate_burst = config.rate_burst
        self.auth_timeout = config.auth_timeout
        self.max_send_buffer = config.max_send_buffer
        self.open: dict[Session, None] = open_sessions if open_sessions is not None else {}
        self._closed_waiters: dict[Session, Deferred[None]] = {}

    def __len__(self) -> int:
        return len(self.open)

    def session(self, binding: Binding, peer: str | None) -> Session:
        """A new session for a binding whose transport just opened (the
        binding then calls its ``open``)."""
        return Session(self, binding, peer)

    def forget(self, session: Session) -> bool:
        """The session's transport closed; whether it had been open."""
        return self.open.pop(session, 0) is None

    def closing_done(self, session: Session) -> None:
        waiter = self._closed_waiters.pop(session, None)
        if waiter is not None:
            waiter.callback(None)

    def shutdown(self, timeout: float) -> Deferred[None]:
        """Close every session with 1001 and wait (at most ``timeout``) for
        the closing handshakes; then drop whichever is still there."""
        waiting: list[Deferred[None]] = []
        for session in list(self.open):
            d: Deferred[None] = Deferred()
            self._closed_waiters[session] = d
            waiting.append(d)
            session.close(CLOSE_GOING_AWAY, "server shutting down")
        if not waiting:
            return succeed(None)
        all_closed = DeferredList(waiting)
        timer = self.clock.callLater(timeout, self._abort_remaining)
        all_closed.addBoth(lambda _: timer.cancel() if timer.active() else None)
        return all_closed.addCallback(lambda _: None)

    def _abort_remaining(self) -> None:
        for session in list(self.open):
            session.abort()
