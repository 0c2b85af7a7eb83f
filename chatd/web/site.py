"""One port, two protocols: a twisted.web ``Site`` whose ``/ws`` child is
Autobahn's ``WebSocketResource``; health and the HTTP API hang off the
same root."""

from __future__ import annotations

import json
from collections.abc import Callable
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
        return self.json(request, 200, {
            "status": "ok",
            "version": __version__,
            "connections": len(self._connections),
            "time": now_iso(),
        })


class Index(Resource):
    """``GET /``: says where things are (the web console comes later)."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"chatd: WebSocket endpoint at /ws, health at /healthz\n"


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


def build_site(ws_factory: Any, api: Resource, ready_checks: dict[str, Callable[[], Deferred[Any]]],
               metrics_page: Resource | None = None) -> Site:
    root = Resource()
    root.putChild(b"", Index())
    root.putChild(b"ws", WebSocketResource(ws_factory))
    root.putChild(b"healthz", Health(ws_factory.connections))
    root.putChild(b"readyz", Ready(ready_checks))
    root.putChild(b"websocket", api)
    root.putChild(b"api", api)
    if metrics_page is not None:
        root.putChild(b"metrics", metrics_page)
    site = Site(root)
    site.displayTracebacks = False
    site.noisy = False
    return site
