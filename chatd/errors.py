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

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"ChatError({self.code.value}, {self.message!r})"


def invalid(message: str) -> ChatError:
    return ChatError(ErrorCode.INVALID_MESSAGE, message)


class StoreUnavailable(Exception):
    """Storage could not be reached; nothing of the request was committed."""


class BrokerUnavailable(Exception):
    """Redis could not be reached; the event reached this node's connections
    only."""
