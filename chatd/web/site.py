"""One port, two protocols: a twisted.web ``Site`` whose ``/ws`` child is
Autobahn's ``WebSocketResource``; health and the HTTP API hang off the
same root."""

from __future__ import annotations

import json
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

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


def build_site(ws_factory: Any) -> Site:
    root = Resource()
    root.putChild(b"", Index())
    root.putChild(b"ws", WebSocketResource(ws_factory))
    root.putChild(b"healthz", Health(ws_factory.connections))
    site = Site(root)
    site.displayTracebacks = False
    site.noisy = False
    return site
