"""The running server: the composition root that builds chatd's object
graph from a ``Config``, and the service tree that starts and stops it.

Every object gets what it uses when it is built (nothing is patched in
afterwards).  Every long-lived part is a child of ``ChatdService`` (an
``AsyncMultiService``, see chatd/lifecycle.py), so start-up waits for each
part in order and shutdown drains in reverse order.

Start-up fails loudly: migrations run before the reactor starts (a database
that cannot be reached stops twistd with one line), and the listening port
is bound in ``privilegedStartService`` so a port in use does the same; a
child that fails to start later stops the process with one line too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from functools import partial
from typing import Any, NoReturn

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatd import __version__
from chatd.auth import TokenVerifier, mint_token
from chatd.bindings.dialects import root_dialects, seed_dialects
from chatd.bindings.echo import ECHO, echo_factory
from chatd.bindings.socketio.origins import OriginPolicy
from chatd.bindings.socketio.server import SocketIOServer
from chatd.bindings.socketio.testsuite import ProtocolTestSuites
from chatd.bindings.websocket import ChatdWebSocketFactory
from chatd.broker.budgets import RedisSpendLedger
from chatd.broker.cluster import Cluster
from chatd.broker.memory import InProcessBroker
from chatd.broker.target import RedisTarget
from chatd.clock import SystemWallClock, WallClock
from chatd.config import Config, config_warnings
from chatd.domain.chat import ChatService, Limits
from chatd.domain.direct import DirectMessages
from chatd.domain.interfaces import Broker, PresenceTracker
from chatd.domain.live import LiveService, LocalViewers, ViewerCounter
from chatd.domain.notifications import Notifications
from chatd.domain.ordering import read_back_from
from chatd.domain.presence import LocalPresence, PresenceAnnouncer
from chatd.domain.publishing import Publisher
from chatd.domain.registry import LocalRegistry
from chatd.domain.social import SocialService
from chatd.domain.turn import EndOfTurn
from chatd.lifecycle import AsyncMultiService, ComponentService
from chatd.logs import LogTarget, observer_for
from chatd.metrics import Metrics
from chatd.protocol.dispatch import Dispatcher, chat_routes, live_routes, social_routes
from chatd.session.hub import SessionHub
from chatd.session.lifecycle import Sessions
from chatd.session.session import Session
from chatd.storage.engines import engine_for
from chatd.storage.schema import migrate
from chatd.storage.store import SqlStore, WriteObserver
from chatd.web.api import HttpApi
from chatd.web.endpoints import BackendApi, NativeApi
from chatd.web.front import FrontDoorFactory, UpgradeRoute
from chatd.web.site import MetricsPage, build_site, post_bodies

log = Logger()


class StartupError(Exception):
    """chatd cannot start; the message is the one line the operator sees."""


class ChatdService(AsyncMultiService):
    """The root of the service tree.  With ``exit_on_failure`` (twistd) a
    start-up failure is one line on stderr and exit status 1; without it
    (tests) the failure is simply raised to the caller."""

    name = "chatd"  # type: ignore[assignment]  # Service declares it None

    def __init__(
        self,
        config: Config,
        reactor: Any = None,
        exit_on_failure: bool = False,
        wall_clock: WallClock | None = None,
        log_target: LogTarget | None = None,
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.reactor = reactor
        self.engine = engine_for(
            config.database, config.sqlite_synchronous, config.database_timeout
        )
        self.exit_on_failure = exit_on_failure
        self.log_target = log_target
        # Timers and durations use the reactor; timestamps use this.
        self.wall_clock: WallClock = wall_clock or SystemWallClock()
        self.build()

    def setServiceParent(self, parent: Any) -> Any:
        """Under twistd the parent is the application, whose log observer
        twistd installs after building the service: chatd's for the target
        twistd would write to (``log_target``: stdout, a log file, syslog),
        so that every client-supplied value is escaped wherever the log
        goes, in the configured ``log_format``."""
        result = super().setServiceParent(parent)
        if not hasattr(parent, "setComponent"):
            return result
        from twisted.logger import ILogObserver

        observer = observer_for(self.log_target, self.config.log_format)
        if observer is not None:
            parent.setComponent(ILogObserver, observer)
        return result

    # -- building ---------------------------------------------------------------

    def prepare(self) -> None:
        """Blocking set-up before the reactor runs: apply migrations."""
        try:
            applied = migrate(self.engine)
        except Exception as e:
            raise StartupError(
                f"cannot prepare the database {self._safe_database()}: {_one_line(e)}"
            ) from e
        if applied:
            log.info("applied database migrations {versions}", versions=applied)

    def build(self) -> None:
        """The object graph, then the service tree over it (nothing touches
        the database or the network yet)."""
        config = self.config
        self.metrics = metrics = Metrics()
        # Every open session, whatever its binding (the hub keeps it; the
        # cluster heartbeat and the metrics count it).
        self.open_sessions: dict[Session, None] = {}
        self.store = SqlStore(
            self.engine,
            observer=WriteObserver(metrics.batch_size.observe, metrics.store_latency.observe),
            clock=self.reactor,
            reactor=self.reactor,
        )
        self._build_fanout()
        self.verifier = TokenVerifier.from_config(config)
        # One end of the reactor's turn for the fan-out and the sessions'
        # replies: a connection gets what a turn made for it in one write.
        self.turn = EndOfTurn(self.reactor)
        self.registry = LocalRegistry(
            self.broker,
            self.reactor,
            fetch_missing=read_back_from(self.store),
            on_delivered=metrics.delivered,
            turn=self.turn,
        )
        wall_clock = self.wall_clock
        limits = Limits(
            max_content_length=config.max_content_length,
            max_members_by_user=config.max_members_per_request,
        )
        publisher = Publisher(
            self.broker,
            self.registry,
            self.reactor,
            observe=metrics.publish_latency.observe,
        )
        viewers = self._build_presence(publisher)
        notifications = Notifications(
            self.store, publisher, wall_clock, keep=config.max_notifications_per_user
        )
        direct = DirectMessages(
            self.store,
            publisher,
            self.presence,
            notifications,
            limits,
            wall_clock,
            config.dm_policy,
        )
        self.chat = ChatService(
            self.store,
            publisher,
            self.registry,
            self.reactor,
            wall_clock,
            limits,
            direct,
            online=self.presence,
            max_rooms_per_user=config.max_rooms_per_user,
        )
        self.social = SocialService(
            self.chat,
            self.registry,
            self.presence,
            self.announcer,
            direct,
            notifications,
            wall_clock,
            friend_request_cooldown=config.friend_request_cooldown,
            max_pending_requests=config.max_pending_friend_requests,
        )
        self.live = LiveService(
            self.chat,
            self.registry,
            self.reactor,
            wall_clock,
            viewers=viewers,
            count_interval=config.viewer_count_interval,
            reaction_rate=config.reaction_rate,
        )
        self.sessions = Sessions(self.registry, self.chat, self.social, self.live)
        self.dispatcher = Dispatcher(
            {**chat_routes(self.chat), **social_routes(self.social), **live_routes(self.live)},
            self.metrics,
        )
        self.hub = SessionHub(
            config,
            self.reactor,
            self.verifier,
            self.sessions,
            self.dispatcher,
            self.metrics,
            open_sessions=self.open_sessions,
            turn=self.turn,
        )
        self.factory = ChatdWebSocketFactory(config, self.hub)
        self.dialect_factories = {
            dialect.name: ChatdWebSocketFactory(config, self.hub, dialect)
            for dialect in seed_dialects()
        }
        if config.websocket_echo:
            # Test only: the Autobahn TestSuite's echo at /ws/echo, on /ws's
            # protocol class and options (routed like the dialects).
            self.dialect_factories[ECHO.name] = echo_factory(config, self.hub)
        self.root_factory = ChatdWebSocketFactory(config, self.hub, None, root_dialects())
        self.socketio = SocketIOServer(config, self.hub, self.reactor)
        self.test_suites = (
            ProtocolTestSuites(
                self.reactor, config.open_handshake_timeout, config.close_handshake_timeout
            )
            if config.socketio_test_suites
            else None
        )
        self.backend_api = BackendApi(self.registry, self.social, limits)
        self.native_api = NativeApi(self.chat, self.social, self.live)
        self.api = HttpApi(
            self.verifier,
            config.api_key,
            self.backend_api.endpoints() + self.native_api.endpoints(),
        )
        self._wire_metrics()
        checks = {"storage": self.store.ping}
        if self.cluster is not None:
            checks["redis"] = self.broker.ping
        checks = {
            name: partial(_bounded, check, config.database_timeout, self.reactor)
            for name, check in checks.items()
        }
        self.site = build_site(
            self.factory,
            self.api,
            checks,
            MetricsPage(
                self.metrics, self.api.is_admin_request if config.metrics_require_auth else None
            ),
            demo_mint=self._demo_mint() if config.secret_generated else None,
            socketio=self.socketio.resource,
            engine_io_test_suite=self.test_suites.engine_io.resource if self.test_suites else None,
            socketio_test_suite=self.test_suites.socket_io.resource if self.test_suites else None,
            root_ws_factory=self.root_factory,
            dialect_ws_factories=self.dialect_factories,
            origins=OriginPolicy(config.allowed_origins),
            body_limits=self._body_limits(),
            header_timeout=config.http_header_timeout,
            max_http_connections_per_ip=config.max_http_connections_per_ip,
            ip_limit_exempt=config.ip_limit_exempt,
            clock=self.reactor,
        )
        self._build_tree()

    def _body_limits(self) -> dict[Any, Any]:
        """The resources besides the HTTP API that take request bodies:
        Engine.IO polling POSTs, up to each engine's ``max_payload``."""
        engines = [(self.socketio.resource, self.socketio.engine)]
        if self.test_suites is not None:
            for suite in (self.test_suites.engine_io, self.test_suites.socket_io):
                engines.append((suite.resource, suite.engine))
        return {resource: post_bodies(engine.settings.max_payload) for resource, engine in engines}

    def _build_fanout(self) -> None:
        """In-process broker, or Redis for a cluster (presence and viewer
        counts over it follow in ``_build_presence``)."""
        config = self.config
        self.cluster: Cluster | None = None
        self.link: Any = None
        self.redis_broker: Any = None
        if not config.redis:
            # Typed by the interface, so mypy checks both brokers against it.
            self.broker: Broker = InProcessBroker()
            return
        # txredisapi installs the default reactor on import: only import it
        # once a reactor runs (twistd and the tests have installed theirs).
        from chatd.broker.redis import RedisBroker, RedisLink

        target = RedisTarget.parse(config.redis)
        self.link = RedisLink(target, config.redis_prefix, self.reactor, config.redis_ca)
        self.broker = self.redis_broker = RedisBroker(self.link, self.reactor)

    def _build_presence(self, publisher: Publisher) -> ViewerCounter | None:
        """One announcer, and the tracker reporting to it: this process's,
        or the cluster's (whose membership also counts viewers)."""
        config = self.config
        self.announcer = PresenceAnnouncer(self.store, publisher)
        local = partial(
            LocalPresence,
            clock=self.reactor,
            grace=config.presence_grace,
            wall_clock=self.wall_clock,
        )
        self.presence: PresenceTracker
        if self.link is None:
            self.presence = local(self.announcer)
            return None
        self.cluster = Cluster(
            self.link,
            self.reactor,
            self.announcer,
            local,
            LocalViewers(),
            connection_count=self.open_sessions.__len__,
        )
        self.presence = self.cluster.presence
        return self.cluster.viewers

    def _demo_mint(self) -> Callable[[str], str]:
        config = self.config

        def mint(user_id: str) -> str:
            return mint_token(config, user_id, ttl=3600)

        return mint

    def _wire_metrics(self) -> None:
        metrics = self.metrics
        metrics.bind_gauges(
            self.open_sessions.__len__,
            lambda: len(self.registry.online_users()),
            self.registry.joined_room_count,
        )
        metrics.bind_transports(lambda: [session.transport_name for session in self.open_sessions])
        metrics.bind_counts(self._counts)

    def _counts(self) -> dict[str, float]:
        order = self.registry.order
        counts: dict[str, float] = {
            "room_gap_reads": order.filled if order else 0,
            "room_gap_skipped": order.skipped if order else 0,
        }
        if self.cluster is not None:
            counts["redis_up"] = 1 if self.link.is_up() else 0
            counts["broker_publish_failures"] = self.redis_broker.publish_failures
            counts["cluster_nodes_reaped"] = self.cluster.reaped_nodes
        counts.update(self.socketio.handoff_counts())
        return counts

    # -- the service tree -----------------------------------------------------------

    def _build_tree(self) -> None:
        """The children, in start order; they stop in reverse.

        Stopping (SIGTERM) therefore runs: stop accepting connections; let
        the queued message writes commit and push what they acknowledged;
        close every connection with 1001 and wait for the closing
        handshakes; stop the domain's timers; leave the cluster (users
        connected nowhere else go offline for the other nodes now); stop
        the broker; close storage."""
        self.listener = _Listener(self._endpoint(), self._listening_factory(), self.config.listen)
        self.listener.setName("listener")
        stages: list[Any] = [
            ComponentService("storage", stop=self.store.close),
            ComponentService("broker", self.broker.start, self.broker.stop),
        ]
        if self.cluster is not None:
            stages.append(ComponentService("cluster", self._join_cluster, self._leave_cluster))
            # One request budget per user across the processes.
            shared = self.hub.share_budgets(RedisSpendLedger(self.link))
            stages.append(ComponentService("shared user budgets", shared.start, shared.stop))
        stages += [
            ComponentService("domain timers", stop=self._stop_timers),
            # Stops after the connections: draining polling sessions whose
            # requests now reach the other processes only are reached here.
            ComponentService(
                "socket.io handoff", self.socketio.start_handoff, self.socketio.stop_handoff
            ),
            ComponentService("connections", self._open_connections, self._close_connections),
            ComponentService("pending writes", stop=self._commit_pending_writes),
            self.listener,
        ]
        for stage in stages:
            stage.setServiceParent(self)

    def _endpoint(self) -> Any:
        listen = self.config.listen
        try:
            return endpoints.serverFromString(self.reactor, with_backlog(listen))
        except IndexError as e:
            if listen.startswith("systemd:"):
                raise StartupError(
                    f"listen {listen}: no such socket passed by systemd "
                    "(LISTEN_FDS/LISTEN_PID; start chatd through its .socket unit)"
                ) from e
            raise StartupError(f"invalid listen ({listen}): {_one_line(e)}") from e
        except Exception as e:
            raise StartupError(f"invalid listen ({listen}): {_one_line(e)}") from e

    def _listening_factory(self) -> Any:
        """The site behind the front door (WebSocket upgrades to ``/ws``
        and new Socket.IO WebSocket sessions skip twisted.web), over TLS
        when configured."""
        front = FrontDoorFactory(
            self.site, self._upgrade_routes(), self.reactor, self.config.open_handshake_timeout
        )
        if self.config.tls_cert and self.config.tls_key:
            from twisted.protocols.tls import TLSMemoryBIOFactory

            from chatd.tls import server_options

            options = server_options(self.config.tls_cert, self.config.tls_key)
            return TLSMemoryBIOFactory(options, False, front)
        return front

    def _upgrade_routes(self) -> list[UpgradeRoute]:
        """The WebSocket endpoints the front door hands upgrades to: the
        Site's paths to the same factories (``/ws``, ``/ws/<dialect>``,
        ``/``, new Socket.IO sessions)."""
        factories = {b"/ws": self.factory, b"/ws/": self.factory, b"/": self.root_factory}
        for name, factory in self.dialect_factories.items():
            factories[b"/ws/" + name.encode()] = factory

        def plain_route(path: bytes, query: bytes, headers: dict[bytes, bytes]) -> Any:
            return factories.get(path)

        return [plain_route, self.socketio.resource.websocket_route]

    @property
    def port(self) -> IListeningPort | None:
        return self.listener.port

    def _join_cluster(self) -> Deferred[Any] | None:
        assert self.cluster is not None
        return self.cluster.start()

    def _leave_cluster(self) -> Deferred[None]:
        """Bounded: a node that cannot finish is reaped by the others."""
        assert self.cluster is not None
        leaving = self.cluster.stop()
        leaving.addTimeout(self.config.shutdown_timeout, self.reactor)

        def late(failure: Failure) -> None:
            log.warn(
                "leaving the cluster did not finish in time; the other nodes will reap this one"
            )

        return leaving.addCallbacks(lambda _: None, late)

    def _stop_timers(self) -> Deferred[None]:
        self.chat.typing.stop_all()
        self.live.stop()
        if self.registry.order is not None:
            self.registry.order.stop()
        return maybeDeferred(self.presence.stop).addCallback(lambda _: None)

    def _open_connections(self) -> None:
        self.factory.startFactory()

    async def _close_connections(self) -> None:
        self.socketio.close_unconnected()
        if self.test_suites is not None:
            self.test_suites.close_all()
        await self.factory.shutdown(self.config.shutdown_timeout)
        self.factory.stopFactory()

    async def _commit_pending_writes(self) -> None:
        try:
            await self.store.drain()
        except Exception:
            log.failure("pending writes failed during shutdown")
        # The pushes of what was just committed are queued for the end of the
        # turn; send them before the close frames.
        self.registry.flush()

    # -- starting and stopping --------------------------------------------------------

    def privilegedStartService(self) -> None:
        """Bind before twistd drops privileges (the listener child does it;
        endpoints for tcp, ssl, unix and systemd answer synchronously, so a
        port in use stops start-up with one line)."""
        try:
            super().privilegedStartService()
        except StartupError as e:
            if self.exit_on_failure:
                fail_startup(str(e))
            raise

    def startService(self) -> Deferred[None]:
        d = super().startService()
        d.addCallbacks(lambda _: self._announce(), self._start_failed)
        return d

    def _start_failed(self, failure: Failure) -> Failure | None:
        if not self.exit_on_failure:
            return failure
        _tell_operator(f"cannot start: {_one_line(failure.value)}")
        # twistd starts the tree before it runs the reactor, and drops the
        # Deferred: end the process from the reactor, with status 1.
        self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        if self.reactor.running:
            self.reactor.stop()
        else:
            self.reactor.callWhenRunning(self.reactor.stop)
        return None

    def stopService(self) -> Deferred[None]:
        d = super().stopService()
        return d.addCallback(lambda _: log.info("chatd stopped"))

    def _announce(self) -> None:
        for warning in config_warnings(self.config):
            log.warn("{warning}", warning=warning, event="config.warning")
        port = self.port
        if port is None:
            return
        address: Any = port.getHost()
        host = getattr(address, "host", None)
        http = "https" if self.config.listen.startswith("ssl:") or self.config.tls_cert else "http"
        ws = "wss" if http == "https" else "ws"
        where = f"{host}:{address.port}" if host is not None else str(address)
        if ":" in str(host):
            where = f"[{host}]:{address.port}"
        log.info(
            "chatd {version} listening on {http}://{where} (WebSocket {ws}://{where}/ws); "
            "storage {database}; fan-out {fanout}",
            version=__version__,
            http=http,
            ws=ws,
            where=where,
            database=self._safe_database(),
            fanout=f"redis {self.link.target.safe()} as node {self.link.node}"
            if self.cluster is not None
            else "in-process",
        )
        if self.config.secret_generated:
            log.info(
                "Get a token: {python} -m chatd token alice{extra}  — then connect to {ws}://{where}/ws?token=<token>",
                # The interpreter that has chatd (a bare `python` may lack jwt).
                python=sys.executable,
                extra=_data_dir_hint(self.config),
                ws=ws,
                where=where,
            )

    def _safe_database(self) -> str:
        """The database URL without a password."""
        url = self.config.database
        if "@" in url and "://" in url:
            scheme, rest = url.split("://", 1)
            credentials, host = rest.rsplit("@", 1)
            user = credentials.split(":", 1)[0]
            return f"{scheme}://{user}@{host}"
        return url


class _Listener(StreamServerEndpointService):
    """Twisted's endpoint service (it binds in ``privilegedStartService``
    and stops listening on stop), made to fail start-up synchronously with
    one line, and to remember its port for the start-up announcement."""

    _raiseSynchronously = True

    def __init__(self, endpoint: Any, factory: Any, description: str) -> None:
        super().__init__(endpoint, factory)
        self.description = description
        self.port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except Exception as e:
            raise StartupError(f"cannot listen on {self.description}: {_one_line(e)}") from e
        assert self._waitingForPort is not None
        self._waitingForPort.addCallback(self._listening)

    def _listening(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        return port

    def stopService(self) -> Deferred[None]:
        self.port = None
        return super().stopService()


LISTEN_BACKLOG = 511
"""Pending connections the kernel queues before chatd accepts them.
Twisted's default is 50: a burst of more new connections than that (a
reconnect storm, a busy minute) has the rest dropped and retried by the
clients a second later.  511 is what Node's servers use."""


def with_backlog(listen: str) -> str:
    """The ``listen`` description, with ``LISTEN_BACKLOG`` for the endpoint
    types that take one, unless it names its own (``backlog=N``).  A socket
    systemd passes has the backlog of its .socket unit (``Backlog=``)."""
    kind = listen.split(":", 1)[0]
    if kind not in ("tcp", "tcp6", "ssl", "unix") or "backlog=" in listen:
        return listen
    return f"{listen}:backlog={LISTEN_BACKLOG}"


def _data_dir_hint(config: Config) -> str:
    from chatd.config import default_data_dir

    return "" if config.data_dir == default_data_dir() else f" --data-dir {config.data_dir}"


def _bounded(check: Callable[[], Deferred[Any]], seconds: float, reactor: Any) -> Deferred[Any]:
    """One readiness check that fails after ``seconds`` without an answer,
    so that /readyz answers in time whatever hangs behind it (a late
    answer of the check is dropped)."""
    answer: Deferred[Any] = Deferred()

    def late() -> None:
        if not answer.called:
            answer.errback(Failure(TimeoutError(f"no answer within {seconds:g} s")))

    timer = reactor.callLater(seconds, late)

    def settle(result: Any) -> None:
        if timer.active():
            timer.cancel()
        if not answer.called:
            if isinstance(result, Failure):
                answer.errback(result)
            else:
                answer.callback(result)

    maybeDeferred(check).addBoth(settle)
    return answer


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def fail_startup(message: str) -> NoReturn:
    """One line on the real stderr, then a non-zero exit (before the
    reactor runs)."""
    _tell_operator(message)
    raise SystemExit(1)


def _tell_operator(message: str) -> None:
    """One line on the real stderr (twistd may have redirected sys.stderr
    into its log by now)."""
    stream = sys.__stderr__ or sys.stderr
    stream.write(f"chatd: {message}\n")
    stream.flush()
