"""The social layer of PROTOCOL.md section 4: direct messages, presence,
friends and notifications.

It is built on the same pieces as rooms: a direct message is a message in
a two-member private room, stored by the same group-committing store and
fanned out by the same broker and registry; presence and notifications go
to ``user:<id>`` channels, so the Redis broker will carry them between
nodes unchanged.

Presence: ``user:online`` goes out when a user's first connection opens,
``user:offline {userId, lastSeen}`` when the last one has been closed for
``grace`` seconds (a page reload does not flap).  Both go only to the
user's audience — friends and members of the user's rooms — and only to
those of them who are online; ``status:request`` answers only about that
audience.  Who is online is asked of an ``OnlineDirectory`` so a cluster-wide
one can replace the local counts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, DeferredLock, inlineCallbacks, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from chatd.clock import iso_from_ms, now_iso, now_ms
from chatd.domain.chat import DIRECT_ROOM_PREFIX, ChatService, encode, new_id
from chatd.domain.interfaces import Connection, PresenceTracker, Store
from chatd.domain.models import Message, NewMessage, Notification, Published, Room
from chatd.domain.registry import BROADCAST_CHANNEL, LocalRegistry, user_channel
from chatd.errors import ChatError, ErrorCode

log = Logger()

DM_POLICIES = ("anyone", "friends")
PRESENCE_GRACE = 3.0
NOTIFICATIONS_ON_CONNECT = 100


def dm_room_id(a: str, b: str) -> str:
    """The direct-message room of a pair, the same whoever writes first
    (a hash, so any characters in user ids are safe in a room id)."""
    first, second = sorted((a, b))
    digest = hashlib.sha256(f"{first}\x00{second}".encode()).hexdigest()[:32]
    return DIRECT_ROOM_PREFIX + digest


class Presence:
    """Counts each user's local connections and announces the transitions
    (through ``SocialService``) with a grace period before offline."""

    def __init__(
        self,
        clock: IReactorTime,
        grace: float = PRESENCE_GRACE,
        wall_clock: Callable[[], int] = now_ms,
    ) -> None:
        self._clock = clock
        self._grace = grace
        self._wall_clock = wall_clock
        self._counts: dict[str, int] = {}
        self._going: dict[str, IDelayedCall] = {}
        self._closed_at: dict[str, int] = {}
        self.on_online: Callable[[str], None] | None = None
        self.on_offline: Callable[[str, int], None] | None = None

    def is_online(self, user_id: str) -> bool:
        return user_id in self._counts or user_id in self._going

    def online_among(self, user_ids: list[str]) -> list[str]:
        return [u for u in user_ids if self.is_online(u)]

    def connections(self, user_id: str) -> int:
        return self._counts.get(user_id, 0)

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
        if self.on_online is not None:
            self.on_online(user_id)

    def closed(self, user_id: str) -> None:
        count = self._counts.get(user_id, 0) - 1
        if count > 0:
            self._counts[user_id] = count
            return
        self._counts.pop(user_id, None)
        if user_id not in self._going:
            self._closed_at[user_id] = self._wall_clock()
            self._going[user_id] = self._clock.callLater(self._grace, self._gone, user_id)

    def _gone(self, user_id: str) -> None:
        """The grace period ran out: offline, last seen when the last
        connection closed (not now)."""
        self._going.pop(user_id, None)
        closed_at = self._closed_at.pop(user_id, self._wall_clock())
        if self.on_offline is not None:
            self.on_offline(user_id, closed_at)

    def connection_counts(self, user_ids: list[str]) -> Deferred[dict[str, int]]:
        return succeed({u: self._counts.get(u, 0) for u in user_ids})

    def connected_users(self) -> Deferred[dict[str, int]]:
        return succeed(dict(self._counts))

    def total_connections(self) -> Deferred[int]:
        return succeed(sum(self._counts.values()))

    def local_counts(self) -> dict[str, int]:
        return self._counts

    def stop(self) -> None:
        for call in self._going.values():
            if call.active():
                call.cancel()
        self._going.clear()


class SocialService:
    def __init__(
        self,
        chat: ChatService,
        registry: LocalRegistry,
        presence: PresenceTracker,
        dm_policy: str = "anyone",
    ) -> None:
        self.chat = chat
        self.store: Store = chat.store
        self.registry = registry
        self.presence = presence
        self.dm_policy = dm_policy
        presence.on_online = self._announce_online
        presence.on_offline = self._went_offline
        chat.direct_rooms = self
        self._dm_locks: dict[str, DeferredLock] = {}

    def _push_to_user(
        self, user_id: str, event_type: str, data: dict[str, Any], **routing: Any
    ) -> None:
        self.chat.publish(user_channel(user_id), Published(event_type, encode(data), **routing))

    # -- connections ---------------------------------------------------------------

    def connection_opened(self, conn: Connection) -> None:
        """After ``authenticated``: remember the user, count the connection,
        then hand over the notifications still waiting, oldest first."""
        identity = conn.identity
        assert identity is not None
        self.presence.opened(identity.user_id)
        d = self.store.open_session(
            identity.user_id, identity.name, now_ms(), NOTIFICATIONS_ON_CONNECT
        )
        d.addCallback(self._hand_over, conn)
        d.addErrback(
            lambda f: log.failure("opening the session of {user} failed", f, user=identity.user_id)
        )

    @staticmethod
    def _hand_over(notifications: list[Notification], conn: Connection) -> None:
        for notification in notifications:
            conn.send_event("notification", notification.to_wire())

    def connection_closed(self, conn: Connection) -> None:
        if conn.identity is not None:
            self.presence.closed(conn.identity.user_id)

    # -- presence --------------------------------------------------------------------

    @inlineCallbacks
    def _audience_online(self, user_id: str):
        audience = yield self.store.presence_audience(user_id)
        return self.presence.online_among(audience)

    def _announce_online(self, user_id: str) -> None:
        d = self._audience_online(user_id)
        d.addCallback(self._tell, "user:online", {"userId": user_id})
        d.addErrback(lambda f: log.failure("announcing {user} online failed", f, user=user_id))

    def _went_offline(self, user_id: str, at: int) -> Deferred[None]:
        d = self.store.close_session(user_id, at)
        d.addCallback(self.presence.online_among)
        d.addCallback(self._tell, "user:offline", {"userId": user_id, "lastSeen": iso_from_ms(at)})
        d.addErrback(lambda f: log.failure("announcing {user} offline failed", f, user=user_id))
        return d

    def _tell(self, audience: list[str], event_type: str, data: dict[str, Any]) -> None:
        """One encoding, one publish for every online member of the audience."""
        self.chat.publish_many(
            [user_channel(u) for u in audience], Published(event_type, encode(data))
        )

    @inlineCallbacks
    def online_status(self, conn: Connection):
        """``status:request``: who of this user's audience is online."""
        online = yield self._guarded(self._audience_online(_user(conn)))
        return {"userIds": online}

    # -- direct messages ---------------------------------------------------------------

    def send_direct(
        self,
        conn: Connection,
        recipient: str,
        content: str,
        temp_id: str | None,
        session_id: str | None,
    ) -> Deferred[dict[str, Any]]:
        """Direct messages of one pair are handled one at a time, in arrival
        order: the checks before the store are asynchronous, and two quick
        messages must not swap on their way to it."""
        room_id = dm_room_id(_user(conn), recipient)
        lock = self._dm_locks.get(room_id)
        if lock is None:
            lock = self._dm_locks[room_id] = DeferredLock()
        d = lock.run(self._send_direct, conn, recipient, content, temp_id, session_id)

        def release(result: Any) -> Any:
            if not lock.locked and not lock.waiting and self._dm_locks.get(room_id) is lock:
                del self._dm_locks[room_id]
            return result

        return d.addBoth(release)

    @inlineCallbacks
    def _send_direct(
        self,
        conn: Connection,
        recipient: str,
        content: str,
        temp_id: str | None,
        session_id: str | None,
    ):
        sender = _user(conn)
        if recipient == sender:
            raise ChatError(ErrorCode.INVALID_MESSAGE, "recipientId must be another user")
        self.chat.check_content(content)
        yield self._require_known(recipient)
        if self.dm_policy == "friends" and not (
            yield self._guarded(self.store.are_friends(sender, recipient))
        ):
            raise ChatError(ErrorCode.FORBIDDEN, "direct messages are limited to friends")
        room_id = dm_room_id(sender, recipient)
        at = now_ms()
        yield self._guarded(
            self.store.ensure_dm_room(Room(room_id, "", "", "private", 2, at, 0), sender, recipient)
        )
        message: Message = yield self._guarded(
            self.store.append_message(
                NewMessage(new_id("m_"), room_id, sender, content, temp_id, at)
            )
        )
        self.chat.message_stored(message)
        wire = self._dm_wire(message, recipient, session_id)
        self._push_to_user(recipient, "message:receive", {"message": wire})
        self._push_to_user(
            sender, "message:receive", {"message": wire}, skip_connection=conn.connection_id
        )
        if not self.presence.connections(recipient):
            # Nobody to push to (a user in the presence grace period counts
            # as online, but has no connection to receive this): leave a notification, delivered on the
            # recipient's next connection, that says where to look.
            name = (
                conn.identity.name if conn.identity is not None and conn.identity.name else sender
            )
            yield self._notify_quietly(
                recipient,
                "direct_message",
                f"New message from {name}",
                content[:200],
                {"chatId": message.chat_id, "messageId": message.id, "senderId": sender},
            )
        return {"message": wire}

    @inlineCallbacks
    def send_in_direct_room(
        self, conn: Connection, room_id: str, content: str, temp_id: str | None
    ):
        """``chat:message`` into a DM room: the same rules and pushes as
        ``message:send`` (dm_policy, message:receive), answered in the shape
        of a chat:message ack."""
        user = _user(conn)
        members = yield self._guarded(self.store.members(room_id))
        if user not in members:
            raise ChatError(ErrorCode.NOT_A_MEMBER, f"you are not a member of room {room_id}")
        others = [m for m in members if m != user]
        if not others:
            raise ChatError(ErrorCode.INVALID_MESSAGE, f"room {room_id} has no other member")
        result = yield self.send_direct(conn, others[0], content, temp_id, None)
        message = result["message"]
        ack = {"id": message["id"], "seq": message["seq"], "createdAt": message["createdAt"]}
        if temp_id is not None:
            ack["tempId"] = temp_id
        return ack

    @staticmethod
    def _dm_wire(message: Message, recipient: str, session_id: str | None) -> dict[str, Any]:
        wire = message.to_wire()
        wire["senderId"] = message.user_id
        wire["recipientId"] = recipient
        if session_id is not None:
            wire["sessionId"] = session_id
        return wire

    # -- friends -----------------------------------------------------------------------

    @inlineCallbacks
    def request_friend(self, conn: Connection, target: str):
        user = yield self._other_known_user(conn, target)
        outcome = yield self._guarded(self.store.request_friend(user, target, now_ms()))
        if outcome == "requested":
            self._push_to_user(target, "friend:request", {"fromUserId": user})
            yield self._notify_quietly(
                target,
                "friend_request",
                "Friend request",
                f"{conn.identity.name or user} sent you a friend request",
                {"fromUserId": user},
            )
        elif outcome == "accepted":
            self.became_friends(user, target)
        return {}

    @inlineCallbacks
    def _other_known_user(self, conn: Connection, other: str):
        user = _user(conn)
        if other == user:
            raise ChatError(ErrorCode.INVALID_MESSAGE, "userId must be another user")
        yield self._require_known(other)
        return user

    @inlineCallbacks
    def accept_friend(self, conn: Connection, requester: str):
        user = yield self._other_known_user(conn, requester)
        if not (yield self._guarded(self.store.accept_friend(user, requester, now_ms()))):
            if (yield self._guarded(self.store.are_friends(user, requester))):
                return {}
            raise ChatError(
                ErrorCode.INVALID_MESSAGE, f"no pending friend request from {requester}"
            )
        self.became_friends(user, requester)
        return {}

    def became_friends(self, a: str, b: str) -> None:
        """Both hear ``friend:accepted``; presence audiences follow at once."""
        self._push_to_user(a, "friend:accepted", {"userId": b})
        self._push_to_user(b, "friend:accepted", {"userId": a})
        for subject, viewer in ((a, b), (b, a)):
            if self.presence.is_online(subject):
                self._push_to_user(viewer, "user:online", {"userId": subject})

    @inlineCallbacks
    def decline_friend(self, conn: Connection, requester: str):
        user = yield self._other_known_user(conn, requester)
        yield self._guarded(self.store.decline_friend(user, requester, now_ms()))
        return {}

    @inlineCallbacks
    def remove_friend(self, conn: Connection, other: str):
        user = yield self._other_known_user(conn, other)
        yield self._guarded(self.store.remove_friend(user, other))
        return {}

    @inlineCallbacks
    def friends(self, conn: Connection):
        lists = yield self._guarded(self.store.friend_lists(_user(conn)))
        return {
            "friends": [{"userId": f, "online": self.presence.is_online(f)} for f in lists.friends],
            "incoming": [r.to_wire() for r in lists.incoming],
            "outgoing": [r.to_wire() for r in lists.outgoing],
        }

    # -- notifications and pushes ---------------------------------------------------------

    @inlineCallbacks
    def notify(self, user_id: str, kind: str, title: str, message: str, data: Any = None):
        """Store a notification and deliver it to the user's connections now
        (if any); it is handed over again on every new connection until the
        user acknowledges it."""
        notification = Notification(new_id("n_"), user_id, kind, title, message, data, now_ms())
        yield self._guarded(self.store.add_notification(notification))
        self._push_to_user(user_id, "notification", notification.to_wire())
        return notification

    def _notify_quietly(
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

    @inlineCallbacks
    def ack_notification(self, conn: Connection, notification_id: str):
        if not (
            yield self._guarded(self.store.ack_notification(_user(conn), notification_id, now_ms()))
        ):
            raise ChatError(ErrorCode.INVALID_MESSAGE, f"no notification {notification_id} for you")
        return {}

    def push_message(self, user_ids: list[str] | None, kind: str, data: Any) -> None:
        """The free-form backend push ``message {type, data, timestamp}``
        to some users' connections, or to everyone (``user_ids=None``)."""
        event = Published("message", encode({"type": kind, "data": data, "timestamp": now_iso()}))
        channels = [BROADCAST_CHANNEL] if user_ids is None else [user_channel(u) for u in user_ids]
        self.chat.publish_many(channels, event)

    @inlineCallbacks
    def _require_known(self, user_id: str):
        """A user is known once connected (online now, or recorded by an
        earlier connection) or made a member of a room."""
        if self.presence.is_online(user_id):
            return
        if not (yield self._guarded(self.store.user_exists(user_id))):
            raise ChatError(ErrorCode.USER_NOT_FOUND, f"user {user_id} is not known here")

    def _guarded(self, d: Deferred[Any]) -> Deferred[Any]:
        return self.chat.guard(d)


def _user(conn: Connection) -> str:
    assert conn.identity is not None
    return conn.identity.user_id
