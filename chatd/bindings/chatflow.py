"""Seed 002 ("Chat Flow", ``shared/seeds/002-chat-flow-rooms.md``) over a
plain WebSocket: frames ``{type, payload, requestId}`` with UPPER_SNAKE
types, every reply echoing the client's ``requestId``.

The codec translates each client frame into the session's native requests
(PROTOCOL.md section 4) and their answers back; auth, limits, dispatch and
fan-out stay the session's and the domain's, as for ``/ws``.  What the
translation has to bridge, and how:

* Correlation.  The client's ``requestId`` may be missing, repeated or a
  number, so every native request gets an internal id of its own; a small
  per-connection map (bounded: ``MAX_IN_FLIGHT``) remembers, per internal
  id, the client's ``requestId`` and what the answer answers.  Errors the
  codec raises itself go through ``session.malformed`` (so they count
  against the rate limit) and are correlated through a one-call slot.
* ``AUTHENTICATE``: the session pushes ``authenticated`` and acks; the
  client gets one ``AUTH_SUCCESS`` (from the ack).  A token offered with
  the upgrade has no ack, so there the push becomes the ``AUTH_SUCCESS``.
* ``JOIN_ROOM`` must carry the last 100 messages; the native join carries
  50.  The codec reads ``chat:history`` (limit 100) first and sends the
  join only once that is answered, so the page is older than the join's
  snapshot; the two are merged where they meet (``last_messages``).
  Frames that arrive meanwhile wait (bounded: ``MAX_HELD``) and are
  replayed in order right after the join is sent, so a ``SEND_MESSAGE``
  right behind ``JOIN_ROOM`` lands behind the join, as on ``/ws``.
* ``SEND_MESSAGE``: the room's ``NEW_MESSAGE`` reaches the sender too (the
  fan-out frame is the same for every recipient), so the ack becomes a
  small ``MESSAGE_SENT {id, roomId, seq, timestamp}`` correlation, sent
  only when the client gave a ``requestId``: the message itself is told
  once.
* Errors carry the seed's six codes only (``seed_code``).

The fan-out framer (``frame_chatflow``) runs once per event for every
Chat Flow recipient: native events without a Chat Flow form give ``b""``.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chatd.bindings.codec import Codec, json_object
from chatd.bindings.socket_write import frame_text
from chatd.domain.models import Published
from chatd.errors import ErrorCode
from chatd.protocol.envelope import strict_dumps

if TYPE_CHECKING:
    from chatd.session.session import Session

__all__ = [
    "CHATFLOW",
    "ChatFlowCodec",
    "ChatFlowDialect",
    "frame_chatflow",
    "framer",
    "last_messages",
    "seed_code",
]

JOIN_MESSAGES = 100
"""Messages a ``ROOM_JOINED`` carries (the seed's "last 100")."""

MAX_IN_FLIGHT = 512
"""Native requests of one connection waiting for their answer: room for a
client that pipelines (the session's rate limit bounds the rate; this
bounds the map when storage is slow)."""

MAX_HELD = 256
MAX_HELD_BYTES = 256 * 1024
"""Frames (and their bytes) that may wait while a ``JOIN_ROOM`` reads its
history: a few milliseconds' worth for a pipelining client."""

MAX_REQUEST_ID = 128
MAX_TYPE = 64
MAX_ROOM_ID = 128
MAX_USERNAME = 128
MAX_MESSAGE_TYPE = 32

_SYNC_ID = "!"
"""The request id of the codec's own errors: they are framed during the
``session.malformed`` call, while ``_sync_reply_to`` holds the client's
``requestId``."""

_ROOM_REQUESTS = frozenset(
    {"JOIN_HISTORY", "JOIN_ROOM", "LEAVE_ROOM", "SEND_MESSAGE", "TYPING_STATUS", "GET_HISTORY"}
)


# -- frames and shapes ----------------------------------------------------------------


def encode_frame(kind: str, payload: Any, request_id: Any = None) -> bytes:
    """One Chat Flow frame, ready for the transport; ``requestId`` only
    when there is one to echo."""
    frame: dict[str, Any] = {"type": kind, "payload": payload}
    if request_id is not None:
        frame["requestId"] = request_id
    return frame_text(strict_dumps(frame))


def seed_message(message: dict[str, Any]) -> dict[str, Any]:
    """A native message as the seed's ``NEW_MESSAGE`` payload.  chatd keeps
    no message type (every message is text) nor, before it learns one, a
    name: ``username`` falls back to the user id.  ``seq`` is extra: the
    room order, and the cursor of ``GET_HISTORY``."""
    user = message.get("userId")
    return {
        "id": message.get("id"),
        "roomId": message.get("chatId"),
        "userId": user,
        "username": message.get("username") or user,
        "content": message.get("content", ""),
        "type": message.get("type") or "text",
        "timestamp": message.get("createdAt"),
        "seq": message.get("seq"),
    }


def seed_room(room: dict[str, Any]) -> dict[str, Any]:
    """A native room in the seed's shape (without ``lastSeq``)."""
    return {
        "id": room.get("id"),
        "name": room.get("name"),
        "description": room.get("description", ""),
        "type": room.get("type"),
        "memberCount": room.get("memberCount"),
        "createdAt": room.get("createdAt"),
    }


def last_messages(
    history: list[dict[str, Any]], joined: list[dict[str, Any]], has_more: bool
) -> list[dict[str, Any]]:
    """The last ``JOIN_MESSAGES`` messages up to the join's snapshot.

    ``joined`` is the join's page (the newest 50 up to the snapshot, in
    seq order; ``has_more`` when older ones exist), ``history`` the newest
    page read just before the join.  Seqs have no gaps, so the two meet
    unless more than a page was posted between the two reads; then only
    the join's page is certain to be gap-free, and it alone is given."""
    if not has_more or not joined:
        return joined
    first = joined[0].get("seq", 0)
    if not history or history[-1].get("seq", 0) < first - 1:
        return joined
    older = [m for m in history if m.get("seq", 0) < first]
    return (older + joined)[-JOIN_MESSAGES:]


# -- fan-out --------------------------------------------------------------------------

PushShape = Callable[[dict[str, Any]], tuple[str, dict[str, Any]]]


def _new_message(data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return "NEW_MESSAGE", seed_message(data)


def _typing_update(data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    user = data.get("userId")
    return "TYPING_UPDATE", {
        "roomId": data.get("chatId"),
        "userId": user,
        "username": data.get("username") or user,
        "isTyping": bool(data.get("isTyping")),
    }


def _room_left(data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return "ROOM_LEFT", {"roomId": data.get("chatId"), "removed": bool(data.get("removed"))}


def _user_online(data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    user = data.get("userId")
    return "USER_STATUS", {"userId": user, "username": user, "status": "online"}


def _user_offline(data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    user = data.get("userId")
    status = {"userId": user, "username": user, "status": "offline"}
    if data.get("lastSeen") is not None:
        status["lastSeen"] = data["lastSeen"]
    return "USER_STATUS", status


PUSHES: dict[str, PushShape] = {
    "chat:message": _new_message,
    "chat:typing": _typing_update,
    "chat:left": _room_left,
    "user:online": _user_online,
    "user:offline": _user_offline,
}
"""Native pushes with a Chat Flow form.  The rest (reads, reactions,
notifications, backend pushes, direct messages, friends, live streams)
have no request in this dialect to act on them, and are dropped."""


def frame_chatflow(event: Published) -> bytes:
    """The fan-out framer: one frame per event for every Chat Flow
    recipient, ``b""`` for an event the dialect has no form for (tested
    before decoding, so dropped events cost a dict lookup)."""
    shape = PUSHES.get(event.type)
    if shape is None:
        return b""
    data = json.loads(event.data)
    if not isinstance(data, dict):
        return b""
    kind, payload = shape(data)
    return encode_frame(kind, payload)


framer = frame_chatflow


# -- errors ---------------------------------------------------------------------------

_SEED_CODES: dict[str, str] = {
    ErrorCode.UNAUTHORIZED: "UNAUTHORIZED",
    ErrorCode.INVALID_MESSAGE: "INVALID_MESSAGE",
    ErrorCode.UNKNOWN_EVENT: "INVALID_MESSAGE",
    ErrorCode.PAYLOAD_TOO_LARGE: "INVALID_MESSAGE",
    ErrorCode.USER_NOT_FOUND: "INVALID_MESSAGE",
    ErrorCode.ROOM_NOT_FOUND: "ROOM_NOT_FOUND",
    ErrorCode.NOT_A_MEMBER: "NOT_A_MEMBER",
    ErrorCode.RATE_LIMIT_EXCEEDED: "RATE_LIMIT_EXCEEDED",
    ErrorCode.UNAVAILABLE: "SERVER_ERROR",
    ErrorCode.SERVER_ERROR: "SERVER_ERROR",
}


def seed_code(code: str, answers: str | None) -> str:
    """A native error code as one of the seed's six.  ``FORBIDDEN`` is
    about a room (``NOT_A_MEMBER``) for room requests, else about who the
    client is (``UNAUTHORIZED``: another user's token on an authenticated
    connection).  Anything unforeseen is a ``SERVER_ERROR``."""
    if code == ErrorCode.FORBIDDEN:
        return "NOT_A_MEMBER" if answers in _ROOM_REQUESTS else "UNAUTHORIZED"
    return _SEED_CODES.get(code, "SERVER_ERROR")


class _Refused(Exception):
    """A client frame the codec turns down before it reaches the session."""

    def __init__(self, message: str, code: str = ErrorCode.INVALID_MESSAGE) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# -- reading client frames ------------------------------------------------------------


class _RefusedRequest(_Refused):
    """Refused, but the ``requestId`` (and type) could be read."""

    def __init__(self, message: str, reply_to: Any, kind: str | None = None) -> None:
        super().__init__(message)
        self.reply_to = reply_to
        self.kind = kind


@dataclass(frozen=True, slots=True)
class _Request:
    """A client frame whose envelope was readable."""

    type: str
    payload: dict[str, Any]
    reply_to: Any
    size: int = 0
    """The frame's length, for the bound on frames waiting for a join."""


@dataclass(frozen=True, slots=True)
class _Pending:
    """What a native request's answer answers: the client's request type
    (``JOIN_HISTORY`` for the history read of a ``JOIN_ROOM``), its
    ``requestId``, the room, and for a join the page read before it."""

    answers: str
    reply_to: Any
    room_id: str | None = None
    history: list[dict[str, Any]] | None = None


def _request_id(frame: dict[str, Any]) -> Any:
    """The client's ``requestId`` as it will be echoed: a string of at most
    ``MAX_REQUEST_ID`` characters or a number; None when absent."""
    value = frame.get("requestId")
    if value is None:
        return None
    if isinstance(value, str) and len(value) <= MAX_REQUEST_ID:
        return value
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return value
    raise _Refused(
        f"'requestId' must be a string of at most {MAX_REQUEST_ID} characters or a number"
    )


def _read(payload: bytes, binary: bool) -> _Request:
    """The frame's envelope, or ``_Refused`` (with the ``requestId`` when
    it could be read, as ``reply_to`` of the exception's request)."""
    frame = None if binary else json_object(payload)
    if frame is None:
        raise _Refused("a frame must be a JSON object {type, payload, requestId} sent as text")
    reply_to = _request_id(frame)
    kind = frame.get("type")
    body = frame.get("payload")
    if not isinstance(kind, str) or not kind or len(kind) > MAX_TYPE:
        raise _RefusedRequest(f"'type' must be a string of 1 to {MAX_TYPE} characters", reply_to)
    if body is None:
        body = {}
    elif not isinstance(body, dict):
        raise _RefusedRequest("'payload' must be an object", reply_to, kind)
    return _Request(kind, body, reply_to, len(payload))


def _room_id(payload: dict[str, Any]) -> str:
    value = payload.get("roomId")
    if not isinstance(value, str) or not value.strip():
        raise _Refused("'roomId' must be a non-empty string")
    if len(value) > MAX_ROOM_ID:
        raise _Refused(f"'roomId' is longer than {MAX_ROOM_ID} characters")
    return value


def _optional_text(payload: dict[str, Any], field: str, max_length: int) -> str | None:
    value = payload.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Refused(f"'{field}' must be a string")
    if len(value) > max_length:
        raise _Refused(f"'{field}' is longer than {max_length} characters")
    return value


# -- the codec ------------------------------------------------------------------------


class ChatFlowCodec:
    """One Chat Flow connection's translation (see the module docstring)."""

    framer = staticmethod(frame_chatflow)
    transport_name = "chatflow"

    # One per connection: slots keep an idle connection's memory down.
    __slots__ = (
        "_ids",
        "_pending",
        "_held",
        "_held_bytes",
        "_joining",
        "_authenticating",
        "_sync_reply_to",
        "_session",
        "_user_id",
        "_username",
    )

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._pending: dict[str, _Pending] = {}
        self._held: deque[_Request] = deque()
        self._held_bytes = 0
        self._joining = False
        self._authenticating = False
        self._sync_reply_to: Any = None
        self._session: Session | None = None
        self._user_id: str | None = None
        self._username: str | None = None

    # -- from the client ----------------------------------------------------------------

    def received(self, session: Session, payload: bytes, binary: bool) -> None:
        """Nothing may escape into the binding (which would drop the
        connection): a failure of the codec itself is a SERVER_ERROR."""
        self._session = session
        try:
            self._receive(session, payload, binary)
        except Exception:
            session.failed()

    def _receive(self, session: Session, payload: bytes, binary: bool) -> None:
        try:
            request = _read(payload, binary)
        except _RefusedRequest as e:
            self._refuse(session, e.reply_to, e.message, e.code, e.kind)
            return
        except _Refused as e:
            self._refuse(session, None, e.message, e.code, None)
            return
        if self._joining:
            self._hold(session, request)
        else:
            self._handle(session, request)

    def _hold(self, session: Session, request: _Request) -> None:
        """A ``JOIN_ROOM`` is reading its history: later frames wait."""
        if len(self._held) >= MAX_HELD or self._held_bytes + request.size > MAX_HELD_BYTES:
            self._refuse(
                session,
                request.reply_to,
                "too many requests while a room is being joined; slow down",
                ErrorCode.RATE_LIMIT_EXCEEDED,
                request.type,
            )
            return
        self._held.append(request)
        self._held_bytes += request.size

    def _release(self, session: Session) -> None:
        """The join's history is answered: replay what waited, in order,
        until one of them is a ``JOIN_ROOM`` that must wait in turn."""
        self._joining = False
        while self._held and not self._joining:
            request = self._held.popleft()
            self._held_bytes -= request.size
            self._handle(session, request)

    def _handle(self, session: Session, request: _Request) -> None:
        translate = _REQUESTS.get(request.type)
        try:
            if translate is None:
                raise _Refused(f"unknown message type {request.type!r}")
            translate(self, session, request)
        except _Refused as e:
            self._refuse(session, request.reply_to, e.message, e.code, request.type)

    def _refuse(
        self, session: Session, reply_to: Any, message: str, code: str, kind: str | None
    ) -> None:
        """An ``ERROR`` for a frame that never became a native request.
        Through ``session.malformed``: counted, logged, rate limited."""
        self._sync_reply_to = reply_to
        try:
            session.malformed(code, message, _SYNC_ID, kind)
        finally:
            self._sync_reply_to = None

    def _ask(self, session: Session, native: str, data: Any, pending: _Pending) -> None:
        """Send a native request under a fresh internal id."""
        if len(self._pending) >= MAX_IN_FLIGHT:
            raise _Refused(
                "too many requests waiting for an answer; slow down",
                ErrorCode.RATE_LIMIT_EXCEEDED,
            )
        request_id = str(next(self._ids))
        self._pending[request_id] = pending
        session.received(native, request_id, data)

    # -- the requests ---------------------------------------------------------------------

    def _authenticate(self, session: Session, request: _Request) -> None:
        token = request.payload.get("token")
        if not isinstance(token, str) or not token:
            raise _Refused("'token' must be a non-empty string")
        username = _optional_text(request.payload, "username", MAX_USERNAME)
        data = {"token": token} if username is None else {"token": token, "name": username}
        self._authenticating = True
        try:
            self._ask(session, "auth", data, _Pending(request.type, request.reply_to))
        finally:
            self._authenticating = False

    def _join_room(self, session: Session, request: _Request) -> None:
        room = _room_id(request.payload)
        history = {"chatId": room, "limit": JOIN_MESSAGES}
        self._joining = True
        try:
            self._ask(
                session, "chat:history", history, _Pending("JOIN_HISTORY", request.reply_to, room)
            )
        except _Refused:
            self._joining = False
            raise

    def _create_room(self, session: Session, request: _Request) -> None:
        fields = request.payload
        data = {
            "name": fields.get("name"),
            "description": fields.get("description"),
            "type": "public" if fields.get("type") is None else fields.get("type"),
            "members": fields.get("members"),
        }
        self._ask(session, "chat:create", data, _Pending(request.type, request.reply_to))

    def _leave_room(self, session: Session, request: _Request) -> None:
        room = _room_id(request.payload)
        pending = _Pending(request.type, request.reply_to, room)
        self._ask(session, "chat:leave", {"chatId": room}, pending)

    def _send_message(self, session: Session, request: _Request) -> None:
        room = _room_id(request.payload)
        # Not stored: chatd's messages are text (NEW_MESSAGE says so).
        _optional_text(request.payload, "type", MAX_MESSAGE_TYPE)
        data = {"chatId": room, "content": request.payload.get("content")}
        self._ask(session, "chat:message", data, _Pending(request.type, request.reply_to, room))

    def _typing_status(self, session: Session, request: _Request) -> None:
        room = _room_id(request.payload)
        data = {"chatId": room, "isTyping": request.payload.get("isTyping")}
        self._ask(session, "chat:typing", data, _Pending(request.type, request.reply_to, room))

    def _get_history(self, session: Session, request: _Request) -> None:
        room = _room_id(request.payload)
        fields = request.payload
        data = {
            "chatId": room,
            "before": fields.get("before"),
            "after": fields.get("after"),
            "limit": fields.get("limit"),
        }
        self._ask(session, "chat:history", data, _Pending(request.type, request.reply_to, room))

    def _ping(self, session: Session, request: _Request) -> None:
        self._ask(session, "ping", {}, _Pending(request.type, request.reply_to))

    # -- to the client ----------------------------------------------------------------------

    def frame_ack(self, request_id: str, data: Any) -> bytes:
        pending = self._pending.pop(request_id, None)
        if pending is None:
            return b""
        answer = _ACKS[pending.answers]
        return answer(self, pending, data if isinstance(data, dict) else {})

    def frame_push(self, event_type: str, data: Any) -> bytes:
        if not isinstance(data, dict):
            return b""
        if event_type == "authenticated":
            # Answering an AUTHENTICATE: its ack is the one AUTH_SUCCESS.
            return b"" if self._authenticating else self._auth_success(data, None)
        shape = PUSHES.get(event_type)
        if shape is None:
            return b""
        kind, payload = shape(data)
        return encode_frame(kind, payload)

    def frame_error(
        self, code: str, message: str, request_id: str | None, event: str | None
    ) -> bytes:
        pending = self._pending.pop(request_id, None) if request_id is not None else None
        if pending is None:
            answers, reply_to = event, self._sync_reply_to
        else:
            answers, reply_to = pending.answers, pending.reply_to
        payload = {"code": seed_code(code, answers), "message": message}
        frame = encode_frame("ERROR", payload, reply_to)
        session = self._session
        if answers != "JOIN_HISTORY" or pending is None or session is None:
            return frame
        # The JOIN_ROOM failed before its join: its ERROR goes out first,
        # then what waited behind it.
        session.send_frame(frame)
        self._release(session)
        return b""

    # -- answers ------------------------------------------------------------------------------

    def _auth_success(self, data: dict[str, Any], reply_to: Any) -> bytes:
        user = data.get("userId")
        self._user_id = user if isinstance(user, str) else None
        self._username = data.get("name") or user
        payload = {"userId": user, "username": self._username, "status": "online"}
        return encode_frame("AUTH_SUCCESS", payload, reply_to)

    def _authenticated(self, pending: _Pending, data: dict[str, Any]) -> bytes:
        return self._auth_success(data, pending.reply_to)

    def _history_read(self, pending: _Pending, data: dict[str, Any]) -> bytes:
        """The history of a ``JOIN_ROOM`` is in: now the join itself, then
        what waited behind it.  Nothing for the client yet."""
        session = self._session
        assert session is not None, "an answer follows a request"
        messages = data.get("messages")
        join = _Pending(
            "JOIN_ROOM",
            pending.reply_to,
            pending.room_id,
            messages if isinstance(messages, list) else [],
        )
        try:
            self._ask(session, "chat:join", {"chatId": pending.room_id}, join)
        except _Refused as e:
            self._refuse(session, pending.reply_to, e.message, e.code, "JOIN_ROOM")
        self._release(session)
        return b""

    def _room_joined(self, pending: _Pending, data: dict[str, Any]) -> bytes:
        messages = last_messages(
            pending.history or [], data.get("messages") or [], bool(data.get("hasMore"))
        )
        payload = {
            "room": seed_room(data.get("room") or {}),
            "messages": [seed_message(m) for m in messages],
            "users": [self._user_entry(u) for u in data.get("users") or []],
        }
        return encode_frame("ROOM_JOINED", payload, pending.reply_to)

    def _user_entry(self, user_id: str) -> dict[str, Any]:
        """An online member as the seed shows users (chatd knows the
        display name of this connection's own user only)."""
        name = self._username if user_id == self._user_id else user_id
        return {"userId": user_id, "username": name, "status": "online"}

    def _room_created(self, pending: _Pending, data: dict[str, Any]) -> bytes:
        return encode_frame(
            "ROOM_CREATED", {"room": seed_room(data.get("room") or {})}, pending.reply_to
        )

    def _room_left(self, pending: _Pending, data: dict[str, Any]) -> bytes:
        return encode_frame("ROOM_LEFT", {"roomId": pending.room_id}, pending.reply_to)

    def _message_sent(self, pending: _Pending, data: dict[str, Any]) -> bytes:
        """The NEW_MESSAGE fan-out tells the sender too; the ack only
        correlates, and only when there is a ``requestId`` to echo."""
        if pending.reply_to is None:
            return b""
        payload = {
            "id": data.get("id"),
            "roomId": pending.room_id,
            "seq": data.get("seq"),
            "timestamp": data.get("createdAt"),
        }
        return encode_frame("MESSAGE_SENT", payload, pending.reply_to)

    def _typing_sent(self, pending: _Pending, data: dict[str, Any]) -> bytes:
        """The seed answers typing with nothing but the others' update."""
        return b""

    def _history(self, pending: _Pending, data: dict[str, Any]) -> bytes:
        payload = {
            "roomId": pending.room_id,
            "messages": [seed_message(m) for m in data.get("messages") or []],
            "hasMore": bool(data.get("hasMore")),
        }
        return encode_frame("HISTORY", payload, pending.reply_to)

    def _pong(self, pending: _Pending, data: dict[str, Any]) -> bytes:
        return encode_frame("PONG", {"timestamp": data.get("timestamp")}, pending.reply_to)


_REQUESTS: dict[str, Callable[[ChatFlowCodec, Session, _Request], None]] = {
    "AUTHENTICATE": ChatFlowCodec._authenticate,
    "JOIN_ROOM": ChatFlowCodec._join_room,
    "CREATE_ROOM": ChatFlowCodec._create_room,
    "LEAVE_ROOM": ChatFlowCodec._leave_room,
    "SEND_MESSAGE": ChatFlowCodec._send_message,
    "TYPING_STATUS": ChatFlowCodec._typing_status,
    "GET_HISTORY": ChatFlowCodec._get_history,
    "PING": ChatFlowCodec._ping,
}

_ACKS: dict[str, Callable[[ChatFlowCodec, _Pending, dict[str, Any]], bytes]] = {
    "AUTHENTICATE": ChatFlowCodec._authenticated,
    "JOIN_HISTORY": ChatFlowCodec._history_read,
    "JOIN_ROOM": ChatFlowCodec._room_joined,
    "CREATE_ROOM": ChatFlowCodec._room_created,
    "LEAVE_ROOM": ChatFlowCodec._room_left,
    "SEND_MESSAGE": ChatFlowCodec._message_sent,
    "TYPING_STATUS": ChatFlowCodec._typing_sent,
    "GET_HISTORY": ChatFlowCodec._history,
    "PING": ChatFlowCodec._pong,
}


# -- the dialect ----------------------------------------------------------------------


class ChatFlowDialect:
    """Seed 002 at ``/ws/chatflow``, and on ``/`` for a first frame of its
    shape."""

    name = "chatflow"
    framer = staticmethod(frame_chatflow)

    def claims(self, frame: dict[str, Any]) -> bool:
        """Seed 002's frames have a ``payload`` or a ``requestId``, or an
        upper-case ``type`` (``AUTHENTICATE``); seed 000's and the native
        ones are lower-case with ``data`` or ``token``."""
        if "payload" in frame or "requestId" in frame:
            return True
        kind = frame.get("type")
        return isinstance(kind, str) and kind.isupper()

    def codec(self) -> Codec:
        return ChatFlowCodec()


CHATFLOW = ChatFlowDialect()
