"""Rooms and messages: the rules of PROTOCOL.md section 4 "Rooms and
messages", independent of any wire binding.

Operations that need no live connection take a ``Caller`` (a connection,
or the HTTP API acting for a user); joins, leaves and typing take the
``Connection``.  Each returns the result data, or a Deferred of it (or an
``Outcome`` when something must follow the reply).  Failures are
``ChatError`` with a protocol code; storage outages arrive as
``StoreUnavailable`` and become ``UNAVAILABLE``.  Backend-only operations
(a room with a chosen id and no creator, posting for any user) are methods
of their own, named so.

Async style: operations are ``async def`` coroutines wrapped with
``Deferred.fromCoroutine`` at the edge, except ``send_message``, the hot
path, which stays a plain chain of Deferred callbacks.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from json.encoder import encode_basestring_ascii
from typing import Any

from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.interfaces import IReactorTime

from chatd.clock import WallClock, iso_from_ms
from chatd.domain.direct import (
    DIRECT_ROOM_PREFIX,
    DirectMessages,
    is_direct_room,
    publish_room_message,
)
from chatd.domain.interfaces import Caller, Connection, OnlineDirectory, Store
from chatd.domain.models import (
    ActingUser,
    Limits,
    Message,
    MessagePage,
    NewMessage,
    Published,
    Room,
)
from chatd.domain.publishing import Publisher, encode, guard, new_id
from chatd.domain.registry import LocalRegistry, room_channel, user_channel
from chatd.domain.typing import TYPING_TIMEOUT, TypingTracker
from chatd.errors import ChatError, ErrorCode

__all__ = [
    "DIRECT_ROOM_PREFIX",
    "ChatService",
    "Limits",
    "Outcome",
    "encode",
    "is_direct_room",
    "new_id",
]

JOIN_PAGE = 50
SINCE_PAGE = 100
MAX_PAGE = 100

MAX_PAGE_BYTES = 256 * 1024
"""What the messages of one page (``chat:history``, the HTTP history, a
join snapshot) may add up to in JSON.  The count alone does not bound a
reply: 100 messages of 4,000 astral characters are 4.8 MB of ``\\uXXXX``
escapes.  A page cut by size says ``hasMore`` like one cut by count, so the
client pages on; it always holds at least one message.  Well below
``max_send_buffer`` (1 MiB by default), so that one page does not make a
connection a slow consumer by itself."""

_MESSAGE_JSON_FIXED = 110
"""A message's JSON apart from its strings: the keys, ``seq``,
``createdAt``, the punctuation and the comma between messages."""

MAX_ROOMS_PER_USER = 500
"""Rooms one user may create (``chat:create``), counted from storage."""

LEAVE_ROOM_CONTROL = "chatd:leave-room"
"""Control event on a user's channel: their connections leave a room."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """A result plus work that must run right after the reply is sent."""

    data: dict[str, Any]
    after_reply: Callable[[], None]


class _JoinInProgress:
    """A connection's join of a room that has not been answered yet: what
    the connection sends to that room meanwhile waits for it, in order."""

    __slots__ = ("_waiting",)

    def __init__(self) -> None:
        self._waiting: list[Deferred[None]] = []

    def wait(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        return d

    def release(self) -> None:
        """The join was answered (or failed): the waiting requests go on, in
        the order they arrived."""
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)


class ChatService:
    """``direct`` handles messages into ``dm_…`` rooms, whichever way they
    come in (without it such rooms behave like any private room)."""

    def __init__(
        self,
        store: Store,
        publisher: Publisher,
        registry: LocalRegistry,
        clock: IReactorTime,
        wall_clock: WallClock,
        limits: Limits,
        direct: DirectMessages | None = None,
        typing_timeout: float = TYPING_TIMEOUT,
        online: OnlineDirectory | None = None,
        max_rooms_per_user: int = MAX_ROOMS_PER_USER,
    ) -> None:
        self.store = store
        self.max_rooms_per_user = max_rooms_per_user
        self._creating: dict[str, DeferredLock] = {}
        self.publisher = publisher
        self.registry = registry
        self.wall_clock = wall_clock
        self.limits = limits
        self.online: OnlineDirectory = online if online is not None else registry
        self._direct = direct
        self._joins: dict[tuple[Caller, str], _JoinInProgress] = {}
        self.typing = TypingTracker(clock, self._announce_typing, typing_timeout)
        registry.on_control(LEAVE_ROOM_CONTROL, self._leave_room_control)

    # -- publishing (for the other services, which share this publisher) -------

    def publish(self, channel: str, event: Published) -> None:
        self.publisher.publish(channel, event)

    def publish_many(self, channels: list[str], event: Published) -> None:
        self.publisher.publish_many(channels, event)

    def publish_local(self, channel: str, event: Published) -> None:
        self.publisher.publish_local(channel, event)

    def publish_to_room(
        self, room_id: str, event_type: str, data: dict[str, Any], **routing: Any
    ) -> None:
        self.publisher.to_room(room_id, event_type, data, **routing)

    @staticmethod
    def guard(d: Deferred[Any]) -> Deferred[Any]:
        """Storage outages become UNAVAILABLE (for the other services)."""
        return guard(d)

    def pong(self) -> dict[str, Any]:
        """``ping``: the server's wall-clock time, for clock-skew estimates."""
        return {"timestamp": iso_from_ms(self.wall_clock.now_ms())}

    # -- create ----------------------------------------------------------------

    def create_room(
        self, caller: Caller, name: str, description: str, room_type: str, members: list[str]
    ) -> Deferred[dict[str, Any]]:
        """``chat:create``: the caller creates the room and is its first
        member, within the user's quota of rooms.

        One user's creations run one after another (``_one_at_a_time``):
        the quota's count and the insert cannot interleave with another of
        the user's creations (two tabs cannot both take the last room), and
        a user's backlog of creations holds at most one place at a time in
        the storage queue that every user's messages go through."""
        self.limits.check_room(name, description, len(members), by_backend=False)
        user = _user(caller)
        return self._one_at_a_time(
            user, lambda: self._create_room(user, name, description, room_type, members)
        )

    async def _create_room(
        self, user: str, name: str, description: str, room_type: str, members: list[str]
    ) -> dict[str, Any]:
        created: int = await guard(self.store.count_rooms_created_by(user))
        if created >= self.max_rooms_per_user:
            raise ChatError(
                ErrorCode.RATE_LIMIT_EXCEEDED,
                f"room quota reached: a user may create at most {self.max_rooms_per_user} rooms",
            )
        draft = Room(new_id("r_"), name, description, room_type, 0, self.wall_clock.now_ms(), 0)
        room: Room | None = await guard(self.store.create_room(draft, user, members))
        assert room is not None, "a fresh room id is never taken"
        return {"room": room.to_wire()}

    def _one_at_a_time(
        self, user: str, work: Callable[[], Coroutine[Any, Any, dict[str, Any]]]
    ) -> Deferred[dict[str, Any]]:
        """Run ``work`` once the user's earlier creations are done; the
        lock is dropped when nobody holds or waits for it."""
        lock = self._creating.get(user)
        if lock is None:
            lock = self._creating[user] = DeferredLock()
        done: Deferred[dict[str, Any]] = lock.run(work)

        def forget(result: Any) -> Any:
            if not lock.locked and not lock.waiting and self._creating.get(user) is lock:
                del self._creating[user]
            return result

        return done.addBoth(forget)

    def create_room_for_backend(
        self,
        room_id: str | None,
        name: str,
        description: str,
        room_type: str,
        members: list[str],
    ) -> Deferred[Room | None]:
        """``POST /api/rooms``: a room with a chosen (or server) id and no
        creator.  None when the id is taken."""
        if room_id is not None and is_direct_room(room_id):
            raise ChatError(
                ErrorCode.INVALID_MESSAGE, f"room ids starting {DIRECT_ROOM_PREFIX} are reserved"
            )
        self.limits.check_room(name, description, len(members), by_backend=True)
        at = self.wall_clock.now_ms()
        draft = Room(room_id or new_id("r_"), name, description, room_type, 0, at, 0)
        return guard(self.store.create_room(draft, None, members))

    # -- rooms for the backend ---------------------------------------------------

    def room(self, room_id: str, reader: str | None = None) -> Deferred[Room]:
        """The room, for the backend (``reader`` None) or for one of its
        members: the HTTP API reads rooms only as a member, public or not."""
        return Deferred.fromCoroutine(self._room(room_id, reader))

    async def _room(self, room_id: str, reader: str | None) -> Room:
        room: Room | None = await guard(self.store.get_room(room_id))
        if room is None:
            raise ChatError(ErrorCode.ROOM_NOT_FOUND, f"room {room_id} does not exist")
        if reader is not None and not await guard(self.store.is_member(room_id, reader)):
            raise ChatError(ErrorCode.NOT_A_MEMBER, f"you are not a member of room {room_id}")
        return room

    def members(self, room_id: str) -> Deferred[list[str]]:
        return guard(self.store.members(room_id))

    def add_member(self, room_id: str, user_id: str) -> Deferred[bool]:
        """Backend: make a user a member (False when they were already)."""
        return Deferred.fromCoroutine(self._add_member(room_id, user_id))

    async def _add_member(self, room_id: str, user_id: str) -> bool:
        await self._room(room_id, None)
        added: bool = await guard(self.store.add_member(room_id, user_id, self.wall_clock.now_ms()))
        return added

    def remove_member(self, room_id: str, user_id: str) -> Deferred[tuple[bool, int]]:
        """Backend: remove a member; their connections leave the room at
        once.  Returns (whether they were a member, connections that left
        on this node)."""
        return Deferred.fromCoroutine(self._remove_member(room_id, user_id))

    async def _remove_member(self, room_id: str, user_id: str) -> tuple[bool, int]:
        await self._room(room_id, None)
        removed: bool = await guard(self.store.remove_member(room_id, user_id))
        return removed, self.remove_from_room(room_id, user_id)

    def page(
        self, room_id: str, before: int | None, after: int | None, limit: int
    ) -> Deferred[MessagePage]:
        """A page of history, once the caller's right to it is settled
        (bounded in count and in bytes, as ``chat:history``)."""
        read = guard(self.store.history(room_id, before, after, min(max(limit, 1), MAX_PAGE)))
        return read.addCallback(within_bytes, MAX_PAGE_BYTES, after is None)

    # -- join and leave ----------------------------------------------------------

    def join(
        self, conn: Connection, room_id: str, since: int | None
    ) -> Deferred[dict[str, Any] | Outcome]:
        return Deferred.fromCoroutine(self._join(conn, room_id, since))

    async def _join(
        self, conn: Connection, room_id: str, since: int | None
    ) -> dict[str, Any] | Outcome:
        holding = self.registry.begin_join(conn, room_id)
        if holding:
            # Messages this connection sends to the room meanwhile wait for
            # the join (a client may send chat:join and chat:message back to
            # back, as seed 001's example does).
            self._joins[(conn, room_id)] = _JoinInProgress()
        try:
            data, last_seq = await self._join_snapshot(conn, room_id, since, holding)
        except BaseException:
            if holding:
                self.registry.abort_join(conn, room_id)
                self._join_finished(conn, room_id)
            raise
        if not holding:
            return data

        def after_reply() -> None:
            # Everything up to here is in the snapshot or reachable with
            # chat:history; live events beyond it follow the reply.
            self.registry.complete_join(conn, room_id, last_seq)
            self._join_finished(conn, room_id)

        return Outcome(data, after_reply)

    async def _join_snapshot(
        self, conn: Connection, room_id: str, since: int | None, holding: bool
    ) -> tuple[dict[str, Any], int]:
        """The join reply's data, and the last seq it covers; membership of a
        public room is added on the way."""
        user = _user(conn)
        if holding:
            # Read the snapshot only once this node hears the room's
            # live events (the broker may subscribe asynchronously).
            await self.publisher.ready(room_channel(room_id))
        limit = JOIN_PAGE if since is None else SINCE_PAGE
        snapshot = await guard(self.store.join_snapshot(room_id, user, since, limit))
        if snapshot is None:
            raise ChatError(ErrorCode.ROOM_NOT_FOUND, f"room {room_id} does not exist")
        # Without ``since`` the newest messages matter (hasMore: older ones
        # exist); with it the first ones past ``since`` (hasMore: page on
        # with ``after``).
        page = within_bytes(snapshot.page, MAX_PAGE_BYTES, since is None)
        room = snapshot.room
        members = snapshot.members
        if not snapshot.is_member:
            if room.type != "public":
                raise ChatError(
                    ErrorCode.NOT_A_MEMBER,
                    f"room {room_id} is private and you are not a member",
                )
            added = await guard(self.store.add_member(room_id, user, self.wall_clock.now_ms()))
            members = [*members, user]
            if added:
                room = replace(room, member_count=room.member_count + 1)
        online = await self._visible_online(user, room_id, members)
        data = {
            "room": room.to_wire(),
            "messages": [m.to_wire() for m in page.messages],
            "users": online,
            "hasMore": page.has_more,
        }
        last_seq = max(room.last_seq, page.messages[-1].seq if page.messages else 0)
        return data, last_seq

    def _join_finished(self, conn: Connection, room_id: str) -> None:
        joining = self._joins.pop((conn, room_id), None)
        if joining is not None:
            joining.release()

    async def _visible_online(self, user: str, room_id: str, members: list[str]) -> list[str]:
        online = self.online.online_among(members)
        if not is_direct_room(room_id):
            return online
        # A direct-message partner's presence is shown only to those in
        # their audience (friends, room-mates), as everywhere else.
        visible = []
        for other in online:
            if other == user or await guard(self.store.in_audience(user, other)):
                visible.append(other)
        return visible

    def leave(self, conn: Connection, room_id: str) -> dict[str, Any]:
        self.registry.leave(conn, room_id)
        self.typing.stop_connection(conn, [room_id])
        return {"chatId": room_id}

    def remove_from_room(self, room_id: str, user_id: str) -> int:
        """A member was removed: their connections on every node leave the
        room at once (a control event on the user's channel).  Returns how
        many of this node's connections left (other nodes act on the control
        event within milliseconds; they do not report back)."""
        left = self.leave_locally(room_id, user_id)
        self.publish(
            user_channel(user_id), Published(LEAVE_ROOM_CONTROL, encode({"chatId": room_id}))
        )
        return left

    def _leave_room_control(self, channel: str, event: Published) -> None:
        room_id = json.loads(event.data)["chatId"]
        self.leave_locally(room_id, channel[len("user:") :])

    def leave_locally(self, room_id: str, user_id: str) -> int:
        """This node's connections of the user leave the room (typing stops,
        no more events); returns how many left."""
        left = self.registry.leave_room_everywhere(room_id, user_id)
        for conn in left:
            self.typing.stop_connection(conn, [room_id])
            conn.send_event("chat:left", {"chatId": room_id, "removed": True})
        return len(left)

    def connection_closed(self, conn: Connection) -> None:
        self.typing.stop_connection(conn)

    # -- messages ----------------------------------------------------------------

    def send_message(
        self, caller: Caller, room_id: str, content: str, temp_id: str | None
    ) -> Deferred[dict[str, Any]]:
        """``chat:message``, answered with its ack.

        The hot path: plain Deferred callbacks, no coroutine, and for a
        connection that joined the room no storage round trip but the
        (group-committed) append itself."""
        self.limits.check_content(content)
        if self._direct is not None and is_direct_room(room_id):
            sent = self._direct.send_in_room(caller, room_id, content, temp_id)
            return sent.addCallback(_ack_of_wire, temp_id)
        identity = caller.identity
        assert identity is not None, "handlers run only for authenticated callers"
        # The display name travels with the message (and is stored with it),
        # so no recipient and no later reader has to look the sender up.
        message = NewMessage(
            new_id("m_"),
            room_id,
            identity.user_id,
            content,
            temp_id,
            self.wall_clock.now_ms(),
            identity.name,
        )
        # The registry is keyed by connection: a caller without one has
        # joined nothing and is checked against the store.
        stored: Deferred[Message]
        if self.registry.is_joined(caller, room_id):
            stored = self.store.append_message(message)
        else:
            joining = self._joins.get((caller, room_id)) if self._joins else None
            if joining is None:
                stored = self._append_if_member(caller, message)
            else:
                # In order behind the join this connection sent first.
                stored = joining.wait().addCallback(
                    lambda _: self._append_if_member(caller, message)
                )
        return guard(stored.addCallback(self._message_stored))

    def _append_if_member(self, caller: Caller, message: NewMessage) -> Deferred[Message]:
        if self.registry.is_joined(caller, message.chat_id):
            return self.store.append_message(message)
        checked = Deferred.fromCoroutine(self._require_member(message.chat_id, message.user_id))
        return checked.addCallback(lambda _: self.store.append_message(message))

    def post_for_backend(
        self, user_id: str, room_id: str, content: str
    ) -> Deferred[dict[str, Any]]:
        """``POST /api/rooms/{id}/messages``: a ``chat:message`` from
        ``user_id`` with the same pushes and limits; returns the message's
        wire form.  The backend speaks for anyone in a group room (a
        "system" user need not be a member); in a direct-message room the
        user must be one of the pair, and it is a ``message:send`` to the
        other one, notification included."""
        return Deferred.fromCoroutine(self._post_for_backend(user_id, room_id, content))

    async def _post_for_backend(self, user_id: str, room_id: str, content: str) -> dict[str, Any]:
        self.limits.check_content(content)
        await self._room(room_id, None)
        if self._direct is not None and is_direct_room(room_id):
            caller = ActingUser.named(user_id)
            sent = await self._direct.send_in_room(caller, room_id, content, None)
            wire: dict[str, Any] = sent["message"]
            return wire
        at = self.wall_clock.now_ms()
        message = NewMessage(new_id("m_"), room_id, user_id, content, None, at)
        stored: Message = await guard(self.store.append_message(message))
        return self.message_stored(stored)

    def message_stored(self, message: Message) -> dict[str, Any]:
        """Publish a stored message to its room; return its wire form."""
        return publish_room_message(self.publisher, message)

    def _message_stored(self, message: Message) -> dict[str, Any]:
        wire = self.message_stored(message)
        ack: dict[str, Any] = {"id": message.id, "seq": message.seq, "createdAt": wire["createdAt"]}
        if message.temp_id is not None:
            ack["tempId"] = message.temp_id
        return ack

    def check_content(self, content: str) -> None:
        self.limits.check_content(content)

    async def _require_member(self, room_id: str, user: str) -> None:
        """Membership check for a caller that has not joined the room."""
        if await self.store.is_member(room_id, user):
            return
        if await self.store.get_room(room_id) is None:
            raise ChatError(ErrorCode.ROOM_NOT_FOUND, f"room {room_id} does not exist")
        raise ChatError(ErrorCode.NOT_A_MEMBER, f"you are not a member of room {room_id}")

    def history(
        self, caller: Caller, room_id: str, before: int | None, after: int | None, limit: int
    ) -> Deferred[dict[str, Any]]:
        return Deferred.fromCoroutine(self._history(caller, room_id, before, after, limit))

    async def _history(
        self, caller: Caller, room_id: str, before: int | None, after: int | None, limit: int
    ) -> dict[str, Any]:
        if not self.registry.is_joined(caller, room_id):
            room = await guard(self.store.get_room(room_id))
            if room is None:
                raise ChatError(ErrorCode.ROOM_NOT_FOUND, f"room {room_id} does not exist")
            if room.type != "public" and not await guard(
                self.store.is_member(room_id, _user(caller))
            ):
                raise ChatError(
                    ErrorCode.NOT_A_MEMBER, f"room {room_id} is private and you are not a member"
                )
        page = within_bytes(
            await guard(self.store.history(room_id, before, after, min(limit, MAX_PAGE))),
            MAX_PAGE_BYTES,
            after is None,
        )
        return {
            "chatId": room_id,
            "messages": [m.to_wire() for m in page.messages],
            "hasMore": page.has_more,
        }

    # -- typing, reads, reactions -------------------------------------------------

    def set_typing(self, conn: Connection, room_id: str, is_typing: bool) -> dict[str, Any]:
        if not self.registry.is_joined(conn, room_id):
            raise ChatError(
                ErrorCode.NOT_A_MEMBER, f"join room {room_id} before sending typing indicators"
            )
        self.typing.update(conn, room_id, is_typing)
        return {}

    def _announce_typing(
        self, room_id: str, user_id: str, connection_id: str, is_typing: bool
    ) -> None:
        self.publish_to_room(
            room_id,
            "chat:typing",
            {"chatId": room_id, "userId": user_id, "isTyping": is_typing},
            skip_user=user_id,
        )

    def mark_read(self, caller: Caller, room_id: str, message_id: str) -> Deferred[dict[str, Any]]:
        return Deferred.fromCoroutine(self._mark_read(caller, room_id, message_id))

    async def _mark_read(self, caller: Caller, room_id: str, message_id: str) -> dict[str, Any]:
        user = _user(caller)
        message = await self._message_in_reach(caller, message_id)
        if message.chat_id != room_id:
            raise ChatError(
                ErrorCode.INVALID_MESSAGE, f"message {message_id} is not in room {room_id}"
            )
        if await guard(self.store.set_read(room_id, user, message_id, message.seq)):
            self.publish_to_room(
                room_id,
                "chat:read",
                {"chatId": room_id, "userId": user, "messageId": message_id, "seq": message.seq},
                skip_connection=caller.connection_id,
            )
        return {}

    def react(
        self, caller: Caller, message_id: str, reaction: str, remove: bool
    ) -> Deferred[dict[str, Any]]:
        return Deferred.fromCoroutine(self._react(caller, message_id, reaction, remove))

    async def _react(
        self, caller: Caller, message_id: str, reaction: str, remove: bool
    ) -> dict[str, Any]:
        user = _user(caller)
        message = await self._message_in_reach(caller, message_id)
        at = self.wall_clock.now_ms()
        if await guard(self.store.set_reaction(message_id, user, reaction, not remove, at)):
            self.publish_to_room(
                message.chat_id,
                "chat:reaction",
                {
                    "chatId": message.chat_id,
                    "messageId": message_id,
                    "userId": user,
                    "reaction": reaction,
                    "removed": remove,
                },
                skip_connection=caller.connection_id,
            )
        return {}

    async def _message_in_reach(self, caller: Caller, message_id: str) -> Message:
        """The message, if it exists and the user is a member of its room."""
        message: Message | None = await guard(self.store.get_message(message_id))
        if message is None:
            raise ChatError(ErrorCode.INVALID_MESSAGE, f"message {message_id} does not exist")
        if not self.registry.is_joined(caller, message.chat_id):
            if not await guard(self.store.is_member(message.chat_id, _user(caller))):
                raise ChatError(
                    ErrorCode.NOT_A_MEMBER, f"you are not a member of room {message.chat_id}"
                )
        return message


def message_json_size(message: Message) -> int:
    """About the bytes of the message's JSON as chatd writes it: its strings
    measured by the C encoder (escaped ASCII, the larger of the encodings a
    binding may use), the rest a constant."""
    size = (
        _MESSAGE_JSON_FIXED
        + len(encode_basestring_ascii(message.content))
        + len(encode_basestring_ascii(message.user_id))
        + len(encode_basestring_ascii(message.chat_id))
        + len(message.id)
    )
    if message.username is not None:
        size += len(',"username":') + len(encode_basestring_ascii(message.username))
    if message.temp_id is not None:
        size += len(',"tempId":') + len(encode_basestring_ascii(message.temp_id))
    return size


def within_bytes(page: MessagePage, budget: int, newest: bool) -> MessagePage:
    """``page`` cut to at most ``budget`` bytes of message JSON (at least one
    message stays).  ``newest``: keep the end of the page, the messages
    nearest the present (a page read backwards, whose ``hasMore`` means
    older messages exist); otherwise keep its start (a page read forwards
    with ``after``, continued from its last ``seq``)."""
    messages = page.messages
    count = len(messages)
    total = 0
    for kept in range(count):
        index = count - 1 - kept if newest else kept
        total += message_json_size(messages[index])
        if total > budget and kept > 0:
            cut = messages[index + 1 :] if newest else messages[:index]
            return MessagePage(cut, True)
    return page


def _user(caller: Caller) -> str:
    identity = caller.identity
    assert identity is not None, "handlers run only for authenticated callers"
    return identity.user_id


def _ack_of_wire(result: dict[str, Any], temp_id: str | None) -> dict[str, Any]:
    """A direct message's ``{message}`` in the shape of a chat:message ack."""
    message = result["message"]
    ack = {"id": message["id"], "seq": message["seq"], "createdAt": message["createdAt"]}
    if temp_id is not None:
        ack["tempId"] = temp_id
    return ack
