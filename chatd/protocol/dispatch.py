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

from chatd.clock import now_iso
from chatd.domain.chat import ChatService, Outcome
from chatd.domain.interfaces import Connection
from chatd.domain.live import LiveService
from chatd.domain.social import SocialService
from chatd.errors import ChatError, ErrorCode
from chatd.metrics import Metrics
from chatd.protocol import requests as rq
from chatd.protocol.envelope import Envelope

log = Logger()

PUBLIC_EVENTS = frozenset({"auth", "ping"})


class Responder(Connection, Protocol):
    """What a binding offers the dispatcher to answer a request."""

    def reply(self, envelope: Envelope, confirmation: str | None, data: dict[str, Any]) -> None: ...

    def reply_error(self, envelope: Envelope, code: str, message: str) -> None: ...

    def note_error(self, code: str, request: str | None) -> None: ...


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
        "ping": Route(rq.Ping.parse, lambda c, r: {"timestamp": now_iso()}, "pong"),
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
    def __init__(self, routes: dict[str, Route], metrics: Metrics | None = None) -> None:
        self.routes = routes
        self.metrics = metrics

    def dispatch(self, responder: Responder, envelope: Envelope, authenticated: bool) -> None:
        route = self.routes.get(envelope.type)
        if self.metrics is not None:
            self.metrics.event_in(envelope.type, route is not None or envelope.type == "auth")
        if route is None:
            responder.reply_error(
                envelope, ErrorCode.UNKNOWN_EVENT, f"unknown event {envelope.type!r}"
            )
            return
        if not authenticated and envelope.type not in PUBLIC_EVENTS:
            responder.reply_error(envelope, ErrorCode.UNAUTHORIZED, "authenticate first")
            return
        try:
            request = route.parse(envelope.data)
            result = route.handle(responder, request)
        except ChatError as e:
            self._refuse(responder, envelope, route, e.code, e.message)
            return
        except Exception:
            self._server_error(Failure(), responder, envelope, route)
            return
        if isinstance(result, Deferred):
            result.addCallbacks(
                self._succeeded,
                self._failed,
                callbackArgs=(responder, envelope, route),
                errbackArgs=(responder, envelope, route),
            )
        else:
            self._succeeded(result, responder, envelope, route)

    @staticmethod
    def _succeeded(result: Any, responder: Responder, envelope: Envelope, route: Route) -> None:
        if isinstance(result, Outcome):
            responder.reply(envelope, route.confirmation, result.data)
            result.after_reply()
        else:
            responder.reply(envelope, route.confirmation, result)

    def _failed(
        self, failure: Failure, responder: Responder, envelope: Envelope, route: Route
    ) -> None:
        if failure.check(ChatError):
            error = failure.value
            self._refuse(responder, envelope, route, error.code, error.message)
        else:
            self._server_error(failure, responder, envelope, route)

    def _refuse(
        self, responder: Responder, envelope: Envelope, route: Route, code: str, message: str
    ) -> None:
        if envelope.id is None and route.error_event is not None:
            responder.note_error(code, envelope.type)
            data: dict[str, Any] = {"code": code, "message": message}
            temp_id = envelope.data.get("tempId") if isinstance(envelope.data, dict) else None
            if isinstance(temp_id, str):
                data["tempId"] = temp_id
            responder.send_event(route.error_event, data)
        else:
            responder.reply_error(envelope, code, message)

    def _server_error(
        self, failure: Failure, responder: Responder, envelope: Envelope, route: Route
    ) -> None:
        log.failure(
            "handler for {request} failed on connection {connection}",
            failure,
            event="request.failed",
            request=envelope.type,
            connection=responder.connection_id,
        )
        self._refuse(
            responder,
            envelope,
            route,
            ErrorCode.SERVER_ERROR,
            "internal error; the request was not completed",
        )
