"""Direct messages (PROTOCOL.md ``message:send``): a message in the
two-member private room of a pair, stored by the same group-committing
store and fanned out by the same broker as room messages.

Both ways in land here: ``message:send {recipientId}`` and a
``chat:message`` (WebSocket or HTTP) into a ``dm_…`` room, so every direct
message gets the same checks (``dm_policy``), the same ``message:receive``
pushes and the same notification for a recipient with no connection.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, DeferredLock

from chatd.clock import WallClock
from chatd.domain.interfaces import Caller, PresenceTracker, Store
from chatd.domain.models import (
    DIRECT_ROOM_PREFIX,
    Limits,
    Message,
    NewMessage,
    Published,
    Room,
    dm_room_id,
)
from chatd.domain.notifications import Notifications
from chatd.domain.publishing import Publisher, encode, guard, new_id
from chatd.domain.registry import room_channel
from chatd.errors import ChatError, ErrorCode

DM_POLICIES = ("anyone", "friends")
NOTIFIED_CHARACTERS = 200


def is_direct_room(room_id: str) -> bool:
    """Direct-message rooms have ids of their own (see ``dm_room_id``); no
    other room may take that prefix."""
    return room_id.startswith(DIRECT_ROOM_PREFIX)


def publish_room_message(publisher: Publisher, message: Message) -> dict[str, Any]:
    """Publish a stored message to its room as ``chat:message``; return its
    wire form (rooms and direct messages share this)."""
    wire = message.to_wire()
    publisher.publish(
        room_channel(message.chat_id), Published("chat:message", encode(wire), seq=message.seq)
    )
    return wire


class DirectMessages:
    def __init__(
        self,
        store: Store,
        publisher: Publisher,
        presence: PresenceTracker,
        notifications: Notifications,
        limits: Limits,
        wall_clock: WallClock,
        dm_policy: str = "anyone",
    ) -> None:
        if dm_policy not in DM_POLICIES:
            raise ValueError(f"dm_policy must be one of {DM_POLICIES}")
        self._store = store
        self._publisher = publisher
        self._presence = presence
        self._notifications = notifications
        self._limits = limits
        self._wall_clock = wall_clock
        self.dm_policy = dm_policy
        self._locks: dict[str, DeferredLock] = {}

    def send(
        self,
        caller: Caller,
        recipient: str,
        content: str,
        temp_id: str | None,
        session_id: str | None,
    ) -> Deferred[dict[str, Any]]:
        """``message:send``.  Direct messages of one pair are handled one at
        a time, in arrival order: the checks before the store are
        asynchronous, and two quick messages must not swap on their way."""
        room_id = dm_room_id(_user(caller), recipient)
        lock = self._locks.get(room_id)
        if lock is None:
            lock = self._locks[room_id] = DeferredLock()

        def send() -> Deferred[dict[str, Any]]:
            return Deferred.fromCoroutine(
                self._send(caller, recipient, content, temp_id, session_id)
            )

        d = lock.run(send)

        def release(result: Any) -> Any:
            if not lock.locked and not lock.waiting and self._locks.get(room_id) is lock:
                del self._locks[room_id]
            return result

        return d.addBoth(release)

    def send_in_room(
        self, caller: Caller, room_id: str, content: str, temp_id: str | None
    ) -> Deferred[dict[str, Any]]:
        """A ``chat:message`` into a DM room: exactly a ``message:send`` to
        the other member (answered with its ``{message}``)."""
        return Deferred.fromCoroutine(self._send_in_room(caller, room_id, content, temp_id))

    async def _send_in_room(
        self, caller: Caller, room_id: str, content: str, temp_id: str | None
    ) -> dict[str, Any]:
        user = _user(caller)
        members = await guard(self._store.members(room_id))
        if user not in members:
            raise ChatError(ErrorCode.NOT_A_MEMBER, f"you are not a member of room {room_id}")
        others = [m for m in members if m != user]
        if not others:
            raise ChatError(ErrorCode.INVALID_MESSAGE, f"room {room_id} has no other member")
        result: dict[str, Any] = await self.send(caller, others[0], content, temp_id, None)
        return result

    async def _send(
        self,
        caller: Caller,
        recipient: str,
        content: str,
        temp_id: str | None,
        session_id: str | None,
    ) -> dict[str, Any]:
        sender = _user(caller)
        if recipient == sender:
            raise ChatError(ErrorCode.INVALID_MESSAGE, "recipientId must be another user")
        self._limits.check_content(content)
        await self.require_known(recipient)
        if self.dm_policy == "friends" and not await guard(
            self._store.are_friends(sender, recipient)
        ):
            raise ChatError(ErrorCode.FORBIDDEN, "direct messages are limited to friends")
        room_id = dm_room_id(sender, recipient)
        at = self._wall_clock.now_ms()
        draft = Room(room_id, "", "", "private", 2, at, 0)
        await guard(self._store.ensure_dm_room(draft, sender, recipient))
        identity = caller.identity
        name = identity.name if identity is not None else None
        message: Message = await guard(
            self._store.append_message(
                NewMessage(new_id("m_"), room_id, sender, content, temp_id, at, name)
            )
        )
        publish_room_message(self._publisher, message)
        wire = _dm_wire(message, recipient, session_id)
        self._publisher.to_user(recipient, "message:receive", {"message": wire})
        self._publisher.to_user(
            sender, "message:receive", {"message": wire}, skip_connection=caller.connection_id
        )
        if not self._presence.connections(recipient):
            # Nobody to push to (a user in the presence grace period counts
            # as online, but has no connection to receive this): leave a
            # notification, delivered on the next connection, that says
            # where to look.
            await self._notify_offline(caller, recipient, message)
        return {"message": wire}

    def _notify_offline(self, caller: Caller, recipient: str, message: Message) -> Deferred[None]:
        identity = caller.identity
        sender = message.user_id
        name = identity.name if identity is not None and identity.name else sender
        return self._notifications.notify_quietly(
            recipient,
            "direct_message",
            f"New message from {name}",
            message.content[:NOTIFIED_CHARACTERS],
            {"chatId": message.chat_id, "messageId": message.id, "senderId": sender},
        )

    async def require_known(self, user_id: str) -> None:
        """A user is known once connected (online now, or recorded by an
        earlier connection) or made a member of a room."""
        if self._presence.is_online(user_id):
            return
        if not await guard(self._store.user_exists(user_id)):
            raise ChatError(ErrorCode.USER_NOT_FOUND, f"user {user_id} is not known here")


def _dm_wire(message: Message, recipient: str, session_id: str | None) -> dict[str, Any]:
    wire = message.to_wire()
    wire["senderId"] = message.user_id
    wire["recipientId"] = recipient
    if session_id is not None:
        wire["sessionId"] = session_id
    return wire


def _user(caller: Caller) -> str:
    identity = caller.identity
    assert identity is not None, "domain operations run only for authenticated callers"
    return identity.user_id
