"""What every session of a server shares, and the server's open sessions."""

from __future__ import annotations

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IReactorTime

from chatd.addresses import AddressCounts
from chatd.auth import TokenVerifier
from chatd.config import Config
from chatd.domain.interfaces import SpendLedger
from chatd.domain.turn import EndOfTurn
from chatd.metrics import Metrics
from chatd.protocol.dispatch import Dispatcher
from chatd.session.lifecycle import Sessions
from chatd.session.rate import SharedSpending, TokenBucket, UserBuckets
from chatd.session.session import (
    ADDRESS_FULL,
    CLOSE_GOING_AWAY,
    PROCESS_FULL,
    Binding,
    Refusal,
    Session,
)


def peer_address(peer: str | None) -> str | None:
    """The client's IP address in a peer descriptor (``tcp4:1.2.3.4:5678``
    from Autobahn, ``tcp:1.2.3.4:5678`` from Socket.IO's requests; None
    for a Unix socket or anything else without one)."""
    if peer is None:
        return None
    kind, _, rest = peer.partition(":")
    if kind not in ("tcp", "tcp4", "tcp6") or not rest:
        return None
    host, _, port = rest.rpartition(":")
    return host if host and port.isdigit() else None


class SessionHub:
    """The settings, services and bookkeeping the sessions of one server
    share, whatever their binding: one hub can serve every binding, so the
    connection count, the connection limits, the per-user request budget
    and the shutdown drain cover them all.

    ``open`` holds every session whose transport opened and was admitted
    and has not closed yet (authenticated or not); ``len(hub)`` counts
    them.  The composition root may hand the table in (``open_sessions``),
    so that what is built before the hub (the cluster's heartbeat) can
    count the connections.

    Limits on connections, all per process: ``max_connections`` sessions
    in all and ``max_connections_per_ip`` per client address (both checked
    when the transport opens: ``admit``), and ``max_connections_per_user``
    authenticated sessions per user (checked when the session
    authenticates: ``join_user``)."""

    def __init__(
        self,
        config: Config,
        clock: IReactorTime,
        verifier: TokenVerifier,
        lifecycle: Sessions,
        dispatcher: Dispatcher,
        metrics: Metrics | None = None,
        open_sessions: dict[Session, None] | None = None,
        turn: EndOfTurn | None = None,
    ) -> None:
        """``turn``: where replies wait for the turn's fan-out (the
        registry's); without it every reply is written at once."""
        self.clock = clock
        self.turn = turn
        self.verifier = verifier
        self.lifecycle = lifecycle
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.rate_limit = config.rate_limit
        self.rate_burst = config.rate_burst
        self.auth_timeout = config.auth_timeout
        self.max_send_buffer = config.max_send_buffer
        self.max_connections = config.max_connections
        self.max_connections_per_user = config.max_connections_per_user
        self.max_members_per_request = config.max_members_per_request
        self.user_buckets = UserBuckets(config.user_rate_limit, config.user_rate_burst, clock)
        #: With several processes (Redis), what users spend here is shared
        #: (the composition root sets it: ``share_budgets``).
        self.shared_spending: SharedSpending | None = None
        self.per_address = AddressCounts(config.max_connections_per_ip, config.ip_limit_exempt)
        self.open: dict[Session, None] = open_sessions if open_sessions is not None else {}
        self._address_of: dict[Session, str] = {}
        self._closed_waiters: dict[Session, Deferred[None]] = {}

    def __len__(self) -> int:
        return len(self.open)

    def session(self, binding: Binding, peer: str | None) -> Session:
        """A new session for a binding whose transport just opened (the
        binding then calls its ``open``)."""
        return Session(self, binding, peer)

    # -- connection limits ------------------------------------------------------------

    def admit(self, session: Session, peer: str | None) -> Refusal | None:
        """A session's transport opened: count it in, or say why not (the
        process or the client's address is at its limit)."""
        if len(self.open) >= self.max_connections:
            return PROCESS_FULL
        address = self.per_address.key(peer_address(peer))
        if address is not None:
            if not self.per_address.acquire(address):
                return ADDRESS_FULL
            self._address_of[session] = address
        self.open[session] = None
        return None

    def share_budgets(self, ledger: SpendLedger) -> SharedSpending:
        """Users' request budgets count what they spend on every process
        that shares ``ledger`` (start and stop the result with the
        server)."""
        self.shared_spending = SharedSpending(self.user_buckets, ledger, self.clock)
        return self.shared_spending

    def join_user(self, user_id: str) -> TokenBucket | None:
        """A session authenticated as ``user_id``: the request bucket it
        shares with the user's other sessions, or None when the user holds
        ``max_connections_per_user`` sessions already."""
        buckets = self.user_buckets
        if buckets.holders(user_id) >= self.max_connections_per_user:
            return None
        return buckets.join(user_id)

    def leave_user(self, user_id: str) -> None:
        """A session that ``join_user`` let in left the domain."""
        self.user_buckets.leave(user_id)

    def forget(self, session: Session) -> bool:
        """The session's transport closed; whether it had been admitted."""
        address = self._address_of.pop(session, None)
        if address is not None:
            self.per_address.release(address)
        return self.open.pop(session, 0) is None

    # -- shutdown -----------------------------------------------------------------------

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
