"""Dispatch of client requests to the domain, shared by every binding.

A route names the event, how to parse its data into a typed request, the
domain call, and the confirmation event sent when the request carried no
``id`` (PROTOCOL.md section 3).  Errors become protocol error codes; a
handler that raises anything else is logged with its traceback and answered
with ``SERVER_ERROR`` — the connection lives on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatd.domain.chat import ChatService, Outcome
from chatd.domain.interfaces import Connection
from chatd.domain.live import LiveService
from chatd.domain.social import SocialService
from chatd.errors import ChatError, ErrorCode
from chatd.metrics import Metrics
from chatd.protocol import requests as rq

log = Logger()

PUBLIC_EVENTS = frozenset({"auth", "ping"})


class Responder(Connection, Protocol):
    """What the dispatcher answers through: the client's session, whatever
    its binding (the session asks the binding to encode the frames)."""

    def reply(self, request_id: str | None, confirmation: str | None, data: Any) -> None:
        """The request's result: an ack when it carried an id, else the
        route's confirmation event (if any)."""

    def reply_error(
        self, request_id: str | None, event: str | None, code: str, message: str
    ) -> None:
        """An error frame answering the request."""

    def note_error(self, code: str, request: str | None) -> None:
        """Count and log an error sent other than through ``reply_error``."""


@dataclass(frozen=True, slots=True)
class Route:
    parse: Callable[[Any], Any]
    handle: Callable[[Connection, Any], Any]
    confirmation: str | None
    error_event: str | None = None
    """Seed-compatible failure event for requests without an id
    (``message:error``) instead of the generic ``error`` frame."""


def social_routes(social: SocialService) -> dict[str, Route]:
    return {
        "message:send": Route(
            rq.MessageSend.parse,
            lambda c, r: social.send_direct(c, r.recipient_id, r.content, r.temp_id, r.session_id),
            "message:sent",
            "message:error",
        ),
        "status:request": Route(
            rq.NoData.parse, lambda c, r: social.online_status(c), "users:online"
        ),
        "friend:request": Route(
            rq.UserTarget.parse, lambda c, r: social.request_friend(c, r.user_id), None
        ),
        "friend:accept": Route(
            rq.UserTarget.parse, lambda c, r: social.accept_friend(c, r.user_id), None
        ),
        "friend:decline": Route(
            rq.UserTarget.parse, lambda c, r: social.decline_friend(c, r.user_id), None
        ),
        "friend:remove": Route(
            rq.UserTarget.parse, lambda c, r: social.remove_friend(c, r.user_id), None
        ),
        "friends:list": Route(rq.NoData.parse, lambda c, r: social.friends(c), "friends:list"),
        "notification:ack": Route(
            rq.NotificationAck.parse,
            lambda c, r: social.ack_notification(c, r.notification_id),
            None,
        ),
    }


def live_routes(live: LiveService) -> dict[str, Route]:
    return {
        "live:join": Route(
            rq.LiveTarget.parse, lambda c, r: live.join(c, r.stream_id), "live:joined"
        ),
        "live:leave": Route(
            rq.LiveTarget.parse, lambda c, r: live.leave(c, r.stream_id), "live:left"
        ),
        "live:message": Route(
            rq.LiveMessage.parse, lambda c, r: live.message(c, r.stream_id, r.content), None
        ),
        "live:reaction": Route(
            rq.LiveReaction.parse, lambda c, r: live.react(c, r.stream_id, r.emoji), None
        ),
        "live:status": Route(
            rq.LiveStatus.parse, lambda c, r: live.set_status(c, r.stream_id, r.status), None
        ),
    }


def chat_routes(chat: ChatService) -> dict[str, Route]:
    return {
        "ping": Route(rq.Ping.parse, lambda c, r: chat.pong(), "pong"),
        "chat:create": Route(
            rq.ChatCreate.parse,
            lambda c, r: chat.create_room(c, r.name, r.description, r.type, r.members),
            "chat:created",
        ),
        "chat:join": Route(
            rq.ChatJoin.parse, lambda c, r: chat.join(c, r.chat_id, r.since), "chat:joined"
        ),
        "chat:leave": Route(rq.ChatLeave.parse, lambda c, r: chat.leave(c, r.chat_id), "chat:left"),
        "chat:message": Route(
            rq.ChatMessage.parse,
            lambda c, r: chat.send_message(c, r.chat_id, r.content, r.temp_id),
            None,
        ),
        "chat:typing": Route(
            rq.ChatTyping.parse, lambda c, r: chat.set_typing(c, r.chat_id, r.is_typing), None
        ),
        "chat:read": Route(
            rq.ChatRead.parse, lambda c, r: chat.mark_read(c, r.chat_id, r.message_id), None
        ),
        "chat:reaction": Route(
            rq.ChatReaction.parse,
            lambda c, r: chat.react(c, r.message_id, r.reaction, r.remove),
            None,
        ),
        "chat:history": Route(
            rq.ChatHistory.parse,
            lambda c, r: chat.history(c, r.chat_id, r.before, r.after, r.limit),
            "chat:history",
        ),
    }


class Dispatcher:
    """Routes a session's requests to the domain and its results back.

    A request arrives as ``(type, id, data)``; the reply goes back through
    the session (``Responder``), which has its binding encode it."""

    def __init__(self, routes: dict[str, Route], metrics: Metrics | None = None) -> None:
        self.routes = routes
        self.metrics = metrics

    def dispatch(
        self, responder: Responder, event_type: str, request_id: str | None, data: Any
    ) -> None:
        route = self.routes.get(event_type)
        if self.metrics is not None:
            self.metrics.event_in(event_type, route is not None or event_type == "auth")
        if route is None:
            responder.reply_error(
                request_id, event_type, ErrorCode.UNKNOWN_EVENT, f"unknown event {event_type!r}"
            )
            return
        if responder.identity is None and event_type not in PUBLIC_EVENTS:
            responder.reply_error(
                request_id, event_type, ErrorCode.UNAUTHORIZED, "authenticate first"
            )
            return
        request = _Request(event_type, request_id, data, route)
        try:
            result = route.handle(responder, route.parse(data))
        except ChatError as e:
            _refuse(responder, request, e.code, e.message)
            return
        except Exception:
            _server_error(Failure(), responder, request)
            return
        if isinstance(result, Deferred):
            result.addCallbacks(
                _succeeded,
                _failed,
                callbackArgs=(responder, request),
                errbackArgs=(responder, request),
            )
        else:
            _succeeded(result, responder, request)


@dataclass(frozen=True, slots=True)
class _Request:
    """A request on its way through a route (kept for the reply)."""

    type: str
    id: str | None
    data: Any
    route: Route


def _succeeded(result: Any, responder: Responder, request: _Request) -> None:
    """The reply; one that cannot be framed (a value strict JSON refuses,
    which input validation should have kept out) is a ``SERVER_ERROR``,
    never a frame the client cannot parse nor an error escaping into the
    binding.  An ``Outcome``'s follow-up runs either way (it releases what
    waited for the request)."""
    outcome = result if isinstance(result, Outcome) else None
    try:
        responder.reply(
            request.id, request.route.confirmation, result if outcome is None else outcome.data
        )
    except Exception:
        _server_error(Failure(), responder, request)
    if outcome is not None:
        outcome.after_reply()


def _failed(failure: Failure, responder: Responder, request: _Request) -> None:
    if failure.check(ChatError):
        error = failure.value
        _refuse(responder, request, error.code, error.message)
    else:
        _server_error(failure, responder, request)


def _refuse(responder: Responder, request: _Request, code: str, message: str) -> None:
    """An error reply; a route with an ``error_event`` (``message:send``)
    answers a request without id with that event instead."""
    error_event = request.route.error_event
    if request.id is None and error_event is not None:
        responder.note_error(code, request.type)
        body: dict[str, Any] = {"code": code, "message": message}
        temp_id = request.data.get("tempId") if isinstance(request.data, dict) else None
        if isinstance(temp_id, str):
            body["tempId"] = temp_id
        responder.send_event(error_event, body)
    else:
        responder.reply_error(request.id, request.type, code, message)


def _server_error(failure: Failure, responder: Responder, request: _Request) -> None:
    log.failure(
        "handler for {request} failed on connection {connection}",
        failure,
        event="request.failed",
        request=request.type,
        connection=responder.connection_id,
    )
    _refuse(
        responder, request, ErrorCode.SERVER_ERROR, "internal error; the request was not completed"
    )
