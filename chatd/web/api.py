"""The HTTP API for backends (PROTOCOL.md section 6) on the same Site as
``/ws``.

Every push it makes goes through the same services, broker and fan-out as
WebSocket events.  JSON in and out; errors are ``{"error": {"code",
"message"}}`` with 400 (a bad body, naming the field), 401 (no or bad
credentials), 403 (a plain user on an admin endpoint), 404, 413 (body too
large) or 503 (storage down).  Credentials: ``Authorization: Bearer`` with a
JWT (verified like WebSocket tokens; ``role: "admin"`` for admin endpoints)
or the configured API key.
"""

from __future__ import annotations

import hmac
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from chatd.attribution import BACKEND, owned_by
from chatd.auth import AuthError, TokenVerifier
from chatd.domain.models import Identity
from chatd.errors import ChatError, ErrorCode, StoreUnavailable

log = Logger()

MAX_BODY = 1 << 20
MAX_ID = 128
MAX_INTEGER = 2**63 - 1
"""The largest integer a query may give (``before``, ``after``, ``limit``):
what the stores' signed 64-bit columns hold, as on the WebSocket."""

_STATUS_OF_CODE = {
    ErrorCode.INVALID_MESSAGE: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_A_MEMBER: 403,
    ErrorCode.ROOM_NOT_FOUND: 404,
    ErrorCode.USER_NOT_FOUND: 404,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.RATE_LIMIT_EXCEEDED: 429,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.SERVER_ERROR: 500,
}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def bad_request(message: str) -> ApiError:
    return ApiError(400, ErrorCode.INVALID_MESSAGE, message)


@dataclass(frozen=True, slots=True)
class Requester:
    """Who sent the HTTP request: a user from a JWT, or the backend with
    the API key (``identity`` None).  Not a domain ``Caller``: an endpoint
    that acts for a user names that user (``models.ActingUser``)."""

    identity: Identity | None

    @property
    def is_admin(self) -> bool:
        return self.identity is None or self.identity.is_admin

    @property
    def user_id(self) -> str | None:
        return self.identity.user_id if self.identity is not None else None


@dataclass(frozen=True, slots=True)
class Call:
    requester: Requester
    params: dict[str, str]
    query: dict[str, str]
    body: Any

    def field(self, name: str, kind: type | tuple[type, ...] = str, required: bool = True) -> Any:
        if not isinstance(self.body, dict):
            raise bad_request("the body must be a JSON object")
        value = self.body.get(name)
        if value is None:
            if required:
                raise bad_request(f"'{name}' is required")
            return None
        if isinstance(value, bool) and kind is not bool:
            raise bad_request(f"'{name}' has the wrong type")
        if not isinstance(value, kind):
            raise bad_request(f"'{name}' has the wrong type")
        if isinstance(value, str):
            if "\x00" in value:
                raise bad_request(f"'{name}' must not contain NUL characters")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise bad_request(f"'{name}' is not valid Unicode text") from None
        return value

    def user_id_field(self, name: str) -> str:
        value = self.field(name)
        if not value.strip() or len(value) > MAX_ID:
            raise bad_request(f"'{name}' must be a user id of 1 to {MAX_ID} characters")
        return value


Handler = Callable[[Call], Any]


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: bytes
    parts: tuple[bytes | str, ...]
    """The path's segments: bytes for literal text, a ``str`` for the name
    of a parameter (``{user_id}``) that takes one whole segment."""
    handler: Handler
    admin: bool

    def match(self, segments: list[bytes]) -> dict[str, bytes] | None:
        """The parameters, as the raw segments that hold them, when the
        path is this endpoint's; an empty segment is no parameter."""
        if len(segments) != len(self.parts):
            return None
        params: dict[str, bytes] = {}
        for part, segment in zip(self.parts, segments, strict=True):
            if isinstance(part, bytes):
                if segment != part:
                    return None
            elif not segment:
                return None
            else:
                params[part] = segment
        return params


def endpoint(method: str, path: str, handler: Handler, admin: bool = True) -> Endpoint:
    parts = tuple(
        part[1:-1] if part.startswith("{") and part.endswith("}") else part.encode()
        for part in path.strip("/").split("/")
    )
    return Endpoint(method.encode(), parts, handler, admin)


class HttpApi(Resource):
    """One leaf resource for ``/websocket/…`` and ``/api/…``: routing by
    method and path, authentication, body parsing and JSON errors."""

    isLeaf = True

    def __init__(
        self, verifier: TokenVerifier, api_key: str | None, endpoints: list[Endpoint]
    ) -> None:
        super().__init__()
        self._verifier = verifier
        self._api_key = api_key
        self._endpoints = endpoints

    def render(self, request: Request) -> Any:
        d = ensureDeferred(self._respond(request))
        d.addErrback(self._unexpected, request)
        return NOT_DONE_YET

    async def _respond(self, request: Request) -> None:
        try:
            status, body = 200, await self._dispatch(request)
        except ApiError as e:
            status, body = e.status, {"error": {"code": e.code, "message": e.message}}
        except ChatError as e:
            status, body = (
                _STATUS_OF_CODE.get(e.code, 400),
                {"error": {"code": e.code, "message": e.message}},
            )
            if status == 429:
                request.setHeader(b"retry-after", b"%d" % _retry_after(e.retry_after))
        except StoreUnavailable:
            status, body = (
                503,
                {"error": {"code": "UNAVAILABLE", "message": "storage is unavailable"}},
            )
        _finish(request, status, body)

    def _unexpected(self, failure: Failure, request: Request) -> None:
        log.failure(
            "HTTP {method} {path} failed", failure, method=request.method, path=request.path
        )
        _finish(request, 500, {"error": {"code": "SERVER_ERROR", "message": "internal error"}})

    async def _dispatch(self, request: Request) -> Any:
        target, raw_params, requester = self._authorized_endpoint(request)
        params = {name: _path_param(name, raw) for name, raw in raw_params.items()}
        body = _read_body(request)
        args: dict[bytes, list[bytes]] = request.args or {}
        query = {
            k.decode("utf-8", "replace"): v[-1].decode("utf-8", "replace") for k, v in args.items()
        }
        # Its storage work is the caller's turn at the database, like a
        # WebSocket request's (chatd.storage.fair).
        with owned_by(requester.user_id or BACKEND):
            result = target.handler(Call(requester, params, query, body))
            if isinstance(result, Deferred):
                result = await result
            elif hasattr(result, "__await__"):
                result = await result
        return result

    def body_limit(self, request: Request) -> int:
        """For chatd.web.site, from the headers alone, before a byte of the
        body is read: 0 when the request is refused whatever its body (no
        such endpoint, a wrong method, no or bad credentials, not an admin),
        so it is answered at once without it; else ``MAX_BODY``."""
        try:
            self._authorized_endpoint(request)
        except ApiError:
            return 0
        return MAX_BODY

    def _authorized_endpoint(
        self, request: Request
    ) -> tuple[Endpoint, dict[str, bytes], Requester]:
        """The endpoint and its caller, or the ApiError (404, 405, 401, 403)
        this request gets whatever its body."""
        segments = _segments(request)
        matched = None
        allowed = False
        for candidate in self._endpoints:
            found = candidate.match(segments)
            if found is None:
                continue
            allowed = True
            if candidate.method == request.method:
                matched = (candidate, found)
                break
        if matched is None:
            path = "/" + "/".join(s.decode("utf-8", "replace") for s in segments)
            if allowed:
                method = request.method.decode("latin-1")
                raise ApiError(405, "METHOD_NOT_ALLOWED", f"{method} is not allowed on {path}")
            raise ApiError(404, "NOT_FOUND", f"no endpoint {path}")
        target, raw_params = matched
        requester = self._authenticate(request)
        if target.admin and not requester.is_admin:
            raise ApiError(
                403, ErrorCode.FORBIDDEN, "this endpoint needs an admin token or the API key"
            )
        return target, raw_params, requester

    def is_admin_request(self, request: Request) -> bool:
        """For other resources (/metrics): admin token or API key?"""
        try:
            return self._authenticate(request).is_admin
        except ApiError:
            return False

    def _authenticate(self, request: Request) -> Requester:
        header = request.getHeader(b"authorization")
        if not header:
            raise ApiError(
                401, ErrorCode.UNAUTHORIZED, "an Authorization: Bearer header is required"
            )
        scheme, _, credentials = header.decode("latin-1").partition(" ")
        credentials = credentials.strip()
        if scheme.lower() != "bearer" or not credentials:
            raise ApiError(
                401, ErrorCode.UNAUTHORIZED, "use Authorization: Bearer <token or API key>"
            )
        if self._api_key and hmac.compare_digest(credentials.encode(), self._api_key.encode()):
            return Requester(None)
        try:
            return Requester(self._verifier.verify(credentials))
        except AuthError as e:
            raise ApiError(401, ErrorCode.UNAUTHORIZED, f"authentication failed: {e}") from None


def _segments(request: Request) -> list[bytes]:
    """The request path's segments, percent-decoded once: twisted.web split
    the raw path on ``/`` and then decoded each segment, so an encoded
    ``%2F`` stays inside its segment and ``%2541`` is the text ``%41``
    (decoding again would make it ``A``, another user).  Trailing slashes
    are ignored."""
    segments = (request.prepath or []) + (request.postpath or [])
    while segments and not segments[-1]:
        segments.pop()
    return segments


def _path_param(name: str, raw: bytes) -> str:
    """A path parameter as the id it names: UTF-8 text of 1 to ``MAX_ID``
    characters, not blank and without NUL (which no store keeps)."""
    try:
        value = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request(f"'{name}' in the path is not valid UTF-8") from None
    if "\x00" in value:
        raise bad_request(f"'{name}' in the path must not contain NUL characters")
    if not value.strip() or len(value) > MAX_ID:
        raise bad_request(f"'{name}' in the path must be 1 to {MAX_ID} characters")
    return value


class _NonFiniteNumber(ValueError):
    """NaN, Infinity or a number beyond a double in a body: Python's
    ``json`` takes them, RFC 8259 and browsers' ``JSON.parse`` do not (a
    push carrying one would reach clients as a frame they cannot read)."""


def _refuse_constant(name: str) -> Any:
    raise _NonFiniteNumber(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NonFiniteNumber(text)
    return value


_BODY_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)
"""Strict JSON, as ``chatd.protocol.envelope.strict_loads`` reads frames
(the HTTP layer does not import the WebSocket protocol)."""
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def query_integer(call: Call, name: str) -> int | None:
    """A query parameter that is an integer from 0 to ``MAX_INTEGER``, in
    ASCII digits (``str.isdigit`` also takes ``²`` and other digits
    ``int`` refuses); None when it is absent or empty."""
    raw = call.query.get(name)
    if raw is None or raw == "":
        return None
    digits = raw.lstrip("0") or "0"
    if not (raw.isascii() and raw.isdigit()) or len(digits) > 19 or int(digits) > MAX_INTEGER:
        raise bad_request(f"'{name}' must be a non-negative integer below 2^63")
    return int(digits)


def _read_body(request: Request) -> Any:
    length = request.getHeader(b"content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY:
        raise ApiError(
            413, ErrorCode.PAYLOAD_TOO_LARGE, f"the body is larger than {MAX_BODY} bytes"
        )
    raw = request.content.read(MAX_BODY + 1) if request.content is not None else b""
    if len(raw) > MAX_BODY:
        raise ApiError(
            413, ErrorCode.PAYLOAD_TOO_LARGE, f"the body is larger than {MAX_BODY} bytes"
        )
    if not raw.strip():
        return None
    try:
        return _BODY_DECODER.decode(raw.decode("utf-8"))
    except _NonFiniteNumber:
        raise bad_request(
            "the body is not valid JSON: NaN, Infinity and numbers beyond a double are not JSON"
        ) from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise bad_request("the body is not valid JSON") from None


QUOTA_RETRY_AFTER = 60
"""``Retry-After`` of a 429 for a quota that frees when something else
happens (an answered friend request), not after a known time."""


def _retry_after(seconds: float | None) -> int:
    return QUOTA_RETRY_AFTER if seconds is None else max(1, math.ceil(seconds))


def _finish(request: Request, status: int, body: Any) -> None:
    if request.finished or request._disconnected:
        return
    payload = _ENCODER.encode(body).encode()
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"content-length", str(len(payload)).encode())
    request.write(payload)
    request.finish()
