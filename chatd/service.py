"""The running server: builds the object graph from a ``Config`` and owns
start-up and graceful shutdown.

Start-up fails loudly: migrations run before the reactor starts (a database
that cannot be reached stops twistd with one line), and the listening port
is bound in ``privilegedStartService`` so a port in use does the same.
Shutdown drains: stop accepting, let queued message writes commit and be
acknowledged, close every connection with 1001, then close storage.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatd import __version__
from chatd.auth import TokenVerifier, mint_token
from chatd.bindings.websocket import ChatdWebSocketFactory, frame_event
from chatd.broker.cluster import Cluster, ClusterPresence, ClusterViewers
from chatd.broker.memory import InProcessBroker
from chatd.broker.target import RedisTarget
from chatd.config import Config
from chatd.domain.chat import ChatService, Limits
from chatd.domain.live import LiveService, ViewerCounter
from chatd.domain.ordering import RoomOrder
from chatd.domain.registry import LocalRegistry
from chatd.domain.social import Presence, SocialService
from chatd.metrics import Metrics
from chatd.protocol.dispatch import Dispatcher, chat_routes, live_routes, social_routes
from chatd.session.hub import SessionHub
from chatd.session.lifecycle import Sessions
from chatd.storage.engines import engine_for
from chatd.storage.schema import migrate
from chatd.storage.store import SqlStore
from chatd.web.api import HttpApi
from chatd.web.endpoints import BackendApi, NativeApi
from chatd.web.site import MetricsPage, build_site

log = Logger()


class StartupError(Exception):
    """chatd cannot start; the message is the one line the operator sees."""


class ChatdService(Service):
    name = "chatd"

    def __init__(self, config: Config, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.reactor = reactor
        self.engine = engine_for(config.database)
        self.port: IListeningPort | None = None
        self._built = False

    def setServiceParent(self, parent: Any) -> Any:
        """Under twistd the parent is the application, whose log observer
        twistd installs after building the service: with ``log_format =
        "json"`` that is chatd's JSON-lines observer."""
        result = super().setServiceParent(parent)
        if self.config.log_format == "json" and hasattr(parent, "setComponent"):
            from twisted.logger import ILogObserver

            from chatd.logs import JsonLinesObserver

            parent.setComponent(ILogObserver, JsonLinesObserver())
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
        if self._built:
            return
        config = self.config
        self.store = SqlStore(self.engine)
        viewers = self._build_fanout()
        self.verifier = TokenVerifier.from_config(config)
        self.registry = LocalRegistry(self.broker, frame_event, self.reactor)
        self.chat = ChatService(
            self.store,
            self.broker,
            self.registry,
            self.reactor,
            Limits(max_content_length=config.max_content_length),
            online=self.presence,
        )
        self.registry.order = RoomOrder(self.reactor, self.registry.accept, self.chat.read_back)
        self.social = SocialService(self.chat, self.registry, self.presence, config.dm_policy)
        self.live = LiveService(
            self.chat,
            self.registry,
            self.reactor,
            viewers=viewers,
            count_interval=config.viewer_count_interval,
            reaction_rate=config.reaction_rate,
        )
        self.sessions = Sessions(self.registry, self.chat, self.social, self.live)
        self.metrics = Metrics()
        self.dispatcher = Dispatcher(
            {**chat_routes(self.chat), **social_routes(self.social), **live_routes(self.live)},
            self.metrics,
        )
        self.hub = SessionHub(
            config, self.reactor, self.verifier, self.sessions, self.dispatcher, self.metrics
        )
        self.factory = ChatdWebSocketFactory(config, self.hub)
        self.backend_api = BackendApi(self.registry, self.social)
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
        self.site = build_site(
            self.factory,
            self.api,
            checks,
            MetricsPage(
                self.metrics, self.api.is_admin_request if config.metrics_require_auth else None
            ),
            demo_mint=self._demo_mint() if config.secret_generated else None,
        )
        self._built = True

    def _build_fanout(self) -> ViewerCounter | None:
        """In-process broker and local presence, or Redis for a cluster."""
        config = self.config
        self.cluster: Cluster | None = None
        self.presence: Presence | ClusterPresence
        if not config.redis:
            self.broker: Any = InProcessBroker()
            self.presence = Presence(self.reactor, config.presence_grace)
            return None
        # txredisapi installs the default reactor on import: only import it
        # once a reactor runs (twistd and the tests have installed theirs).
        from chatd.broker.redis import RedisBroker, RedisLink

        target = RedisTarget.parse(config.redis)
        link = RedisLink(target, config.redis_prefix, self.reactor, config.redis_ca)
        self.broker = RedisBroker(link, self.reactor)
        self.cluster = Cluster(link, self.reactor)
        self.cluster.connection_count = lambda: len(self.factory.connections)
        self.presence = ClusterPresence(self.cluster, self.reactor, config.presence_grace)
        return ClusterViewers(self.cluster)

    def _demo_mint(self) -> Callable[[str], str]:
        config = self.config

        def mint(user_id: str) -> str:
            return mint_token(config, user_id, ttl=3600)

        return mint

    def _wire_metrics(self) -> None:
        metrics = self.metrics
        metrics.bind_gauges(
            lambda: len(self.factory.connections),
            lambda: len(self.registry.online_users()),
            self.registry.joined_room_count,
        )
        self.registry.on_delivered = metrics.delivered
        metrics.bind_counts(self._counts)
        self.store.writer.observe_batch = metrics.batch_size.observe
        self.store.writer.observe_commit = metrics.store_latency.observe
        self.chat.observe_publish = metrics.publish_latency.observe

    def _counts(self) -> dict[str, float]:
        order = self.registry.order
        counts: dict[str, float] = {
            "room_gap_reads": order.filled if order else 0,
            "room_gap_skipped": order.skipped if order else 0,
        }
        if self.cluster is not None:
            counts["redis_up"] = 1 if self.broker.link.is_up() else 0
            counts["broker_publish_failures"] = self.broker.publish_failures
            counts["cluster_nodes_reaped"] = self.cluster.reaped_nodes
        return counts

    # -- listening ----------------------------------------------------------------

    def listen(self) -> Deferred[IListeningPort]:
        self.build()
        try:
            endpoint = endpoints.serverFromString(self.reactor, self.config.listen)
        except IndexError as e:
            if self.config.listen.startswith("systemd:"):
                raise StartupError(
                    f"listen {self.config.listen}: no such socket passed by systemd "
                    "(LISTEN_FDS/LISTEN_PID; start chatd through its .socket unit)"
                ) from e
            raise StartupError(f"invalid listen ({self.config.listen}): {_one_line(e)}") from e
        except Exception as e:
            raise StartupError(f"invalid listen ({self.config.listen}): {_one_line(e)}") from e
        factory: Any = self.site
        if self.config.tls_cert and self.config.tls_key:
            from twisted.protocols.tls import TLSMemoryBIOFactory

            from chatd.tls import server_options

            factory = TLSMemoryBIOFactory(
                server_options(self.config.tls_cert, self.config.tls_key), False, self.site
            )
        d = endpoint.listen(factory)

        def listening(port: IListeningPort) -> IListeningPort:
            self.port = port
            return port

        def failed(failure: Failure) -> None:
            raise StartupError(f"cannot listen on {self.config.listen}: {_one_line(failure.value)}")

        return d.addCallbacks(listening, failed)

    def privilegedStartService(self) -> None:
        """Bind before twistd drops privileges; endpoints for tcp, ssl, unix
        and systemd answer synchronously, so a failure stops start-up."""
        super().privilegedStartService()
        outcome: list[Any] = []
        try:
            self.listen().addBoth(outcome.append)
        except StartupError as e:
            fail_startup(str(e))
        if outcome and isinstance(outcome[0], Failure):
            fail_startup(outcome[0].getErrorMessage())

    def startService(self) -> None:
        super().startService()
        self.factory.startFactory()
        self.broker.start()
        if self.cluster is not None:
            self.cluster.start()
        if self.port is not None:
            self._announce()

    def _announce(self) -> None:
        assert self.port is not None
        address = self.port.getHost()
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
            fanout=f"redis {self.broker.link.target.safe()} as node {self.broker.link.node}"
            if self.cluster is not None
            else "in-process",
        )
        if self.config.secret_generated:
            log.info(
                "Get a token: python -m chatd token alice{extra}  — then connect to {ws}://{where}/ws?token=<token>",
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

    # -- stopping -----------------------------------------------------------------

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if not self._built:
            return Deferred.fromCoroutine(_nothing())
        return self._drain()

    @inlineCallbacks
    def _drain(self):
        if self.port is not None:
            yield self.port.stopListening()
            self.port = None
        try:
            yield self.store.drain()
        except Exception:
            log.failure("pending writes failed during shutdown")
        # The pushes of what was just committed are queued for the end of the
        # turn; send them before the close frames.
        self.registry.flush()
        yield self.factory.shutdown(self.config.shutdown_timeout)
        self.chat.typing.stop_all()
        self.presence.stop()
        if self.cluster is not None:
            # Users connected nowhere else go offline for the other nodes now
            # (bounded: a node that cannot finish is reaped by the others).
            leaving = self.cluster.stop()
            leaving.addTimeout(self.config.shutdown_timeout, self.reactor)
            try:
                yield leaving
            except Exception:
                log.warn(
                    "leaving the cluster did not finish in time; the other nodes will reap this one"
                )
        self.live.stop()
        if self.registry.order is not None:
            self.registry.order.stop()
        self.factory.stopFactory()
        yield self.broker.stop()
        yield self.store.close()
        log.info("chatd stopped")


async def _nothing() -> None:
    return None


def _data_dir_hint(config: Config) -> str:
    from chatd.config import default_data_dir

    return "" if config.data_dir == default_data_dir() else f" --data-dir {config.data_dir}"


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def fail_startup(message: str) -> None:
    """One line on the real stderr (twistd may have redirected sys.stderr
    into its log by now), then a non-zero exit."""
    stream = sys.__stderr__ or sys.stderr
    stream.write(f"chatd: {message}\n")
    stream.flush()
    raise SystemExit(1)
