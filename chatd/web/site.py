"""One port, two protocols: a twisted.web ``Site`` whose ``/ws`` child is
Autobahn's ``WebSocketResource``; health and the HTTP API hang off the
same root."""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from chatd import __version__
from chatd.clock import now_iso


class JsonResource(Resource):
    isLeaf = True

    def json(self, request: Request, status: int, body: Any) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(body, separators=(",", ":")).encode()


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
    a second line of defence."""

    isLeaf = True
    CSP = (
        b"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        b"connect-src 'self' ws: wss:; img-src 'self' data:; base-uri 'none'; form-action 'none'"
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
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"not found\n"
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-security-policy", self.CSP)
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
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"no such WebSocket endpoint (see docs/dialects.md)\n"


class DemoToken(JsonResource):
    """``GET /console/demo-token?user=demo-…``: on the embedded default only
    (a generated secret, loopback listening), a short-lived token for a
    ``demo-`` user, so the console works out of the box.  Real user ids
    cannot be minted here."""

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
    part failed."""

    def __init__(self, checks: dict[str, Callable[[], Deferred[Any]]]) -> None:
        super().__init__()
        self._checks = checks

    def render_GET(self, request: Request) -> Any:
        d = ensureDeferred(self._probe())
        d.addCallback(lambda result: self._answer(request, *result))
        return NOT_DONE_YET

    async def _probe(self) -> tuple[int, dict[str, Any]]:
        parts: dict[str, str] = {}
        for name, check in self._checks.items():
            try:
                await check()
                parts[name] = "ok"
            except Exception as e:
                parts[name] = f"unavailable: {' '.join(str(e).split()) or type(e).__name__}"
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
) -> Site:
    root = Resource()
    root.putChild(
        b"",
        Console(WebSocketResource(root_ws_factory) if root_ws_factory is not None else None),
    )
    console = Resource()
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
        testsuite = Resource()
        testsuite.putChild(b"engine.io", engine_io_test_suite)
        testsuite.putChild(b"socket.io", socketio_test_suite)
        root.putChild(b"testsuite", testsuite)
        root.putChild(b"engine.io", engine_io_test_suite)
    root.putChild(b"healthz", Health(ws_factory.connections))
    root.putChild(b"readyz", Ready(ready_checks))
    root.putChild(b"websocket", api)
    root.putChild(b"api", api)
    if metrics_page is not None:
        root.putChild(b"metrics", metrics_page)
    site = Site(root, logFormatter=access_log_line)
    site.displayTracebacks = False
    site.noisy = False
    return site
