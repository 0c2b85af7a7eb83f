"""The Engine.IO v4 packet codec (socketio/engine.io-protocol).

A packet is one type character and its data: ``0`` open, ``1`` close,
``2`` ping, ``3`` pong, ``4`` message, ``5`` upgrade, ``6`` noop.  Over
WebSocket each frame is one packet (a binary frame is a binary message);
over HTTP long-polling a body is packets joined with the record separator
``\\x1e``, a binary message written as ``b`` plus base64.

Everything here is pure: bad input raises ``EngineIOError`` with a message
meant for a log line or an HTTP error body, never anything else.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from chatd.protocol.envelope import strict_dumps

OPEN = "0"
CLOSE = "1"
PING = "2"
PONG = "3"
MESSAGE = "4"
UPGRADE = "5"
NOOP = "6"
PACKET_TYPES = frozenset(OPEN + CLOSE + PING + PONG + MESSAGE + UPGRADE + NOOP)

SEPARATOR = b"\x1e"
"""Between the packets of a polling payload.  JSON escapes every control
character, so it can never occur inside a text packet chatd writes."""

PROBE = "probe"


class EngineIOError(ValueError):
    """Input that is not Engine.IO v4."""


@dataclass(frozen=True, slots=True)
class Packet:
    """One Engine.IO packet; ``data`` is bytes only for a binary message."""

    type: str
    data: str | bytes = ""

    @property
    def is_binary(self) -> bool:
        return isinstance(self.data, bytes)


def decode_text(text: str) -> Packet:
    """One text packet (a WebSocket text frame, or one polling record)."""
    if not text:
        raise EngineIOError("empty packet")
    kind = text[0]
    if kind not in PACKET_TYPES:
        raise EngineIOError(f"unknown packet type {kind!r}")
    return Packet(kind, text[1:])


def decode_payload(body: bytes) -> list[Packet]:
    """A polling request body: UTF-8 text packets joined with ``\\x1e``;
    ``b<base64>`` records are binary messages."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise EngineIOError("payload is not UTF-8") from None
    packets = []
    for record in text.split("\x1e"):
        if record.startswith("b"):
            try:
                data = base64.b64decode(record[1:], validate=True)
            except (binascii.Error, ValueError):
                raise EngineIOError("binary packet is not valid base64") from None
            packets.append(Packet(MESSAGE, data))
        else:
            packets.append(decode_text(record))
    return packets


def encode(kind: str, data: str | bytes = b"") -> bytes:
    """A text packet's bytes (no separator)."""
    body = data.encode("utf-8") if isinstance(data, str) else data
    return kind.encode("ascii") + body


def open_packet(
    sid: str, upgrades: list[str], ping_interval: float, ping_timeout: float, max_payload: int
) -> bytes:
    """The handshake: what the client needs to keep the session alive.
    Intervals go out in milliseconds, as the protocol has them."""
    body: dict[str, Any] = {
        "sid": sid,
        "upgrades": upgrades,
        "pingInterval": round(ping_interval * 1000),
        "pingTimeout": round(ping_timeout * 1000),
        "maxPayload": max_payload,
    }
    return encode(OPEN, strict_dumps(body))


def error_body(code: int, message: str) -> bytes:
    """Engine.IO's HTTP error body, ``{"code":N,"message":"…"}``."""
    return strict_dumps({"code": code, "message": message})


class ErrorCode:
    """Engine.IO's error codes, as its reference server numbers them."""

    UNKNOWN_TRANSPORT = 0
    UNKNOWN_SID = 1
    BAD_HANDSHAKE_METHOD = 2
    BAD_REQUEST = 3
    FORBIDDEN = 4
    UNSUPPORTED_PROTOCOL_VERSION = 5
