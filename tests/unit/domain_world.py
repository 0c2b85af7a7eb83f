"""A domain without sockets for the service unit tests: a real SqlStore on
a temporary SQLite file, the in-process broker, a LocalRegistry without a
clock (so pushes are delivered at once), a fake wall clock, a fake presence
tracker and fake connections that record what they are sent."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.task import Clock

from chatd.broker.memory import InProcessBroker
from chatd.domain.chat import ChatService, Outcome
from chatd.domain.direct import DirectMessages
from chatd.domain.models import Identity, Limits, Published
from chatd.domain.notifications import Notifications
from chatd.domain.publishing import Publisher
from chatd.domain.registry import LocalRegistry
from chatd.storage import schema
from chatd.storage.engines import engine_for
from chatd.storage.store import SqlStore

T0 = 1_700_000_000_000
T0_ISO = "2023-11-14T22:13:20.000Z"
_ids = itertools.count(1)


class FakeWallClock:
    def __init__(self, ms: int = T0) -> None:
        self.ms = ms

    def now_ms(self) -> int:
        return self.ms


class FakePresence:
    """Counts connections like the real tracker, without grace or pushes."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def is_online(self, user_id: str) -> bool:
        return self.counts.get(user_id, 0) > 0

    def online_among(self, user_ids: list[str]) -> list[str]:
        return [u for u in user_ids if self.is_online(u)]

    def connections(self, user_id: str) -> int:
        return self.counts.get(user_id, 0)

    def opened(self, user_id: str) -> None:
        self.counts[user_id] = self.counts.get(user_id, 0) + 1

    def closed(self, user_id: str) -> None:
        self.counts[user_id] -= 1


class FakeConnection:
    """Records every event it is sent, decoded: ``(type, data)``."""

    def __init__(self, user_id: str, name: str | None = None) -> None:
        self.connection_id = f"c{next(_ids)}"
        self.identity: Identity | None = Identity(user_id, name)
        self.framer = framer
        self.sent: list[tuple[str, Any]] = []
        self.closed_with: tuple[int, str] | None = None

    def send_frame(self, frame: Any) -> None:
        event_type, data = frame
        self.sent.append((event_type, json.loads(data)))

    def send_event(self, event_type: str, data: dict[str, Any]) -> None:
        self.sent.append((event_type, data))

    def disconnect(self, code: int, reason: str) -> None:
        self.closed_with = (code, reason)

    def events(self, event_type: str) -> list[Any]:
        return [data for kind, data in self.sent if kind == event_type]


def framer(event: Published) -> tuple[str, bytes]:
    return (event.type, event.data)


@dataclass
class World:
    store: SqlStore
    registry: LocalRegistry
    presence: FakePresence
    wall: FakeWallClock
    clock: Clock
    publisher: Publisher
    notifications: Notifications
    direct: DirectMessages
    chat: ChatService
    limits: Limits
    publish_seconds: list[float] = field(default_factory=list)

    def connect(self, user_id: str, name: str | None = None) -> FakeConnection:
        conn = FakeConnection(user_id, name)
        self.registry.add_connection(conn)
        self.presence.opened(user_id)
        return conn

    def disconnect(self, conn: FakeConnection) -> None:
        self.registry.remove_connection(conn)
        assert conn.identity is not None
        self.presence.closed(conn.identity.user_id)

    async def join(self, conn: FakeConnection, room_id: str) -> dict[str, Any]:
        result = await self.chat.join(conn, room_id, None)
        if isinstance(result, Outcome):
            result.after_reply()
            return result.data
        return result


def build_world(path: str, limits: Limits | None = None, dm_policy: str = "anyone") -> World:
    engine = engine_for(f"sqlite:///{path}")
    schema.migrate(engine)
    store = SqlStore(engine)
    broker = InProcessBroker()
    registry = LocalRegistry(broker)
    presence = FakePresence()
    wall = FakeWallClock()
    clock = Clock()
    limits = limits or Limits()
    seconds: list[float] = []
    publisher = Publisher(broker, registry, clock, observe=seconds.append)
    notifications = Notifications(store, publisher, wall)
    direct = DirectMessages(store, publisher, presence, notifications, limits, wall, dm_policy)
    chat = ChatService(store, publisher, registry, clock, wall, limits, direct, online=presence)
    return World(
        store,
        registry,
        presence,
        wall,
        clock,
        publisher,
        notifications,
        direct,
        chat,
        limits,
        seconds,
    )
