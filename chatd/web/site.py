"""One port, two protocols: a twisted.web ``Site`` whose ``/ws`` child is
Autobahn's ``WebSocketResource``; health and the HTTP API hang off the
same root.

The ``Site`` is chatd's (``ChatdSite``): its connections are the front
door's ``HttpConnection`` (header deadline, per-address cap) and its
requests are ``BoundedRequest``, whose body is judged from the headers,
before a byte of it is read (docs/security.md, "The HTTP front").
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any, Protocol

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, maybeDeferred
from twisted.logger import Logger
from twisted.web.error import UnsupportedMethod
from twisted.web.http import unquote
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from chatd import __version__
from chatd.addresses import AddressCounts
from chatd.clock import now_iso
from chatd.web.front import HttpConnection

log = Logger()


def json_answer(request: Request, status: int, body: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body, separators=(",", ":")).encode()


def json_error(request: Request, status: int, code: str, message: str) -> bytes:
    """The HTTP API's error shape (docs/http-api.md), for every error the
    site answers itself, so a client parses one format wherever it asks."""
    return json_answer(request, status, {"error": {"code": code, "message": message}})


def not_found(request: Request, message: str | None = None) -> bytes:
    # Cut, so a long path is not echoed back in full.
    path = (request.path or b"/").decode("utf-8", "replace")[:200]
    return json_error(request, 404, "NOT_FOUND", message or f"nothing is served at {path}")


class NotFound(Resource):
    """Every path nothing else claims: a JSON 404 instead of twisted.web's
    HTML page."""

    isLeaf = True

    def render(self, request: Request) -> bytes:
        return not_found(request)


class Directory(Resource):
    """A path segment that only holds children (the root, ``/console/``,
    ``/testsuite/``): the segment itself and an unknown child are JSON
    404s (a plain ``Resource`` answers HTML 404, and 405 on itself)."""

    def getChild(self, path: bytes, request: Request) -> Resource:
        return NotFound()

    def render(self, request: Request) -> bytes:
        return not_found(request)


class JsonMethodErrors:
    """Wraps the resource a request is rendered with, so that a method the
    resource has no ``render_*`` for is a JSON 405 with ``Allow`` (not
    twisted.web's HTML 405, or 501 for a method it does not know).  HEAD
    on a resource with GET is left to twisted.web, which answers it as a
    GET without the body."""

    def __init__(self, resource: Any) -> None:
        self._resource = resource

    def render(self, request: Request) -> Any:
        try:
            return self._resource.render(request)
        except UnsupportedMethod as e:
            allowed: list[bytes] = list(e.allowedMethods)
            if request.method == b"HEAD" and b"GET" in allowed:
                raise
            request.setHeader(b"allow", b", ".join(allowed))
            method = request.method.decode("latin-1")[:32]
            path = (request.path or b"/").decode("utf-8", "replace")[:200]
            return json_error(
                request, 405, "METHOD_NOT_ALLOWED", f"{method} is not allowed on {path}"
            )


class JsonResource(Resource):
    isLeaf = True

    def json(self, request: Request, status: int, body: Any) -> bytes:
        return json_answer(request, status, body)


class Health(JsonResource):
    """``GET /healthz``: the process is up and serving HTTP."""

    def __init__(self, connections: Any) -> None:
        super().__init__()
        self._connections = connections

    def render_GET(self, request: Request) -> bytes:
        return self.json(
            request,
            200,
            {
                "status": "ok",
                "version": __version__,
                "connections": len(self._connections),
                "time": now_iso(),
            },
        )


class Console(Resource):
    """``GET /``: the built-in web console (plain HTML, CSS and JavaScript,
    no build step).  It renders everything from the network as text; the
    Content-Security-Policy allows no other origin and no remote images, as
    a second line of defence; no other site may frame it (``frame-ancestors
    'none'``, and ``X-Frame-Options`` for browsers that predate it), so a
    page cannot overlay the console to make a user click in it."""

    isLeaf = True
    CSP = (
        b"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        b"connect-src 'self' ws: wss:; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        b"frame-ancestors 'none'"
    )

    def __init__(self, upgrade: Any = None) -> None:
        super().__init__()
        self._page = (resources.files("chatd.web") / "console.html").read_bytes()
        self._upgrade = upgrade

    def render_GET(self, request: Request) -> Any:
        if (
            self._upgrade is not None
            and request.postpath in ([], [b""])
            and (request.getHeader(b"upgrade") or b"").lower() == b"websocket"
        ):
            # A WebSocket on the bare host (the seeds' clients): the first
            # frame picks the dialect (chatd.bindings.codec).
            return self._upgrade.render(request)
        if request.postpath not in ([], [b""]):
            return not_found(request)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-security-policy", self.CSP)
        request.setHeader(b"x-frame-options", b"DENY")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"cache-control", b"no-store")
        return self._page


class WebSocketPaths(Resource):
    """``/ws``: the native endpoint; ``/ws/<dialect>``: a seed's dialect."""

    isLeaf = True

    def __init__(self, native: Any, dialects: dict[bytes, Any]) -> None:
        super().__init__()
        self._native = native
        self._dialects = dialects

    def render(self, request: Request) -> Any:
        rest = request.postpath or []
        if rest in ([], [b""]):
            return self._native.render(request)
        if len(rest) == 1 and rest[0] in self._dialects:
            return self._dialects[rest[0]].render(request)
        return not_found(request, "no such WebSocket endpoint (see docs/dialects.md)")


def names_this_host_locally(host_header: bytes | None, local: Any, secure: bool) -> bool:
    """Whether a ``Host`` header names this server by a loopback name:
    ``localhost`` or a loopback IP, with the port the connection came in
    on (no port: the scheme's default).  A DNS-rebinding page reaches a
    loopback server under its attacker's name (``Host: evil.example:8080``),
    which this refuses; the embedded default only ever listens on loopback,
    so its configured listen host is always one of these names."""
    if not host_header:
        return False
    text = host_header.decode("latin-1").strip().lower()
    port: str | None
    if text.startswith("["):
        name, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return False
        port = rest[1:] if rest else None
    else:
        name, colon, port = text.partition(":")
        port = port if colon else None
    if name != "localhost":
        try:
            if not ipaddress.ip_address(name).is_loopback:
                return False
        except ValueError:
            return False
    local_port = getattr(local, "port", None)
    if local_port is None:  # a UNIX socket: no port to compare
        return True
    if port is None:
        return bool(local_port == (443 if secure else 80))
    return port.isascii() and port.isdigit() and int(port) == local_port


class DemoToken(JsonResource):
    """``GET /console/demo-token?user=demo-…``: on the embedded default only
    (a generated secret, loopback listening), a short-lived token for a
    ``demo-`` user, so the console works out of the box.  Real user ids
    cannot be minted here, and only a page opened under a loopback name
    gets one (``names_this_host_locally``): a page of another site that
    rebinds its name to 127.0.0.1 gets 403."""

    def __init__(self, mint: Callable[[str], str] | None) -> None:
        super().__init__()
        self._mint = mint

    def render_HEAD(self, request: Request) -> bytes:
        request.setResponseCode(200 if self._mint is not None else 404)
        return b""

    def render_GET(self, request: Request) -> bytes:
        if self._mint is None:
            return self.json(
                request,
                404,
                {
                    "error": {
                        "code": "NOT_FOUND",
                        "message": "demo tokens exist only on the embedded default",
                    }
                },
            )
        if not names_this_host_locally(
            request.getHeader(b"host"), request.getHost(), request.isSecure()
        ):
            return self.json(
                request,
                403,
                {
                    "error": {
                        "code": "FORBIDDEN",
                        "message": "demo tokens are served only to the console opened as "
                        "localhost or a loopback address with this server's port; this "
                        "request's Host names another host (a DNS-rebinding page?)",
                    }
                },
            )
        args: dict[bytes, list[bytes]] = request.args or {}
        user = (args.get(b"user") or [b"demo-user"])[-1].decode("utf-8", "replace")
        if (
            not user.startswith("demo-")
            or len(user) > 64
            or not user[5:].replace("-", "").isalnum()
        ):
            return self.json(
                request,
                400,
                {
                    "error": {
                        "code": "INVALID_MESSAGE",
                        "message": "demo users are 'demo-' plus letters and digits",
                    }
                },
            )
        return self.json(request, 200, {"token": self._mint(user), "userId": user})


class Ready(JsonResource):
    """``GET /readyz``: 200 only when storage answers; the body says which
    part failed.  The checks run at once, side by side, so the answer comes
    as soon as the slowest one (each is bounded where it is built: a check
    that does not answer within ``database_timeout`` fails)."""

    def __init__(self, checks: dict[str, Callable[[], Deferred[Any]]]) -> None:
        super().__init__()
        self._checks = checks

    def render_GET(self, request: Request) -> Any:
        d = ensureDeferred(self._probe())
        d.addCallback(lambda result: self._answer(request, *result))
        return NOT_DONE_YET

    async def _probe(self) -> tuple[int, dict[str, Any]]:
        names = list(self._checks)
        results = await DeferredList(
            [maybeDeferred(self._checks[name]) for name in names], consumeErrors=True
        )
        parts: dict[str, str] = {}
        for name, (passed, outcome) in zip(names, results, strict=True):
            if passed:
                parts[name] = "ok"
            else:
                error = outcome.value
                parts[name] = f"unavailable: {' '.join(str(error).split()) or type(error).__name__}"
        ready = all(v == "ok" for v in parts.values())
        return (200 if ready else 503), {"status": "ready" if ready else "unavailable", **parts}

    def _answer(self, request: Request, status: int, body: dict[str, Any]) -> None:
        if not request.finished and not request._disconnected:
            request.write(self.json(request, status, body))
            request.finish()


class MetricsPage(Resource):
    """``GET /metrics``: Prometheus text format; behind the API key or an
    admin token when configured so."""

    isLeaf = True

    def __init__(self, metrics: Any, authorize: Callable[[Request], bool] | None) -> None:
        super().__init__()
        self._metrics = metrics
        self._authorize = authorize

    def render_GET(self, request: Request) -> bytes:
        if self._authorize is not None and not self._authorize(request):
            request.setResponseCode(401)
            request.setHeader(b"content-type", b"application/json")
            return b'{"error":{"code":"UNAUTHORIZED","message":"/metrics needs the API key or an admin token"}}'
        request.setHeader(b"content-type", self._metrics.content_type.encode())
        return self._metrics.render()


# -- origins and CORS on the HTTP API ----------------------------------------------------


class Origins(Protocol):
    """The one origin policy (``allowed_origins``;
    ``chatd.bindings.socketio.origins.OriginPolicy``, handed in by the
    composition root: the web layer does not import the bindings)."""

    def allows(self, request: Request) -> bool: ...

    def add_cors_headers(self, request: Request) -> None: ...

    def preflight(self, request: Request, methods: bytes = ...) -> bytes: ...


API_METHODS = b"GET, POST, PUT, DELETE, OPTIONS"


class CrossOriginApi(Resource):
    """The HTTP API behind the origin policy: a request without ``Origin``
    (a backend, curl) or from the server's own origin is the API's; a
    listed origin gets CORS headers (and its ``OPTIONS`` preflight 204);
    any other browser origin gets 403, before the API looks at anything."""

    isLeaf = True

    def __init__(self, api: Resource, origins: Origins) -> None:
        super().__init__()
        self._api = api
        self._origins = origins

    def render(self, request: Request) -> Any:
        if not self._origins.allows(request):
            request.setResponseCode(403)
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"cache-control", b"no-store")
            return (
                b'{"error":{"code":"FORBIDDEN","message":"this Origin is not allowed '
                b'(list it in allowed_origins)"}}'
            )
        if request.method == b"OPTIONS":
            return self._origins.preflight(request, API_METHODS)
        self._origins.add_cors_headers(request)
        if request.responseHeaders.hasHeader(b"access-control-allow-origin"):
            request.setHeader(b"access-control-expose-headers", b"Retry-After")
        return self._api.render(request)

    def body_limit(self, request: Request) -> int:
        """A refused origin and a preflight take no body; else the API's
        rule."""
        if not self._origins.allows(request) or request.method == b"OPTIONS":
            return 0
        return _limit_of(self._api, request)


# -- bodies judged before they are read --------------------------------------------------

BodyLimit = Callable[[Request], int]
"""For a request whose headers are in and whose body is not read yet: the
largest body it may carry, or 0 when it is answered whatever its body (no
such endpoint, a wrong method, no or bad credentials, a resource that takes
no body), so it is answered at once.  The resource itself must refuse a
body over the limit (413): it sees the ``Content-Length`` over it, or the
``limit + 1`` bytes a chunked body is cut at."""


def post_bodies(limit: int) -> BodyLimit:
    """Engine.IO polling (``/socket.io/``): POST bodies up to its
    ``max_payload`` (the resource answers 413 over it and ends the
    session); no other method takes one."""

    def body_limit(request: Request) -> int:
        return limit if request.method == b"POST" else 0

    return body_limit


def _limit_of(resource: Any, request: Request) -> int:
    limit = getattr(resource, "body_limit", None)
    return int(limit(request)) if limit is not None else 0


class BoundedRequest(Request):
    """A request whose body is judged from its headers before a byte of it
    is read.  twisted.web reads a whole body (spooling it to a temporary
    file) before any resource runs: 100 MiB to ``/api/rooms`` without
    credentials were received in full, then answered 401.

    When the headers are in (``gotLength``) the resource is found as the
    ``Site`` will find it and asked its ``BodyLimit`` (``ChatdSite``).  A
    request that is answered whatever its body, or that declares a
    ``Content-Length`` over the limit, is answered at once without its body
    (the resource's own 401/404/405/413, no ``100 Continue``); a chunked body
    is cut at ``limit + 1`` bytes and answered then (the resource's 413).
    Either way the connection closes after the answer and the rest is never
    read (``HttpConnection.skip_body`` / ``cut_body``)."""

    channel: Any

    body_limit = 0
    _body_bytes = 0
    _cut = False

    def gotLength(self, length: int | None) -> None:
        channel = self.channel
        if length == 0 or not isinstance(channel, HttpConnection):
            super().gotLength(length)
            return
        method, target = channel.pending_request_line()
        try:
            limit = channel.site.body_limit(self, method, target)
        except Exception:
            # Answered at once: rendering it will say what is wrong (a 500
            # at worst), and no body is read for a request nobody judged.
            path = target.split(b"?", 1)[0]  # never a ?token= in a log
            log.failure("judging the body of {method} {path} failed", method=method, path=path)
            limit = 0
        self.body_limit = limit
        if limit == 0 or (length is not None and length > limit):
            self.requestHeaders.removeHeader(b"expect")  # no 100 Continue: no body is wanted
            self.responseHeaders.setRawHeaders(b"connection", [b"close"])
            channel.skip_body()
            super().gotLength(0)
            return
        super().gotLength(length)

    def render(self, resrc: Any) -> None:
        super().render(JsonMethodErrors(resrc))

    def handleContentChunk(self, data: bytes) -> None:
        if self._cut:
            return
        room = self.body_limit + 1 - self._body_bytes
        if len(data) < room or not isinstance(self.channel, HttpConnection):
            self._body_bytes += len(data)
            super().handleContentChunk(data)
            return
        # One byte over the limit is enough for the resource to refuse it.
        self._cut = True
        super().handleContentChunk(data[:room])
        self.responseHeaders.setRawHeaders(b"connection", [b"close"])
        self.channel.cut_body()


class ChatdSite(Site):
    """The ``Site`` behind the front door: ``HttpConnection`` channels
    (``header_timeout``, ``open_connections``) carrying ``BoundedRequest``
    requests, whose body limits come from ``body_limits`` (a resource
    absent from it takes no body)."""

    protocol = HttpConnection  # type: ignore[assignment]

    def __init__(
        self,
        root: Resource,
        body_limits: Mapping[Resource, BodyLimit],
        header_timeout: float,
        open_connections: AddressCounts,
        clock: Any = None,
    ) -> None:
        super().__init__(root, BoundedRequest, logFormatter=access_log_line, reactor=clock)
        self._body_limits = dict(body_limits)
        self.header_timeout = header_timeout
        self.open_connections = open_connections

    def body_limit(self, request: Request, method: bytes, target: bytes) -> int:
        """The ``BodyLimit`` of the resource this request (its headers in)
        is for, found as ``Request.process`` will find it (which sets the
        same attributes again from scratch)."""
        path = target.split(b"?", 1)[0]
        request.method, request.uri, request.path = method, target, path
        request.prepath = []
        request.postpath = list(map(unquote, path[1:].split(b"/")))
        resource = self.getResourceFor(request)
        limit = self._body_limits.get(resource)
        return limit(request) if limit is not None else 0


def _escape(value: bytes | str) -> str:
    text = value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value
    return text.replace("\\", "\\\\").replace('"', '\\"')


def access_log_line(timestamp: str, request: Any) -> str:
    """Twisted's combined log format without the query string: a token
    given as ``?token=`` must never reach a log."""
    path = request.uri.split(b"?", 1)[0]
    referrer = (request.getHeader(b"referer") or b"-").split(b"?", 1)[0]
    return '"{ip}" - - {timestamp} "{method} {path} {protocol}" {code} {length} "{referrer}" "{agent}"'.format(
        ip=_escape(
            request.getClientAddress().host if hasattr(request.getClientAddress(), "host") else "-"
        ),
        timestamp=timestamp,
        method=_escape(request.method),
        path=_escape(path),
        protocol=_escape(request.clientproto),
        code=request.code,
        length=request.sentLength or "-",
        referrer=_escape(referrer),
        agent=_escape(request.getHeader(b"user-agent") or b"-"),
    )


def build_site(
    ws_factory: Any,
    api: Resource,
    ready_checks: dict[str, Callable[[], Deferred[Any]]],
    metrics_page: Resource | None = None,
    demo_mint: Callable[[str], str] | None = None,
    socketio: Resource | None = None,
    engine_io_test_suite: Resource | None = None,
    socketio_test_suite: Resource | None = None,
    root_ws_factory: Any = None,
    dialect_ws_factories: dict[str, Any] | None = None,
    origins: Origins | None = None,
    body_limits: Mapping[Resource, BodyLimit] | None = None,
    header_timeout: float = 10.0,
    max_http_connections_per_ip: int = 64,
    ip_limit_exempt: tuple[str, ...] = (),
    clock: Any = None,
) -> ChatdSite:
    """The root and its children.  ``origins`` guards the HTTP API (CORS);
    ``body_limits`` names the resources besides the API that take bodies
    (Socket.IO polling) and their limits."""
    root = Directory()
    root.putChild(
        b"",
        Console(WebSocketResource(root_ws_factory) if root_ws_factory is not None else None),
    )
    console = Directory()
    console.putChild(b"demo-token", DemoToken(demo_mint))
    root.putChild(b"console", console)
    dialects = {
        name.encode(): WebSocketResource(factory)
        for name, factory in (dialect_ws_factories or {}).items()
    }
    root.putChild(b"ws", WebSocketPaths(WebSocketResource(ws_factory), dialects))
    if socketio is not None:
        # Engine.IO's path is /socket.io/ (with the slash): a leaf resource
        # here takes both and everything below.
        root.putChild(b"socket.io", socketio)
    if engine_io_test_suite is not None and socketio_test_suite is not None:
        # socketio_test_suites (test only): the protocol suites' servers.
        # Each suite asks for ${URL}/engine.io/ or ${URL}/socket.io/, so
        # URL=http://host:port/testsuite serves both, /socket.io/ untouched.
        testsuite = Directory()
        testsuite.putChild(b"engine.io", engine_io_test_suite)
        testsuite.putChild(b"socket.io", socketio_test_suite)
        root.putChild(b"testsuite", testsuite)
        root.putChild(b"engine.io", engine_io_test_suite)
    root.putChild(b"healthz", Health(ws_factory.connections))
    root.putChild(b"readyz", Ready(ready_checks))
    api_front: Resource = CrossOriginApi(api, origins) if origins is not None else api
    root.putChild(b"websocket", api_front)
    root.putChild(b"api", api_front)
    if metrics_page is not None:
        root.putChild(b"metrics", metrics_page)
    limits: dict[Resource, BodyLimit] = dict(body_limits or {})
    limits[api_front] = lambda request: _limit_of(api_front, request)
    site = ChatdSite(
        root,
        limits,
        header_timeout,
        AddressCounts(max_http_connections_per_ip, ip_limit_exempt),
        clock,
    )
    site.displayTracebacks = False
    site.noisy = False
    return site
