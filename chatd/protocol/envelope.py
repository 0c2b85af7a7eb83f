"""The native envelope (PROTOCOL.md section 3): parsing client frames into
``Envelope`` values and encoding server frames.

Client → server: ``{"type": "<event>", "id": "<optional ≤64 chars>", "data": {...}}``.
Server → client: ``ack`` / ``error`` replies and ``{"type", "data"}`` pushes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from chatd.errors import ChatError, ErrorCode

MAX_ID_LENGTH = 64
MAX_TYPE_LENGTH = 64


@dataclass(frozen=True, slots=True)
class Envelope:
    type: str
    id: str | None
    data: Any


class EnvelopeError(ChatError):
    """A frame that is not a valid envelope; carries what could be read of
    it so the error can still be correlated."""

    def __init__(
        self, message: str, request_id: str | None = None, event: str | None = None
    ) -> None:
        super().__init__(ErrorCode.INVALID_MESSAGE, message)
        self.request_id = request_id
        self.event = event


def parse_envelope(payload: bytes | str) -> Envelope:
    try:
        text = payload.decode("utf-8") if isinstance(payload, bytes) else payload
        obj = json.loads(text)
    except (UnicodeDecodeError, ValueError):
        raise EnvelopeError("frame is not valid JSON") from None
    except RecursionError:
        raise EnvelopeError("frame is nested too deeply") from None
    if not isinstance(obj, dict):
        raise EnvelopeError("frame must be a JSON object")
    request_id = obj.get("id")
    event = obj.get("type")
    readable_id = (
        request_id if isinstance(request_id, str) and 0 < len(request_id) <= MAX_ID_LENGTH else None
    )
    readable_event = event if isinstance(event, str) and len(event) <= MAX_TYPE_LENGTH else None
    if request_id is not None and readable_id is None:
        raise EnvelopeError(
            f"'id' must be a non-empty string of at most {MAX_ID_LENGTH} characters",
            None,
            readable_event,
        )
    if not isinstance(event, str) or not event:
        raise EnvelopeError("'type' must be a non-empty string", readable_id, None)
    if readable_event is None:
        raise EnvelopeError(
            f"'type' is longer than {MAX_TYPE_LENGTH} characters", readable_id, None
        )
    return Envelope(event, readable_id, obj.get("data"))


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def encode_push(event_type: str, data: Any) -> bytes:
    return _dumps({"type": event_type, "data": data})


def wrap_push(event_type: str, data_json: bytes) -> bytes:
    """A push around a body that is already JSON (encoded once upstream)."""
    return b'{"type":' + _dumps(event_type) + b',"data":' + data_json + b"}"


def encode_ack(request_id: str, data: Any) -> bytes:
    return _dumps({"type": "ack", "id": request_id, "data": data})


def encode_error(
    code: str, message: str, request_id: str | None = None, event: str | None = None
) -> bytes:
    body: dict[str, Any] = {"code": code, "message": message}
    if request_id is not None:
        return _dumps({"type": "error", "id": request_id, "data": body})
    if event is not None:
        body["event"] = event
    return _dumps({"type": "error", "data": body})
