"""Which local connections listen on which channels, and the local half of
fan-out: one event from the broker becomes one prepared frame, handed to
every listening connection.

Delivery is batched per reactor turn: events published during one turn are
framed once each and flushed together at the end of it, so a recipient of a
burst gets one write with all its frames (Twisted would coalesce the bytes
anyway; this saves the Python call per frame per recipient).

Channels are ``room:<id>`` (connections that joined the room) and
``user:<id>`` (every authenticated connection of the user).  The registry
subscribes this node to a channel when its first local listener arrives
and unsubscribes when the last one goes, so the broker only brings what
some local connection wants.

A connection that is joining a room listens on the room before the join
snapshot is read (so nothing falls between the snapshot and the live
stream), but its live events wait in a small buffer until the join reply
has been sent; then those the snapshot already holds (by ``seq``) are
dropped and the rest follow the reply in order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from chatd.domain.interfaces import Broker, Caller, Connection, Framer
from chatd.domain.models import Published
from chatd.domain.ordering import FetchMissing, RoomOrder
from chatd.domain.turn import EndOfTurn

log = Logger()

FrameCache = dict[Framer, bytes]
"""One event's frames, one per binding that has a recipient of it."""
Control = Callable[[str, Published], None]


BROADCAST_CHANNEL = "all"
"""Every authenticated connection listens here (backend broadcasts)."""


def room_channel(room_id: str) -> str:
    return "room:" + room_id


def user_channel(user_id: str) -> str:
    return "user:" + user_id


class _Joining:
    """Live events held back while a connection's join is in progress
    (framed when they are released, in the connection's own binding)."""

    __slots__ = ("events",)

    def __init__(self) -> None:
        self.events: list[tuple[Published, FrameCache]] = []


Delivered = Callable[[int, int], None]
"""Told after each flush: how many events, and how many writes they took."""


class LocalRegistry:
    """``fetch_missing`` (reading room messages back from storage) turns on
    per-room ordering across nodes (``RoomOrder``, which this registry owns
    and feeds); without it, events are delivered as they arrive (the unit
    tests of the synchronous path)."""

    def __init__(
        self,
        broker: Broker,
        clock: IReactorTime | None = None,
        fetch_missing: FetchMissing | None = None,
        on_delivered: Delivered | None = None,
        turn: EndOfTurn | None = None,
    ) -> None:
        """``turn`` is where fan-out meets the sessions' held-back replies
        (shared with the session hub); one of its own with only a clock."""
        self._broker = broker
        self._clock = clock
        self._queue: dict[str, list[tuple[Published, FrameCache]]] = {}
        if turn is None and clock is not None:
            turn = EndOfTurn(clock)
        self._turn = turn
        if turn is not None:
            turn.on_fanout(self.flush, self.queued_writes)
        self.on_delivered = on_delivered
        self._listeners: dict[str, dict[Connection, None]] = {}
        # The same listeners grouped by their binding's framer, so that an
        # event is framed once per binding and each group gets its bytes.
        self._groups: dict[str, dict[Framer, dict[Connection, None]]] = {}
        self._joining: dict[str, dict[Connection, _Joining]] = {}
        self._channels_of: dict[Connection, set[str]] = {}
        self._users: dict[str, dict[Connection, None]] = {}
        self._retained: dict[str, int] = {}
        self._cached_event: Published | None = None
        self._cache: FrameCache = {}
        # Control events (disconnect a user, leave a room) travel the same
        # channels as pushes but are acted on, never framed.
        self._controls: dict[str, Control] = {}
        self.order: RoomOrder | None = None
        if fetch_missing is not None and clock is not None:
            self.order = RoomOrder(clock, self.accept, fetch_missing)
        # The one subscription to the broker's events: everything this node
        # receives arrives here.
        broker.set_receiver(self.receive)

    def on_control(self, event_type: str, handler: Control) -> None:
        self._controls[event_type] = handler

    # -- who is here ---------------------------------------------------------

    def add_connection(self, conn: Connection) -> None:
        """Register an authenticated connection on its user's channel."""
        assert conn.identity is not None
        user_id = conn.identity.user_id
        self._users.setdefault(user_id, {})[conn] = None
        self._channels_of.setdefault(conn, set())
        self._listen(user_channel(user_id), conn)
        self._listen(BROADCAST_CHANNEL, conn)

    def remove_connection(self, conn: Connection) -> list[str]:
        """Forget a connection everywhere; return the room ids it had joined."""
        channels = self._channels_of.pop(conn, set())
        rooms = []
        for channel in channels:
            self._unlisten(channel, conn)
            if channel.startswith("room:"):
                rooms.append(channel[5:])
        for channel, joining in list(self._joining.items()):
            if joining.pop(conn, None) is not None:
                if not joining:
                    del self._joining[channel]
                self._release(channel)
        if conn.identity is not None:
            conns = self._users.get(conn.identity.user_id)
            if conns is not None:
                conns.pop(conn, None)
                if not conns:
                    del self._users[conn.identity.user_id]
        return rooms

    def connections_of(self, user_id: str) -> list[Connection]:
        return list(self._users.get(user_id, ()))

    def online_users(self) -> list[str]:
        return list(self._users)

    def online_among(self, user_ids: list[str]) -> list[str]:
        return [u for u in user_ids if u in self._users]

    def connection_count(self) -> int:
        return len(self._channels_of)

    def joined_room_count(self) -> int:
        return sum(1 for channel in self._listeners if channel.startswith("room:"))

    # -- rooms ---------------------------------------------------------------

    def is_joined(self, caller: Caller, room_id: str) -> bool:
        """Whether this caller is a connection that joined the room (a
        caller without a connection, such as the HTTP API acting for a
        user, has joined nothing)."""
        # A Caller that is no Connection is simply not a key here.
        channels = self._channels_of.get(caller)  # type: ignore[call-overload]
        return channels is not None and room_channel(room_id) in channels

    def begin_join(self, conn: Connection, room_id: str) -> bool:
        """Start listening on a room, holding live events back.  Returns
        False when the connection had already joined (nothing is held)."""
        channel = room_channel(room_id)
        if self.is_joined(conn, room_id):
            return False
        joining = self._joining.setdefault(channel, {})
        if conn in joining:
            return False
        joining[conn] = _Joining()
        self._retain(channel)
        return True

    def complete_join(self, conn: Connection, room_id: str, last_seq: int) -> None:
        """The join reply went out: deliver what was held back beyond the
        snapshot and make the connection an ordinary listener."""
        channel = room_channel(room_id)
        if self.order is not None:
            self.order.start(channel, last_seq)
        if self._queue:
            self.flush()  # queued events must meet the join's seq filter
        joining = self._joining.get(channel)
        pending = joining.pop(conn, None) if joining is not None else None
        if pending is None:
            return
        if not joining:
            del self._joining[channel]
        if conn not in self._channels_of:
            self._release(channel)
            return
        self._add_listener(channel, conn)
        self._channels_of[conn].add(channel)
        for event, cache in pending.events:
            if event.seq is None or event.seq > last_seq:
                frame = _frame(conn.framer, event, cache)
                if frame:
                    conn.send_frame(frame)

    def abort_join(self, conn: Connection, room_id: str) -> None:
        channel = room_channel(room_id)
        joining = self._joining.get(channel)
        if joining is not None and joining.pop(conn, None) is not None:
            if not joining:
                del self._joining[channel]
            self._release(channel)

    def leave(self, conn: Connection, room_id: str) -> bool:
        channel = room_channel(room_id)
        channels = self._channels_of.get(conn)
        if channels is None or channel not in channels:
            self.abort_join(conn, room_id)
            return False
        channels.discard(channel)
        self._unlisten(channel, conn)
        return True

    def listen(self, conn: Connection, channel: str) -> None:
        """Let an authenticated connection listen on any channel (streams)."""
        if conn in self._channels_of:
            self._listen(channel, conn)

    def unlisten(self, conn: Connection, channel: str) -> None:
        channels = self._channels_of.get(conn)
        if channels is not None and channel in channels:
            channels.discard(channel)
            self._unlisten(channel, conn)

    def room_connections(self, room_id: str) -> Iterator[Connection]:
        return iter(tuple(self._listeners.get(room_channel(room_id), ())))

    def leave_room_everywhere(self, room_id: str, user_id: str) -> list[Connection]:
        """Make every local connection of a user leave a room (membership
        removed); return the connections that had joined it."""
        left = []
        for conn in self.connections_of(user_id):
            if self.leave(conn, room_id):
                left.append(conn)
        return left

    # -- channel bookkeeping -------------------------------------------------

    def _listen(self, channel: str, conn: Connection) -> None:
        listeners = self._listeners.get(channel)
        if listeners is not None and conn in listeners:
            return
        self._add_listener(channel, conn)
        self._channels_of[conn].add(channel)
        self._retain(channel)

    def _unlisten(self, channel: str, conn: Connection) -> None:
        listeners = self._listeners.get(channel)
        if listeners is None or listeners.pop(conn, 0) is not None:
            return
        if not listeners:
            del self._listeners[channel]
        self._ungroup(channel, conn, conn.framer)
        self._release(channel)

    def _add_listener(self, channel: str, conn: Connection) -> None:
        self._listeners.setdefault(channel, {})[conn] = None
        self._groups.setdefault(channel, {}).setdefault(conn.framer, {})[conn] = None

    def _ungroup(self, channel: str, conn: Connection, framer: Framer) -> None:
        groups = self._groups.get(channel)
        if groups is None:
            return
        group = groups.get(framer)
        if group is not None:
            group.pop(conn, None)
            if not group:
                del groups[framer]
        if not groups:
            del self._groups[channel]

    def framer_switched(self, conn: Connection, previous: Framer) -> None:
        """The connection's binding frames differently from now on (a
        Socket.IO client upgraded from polling to WebSocket): move it to the
        group of its new framer on every channel it listens on."""
        for channel in self._channels_of.get(conn, ()):
            listeners = self._listeners.get(channel)
            if listeners is not None and conn in listeners:
                self._ungroup(channel, conn, previous)
                self._groups.setdefault(channel, {}).setdefault(conn.framer, {})[conn] = None

    def _retain(self, channel: str) -> None:
        count = self._retained.get(channel, 0)
        self._retained[channel] = count + 1
        if count == 0 and self.order is not None and channel.startswith("room:"):
            self.order.follow(channel)
        self._broker.subscribe(channel)

    def _release(self, channel: str) -> None:
        count = self._retained.get(channel, 0) - 1
        if count > 0:
            self._retained[channel] = count
        else:
            self._retained.pop(channel, None)
            if self.order is not None and channel.startswith("room:"):
                self.order.forget(channel)
        self._broker.unsubscribe(channel)

    def is_followed(self, channel: str) -> bool:
        return channel in self._retained

    # -- delivery ------------------------------------------------------------

    def receive(self, channel: str, event: Published) -> None:
        """The broker's receiver.  Room messages pass ``RoomOrder`` (same
        order on every node); control events go to their handler; the rest
        is accepted at once."""
        if event.seq is not None and self.order is not None:
            self.order.offer(channel, event)
            return
        control = self._controls.get(event.type)
        if control is not None:
            control(channel, event)
            return
        self.accept(channel, event)

    def accept(self, channel: str, event: Published) -> None:
        """Queue the event for the end of this reactor turn (see ``flush``),
        where it is framed once per binding.  Without a clock (unit tests of
        the synchronous path) it is delivered at once."""
        if channel not in self._listeners and channel not in self._joining:
            return
        if event is not self._cached_event:
            # One event on many channels (publish_many: a presence change to
            # every online member of an audience) shares one frame cache, so
            # it is framed once per binding, not once per channel.
            self._cached_event, self._cache = event, {}
        item = (event, self._cache)
        if self._turn is None:
            self._deliver(channel, [item])
            return
        queued = self._queue.get(channel)
        if queued is None:
            self._queue[channel] = [item]
        else:
            queued.append(item)
        self._turn.fanout_due()

    def queued_writes(self) -> int:
        """About how many writes the next flush makes: the listeners of the
        channels with queued events (for ``EndOfTurn``)."""
        listeners = self._listeners
        return sum(len(listeners.get(channel, ())) for channel in self._queue)

    def flush(self) -> None:
        """Deliver everything queued this turn.  Consecutive events of a
        channel with the same routing go out as ONE write per recipient
        (the frames concatenated once), so the per-recipient cost of a burst
        of messages is one ``transport.write`` instead of one per message;
        order per channel is kept."""
        if not self._queue:
            return  # flushed early this turn (a join, the shutdown drain)
        queue, self._queue = self._queue, {}
        deliveries = 0
        for channel, items in queue.items():
            deliveries += self._deliver(channel, items)
        if self.on_delivered is not None:
            self.on_delivered(sum(len(items) for items in queue.values()), deliveries)

    def _deliver(self, channel: str, items: list[tuple[Published, FrameCache]]) -> int:
        """Hand the channel's queued events to its listeners, framed once per
        binding; return how many writes that took (for the metrics)."""
        writes = 0
        groups = self._groups.get(channel)
        if groups:
            runs = _runs(items)
            for framer, group in tuple(groups.items()):
                writes += self._deliver_group(framer, tuple(group), runs)
        joining = self._joining.get(channel)
        if joining:
            for conn, pending in joining.items():
                for event, cache in items:
                    if not _skipped(conn, event.skip_user, event.skip_connection):
                        pending.events.append((event, cache))
        return writes

    @staticmethod
    def _deliver_group(framer: Framer, targets: tuple[Connection, ...], runs: list[_Run]) -> int:
        writes = 0
        for run, skip_user, skip_connection in runs:
            if len(run) == 1:
                payload = _frame(framer, *run[0])
            else:
                payload = b"".join([_frame(framer, event, cache) for event, cache in run])
            if not payload:
                continue  # a binding with no form for these events
            writes += len(targets)
            if skip_user is None and skip_connection is None:
                for conn in targets:
                    try:
                        conn.send_frame(payload)
                    except Exception:
                        log.failure(
                            "delivery to {connection} failed", connection=conn.connection_id
                        )
            else:
                for conn in targets:
                    if _skipped(conn, skip_user, skip_connection):
                        continue
                    try:
                        conn.send_frame(payload)
                    except Exception:
                        log.failure(
                            "delivery to {connection} failed", connection=conn.connection_id
                        )
        return writes


_Run = tuple[list[tuple[Published, FrameCache]], str | None, str | None]


def _frame(framer: Framer, event: Published, cache: FrameCache) -> bytes:
    """The event in this binding's frame, made once per event and binding."""
    frame = cache.get(framer)
    if frame is None:
        frame = cache[framer] = framer(event)
    return frame


def _runs(items: list[tuple[Published, FrameCache]]) -> list[_Run]:
    """Split a channel's queued events into runs of equal routing."""
    runs: list[_Run] = []
    for item in items:
        event = item[0]
        if runs and runs[-1][1] == event.skip_user and runs[-1][2] == event.skip_connection:
            runs[-1][0].append(item)
        else:
            runs.append(([item], event.skip_user, event.skip_connection))
    return runs


def _skipped(conn: Connection, skip_user: str | None, skip_connection: str | None) -> bool:
    if conn.connection_id == skip_connection:
        return True
    return (
        skip_user is not None and conn.identity is not None and conn.identity.user_id == skip_user
    )
