"""Seed 000's wire dialect (``shared/seeds/000-ws-chat-friends.md``), so the
clients of that Node server work against chatd unchanged.

Its frames are ``{type, data, timestamp}`` with snake_case event names and
no request ids: the client authenticates with a first frame
``{"type":"authenticate","token":"…"}``, sends direct messages as
``message {receiverId, content, messageType}``, typing as ``typing_start`` /
``typing_stop {friendId}``, and hears ``message``, ``typing``,
``user_online``, ``user_offline``, ``friend_request`` and ``error``.

The dialect is a translation and nothing more: every client frame becomes
one of the session's native requests (``Session.received``), so limits,
rate limits, authentication and storage are exactly ``/ws``'s.  Because
seed 000 has no request ids, the codec gives each request an id of its own
and remembers, in a small bounded map, what the reply to it must become
(a ``message_sent`` confirmation, a ``room_joined``, nothing at all, or an
``error`` naming the seed event).

Typing in chatd belongs to a room, and only connections that joined the
room hear it: a direct conversation's room (``dm_…``) is joined by the
codec itself, quietly (a ``since`` past any message, so no history is
read): for every friend when the connection authenticates, on the first
message or typing to someone, and when a message of a conversation it has
not joined is written to it (``wrap_writer`` watches the connection's own
frames).  A typing frame waits for that join.

Fan-out (``frame_event``) renders each event once for every seed-000
recipient; it parses JSON only for the events whose shape changes
(messages and typing).  See docs/dialects.md for every event and shape.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chatd.bindings.codec import Codec, json_object
from chatd.bindings.socket_write import Write, frame_text
from chatd.clock import now_iso
from chatd.domain.interfaces import Framer
from chatd.domain.models import DIRECT_ROOM_PREFIX, Published, dm_room_id
from chatd.errors import ChatError, ErrorCode, invalid
from chatd.protocol.envelope import MAX_INTEGER, strict_dumps

if TYPE_CHECKING:
    from chatd.session.session import Session

CLIENT_EVENTS = frozenset(
    {"authenticate", "message", "typing_start", "typing_stop", "join_room", "leave_room"}
)
"""The client-to-server events of the seed README."""

MAX_TYPE_LENGTH = 64
MAX_ID_LENGTH = 128
MAX_PENDING = 1024
"""Requests awaiting their reply per connection; beyond it the oldest is
forgotten (its reply then goes out in a generic form or not at all).  The
rate limit keeps a well-behaved client far below it."""
MAX_FRIEND_ROOMS = 50
CONVERSATION_MARKER = b'"chatId":"' + DIRECT_ROOM_PREFIX.encode()
"""How a direct conversation's room shows in an outgoing frame (compact JSON)."""
"""Direct conversations joined for typing when a connection authenticates."""
PAST_EVERY_MESSAGE = 2**53
"""The ``since`` of a quiet join: no history is read."""
TEXT = "TEXT"


# -- frames out --------------------------------------------------------------------


def _frame(event_type: str, data: Any, timestamp: str | None = None) -> bytes:
    """``{type, data, timestamp}`` as one text frame."""
    body = {"type": event_type, "data": data, "timestamp": timestamp or now_iso()}
    return frame_text(strict_dumps(body))


def _wrapped(type_json: bytes, data_json: bytes) -> bytes:
    """The same around a body that is already JSON (no parse, no encode)."""
    stamp = now_iso().encode()
    return frame_text(
        b'{"type":' + type_json + b',"data":' + data_json + b',"timestamp":"' + stamp + b'"}'
    )


def error_frame(code: str, message: str, event: str | None) -> bytes:
    """Seed 000's ``error {code, message, event?}``; ``event`` is the seed
    event that failed, when there was one."""
    data: dict[str, Any] = {"code": code, "message": message}
    if event is not None:
        data["event"] = event
    return _frame("error", data)


def seed_message(wire: dict[str, Any]) -> dict[str, Any]:
    """A native message (room or direct) with seed 000's fields added:
    ``senderId`` and ``receiverId`` (direct), ``roomId``, ``messageType``.
    Everything native stays (``username`` too, when the message has one)."""
    message = dict(wire)
    message.setdefault("senderId", wire.get("userId"))
    recipient = wire.get("recipientId")
    if recipient is not None:
        message["receiverId"] = recipient
    message["roomId"] = wire.get("chatId")
    message["messageType"] = TEXT
    return message


def message_frame(event_type: str, wire: dict[str, Any]) -> bytes:
    """A message event, the message both under ``data`` (the README's Event
    Format) and at the top level (its example client reads
    ``data.message``), stamped with the message's own time."""
    message = seed_message(wire)
    created = wire.get("createdAt")
    body = {
        "type": event_type,
        "data": message,
        "message": message,
        "timestamp": created if isinstance(created, str) else now_iso(),
    }
    return frame_text(strict_dumps(body))


def _render_direct_message(data: bytes) -> bytes:
    wire = json.loads(data).get("message")
    return message_frame("message", wire) if isinstance(wire, dict) else b""


def _render_room_message(data: bytes) -> bytes:
    """A direct conversation's messages reach both users as
    ``message:receive`` already; its room's copy would be a duplicate."""
    wire = json.loads(data)
    chat_id = wire.get("chatId")
    if isinstance(chat_id, str) and chat_id.startswith(DIRECT_ROOM_PREFIX):
        return b""
    return message_frame("message", wire)


def _render_typing(data: bytes) -> bytes:
    typing = json.loads(data)
    typing["roomId"] = typing.get("chatId")
    return _frame("typing", typing)


def _render_backend_push(data: bytes) -> bytes:
    """A backend's free-form push (``POST /websocket/message/…``) already is
    ``{type, data, timestamp}``: seed 000's very event format."""
    return frame_text(data)


_RENDERED: dict[str, Callable[[bytes], bytes]] = {
    "message:receive": _render_direct_message,
    "chat:message": _render_room_message,
    "chat:typing": _render_typing,
    "message": _render_backend_push,
}

_RENAMED = {
    "user:online": b'"user_online"',
    "user:offline": b'"user_offline"',
    "friend:request": b'"friend_request"',
}


def frame_event(event: Published) -> bytes:
    """The fan-out framer: one seed-000 frame per event for every seed-000
    recipient.  Events seed 000 has no name for keep their native name
    (``{type: "chat:read", data, timestamp}``)."""
    render = _RENDERED.get(event.type)
    if render is not None:
        return render(event.data)
    type_json = _RENAMED.get(event.type)
    return _wrapped(type_json if type_json is not None else strict_dumps(event.type), event.data)


# -- frames in ---------------------------------------------------------------------------


def _fields(frame: dict[str, Any]) -> dict[str, Any]:
    """An event's fields: its ``data``, or the frame itself when it has none
    (the README's ``authenticate`` puts its token at the top level)."""
    data = frame.get("data")
    if data is None:
        return frame
    if not isinstance(data, dict):
        raise invalid("'data' must be an object")
    return data


def _identifier(fields: dict[str, Any], field: str) -> str:
    value = fields.get(field)
    if not isinstance(value, str) or not value.strip():
        raise invalid(f"'{field}' must be a non-empty string")
    if len(value) > MAX_ID_LENGTH:
        raise invalid(f"'{field}' is longer than {MAX_ID_LENGTH} characters")
    return value


def _one_of(fields: dict[str, Any], names: tuple[str, ...]) -> tuple[str, str]:
    """The one field among ``names`` that is given, and its value."""
    given = [name for name in names if fields.get(name) is not None]
    if len(given) != 1:
        listed = ", ".join(f"'{name}'" for name in names)
        raise invalid(f"give exactly one of {listed}")
    return given[0], _identifier(fields, given[0])


def _check_message_type(fields: dict[str, Any]) -> None:
    kind = fields.get("messageType")
    if kind is not None and (not isinstance(kind, str) or kind.upper() != TEXT):
        raise invalid("chatd keeps text messages only: 'messageType' must be \"TEXT\"")


def _since(fields: dict[str, Any]) -> int | None:
    since = fields.get("since")
    if since is not None and (
        isinstance(since, bool) or not isinstance(since, int) or not 0 <= since <= MAX_INTEGER
    ):
        raise invalid("'since' must be a non-negative integer below 2^63")
    return since


_SEED_EVENT_OF = {
    "auth": "authenticate",
    "message:send": "message",
    "chat:message": "message",
    "chat:join": "join_room",
    "chat:leave": "leave_room",
}
"""For an error that lost its pending entry: the seed event it answers."""


def _nothing(data: Any) -> bytes:
    return b""


@dataclass(frozen=True, slots=True)
class _Pending:
    """What the reply to one of the codec's own request ids becomes.
    ``event`` is the seed event it answers (None: the codec's own request,
    whose failure the client is not told about) and ``on_error``
    replaces the plain ``error`` frame."""

    event: str | None
    on_ack: Callable[[Any], bytes] = _nothing
    on_error: Callable[[str, str], bytes] | None = None


@dataclass(frozen=True, slots=True)
class _Typing:
    """A typing frame waiting for its direct conversation's room."""

    event: str
    is_typing: bool


_scanned: list[Any] = [None, ()]


def conversations_in(frame: bytes) -> tuple[str, ...]:
    """The direct conversations (``dm_…`` rooms) an outgoing frame names.
    Fan-out hands the same bytes to every seed-000 recipient of a turn one
    after the other, so the last frame's answer is kept: the bytes are
    searched once, not once per recipient."""
    if frame is _scanned[0]:
        found: tuple[str, ...] = _scanned[1]
        return found
    rooms: list[str] = []
    start = frame.find(CONVERSATION_MARKER)
    while start >= 0:
        begin = start + len(CONVERSATION_MARKER) - len(DIRECT_ROOM_PREFIX)
        end = frame.find(b'"', begin)
        if end < 0:
            break
        rooms.append(frame[begin:end].decode("ascii", "replace"))
        start = frame.find(CONVERSATION_MARKER, end)
    found = tuple(dict.fromkeys(rooms))
    _scanned[0], _scanned[1] = frame, found
    return found


Later = Callable[[Callable[[], None]], object]
"""Runs a call once the current one is over (in a later reactor turn)."""


class Seed000Codec:
    """One seed-000 connection: see the module docstring.

    A request the codec sends because of a reply (a quiet join after a
    message, the typing that waited for a join) goes out through ``later``:
    a reply is written before the domain has finished with its request (a
    join counts once its reply is out), so a request sent from inside it
    would find the join incomplete."""

    framer: Framer = staticmethod(frame_event)
    transport_name = "seed000"

    def __init__(self, later: Later | None = None) -> None:
        self._later: Later = later or self._next_turn
        self._session: Session | None = None
        self._counter = 0
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._dm_rooms: set[str] = set()
        self._dm_joining: dict[str, _Typing | None] = {}
        self._bootstrapped = False

    # -- client frames ----------------------------------------------------------------

    def received(self, session: Session, payload: bytes, binary: bool) -> None:
        self._session = session
        if session.identity is not None and not self._bootstrapped:
            self._bootstrap(session)  # the token came with the upgrade
        frame = None if binary else json_object(payload)
        if frame is None:
            session.malformed(
                ErrorCode.INVALID_MESSAGE, "a frame must be a JSON object in a text frame"
            )
            return
        event = frame.get("type")
        if not isinstance(event, str) or not event or len(event) > MAX_TYPE_LENGTH:
            session.malformed(
                ErrorCode.INVALID_MESSAGE,
                f"'type' must be a non-empty string of at most {MAX_TYPE_LENGTH} characters",
            )
            return
        handler = _HANDLERS.get(event)
        if handler is None:
            session.malformed(ErrorCode.UNKNOWN_EVENT, f"unknown event {event!r}", None, event)
            return
        try:
            handler(self, session, event, frame)
        except ChatError as e:
            session.malformed(e.code, e.message, None, event)
        except Exception:
            session.failed()

    def _authenticate(self, session: Session, event: str, frame: dict[str, Any]) -> None:
        token = frame.get("token")
        data = frame.get("data")
        if token is None and isinstance(data, dict):
            token = data.get("token")
        # The session's own rules: a bad or missing token closes with 4001
        # an unauthenticated connection, exactly as on /ws.
        session.received("auth", None, {"token": token})
        if session.identity is not None and not self._bootstrapped:
            self._bootstrap(session)

    def _message(self, session: Session, event: str, frame: dict[str, Any]) -> None:
        fields = _fields(frame)
        _check_message_type(fields)
        target, value = _one_of(fields, ("receiverId", "roomId", "chatId"))
        native: dict[str, Any] = {"content": fields.get("content")}
        if fields.get("tempId") is not None:
            native["tempId"] = fields["tempId"]
        if target == "receiverId":
            native["recipientId"] = value
            self._request(session, "message:send", native, _Pending(event, self._direct_sent))
            return
        native["chatId"] = value
        self._request(
            session,
            "chat:message",
            native,
            _Pending(event, lambda ack: self._room_message_sent(value, native, ack)),
        )

    def _typing(self, session: Session, event: str, frame: dict[str, Any]) -> None:
        room = self._room(session, _fields(frame))
        typing = _Typing(event, event == "typing_start")
        if not room.startswith(DIRECT_ROOM_PREFIX) or room in self._dm_rooms:
            self._send_typing(session, room, typing)
        elif room in self._dm_joining:
            self._dm_joining[room] = typing  # the latest state wins
        else:
            self._join_dm(session, room, typing)

    def _join_room(self, session: Session, event: str, frame: dict[str, Any]) -> None:
        fields = _fields(frame)
        room = self._room(session, fields)
        native: dict[str, Any] = {"chatId": room}
        since = _since(fields)
        if since is not None:
            native["since"] = since
        self._request(
            session, "chat:join", native, _Pending(event, lambda data: self._joined(room, data))
        )

    def _leave_room(self, session: Session, event: str, frame: dict[str, Any]) -> None:
        room = self._room(session, _fields(frame))
        self._request(
            session, "chat:leave", {"chatId": room}, _Pending(event, lambda _: self._left(room))
        )

    # -- the codec's own requests ----------------------------------------------------------

    def bind_session(self, session: Session) -> None:
        """The connection's session, known from the open on."""
        self._session = session

    def wrap_writer(self, write: Write) -> Write:
        """The connection's fan-out write, watched for a direct
        conversation this connection has not joined (the first message
        someone sends it arrives on the user's channel): the codec joins
        it, quietly, so the partner's typing reaches this connection too.
        Only seed 000 connections pay the ``find``."""
        scanned = _scanned

        def watched(frame: bytes) -> None:
            write(frame)
            # The same bytes as for the previous recipient: no call at all.
            rooms = scanned[1] if frame is scanned[0] else conversations_in(frame)
            if rooms:
                self._notice_conversations(rooms)

        return watched

    def _notice_conversations(self, rooms: tuple[str, ...]) -> None:
        session = self._session
        if session is None or session.identity is None:
            return
        for room in rooms:
            if room not in self._dm_rooms and room not in self._dm_joining:
                self._join_dm(session, room, None)

    def _next_turn(self, call: Callable[[], None]) -> object:
        """``callLater(0, …)`` on the session's clock (the reactor's)."""
        session = self._session
        return session.clock.callLater(0, call) if session is not None else None

    def _request(
        self,
        session: Session,
        native_type: str,
        data: Any,
        pending: _Pending,
        quiet: bool = False,
    ) -> None:
        """A native request under an id of the codec's, remembered (bounded)
        so that its reply comes back to ``pending``.  ``quiet``: one the
        codec makes of its own accord (joining a friend's conversation,
        which may not exist yet), not the client's: it spends none of the
        client's rate and a failure is no error of the client's."""
        self._counter += 1
        request_id = f"s{self._counter}"
        self._pending[request_id] = pending
        if len(self._pending) > MAX_PENDING:
            self._pending.popitem(last=False)
        session.received(native_type, request_id, data, quiet=quiet)

    def _user(self, session: Session) -> str:
        identity = session.identity
        if identity is None:
            raise ChatError(ErrorCode.UNAUTHORIZED, "authenticate first")
        return identity.user_id

    def _room(self, session: Session, fields: dict[str, Any]) -> str:
        """The room an event names: ``roomId`` (or ``chatId``), or
        ``friendId`` for the direct conversation with that friend."""
        field, value = _one_of(fields, ("roomId", "chatId", "friendId"))
        if field != "friendId":
            return value
        user = self._user(session)
        if value == user:
            raise invalid("'friendId' must be another user")
        return dm_room_id(user, value)

    def _bootstrap(self, session: Session) -> None:
        """Authenticated: join the direct conversations with the friends,
        so their typing reaches this connection (seed 000's server puts
        each connection in its friendships' rooms)."""
        self._bootstrapped = True
        self._request(session, "friends:list", {}, _Pending(None, self._friends_listed))

    def _friends_listed(self, data: Any) -> bytes:
        session = self._session
        friends = data.get("friends") if isinstance(data, dict) else None
        if session is None or session.identity is None or not isinstance(friends, list):
            return b""
        user = session.identity.user_id
        for friend in friends[:MAX_FRIEND_ROOMS]:
            friend_id = friend.get("userId") if isinstance(friend, dict) else None
            if isinstance(friend_id, str):
                room = dm_room_id(user, friend_id)
                if room not in self._dm_rooms and room not in self._dm_joining:
                    self._join_dm(session, room, None)
        return b""

    def _join_dm(self, session: Session, room: str, typing: _Typing | None) -> None:
        """Join a direct conversation's room quietly (no history read), in
        a later turn; ``typing`` goes out once joined."""
        self._dm_joining[room] = typing
        pending = _Pending(
            None,
            lambda _: self._dm_joined(room),
            lambda code, message: self._dm_join_failed(room, code, message),
        )
        join = {"chatId": room, "since": PAST_EVERY_MESSAGE}
        self._later(lambda: self._request(session, "chat:join", join, pending, quiet=True))

    def _dm_joined(self, room: str) -> bytes:
        self._later(lambda: self._dm_ready(room))
        return b""

    def _dm_ready(self, room: str) -> None:
        """The join is complete: what waited for it goes out."""
        self._dm_rooms.add(room)
        typing = self._dm_joining.pop(room, None)
        if typing is not None and self._session is not None:
            self._send_typing(self._session, room, typing)

    def _dm_join_failed(self, room: str, code: str, message: str) -> bytes:
        typing = self._dm_joining.pop(room, None)
        if typing is None:
            return b""  # a friend never written to: nothing to join yet
        if code == ErrorCode.ROOM_NOT_FOUND:
            message = (
                "no conversation with this friend yet: typing reaches them once one "
                "of you has sent a message"
            )
        return error_frame(code, message, typing.event)

    def _send_typing(self, session: Session, room: str, typing: _Typing) -> None:
        self._request(
            session,
            "chat:typing",
            {"chatId": room, "isTyping": typing.is_typing},
            _Pending(typing.event),
        )

    # -- replies ---------------------------------------------------------------------------

    def _direct_sent(self, data: Any) -> bytes:
        """``message_sent`` for a direct message; the conversation's room is
        joined on the way, so the partner's typing reaches this connection."""
        wire = data.get("message") if isinstance(data, dict) else None
        if not isinstance(wire, dict):
            return b""
        frame = message_frame("message_sent", wire)
        room = wire.get("chatId")
        session = self._session
        if (
            session is not None
            and isinstance(room, str)
            and room not in self._dm_rooms
            and room not in self._dm_joining
        ):
            self._join_dm(session, room, None)
        return frame

    def _room_message_sent(self, room: str, native: dict[str, Any], ack: Any) -> bytes:
        """``message_sent`` for a room message: the native ack carries the
        stored message's id, seq and time; the rest is what was sent."""
        session = self._session
        identity = session.identity if session is not None else None
        if not isinstance(ack, dict) or identity is None:
            return b""
        wire: dict[str, Any] = {
            "id": ack.get("id"),
            "chatId": room,
            "seq": ack.get("seq"),
            "userId": identity.user_id,
            "content": native.get("content"),
            "createdAt": ack.get("createdAt"),
        }
        if identity.name is not None:
            wire["username"] = identity.name
        if ack.get("tempId") is not None:
            wire["tempId"] = ack["tempId"]
        return message_frame("message_sent", wire)

    def _joined(self, room: str, data: Any) -> bytes:
        if room.startswith(DIRECT_ROOM_PREFIX):
            self._dm_rooms.add(room)
        reply = dict(data) if isinstance(data, dict) else {}
        reply["messages"] = [
            seed_message(m) for m in reply.get("messages", ()) if isinstance(m, dict)
        ]
        reply["roomId"] = reply["chatId"] = room
        return _frame("room_joined", reply)

    def _left(self, room: str, removed: bool = False) -> bytes:
        self._dm_rooms.discard(room)
        data: dict[str, Any] = {"roomId": room, "chatId": room}
        if removed:
            data["removed"] = True
        return _frame("room_left", data)

    def frame_ack(self, request_id: str, data: Any) -> bytes:
        pending = self._pending.pop(request_id, None)
        return b"" if pending is None else pending.on_ack(data)

    def frame_error(
        self, code: str, message: str, request_id: str | None, event: str | None
    ) -> bytes:
        pending = self._pending.pop(request_id, None) if request_id is not None else None
        if pending is None:
            seed_event = _SEED_EVENT_OF.get(event, event) if event is not None else None
            return error_frame(code, message, seed_event)
        if pending.on_error is not None:
            return pending.on_error(code, message)
        return b"" if pending.event is None else error_frame(code, message, pending.event)

    def frame_push(self, event_type: str, data: Any) -> bytes:
        if event_type == "authenticated":
            hello = dict(data)
            if hello.get("name") is not None:
                hello["username"] = hello["name"]
            return _frame("authenticated", hello)
        if event_type == "chat:left":
            room = data.get("chatId") if isinstance(data, dict) else None
            return self._left(room, removed=True) if isinstance(room, str) else b""
        return frame_event(Published(event_type, strict_dumps(data)))


_Handler = Callable[[Seed000Codec, "Session", str, dict[str, Any]], None]

_HANDLERS: dict[str, _Handler] = {
    "authenticate": Seed000Codec._authenticate,
    "message": Seed000Codec._message,
    "typing_start": Seed000Codec._typing,
    "typing_stop": Seed000Codec._typing,
    "join_room": Seed000Codec._join_room,
    "leave_room": Seed000Codec._leave_room,
}


class Seed000Dialect:
    """Seed 000 at ``/ws/seed000``, and on ``/`` when the first frame is
    one of its client events (and none of seed 002's ``payload`` /
    ``requestId``)."""

    name = "seed000"
    framer: Framer = staticmethod(frame_event)

    def claims(self, frame: dict[str, Any]) -> bool:
        event = frame.get("type")
        return (
            isinstance(event, str)
            and event in CLIENT_EVENTS
            and "payload" not in frame
            and "requestId" not in frame
        )

    def codec(self) -> Codec:
        return Seed000Codec()


SEED000 = Seed000Dialect()
