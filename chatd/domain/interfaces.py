"""The interfaces the domain depends on.  Storage, the broker and the
WebSocket bindings implement them; the domain never imports those."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred

from chatd.domain.models import (
    FriendLists,
    Identity,
    JoinSnapshot,
    Message,
    MessagePage,
    NewMessage,
    Notification,
    Published,
    Room,
)


class Caller(Protocol):
    """Who performs a domain operation that needs no live connection
    (sending, creating a room, reading, reacting, friends...).

    A WebSocket connection is one; the HTTP API acting for a user is another
    (``models.ActingUser``), so the backend calls exactly the code a client
    does.  ``connection_id`` names the connection that asked, when there is
    one, so its own echo can be skipped; it is None for the HTTP API."""

    @property
    def identity(self) -> Identity | None: ...

    @property
    def connection_id(self) -> str | None: ...


Framer = Callable[[Published], bytes]
"""Turns an event into its binding's frame: the bytes every connection of
that binding gets, ready for the transport, and concatenable (consecutive
frames of a channel go out as one write).  ``b""`` when the binding has no
form for the event (a dialect that has no such event): nothing is sent."""


class Connection(Caller, Protocol):
    """A client connection as the domain sees it: a caller that can also be
    sent events (joins, typing and live streams need one).  ``framer`` is its
    binding's: fan-out frames each event once per framer."""

    connection_id: str
    identity: Identity | None
    framer: Framer

    def send_frame(self, frame: Any) -> None:
        """Hand an already-framed event to this connection's transport."""

    def send_event(self, event_type: str, data: dict[str, Any]) -> None:
        """Encode and send one event to this connection only."""

    def disconnect(self, code: int, reason: str) -> None:
        """Close the connection with a close code of PROTOCOL.md section 3."""


class Store(Protocol):
    """Durable storage.  Every method returns a Deferred; failures to reach
    the database arrive as ``chatd.errors.StoreUnavailable``."""

    def create_room(
        self, room: Room, creator: str | None, members: list[str]
    ) -> Deferred[Room | None]: ...

    def get_room(self, room_id: str) -> Deferred[Room | None]: ...

    def is_member(self, room_id: str, user_id: str) -> Deferred[bool]: ...

    def add_member(self, room_id: str, user_id: str, at_ms: int = 0) -> Deferred[bool]: ...

    def remove_member(self, room_id: str, user_id: str) -> Deferred[bool]: ...

    def join_snapshot(
        self, room_id: str, user_id: str, since: int | None, limit: int
    ) -> Deferred[JoinSnapshot | None]: ...

    def append_message(self, message: NewMessage) -> Deferred[Message]: ...

    def history(
        self, room_id: str, before: int | None, after: int | None, limit: int
    ) -> Deferred[MessagePage]: ...

    def get_message(self, message_id: str) -> Deferred[Message | None]: ...

    def set_read(self, room_id: str, user_id: str, message_id: str, seq: int) -> Deferred[bool]: ...

    def set_reaction(
        self, message_id: str, user_id: str, reaction: str, present: bool, at_ms: int
    ) -> Deferred[bool]: ...

    def members(self, room_id: str) -> Deferred[list[str]]: ...

    def count_rooms_created_by(self, user_id: str) -> Deferred[int]: ...

    # -- the social layer (users, friends, notifications, DM rooms) --

    def touch_user(self, user_id: str, name: str | None, at_ms: int) -> Deferred[None]: ...

    def open_session(
        self, user_id: str, name: str | None, at_ms: int, limit: int
    ) -> Deferred[list[Notification]]: ...

    def close_session(self, user_id: str, at_ms: int) -> Deferred[list[str]]: ...

    def user_exists(self, user_id: str) -> Deferred[bool]: ...

    def set_last_seen(self, user_id: str, at_ms: int) -> Deferred[None]: ...

    def last_seen(self, user_id: str) -> Deferred[int | None]: ...

    def presence_audience(self, user_id: str) -> Deferred[list[str]]: ...

    def in_audience(self, viewer: str, subject: str) -> Deferred[bool]: ...

    def are_friends(self, user_id: str, other: str) -> Deferred[bool]: ...

    def request_friend(
        self, from_user: str, to_user: str, at_ms: int, max_pending: int | None = None
    ) -> Deferred[str]: ...

    def accept_friend(self, user_id: str, requester: str, at_ms: int) -> Deferred[bool]: ...

    def decline_friend(self, user_id: str, requester: str, at_ms: int = 0) -> Deferred[bool]: ...

    def remove_friend(self, user_id: str, other: str) -> Deferred[bool]: ...

    def renew_friend_request_notice(
        self, from_user: str, to_user: str, since_ms: int
    ) -> Deferred[bool]: ...

    def set_friendship(
        self, user_id: str, other: str, present: bool, at_ms: int
    ) -> Deferred[bool]: ...

    def friend_lists(self, user_id: str) -> Deferred[FriendLists]: ...

    def add_notification(
        self, notification: Notification, keep: int | None = None
    ) -> Deferred[Notification]: ...

    def unread_notifications(self, user_id: str, limit: int) -> Deferred[list[Notification]]: ...

    def ack_notification(
        self, user_id: str, notification_id: str, at_ms: int
    ) -> Deferred[bool]: ...

    def ensure_dm_room(self, room: Room, a: str, b: str) -> Deferred[None]: ...

    # -- live streams --

    def get_stream(self, stream_id: str) -> Deferred[tuple[str, str, str] | None]: ...

    def set_stream_status(
        self, stream_id: str, user_id: str, status: str, at_ms: int
    ) -> Deferred[tuple[str, str] | None]: ...

    def put_stream(
        self, stream_id: str, host_id: str, title: str | None, at_ms: int
    ) -> Deferred[None]: ...

    # -- lifecycle --

    def ping(self) -> Deferred[None]: ...

    def drain(self) -> Deferred[None]: ...

    def close(self) -> Deferred[None]: ...


Receiver = Callable[[str, Published], None]


class Broker(Protocol):
    """Publish/subscribe between chatd processes (and within one).

    A node subscribes to the channels it has local connections for; every
    event published on a channel reaches each subscribed node's receiver
    exactly once, in publish order per publisher."""

    def set_receiver(self, receiver: Receiver) -> None: ...

    def subscribe(self, channel: str) -> None: ...

    def unsubscribe(self, channel: str) -> None: ...

    def publish(self, channel: str, event: Published) -> Deferred[None]: ...

    def publish_many(self, channels: list[str], event: Published) -> Deferred[None]:
        """The same event on many channels, as one message between nodes."""

    def ready(self, channel: str) -> Deferred[None]:
        """Fires once events published on the channel anywhere reach this
        node (a Redis SUBSCRIBE is confirmed asynchronously)."""

    def ping(self) -> Deferred[None]: ...

    def start(self) -> Deferred[None]: ...

    def stop(self) -> Deferred[None]: ...


class OnlineDirectory(Protocol):
    """Answers whether users have at least one open connection."""

    def online_among(self, user_ids: list[str]) -> list[str]: ...


# -- presence (chatd.domain.presence; the cluster's in chatd.broker.cluster) --


class PresenceStore(Protocol):
    """The storage presence needs (``Store`` has it)."""

    def presence_audience(self, user_id: str) -> Deferred[list[str]]: ...

    def close_session(self, user_id: str, at_ms: int) -> Deferred[list[str]]:
        """Record ``lastSeen`` and return the presence audience."""


class EventPublisher(Protocol):
    """Publishing after a state change, failures logged by the publisher
    (``chatd.domain.publishing.Publisher``)."""

    def publish(self, channel: str, event: Published) -> None: ...

    def publish_many(self, channels: list[str], event: Published) -> None:
        """One encoding on many channels, as one message between nodes."""


class PresenceListener(Protocol):
    """Told of the presence transitions a tracker decides (the announcer).

    ``online`` is the deciding tracker's view of who is online, so the
    listener tells only the online part of the audience without holding a
    tracker of its own.  The Deferreds fire once the transition has been
    handled and never errback (failures are logged where they happen)."""

    def went_online(self, user_id: str, online: OnlineDirectory) -> Deferred[None]: ...

    def went_offline(self, user_id: str, at_ms: int, online: OnlineDirectory) -> Deferred[None]: ...


class PresenceTracker(OnlineDirectory, Protocol):
    """Counts connections per user and reports the transitions to the
    ``PresenceListener`` it was built with.  The local one counts this
    process's connections; a cluster-wide one (Redis) keeps the same
    interface, so the social service does not change."""

    def is_online(self, user_id: str) -> bool:
        """Connected somewhere, or within the grace period after the last close."""

    def connections(self, user_id: str) -> int:
        """Open connections that can receive a push now (0 in the grace period)."""

    def opened(self, user_id: str) -> None: ...

    def closed(self, user_id: str) -> None: ...

    def connection_counts(self, user_ids: list[str]) -> Deferred[dict[str, int]]:
        """Open connections per user across every node (for the HTTP API)."""

    def connected_users(self) -> Deferred[dict[str, int]]:
        """Every user with an open connection anywhere, with their count."""

    def total_connections(self) -> Deferred[int]: ...

    def stop(self) -> Deferred[None]:
        """Cancel the grace timers; fires once running announcements are done."""


class LocalPresenceTracker(PresenceTracker, Protocol):
    """A tracker of this process's connections only: the local half of a
    cluster-wide tracker, which reads the counts synchronously."""

    def local_counts(self) -> dict[str, int]: ...


class LocalViewerTable(Protocol):
    """This process's viewers per stream and user, connections counted (the
    local half of a cluster-wide viewer count)."""

    def add(self, stream_id: str, user_id: str) -> None: ...

    def remove(self, stream_id: str, user_id: str) -> None: ...

    def local_users(self, stream_id: str) -> int: ...

    def is_first(self, stream_id: str, user_id: str) -> bool:
        """Whether the user's only local viewing connection is the last added."""

    def streams(self) -> dict[str, dict[str, int]]: ...


class SpendLedger(Protocol):
    """What every process of a deployment has charged each user's request
    budget (Redis when several processes share one; see
    ``chatd.session.rate.SharedSpending``)."""

    def exchange(self, spent: dict[str, float]) -> Deferred[dict[str, float]]:
        """Add this process's ``spent`` (per user, since its last exchange)
        and answer, for the same users, the total all processes have spent
        (it only grows)."""
        ...
