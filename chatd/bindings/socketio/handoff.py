"""Polling without sticky sessions: hand a request for another process's
sid to that process over a local socket.

Behind one shared listening socket (systemd socket activation, several
``chatd@`` instances), every new TCP connection goes to whichever process
accepts it first.  A WebSocket stays on its connection, but an Engine.IO
polling client sends each GET and POST on whatever connection it has, so
they can land on a process that does not hold the session.  Socket.IO
itself asks for sticky sessions here; chatd does not need them:

* every sid starts with the id of the process that made it
  (``engine.make_sid``: ``<8 hex digits>.<144 random bits>``);
* every process listens on a UNIX socket of its own,
  ``<runtime_dir>/<id>.sock`` (directory 0700, socket 0600), in the
  runtime directory the instances share (``$RUNTIME_DIRECTORY`` under
  systemd), so the processes find each other with no configuration and
  nothing leaves the host;
* a polling GET or POST whose sid names another process is sent, as
  HTTP, to that process's socket, and the answer relayed back
  (``Handoff.forward``).  A forwarded GET waits as long as the owner holds
  it; if the client goes away, the forwarded connection is dropped, so the
  owner sees its pending GET lost exactly as if the client had been
  connected to it.  The body limit applies before anything is forwarded;
* an owner that cannot be reached (no such process any more) is Engine.IO's
  "Session ID unknown", which every client handles by reconnecting.

What arrives over the local socket is served by the owner's
``SocketIOResource.render_handoff``: polling for its own sids only (so a
request is never forwarded twice), the origin having been checked by the
process the client reached.

A WebSocket upgrade with another process's sid is refused (400 "Bad
request"): the client keeps polling, as socket.io clients do when a probe
fails, and a later session of it may upgrade.  WebSocket-only clients never
need any of this.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from io import BytesIO
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.interfaces import IListeningPort, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    FileBodyProducer,
    HTTPConnectionPool,
    _HTTP11ClientFactory,  # noqa: PLC2701  (to quiet it)
    readBody,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IResponse
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from chatd.bindings.socketio import eio
from chatd.bindings.socketio.engine import new_node_id, sid_node

if TYPE_CHECKING:
    from chatd.bindings.socketio.engine import EngineServer

log = Logger(namespace="chatd.bindings.socketio")

HEADER = b"chatd-handoff"
"""Set on a forwarded request that carries an instruction, not a body:
``payload-too-large`` (the POST was over ``max_payload``; the owner ends the
session with 413, as if it had read the body itself) or ``release`` (the
forwarding process is stopping: answer the pending GET now, with a noop,
so the client polls again through a process that keeps running)."""
PAYLOAD_TOO_LARGE = b"payload-too-large"
RELEASE = b"release"

MAX_UNIX_PATH = 107
"""``sun_path`` holds 108 bytes with the terminating NUL."""

RELAYED_HEADERS = (b"content-type",)
"""The owner's response headers that go back to the client; CORS and
``cache-control`` were set by the process the client reached."""


def socket_name(node: str) -> str:
    return f"{node}.sock"


@implementer(IAgentEndpointFactory)
class _ToProcess:
    """The Agent's endpoints: the URI's host is a process id, its endpoint
    that process's UNIX socket."""

    def __init__(self, reactor: Any, directory: str, timeout: float) -> None:
        self._reactor = reactor
        self._directory = directory
        self._timeout = timeout

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        node = uri.host.decode("ascii")
        path = os.path.join(self._directory, socket_name(node))
        return UNIXClientEndpoint(self._reactor, path, timeout=self._timeout)


class _Entry(Resource):
    """The root of the local socket's site: everything goes to the
    owner's ``render_handoff``."""

    isLeaf = True

    def __init__(self, render: Callable[[Request], Any]) -> None:
        super().__init__()
        self._render = render

    def render(self, request: Request) -> Any:
        return self._render(request)


class _QuietClientFactory(_HTTP11ClientFactory):
    """No "Starting/Stopping factory" line per forwarded request."""

    noisy = False


class _QuietSite(Site):
    """No access log line: the process the client reached logged the
    request already."""

    def log(self, request: Any) -> None:
        pass


class Handoff:
    """This process's local socket, and the forwarding to the others'.

    ``directory`` is shared by the processes of one service; ``engine``'s
    node id names this process's socket (re-drawn at start in the unlikely
    case that a file of that name is there already)."""

    def __init__(
        self,
        engine: EngineServer,
        reactor: Any,
        directory: str,
        connect_timeout: float = 5.0,
        release_timeout: float = 3.0,
    ) -> None:
        self.engine = engine
        self.directory = directory
        self._reactor = reactor
        self._release_timeout = release_timeout
        # One connection per request (a forwarded GET holds its own anyway).
        pool = HTTPConnectionPool(reactor, persistent=False)
        pool._factory = _QuietClientFactory
        self._agent = Agent.usingEndpointFactory(
            reactor, _ToProcess(reactor, directory, connect_timeout), pool
        )
        self._port: IListeningPort | None = None
        # Forwarded requests in flight: their Deferreds, and for a GET the
        # owner and the sid (to release it when this process stops).
        self._in_flight: dict[Deferred[Any], tuple[str, str] | None] = {}
        self.forwarded = 0
        self.answered = 0
        self.unreachable = 0

    @property
    def node(self) -> str:
        return self.engine.node

    @property
    def path(self) -> str:
        return os.path.join(self.directory, socket_name(self.node))

    @property
    def listening(self) -> bool:
        return self._port is not None

    def owner_elsewhere(self, sid: str) -> str | None:
        """The process id of a sid made by another process, else ``None``
        (a sid of this process, or not one chatd makes)."""
        node = sid_node(sid)
        return node if node is not None and node != self.node else None

    # -- the local socket -----------------------------------------------------------

    def start(self, render: Callable[[Request], Any]) -> None:
        """Listen on ``<directory>/<node>.sock``.  A directory that cannot
        be made private, or a path too long for a UNIX socket, leaves this
        process without a local socket (and says so): it then serves its own
        sids only, as before."""
        try:
            self._prepare_directory()
        except OSError as e:
            log.warn(
                "Socket.IO polling handoff disabled: runtime directory {directory}: {error}",
                directory=self.directory,
                error=e.strerror or str(e),
            )
            return
        while os.path.exists(self.path):
            self.engine.node = new_node_id()
        if len(os.fsencode(self.path)) > MAX_UNIX_PATH:
            log.warn(
                "Socket.IO polling handoff disabled: {path} is longer than a UNIX socket "
                "path may be (set a shorter runtime_dir)",
                path=self.path,
            )
            return
        site = _QuietSite(_Entry(render))
        site.displayTracebacks = False
        site.noisy = False
        self._port = self._reactor.listenUNIX(self.path, site, mode=0o600, wantPID=False)
        log.info(
            "Socket.IO polling handoff: process {node} at {path}",
            node=self.node,
            path=self.path,
        )

    def _prepare_directory(self) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        info = os.stat(self.directory)
        if info.st_uid != os.getuid():
            raise OSError(f"owned by uid {info.st_uid}, not by this process")
        if stat.S_IMODE(info.st_mode) & 0o077:
            os.chmod(self.directory, 0o700)

    def stop(self) -> Deferred[None]:
        """After this process's own sessions have drained: release the GETs
        it holds for other processes (their clients poll again, through a
        process that keeps running), wait for what is in flight (bounded),
        then stop listening (Twisted removes the socket file)."""
        for owner_sid in list(self._in_flight.values()):
            if owner_sid is not None:
                self._release(*owner_sid)
        waiting = [d for d in self._in_flight if not d.called]
        done: Deferred[Any] = DeferredList(waiting) if waiting else succeed(None)
        if waiting:
            done.addTimeout(self._release_timeout, self._reactor)
            done.addErrback(lambda _: None)

        def stop_listening(_: object) -> Deferred[None] | None:
            port, self._port = self._port, None
            if port is None:
                return None
            log.info(
                "Socket.IO polling handoff: forwarded {forwarded} requests to other "
                "processes ({unreachable} found no process), answered {answered} for them",
                forwarded=self.forwarded,
                unreachable=self.unreachable,
                answered=self.answered,
            )
            return port.stopListening()

        return done.addCallback(stop_listening).addCallback(lambda _: None)

    def _release(self, node: str, sid: str) -> None:
        uri = f"http://{node}/socket.io/?EIO=4&transport=polling&sid={sid}".encode()
        d = self._agent.request(b"POST", uri, Headers({HEADER: [RELEASE]}), None)
        d.addCallback(readBody).addErrback(lambda _: None)

    # -- forwarding -------------------------------------------------------------------

    def forward(self, request: Request, node: str, sid: str, body: bytes | None) -> Any:
        """Send a polling GET (``body`` ``None``) or POST to process ``node``
        and relay its answer.  ``body`` is what the POST carried, already
        within ``max_payload``; an oversized POST is forwarded as the
        ``payload-too-large`` instruction instead."""
        self.forwarded += 1
        headers = Headers()
        producer = None
        if request.method == b"POST":
            if body is None:
                headers.setRawHeaders(HEADER, [PAYLOAD_TOO_LARGE])
                body = b""
            content_type = request.getHeader(b"content-type")
            if content_type is not None:
                headers.setRawHeaders(b"content-type", [content_type])
            producer = _body(body)
        uri = b"http://" + node.encode("ascii") + request.uri
        d = self._agent.request(request.method, uri, headers, producer)
        d.addCallback(_read)
        self._in_flight[d] = (node, sid) if request.method == b"GET" else None
        request.notifyFinish().addErrback(lambda _: d.cancel())
        d.addCallbacks(self._relay, self._failed, callbackArgs=(request,), errbackArgs=(request,))
        d.addBoth(self._landed, d)
        return NOT_DONE_YET

    def _landed(self, result: object, d: Deferred[Any]) -> None:
        self._in_flight.pop(d, None)

    def _relay(self, answer: tuple[IResponse, bytes], request: Request) -> None:
        response, body = answer
        if _gone(request):
            return
        request.setResponseCode(response.code)
        for name in RELAYED_HEADERS:
            values = response.headers.getRawHeaders(name)
            if values:
                request.setHeader(name, values[0])
        request.setHeader(b"content-length", str(len(body)).encode())
        request.write(body)
        request.finish()

    def _failed(self, failure: Failure, request: Request) -> None:
        if failure.check(CancelledError) or _gone(request):
            return  # the client went away; the owner saw its request dropped
        # No such process any more, or it died while answering: either way
        # the session is gone, which a client hears as an unknown sid.
        self.unreachable += 1
        request.setResponseCode(400)
        request.setHeader(b"content-type", b"application/json")
        body = eio.error_body(eio.ErrorCode.UNKNOWN_SID, "Session ID unknown")
        request.setHeader(b"content-length", str(len(body)).encode())
        request.write(body)
        request.finish()


def _read(response: IResponse) -> Deferred[tuple[IResponse, bytes]]:
    return readBody(response).addCallback(lambda body: (response, body))


def _body(body: bytes) -> FileBodyProducer:
    return FileBodyProducer(BytesIO(body))


def _gone(request: Request) -> bool:
    return bool(request.finished or getattr(request, "_disconnected", False))
