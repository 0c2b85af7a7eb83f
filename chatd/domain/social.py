"""The social layer of PROTOCOL.md section 4: direct messages, presence,
friends and notifications.

It is built on the same pieces as rooms: a direct message is a message in
a two-member private room, stored by the same group-committing store and
fanned out by the same broker and registry; presence and notifications go
to ``user:<id>`` channels, so the Redis broker will carry them between
nodes unchanged.

Presence (counting, the grace period, who hears ``user:online`` and
``user:offline``) is ``chatd.domain.presence``'s: this service counts its
connections in the ``PresenceTracker`` it is given and asks the
``PresenceAnnouncer`` for the presence pushes of a new friendship and the
answer to ``status:request``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from chatd.clock import WallClock, iso_from_ms
from chatd.domain.chat import ChatService
from chatd.domain.direct import DM_POLICIES, DirectMessages, dm_room_id
from chatd.domain.interfaces import Caller, Connection, PresenceTracker, Store
from chatd.domain.models import Notification, Published
from chatd.domain.notifications import Notifications
from chatd.domain.presence import PresenceAnnouncer
from chatd.domain.publishing import encode, guard
from chatd.domain.registry import BROADCAST_CHANNEL, LocalRegistry, user_channel
from chatd.errors import ChatError, ErrorCode

__all__ = ["DM_POLICIES", "SocialService", "dm_room_id"]

log = Logger()

NOTIFICATIONS_ON_CONNECT = 100

FRIEND_REQUEST_COOLDOWN = 86400.0
"""Seconds after a friend request's notification in which another request
from the same user to the same user (once withdrawn or declined, asked
again) is stored but pushes and notifies nothing."""


class SocialService:
    def __init__(
        self,
        chat: ChatService,
        registry: LocalRegistry,
        presence: PresenceTracker,
        announcer: PresenceAnnouncer,
        direct: DirectMessages,
        notifications: Notifications,
        wall_clock: WallClock,
        friend_request_cooldown: float = FRIEND_REQUEST_COOLDOWN,
        max_pending_requests: int | None = None,
    ) -> None:
        self.chat = chat
        self.max_pending_requests = max_pending_requests
        self.friend_request_cooldown_ms = int(friend_request_cooldown * 1000)
        self.store: Store = chat.store
        self.registry = registry
        self.presence = presence
        self.direct = direct
        self.notifications = notifications
        self.wall_clock = wall_clock
        self.announcer = announcer

    # -- connections ---------------------------------------------------------------

    def connection_opened(self, conn: Connection) -> None:
        """After ``authenticated``: remember the user, count the connection,
        then hand over the notifications still waiting, oldest first."""
        identity = conn.identity
        assert identity is not None
        self.presence.opened(identity.user_id)
        d = self.store.open_session(
            identity.user_id, identity.name, self.wall_clock.now_ms(), NOTIFICATIONS_ON_CONNECT
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

    def online_status(self, caller: Caller) -> Deferred[dict[str, Any]]:
        """``status:request``: who of this user's audience is online."""
        return guard(self.announcer.status(_user(caller), self.presence))

    # -- direct messages ---------------------------------------------------------------

    def send_direct(
        self,
        caller: Caller,
        recipient: str,
        content: str,
        temp_id: str | None,
        session_id: str | None,
    ) -> Deferred[dict[str, Any]]:
        """``message:send`` (``chat:message`` into a DM room lands in the
        same ``DirectMessages`` through ``ChatService.send_message``)."""
        return self.direct.send(caller, recipient, content, temp_id, session_id)

    # -- friends -----------------------------------------------------------------------

    def request_friend(self, caller: Caller, target: str) -> Deferred[dict[str, Any]]:
        return Deferred.fromCoroutine(self._request_friend(caller, target))

    async def _request_friend(self, caller: Caller, target: str) -> dict[str, Any]:
        user = await self._other_known_user(caller, target)
        await self._ask(user, target, _name(caller))
        return {}

    def request_friend_for_backend(self, from_user: str, to_user: str) -> Deferred[str]:
        """``POST /api/friend-requests``: the backend asks on ``from_user``'s
        behalf, with exactly the effects of that user's ``friend:request``
        (stored, pushed, a notification kept for later).  The backend is the
        authority on its users, so neither needs to have connected here
        (as for ``set_friendship``).  Returns the store's outcome:
        'requested', 'pending', 'friends' or 'accepted'."""
        return Deferred.fromCoroutine(self._request_for_backend(from_user, to_user))

    async def _request_for_backend(self, from_user: str, to_user: str) -> str:
        if from_user == to_user:
            raise ChatError(ErrorCode.INVALID_MESSAGE, "a friend request needs two different users")
        return await self._ask(from_user, to_user, from_user)

    async def _ask(self, user: str, target: str, shown_as: str) -> str:
        """Store the request and make its pushes: ``friend:request`` and a
        ``friend_request`` notification for a new one, ``friend:accepted``
        when the target had asked first, nothing otherwise.  A new request
        that repeats one the target was notified of within the cooldown
        (request, withdraw, request...) is stored without either: one
        user cannot make another's client ring over and over."""
        at = self.wall_clock.now_ms()
        outcome: str = await guard(
            self.store.request_friend(user, target, at, self.max_pending_requests)
        )
        if outcome == "limit":
            raise ChatError(
                ErrorCode.RATE_LIMIT_EXCEEDED,
                f"{user} has {self.max_pending_requests} friend requests waiting for an answer"
                " already; withdraw some (friend:remove) or wait",
            )
        if outcome == "requested" and await self._repeated(user, target, at):
            log.info(
                "friend request from {user} to {target} repeated within the cooldown: no push",
                event="friend.request_repeated",
                user=user,
                target=target,
            )
        elif outcome == "requested":
            self.chat.publisher.to_user(target, "friend:request", {"fromUserId": user})
            await self.notifications.notify_quietly(
                target,
                "friend_request",
                "Friend request",
                f"{shown_as} sent you a friend request",
                {"fromUserId": user},
            )
        elif outcome == "accepted":
            self.became_friends(user, target)
        return outcome

    async def _repeated(self, user: str, target: str, at: int) -> bool:
        cooldown = self.friend_request_cooldown_ms
        if cooldown <= 0:
            return False
        since = at - cooldown
        repeated: bool = await guard(self.store.renew_friend_request_notice(user, target, since))
        return repeated

    async def _other_known_user(self, caller: Caller, other: str) -> str:
        user = _user(caller)
        if other == user:
            raise ChatError(ErrorCode.INVALID_MESSAGE, "userId must be another user")
        await self.direct.require_known(other)
        return user

    def accept_friend(self, caller: Caller, requester: str) -> Deferred[dict[str, Any]]:
        return Deferred.fromCoroutine(self._accept_friend(caller, requester))

    async def _accept_friend(self, caller: Caller, requester: str) -> dict[str, Any]:
        user = await self._other_known_user(caller, requester)
        at = self.wall_clock.now_ms()
        if not await guard(self.store.accept_friend(user, requester, at)):
            if await guard(self.store.are_friends(user, requester)):
                return {}
            raise ChatError(
                ErrorCode.INVALID_MESSAGE, f"no pending friend request from {requester}"
            )
        self.became_friends(user, requester)
        return {}

    def became_friends(self, a: str, b: str) -> None:
        """Both hear ``friend:accepted``; presence audiences follow at once."""
        self.chat.publisher.to_user(a, "friend:accepted", {"userId": b})
        self.chat.publisher.to_user(b, "friend:accepted", {"userId": a})
        self.announcer.befriended(a, b, self.presence)

    def set_friendship(self, a: str, b: str, present: bool) -> Deferred[bool]:
        """Backend (``PUT``/``DELETE /api/friendships``): make or end a
        friendship outright, settling any pending request; True when it
        changed.  A new friendship is announced like an accepted request."""
        return Deferred.fromCoroutine(self._set_friendship(a, b, present))

    async def _set_friendship(self, a: str, b: str, present: bool) -> bool:
        if a == b:
            raise ChatError(ErrorCode.INVALID_MESSAGE, "a friendship needs two different users")
        at = self.wall_clock.now_ms()
        changed: bool = await guard(self.store.set_friendship(a, b, present, at))
        if changed and present:
            self.became_friends(a, b)
        return changed

    def decline_friend(self, caller: Caller, requester: str) -> Deferred[dict[str, Any]]:
        return Deferred.fromCoroutine(self._decline_friend(caller, requester))

    async def _decline_friend(self, caller: Caller, requester: str) -> dict[str, Any]:
        user = await self._other_known_user(caller, requester)
        await guard(self.store.decline_friend(user, requester, self.wall_clock.now_ms()))
        return {}

    def remove_friend(self, caller: Caller, other: str) -> Deferred[dict[str, Any]]:
        return Deferred.fromCoroutine(self._remove_friend(caller, other))

    async def _remove_friend(self, caller: Caller, other: str) -> dict[str, Any]:
        user = await self._other_known_user(caller, other)
        await guard(self.store.remove_friend(user, other))
        return {}

    def friends(self, caller: Caller) -> Deferred[dict[str, Any]]:
        return Deferred.fromCoroutine(self._friends(caller))

    async def _friends(self, caller: Caller) -> dict[str, Any]:
        lists = await guard(self.store.friend_lists(_user(caller)))
        return {
            "friends": [{"userId": f, "online": self.presence.is_online(f)} for f in lists.friends],
            "incoming": [r.to_wire() for r in lists.incoming],
            "outgoing": [r.to_wire() for r in lists.outgoing],
        }

    # -- notifications and pushes ---------------------------------------------------------

    def notify(
        self, user_id: str, kind: str, title: str, message: str, data: Any = None
    ) -> Deferred[Notification]:
        """Store a notification and deliver it to the user's connections now
        (if any); it is handed over again on every new connection until the
        user acknowledges it."""
        return self.notifications.notify(user_id, kind, title, message, data)

    def ack_notification(self, caller: Caller, notification_id: str) -> Deferred[dict[str, Any]]:
        d = self.notifications.acknowledge(_user(caller), notification_id)
        return d.addCallback(lambda _: {})

    def push_message(self, user_ids: list[str] | None, kind: str, data: Any) -> None:
        """The free-form backend push ``message {type, data, timestamp}``
        to some users' connections, or to everyone (``user_ids=None``)."""
        timestamp = iso_from_ms(self.wall_clock.now_ms())
        event = Published("message", encode({"type": kind, "data": data, "timestamp": timestamp}))
        channels = [BROADCAST_CHANNEL] if user_ids is None else [user_channel(u) for u in user_ids]
        self.chat.publish_many(channels, event)

    def last_seen(self, user_id: str) -> Deferred[int | None]:
        """When the user's last connection closed (None: never seen)."""
        return guard(self.store.last_seen(user_id))

    def _guarded(self, d: Deferred[Any]) -> Deferred[Any]:
        return guard(d)


def _name(caller: Caller) -> str:
    """How notifications name the caller: their display name, else their id."""
    identity = caller.identity
    assert identity is not None
    return identity.name or identity.user_id


def _user(caller: Caller) -> str:
    identity = caller.identity
    assert identity is not None
    return identity.user_id
