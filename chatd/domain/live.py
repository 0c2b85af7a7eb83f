"""Live streams (PROTOCOL.md section 4 "Live streams"): viewers, live chat,
reactions and host control.

A stream is a broker channel ``stream:<id>`` that viewers' connections
listen on, so live chat and reactions use the same one-encode, batched,
prepared-frame fan-out as rooms.  Live chat and reactions are not stored;
the host and the status are.

The viewer count counts users, not connections, and is pushed as
``live:viewer-count`` coalesced: at most one push per ``count_interval``
per stream, however fast viewers come and go, and always a last push with
the settled value.  Counting sits behind ``ViewerCounter`` so the Redis
issue can make it cluster-wide.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from chatd.clock import WallClock, iso_from_ms
from chatd.domain.chat import ChatService
from chatd.domain.interfaces import Caller, Connection, Store
from chatd.domain.models import Published
from chatd.domain.publishing import encode, new_id
from chatd.domain.registry import LocalRegistry
from chatd.errors import ChatError, ErrorCode

STATUS_CACHE_SECONDS = 1.0
STATUS_STALE_SECONDS = 5.0


def stream_channel(stream_id: str) -> str:
    return "stream:" + stream_id


class ViewerCounter(Protocol):
    """Viewers per stream, counted per user.  ``add`` may return a Deferred
    that fires once the count includes the new viewer (a cluster-wide
    counter asks Redis).  A listener added with ``add_listener`` hears of
    counts that changed elsewhere (another node), so this node pushes them
    to its own viewers."""

    def add_listener(self, listener: Callable[[str], None]) -> None: ...

    def add(self, stream_id: str, user_id: str) -> Deferred[None] | None: ...

    def remove(self, stream_id: str, user_id: str) -> None: ...

    def count(self, stream_id: str) -> int: ...


class LocalViewers:
    """Viewers of this process: per stream, per user, how many connections."""

    def __init__(self) -> None:
        self._streams: dict[str, dict[str, int]] = {}

    def add_listener(self, listener: Callable[[str], None]) -> None:
        """Nothing changes elsewhere: every change is this process's own."""

    def add(self, stream_id: str, user_id: str) -> None:
        users = self._streams.setdefault(stream_id, {})
        users[user_id] = users.get(user_id, 0) + 1

    def local_users(self, stream_id: str) -> int:
        return len(self._streams.get(stream_id, ()))

    def is_first(self, stream_id: str, user_id: str) -> bool:
        """Whether this user's only local viewing connection is the last added."""
        return self._streams.get(stream_id, {}).get(user_id) == 1

    def streams(self) -> dict[str, dict[str, int]]:
        return self._streams

    def remove(self, stream_id: str, user_id: str) -> None:
        users = self._streams.get(stream_id)
        if not users or user_id not in users:
            return
        if users[user_id] > 1:
            users[user_id] -= 1
            return
        del users[user_id]
        if not users:
            del self._streams[stream_id]

    def count(self, stream_id: str) -> int:
        return len(self._streams.get(stream_id, ()))


class CoalescedCounts:
    """Pushes a stream's count at most once per ``interval``, and once more
    after the last change so the final value always goes out."""

    def __init__(
        self,
        clock: IReactorTime,
        interval: float,
        count: Callable[[str], int],
        push: Callable[[str, int], None],
    ) -> None:
        self._clock = clock
        self._interval = interval
        self._count = count
        self._push = push
        self._scheduled: dict[str, IDelayedCall] = {}
        self._last_at: dict[str, float] = {}
        self._last_value: dict[str, int] = {}

    def changed(self, stream_id: str) -> None:
        if stream_id in self._scheduled:
            return
        earliest = self._last_at.get(stream_id, float("-inf")) + self._interval
        delay = max(0.0, earliest - self._clock.seconds())
        self._scheduled[stream_id] = self._clock.callLater(delay, self._fire, stream_id)

    def _fire(self, stream_id: str) -> None:
        del self._scheduled[stream_id]
        value = self._count(stream_id)
        if value != self._last_value.get(stream_id):
            self._push(stream_id, value)
            self._last_at[stream_id] = self._clock.seconds()
        if value == 0:
            self._last_value.pop(stream_id, None)
            self._last_at.pop(stream_id, None)
        else:
            self._last_value[stream_id] = value

    def stop(self) -> None:
        for call in self._scheduled.values():
            if call.active():
                call.cancel()
        self._scheduled.clear()


class _Bucket:
    __slots__ = ("tokens", "stamp")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class LiveService:
    def __init__(
        self,
        chat: ChatService,
        registry: LocalRegistry,
        clock: IReactorTime,
        wall_clock: WallClock,
        viewers: ViewerCounter | None = None,
        count_interval: float = 0.5,
        reaction_rate: float = 10.0,
    ) -> None:
        self.chat = chat
        self.store: Store = chat.store
        self.registry = registry
        self.clock = clock
        self.wall_clock = wall_clock
        self.viewers: ViewerCounter = viewers if viewers is not None else LocalViewers()
        self.counts = CoalescedCounts(clock, count_interval, self.viewers.count, self._push_count)
        self.viewers.add_listener(self.counts.changed)
        self.reaction_rate = reaction_rate
        self._watching: dict[Connection, set[str]] = {}
        self._reaction_buckets: dict[str, _Bucket] = {}
        self._status_cache: dict[str, tuple[float, tuple[str, str, str] | None]] = {}
        self._loading: dict[str, list[Deferred[Any]]] = {}

    def _publish(
        self, stream_id: str, event_type: str, data: dict[str, Any], **routing: Any
    ) -> None:
        self.chat.publish(stream_channel(stream_id), Published(event_type, encode(data), **routing))

    def _push_count(self, stream_id: str, count: int) -> None:
        """Every node pushes the (cluster-wide) count to its own viewers."""
        data = encode({"streamId": stream_id, "count": count})
        self.chat.publish_local(stream_channel(stream_id), Published("live:viewer-count", data))

    # -- stream state (cached briefly: every chat line and reaction asks) ----------------

    def _stream(self, stream_id: str) -> Deferred[tuple[str, str, str] | None]:
        """The stream's (host, status, title), without reordering requests.

        A cached entry answers at once, even when stale (a refresh runs in
        the background and other nodes' status changes show within about
        ``STATUS_CACHE_SECONDS``).  Without one, every request waits on the
        same load and they resume in arrival order, so one connection's
        chat lines and reactions are published in the order they came."""
        now = self.clock.seconds()
        cached = self._status_cache.get(stream_id)
        if cached is not None and now - cached[0] >= STATUS_STALE_SECONDS:
            cached = None  # after a quiet spell, wait for the truth (in order)
        if cached is not None:
            if now - cached[0] >= STATUS_CACHE_SECONDS and stream_id not in self._loading:
                self._load_stream(stream_id)
            return succeed(cached[1])
        waiter: Deferred[tuple[str, str, str] | None] = Deferred()
        if stream_id not in self._loading:
            self._load_stream(stream_id)
        self._loading[stream_id].append(waiter)
        return waiter

    def _load_stream(self, stream_id: str) -> None:
        waiters: list[Deferred[Any]] = []
        self._loading[stream_id] = waiters
        d = self.chat.guard(self.store.get_stream(stream_id))

        def loaded(found: tuple[str, str, str] | None) -> None:
            del self._loading[stream_id]
            self._remember(stream_id, found)
            for waiter in waiters:
                waiter.callback(found)

        def failed(failure: Failure) -> None:
            del self._loading[stream_id]
            for waiter in waiters:
                waiter.errback(failure)

        d.addCallbacks(loaded, failed)

    def _remember(self, stream_id: str, found: tuple[str, str, str] | None) -> None:
        now = self.clock.seconds()
        if len(self._status_cache) >= 10000:
            for key, (stamp, _) in list(self._status_cache.items()):
                if now - stamp >= STATUS_CACHE_SECONDS:
                    del self._status_cache[key]
        self._status_cache[stream_id] = (now, found)

    # -- viewers ----------------------------------------------------------------------

    def join(self, conn: Connection, stream_id: str) -> Deferred[dict[str, Any]]:
        return Deferred.fromCoroutine(self._join(conn, stream_id))

    async def _join(self, conn: Connection, stream_id: str) -> dict[str, Any]:
        user = _user(conn)
        stream = await self._stream(stream_id)
        watching = self._watching.setdefault(conn, set())
        if stream_id not in watching:
            watching.add(stream_id)
            self.registry.listen(conn, stream_channel(stream_id))
            await _maybe(self.viewers.add(stream_id, user))
            self.counts.changed(stream_id)
        return {
            "streamId": stream_id,
            "viewerCount": self.viewers.count(stream_id),
            "status": stream[1] if stream else "idle",
        }

    def leave(self, conn: Connection, stream_id: str) -> dict[str, Any]:
        watching = self._watching.get(conn)
        if watching is not None and stream_id in watching:
            watching.discard(stream_id)
            self._stop_watching(conn, stream_id)
        return {"streamId": stream_id}

    def _stop_watching(self, conn: Connection, stream_id: str) -> None:
        self.registry.unlisten(conn, stream_channel(stream_id))
        self.viewers.remove(stream_id, _user(conn))
        self.counts.changed(stream_id)

    def connection_closed(self, conn: Connection) -> None:
        for stream_id in self._watching.pop(conn, set()):
            self._stop_watching(conn, stream_id)

    # -- chat and reactions ----------------------------------------------------------------

    async def _open_stream(self, conn: Connection, stream_id: str) -> None:
        watching = self._watching.get(conn)
        if watching is None or stream_id not in watching:
            raise ChatError(ErrorCode.NOT_A_MEMBER, f"join stream {stream_id} first (live:join)")
        stream = await self._stream(stream_id)
        if stream is None:
            raise ChatError(ErrorCode.ROOM_NOT_FOUND, f"stream {stream_id} does not exist")
        if stream[1] == "ended":
            raise ChatError(ErrorCode.FORBIDDEN, f"stream {stream_id} has ended")

    def message(self, conn: Connection, stream_id: str, content: str) -> Deferred[dict[str, Any]]:
        self.chat.limits.check_content(content)
        return Deferred.fromCoroutine(self._message(conn, stream_id, content))

    async def _message(self, conn: Connection, stream_id: str, content: str) -> dict[str, Any]:
        await self._open_stream(conn, stream_id)
        message_id = new_id("l_")
        self._publish(
            stream_id,
            "live:message",
            {
                "id": message_id,
                "streamId": stream_id,
                "userId": _user(conn),
                "content": content,
                "createdAt": iso_from_ms(self.wall_clock.now_ms()),
            },
        )
        return {"id": message_id}

    def react(self, conn: Connection, stream_id: str, emoji: str) -> Deferred[dict[str, Any]]:
        return Deferred.fromCoroutine(self._react(conn, stream_id, emoji))

    async def _react(self, conn: Connection, stream_id: str, emoji: str) -> dict[str, Any]:
        user = _user(conn)
        await self._open_stream(conn, stream_id)
        if not self._take_reaction(user):
            raise ChatError(
                ErrorCode.RATE_LIMIT_EXCEEDED,
                f"at most {self.reaction_rate:g} reactions per second",
            )
        self._publish(
            stream_id, "live:reaction", {"streamId": stream_id, "userId": user, "emoji": emoji}
        )
        return {}

    def _take_reaction(self, user_id: str) -> bool:
        """Per user (all tabs together): ``reaction_rate`` per second with a
        burst of twice that, so a flooding viewer cannot crowd out the rest."""
        now = self.clock.seconds()
        burst = 2 * self.reaction_rate
        bucket = self._reaction_buckets.get(user_id)
        if bucket is None:
            if len(self._reaction_buckets) >= 100000:
                self._forget_full_buckets(now, burst)
            bucket = self._reaction_buckets[user_id] = _Bucket(burst, now)
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.stamp) * self.reaction_rate)
        bucket.stamp = now
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        return True

    def _forget_full_buckets(self, now: float, burst: float) -> None:
        """Drop buckets that have refilled completely (their users have
        been quiet): forgetting them changes nothing, unlike clearing all,
        which would hand every flooder a fresh burst."""
        refill = burst / self.reaction_rate
        for user_id, bucket in list(self._reaction_buckets.items()):
            if now - bucket.stamp >= refill:
                del self._reaction_buckets[user_id]

    # -- host control ----------------------------------------------------------------------

    def set_status(self, caller: Caller, stream_id: str, status: str) -> Deferred[dict[str, Any]]:
        """``live:status``: only the stream's host may change it."""
        return Deferred.fromCoroutine(self._set_status(caller, stream_id, status))

    async def _set_status(self, caller: Caller, stream_id: str, status: str) -> dict[str, Any]:
        user = _user(caller)
        at = self.wall_clock.now_ms()
        changed = await self.chat.guard(self.store.set_stream_status(stream_id, user, status, at))
        if changed is None:
            raise ChatError(
                ErrorCode.FORBIDDEN, f"only the host of stream {stream_id} may change its status"
            )
        host, previous = changed
        self._remember(stream_id, (host, status, ""))
        if previous != status:
            self._publish(stream_id, "live:status", {"streamId": stream_id, "status": status})
        return {}

    def put_stream(
        self, stream_id: str, host_id: str, title: str | None
    ) -> Deferred[tuple[str, str, str]]:
        """Backend (``PUT /api/streams/{id}``): create the stream or hand it
        to a new host; returns its (host, status, title)."""
        return Deferred.fromCoroutine(self._put_stream(stream_id, host_id, title))

    async def _put_stream(
        self, stream_id: str, host_id: str, title: str | None
    ) -> tuple[str, str, str]:
        at = self.wall_clock.now_ms()
        await self.chat.guard(self.store.put_stream(stream_id, host_id, title, at))
        self.forget(stream_id)
        stream: tuple[str, str, str] | None = await self.chat.guard(
            self.store.get_stream(stream_id)
        )
        assert stream is not None, "the stream was just stored"
        return stream

    def forget(self, stream_id: str) -> None:
        """The stream changed elsewhere (HTTP API): read it afresh next time."""
        self._status_cache.pop(stream_id, None)

    def stop(self) -> None:
        self.counts.stop()


def _user(caller: Caller) -> str:
    identity = caller.identity
    assert identity is not None
    return identity.user_id


async def _maybe(d: Deferred[None] | None) -> None:
    """Wait for a ``ViewerCounter`` answer that may come at once (None)."""
    if d is not None:
        await d
