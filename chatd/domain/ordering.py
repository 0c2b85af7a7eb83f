"""Per-room delivery order across nodes.

Every stored message has a room sequence number (``seq``) given by the
database.  One process publishes its messages in commit order, but with
several processes two messages of a room committed on different nodes can
reach a third node in either order (each node publishes after its own
commit).  ``RoomOrder`` sits between the broker and the local fan-out and
hands a room's messages on strictly by ``seq``:

- the next expected message goes through at once (the common case costs a
  dict lookup and a comparison per event, never per recipient);
- one from the future waits until the ones before it arrive;
- if they have not arrived within ``gap_timeout`` (a publish lost while the
  broker was down, a node that died between commit and publish), they are
  read back from storage and delivered in their place, so every node still
  delivers the same sequence and nothing stored is skipped;
- one from the past (already delivered, or read back from storage) is
  dropped: a connection never receives a message twice.

A node starts following a room when its first local connection joins it;
the join snapshot's last ``seq`` says where the live stream starts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatd.domain.interfaces import Store
from chatd.domain.models import Published, encode_body

log = Logger()

GAP_TIMEOUT = 0.5
MAX_HELD = 10000
"""A room holding this many messages behind a gap reads the gap at once."""

MAX_FILL = 1000
"""At most this many missing messages are read back per gap; a longer gap
(a node cut off for a long time) is skipped and left to ``since``."""

Deliver = Callable[[str, Published], None]
FetchMissing = Callable[[str, int, int], "Deferred[list[Published]]"]
"""``(channel, after_seq, count)``: the room's messages ``after_seq+1 ..
after_seq+count`` as the events their publish carried."""


def read_back_from(store: Store) -> FetchMissing:
    """Fill gaps from storage: the stored messages, published again in the
    form ``chat:message`` carries them."""

    def fetch(channel: str, after_seq: int, count: int) -> Deferred[list[Published]]:
        room_id = channel[len("room:") :]
        d = store.history(room_id, None, after_seq, count)
        return d.addCallback(
            lambda page: [
                Published("chat:message", encode_body(m.to_wire()), seq=m.seq)
                for m in page.messages
            ]
        )

    return fetch


class _Room:
    __slots__ = ("next_seq", "held", "timer", "filling", "unknown")

    def __init__(self) -> None:
        self.next_seq = 0
        self.held: dict[int, Published] = {}
        self.timer: IDelayedCall | None = None
        self.filling = False
        self.unknown: list[Published] | None = []


class RoomOrder:
    def __init__(
        self,
        clock: IReactorTime,
        deliver: Deliver,
        fetch_missing: FetchMissing,
        gap_timeout: float = GAP_TIMEOUT,
    ) -> None:
        self._clock = clock
        self._deliver = deliver
        self._fetch_missing = fetch_missing
        self._gap_timeout = gap_timeout
        self._rooms: dict[str, _Room] = {}
        self.filled = 0
        self.skipped = 0

    def follow(self, channel: str) -> None:
        """A first local connection is joining: hold the room's messages
        until ``start`` says where its stream begins."""
        if channel not in self._rooms:
            self._rooms[channel] = _Room()

    def start(self, channel: str, last_seq: int) -> None:
        """The first join's snapshot ends at ``last_seq``; later joins of a
        room already followed change nothing."""
        room = self._rooms.get(channel)
        if room is None or room.unknown is None:
            return
        waiting, room.unknown = room.unknown, None
        room.next_seq = last_seq + 1
        waiting.sort(key=_seq)
        for event in waiting:
            if _seq(event) <= last_seq:
                # Only connections still joining can want these (another
                # join whose snapshot was read earlier); each filters by its
                # own snapshot.
                self._deliver(channel, event)
            else:
                self.offer(channel, event)

    def forget(self, channel: str) -> None:
        """No local connection follows the room any more."""
        room = self._rooms.pop(channel, None)
        if room is not None and room.timer is not None and room.timer.active():
            room.timer.cancel()

    def offer(self, channel: str, event: Published) -> None:
        room = self._rooms.get(channel)
        if room is None:
            self._deliver(channel, event)
            return
        if room.unknown is not None:
            room.unknown.append(event)
            return
        seq = event.seq
        assert seq is not None
        if seq == room.next_seq and not room.filling:
            room.next_seq = seq + 1
            self._deliver(channel, event)
            if room.held:
                self._release(channel, room)
        elif seq >= room.next_seq:
            room.held[seq] = event
            if len(room.held) >= MAX_HELD:
                self._gap_expired(channel)
            elif room.timer is None and not room.filling:
                room.timer = self._clock.callLater(self._gap_timeout, self._gap_expired, channel)
        # else: delivered already (or read back from storage)

    def _release(self, channel: str, room: _Room) -> None:
        held = room.held
        while room.next_seq in held:
            event = held.pop(room.next_seq)
            room.next_seq += 1
            self._deliver(channel, event)
        if not held and room.timer is not None:
            if room.timer.active():
                room.timer.cancel()
            room.timer = None
        elif held and room.timer is None and not room.filling:
            room.timer = self._clock.callLater(self._gap_timeout, self._gap_expired, channel)

    def _gap_expired(self, channel: str) -> None:
        room = self._rooms.get(channel)
        if room is None:
            return
        if room.timer is not None and room.timer.active():
            room.timer.cancel()
        room.timer = None
        if not room.held or room.filling:
            return
        first_held = min(room.held)
        missing = first_held - room.next_seq
        if missing <= 0:
            self._release(channel, room)
            return
        if missing > MAX_FILL:
            self._skip_to(channel, room, "too many")
            return
        room.filling = True
        d = self._fetch_missing(channel, room.next_seq - 1, missing)
        d.addCallbacks(
            self._filled,
            self._fill_failed,
            callbackArgs=(channel, room, first_held),
            errbackArgs=(channel, room, first_held),
        )

    def _filled(self, events: list[Published], channel: str, room: _Room, first_held: int) -> None:
        room.filling = False
        if self._rooms.get(channel) is not room:
            return
        for event in events:
            seq = event.seq
            if seq is not None and room.next_seq <= seq < first_held and seq not in room.held:
                room.held[seq] = event
        self.filled += len(events)
        self._release(channel, room)
        if room.next_seq < first_held:
            # storage did not have all it was asked for (cannot happen with
            # gap-free seq, but never wait for it forever)
            self._skip_to(channel, room, "not found in storage")

    def _fill_failed(self, failure: Failure, channel: str, room: _Room, first_held: int) -> None:
        room.filling = False
        log.failure("reading back messages missing in {channel} failed", failure, channel=channel)
        if self._rooms.get(channel) is room:
            self._skip_to(channel, room, "storage failed")

    def _skip_to(self, channel: str, room: _Room, why: str) -> None:
        """Give up on the hole before the first held message: deliver from
        there on (clients see the jump in ``seq`` and can fetch the rest with
        ``chat:history``).  Later holes get their own wait and read-back."""
        if not room.held:
            return
        first = min(room.held)
        if first > room.next_seq:
            log.warn(
                "skipping messages {first}..{last} of {channel} ({why})",
                first=room.next_seq,
                last=first - 1,
                channel=channel,
                why=why,
            )
            self.skipped += first - room.next_seq
            room.next_seq = first
        self._release(channel, room)

    def stop(self) -> None:
        for channel in list(self._rooms):
            self.forget(channel)

    def state(self, channel: str) -> Any:
        """For tests: (next seq, held seqs) of a followed room."""
        room = self._rooms.get(channel)
        return None if room is None else (room.next_seq, sorted(room.held))


def _seq(event: Published) -> int:
    return event.seq if event.seq is not None else 0
