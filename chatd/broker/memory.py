"""The in-process broker of a single chatd process.

Publishing hands the event straight to this node's receiver when the node
subscribes to the channel: there is no other node to reach.  It keeps the
same contract as the Redis broker (subscribe per channel, one receiver call
per published event), so handlers never know which one runs."""

from __future__ import annotations

from collections import Counter

from twisted.internet.defer import Deferred, succeed

from chatd.domain.interfaces import Receiver
from chatd.domain.models import Published


class InProcessBroker:
    def __init__(self) -> None:
        self._receiver: Receiver | None = None
        self._subscriptions: Counter[str] = Counter()

    def set_receiver(self, receiver: Receiver) -> None:
        self._receiver = receiver

    def subscribe(self, channel: str) -> None:
        self._subscriptions[channel] += 1

    def unsubscribe(self, channel: str) -> None:
        remaining = self._subscriptions[channel] - 1
        if remaining > 0:
            self._subscriptions[channel] = remaining
        else:
            del self._subscriptions[channel]

    def is_subscribed(self, channel: str) -> bool:
        return channel in self._subscriptions

    def publish(self, channel: str, event: Published) -> Deferred[None]:
        if self._receiver is not None and channel in self._subscriptions:
            self._receiver(channel, event)
        return succeed(None)

    def publish_many(self, channels: list[str], event: Published) -> Deferred[None]:
        if self._receiver is not None:
            for channel in channels:
                if channel in self._subscriptions:
                    self._receiver(channel, event)
        return succeed(None)

    def ready(self, channel: str) -> Deferred[None]:
        return succeed(None)

    def start(self) -> Deferred[None]:
        return succeed(None)

    def stop(self) -> Deferred[None]:
        return succeed(None)

    def ping(self) -> Deferred[None]:
        return succeed(None)
