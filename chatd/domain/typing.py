"""Typing indicators with the server-side stop.

A user who said ``isTyping: true`` in a room and then went quiet for
``timeout`` seconds, left the room or disconnected gets an ``isTyping:
false`` sent for them.  Only changes are pushed: a repeated ``true``
re-arms the timer without a new push.  The clock is injected so tests
advance time instead of sleeping.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from chatd.domain.interfaces import Connection

TYPING_TIMEOUT = 6.0

Announce = Callable[[str, str, str, bool], None]
"""announce(room_id, user_id, connection_id, is_typing)"""


class TypingTracker:
    def __init__(
        self, clock: IReactorTime, announce: Announce, timeout: float = TYPING_TIMEOUT
    ) -> None:
        self._clock = clock
        self._announce = announce
        self._timeout = timeout
        self._active: dict[tuple[str, str], tuple[Connection, IDelayedCall]] = {}

    def is_typing(self, room_id: str, user_id: str) -> bool:
        return (room_id, user_id) in self._active

    def update(self, conn: Connection, room_id: str, is_typing: bool) -> None:
        assert conn.identity is not None
        key = (room_id, conn.identity.user_id)
        current = self._active.get(key)
        if is_typing:
            if current is not None:
                current[1].reset(self._timeout)
                self._active[key] = (conn, current[1])
                return
            call = self._clock.callLater(self._timeout, self._expire, key)
            self._active[key] = (conn, call)
            self._announce(room_id, key[1], conn.connection_id, True)
        elif current is not None:
            self._stop(key)

    def stop_connection(self, conn: Connection, room_ids: list[str] | None = None) -> None:
        """The connection left ``room_ids`` (or all rooms, when None)."""
        for key, (owner, _) in list(self._active.items()):
            if owner is conn and (room_ids is None or key[0] in room_ids):
                self._stop(key)

    def _expire(self, key: tuple[str, str]) -> None:
        entry = self._active.pop(key, None)
        if entry is not None:
            self._announce(key[0], key[1], entry[0].connection_id, False)

    def _stop(self, key: tuple[str, str]) -> None:
        conn, call = self._active.pop(key)
        if call.active():
            call.cancel()
        self._announce(key[0], key[1], conn.connection_id, False)

    def stop_all(self) -> None:
        for key in list(self._active):
            conn, call = self._active.pop(key)
            if call.active():
                call.cancel()
