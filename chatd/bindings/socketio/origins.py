"""Which browser origins may use an entry point (config ``allowed_origins``).

A request without ``Origin`` is no browser's cross-site request (native
apps, servers, curl): it passes, its token is what protects it.  A request
from the server's own host passes (the scheme is not compared, so a proxy
that terminates TLS does not make a page of its own site foreign).  Any
other origin must be listed; ``*`` lists every origin (``null``, the origin
of sandboxed frames and ``file:`` pages, passes only then).  Listed
origins get CORS headers; chatd uses no cookies, so credentials are never
allowed.

The one policy of every entry point: ``/socket.io/`` (polling, CORS and
its WebSocket upgrade), the plain WebSocket endpoints (``/ws``,
``/ws/<dialect>``, ``/``: ``chatd.bindings.websocket`` refuses the upgrade
with 403) and the HTTP API (CORS, ``chatd.web.site.CrossOriginApi``).
Nothing here is Engine.IO's.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from twisted.web.server import Request


class OriginPolicy:
    def __init__(self, allowed: tuple[str, ...]) -> None:
        self._any = "*" in allowed
        self._allowed = frozenset(origin.rstrip("/").lower() for origin in allowed)

    def allows(self, request: Request) -> bool:
        return self.allows_origin(request.getHeader(b"origin"), request.getHeader(b"host"))

    def allows_origin(self, origin_header: bytes | None, host_header: bytes | None) -> bool:
        """``allows``, from the raw ``Origin`` and ``Host`` headers."""
        origin = _origin_value(origin_header)
        if origin is None or self._any or origin.lower() in self._allowed:
            return True
        return _same_host_value(origin, host_header)

    def add_cors_headers(self, request: Request) -> None:
        """For a cross-origin request that ``allows``: let the browser read
        the answer."""
        origin = _origin(request)
        if origin is None or _same_host(origin, request):
            return
        request.setHeader(b"access-control-allow-origin", origin.encode("utf-8"))
        request.setHeader(b"vary", b"Origin")

    def preflight(self, request: Request, methods: bytes = b"GET, POST, OPTIONS") -> bytes:
        """The answer to an ``OPTIONS`` preflight of an allowed origin
        (``methods``: the entry point's; Engine.IO polling's by default)."""
        self.add_cors_headers(request)
        request.setResponseCode(204)
        request.setHeader(b"access-control-allow-methods", methods)
        wanted = request.getHeader(b"access-control-request-headers")
        request.setHeader(b"access-control-allow-headers", wanted or b"authorization, content-type")
        request.setHeader(b"access-control-max-age", b"600")
        return b""


def _origin(request: Request) -> str | None:
    return _origin_value(request.getHeader(b"origin"))


def _origin_value(raw: bytes | str | None) -> str | None:
    if raw is None:
        return None
    return raw.decode("utf-8", "replace").strip().rstrip("/") if isinstance(raw, bytes) else raw


def _same_host(origin: str, request: Request) -> bool:
    return _same_host_value(origin, request.getHeader(b"host"))


def _same_host_value(origin: str, host: bytes | str | None) -> bool:
    if not host:
        return False
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:
        return False
    own = host.decode("latin-1") if isinstance(host, bytes) else host
    return bool(netloc) and netloc.lower() == own.strip().lower()
