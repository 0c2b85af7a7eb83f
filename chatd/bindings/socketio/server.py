"""The Socket.IO entry point as the composition root builds it: one engine,
its Autobahn factory and the ``/socket.io/`` resource, over the shared
``SessionHub`` (so counts, limits, metrics and the shutdown drain cover
Socket.IO sessions like ``/ws`` ones), and the local socket that lets
several processes on one host serve each other's polling clients
(``handoff.py``)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed

from chatd.bindings.socketio.binding import SocketIOConnection
from chatd.bindings.socketio.engine import EngineServer, EngineSettings, EngineSocket
from chatd.bindings.socketio.handoff import Handoff
from chatd.bindings.socketio.origins import OriginPolicy
from chatd.bindings.socketio.polling import PollingTransport
from chatd.bindings.socketio.resource import SocketIOResource
from chatd.bindings.socketio.websocket import EngineWebSocketFactory
from chatd.config import Config, default_runtime_dir
from chatd.session.hub import SessionHub
from chatd.session.session import CLOSE_GOING_AWAY


def engine_settings(config: Config) -> EngineSettings:
    """Engine.IO's timers from chatd's settings: its own ping interval,
    ping timeout and payload limit; the upgrade is bounded like a
    WebSocket opening handshake, a polling close like a closing one, and a
    client that never sends CONNECT like one that never authenticates."""
    return EngineSettings(
        ping_interval=config.socketio_ping_interval,
        ping_timeout=config.socketio_ping_timeout,
        max_payload=config.socketio_max_payload,
        upgrade_timeout=config.open_handshake_timeout,
        close_timeout=config.close_handshake_timeout,
        connect_timeout=config.auth_timeout,
    )


class SocketIOServer:
    """``resource`` goes on the site at ``/socket.io``; ``engine`` holds the
    Engine.IO sessions; ``handoff`` (with a ``reactor`` to listen with) is
    this process's local socket in ``runtime_dir``, started and stopped by
    the service tree around the connections."""

    def __init__(self, config: Config, hub: SessionHub, reactor: Any = None) -> None:
        settings = engine_settings(config)
        clock = hub.clock

        def handler(socket: EngineSocket) -> SocketIOConnection:
            return SocketIOConnection(socket, hub, settings.connect_timeout)

        def polling(socket: EngineSocket) -> PollingTransport:
            return PollingTransport(socket, clock, settings.close_timeout)

        self.engine = EngineServer(settings, clock, handler, polling)
        self.ws_factory = EngineWebSocketFactory(self.engine, config.close_handshake_timeout)
        self.handoff: Handoff | None = None
        if reactor is not None:
            directory = config.runtime_dir or default_runtime_dir(config.data_dir)
            self.handoff = Handoff(
                self.engine, reactor, directory, release_timeout=settings.close_timeout
            )
        self.resource = SocketIOResource(
            self.engine, self.ws_factory, OriginPolicy(config.allowed_origins), self.handoff
        )

    def start_handoff(self) -> None:
        """Listen on the local socket (before any connection is accepted)."""
        if self.handoff is not None:
            self.handoff.start(self.resource.render_handoff)

    def stop_handoff(self) -> Deferred[None]:
        """Stop listening on it, after the sessions drained: until then a
        draining session's clients, whose requests now reach the other
        processes only, still get their close packet through it."""
        return self.handoff.stop() if self.handoff is not None else succeed(None)

    def handoff_counts(self) -> dict[str, float]:
        """For /metrics: polling requests forwarded to other processes,
        answered for them, and forwarded to a process that was gone."""
        handoff = self.handoff
        if handoff is None:
            return {}
        return {
            "socketio_handoff_forwarded": handoff.forwarded,
            "socketio_handoff_answered": handoff.answered,
            "socketio_handoff_unreachable": handoff.unreachable,
        }

    def close_unconnected(self) -> None:
        """On shutdown: the hub closes every chatd session; this closes the
        Engine.IO sessions that never connected to ``/``."""
        for socket in list(self.engine.sockets.values()):
            handler = socket.handler
            if getattr(handler, "session", None) is None:
                socket.close(CLOSE_GOING_AWAY, "server shutting down")
