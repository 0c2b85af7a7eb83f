"""Storage of the social layer (users, friends, requests, notifications,
direct-message rooms), as methods mixed into ``SqlStore`` so they share its
transactions, retry and error translation."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred

from chatd.domain.models import FriendLists, Notification, PendingRequest, Room

WITHDRAWN_AT = 0
"""The ``read_at`` of a friend request's notification settled because the
sender withdrew the request (one its user read or answered has the time)."""


class SocialQueries:
    """Mixed into SqlStore: ``self.run`` and ``self.engine`` come from it."""

    engine: Any

    def run(self, work: Any, *args: Any) -> Deferred[Any]:  # provided by SqlStore
        raise TypeError("SocialQueries is a mixin of SqlStore")

    def run_batched(self, work: Any, *args: Any) -> Deferred[Any]:  # provided by SqlStore
        raise TypeError("SocialQueries is a mixin of SqlStore")

    # -- users -------------------------------------------------------------------

    def touch_user(self, user_id: str, name: str | None, at_ms: int) -> Deferred[None]:
        return self.run(self._touch_user, user_id, name, at_ms)

    def _touch_user(self, cur: Any, user_id: str, name: str | None, at_ms: int) -> None:
        cur.execute(
            self.engine.sql(
                "INSERT INTO users (user_id, name, first_seen) VALUES (?, ?, ?)"
                # no write (and no fsync) when a known user reconnects unchanged
                " ON CONFLICT (user_id) DO UPDATE SET name = excluded.name"
                " WHERE excluded.name IS NOT NULL AND (users.name IS NULL OR users.name <> excluded.name)"
            ),
            (user_id, name, at_ms),
        )

    def open_session(
        self, user_id: str, name: str | None, at_ms: int, limit: int
    ) -> Deferred[list[Notification]]:
        """A connection authenticated: record the user and read the
        notifications waiting for them, in one transaction (one trip to the
        database thread per connection instead of two), batched with other
        connections' (one commit per burst of connections)."""
        return self.run_batched(self._open_session, user_id, name, at_ms, limit)

    def _open_session(
        self, cur: Any, user_id: str, name: str | None, at_ms: int, limit: int
    ) -> list[Notification]:
        self._touch_user(cur, user_id, name, at_ms)
        return self._unread_notifications(cur, user_id, limit)

    def close_session(self, user_id: str, at_ms: int) -> Deferred[list[str]]:
        """A user went offline: record when, and return their presence
        audience, in one transaction, batched with other users'."""
        return self.run_batched(self._close_session, user_id, at_ms)

    def _close_session(self, cur: Any, user_id: str, at_ms: int) -> list[str]:
        self._set_last_seen(cur, user_id, at_ms)
        return self._presence_audience(cur, user_id)

    def user_exists(self, user_id: str) -> Deferred[bool]:
        return self.run(self._user_exists, user_id)

    def _user_exists(self, cur: Any, user_id: str) -> bool:
        """Known: has connected once, or was made a member of a room."""
        cur.execute(
            self.engine.sql(
                "SELECT 1 FROM users WHERE user_id = ?"
                " UNION ALL SELECT 1 FROM room_members WHERE user_id = ? LIMIT 1"
            ),
            (user_id, user_id),
        )
        return cur.fetchone() is not None

    def set_last_seen(self, user_id: str, at_ms: int) -> Deferred[None]:
        return self.run(self._set_last_seen, user_id, at_ms)

    def _set_last_seen(self, cur: Any, user_id: str, at_ms: int) -> None:
        cur.execute(
            self.engine.sql(
                "INSERT INTO users (user_id, first_seen, last_seen) VALUES (?, ?, ?)"
                " ON CONFLICT (user_id) DO UPDATE SET last_seen = excluded.last_seen"
            ),
            (user_id, at_ms, at_ms),
        )

    def last_seen(self, user_id: str) -> Deferred[int | None]:
        return self.run(self._last_seen, user_id)

    def _last_seen(self, cur: Any, user_id: str) -> int | None:
        cur.execute(self.engine.sql("SELECT last_seen FROM users WHERE user_id = ?"), (user_id,))
        row = cur.fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def presence_audience(self, user_id: str) -> Deferred[list[str]]:
        """Read when a user comes online (and for ``status:request``):
        batched, since a burst of connections reads one each."""
        return self.run_batched(self._presence_audience, user_id)

    def _presence_audience(self, cur: Any, user_id: str) -> list[str]:
        """Who may see this user's presence: friends and the members of the
        rooms the user belongs to.  Nobody else — and a direct-message room
        does not count: a stranger who writes to you does not get to watch
        your presence."""
        cur.execute(
            self.engine.sql(
                "SELECT friend_id FROM friendships WHERE user_id = ?"
                " UNION SELECT other.user_id FROM room_members mine"
                " JOIN rooms r ON r.id = mine.room_id AND r.kind <> 'dm'"
                " JOIN room_members other ON other.room_id = mine.room_id"
                " WHERE mine.user_id = ? AND other.user_id <> ?"
            ),
            (user_id, user_id, user_id),
        )
        return sorted(row[0] for row in cur.fetchall())

    def in_audience(self, viewer: str, subject: str) -> Deferred[bool]:
        return self.run(self._in_audience, viewer, subject)

    def _in_audience(self, cur: Any, viewer: str, subject: str) -> bool:
        cur.execute(
            self.engine.sql(
                "SELECT 1 FROM friendships WHERE user_id = ? AND friend_id = ?"
                " UNION ALL SELECT 1 FROM room_members mine"
                " JOIN rooms r ON r.id = mine.room_id AND r.kind <> 'dm'"
                " JOIN room_members other ON other.room_id = mine.room_id"
                " WHERE mine.user_id = ? AND other.user_id = ? LIMIT 1"
            ),
            (subject, viewer, subject, viewer),
        )
        return cur.fetchone() is not None

    # -- friends -----------------------------------------------------------------

    def are_friends(self, user_id: str, other: str) -> Deferred[bool]:
        return self.run(self._are_friends, user_id, other)

    def _are_friends(self, cur: Any, user_id: str, other: str) -> bool:
        cur.execute(
            self.engine.sql("SELECT 1 FROM friendships WHERE user_id = ? AND friend_id = ?"),
            (user_id, other),
        )
        return cur.fetchone() is not None

    def request_friend(
        self, from_user: str, to_user: str, at_ms: int, max_pending: int | None = None
    ) -> Deferred[str]:
        return self.run(self._request_friend, from_user, to_user, at_ms, max_pending)

    def _request_friend(
        self, cur: Any, from_user: str, to_user: str, at_ms: int, max_pending: int | None = None
    ) -> str:
        """'friends' (already), 'accepted' (the other had asked us: now
        friends), 'pending' (asked before), 'requested' (new request) or
        'limit' (a new request, but ``from_user`` has ``max_pending``
        unanswered ones already: nothing stored)."""
        if self._are_friends(cur, from_user, to_user):
            return "friends"
        if self._delete_request(cur, to_user, from_user):
            self._befriend(cur, from_user, to_user, at_ms)
            self._settle_request_notification(cur, from_user, to_user, at_ms)
            return "accepted"
        if max_pending is not None and self._pending_beyond(cur, from_user, to_user, max_pending):
            return "limit"
        cur.execute(
            self.engine.sql(
                "INSERT INTO friend_requests (from_user, to_user, created_at) VALUES (?, ?, ?)"
                " ON CONFLICT (from_user, to_user) DO NOTHING"
            ),
            (from_user, to_user, at_ms),
        )
        return "requested" if cur.rowcount == 1 else "pending"

    def accept_friend(self, user_id: str, requester: str, at_ms: int) -> Deferred[bool]:
        return self.run(self._accept_friend, user_id, requester, at_ms)

    def _accept_friend(self, cur: Any, user_id: str, requester: str, at_ms: int) -> bool:
        if not self._delete_request(cur, requester, user_id):
            return False
        self._befriend(cur, user_id, requester, at_ms)
        self._settle_request_notification(cur, user_id, requester, at_ms)
        return True

    def decline_friend(self, user_id: str, requester: str, at_ms: int = 0) -> Deferred[bool]:
        return self.run(self._decline_friend, user_id, requester, at_ms)

    def _decline_friend(self, cur: Any, user_id: str, requester: str, at_ms: int) -> bool:
        declined = self._delete_request(cur, requester, user_id)
        self._settle_request_notification(cur, user_id, requester, at_ms)
        return declined

    def _settle_request_notification(
        self, cur: Any, user_id: str, requester: str, at_ms: int
    ) -> None:
        """An answered request's notification is read: no need to hand it
        over again on the next connection."""
        cur.execute(
            self.engine.sql(
                "UPDATE notifications SET read_at = ? WHERE user_id = ? AND type = 'friend_request'"
                " AND data = ? AND read_at IS NULL"
            ),
            (at_ms, user_id, json.dumps({"fromUserId": requester})),
        )

    def renew_friend_request_notice(
        self, from_user: str, to_user: str, since_ms: int
    ) -> Deferred[bool]:
        """Was ``to_user`` notified of a friend request from ``from_user``
        at ``since_ms`` or later?  Then a new request is a repeat (asked,
        withdrawn, asked again) and gets no push or notification of its
        own.  If withdrawing settled that notification, it is unsettled
        again: the request is pending once more, and its one notification is
        handed over on the user's next connection as a pending request's is."""
        return self.run(self._renew_friend_request_notice, from_user, to_user, since_ms)

    def _renew_friend_request_notice(
        self, cur: Any, from_user: str, to_user: str, since_ms: int
    ) -> bool:
        sql = self.engine.sql
        cur.execute(
            sql(
                "SELECT id, read_at FROM notifications WHERE user_id = ? AND type = 'friend_request'"
                " AND data = ? AND created_at >= ? ORDER BY created_at DESC LIMIT 1"
            ),
            (to_user, json.dumps({"fromUserId": from_user}), since_ms),
        )
        row = cur.fetchone()
        if row is None:
            return False
        if row[1] == WITHDRAWN_AT:
            # Settled by the withdrawal, not read or answered by its user.
            cur.execute(sql("UPDATE notifications SET read_at = NULL WHERE id = ?"), (row[0],))
        return True

    def remove_friend(self, user_id: str, other: str) -> Deferred[bool]:
        return self.run(self._remove_friend, user_id, other)

    def _remove_friend(self, cur: Any, user_id: str, other: str) -> bool:
        """End a friendship, or withdraw this user's own pending request."""
        cur.execute(
            self.engine.sql(
                "DELETE FROM friendships WHERE (user_id = ? AND friend_id = ?) OR (user_id = ? AND friend_id = ?)"
            ),
            (user_id, other, other, user_id),
        )
        removed = cur.rowcount > 0
        if self._delete_request(cur, user_id, other):
            # A withdrawn request's notification is no longer news.
            self._settle_request_notification(cur, other, user_id, WITHDRAWN_AT)
            return True
        return removed

    def set_friendship(self, user_id: str, other: str, present: bool, at_ms: int) -> Deferred[bool]:
        """The backend's view of the graph (HTTP API): make or end it."""
        return self.run(self._set_friendship, user_id, other, present, at_ms)

    def _set_friendship(
        self, cur: Any, user_id: str, other: str, present: bool, at_ms: int
    ) -> bool:
        if not present:
            return self._remove_friend(cur, user_id, other)
        if self._are_friends(cur, user_id, other):
            return False
        self._delete_request(cur, user_id, other)
        self._delete_request(cur, other, user_id)
        self._befriend(cur, user_id, other, at_ms)
        return True

    def _befriend(self, cur: Any, a: str, b: str, at_ms: int) -> None:
        self.engine.insert_many(
            cur,
            "INSERT INTO friendships (user_id, friend_id, created_at) VALUES (?, ?, ?)",
            [(a, b, at_ms), (b, a, at_ms)],
        )

    def _delete_request(self, cur: Any, from_user: str, to_user: str) -> bool:
        cur.execute(
            self.engine.sql("DELETE FROM friend_requests WHERE from_user = ? AND to_user = ?"),
            (from_user, to_user),
        )
        return cur.rowcount == 1

    def friend_lists(self, user_id: str) -> Deferred[FriendLists]:
        return self.run(self._friend_lists, user_id)

    def _friend_lists(self, cur: Any, user_id: str) -> FriendLists:
        sql = self.engine.sql
        cur.execute(
            sql("SELECT friend_id FROM friendships WHERE user_id = ? ORDER BY friend_id"),
            (user_id,),
        )
        friends = [row[0] for row in cur.fetchall()]
        cur.execute(
            sql(
                "SELECT from_user, created_at FROM friend_requests WHERE to_user = ? ORDER BY created_at, from_user"
            ),
            (user_id,),
        )
        incoming = [PendingRequest(row[0], int(row[1])) for row in cur.fetchall()]
        cur.execute(
            sql(
                "SELECT to_user, created_at FROM friend_requests WHERE from_user = ? ORDER BY created_at, to_user"
            ),
            (user_id,),
        )
        outgoing = [PendingRequest(row[0], int(row[1])) for row in cur.fetchall()]
        return FriendLists(friends, incoming, outgoing)

    # -- notifications -------------------------------------------------------------

    def _pending_beyond(self, cur: Any, from_user: str, to_user: str, cap: int) -> bool:
        """Would a new request from ``from_user`` to ``to_user`` make more
        than ``cap`` of theirs wait for an answer?  (Asking again someone
        already asked is no new request.)"""
        cur.execute(
            self.engine.sql(
                "SELECT COUNT(*), COALESCE(SUM(CASE WHEN to_user = ? THEN 1 ELSE 0 END), 0)"
                " FROM friend_requests WHERE from_user = ?"
            ),
            (to_user, from_user),
        )
        pending, to_this_user = cur.fetchone()
        return int(to_this_user) == 0 and int(pending) >= cap

    def add_notification(
        self, notification: Notification, keep: int | None = None
    ) -> Deferred[Notification]:
        return self.run(self._add_notification, notification, keep)

    def _add_notification(self, cur: Any, n: Notification, keep: int | None = None) -> Notification:
        """Store ``n``; with ``keep``, the user's oldest notifications beyond
        the newest ``keep`` go (read ones first), so what one user can make
        the store hold for another stays bounded."""
        self._insert_notification(cur, n)
        if keep is not None:
            self._prune_notifications(cur, n.user_id, keep)
        return n

    def _prune_notifications(self, cur: Any, user_id: str, keep: int) -> None:
        cur.execute(
            self.engine.sql("SELECT COUNT(*) FROM notifications WHERE user_id = ?"), (user_id,)
        )
        excess = int(cur.fetchone()[0]) - keep
        if excess <= 0:
            return
        cur.execute(
            self.engine.sql(
                "DELETE FROM notifications WHERE id IN (SELECT id FROM notifications"
                " WHERE user_id = ? ORDER BY CASE WHEN read_at IS NULL THEN 1 ELSE 0 END,"
                " created_at, id LIMIT ?)"
            ),
            (user_id, excess),
        )

    def _insert_notification(self, cur: Any, n: Notification) -> None:
        cur.execute(
            self.engine.sql(
                "INSERT INTO notifications (id, user_id, type, title, message, data, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)"
            ),
            (
                n.id,
                n.user_id,
                n.type,
                n.title,
                n.message,
                None if n.data is None else json.dumps(n.data),
                n.created_at_ms,
            ),
        )

    def unread_notifications(self, user_id: str, limit: int) -> Deferred[list[Notification]]:
        return self.run(self._unread_notifications, user_id, limit)

    def _unread_notifications(self, cur: Any, user_id: str, limit: int) -> list[Notification]:
        cur.execute(
            self.engine.sql(
                "SELECT id, user_id, type, title, message, data, created_at FROM notifications"
                " WHERE user_id = ? AND read_at IS NULL ORDER BY created_at, id LIMIT ?"
            ),
            (user_id, limit),
        )
        return [
            Notification(
                row[0],
                row[1],
                row[2],
                row[3],
                row[4],
                None if row[5] is None else json.loads(row[5]),
                int(row[6]),
            )
            for row in cur.fetchall()
        ]

    def ack_notification(self, user_id: str, notification_id: str, at_ms: int) -> Deferred[bool]:
        return self.run(self._ack_notification, user_id, notification_id, at_ms)

    def _ack_notification(self, cur: Any, user_id: str, notification_id: str, at_ms: int) -> bool:
        """True when the notification is the user's (acking twice is fine)."""
        cur.execute(
            self.engine.sql(
                "UPDATE notifications SET read_at = COALESCE(read_at, ?) WHERE id = ? AND user_id = ?"
            ),
            (at_ms, notification_id, user_id),
        )
        return cur.rowcount == 1

    # -- direct-message rooms ----------------------------------------------------------

    def ensure_dm_room(self, room: Room, a: str, b: str) -> Deferred[None]:
        return self.run(self._ensure_dm_room, room, a, b)

    def _ensure_dm_room(self, cur: Any, room: Room, a: str, b: str) -> None:
        sql = self.engine.sql
        cur.execute(
            sql(
                "INSERT INTO rooms (id, name, description, type, created_by, created_at, last_seq, kind)"
                " VALUES (?, ?, '', 'private', ?, ?, 0, 'dm') ON CONFLICT (id) DO NOTHING"
            ),
            (room.id, room.name, a, room.created_at_ms),
        )
        if cur.rowcount == 1:
            self.engine.insert_many(
                cur,
                "INSERT INTO room_members (room_id, user_id, joined_at) VALUES (?, ?, ?)",
                [(room.id, a, room.created_at_ms), (room.id, b, room.created_at_ms)],
            )


class StreamQueries:
    """Mixed into SqlStore: persisted stream host and status."""

    engine: Any

    def run(self, work: Any, *args: Any) -> Deferred[Any]:  # provided by SqlStore
        raise TypeError("StreamQueries is a mixin of SqlStore")

    def get_stream(self, stream_id: str) -> Deferred[tuple[str, str, str] | None]:
        """(host_id, status, title) or None."""
        return self.run(self._get_stream, stream_id)

    def _get_stream(self, cur: Any, stream_id: str) -> tuple[str, str, str] | None:
        cur.execute(
            self.engine.sql("SELECT host_id, status, title FROM streams WHERE id = ?"), (stream_id,)
        )
        row = cur.fetchone()
        return (row[0], row[1], row[2]) if row else None

    def set_stream_status(
        self, stream_id: str, user_id: str, status: str, at_ms: int
    ) -> Deferred[tuple[str, str] | None]:
        return self.run(self._set_stream_status, stream_id, user_id, status, at_ms)

    def _set_stream_status(
        self, cur: Any, stream_id: str, user_id: str, status: str, at_ms: int
    ) -> tuple[str, str] | None:
        """Start or end a stream as ``user_id``.  The first to start an
        unknown stream becomes its host.  Returns (host, previous status),
        or None when the user is not the host (nothing changed)."""
        sql = self.engine.sql
        cur.execute(
            sql(
                "INSERT INTO streams (id, host_id, status, created_at, updated_at) VALUES (?, ?, 'idle', ?, ?)"
                " ON CONFLICT (id) DO NOTHING"
            ),
            (stream_id, user_id, at_ms, at_ms),
        )
        found = self._get_stream(cur, stream_id)
        assert found is not None
        host, previous, _ = found
        if host != user_id:
            return None
        cur.execute(
            sql("UPDATE streams SET status = ?, updated_at = ? WHERE id = ?"),
            (status, at_ms, stream_id),
        )
        return host, previous

    def put_stream(
        self, stream_id: str, host_id: str, title: str | None, at_ms: int
    ) -> Deferred[None]:
        """The backend names the host (HTTP API): create or update."""
        return self.run(self._put_stream, stream_id, host_id, title, at_ms)

    def _put_stream(
        self, cur: Any, stream_id: str, host_id: str, title: str | None, at_ms: int
    ) -> None:
        cur.execute(
            self.engine.sql(
                "INSERT INTO streams (id, host_id, title, status, created_at, updated_at) VALUES (?, ?, ?, 'idle', ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET host_id = excluded.host_id,"
                " title = COALESCE(?, streams.title), updated_at = excluded.updated_at"
            ),
            (stream_id, host_id, title or "", at_ms, at_ms, title),
        )
