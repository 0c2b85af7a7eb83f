"""``/socket.io/``: the twisted.web resource in front of the engine.

It checks a request the way socket.io's engine does (transport, then sid,
then handshake method, then protocol version; the origin before all),
answers errors with Engine.IO's JSON bodies (``{"code":N,"message":"…"}``,
403 for a forbidden origin, else 400; 413 for a POST over ``max_payload``),
serves long-polling itself and hands WebSocket upgrades to Autobahn.

A polling request for a sid of another chatd process on this host is
forwarded to it (``handoff.py``); what arrives that way is served by
``render_handoff``.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from chatd.bindings.socketio import eio
from chatd.bindings.socketio.engine import EngineServer, EngineSocket
from chatd.bindings.socketio.handoff import HEADER, PAYLOAD_TOO_LARGE, RELEASE, Handoff
from chatd.bindings.socketio.origins import OriginPolicy
from chatd.bindings.socketio.polling import PollingTransport
from chatd.bindings.socketio.websocket import EngineWebSocketFactory

log = Logger(namespace="chatd.bindings.socketio")

E = eio.ErrorCode
MESSAGES = {
    E.UNKNOWN_TRANSPORT: "Transport unknown",
    E.UNKNOWN_SID: "Session ID unknown",
    E.BAD_HANDSHAKE_METHOD: "Bad handshake method",
    E.BAD_REQUEST: "Bad request",
    E.FORBIDDEN: "Forbidden",
    E.UNSUPPORTED_PROTOCOL_VERSION: "Unsupported protocol version",
}


def _first(request: Request, name: bytes) -> str | None:
    args: dict[bytes, list[bytes]] = request.args or {}
    values = args.get(name)
    return values[0].decode("utf-8", "replace") if values else None


def offered_token(request: Request) -> str | None:
    """The token of a polling handshake, by the rules of ``/ws``: a bearer
    ``Authorization`` header (another scheme offers an empty, hence
    failing, token), else the first non-empty ``?token=``."""
    header = request.getHeader(b"authorization")
    if header is not None:
        text = header.decode("utf-8", "replace") if isinstance(header, bytes) else header
        scheme, _, credentials = text.partition(" ")
        return credentials.strip() if scheme.lower() == "bearer" else ""
    args: dict[bytes, list[bytes]] = request.args or {}
    tokens = [t for t in args.get(b"token", []) if t]
    return tokens[0].decode("utf-8", "replace") if tokens else None


def _peer(request: Request) -> str:
    address: Any = request.getClientAddress()
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    return f"tcp:{host}:{port}" if host is not None else str(address)


class SocketIOResource(Resource):
    isLeaf = True

    def __init__(
        self,
        engine: EngineServer,
        ws_factory: EngineWebSocketFactory,
        origins: OriginPolicy,
        handoff: Handoff | None = None,
    ) -> None:
        super().__init__()
        self._engine = engine
        self._handoff = handoff
        self._websocket = WebSocketResource(ws_factory)
        self._ws_factory = ws_factory
        self._origins = origins
        self._max_payload = engine.settings.max_payload

    def render(self, request: Request) -> Any:
        if not self._origins.allows(request):
            return self._error(request, E.FORBIDDEN, "Forbidden: this origin is not allowed")
        if request.method == b"OPTIONS":
            return self._origins.preflight(request)
        self._origins.add_cors_headers(request)
        request.setHeader(b"cache-control", b"no-store")
        transport = _first(request, b"transport")
        if transport not in ("polling", "websocket"):
            return self._error(request, E.UNKNOWN_TRANSPORT)
        sid = _first(request, b"sid")
        if sid is not None:
            socket = self._engine.get(sid)
            if socket is None:
                return self._elsewhere(request, transport, sid)
            if transport == "websocket":
                return self._probe(request, socket)
            return self._polling(request, socket)
        if request.method != b"GET":
            return self._error(request, E.BAD_HANDSHAKE_METHOD)
        version = _first(request, b"EIO")
        if version != "4":
            return self._error(request, E.UNSUPPORTED_PROTOCOL_VERSION, _version_message(version))
        if transport == "websocket":
            return self._upgrade(request)
        socket = self._engine.open_polling(_peer(request), offered_token(request))
        return self._poll(request, socket)

    def websocket_route(self, path: bytes, query: bytes, headers: dict[bytes, bytes]) -> Any:
        """The front door's fast path (``chatd.web.front``): a new
        WebSocket-transport session, ``/socket.io/?EIO=4&transport=websocket``
        with no ``sid``, from an allowed origin, is exactly what ``render``
        hands to the WebSocket factory unchanged; anything else (a probe,
        another version, a parameter given twice or encoded) goes the long
        way, to get ``render``'s answers."""
        if path != b"/socket.io/":
            return None
        names = [p.partition(b"=")[0] for p in query.split(b"&")]
        if names.count(b"EIO") != 1 or names.count(b"transport") != 1 or b"sid" in names:
            return None
        params = query.split(b"&")
        if b"EIO=4" not in params or b"transport=websocket" not in params:
            return None
        if not self._origins.allows_origin(headers.get(b"origin"), headers.get(b"host")):
            return None
        return self._ws_factory

    # -- another process's sessions ---------------------------------------------------

    def _elsewhere(self, request: Request, transport: str, sid: str) -> Any:
        """A sid this process does not hold: another process's (forward a
        polling request to it; refuse an upgrade, so the client keeps
        polling), or unknown."""
        handoff = self._handoff
        node = handoff.owner_elsewhere(sid) if handoff is not None else None
        if handoff is None or node is None:
            return self._error(request, E.UNKNOWN_SID)
        if transport == "websocket":
            return self._error(
                request,
                E.BAD_REQUEST,
                "Bad request: this session lives in another chatd process; keep polling",
            )
        if request.method == b"GET":
            return handoff.forward(request, node, sid, None)
        if request.method == b"POST":
            return handoff.forward(request, node, sid, self._body(request))
        return self._error(request, E.BAD_REQUEST, "Bad request: polling takes GET and POST")

    def render_handoff(self, request: Request) -> Any:
        """A polling request another process forwarded (over this process's
        local socket): its client passed that process's origin check.  Only
        this process's own sessions are served, so nothing is forwarded
        twice."""
        if self._handoff is not None:
            self._handoff.answered += 1
        if _first(request, b"transport") != "polling":
            return self._error(request, E.UNKNOWN_TRANSPORT)
        socket = self._engine.get(_first(request, b"sid") or "")
        if socket is None:
            return self._error(request, E.UNKNOWN_SID)
        instruction = request.getHeader(HEADER)
        if instruction == PAYLOAD_TOO_LARGE and request.method == b"POST":
            return self._too_large(request, socket)
        if instruction == RELEASE:
            release = getattr(socket.transport, "release", None)
            if release is not None:
                release()
            return b"ok"
        return self._polling(request, socket)

    # -- WebSocket ---------------------------------------------------------------------

    def _upgrade(self, request: Request) -> Any:
        upgrade = request.getHeader(b"upgrade") or b""
        if upgrade.lower() != b"websocket":
            return self._error(
                request, E.BAD_REQUEST, "Bad request: transport=websocket needs a WebSocket upgrade"
            )
        return self._websocket.render(request)

    def _probe(self, request: Request, socket: EngineSocket) -> Any:
        """An upgrade with a known sid.  One the session cannot take (it is
        on WebSocket already, or probing another) is still accepted, then
        closed by the protocol, as the spec has it and the Engine.IO test
        suite checks: "the server MUST close the WebSocket connection"."""
        return self._upgrade(request)

    # -- polling -----------------------------------------------------------------------

    def _polling(self, request: Request, socket: EngineSocket) -> Any:
        if socket.transport.name != "polling":
            return self._error(request, E.BAD_REQUEST, "Bad request: the session has upgraded")
        if request.method == b"GET":
            return self._poll(request, socket)
        if request.method == b"POST":
            return self._post(request, socket)
        return self._error(request, E.BAD_REQUEST, "Bad request: polling takes GET and POST")

    def _poll(self, request: Request, socket: EngineSocket) -> Any:
        transport = socket.transport
        assert isinstance(transport, PollingTransport)
        if not transport.poll(request):
            return self._error(request, E.BAD_REQUEST, "Bad request: a GET is already pending")
        if socket.upgrading:
            # The client is moving to the WebSocket: a GET still in flight
            # must not wait for the next ping (socket.io's engine sends it a
            # noop within 100 ms); answer it now.
            transport.release()
        return NOT_DONE_YET

    def _post(self, request: Request, socket: EngineSocket) -> bytes:
        body = self._body(request)
        if body is None:
            return self._too_large(request, socket)
        try:
            packets = eio.decode_payload(body)
        except eio.EngineIOError as e:
            socket.protocol_error(str(e))
            return self._error(request, E.BAD_REQUEST, f"Bad request: {e}")
        for packet in packets:
            if not socket.open:
                break
            socket.received(packet)
        request.setHeader(b"content-type", b"text/html")
        return b"ok"

    def _too_large(self, request: Request, socket: EngineSocket) -> bytes:
        socket.fail(1009, "polling payload over max_payload")
        request.setResponseCode(413)
        request.setHeader(b"content-type", b"application/json")
        return eio.error_body(
            E.BAD_REQUEST, f"Payload too large: more than {self._max_payload} bytes"
        )

    def _body(self, request: Request) -> bytes | None:
        """The POST body, or ``None`` when it is over ``max_payload``."""
        limit = self._max_payload
        length = request.getHeader(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return None
        body = request.content.read(limit + 1) if request.content is not None else b""
        return None if len(body) > limit else body

    # -- errors ------------------------------------------------------------------------

    def _error(self, request: Request, code: int, message: str | None = None) -> bytes:
        request.setResponseCode(403 if code == E.FORBIDDEN else 400)
        request.setHeader(b"content-type", b"application/json")
        return eio.error_body(code, message or MESSAGES[code])


def _version_message(version: str | None) -> str:
    if version == "3":
        return (
            "Unsupported protocol version: EIO=3 is Socket.IO v2; "
            "chatd speaks Engine.IO v4 (socket.io-client 3 and later)"
        )
    return "Unsupported protocol version: chatd speaks Engine.IO v4 (EIO=4)"
