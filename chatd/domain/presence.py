"""Presence (PROTOCOL.md section 4): who is online, and who hears about it.

``user:online`` goes out when a user's first connection opens,
``user:offline {userId, lastSeen}`` when the last one has been closed for
``grace`` seconds (a page reload does not flap), ``lastSeen`` being when
that connection closed, not when the grace period ran out.  Both go only to
the user's audience (friends and members of the user's rooms) and only to
those of them who are online; ``status:request`` answers only about that
audience.

Two parts, so one process and a cluster share the rules:

- ``PresenceAnnouncer`` decides who hears what.  It holds no state: the
  audience comes from the store, and who of it is online from the tracker
  that reports the transition (``OnlineDirectory``), because in a cluster
  "online" means "on any node".
- ``LocalPresence`` counts this process's connections per user and runs
  the grace timers.  It is the tracker of a single process, and the local
  half of the cluster's (``chatd.broker.cluster.ClusterPresence``), which
  decides the cluster-wide transitions in Redis and tells the announcer
  itself.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatd.clock import SYSTEM_CLOCK, WallClock, iso_from_ms
from chatd.domain.interfaces import (
    EventPublisher,
    OnlineDirectory,
    PresenceListener,
    PresenceStore,
)
from chatd.domain.models import Published
from chatd.domain.publishing import encode
from chatd.domain.registry import user_channel

log = Logger()

PRESENCE_GRACE = 3.0


class PresenceAnnouncer:
    """Tells a user's online audience about their transitions: one encoding
    and one ``publish_many`` per transition, however large the audience.

    Every method logs its own failures and never errbacks: a presence push
    that cannot be sent must not break the connection that caused it."""

    def __init__(self, store: PresenceStore, publisher: EventPublisher) -> None:
        self._store = store
        self._publisher = publisher

    # -- PresenceListener ------------------------------------------------------------

    def went_online(self, user_id: str, online: OnlineDirectory) -> Deferred[None]:
        audience = self.audience_online(user_id, online)
        told = audience.addCallback(self._tell, "user:online", {"userId": user_id})
        return told.addErrback(self._failed, "announcing {user} online failed", user_id)

    def went_offline(self, user_id: str, at_ms: int, online: OnlineDirectory) -> Deferred[None]:
        """Record ``lastSeen`` and read the audience in one store call, then
        tell those of it still online."""
        audience = self._store.close_session(user_id, at_ms).addCallback(online.online_among)
        data = {"userId": user_id, "lastSeen": iso_from_ms(at_ms)}
        told = audience.addCallback(self._tell, "user:offline", data)
        return told.addErrback(self._failed, "announcing {user} offline failed", user_id)

    # -- questions and other pushes ----------------------------------------------------

    def audience_online(self, user_id: str, online: OnlineDirectory) -> Deferred[list[str]]:
        """Who of this user's audience is online (``status:request``).
        Store failures reach the caller, which answers with an error."""
        return self._store.presence_audience(user_id).addCallback(online.online_among)

    def status(self, user_id: str, online: OnlineDirectory) -> Deferred[dict[str, Any]]:
        """The answer to ``status:request``."""
        return self.audience_online(user_id, online).addCallback(lambda ids: {"userIds": ids})

    def befriended(self, a: str, b: str, online: OnlineDirectory) -> None:
        """Two users just became friends: each is now in the other's
        audience, so each hears at once that the other is online."""
        present = online.online_among([a, b])
        for subject, viewer in ((a, b), (b, a)):
            if subject in present:
                event = Published("user:online", encode({"userId": subject}))
                self._publisher.publish(user_channel(viewer), event)

    # -- publishing ----------------------------------------------------------------------

    def _tell(self, audience: list[str], event_type: str, data: dict[str, Any]) -> None:
        if not audience:
            return  # nobody to tell: not even an encoding
        self._publisher.publish_many(
            [user_channel(u) for u in audience], Published(event_type, encode(data))
        )

    @staticmethod
    def _failed(failure: Failure, what: str, user_id: str) -> None:
        log.failure(what, failure, user=user_id)


class LocalPresence:
    """This process's connections per user, and the grace period before a
    user whose last connection closed counts as gone.

    Satisfies ``PresenceTracker`` (a single process) and
    ``LocalPresenceTracker`` (the local half of the cluster's tracker).  The
    transitions go to the ``listener`` given at construction."""

    def __init__(
        self,
        listener: PresenceListener,
        clock: IReactorTime,
        grace: float = PRESENCE_GRACE,
        wall_clock: WallClock = SYSTEM_CLOCK,
    ) -> None:
        self._listener = listener
        self._clock = clock
        self._grace = grace
        self._wall_clock = wall_clock
        self._counts: dict[str, int] = {}
        self._going: dict[str, IDelayedCall] = {}
        self._closed_at: dict[str, int] = {}
        self._leaving: set[Deferred[None]] = set()

    # -- synchronous reads -------------------------------------------------------------

    def is_online(self, user_id: str) -> bool:
        """Connected, or within the grace period after the last close."""
        return user_id in self._counts or user_id in self._going

    def online_among(self, user_ids: list[str]) -> list[str]:
        return [u for u in user_ids if self.is_online(u)]

    def connections(self, user_id: str) -> int:
        return self._counts.get(user_id, 0)

    def local_counts(self) -> dict[str, int]:
        """The live table (not a copy): read it, do not change it."""
        return self._counts

    # -- transitions ---------------------------------------------------------------------

    def opened(self, user_id: str) -> None:
        count = self._counts.get(user_id, 0) + 1
        self._counts[user_id] = count
        if count > 1:
            return
        going = self._going.pop(user_id, None)
        if going is not None:
            going.cancel()  # back within the grace period: never went offline
            self._closed_at.pop(user_id, None)
            return
        self._listener.went_online(user_id, self)

    def closed(self, user_id: str) -> None:
        count = self._counts.get(user_id, 0) - 1
        if count > 0:
            self._counts[user_id] = count
            return
        self._counts.pop(user_id, None)
        if user_id not in self._going:
            self._closed_at[user_id] = self._wall_clock.now_ms()
            self._going[user_id] = self._clock.callLater(self._grace, self._gone, user_id)

    def _gone(self, user_id: str) -> None:
        """The grace period ran out: offline, last seen when the last
        connection closed (not now)."""
        self._going.pop(user_id, None)
        closed_at = self._closed_at.pop(user_id, None)
        if closed_at is None:
            closed_at = self._wall_clock.now_ms()
        d = self._listener.went_offline(user_id, closed_at, self)
        if not d.called:
            self._leaving.add(d)
            d.addBoth(self._left, d)

    def _left(self, result: object, d: Deferred[None]) -> None:
        self._leaving.discard(d)

    # -- cluster-wide questions, answered for one process ---------------------------------

    def connection_counts(self, user_ids: list[str]) -> Deferred[dict[str, int]]:
        return succeed({u: self._counts.get(u, 0) for u in user_ids})

    def connected_users(self) -> Deferred[dict[str, int]]:
        return succeed(dict(self._counts))

    def total_connections(self) -> Deferred[int]:
        return succeed(sum(self._counts.values()))

    # -- lifecycle ----------------------------------------------------------------------

    def stop(self) -> Deferred[None]:
        """Cancel the grace timers (those users are not announced offline:
        a cluster's leave does that, and one process has nobody left to
        tell); fires once the offline announcements already running are done."""
        for call in self._going.values():
            if call.active():
                call.cancel()
        self._going.clear()
        self._closed_at.clear()
        running = DeferredList(list(self._leaving), consumeErrors=True)
        return running.addCallback(lambda _: None)
