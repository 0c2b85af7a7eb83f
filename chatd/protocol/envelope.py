"""The native envelope (PROTOCOL.md section 3): parsing client frames into
``Envelope`` values and encoding server frames.

Client → server: ``{"type": "<event>", "id": "<optional ≤64 chars>", "data": {...}}``.
Server → client: ``ack`` / ``error`` replies and ``{"type", "data"}`` pushes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from chatd.errors import ChatError, ErrorCode

MAX_ID_LENGTH = 64
MAX_TYPE_LENGTH = 64
MAX_INTEGER = 2**63 - 1
"""The largest integer a client may give (a ``seq``, ``since``, ``limit``):
what every store's signed 64-bit columns hold.  Larger ones are refused
with ``INVALID_MESSAGE`` before they can reach storage."""


# -- strict JSON, both ways ----------------------------------------------------------


class NonFiniteNumber(ValueError):
    """``NaN``, ``Infinity``, ``-Infinity`` or a number beyond a double
    (``1e999``): Python's ``json`` takes them, RFC 8259 and every browser's
    ``JSON.parse`` do not, so a frame holding one is refused rather than
    passed on to clients that could not read it."""


def _refuse_constant(name: str) -> Any:
    raise NonFiniteNumber(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NonFiniteNumber(f"{text} is beyond the range of a JSON number")
    return value


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)

NOT_JSON_NUMBERS = "NaN, Infinity and numbers beyond a double are not JSON"


def strict_loads(payload: bytes | str) -> Any:
    """A client's JSON (UTF-8 when bytes), refusing what RFC 8259 refuses
    and Python's ``json`` would take: ``NonFiniteNumber`` (a ``ValueError``)
    for NaN and the infinities.  Raises like ``json.loads`` otherwise
    (``UnicodeDecodeError``, ``ValueError``, ``RecursionError``)."""
    text = payload.decode("utf-8") if isinstance(payload, bytes) else payload
    return _DECODER.decode(text)


def strict_dumps(obj: Any) -> bytes:
    """Compact, ASCII-only JSON that every client can parse: a non-finite
    float raises ``ValueError`` instead of going out as ``NaN``.  Input
    never carries one (``strict_loads``); should a bug put one into a
    reply, that one reply fails (the dispatcher answers ``SERVER_ERROR``),
    and an event body is encoded once before its fan-out, so no recipient
    gets a frame it cannot read and no other event is held up."""
    return _ENCODER.encode(obj).encode()


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
        obj = strict_loads(payload)
    except NonFiniteNumber:
        raise EnvelopeError(f"frame is not valid JSON: {NOT_JSON_NUMBERS}") from None
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


def encode_push(event_type: str, data: Any) -> bytes:
    return strict_dumps({"type": event_type, "data": data})


def wrap_push(event_type: str, data_json: bytes) -> bytes:
    """A push around a body that is already JSON (encoded once upstream)."""
    return b'{"type":' + strict_dumps(event_type) + b',"data":' + data_json + b"}"


def encode_ack(request_id: str, data: Any) -> bytes:
    return strict_dumps({"type": "ack", "id": request_id, "data": data})


def encode_error(
    code: str, message: str, request_id: str | None = None, event: str | None = None
) -> bytes:
    body: dict[str, Any] = {"code": code, "message": message}
    if request_id is not None:
        return strict_dumps({"type": "error", "id": request_id, "data": body})
    if event is not None:
        body["event"] = event
    return strict_dumps({"type": "error", "data": body})
