"""The HTTP long-polling transport of one Engine.IO session.

Writes go to a queue of records (each ending with ``\\x1e``); a GET takes
the whole queue as one response, at once when something is queued, else
when the first write arrives (at the end of that reactor turn, so a turn's
fan-out to this client is one response).  One GET may be pending at a
time: a second is a protocol error that ends the session, as the spec says.

The queue is this transport's send buffer.  Past ``HIGH_WATER`` bytes the
producer (the chatd session) is paused, exactly as a TCP transport pauses
it, so the session's slow-consumer check bounds a client that stops
polling like one that stops reading its socket (4029).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.python.failure import Failure
from twisted.web.server import Request

from chatd.bindings.socketio import eio
from chatd.bindings.socketio.transports import Write, frame_event_polling

if TYPE_CHECKING:
    from chatd.bindings.socketio.engine import EngineSocket

HIGH_WATER = 65536
"""Queued bytes past which the producer is paused (Twisted's own default
for a TCP transport's buffer)."""

CLOSE_PACKET = eio.encode(eio.CLOSE) + eio.SEPARATOR
NOOP_PACKET = eio.encode(eio.NOOP) + eio.SEPARATOR


class PollingTransport:
    """See the module docstring.  ``owner`` is the session it carries."""

    name = "polling"
    framer = staticmethod(frame_event_polling)

    def __init__(self, owner: EngineSocket, clock: IReactorTime, close_timeout: float) -> None:
        self._owner = owner
        self._clock = clock
        self._close_timeout = close_timeout
        self._queue: list[bytes] = []
        self._size = 0
        self._poll: Request | None = None
        self._flush_call: IDelayedCall | None = None
        self._close_timer: IDelayedCall | None = None
        self._producer: IPushProducer | None = None
        self._paused = False
        self._closing: tuple[int, str] | None = None
        self._done = False

    # -- Transport ------------------------------------------------------------------

    def frame(self, packet: bytes) -> bytes:
        return packet + eio.SEPARATOR

    def write(self, data: bytes) -> None:
        if self._done:
            return
        self._queue.append(data)
        self._size += len(data)
        if self._poll is not None and self._flush_call is None:
            self._flush_call = self._clock.callLater(0, self._flush)
        producer = self._producer
        if producer is not None and not self._paused and self._size > HIGH_WATER:
            self._paused = True
            producer.pauseProducing()

    def fast_writer(self) -> Write:
        return self.write

    def write_queued(self, data: bytes) -> None:
        self.write(data)

    def buffered_bytes(self) -> int | None:
        return self._size

    def register_producer(self, producer: IPushProducer) -> None:
        self._producer = producer
        self._paused = False

    def unregister_producer(self) -> None:
        self._producer = None
        self._paused = False

    def close(self, code: int, reason: str) -> None:
        """The close packet goes after what is queued; the session ends
        when a GET took it (or after ``close_timeout`` without one)."""
        self._end(code, reason, CLOSE_PACKET)

    def closed_by_client(self, code: int, reason: str) -> None:
        """The client sent the close packet and expects none back: the GET
        that is pending (or the next one) gets a noop last, as socket.io's
        engine answers it, and the session ends then."""
        self._end(code, reason, NOOP_PACKET)

    def _end(self, code: int, reason: str, last: bytes) -> None:
        if self._done or self._closing is not None:
            return
        self._closing = (code, reason)
        self.write(last)
        if self._poll is None:
            self._close_timer = self._clock.callLater(self._close_timeout, self._close_expired)

    def abort(self) -> None:
        """Drop the queue; a pending GET gets the close packet."""
        if self._done:
            return
        self._clear()
        self._queue.append(CLOSE_PACKET)
        self._size = len(CLOSE_PACKET)
        poll, self._poll = self._poll, None
        if poll is not None:
            self._respond(poll)
        self._finish(notify=False)  # the socket that aborts says how it ended

    # -- the upgrade -------------------------------------------------------------------

    def release(self) -> None:
        """The probe succeeded: answer the pending GET now (with a noop when
        nothing else is queued) so the client can pause polling."""
        poll, self._poll = self._poll, None
        if poll is None:
            return
        if not self._queue:
            self._queue.append(NOOP_PACKET)
            self._size = len(NOOP_PACKET)
        self._respond(poll)

    def discard(self) -> bytes:
        """The WebSocket took over: hand back what is still queued (in
        polling format), answer a pending GET with a noop, stop."""
        leftover = b"".join(self._queue)
        self._queue, self._size = [], 0
        poll, self._poll = self._poll, None
        if poll is not None:
            self._queue.append(NOOP_PACKET)
            self._respond(poll)
        self._finish(notify=False)
        return leftover

    # -- HTTP requests (from the resource) ----------------------------------------------

    def poll(self, request: Request) -> bool:
        """A GET; whether it is answered already (else it is held).  A
        second concurrent GET ends the session (the caller answers it 400)."""
        if self._poll is not None:
            self._owner.protocol_error("a second GET while one is pending")
            return False
        if self._queue:
            self._respond(request)
            return True
        self._poll = request
        request.notifyFinish().addErrback(self._poll_lost, request)
        return True

    def _poll_lost(self, failure: Failure, request: Request) -> None:
        if request is self._poll:
            self._poll = None
            if not self._done:
                self._owner.fail(1006, "the pending GET's connection closed")

    def _flush(self) -> None:
        self._flush_call = None
        poll, self._poll = self._poll, None
        if poll is not None and self._queue:
            self._respond(poll)
        elif poll is not None:
            self._poll = poll

    def _respond(self, request: Request) -> None:
        body = b"".join(self._queue)[: -len(eio.SEPARATOR)]
        self._queue, self._size = [], 0
        closing = self._closing is not None  # the close packet was queued last
        if not _finished(request):
            request.setResponseCode(200)
            request.setHeader(b"content-type", b"text/plain; charset=UTF-8")
            request.setHeader(b"content-length", str(len(body)).encode())
            request.write(body)
            request.finish()
        if self._paused and self._producer is not None:
            self._paused = False
            self._producer.resumeProducing()
        if closing:
            self._finish()

    # -- ending ---------------------------------------------------------------------------

    def _close_expired(self) -> None:
        self._close_timer = None
        self._finish()

    def _clear(self) -> None:
        self._queue, self._size = [], 0
        for call in (self._flush_call, self._close_timer):
            if call is not None and call.active():
                call.cancel()
        self._flush_call = self._close_timer = None

    def _finish(self, notify: bool = True) -> None:
        if self._done:
            return
        self._done = True
        self._clear()
        poll, self._poll = self._poll, None
        if poll is not None and not _finished(poll):
            poll.finish()
        if notify:
            code, reason = self._closing or (1006, "transport aborted")
            self._owner.transport_closed(self, self._closing is not None, code, reason)


def _finished(request: Any) -> bool:
    return bool(request.finished or getattr(request, "_disconnected", False))
