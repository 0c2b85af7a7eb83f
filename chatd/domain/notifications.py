"""Stored notifications (PROTOCOL.md ``notification``): kept until the user
acknowledges them, pushed at once to open connections and handed over
again on every new connection.

Direct messages, friend requests and the HTTP API all leave notifications;
this one small service serves them, so none of them needs the others."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from chatd.clock import WallClock
from chatd.domain.interfaces import Store
from chatd.domain.models import Notification
from chatd.domain.publishing import Publisher, guard, new_id
from chatd.errors import ChatError, ErrorCode

log = Logger()


class Notifications:
    """``keep``: the stored notifications kept per user (the newest; see
    ``Store.add_notification``), or None for no bound."""

    def __init__(
        self, store: Store, publisher: Publisher, wall_clock: WallClock, keep: int | None = None
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._wall_clock = wall_clock
        self._keep = keep

    def notify(
        self, user_id: str, kind: str, title: str, message: str, data: Any = None
    ) -> Deferred[Notification]:
        """Store a notification, then deliver it to the user's connections
        now (if any)."""
        return Deferred.fromCoroutine(self._notify(user_id, kind, title, message, data))

    async def _notify(
        self, user_id: str, kind: str, title: str, message: str, data: Any
    ) -> Notification:
        note = Notification(
            new_id("n_"), user_id, kind, title, message, data, self._wall_clock.now_ms()
        )
        await guard(self._store.add_notification(note, self._keep))
        self._publisher.to_user(user_id, "notification", note.to_wire())
        return note

    def notify_quietly(
        self, user_id: str, kind: str, title: str, message: str, data: Any
    ) -> Deferred[None]:
        """A notification that accompanies something already stored (a DM,
        a friend request): stored before the answer goes out, so a client
        that connects after the answer gets it exactly once on connect; its
        failure is logged and does not turn the answer into an error."""
        d = self.notify(user_id, kind, title, message, data)
        d.addErrback(
            lambda f: log.failure(
                "{kind} notification for {user} failed", f, kind=kind, user=user_id
            )
        )
        return d.addCallback(lambda _: None)

    def acknowledge(self, user_id: str, notification_id: str) -> Deferred[None]:
        return Deferred.fromCoroutine(self._acknowledge(user_id, notification_id))

    async def _acknowledge(self, user_id: str, notification_id: str) -> None:
        at = self._wall_clock.now_ms()
        if not await guard(self._store.ack_notification(user_id, notification_id, at)):
            raise ChatError(ErrorCode.INVALID_MESSAGE, f"no notification {notification_id} for you")
