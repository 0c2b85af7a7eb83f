"""The Socket.IO v5 packet codec (socketio/socket.io-protocol).

A packet travels as the data of one Engine.IO message::

    <type>[<attachments>-][<namespace>,][<ack id>][<JSON>]

with the types ``0`` CONNECT, ``1`` DISCONNECT, ``2`` EVENT, ``3`` ACK,
``4`` CONNECT_ERROR, ``5`` BINARY_EVENT, ``6`` BINARY_ACK.  A binary packet
is followed by its attachments as binary Engine.IO messages; its JSON holds
``{"_placeholder":true,"num":i}`` where attachment ``i`` goes
(``BinaryAssembler`` puts them back).

Pure functions: bad input raises ``SocketIOError``, which keeps what could
be read of the packet (its ack id, its event name) so the error can still
be correlated.  The encoders return the Socket.IO packet only; the
transport adds Engine.IO's ``4``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chatd.protocol.envelope import (
    MAX_TYPE_LENGTH,
    NOT_JSON_NUMBERS,
    NonFiniteNumber,
    strict_dumps,
    strict_loads,
)

CONNECT = 0
DISCONNECT = 1
EVENT = 2
ACK = 3
CONNECT_ERROR = 4
BINARY_EVENT = 5
BINARY_ACK = 6

DEFAULT_NAMESPACE = "/"
MAX_ID_DIGITS = 15
"""Ack ids are JavaScript numbers on the other side: 15 digits stay exact."""
MAX_ATTACHMENTS = 64
MAX_NAMESPACE_LENGTH = 256


class SocketIOError(ValueError):
    """A packet that is not Socket.IO v5, or not one chatd can take."""

    def __init__(self, message: str, ack_id: int | None = None, event: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.ack_id = ack_id
        self.event = event


@dataclass(frozen=True, slots=True)
class SioPacket:
    type: int
    namespace: str = DEFAULT_NAMESPACE
    ack_id: int | None = None
    data: Any = None
    attachments: int = 0

    @property
    def event(self) -> str | None:
        """An EVENT's name (checked by ``decode``)."""
        if self.type in (EVENT, BINARY_EVENT):
            name: str = self.data[0]
            return name
        return None


def decode(text: str) -> SioPacket:
    """One Socket.IO packet from the text of an Engine.IO message."""
    if not text or text[0] not in "0123456":
        raise SocketIOError("not a Socket.IO packet: unknown packet type")
    kind, position = int(text[0]), 1
    attachments = 0
    if kind in (BINARY_EVENT, BINARY_ACK):
        attachments, position = _attachment_count(text, position)
    namespace, position = _namespace(text, position)
    ack_id, position = _ack_id(text, position)
    data = _json(text[position:], ack_id) if position < len(text) else None
    packet = SioPacket(kind, namespace, ack_id, data, attachments)
    _check(packet)
    return packet


def _attachment_count(text: str, position: int) -> tuple[int, int]:
    dash = text.find("-", position)
    digits = text[position:dash] if dash >= 0 else ""
    if dash < 0 or not digits.isascii() or not digits.isdigit() or len(digits) > 3:
        raise SocketIOError("binary packet without its attachment count")
    count = int(digits)
    if not 0 < count <= MAX_ATTACHMENTS:
        raise SocketIOError(f"a binary packet has 1 to {MAX_ATTACHMENTS} attachments")
    return count, dash + 1


def _namespace(text: str, position: int) -> tuple[str, int]:
    if position >= len(text) or text[position] != "/":
        return DEFAULT_NAMESPACE, position
    comma = text.find(",", position)
    end = len(text) if comma < 0 else comma
    namespace = text[position:end]
    if len(namespace) > MAX_NAMESPACE_LENGTH:
        raise SocketIOError("namespace is too long")
    return namespace, end if comma < 0 else comma + 1


def _ack_id(text: str, position: int) -> tuple[int | None, int]:
    end = position
    while end < len(text) and text[end].isdigit() and text[end].isascii():
        end += 1
    if end == position:
        return None, position
    if end - position > MAX_ID_DIGITS:
        raise SocketIOError(f"ack id has more than {MAX_ID_DIGITS} digits")
    return int(text[position:end]), end


def _json(text: str, ack_id: int | None) -> Any:
    try:
        return strict_loads(text)
    except NonFiniteNumber:
        raise SocketIOError(f"packet data is not valid JSON: {NOT_JSON_NUMBERS}", ack_id) from None
    except ValueError:
        raise SocketIOError("packet data is not valid JSON", ack_id) from None
    except RecursionError:
        raise SocketIOError("packet data is nested too deeply", ack_id) from None


def _check(packet: SioPacket) -> None:
    """The shape each type must have."""
    kind, data, ack_id = packet.type, packet.data, packet.ack_id
    if kind == CONNECT:
        if data is not None and not isinstance(data, dict):
            raise SocketIOError("CONNECT data must be an object")
    elif kind == DISCONNECT:
        if data is not None:
            raise SocketIOError("DISCONNECT carries no data")
    elif kind in (EVENT, BINARY_EVENT):
        if not isinstance(data, list) or not data:
            raise SocketIOError("EVENT data must be a non-empty array", ack_id)
        name = data[0]
        if not isinstance(name, str) or not name:
            raise SocketIOError("an EVENT's first element must be its name", ack_id)
        if len(name) > MAX_TYPE_LENGTH:
            raise SocketIOError(f"event name is longer than {MAX_TYPE_LENGTH} characters", ack_id)
    elif kind in (ACK, BINARY_ACK):
        if ack_id is None:
            raise SocketIOError("ACK without an id")
        if not isinstance(data, list):
            raise SocketIOError("ACK data must be an array", ack_id)
    elif kind == CONNECT_ERROR:
        if not isinstance(data, dict):
            raise SocketIOError("CONNECT_ERROR data must be an object")


# -- encoding (server to client) ------------------------------------------------


def encode_connect(sid: str) -> bytes:
    return b"0" + strict_dumps({"sid": sid})


def encode_connect_error(message: str, data: Any = None, namespace: str = "/") -> bytes:
    body: dict[str, Any] = {"message": message}
    if data is not None:
        body["data"] = data
    return b"4" + _prefix(namespace) + strict_dumps(body)


def encode_disconnect() -> bytes:
    return b"1"


def encode_event(name: str, data: Any) -> bytes:
    return b"2" + strict_dumps([name, data])


def wrap_event(name: str, data_json: bytes) -> bytes:
    """An EVENT around a body that is already JSON (encoded once upstream)."""
    return b"2[" + strict_dumps(name) + b"," + data_json + b"]"


def notification_message(notification: Any) -> bytes | None:
    """Seed 004's clients read everything from ``socket.on('message')``:
    a notification is ``{type: "notification", data: {title, body, …},
    timestamp}`` there.  The same notification as that EVENT (beside the
    native ``notification`` EVENT, which chatd's own clients read), or None
    for a body that is not a notification."""
    if not isinstance(notification, dict):
        return None
    extra = notification.get("data")
    data: dict[str, Any] = dict(extra) if isinstance(extra, dict) else {}
    if extra is not None and not isinstance(extra, dict):
        data["data"] = extra
    data.update(
        id=notification.get("id"),
        kind=notification.get("type"),
        title=notification.get("title"),
        body=notification.get("message"),
    )
    message = {"type": "notification", "data": data, "timestamp": notification.get("createdAt")}
    return encode_event("message", message)


def encode_ack(ack_id: int, data: Any) -> bytes:
    return b"3" + str(ack_id).encode() + strict_dumps([data])


def _prefix(namespace: str) -> bytes:
    return b"" if namespace == DEFAULT_NAMESPACE else namespace.encode("utf-8") + b","


# -- binary attachments -----------------------------------------------------------


@dataclass
class BinaryAssembler:
    """Collects the attachments that follow a binary packet and puts them
    where its placeholders are."""

    packet: SioPacket
    buffers: list[bytes] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return len(self.buffers) == self.packet.attachments

    def add(self, attachment: bytes) -> SioPacket | None:
        """The finished packet (EVENT or ACK with bytes in place of its
        placeholders) once the last attachment arrived, else ``None``."""
        self.buffers.append(attachment)
        if not self.complete:
            return None
        kind = EVENT if self.packet.type == BINARY_EVENT else ACK
        try:
            data = _fill(self.packet.data, self.buffers, self.packet.ack_id)
        except RecursionError:
            raise SocketIOError("packet data is nested too deeply", self.packet.ack_id) from None
        return SioPacket(kind, self.packet.namespace, self.packet.ack_id, data)


def _fill(value: Any, buffers: list[bytes], ack_id: int | None) -> Any:
    if isinstance(value, list):
        return [_fill(item, buffers, ack_id) for item in value]
    if isinstance(value, dict):
        if value.get("_placeholder") is True:
            num = value.get("num")
            if not isinstance(num, int) or isinstance(num, bool) or not 0 <= num < len(buffers):
                raise SocketIOError("placeholder names no attachment", ack_id)
            return buffers[num]
        return {key: _fill(item, buffers, ack_id) for key, item in value.items()}
    return value


# -- the general encoder --------------------------------------------------------------


def encode_packet(
    kind: int, data: Any = None, namespace: str = DEFAULT_NAMESPACE, ack_id: int | None = None
) -> tuple[bytes, list[bytes]]:
    """Any server-to-client packet in its general form, for a peer that
    uses every feature (the protocol test suites' server: namespaces, acks
    with several arguments, binary).  Bytes anywhere in ``data`` turn an
    EVENT into a BINARY_EVENT (an ACK into a BINARY_ACK): they are replaced
    by placeholders and returned, in order, as the attachments to send
    after the packet.  chatd's own binding keeps its one-purpose encoders
    above, which skip the walk through the data."""
    attachments: list[bytes] = []
    if data is not None:
        data = _deconstruct(data, attachments)
    if attachments:
        if kind not in (EVENT, ACK):
            raise ValueError("only an EVENT or an ACK can carry binary attachments")
        kind = BINARY_EVENT if kind == EVENT else BINARY_ACK
    head = str(kind)
    if attachments:
        head += f"{len(attachments)}-"
    ack = str(ack_id).encode() if ack_id is not None else b""
    body = strict_dumps(data) if data is not None else b""
    return head.encode() + _prefix(namespace) + ack + body, attachments


def _deconstruct(value: Any, attachments: list[bytes]) -> Any:
    """The inverse of ``_fill``: bytes out, placeholders in."""
    if isinstance(value, bytes | bytearray | memoryview):
        attachments.append(bytes(value))
        return {"_placeholder": True, "num": len(attachments) - 1}
    if isinstance(value, list | tuple):
        return [_deconstruct(item, attachments) for item in value]
    if isinstance(value, dict):
        return {key: _deconstruct(item, attachments) for key, item in value.items()}
    return value
