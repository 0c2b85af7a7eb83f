"""Rooms and messages: the rules of PROTOCOL.md section 4 "Rooms and
messages", independent of any wire binding.

Each operation takes the calling connection and typed arguments and returns
a Deferred of the result data (or an ``Outcome`` when something must follow
the reply).  Failures are ``ChatError`` with a protocol code; storage
outages arrive as ``StoreUnavailable`` and become ``UNAVAILABLE``.
Every event for other connections is JSON-encoded once here and published
through the broker; nothing is sent per recipient.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatd.clock import now_ms
from chatd.domain.interfaces import Broker, Connection, OnlineDirectory, Store
from chatd.domain.models import Message, NewMessage, Published, Room
from chatd.domain.registry import LocalRegistry, room_channel, user_channel
from chatd.domain.typing import TYPING_TIMEOUT, TypingTracker
from chatd.errors import ChatError, ErrorCode, StoreUnavailable

log = Logger()

JOIN_PAGE = 50
SINCE_PAGE = 100
MAX_PAGE = 100


def encode(data: dict[str, Any]) -> bytes:
    """The one JSON encoding of an event body (ASCII-safe, compact)."""
    return json.dumps(data, separators=(",", ":")).encode()


LEAVE_ROOM_CONTROL = "chatd:leave-room"
"""Control event on a user's channel: their connections leave a room."""

DIRECT_ROOM_PREFIX = "dm_"


def is_direct_room(room_id: str) -> bool:
    """Direct-message rooms have ids of their own (see social.dm_room_id);
    no other room may take that prefix."""
    return room_id.startswith(DIRECT_ROOM_PREFIX)


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(10)


@dataclass(frozen=True, slots=True)
class Outcome:
    """A result plus work that must run right after the reply is sent."""

    data: dict[str, Any]
    after_reply: Callable[[], None]


@dataclass(frozen=True, slots=True)
class Limits:
    max_content_length: int = 4000
    max_name_length: int = 100
    max_description_length: int = 1000
    max_members_at_create: int = 1000


class ChatService:
    def __init__(
        self,
        store: Store,
        broker: Broker,
        registry: LocalRegistry,
        clock: IReactorTime,
        limits: Limits | None = None,
        typing_timeout: float = TYPING_TIMEOUT,
        online: OnlineDirectory | None = None,
    ) -> None:
        self.store = store
        self.broker = broker
        self.registry = registry
        self.online: OnlineDirectory = online if online is not None else registry
        # The social service handles chat:message into direct-message rooms
        # (dm_policy, message:receive); set by it, None without one.
        self.direct_rooms: Any = None
        self.observe_publish: Callable[[float], None] | None = None
        self.limits = limits or Limits()
        self.typing = TypingTracker(clock, self._announce_typing, typing_timeout)
        registry.on_control(LEAVE_ROOM_CONTROL, self._leave_room_control)

    # -- publishing ------------------------------------------------------------

    def publish(self, channel: str, event: Published) -> None:
        """Publish after the state change is durable.  A broker failure is
        logged; the change itself stands (clients recover with ``since``)."""
        observe = self.observe_publish
        if observe is None:
            d = self.broker.publish(channel, event)
        else:
            started = time.monotonic()
            d = self.broker.publish(channel, event)
            d.addCallback(lambda _: observe(time.monotonic() - started))
        d.addErrback(self._publish_failed, channel, event.type)

    def publish_many(self, channels: list[str], event: Published) -> None:
        if not channels:
            return
        if len(channels) == 1:
            self.publish(channels[0], event)
            return
        d = self.broker.publish_many(channels, event)
        d.addErrback(self._publish_failed, f"{len(channels)} channels", event.type)

    @staticmethod
    def _publish_failed(failure: Failure, channel: str, event_type: str) -> None:
        log.failure(
            "publishing {type} on {channel} failed",
            failure,
            event="broker.error",
            type=event_type,
            channel=channel,
        )

    def publish_local(self, channel: str, event: Published) -> None:
        """Deliver to this node's connections only (each node pushes what it
        computes for its own connections, such as viewer counts)."""
        self.registry.accept(channel, event)

    def read_back(self, channel: str, after_seq: int, count: int) -> Deferred[list[Published]]:
        """Room messages ``after_seq+1 .. after_seq+count`` as the events
        their publish would have carried (for ``RoomOrder`` gaps)."""
        room_id = channel[len("room:") :]
        d = self.store.history(room_id, None, after_seq, count)
        return d.addCallback(
            lambda page: [
                Published("chat:message", encode(m.to_wire()), seq=m.seq) for m in page.messages
            ]
        )

    def publish_to_room(
        self, room_id: str, event_type: str, data: dict[str, Any], **routing: Any
    ) -> None:
        self.publish(room_channel(room_id), Published(event_type, encode(data), **routing))

    @staticmethod
    def guard(d: Deferred[Any]) -> Deferred[Any]:
        """Storage outages become UNAVAILABLE (for the other services)."""
        return _guard(d)

    # -- create ----------------------------------------------------------------

    @inlineCallbacks
    def create_room(
        self, conn: Connection, name: str, description: str, room_type: str, members: list[str]
    ):
        user = _user(conn)
        limits = self.limits
        if len(name) > limits.max_name_length:
            raise ChatError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"name is longer than {limits.max_name_length} characters",
            )
        if len(description) > limits.max_description_length:
            raise ChatError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"description is longer than {limits.max_description_length} characters",
            )
        if len(members) > limits.max_members_at_create:
            raise ChatError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"at most {limits.max_members_at_create} members at creation",
            )
        draft = Room(new_id("r_"), name, description, room_type, 0, now_ms(), 0)
        room = yield _guard(self.store.create_room(draft, user, members))
        return {"room": room.to_wire()}

    # -- join and leave ----------------------------------------------------------

    @inlineCallbacks
    def join(self, conn: Connection, room_id: str, since: int | None):
        user = _user(conn)
        holding = self.registry.begin_join(conn, room_id)
        try:
            if holding:
                # Read the snapshot only once this node hears the room's
                # live events (the broker may subscribe asynchronously).
                yield self.broker.ready(room_channel(room_id))
            limit = JOIN_PAGE if since is None else SINCE_PAGE
            snapshot = yield _guard(self.store.join_snapshot(room_id, user, since, limit))
            if snapshot is None:
                raise ChatError(ErrorCode.ROOM_NOT_FOUND, f"room {room_id} does not exist")
            room = snapshot.room
            members = snapshot.members
            if not snapshot.is_member:
                if room.type != "public":
                    raise ChatError(
                        ErrorCode.NOT_A_MEMBER,
                        f"room {room_id} is private and you are not a member",
                    )
                added = yield _guard(self.store.add_member(room_id, user, now_ms()))
                members = [*members, user]
                if added:
                    room = Room(
                        room.id,
                        room.name,
                        room.description,
                        room.type,
                        room.member_count + 1,
                        room.created_at_ms,
                        room.last_seq,
                    )
        except BaseException:
            if holding:
                self.registry.abort_join(conn, room_id)
            raise
        page = snapshot.page
        online = self.online.online_among(members)
        if is_direct_room(room_id):
            # A direct-message partner's presence is shown only to those in
            # their audience (friends, room-mates), as everywhere else.
            visible = []
            for other in online:
                if other == user or (yield _guard(self.store.in_audience(user, other))):
                    visible.append(other)
            online = visible
        data = {
            "room": room.to_wire(),
            "messages": [m.to_wire() for m in page.messages],
            "users": online,
            "hasMore": page.has_more,
        }
        if not holding:
            return data
        # Everything up to here is in the snapshot or reachable with
        # chat:history; live events beyond it follow the reply.
        last_seq = max(room.last_seq, page.messages[-1].seq if page.messages else 0)
        return Outcome(data, lambda: self.registry.complete_join(conn, room_id, last_seq))

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
        self, conn: Connection, room_id: str, content: str, temp_id: str | None
    ) -> Deferred[dict[str, Any]]:
        user = _user(conn)
        self.check_content(content)
        if self.direct_rooms is not None and is_direct_room(room_id):
            return self.direct_rooms.send_in_direct_room(conn, room_id, content, temp_id)
        message = NewMessage(new_id("m_"), room_id, user, content, temp_id, now_ms())
        if self.registry.is_joined(conn, room_id):
            d = self.store.append_message(message)
        else:
            d = self._require_member(room_id, user)
            d.addCallback(lambda _: self.store.append_message(message))
        d.addCallback(self._message_stored)
        return _guard(d)

    def message_stored(self, message: Message) -> dict[str, Any]:
        """Publish a stored message to its room; return its wire form."""
        wire = message.to_wire()
        self.publish(
            room_channel(message.chat_id), Published("chat:message", encode(wire), seq=message.seq)
        )
        return wire

    def _message_stored(self, message: Message) -> dict[str, Any]:
        wire = self.message_stored(message)
        ack: dict[str, Any] = {"id": message.id, "seq": message.seq, "createdAt": wire["createdAt"]}
        if message.temp_id is not None:
            ack["tempId"] = message.temp_id
        return ack

    def check_content(self, content: str) -> None:
        if not content.strip():
            raise ChatError(ErrorCode.INVALID_MESSAGE, "content must not be empty")
        if len(content) > self.limits.max_content_length:
            raise ChatError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"content is longer than {self.limits.max_content_length} characters",
            )

    @inlineCallbacks
    def _require_member(self, room_id: str, user: str):
        """Membership check for a connection that has not joined the room."""
        if (yield self.store.is_member(room_id, user)):
            return True
        room = yield self.store.get_room(room_id)
        if room is None:
            raise ChatError(ErrorCode.ROOM_NOT_FOUND, f"room {room_id} does not exist")
        raise ChatError(ErrorCode.NOT_A_MEMBER, f"you are not a member of room {room_id}")

    @inlineCallbacks
    def history(
        self, conn: Connection, room_id: str, before: int | None, after: int | None, limit: int
    ):
        user = _user(conn)
        if not self.registry.is_joined(conn, room_id):
            room = yield _guard(self.store.get_room(room_id))
            if room is None:
                raise ChatError(ErrorCode.ROOM_NOT_FOUND, f"room {room_id} does not exist")
            if room.type != "public" and not (yield _guard(self.store.is_member(room_id, user))):
                raise ChatError(
                    ErrorCode.NOT_A_MEMBER, f"room {room_id} is private and you are not a member"
                )
        page = yield _guard(self.store.history(room_id, before, after, min(limit, MAX_PAGE)))
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

    @inlineCallbacks
    def mark_read(self, conn: Connection, room_id: str, message_id: str):
        user = _user(conn)
        message = yield self._message_in_reach(conn, message_id)
        if message.chat_id != room_id:
            raise ChatError(
                ErrorCode.INVALID_MESSAGE, f"message {message_id} is not in room {room_id}"
            )
        moved = yield _guard(self.store.set_read(room_id, user, message_id, message.seq))
        if moved:
            self.publish_to_room(
                room_id,
                "chat:read",
                {"chatId": room_id, "userId": user, "messageId": message_id, "seq": message.seq},
                skip_connection=conn.connection_id,
            )
        return {}

    @inlineCallbacks
    def react(self, conn: Connection, message_id: str, reaction: str, remove: bool):
        user = _user(conn)
        message = yield self._message_in_reach(conn, message_id)
        changed = yield _guard(
            self.store.set_reaction(message_id, user, reaction, not remove, now_ms())
        )
        if changed:
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
                skip_connection=conn.connection_id,
            )
        return {}

    @inlineCallbacks
    def _message_in_reach(self, conn: Connection, message_id: str):
        """The message, if it exists and the user is a member of its room."""
        message = yield _guard(self.store.get_message(message_id))
        if message is None:
            raise ChatError(ErrorCode.INVALID_MESSAGE, f"message {message_id} does not exist")
        if not self.registry.is_joined(conn, message.chat_id):
            if not (yield _guard(self.store.is_member(message.chat_id, _user(conn)))):
                raise ChatError(
                    ErrorCode.NOT_A_MEMBER, f"you are not a member of room {message.chat_id}"
                )
        return message


def _user(conn: Connection) -> str:
    assert conn.identity is not None, "handlers run only for authenticated connections"
    return conn.identity.user_id


def _guard(d: Deferred[Any]) -> Deferred[Any]:
    """Turn a storage outage into the protocol's UNAVAILABLE."""

    def translate(failure: Failure) -> Failure:
        if failure.check(StoreUnavailable):
            raise ChatError(
                ErrorCode.UNAVAILABLE, "storage is unavailable; nothing was stored, try again"
            )
        return failure

    return d.addErrback(translate)
