"""The Redis broker: several chatd processes behave as one server.

Each node keeps two connections to Redis (txredisapi): one in pub/sub mode
that subscribes to exactly the channels this node has local listeners for
(rooms, users, streams, the broadcast channel) plus the cluster control
channel, and one for commands (PUBLISH, the presence and viewer scripts,
heartbeats).

An event is published once, as ``<json header>\\n<event body>``; the body is
the JSON the publisher encoded once, so a receiving node frames it once
and hands the same bytes to every local listener.  The publishing node
delivers to its own listeners directly (no round trip, and it keeps
working while Redis is down) and drops its own events when Redis echoes
them back: every node delivers each event exactly once.

When Redis goes away both connections reconnect by themselves (txredisapi
backs off up to 10 s); on return the subscriber subscribes again to every
channel still wanted and the cluster state is re-registered (both hear
``subscriber_connected``, in the order they were built: broker first).  Meanwhile publishing is local only; room messages
missed by other nodes are read back from storage by ``RoomOrder`` when the
next message of the room arrives, and clients recover with ``since``.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from typing import Any, Protocol

import txredisapi
from twisted.internet.defer import Deferred, fail, gatherResults, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatd.broker.target import RedisTarget
from chatd.domain.interfaces import Receiver
from chatd.domain.models import Published
from chatd.errors import BrokerUnavailable

log = Logger()

COMMAND_TIMEOUT = 5.0
READY_TIMEOUT = 2.0


def _short(message: str) -> str:
    text = " ".join(message.split())
    return text if len(text) <= 200 else text[:197] + "..."


def new_node_id() -> str:
    """Unique per process start: a restarted node is a new node, and its
    previous incarnation is reaped like any dead node."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def encode_event(node: str, event: Published, channels: list[str] | None = None) -> bytes:
    fields: list[Any] = [node, event.type, event.skip_user, event.skip_connection, event.seq]
    if channels is not None:
        fields.append(channels)
    return json.dumps(fields, separators=(",", ":")).encode() + b"\n" + event.data


def decode_event(payload: bytes) -> tuple[str, Published]:
    node, event, _ = decode_event_for(payload)
    return node, event


def decode_event_for(payload: bytes) -> tuple[str, Published, list[str] | None]:
    """(publishing node, event, the channels of a multi-channel publish)."""
    header, _, data = payload.partition(b"\n")
    fields = json.loads(header)
    if not isinstance(fields, list) or len(fields) not in (5, 6):
        raise ValueError("not a chatd broker header")
    node, event_type, skip_user, skip_connection, seq = fields[:5]
    channels = fields[5] if len(fields) == 6 else None
    if not (
        isinstance(node, str)
        and isinstance(event_type, str)
        and _optional(skip_user, str)
        and _optional(skip_connection, str)
        and _optional(seq, int)
    ):
        raise ValueError("bad field types in a chatd broker header")
    if channels is not None and not (
        isinstance(channels, list) and all(isinstance(c, str) for c in channels)
    ):
        raise ValueError("bad channel list in a chatd broker header")
    return node, Published(event_type, data, skip_user, skip_connection, seq), channels


def _optional(value: Any, kind: type) -> bool:
    return value is None or (isinstance(value, kind) and not isinstance(value, bool))


class _Subscriber(txredisapi.SubscriberProtocol):
    def messageReceived(self, pattern: Any, channel: bytes, message: bytes) -> None:
        self.factory.link._message(channel, message)

    def connectionLost(self, why: Failure) -> None:
        self.factory.link.connection_failed(why)
        super().connectionLost(why)


class _Commands(txredisapi.RedisProtocol):
    def connectionLost(self, why: Failure) -> None:
        self.factory.link.connection_failed(why)
        super().connectionLost(why)


class _Watched:
    """A client endpoint that tells the link why connecting failed (refused,
    timed out), so /readyz can say it."""

    def __init__(self, endpoint: Any, link: RedisLink) -> None:
        self._endpoint = endpoint
        self._link = link

    def connect(self, factory: Any) -> Deferred[Any]:
        d = self._endpoint.connect(factory)

        def failed(failure: Failure) -> Failure:
            self._link.connection_failed(failure)
            return failure

        return d.addErrback(failed)


class _SubscriberFactory(txredisapi.SubscriberFactory):
    protocol = _Subscriber

    def __init__(self, link: RedisLink) -> None:
        super().__init__(isLazy=True)
        self.link = link

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)
        if conn in self.pool:
            self.link._subscriber_up(conn)

    def delConnection(self, conn: Any) -> None:
        super().delConnection(conn)
        self.link._subscriber_down(conn)


class _CommandFactory(txredisapi.RedisFactory):
    protocol = _Commands

    def __init__(self, link: RedisLink, target: RedisTarget) -> None:
        super().__init__(
            target.host,
            target.db,
            1,
            isLazy=True,
            charset=None,
            password=target.password,
            replyTimeout=COMMAND_TIMEOUT,
            convertNumbers=False,
            username=target.username,
        )
        self.link = link

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)
        if conn in self.pool:
            self.link._commands_up()


class LinkListener(Protocol):
    """What the link reports to the broker and to the cluster membership,
    each of which subscribes once, when it is built (``add_listener``)."""

    def message_received(self, channel: bytes, payload: bytes) -> None:
        """A message on any channel but the control channel."""

    def control_received(self, payload: bytes) -> None:
        """A message on the cluster control channel."""

    def subscriber_connected(self) -> None:
        """The subscriber (re)connected, after the broker re-subscribed:
        control messages may have been missed meanwhile."""

    def link_up(self) -> None:
        """Both connections are up (the first time, or after an outage)."""

    def link_down(self, why: str) -> None:
        """A connection failed or was lost (``why`` is one line)."""


class RedisLink:
    """The node's two Redis connections and its view of their health."""

    def __init__(
        self,
        target: RedisTarget,
        prefix: str,
        reactor: Any,
        ca_file: str | None = None,
        node_id: str | None = None,
    ) -> None:
        self.target = target
        self.prefix = prefix
        self.reactor = reactor
        self.ca_file = ca_file
        self.node = node_id or new_node_id()
        self.control_channel = (prefix + "cluster").encode()
        self.many_channel = (prefix + "many").encode()
        self._commands = _CommandFactory(self, target)
        self._subscriptions = _SubscriberFactory(self)
        self._subscriptions.charset = None
        self._subscriptions.convertNumbers = False
        self._subscriptions.password = target.password
        self._subscriptions.username = target.username
        self._subscriber: Any = None
        self._listeners: list[LinkListener] = []
        self._was_up = False
        self._stopping = False
        self._down_logged = False
        self.last_error = "not connected yet"

    def add_listener(self, listener: LinkListener) -> None:
        """Hear the link's messages and its ups and downs, after the
        listeners added before."""
        self._listeners.append(listener)

    # -- connections --------------------------------------------------------------

    def start(self) -> None:
        for factory in (self._commands, self._subscriptions):
            factory.startConnecting(
                _Watched(self.target.endpoint(self.reactor, self.ca_file), self)
            )

    def connection_failed(self, why: Failure) -> None:
        """Remember why (for /readyz and the log), unless it was a clean close."""
        from twisted.internet.error import ConnectionDone

        if not why.check(ConnectionDone) or not self.last_error:
            message = (
                why.getErrorMessage() if not why.check(ConnectionDone) else "connection closed"
            )
            self._went_down(_short(message))

    def stop(self) -> Deferred[Any]:
        self._stopping = True
        d1 = self._commands.disconnect()
        d2 = self._subscriptions.disconnect()
        return gatherResults([d1, d2], consumeErrors=True).addErrback(lambda _: None)

    @property
    def subscriber(self) -> Any:
        return self._subscriber

    def _subscriber_up(self, conn: Any) -> None:
        self._subscriber = conn
        conn.subscribe([self.control_channel, self.many_channel]).addErrback(
            self._log_failure, "subscribing to the control channels"
        )
        for listener in self._listeners:
            listener.subscriber_connected()
        self._maybe_up()

    def _subscriber_down(self, conn: Any) -> None:
        if self._subscriber is conn:
            self._subscriber = None
            self._went_down(self.last_error or "the subscriber connection was lost")

    def _commands_up(self) -> None:
        self._maybe_up()

    def _maybe_up(self) -> None:
        if not self.is_up():
            return
        if self._down_logged or not self._was_up:
            log.info(
                "redis {target} connected (node {node})",
                event="redis.up",
                target=self.target.safe(),
                node=self.node,
            )
        self._was_up = True
        self._down_logged = False
        self.last_error = ""
        for listener in self._listeners:
            listener.link_up()

    def _went_down(self, why: str) -> None:
        self.last_error = why
        for listener in self._listeners:
            listener.link_down(why)
        if not self._down_logged and not self._stopping:
            self._down_logged = True
            log.warn(
                "redis {target} unavailable ({error}); serving local connections only, reconnecting",
                event="redis.down",
                target=self.target.safe(),
                error=why,
            )

    def is_up(self) -> bool:
        return self._subscriber is not None and self._command_connection() is not None

    def _command_connection(self) -> Any:
        for conn in self._commands.pool:
            if conn.connected:
                return conn
        return None

    # -- commands --------------------------------------------------------------------

    def command(self, name: str, *args: Any) -> Deferred[Any]:
        conn = self._command_connection()
        if conn is None:
            return fail(
                BrokerUnavailable(f"redis unavailable: {self.last_error or 'not connected'}")
            )
        try:
            d = getattr(conn, name)(*args)
        except Exception as e:
            return fail(BrokerUnavailable(f"redis unavailable: {e}"))
        return d.addErrback(self._command_failed)

    def publish(self, channel: bytes, payload: bytes) -> Deferred[Any]:
        return self.command("publish", channel, payload)

    def eval(self, script: str, args: list[Any]) -> Deferred[Any]:
        return self.command("eval", script, [], args)

    def ping(self) -> Deferred[None]:
        if self._subscriber is None:
            return fail(
                BrokerUnavailable(f"redis unavailable: {self.last_error or 'not connected'}")
            )
        return self.command("ping").addCallback(lambda _: None)

    def _command_failed(self, failure: Failure) -> Failure:
        if failure.check(BrokerUnavailable):
            return failure
        if failure.check(txredisapi.ResponseError):
            return failure
        self._went_down(failure.getErrorMessage())
        return Failure(BrokerUnavailable(f"redis unavailable: {failure.getErrorMessage()}"))

    @staticmethod
    def _log_failure(failure: Failure, what: str) -> None:
        log.warn("redis: {what} failed: {error}", what=what, error=failure.getErrorMessage())

    # -- incoming -----------------------------------------------------------------------

    def _message(self, channel: bytes, payload: bytes) -> None:
        if channel == self.control_channel:
            for listener in self._listeners:
                listener.control_received(payload)
        else:
            for listener in self._listeners:
                listener.message_received(channel, payload)


class RedisBroker:
    """The ``Broker`` over Redis pub/sub (see the module docstring)."""

    def __init__(self, link: RedisLink, clock: IReactorTime) -> None:
        self.link = link
        self._clock = clock
        self._channel_prefix = (link.prefix + "ch:").encode()
        self._receiver: Receiver | None = None
        self._subscriptions: dict[str, int] = {}
        self._sent: set[str] = set()
        self._active: set[str] = set()
        self._dirty: set[str] = set()
        self._sync_call: IDelayedCall | None = None
        self._ready_waiters: dict[str, list[Deferred[None]]] = {}
        self.published = 0
        self.publish_failures = 0
        link.add_listener(self)

    def set_receiver(self, receiver: Receiver) -> None:
        self._receiver = receiver

    # -- subscriptions --------------------------------------------------------------

    def subscribe(self, channel: str) -> None:
        count = self._subscriptions.get(channel, 0)
        self._subscriptions[channel] = count + 1
        if count == 0:
            self._mark(channel)

    def unsubscribe(self, channel: str) -> None:
        count = self._subscriptions.get(channel, 0) - 1
        if count > 0:
            self._subscriptions[channel] = count
            return
        self._subscriptions.pop(channel, None)
        self._mark(channel)

    def is_subscribed(self, channel: str) -> bool:
        return channel in self._subscriptions

    def _mark(self, channel: str) -> None:
        """Subscription changes are sent once per reactor turn, so a burst of
        connections does not turn into a SUBSCRIBE/UNSUBSCRIBE storm."""
        self._dirty.add(channel)
        if self._sync_call is None:
            self._sync_call = self._clock.callLater(0, self._sync)

    def _sync(self) -> None:
        self._sync_call = None
        dirty, self._dirty = self._dirty, set()
        conn = self.link.subscriber
        if conn is None:
            return  # all of it is sent again on reconnect
        for channel in dirty:
            wanted = channel in self._subscriptions
            if wanted and channel not in self._sent:
                self._sent.add(channel)
                # maybeDeferred: a connection that just went away raises at once
                d = maybeDeferred(conn.subscribe, [self._channel_prefix + channel.encode()])
                d.addCallbacks(
                    self._subscribed,
                    self._subscribe_failed,
                    callbackArgs=(channel, conn),
                    errbackArgs=(channel,),
                )
            elif not wanted and channel in self._sent:
                self._sent.discard(channel)
                self._active.discard(channel)
                maybeDeferred(
                    conn.unsubscribe, [self._channel_prefix + channel.encode()]
                ).addErrback(lambda _: None)

    def _subscribed(self, _: Any, channel: str, conn: Any) -> None:
        if conn is self.link.subscriber and channel in self._sent:
            self._active.add(channel)
        self._wake(channel)

    def _subscribe_failed(self, failure: Failure, channel: str) -> None:
        self._sent.discard(channel)
        self._wake(channel)

    # -- LinkListener ------------------------------------------------------------------

    def subscriber_connected(self) -> None:
        """A (new) subscriber connection: everything wanted is sent again."""
        self._sent.clear()
        self._active.clear()
        self._dirty.update(self._subscriptions)
        self._sync()

    def ready(self, channel: str) -> Deferred[None]:
        """Fires once Redis confirmed this node's subscription to the channel,
        at once when Redis is down (there is nothing to wait for), and after
        ``READY_TIMEOUT`` at the latest."""
        if (
            channel in self._active
            or self.link.subscriber is None
            or channel not in self._subscriptions
        ):
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._ready_waiters.setdefault(channel, []).append(waiter)
        timeout = self._clock.callLater(READY_TIMEOUT, self._wake, channel)

        def settled(result: None) -> None:
            if timeout.active():
                timeout.cancel()
            return result

        return waiter.addBoth(settled)

    def _wake(self, channel: str) -> None:
        for waiter in self._ready_waiters.pop(channel, []):
            if not waiter.called:
                waiter.callback(None)

    # -- publishing and receiving -----------------------------------------------------

    def publish(self, channel: str, event: Published) -> Deferred[None]:
        """Local listeners at once; other nodes through one PUBLISH."""
        if self._receiver is not None and channel in self._subscriptions:
            self._receiver(channel, event)
        self.published += 1
        d = self.link.publish(
            self._channel_prefix + channel.encode(), encode_event(self.link.node, event)
        )
        return d.addCallbacks(lambda _: None, self._publish_failed)

    def publish_many(self, channels: list[str], event: Published) -> Deferred[None]:
        """One event to many channels (a presence change to every online
        member of a user's audience, a backend push to a list of users):
        ONE publish on the shared multi-channel channel, whose header lists
        the channels; each node delivers to those it listens on."""
        if self._receiver is not None:
            for channel in channels:
                if channel in self._subscriptions:
                    self._receiver(channel, event)
        self.published += 1
        d = self.link.publish(self.link.many_channel, encode_event(self.link.node, event, channels))
        return d.addCallbacks(lambda _: None, self._publish_failed)

    def _publish_failed(self, failure: Failure) -> None:
        """Logged once per outage by the link; local delivery happened."""
        self.publish_failures += 1
        if not failure.check(BrokerUnavailable):
            log.failure("redis publish failed", failure)

    def control_received(self, payload: bytes) -> None:
        """The cluster membership's business."""

    def link_up(self) -> None:
        """Nothing to do: the subscriber's (re)connection re-subscribes."""

    def link_down(self, why: str) -> None:
        """Nothing to do: publishing stays local until the link is back."""

    def message_received(self, channel: bytes, payload: bytes) -> None:
        many = channel == self.link.many_channel
        if self._receiver is None or not (many or channel.startswith(self._channel_prefix)):
            return
        try:
            node, event, channels = decode_event_for(payload)
        except (ValueError, TypeError):
            log.warn("dropped a malformed broker message on {channel}", channel=channel)
            return
        if node == self.link.node:
            return  # delivered locally when published
        if not many:
            channels = [channel[len(self._channel_prefix) :].decode()]
        for name in channels or ():
            if name in self._subscriptions:
                self._receiver(name, event)

    def ping(self) -> Deferred[None]:
        return self.link.ping()

    def start(self) -> Deferred[None]:
        self.link.start()
        return succeed(None)

    def stop(self) -> Deferred[None]:
        if self._sync_call is not None and self._sync_call.active():
            self._sync_call.cancel()
        for channel in list(self._ready_waiters):
            self._wake(channel)
        return self.link.stop().addCallback(lambda _: None)
