"""Error codes of the wire contract (PROTOCOL.md section 3) and the one
exception type that carries them from the domain to a binding."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    INVALID_MESSAGE = "INVALID_MESSAGE"
    UNKNOWN_EVENT = "UNKNOWN_EVENT"
    ROOM_NOT_FOUND = "ROOM_NOT_FOUND"
    NOT_A_MEMBER = "NOT_A_MEMBER"
    USER_NOT_FOUND = "USER_NOT_FOUND"
    RATE_LIMIT_EXCEEDED = "RATE_LIMIT_EXCEEDED"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    UNAVAILABLE = "UNAVAILABLE"
    SERVER_ERROR = "SERVER_ERROR"


class ChatError(Exception):
    """A request failed for a reason the client is told about."""

    def __init__(self, code: ErrorCode, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        #: Seconds after which the same request may succeed (a limit's
        #: refill); HTTP sends it as ``Retry-After``.
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"ChatError({self.code.value}, {self.message!r})"


def unstorable(text: str) -> str | None:
    """Why ``text`` cannot be kept (in the store, a log, a frame), or None:
    a lone surrogate, which no UTF-8 encoder takes, or a NUL, which
    PostgreSQL text cannot hold.  The end of a message naming the value."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode text"
    if "\x00" in text:
        return "must not contain NUL characters"
    return None


def invalid(message: str) -> ChatError:
    return ChatError(ErrorCode.INVALID_MESSAGE, message)


class StoreUnavailable(Exception):
    """Storage could not be reached; nothing of the request was committed."""


class BrokerUnavailable(Exception):
    """Redis could not be reached; the event reached this node's connections
    only."""
