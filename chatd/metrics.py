"""Prometheus metrics (``GET /metrics``), with the ``prometheus_client``
library.  Each server owns its own CollectorRegistry, so several servers in
one process (tests) do not collide.  Hooks are cheap on hot paths: counts
are added per event or per batch, never per recipient."""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

KNOWN_EVENT_LABEL_LIMIT = 64


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections = Gauge("chatd_connections", "Open WebSocket connections", registry=r)
        self.users = Gauge(
            "chatd_authenticated_users",
            "Users with at least one authenticated connection here",
            registry=r,
        )
        self.rooms = Gauge(
            "chatd_rooms_joined", "Rooms with at least one joined connection here", registry=r
        )
        self.events_in = Counter(
            "chatd_events_in", "Client requests received, by event type", ["type"], registry=r
        )
        self.errors = Counter(
            "chatd_errors", "Errors sent to clients, by code", ["code"], registry=r
        )
        self.pushes = Counter("chatd_pushes_out", "Events framed for local fan-out", registry=r)
        self.deliveries = Counter(
            "chatd_fanout_deliveries", "Frames handed to connections by fan-out", registry=r
        )
        self.store_latency = Histogram(
            "chatd_message_store_seconds",
            "Time to commit one group-commit batch of messages",
            registry=r,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.batch_size = Histogram(
            "chatd_message_batch_size",
            "Messages per group-commit batch",
            registry=r,
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
        )
        self.publish_latency = Histogram(
            "chatd_broker_publish_seconds",
            "Time for the broker to accept a publish",
            registry=r,
            buckets=(0.00001, 0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1),
        )
        self._known_events: set[str] = set()
        # The labelled child per event type (and per error code): the
        # label look-up was about 1 % of the reactor thread per request.
        self._events_in: dict[str, Any] = {}
        self._errors: dict[str, Any] = {}

    def bind_gauges(
        self, connections: Callable[[], int], users: Callable[[], int], rooms: Callable[[], int]
    ) -> None:
        self.connections.set_function(connections)
        self.users.set_function(users)
        self.rooms.set_function(rooms)

    def event_in(self, event_type: str, known: bool) -> None:
        # Unknown types share one label so clients cannot grow the series
        # (or this cache: only known types are keys).
        label = event_type if known else "unknown"
        child = self._events_in.get(label)
        if child is None:
            child = self._events_in[label] = self.events_in.labels(label)
        child.inc()

    def error(self, code: Any) -> None:
        label = str(code)
        child = self._errors.get(label)
        if child is None:
            child = self._errors[label] = self.errors.labels(label)
        child.inc()

    def delivered(self, events: int, deliveries: int) -> None:
        self.pushes.inc(events)
        self.deliveries.inc(deliveries)

    def bind_transports(self, transports: Callable[[], Iterable[str]]) -> None:
        """Open connections by what carries them (one name per open
        session), counted when /metrics is scraped."""
        self.registry.register(_Transports(transports))

    def bind_counts(self, counts: Callable[[], dict[str, float]]) -> None:
        """Values other objects keep (the broker, room ordering, the
        cluster), read when /metrics is scraped: ``redis_up`` is a gauge,
        every other name a counter."""
        self.registry.register(_Counts(counts))

    def render(self) -> bytes:
        return generate_latest(self.registry)


_HELP = {
    "redis_up": "1 while both Redis connections are up (0 while fan-out is local only)",
    "broker_publish_failures": "Publishes that reached this node's connections only (Redis unavailable)",
    "room_gap_reads": "Room messages read back from storage because their publish never arrived",
    "room_gap_skipped": "Room messages skipped in live delivery (left to chat:history)",
    "cluster_nodes_reaped": "Silent nodes this node removed from the cluster",
}


class _Transports:
    def __init__(self, transports: Callable[[], Iterable[str]]) -> None:
        self._transports = transports

    def collect(self) -> Any:
        family = GaugeMetricFamily(
            "chatd_connections_by_transport",
            "Open connections by transport (ws, socketio-polling, socketio-websocket)",
            labels=["transport"],
        )
        for name, count in sorted(collections.Counter(self._transports()).items()):
            family.add_metric([name], count)
        yield family


class _Counts:
    def __init__(self, counts: Callable[[], dict[str, float]]) -> None:
        self._counts = counts

    def collect(self) -> Any:
        for name, value in self._counts().items():
            family = GaugeMetricFamily if name == "redis_up" else CounterMetricFamily
            yield family("chatd_" + name, _HELP.get(name, name), value=value)
