"""Value types passed between the layers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chatd.clock import iso_from_ms

ROOM_TYPES = ("public", "private")


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

    def stored(self, seq: int) -> Message:
        return Message(
            self.id, self.chat_id, seq, self.user_id, self.content, self.temp_id, self.created_at_ms
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
