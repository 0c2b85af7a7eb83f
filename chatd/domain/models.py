"""Value types passed between the layers."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from chatd.clock import iso_from_ms
from chatd.errors import ChatError, ErrorCode

ROOM_TYPES = ("public", "private")


def encode_body(data: dict[str, Any]) -> bytes:
    """The one JSON encoding of an event body (ASCII-safe, compact), made
    once by the publisher whatever the number of recipients.  Strict: a
    NaN or an infinity raises here, before any recipient is involved,
    instead of reaching clients whose ``JSON.parse`` would fail."""
    return json.dumps(data, separators=(",", ":"), allow_nan=False).encode()


DIRECT_ROOM_PREFIX = "dm_"


def dm_room_id(a: str, b: str) -> str:
    """The direct-message room of a pair, the same whoever writes first
    (a hash, so any characters in user ids are safe in a room id).  In the
    domain's contract because bindings name a conversation by its partner
    (seed 000's ``friendId``)."""
    first, second = sorted((a, b))
    digest = hashlib.sha256(f"{first}\x00{second}".encode()).hexdigest()[:32]
    return DIRECT_ROOM_PREFIX + digest


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a connection authenticated as (from the JWT)."""

    user_id: str
    name: str | None = None
    role: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True, slots=True)
class ActingUser:
    """A ``Caller`` without a connection: the HTTP API acting for a user
    (``POST /api/rooms/{id}/messages``), so it runs the very code a client's
    request runs, with the same pushes and notifications."""

    identity: Identity
    connection_id: str | None = None

    @classmethod
    def named(cls, user_id: str) -> ActingUser:
        return cls(Identity(user_id))


@dataclass(frozen=True, slots=True)
class Limits:
    """Every size limit of the domain, in one object that every entry point
    (WebSocket, HTTP) is handed, so they cannot drift apart.

    Members at creation: a user (``chat:create``) may name up to
    ``max_members_by_user``; the backend (``POST /api/rooms``), which is
    trusted and seeds rooms from its own user base, up to
    ``max_members_by_backend``.  ``max_push_recipients`` bounds the
    ``userIds`` of one backend push."""

    max_content_length: int = 4000
    max_name_length: int = 100
    max_description_length: int = 1000
    max_members_by_user: int = 1000
    max_members_by_backend: int = 10000
    max_push_recipients: int = 10000
    max_notification_title: int = 200
    max_notification_body: int = 4000

    def check_content(self, content: str) -> None:
        if not content.strip():
            raise ChatError(ErrorCode.INVALID_MESSAGE, "content must not be empty")
        if len(content) > self.max_content_length:
            raise ChatError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"content is longer than {self.max_content_length} characters",
            )

    def check_room(self, name: str, description: str, members: int, by_backend: bool) -> None:
        """A new room's name, description and member count."""
        if len(name) > self.max_name_length:
            raise ChatError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"name is longer than {self.max_name_length} characters",
            )
        if len(description) > self.max_description_length:
            raise ChatError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"description is longer than {self.max_description_length} characters",
            )
        most = self.max_members_by_backend if by_backend else self.max_members_by_user
        if members > most:
            raise ChatError(ErrorCode.PAYLOAD_TOO_LARGE, f"at most {most} members at creation")

    def check_notification(self, title: str, body: str) -> None:
        """A backend's notification (``POST /websocket/notification``)."""
        if len(title) > self.max_notification_title or len(body) > self.max_notification_body:
            raise ChatError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"'title' is limited to {self.max_notification_title} and 'body' to "
                f"{self.max_notification_body} characters",
            )

    def check_recipients(self, count: int) -> None:
        if count > self.max_push_recipients:
            raise ChatError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"'userIds' may hold at most {self.max_push_recipients} user ids",
            )


@dataclass(frozen=True, slots=True)
class Room:
    id: str
    name: str
    description: str
    type: str
    member_count: int
    created_at_ms: int
    last_seq: int

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "type": self.type,
            "memberCount": self.member_count,
            "createdAt": iso_from_ms(self.created_at_ms),
            "lastSeq": self.last_seq,
        }


@dataclass(frozen=True, slots=True)
class Message:
    id: str
    chat_id: str
    seq: int
    user_id: str
    content: str
    temp_id: str | None
    created_at_ms: int
    #: The sender's display name when it sent the message (its identity's
    #: ``name``), stored with it so that history and ``since`` recovery show
    #: what the live push showed; None when the sender had none.
    username: str | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "id": self.id,
            "chatId": self.chat_id,
            "seq": self.seq,
            "userId": self.user_id,
            "content": self.content,
            "createdAt": iso_from_ms(self.created_at_ms),
        }
        if self.temp_id is not None:
            wire["tempId"] = self.temp_id
        if self.username is not None:
            wire["username"] = self.username
        return wire


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message on its way into the store (it has no seq yet)."""

    id: str
    chat_id: str
    user_id: str
    content: str
    temp_id: str | None
    created_at_ms: int
    username: str | None = None

    def stored(self, seq: int) -> Message:
        return Message(
            self.id,
            self.chat_id,
            seq,
            self.user_id,
            self.content,
            self.temp_id,
            self.created_at_ms,
            self.username,
        )


@dataclass(frozen=True, slots=True)
class MessagePage:
    messages: list[Message]
    has_more: bool


@dataclass(frozen=True, slots=True)
class JoinSnapshot:
    """Everything a join needs, read in one storage round trip."""

    room: Room
    is_member: bool
    members: list[str]
    page: MessagePage


@dataclass(frozen=True, slots=True)
class Published:
    """An event as it travels through the broker.

    ``data`` is the event's JSON body, encoded once by the publisher; every
    binding wraps it into its own frame once per node.  ``skip_user`` and
    ``skip_connection`` leave the originator out; ``seq`` lets a connection
    that is joining a room drop what its join snapshot already holds."""

    type: str
    data: bytes
    skip_user: str | None = None
    skip_connection: str | None = None
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class Notification:
    id: str
    user_id: str
    type: str
    title: str
    message: str
    data: Any
    created_at_ms: int

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "title": self.title,
            "message": self.message,
            "createdAt": iso_from_ms(self.created_at_ms),
        }
        if self.data is not None:
            wire["data"] = self.data
        return wire


@dataclass(frozen=True, slots=True)
class PendingRequest:
    user_id: str
    created_at_ms: int

    def to_wire(self) -> dict[str, Any]:
        return {"userId": self.user_id, "createdAt": iso_from_ms(self.created_at_ms)}


@dataclass(frozen=True, slots=True)
class FriendLists:
    friends: list[str]
    incoming: list[PendingRequest]
    outgoing: list[PendingRequest]
