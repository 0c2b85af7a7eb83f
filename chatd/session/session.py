"""One client session, whatever wire binding carries it.

A ``Session`` is the domain's ``Connection`` and the dispatcher's
``Responder``: the registry hands it prepared frames through
``send_frame``, the domain sends it events, the dispatcher answers through
it.  Its binding only translates frames to ``(type, id, data)`` and back
and supplies the transport (``Binding``); everything else lives here, so a
fix lands once for every binding:

* authentication: a token offered with the upgrade, or a first ``auth``
  frame within ``auth_timeout`` (else close 4001); a later ``auth`` is a
  token refresh and may not change the user;
* the request rate limits: the session's own ``TokenBucket`` (frames),
  and close 4008 for a client that keeps flooding; and its user's bucket
  (request cost, ``rate.request_cost``), shared with the user's other
  sessions in this process;
* the connection limits: per process and per client address when the
  transport opens (close 1013 / 4013), per user when it authenticates
  (close 4013);
* the outgoing path: while the transport keeps up ``send_frame`` IS the
  binding's fast writer (no Python frame of ours per recipient); while the
  transport is paused (the session is its streaming producer), a checked
  write that closes a slow consumer with 4029 once it is more than
  ``max_send_buffer`` bytes behind; once closing, a sink.  Replies and the
  session's own events count against the same bound even while the
  transport keeps up, and a session more than half-way to it stops reading
  its client's frames until the buffer has drained;
* the open/close log lines, and the count and log line of every error sent.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from chatd.attribution import owned_by
from chatd.auth import AuthError
from chatd.domain.interfaces import Framer
from chatd.domain.models import Identity
from chatd.domain.turn import EndOfTurn
from chatd.errors import ChatError, ErrorCode
from chatd.protocol.requests import Auth
from chatd.session.rate import TokenBucket, request_cost

if TYPE_CHECKING:
    from chatd.session.hub import SessionHub

# The connection events (connection.open/close, auth.*, error.sent, ...)
# keep the namespace they were logged under before the session layer
# existed: log pipelines and docs/operations.md select on it.  Rename it
# together with those, not by accident.
log = Logger(namespace="chatd.protocol.websocket")

CLOSE_GOING_AWAY = 1001
CLOSE_UNAUTHENTICATED = 4001
CLOSE_BY_ADMIN = 4003
CLOSE_POLICY = 4008
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_TOO_MANY_CONNECTIONS = 4013


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a connection is not accepted: its close code and reason."""

    code: int
    reason: str


PROCESS_FULL = Refusal(CLOSE_TRY_AGAIN_LATER, "server at its connection limit; try again later")
ADDRESS_FULL = Refusal(CLOSE_TOO_MANY_CONNECTIONS, "too many connections from this address")
USER_FULL = Refusal(CLOSE_TOO_MANY_CONNECTIONS, "too many connections for this user")
CLOSE_SLOW_CONSUMER = 4029

Write = Callable[[bytes], None]


class Binding(Protocol):
    """What a wire binding supplies to its session: encoders for its frame
    format and its transport.  Every ``frame_*`` returns bytes ready for
    the transport; ``framer`` frames fan-out events (once per event for
    every connection of the binding)."""

    @property
    def framer(self) -> Framer:
        """The binding's fan-out framer (read when the session is made)."""

    @property
    def transport_name(self) -> str:
        """What carries the session, for the metrics (``ws``,
        ``socketio-polling``, ``socketio-websocket``, …)."""

    @property
    def corks(self) -> bool:
        """Whether replies may wait for the end of the turn to leave with
        the turn's fan-out in one write: the session's writes go to one
        stream that keeps their order (not a polling queue that a Socket.IO
        upgrade hands over)."""

    def frame_ack(self, request_id: str, data: Any) -> bytes:
        """The reply to a request that carried an id."""

    def frame_push(self, event_type: str, data: Any) -> bytes:
        """An event (or a confirmation of a request without id)."""

    def frame_error(
        self, code: str, message: str, request_id: str | None, event: str | None
    ) -> bytes:
        """An error, correlated by request id or else by event type."""

    def fast_writer(self) -> Write:
        """The write for this session's outgoing frames while the transport
        keeps up (called once, when the session opens)."""

    def write_queued(self, data: bytes) -> None:
        """The transport's own (buffering) write."""

    def buffered_bytes(self) -> int | None:
        """Bytes written but not yet taken by the kernel, or ``None`` when
        the transport hides its write buffer."""

    def close_transport(self, code: int, reason: str) -> None:
        """Start the binding's closing handshake with ``code``."""

    def abort_transport(self) -> None:
        """Drop the connection now."""


def _discard(data: bytes) -> None:
    """Where frames go once a session is closing."""


@implementer(IPushProducer)
class Session:
    """One client session; see the module docstring.

    The binding creates it when its transport is open, registers it as the
    transport's streaming producer, calls ``open``, then hands it each
    request (``received``) or unreadable frame (``malformed``), and calls
    ``closed`` when the transport is gone."""

    # One per connection: slots keep an idle connection's memory down.
    __slots__ = (
        "connection_id",
        "identity",
        "send_frame",
        "framer",
        "_hub",
        "_binding",
        "_peer",
        "_opened_at",
        "_bucket",
        "_user_bucket",
        "_fast_send",
        "_backlog",
        "_reading_paused",
        "_cork",
        "_auth_timer",
        "_detached",
        "_open_logged",
        "_quiet",
        "__weakref__",
    )

    def __init__(self, hub: SessionHub, binding: Binding, peer: str | None) -> None:
        self.connection_id = "c_" + secrets.token_hex(8)
        self.identity: Identity | None = None
        # The fan-out path: the registry calls this for every event.
        self.send_frame: Write = _discard
        self.framer: Framer = binding.framer
        self._hub = hub
        self._binding = binding
        self._peer = peer
        self._opened_at = hub.clock.seconds()
        self._bucket = TokenBucket(hub.rate_limit, hub.rate_burst, self._opened_at)
        #: The user's bucket, shared with their other sessions (once
        #: authenticated and admitted by the per-user connection limit).
        self._user_bucket: TokenBucket | None = None
        self._fast_send: Write = _discard
        self._backlog: int | None = None
        self._reading_paused = False
        # Replies held back until the turn ends (``_hold``), or None.
        self._cork: list[bytes] | None = None
        self._auth_timer: IDelayedCall | None = None
        self._detached = False
        self._open_logged = True
        #: Ids of requests a binding made of its own accord (``quiet``).
        self._quiet: set[str] | None = None

    # -- opening and authentication -------------------------------------------

    def open(self, offered_token: str | None) -> None:
        """The transport is open; ``offered_token`` came with the upgrade
        (``None``: the client must send an ``auth`` frame in time)."""
        self._fast_send = self.send_frame = self._binding.fast_writer()
        refusal = self._hub.admit(self, self._peer)
        if refusal is not None:
            self._refuse_connection(refusal, None, None)
            return
        if offered_token is not None:
            # One log line for the open, with the user when the token in the
            # URL or header is good (the common case: open + auth in one).
            self._open_logged = False
            self._authenticate(offered_token, None)
        else:
            self._log_open(None)
            self._auth_timer = self._hub.clock.callLater(
                self._hub.auth_timeout, self._auth_timed_out
            )

    def _log_open(self, user: str | None) -> None:
        """Logged when the connection opens (``user`` None: not yet
        authenticated, said in words; the event's ``user`` field stays
        None for JSON logs) or, with a first-frame token, as it
        authenticates."""
        self._open_logged = True
        log.info(
            "connection {connection} opened from {peer} as {user}"
            if user is not None
            else "connection {connection} opened from {peer}, not authenticated yet",
            event="connection.open",
            connection=self.connection_id,
            peer=self._peer,
            user=user,
        )

    def _auth_timed_out(self) -> None:
        self._auth_timer = None
        if self.identity is None:
            log.info(
                "connection {connection} did not authenticate in time",
                event="auth.failed",
                connection=self.connection_id,
                reason="timeout",
            )
            self.close(CLOSE_UNAUTHENTICATED, "authentication timeout")

    def _on_auth(self, request_id: str | None, data: Any) -> None:
        try:
            request = Auth.parse(data)
        except ChatError as e:
            self._error(e.code, e.message, request_id, "auth")
            if self.identity is None:
                self.close(CLOSE_UNAUTHENTICATED, "authentication failed")
            return
        self._authenticate(request.token, request_id, request.name)

    def _authenticate(self, token: Any, request_id: str | None, name: str | None = None) -> None:
        try:
            identity = self._hub.verifier.verify(token)
        except AuthError as e:
            self._refused(str(e), request_id)
            return
        if identity.name is None and name is not None:
            # The token names nobody: the name the client offers is shown
            # (the token still decides who the user is).
            identity = replace(identity, name=name)
        current = self.identity
        if current is not None and identity.user_id != current.user_id:
            self._error(
                ErrorCode.FORBIDDEN,
                "connection is already authenticated as another user",
                request_id,
                "auth",
            )
            return
        if current is None:
            bucket = self._hub.join_user(identity.user_id)
            if bucket is None:
                self._refuse_connection(USER_FULL, request_id, identity.user_id)
                return
            self._user_bucket = bucket
        self.identity = identity
        data = {"userId": identity.user_id, "connectionId": self.connection_id}
        if identity.name is not None:
            data["name"] = identity.name
        self.send_event("authenticated", data)
        if request_id is not None:
            self._send_own(self._binding.frame_ack(request_id, data))
        if current is None:
            self._authenticated_first(identity.user_id)

    def _refuse_connection(
        self, refusal: Refusal, request_id: str | None, user: str | None
    ) -> None:
        """Over a connection limit (``user`` None: the process's or the
        address's, at open; else the user's, at authentication): say why
        with RATE_LIMIT_EXCEEDED (a Socket.IO client gets it as its
        CONNECT_ERROR) and close with the limit's code.  Nothing else is
        touched: the user's other sessions go on."""
        if not self._open_logged:
            self._log_open(None)
        log.info(
            "refusing connection {connection} from {peer} ({user}): {reason}",
            event="connection.refused",
            connection=self.connection_id,
            peer=self._peer,
            user=user,
            code=refusal.code,
            reason=refusal.reason,
        )
        self._error(
            ErrorCode.RATE_LIMIT_EXCEEDED,
            refusal.reason,
            request_id,
            "auth" if user is not None else None,
        )
        self.close(refusal.code, refusal.reason)

    def _refused(self, reason: str, request_id: str | None) -> None:
        """A token that did not verify.  An authenticated session whose
        token refresh failed keeps the identity it proved; the bad frame
        alone closes nothing."""
        if not self._open_logged:
            self._log_open(None)
        log.info(
            "authentication failed on {connection}: {reason}",
            event="auth.failed",
            connection=self.connection_id,
            user=self.identity.user_id if self.identity else None,
            reason=reason,
        )
        self._error(ErrorCode.UNAUTHORIZED, f"authentication failed: {reason}", request_id, "auth")
        if self.identity is None:
            self.close(CLOSE_UNAUTHENTICATED, "authentication failed")

    def _authenticated_first(self, user_id: str) -> None:
        if self._auth_timer is not None and self._auth_timer.active():
            self._auth_timer.cancel()
        self._auth_timer = None
        if not self._open_logged:
            self._log_open(user_id)
        else:
            log.info(
                "connection {connection} authenticated as {user}",
                event="auth.ok",
                connection=self.connection_id,
                user=user_id,
            )
        self._hub.lifecycle.opened(self)

    # -- requests ---------------------------------------------------------------

    @property
    def clock(self) -> Any:
        """The reactor's time (``callLater``), for bindings that must act
        in a later turn."""
        return self._hub.clock

    def received(
        self, event_type: str, request_id: str | None, data: Any, quiet: bool = False
    ) -> None:
        """A request from the client.  Nothing may escape into the binding
        (which would drop the connection): anything unexpected is logged
        and answered with SERVER_ERROR."""
        if self._detached:
            return
        try:
            if quiet and request_id is not None and event_type != "auth":
                # A binding's own request (seed 000 joining a friend's
                # conversation): not the client's rate, nor its error.
                if self._quiet is None:
                    self._quiet = set()
                self._quiet.add(request_id)
                self._hub.dispatcher.dispatch(self, event_type, request_id, data)
            elif not self._bucket.take(self._hub.clock.seconds()):
                self._rate_limited(request_id, event_type)
            elif self._user_bucket is not None and not self._user_spends(event_type, data):
                self._user_limited(request_id, event_type, data)
            elif event_type == "auth":
                self._on_auth(request_id, data)
            elif self.identity is not None:
                # The storage work of the request is this user's turn at
                # the database (chatd.storage.fair).
                with owned_by(self.identity.user_id):
                    self._hub.dispatcher.dispatch(self, event_type, request_id, data)
            else:
                self._hub.dispatcher.dispatch(self, event_type, request_id, data)
        except Exception:
            self.failed()

    def malformed(
        self, code: str, message: str, request_id: str | None = None, event: str | None = None
    ) -> None:
        """A frame the binding could not read as a request; ``request_id``
        and ``event`` are whatever could be read of it.  Counts against the
        rate limit like any request (and costs its user 1)."""
        if self._detached:
            return
        try:
            if not self._bucket.take(self._hub.clock.seconds()):
                self._rate_limited(None, None)
            elif self._user_bucket is not None and not self._user_spends("", None):
                self._user_limited(None, None, None)
            else:
                self._error(code, message, request_id, event)
        except Exception:
            self.failed()

    def failed(self) -> None:
        """Called inside an ``except`` block: handling a frame failed."""
        log.failure(
            "unexpected failure handling a frame on {connection}", connection=self.connection_id
        )
        self._error(ErrorCode.SERVER_ERROR, "internal error; the request was not completed")

    def _rate_limited(self, request_id: str | None, event_type: str | None) -> None:
        if self._bucket.strikes > self._hub.rate_burst:
            log.info(
                "closing flooding connection {connection} ({user})",
                event="connection.flooding",
                connection=self.connection_id,
                user=self.identity.user_id if self.identity else None,
            )
            self.close(CLOSE_POLICY, "flooding")
            return
        self._error(
            ErrorCode.RATE_LIMIT_EXCEEDED, "too many requests; slow down", request_id, event_type
        )

    def _user_spends(self, event_type: str, data: Any) -> bool:
        """Charge the request's cost to the user's bucket, if it holds that
        much (the bucket all of the user's sessions here share)."""
        bucket = self._user_bucket
        assert bucket is not None
        cost = request_cost(event_type, data, self._hub.max_members_per_request)
        if not bucket.take(self._hub.clock.seconds(), cost):
            return False
        shared = self._hub.shared_spending
        if shared is not None and self.identity is not None:
            shared.spent(self.identity.user_id, cost)
        return True

    def _user_limited(self, request_id: str | None, event_type: str | None, data: Any) -> None:
        """The user's bucket is short of the request's cost: refused, not
        queued, so the user's excess cannot wait in line for storage ahead
        of other users' requests.  Unlike the connection's own limit this
        never closes the connection (the client may be one tab of many,
        flooded by another)."""
        bucket = self._user_bucket
        assert bucket is not None
        cost = request_cost(event_type or "", data, self._hub.max_members_per_request)
        wait = bucket.wait(self._hub.clock.seconds(), cost)
        self._error(
            ErrorCode.RATE_LIMIT_EXCEEDED,
            f"too many requests from this user across its connections; retry in {max(wait, 0.1):.1f} s",
            request_id,
            event_type,
        )

    # -- Responder (what the dispatcher answers through) -------------------------

    def reply(self, request_id: str | None, confirmation: str | None, data: Any) -> None:
        if request_id is not None:
            if self._quiet:
                self._quiet.discard(request_id)
            self._send_own(self._binding.frame_ack(request_id, data))
        elif confirmation is not None:
            self._send_own(self._binding.frame_push(confirmation, data))

    def reply_error(
        self, request_id: str | None, event: str | None, code: str, message: str
    ) -> None:
        self._error(code, message, request_id, event or None)

    def _error(
        self, code: str, message: str, request_id: str | None = None, event: str | None = None
    ) -> None:
        quiet = self._quiet
        if quiet and request_id in quiet:
            quiet.discard(request_id)  # the binding's own request: expected to fail at times
        else:
            self.note_error(code, event)
        self._send_own(self._binding.frame_error(code, message, request_id, event))

    def note_error(self, code: str, request: str | None) -> None:
        """Count and log an error sent to this session (the code and the
        request's event type; never the request's content)."""
        metrics = self._hub.metrics
        if metrics is not None:
            metrics.error(code)
        log.info(
            "sent {code} to {connection} ({user}) for {request}",
            event="error.sent",
            code=str(code),
            request=request,
            connection=self.connection_id,
            user=self.identity.user_id if self.identity else None,
        )

    # -- Connection (what the domain sends through) -------------------------------

    def send_event(self, event_type: str, data: dict[str, Any]) -> None:
        self._send_own(self._binding.frame_push(event_type, data))

    def _send_own(self, frame: bytes) -> None:
        """A reply or an event for this session only: handed to the same
        write as fan-out, so an ack goes out at once instead of queueing
        behind the turn's fan-out to everyone else.

        Unlike a push it is checked against ``max_send_buffer`` even while
        the transport keeps up: the transport pauses its producer only
        after a write, so one large reply would otherwise land in the
        buffer whole whatever the bound (a client that sends requests and
        never reads their answers).  While paused, ``send_frame`` is the
        checked write and counts it like any frame."""
        if not frame or self._detached:
            return
        if self._backlog is None and self._reply_overflows(len(frame)):
            self._overflowed()
        elif self._cork is not None:
            self._cork.append(frame)
        elif (turn := self._hub.turn) is not None and self._binding.corks:
            self._hold(frame, turn)
        else:
            self.send_frame(frame)

    def _hold(self, frame: bytes, turn: EndOfTurn) -> None:
        """Hold the reply until the turn ends (``chatd.domain.turn``): the
        turn's fan-out for this session joins it there (``send_frame``
        appends while held), and all of it leaves in one write, replies
        first, as if each had been written at once."""
        self._cork = cork = [frame]
        self.send_frame = cork.append
        turn.cork(self._release)

    def _release(self) -> None:
        cork, self._cork = self._cork, None
        if cork is None or self._detached:
            return  # dropped: closed meanwhile (a close releases first)
        self._route()
        self.send_frame(cork[0] if len(cork) == 1 else b"".join(cork))

    def _route(self) -> None:
        """Point ``send_frame`` where this session's bytes go now: held,
        the checked write while the transport is behind, else the fast one."""
        if self._detached:
            self.send_frame = _discard
        elif self._cork is not None:
            self.send_frame = self._cork.append
        elif self._backlog is not None:
            self.send_frame = self._send_checked
        else:
            self.send_frame = self._fast_send

    def _reply_overflows(self, size: int) -> bool:
        """Would ``size`` more bytes put the buffer past ``max_send_buffer``?
        A transport that hides its buffer has little in it while it keeps
        up (it pauses its producer past its own high-water mark): count the
        frame alone.  Replies held for this turn count too."""
        buffered = self._binding.buffered_bytes() or 0
        if self._cork is not None:
            buffered += sum(len(held) for held in self._cork)
        return buffered + size > self._hub.max_send_buffer

    def disconnect(self, code: int, reason: str) -> None:
        self.close(code, reason)

    @property
    def transport_name(self) -> str:
        return self._binding.transport_name

    def switch_framer(self, framer: Framer) -> None:
        """The binding's transport changed (a Socket.IO upgrade from polling
        to WebSocket): fan-out frames for this session the new way, and
        goes through the new transport's fast writer (asked for again)."""
        previous, self.framer = self.framer, framer
        if self._detached:
            return
        self._release()  # held replies go the old way, before the switch
        self._fast_send = self._binding.fast_writer()
        self._route()
        if self.identity is not None and previous is not framer:
            self._hub.lifecycle.framer_switched(self, previous)

    @property
    def transport(self) -> Any:
        """The binding's Twisted transport, for diagnostics (the in-process
        back-pressure test reads its buffer); the session never uses it."""
        return getattr(self._binding, "transport", None)

    # -- slow consumers (IPushProducer: the transport's buffer signals) ------------

    def pauseProducing(self) -> None:
        """The transport's buffer is over its high-water mark (Twisted says
        so on every write while it stays full)."""
        if self._backlog is None and not self._detached:
            self._backlog = 0
            self._route()

    def resumeProducing(self) -> None:
        """The buffer drained: back to the fast path, and to reading the
        client's frames (a closing session too, so that the client's close
        frame can be read)."""
        if self._reading_paused:
            self._reading_paused = False
            resume = getattr(self._binding, "resume_reading", None)
            if resume is not None:
                resume()
        if self._backlog is not None and not self._detached:
            self._backlog = None
            self._route()

    def stopProducing(self) -> None:
        """The transport is gone: nothing to resume reading from."""
        self._reading_paused = False
        self.resumeProducing()

    def _send_checked(self, frame: bytes) -> None:
        if self._behind(len(frame)):
            self._overflowed()
        else:
            self._binding.write_queued(frame)

    def _behind(self, adding: int) -> bool:
        """Only asked while the transport is paused: is this session more
        than ``max_send_buffer`` bytes behind?  A transport that exposes its
        buffer answers exactly, so a client that reads steadily but stays a
        little behind is not mistaken for a stalled one; for others count
        what was queued since the pause.  Past half the bound the client's
        frames are no longer read (``_pause_reading``)."""
        limit = self._hub.max_send_buffer
        buffered = self._binding.buffered_bytes()
        if buffered is None:
            self._backlog = waiting = (self._backlog or 0) + adding
        else:
            waiting = buffered + adding
        if waiting > limit:
            return True
        if waiting > limit // 2 and not self._reading_paused:
            self._pause_reading()
        return False

    def _pause_reading(self) -> None:
        """A client this far behind has most likely stopped reading: stop
        reading its requests too, so that it cannot make the server do more
        work (storage reads, replies) than it takes the results of.  TCP
        then pushes back on the client.  Reading resumes when the transport
        has drained (``resumeProducing``).  Bindings that cannot pause
        their reading (no ``pause_reading``) go on as before."""
        pause = getattr(self._binding, "pause_reading", None)
        if pause is not None:
            self._reading_paused = True
            pause()

    def _overflowed(self) -> None:
        log.warn(
            "closing slow consumer {connection} ({user}): more than {limit} bytes waiting",
            event="connection.slow",
            connection=self.connection_id,
            user=self.identity.user_id if self.identity else None,
            limit=self._hub.max_send_buffer,
        )
        self._cork = None  # what was held for it would overflow it too
        self.close(CLOSE_SLOW_CONSUMER, "slow consumer: send buffer overflowed")

    # -- closing --------------------------------------------------------------------

    def close(self, code: int, reason: str) -> None:
        """Close with a code of PROTOCOL.md section 3 (1001 included).  The
        session leaves the registry first: no event may follow the close;
        what was answered before it (held replies) goes out first."""
        self._release()
        self.detach()
        self._binding.close_transport(code, reason)

    def abort(self) -> None:
        self._binding.abort_transport()

    def detach(self) -> None:
        """Stop sending and leave the domain (idempotent).  The binding
        calls it too when a closing handshake starts on its side."""
        if self._detached:
            return
        self._release()  # answered before the close frame: it goes first
        self._detached = True
        self.send_frame = _discard
        if self._auth_timer is not None and self._auth_timer.active():
            self._auth_timer.cancel()
        self._auth_timer = None
        if self.identity is not None:
            self._hub.lifecycle.closed(self)
        if self._user_bucket is not None:
            assert self.identity is not None
            self._hub.leave_user(self.identity.user_id)

    def closed(self, clean: bool, code: int | None, reason: str | None) -> None:
        """The transport is gone."""
        self._cork = None  # nowhere to write it
        self.detach()
        if self._hub.forget(self):
            log.info(
                "connection {connection} ({user}) closed with {code} {reason}",
                event="connection.close",
                connection=self.connection_id,
                user=self.identity.user_id if self.identity else None,
                code=code,
                reason=reason or "",
                clean=clean,
                seconds=round(self._hub.clock.seconds() - self._opened_at, 3),
            )
        self._hub.closing_done(self)
