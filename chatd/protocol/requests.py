"""Typed requests: the ``data`` of each client event, validated field by
field.  A missing or wrongly typed field raises ``INVALID_MESSAGE`` naming
the field; nothing reaches the domain unvalidated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chatd.domain.models import ROOM_TYPES
from chatd.errors import ChatError, ErrorCode, invalid, unstorable
from chatd.protocol.envelope import MAX_INTEGER

MAX_ROOM_ID = 128
MAX_USER_ID = 128
MAX_TEMP_ID = 64
MAX_REACTION = 64
MAX_MESSAGE_ID = 128
MAX_DISPLAY_NAME = 128


def _object(data: Any, event: str) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise invalid(f"'data' of {event} must be an object")
    return data


def _valid_text(value: str, field: str) -> str:
    """Text every store can keep: encodable as UTF-8 (no lone surrogates)
    and without NUL, which PostgreSQL text cannot hold."""
    problem = unstorable(value)
    if problem is not None:
        raise invalid(f"'{field}' {problem}")
    return value


def required_str(
    data: dict[str, Any],
    field: str,
    max_length: int | None = None,
    *,
    too_long: ErrorCode = ErrorCode.INVALID_MESSAGE,
) -> str:
    value = data.get(field)
    if value is None:
        raise invalid(f"'{field}' is required")
    if not isinstance(value, str):
        raise invalid(f"'{field}' must be a string")
    if max_length is not None and len(value) > max_length:
        raise ChatError(too_long, f"'{field}' is longer than {max_length} characters")
    return _valid_text(value, field)


def identifier(data: dict[str, Any], field: str, max_length: int) -> str:
    value = required_str(data, field, max_length)
    if not value.strip():
        raise invalid(f"'{field}' must not be empty")
    return value


def optional_str(data: dict[str, Any], field: str, max_length: int) -> str | None:
    if data.get(field) is None:
        return None
    return required_str(data, field, max_length)


def optional_integer(data: dict[str, Any], field: str, minimum: int) -> int | None:
    """A JSON integer from ``minimum`` to ``MAX_INTEGER`` (what storage
    holds: a larger one would fail in the driver, for every request that
    sent it); ``1.0``, ``"1"`` and ``true`` are refused."""
    value = data.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= MAX_INTEGER:
        kind = "non-negative" if minimum == 0 else "positive"
        raise invalid(f"'{field}' must be a {kind} integer below 2^63")
    return value


def optional_seq(data: dict[str, Any], field: str) -> int | None:
    return optional_integer(data, field, 0)


def optional_bool(data: dict[str, Any], field: str, default: bool = False) -> bool:
    value = data.get(field)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid(f"'{field}' must be true or false")
    return value


def required_bool(data: dict[str, Any], field: str) -> bool:
    if data.get(field) is None:
        raise invalid(f"'{field}' is required")
    return optional_bool(data, field)


def _id_from(data: Any, field: str, max_length: int, event: str) -> tuple[str, dict[str, Any]]:
    """An id field from an object, or the data itself as a bare string (the
    seeds' clients send ``"room-1"`` where ours send ``{"chatId": …}``)."""
    if isinstance(data, str):
        return identifier({field: data}, field, max_length), {}
    fields = _object(data, event)
    return identifier(fields, field, max_length), fields


def _room_id_from(data: Any, event: str) -> tuple[str, dict[str, Any]]:
    return _id_from(data, "chatId", MAX_ROOM_ID, event)


@dataclass(frozen=True, slots=True)
class Auth:
    token: str
    #: A display name offered by the client, used when the token has none
    #: (seed 002's ``AUTHENTICATE {token, username}``).
    name: str | None = None

    @classmethod
    def parse(cls, data: Any) -> Auth:
        fields = _object(data, "auth")
        token = required_str(fields, "token")
        name = optional_str(fields, "name", MAX_DISPLAY_NAME)
        return cls(token, name.strip() or None if name is not None else None)


@dataclass(frozen=True, slots=True)
class Ping:
    @classmethod
    def parse(cls, data: Any) -> Ping:
        return cls()


@dataclass(frozen=True, slots=True)
class ChatCreate:
    name: str
    description: str
    type: str
    members: list[str]

    @classmethod
    def parse(cls, data: Any) -> ChatCreate:
        fields = _object(data, "chat:create")
        name = required_str(fields, "name")
        if not name.strip():
            raise invalid("'name' must not be empty")
        description = optional_str(fields, "description", 1_000_000) or ""
        room_type = required_str(fields, "type")
        if room_type not in ROOM_TYPES:
            raise invalid('\'type\' must be "public" or "private"')
        raw_members = fields.get("members")
        members: list[str] = []
        if raw_members is not None:
            if not isinstance(raw_members, list):
                raise invalid("'members' must be a list of user ids")
            for member in raw_members:
                if not isinstance(member, str) or not member.strip() or len(member) > MAX_USER_ID:
                    raise invalid("'members' must contain non-empty user id strings")
                members.append(_valid_text(member, "members"))
        return cls(name, description, room_type, members)


@dataclass(frozen=True, slots=True)
class ChatJoin:
    chat_id: str
    since: int | None

    @classmethod
    def parse(cls, data: Any) -> ChatJoin:
        chat_id, fields = _room_id_from(data, "chat:join")
        return cls(chat_id, optional_seq(fields, "since"))


@dataclass(frozen=True, slots=True)
class ChatLeave:
    chat_id: str

    @classmethod
    def parse(cls, data: Any) -> ChatLeave:
        chat_id, _ = _room_id_from(data, "chat:leave")
        return cls(chat_id)


@dataclass(frozen=True, slots=True)
class ChatMessage:
    chat_id: str
    content: str
    temp_id: str | None

    @classmethod
    def parse(cls, data: Any) -> ChatMessage:
        fields = _object(data, "chat:message")
        return cls(
            identifier(fields, "chatId", MAX_ROOM_ID),
            required_str(fields, "content"),
            optional_str(fields, "tempId", MAX_TEMP_ID),
        )


@dataclass(frozen=True, slots=True)
class ChatTyping:
    chat_id: str
    is_typing: bool

    @classmethod
    def parse(cls, data: Any) -> ChatTyping:
        fields = _object(data, "chat:typing")
        return cls(identifier(fields, "chatId", MAX_ROOM_ID), required_bool(fields, "isTyping"))


@dataclass(frozen=True, slots=True)
class ChatRead:
    chat_id: str
    message_id: str

    @classmethod
    def parse(cls, data: Any) -> ChatRead:
        fields = _object(data, "chat:read")
        return cls(
            identifier(fields, "chatId", MAX_ROOM_ID),
            identifier(fields, "messageId", MAX_MESSAGE_ID),
        )


@dataclass(frozen=True, slots=True)
class ChatReaction:
    message_id: str
    reaction: str
    remove: bool

    @classmethod
    def parse(cls, data: Any) -> ChatReaction:
        fields = _object(data, "chat:reaction")
        return cls(
            identifier(fields, "messageId", MAX_MESSAGE_ID),
            identifier(fields, "reaction", MAX_REACTION),
            optional_bool(fields, "remove"),
        )


@dataclass(frozen=True, slots=True)
class ChatHistory:
    chat_id: str
    before: int | None
    after: int | None
    limit: int

    @classmethod
    def parse(cls, data: Any) -> ChatHistory:
        fields = _object(data, "chat:history")
        limit = optional_integer(fields, "limit", 1)
        if limit is None:
            limit = 50
        return cls(
            identifier(fields, "chatId", MAX_ROOM_ID),
            optional_seq(fields, "before"),
            optional_seq(fields, "after"),
            min(limit, 100),
        )


@dataclass(frozen=True, slots=True)
class MessageSend:
    recipient_id: str
    content: str
    session_id: str | None
    temp_id: str | None

    @classmethod
    def parse(cls, data: Any) -> MessageSend:
        fields = _object(data, "message:send")
        return cls(
            identifier(fields, "recipientId", MAX_USER_ID),
            required_str(fields, "content"),
            optional_str(fields, "sessionId", MAX_TEMP_ID),
            optional_str(fields, "tempId", MAX_TEMP_ID),
        )


@dataclass(frozen=True, slots=True)
class NoData:
    """Requests whose data is ignored (``status:request``, ``friends:list``)."""

    @classmethod
    def parse(cls, data: Any) -> NoData:
        return cls()


@dataclass(frozen=True, slots=True)
class UserTarget:
    """``friend:*`` requests: ``{userId}``."""

    user_id: str

    @classmethod
    def parse(cls, data: Any) -> UserTarget:
        fields = _object(data, "friend request")
        return cls(identifier(fields, "userId", MAX_USER_ID))


@dataclass(frozen=True, slots=True)
class NotificationAck:
    notification_id: str

    @classmethod
    def parse(cls, data: Any) -> NotificationAck:
        fields = _object(data, "notification:ack")
        return cls(identifier(fields, "id", MAX_MESSAGE_ID))


MAX_STREAM_ID = 128
MAX_EMOJI = 32
STREAM_STATUSES = ("started", "ended")


def _stream_id_from(data: Any, event: str) -> tuple[str, dict[str, Any]]:
    return _id_from(data, "streamId", MAX_STREAM_ID, event)


@dataclass(frozen=True, slots=True)
class LiveTarget:
    """``live:join`` / ``live:leave``: a bare string or ``{streamId}``."""

    stream_id: str

    @classmethod
    def parse(cls, data: Any) -> LiveTarget:
        stream_id, _ = _stream_id_from(data, "live request")
        return cls(stream_id)


@dataclass(frozen=True, slots=True)
class LiveMessage:
    stream_id: str
    content: str

    @classmethod
    def parse(cls, data: Any) -> LiveMessage:
        stream_id, fields = _stream_id_from(data, "live:message")
        return cls(stream_id, required_str(fields, "content"))


@dataclass(frozen=True, slots=True)
class LiveReaction:
    stream_id: str
    emoji: str

    @classmethod
    def parse(cls, data: Any) -> LiveReaction:
        stream_id, fields = _stream_id_from(data, "live:reaction")
        return cls(stream_id, identifier(fields, "emoji", MAX_EMOJI))


@dataclass(frozen=True, slots=True)
class LiveStatus:
    stream_id: str
    status: str

    @classmethod
    def parse(cls, data: Any) -> LiveStatus:
        stream_id, fields = _stream_id_from(data, "live:status")
        status = required_str(fields, "status")
        if status not in STREAM_STATUSES:
            raise invalid('\'status\' must be "started" or "ended"')
        return cls(stream_id, status)
