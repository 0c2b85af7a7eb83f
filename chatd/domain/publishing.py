"""Publishing events after a state change, shared by every domain service.

Every event for other connections is JSON-encoded once here and handed to
the broker; nothing is sent per recipient.  A broker failure is logged and
the change itself stands: clients recover what they missed with ``since``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatd.domain.interfaces import Broker
from chatd.domain.models import Published, encode_body
from chatd.domain.registry import LocalRegistry, room_channel, user_channel
from chatd.errors import ChatError, ErrorCode, StoreUnavailable

log = Logger()

PublishObserver = Callable[[float], None]
"""Called with the seconds a publish took to be accepted by the broker."""


encode = encode_body
"""The one JSON encoding of an event body (see ``models.encode_body``)."""


class _RandomBytes:
    """CSPRNG bytes fetched 4 KiB at a time: an id is made per message, and
    ``secrets.token_hex`` is a ``getrandom`` system call each time (3 % of
    the reactor thread in the latency benchmark).  The bytes are the
    same ``os.urandom`` output, used once each; a forked child starts
    with a fresh buffer, so two processes never share one."""

    SIZE = 4096

    def __init__(self) -> None:
        self._buffer = b""
        self._position = 0
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._buffer, self._position = b"", 0

    def hex(self, n: int) -> str:
        position = self._position
        if position + n > len(self._buffer):
            self._buffer, position = os.urandom(self.SIZE), 0
        self._position = position + n
        return self._buffer[position : position + n].hex()


_random = _RandomBytes()


def new_id(prefix: str) -> str:
    """``prefix`` and 80 random bits (20 hex digits), as ``secrets.token_hex(10)``."""
    return prefix + _random.hex(10)


def guard(d: Deferred[Any]) -> Deferred[Any]:
    """Turn a storage outage into the protocol's UNAVAILABLE."""

    def translate(failure: Failure) -> Failure:
        if failure.check(StoreUnavailable):
            raise ChatError(
                ErrorCode.UNAVAILABLE, "storage is unavailable; nothing was stored, try again"
            )
        return failure

    return d.addErrback(translate)


class Publisher:
    """The broker as the services use it.

    ``clock`` measures publish latency (a duration, so the reactor's clock,
    not the wall clock) for ``observe``, when one is given."""

    def __init__(
        self,
        broker: Broker,
        registry: LocalRegistry,
        clock: IReactorTime,
        observe: PublishObserver | None = None,
    ) -> None:
        self._broker = broker
        self._registry = registry
        self._clock = clock
        self._observe = observe

    def publish(self, channel: str, event: Published) -> None:
        """Publish after the state change is durable."""
        observe = self._observe
        if observe is None:
            d = self._broker.publish(channel, event)
        else:
            seconds = self._clock.seconds
            started = seconds()
            d = self._broker.publish(channel, event)
            d.addCallback(lambda _: observe(seconds() - started))
        d.addErrback(self._failed, channel, event.type)

    def publish_many(self, channels: list[str], event: Published) -> None:
        """One event on many channels, as one message between nodes."""
        if not channels:
            return
        if len(channels) == 1:
            self.publish(channels[0], event)
            return
        d = self._broker.publish_many(channels, event)
        d.addErrback(self._failed, f"{len(channels)} channels", event.type)

    def publish_local(self, channel: str, event: Published) -> None:
        """Deliver to this node's connections only (each node pushes what it
        computes for its own connections, such as viewer counts)."""
        self._registry.accept(channel, event)

    def to_room(self, room_id: str, event_type: str, data: dict[str, Any], **routing: Any) -> None:
        self.publish(room_channel(room_id), Published(event_type, encode(data), **routing))

    def to_user(self, user_id: str, event_type: str, data: dict[str, Any], **routing: Any) -> None:
        self.publish(user_channel(user_id), Published(event_type, encode(data), **routing))

    def ready(self, channel: str) -> Deferred[None]:
        """Fires once events published on the channel reach this node."""
        return self._broker.ready(channel)

    @staticmethod
    def _failed(failure: Failure, channel: str, event_type: str) -> None:
        log.failure(
            "publishing {type} on {channel} failed",
            failure,
            event="broker.error",
            type=event_type,
            channel=channel,
        )
