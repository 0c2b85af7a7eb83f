"""Cluster-wide presence and viewer counts in Redis, and node liveness.

Keys (all under the configured prefix ``P``):

- ``P nodes``                ZSET node -> last heartbeat (Redis server time, ms)
- ``P nodeconns``            HASH node -> open connections on that node
- ``P user:<id>``            HASH node -> that user's connections on the node
- ``P online``               SET  users with a connection on some node
- ``P node:<n>:users``       SET  users node n holds (for reaping n)
- ``P viewers:<stream>``     HASH user -> how many nodes it watches from
- ``P node:<n>:viewing``     SET  ``stream\\0user`` node n contributes

Every transition is decided inside one Lua script, so exactly one node
announces a user online (the one whose connection made the user's hash
non-empty) and exactly one offline (the one that emptied it: the last
node after its grace period, or the node that reaped a dead one).  The
scripts use Redis's clock, so node clocks do not matter.

Each node heartbeats every ``HEARTBEAT`` seconds and sweeps for nodes
silent for ``NODE_TIMEOUT`` seconds: claiming a dead node is a ZREM, so
one node reaps it, takes its users and viewers out and announces who went
offline.  A node that finds itself reaped (a long pause, a Redis outage)
registers its local state again.  These scripts address keys they compute
from the prefix, so this runs on a single Redis (or a primary with
replicas), not Redis Cluster.

Reads that must be synchronous (``is_online``) use a mirror of the online
set kept from the control channel (``on``/``off`` messages published by
the announcing node) and reloaded on every (re)connection.

This module is the Redis implementation only: the presence rules (who
hears what, the grace period) are ``chatd.domain.presence``'s, handed in
by the composition root as interfaces (a ``PresenceListener`` to announce
through, a factory for the local tracker, a ``LocalViewerTable``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatd.domain.interfaces import (
    LocalPresenceTracker,
    LocalViewerTable,
    OnlineDirectory,
    PresenceListener,
)

if TYPE_CHECKING:
    from chatd.broker.redis import LinkListener

log = Logger()

HEARTBEAT = 5.0
NODE_TIMEOUT = 15.0
START_TIMEOUT = 2.0

REGISTERED = """
local function registered(p, node)
  -- a node holding state is always in the nodes set, so it can be reaped;
  -- returns 1 when it was missing (new, or reaped while it was away)
  if not redis.call('ZSCORE', p .. 'nodes', node) then
    local t = redis.call('TIME')
    redis.call('ZADD', p .. 'nodes', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), node)
    return 1
  end
  return 0
end
"""

USER_SET = (
    REGISTERED
    + """
local p, node, user, count, delta = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local missing = registered(p, node)
local key = p .. 'user:' .. user
local before = redis.call('HLEN', key)
redis.call('HSET', key, node, count)
redis.call('SADD', p .. 'node:' .. node .. ':users', user)
if delta ~= 0 then redis.call('HINCRBY', p .. 'nodeconns', node, delta) end
local online = 0
if before == 0 then
  redis.call('SADD', p .. 'online', user)
  online = 1
end
return {online, missing}
"""
)

USER_LEAVE = """
local p, node, user = ARGV[1], ARGV[2], ARGV[3]
local key = p .. 'user:' .. user
redis.call('HDEL', key, node)
redis.call('SREM', p .. 'node:' .. node .. ':users', user)
if redis.call('HLEN', key) == 0 then
  return redis.call('SREM', p .. 'online', user)
end
return 0
"""

HEARTBEAT_SCRIPT = """
local p, node, conns = ARGV[1], ARGV[2], ARGV[3]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local added = redis.call('ZADD', p .. 'nodes', now, node)
redis.call('HSET', p .. 'nodeconns', node, conns)
return added
"""

# Reaps nodes silent for ARGV[2] ms (or exactly node ARGV[3] when given:
# a node leaving cleanly).  Returns a flat list: 'o', user, last-seen ms
# for users now offline everywhere; 's', stream for changed viewer counts.
REAP = """
local p, timeout, only = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead
if only ~= '' then
  dead = {only, redis.call('ZSCORE', p .. 'nodes', only) or now}
else
  dead = redis.call('ZRANGEBYSCORE', p .. 'nodes', '-inf', now - timeout, 'WITHSCORES')
end
local out = {}
for i = 1, #dead, 2 do
  local node, seen = dead[i], dead[i + 1]
  if redis.call('ZREM', p .. 'nodes', node) == 1 or only ~= '' then
    redis.call('HDEL', p .. 'nodeconns', node)
    local users_key = p .. 'node:' .. node .. ':users'
    for _, user in ipairs(redis.call('SMEMBERS', users_key)) do
      local key = p .. 'user:' .. user
      redis.call('HDEL', key, node)
      if redis.call('HLEN', key) == 0 and redis.call('SREM', p .. 'online', user) == 1 then
        table.insert(out, 'o'); table.insert(out, user); table.insert(out, tostring(seen))
      end
    end
    redis.call('DEL', users_key)
    local viewing_key = p .. 'node:' .. node .. ':viewing'
    for _, entry in ipairs(redis.call('SMEMBERS', viewing_key)) do
      local cut = string.find(entry, '\\0', 1, true)
      local stream, user = string.sub(entry, 1, cut - 1), string.sub(entry, cut + 1)
      local key = p .. 'viewers:' .. stream
      if redis.call('HINCRBY', key, user, -1) <= 0 then redis.call('HDEL', key, user) end
      table.insert(out, 's'); table.insert(out, stream)
    end
    redis.call('DEL', viewing_key)
  end
end
return out
"""

VIEW_CHANGE = (
    REGISTERED
    + """
local p, node, stream, user, adding = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5] == '1'
local missing = registered(p, node)
local key = p .. 'viewers:' .. stream
local entry = stream .. '\\0' .. user
if adding then
  if redis.call('SADD', p .. 'node:' .. node .. ':viewing', entry) == 1 then
    redis.call('HINCRBY', key, user, 1)
  end
elseif redis.call('SREM', p .. 'node:' .. node .. ':viewing', entry) == 1 then
  if redis.call('HINCRBY', key, user, -1) <= 0 then redis.call('HDEL', key, user) end
end
return {redis.call('HLEN', key), missing}
"""
)

COUNTS = """
local p = ARGV[1]
local out = {}
local users = {}
if ARGV[2] == '*' then users = redis.call('SMEMBERS', p .. 'online') else
  for i = 2, #ARGV do users[#users + 1] = ARGV[i] end
end
for _, user in ipairs(users) do
  local total = 0
  for _, v in ipairs(redis.call('HVALS', p .. 'user:' .. user)) do total = total + tonumber(v) end
  table.insert(out, user); table.insert(out, total)
end
return out
"""

TOTAL = """
local total = 0
for _, v in ipairs(redis.call('HVALS', ARGV[1] .. 'nodeconns')) do total = total + tonumber(v) end
return total
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class ClusterLink(Protocol):
    """What the cluster needs of the Redis link (``chatd.broker.redis.RedisLink``)."""

    prefix: str
    node: str
    control_channel: bytes

    def eval(self, script: str, args: list[Any]) -> Deferred[Any]: ...

    def command(self, name: str, *args: Any) -> Deferred[Any]: ...

    def publish(self, channel: bytes, payload: bytes) -> Deferred[Any]: ...

    def is_up(self) -> bool: ...

    def add_listener(self, listener: LinkListener) -> None: ...


LocalTrackerFactory = Callable[[PresenceListener], LocalPresenceTracker]
"""Builds the local half of the cluster's tracker, reporting to the given
listener (the cluster's own, which turns "gone here" into "gone everywhere?")."""


class Cluster:
    """This node's membership: heartbeats, reaping dead nodes, the control
    channel and re-registration after Redis comes back.

    It builds its two halves, ``presence`` (a ``PresenceTracker``) and
    ``viewers`` (a viewer counter), because they and the membership need
    each other: they run scripts under this node's name and ask for a
    re-registration, and the membership re-registers them, feeds them the
    control channel and hands them what it reaped.

    ``connection_count`` is every open connection of this node (the
    heartbeat reports it for the HTTP API's totals)."""

    def __init__(
        self,
        link: ClusterLink,
        clock: IReactorTime,
        announcer: PresenceListener,
        local_presence: LocalTrackerFactory,
        local_viewers: LocalViewerTable,
        connection_count: Callable[[], int],
        heartbeat: float = HEARTBEAT,
        node_timeout: float = NODE_TIMEOUT,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        self.link = link
        self.clock = clock
        self.heartbeat_interval = heartbeat
        self.node_timeout = node_timeout
        self.start_timeout = start_timeout
        self._connection_count = connection_count
        self.reaped_nodes = 0
        self._beat = LoopingCall(self._heartbeat)
        self._beat.clock = clock
        self._sweep = LoopingCall(self._reap)
        self._sweep.clock = clock
        self._loops_done: list[Deferred[None]] = []
        self._starting: Deferred[None] | None = None
        self._start_timer: IDelayedCall | None = None
        self._reregister_call: IDelayedCall | None = None
        self._stopping = False
        self.presence = ClusterPresence(self, announcer, local_presence)
        self.viewers = ClusterViewers(self, local_viewers)
        link.add_listener(self)

    def args(self, *rest: Any) -> list[Any]:
        return [self.link.prefix, self.link.node, *rest]

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Heartbeat and sweep from now on.

        Fires once this node is registered in Redis, or once Redis is known
        to be out of reach (its connection failed, or no heartbeat got an
        answer within ``start_timeout``).  Out of reach is logged, not a
        failure: the node serves its own connections meanwhile and
        registers as soon as Redis answers, as after any outage."""
        if self._beat.running:
            raise RuntimeError("the cluster membership is already started")
        self._stopping = False
        starting: Deferred[None] = Deferred()
        self._starting = starting
        self._start_timer = self.clock.callLater(
            self.start_timeout, self._started, f"no answer within {self.start_timeout:g} s"
        )
        self._loops_done = [
            self._keep(self._beat.start(self.heartbeat_interval, now=True), "heartbeat"),
            self._keep(self._sweep.start(self.heartbeat_interval, now=False), "sweep"),
        ]
        return starting

    def _keep(self, loop: Deferred[LoopingCall], what: str) -> Deferred[None]:
        """A loop's Deferred fires when it stops; it errbacks only if a beat
        raised (each beat handles Redis failures itself): log that."""

        def failed(failure: Failure) -> None:
            log.failure("the cluster {what} stopped", failure, what=what, event="cluster.error")

        return loop.addCallbacks(lambda _: None, failed)

    def _started(self, unreachable: str | None) -> None:
        starting, self._starting = self._starting, None
        if starting is None:
            return
        if self._start_timer is not None and self._start_timer.active():
            self._start_timer.cancel()
        self._start_timer = None
        if unreachable is not None:
            log.warn(
                "not registered in the cluster yet (redis: {error}); serving this node's "
                "connections, registering when redis answers",
                event="cluster.unregistered",
                error=unreachable,
            )
        starting.callback(None)

    def stop(self) -> Deferred[None]:
        """Leave cleanly: the loops stop (a beat or sweep still running is
        waited for, so none runs after the leave), then this node's users
        connected nowhere else go offline now (announced) and its viewers
        leave the counts.  A Redis failure is logged, not raised."""
        return Deferred.fromCoroutine(self._leave())

    async def _leave(self) -> None:
        self._stopping = True
        self._started(None)
        if self._reregister_call is not None and self._reregister_call.active():
            self._reregister_call.cancel()
        self._reregister_call = None
        for loop in (self._beat, self._sweep):
            if loop.running:
                loop.stop()
        await _settled(DeferredList(self._loops_done, consumeErrors=True))
        try:
            reaped = await self.link.eval(REAP, [self.link.prefix, 0, self.link.node])
            await self._reaped(reaped)
        except CancelledError:
            raise
        except Exception as e:
            log.warn(
                "leaving the cluster failed: {error}",
                event="cluster.error",
                error=_one_line(e),
            )

    # -- LinkListener (what the Redis link reports) --------------------------------------

    def message_received(self, channel: bytes, payload: bytes) -> None:
        """Channel traffic is the broker's; the cluster hears the control
        channel only."""

    def control_received(self, payload: bytes) -> None:
        try:
            message = json.loads(payload)
            kind, value = message["t"], message["v"]
        except (ValueError, KeyError, TypeError):
            log.warn("dropped a malformed cluster control message")
            return
        if kind in ("on", "off"):
            self.presence.mirror(kind == "on", value)
        elif kind == "views" and message.get("n") != self.link.node:
            self.viewers.remote_changed(value)

    def subscriber_connected(self) -> None:
        """(Re)connected: register this node and its local state again and
        reload the online mirror (control messages may have been missed)."""
        if self._stopping:
            return
        d = self._heartbeat()
        d.addCallback(lambda _: self._register_local())

    def link_up(self) -> None:
        """Both connections are up: if start-up still waits, register now
        rather than at the next beat."""
        if self._starting is not None:
            self._heartbeat()

    def link_down(self, why: str) -> None:
        self._started(why)

    # -- control messages -----------------------------------------------------------------

    def announce(self, kind: str, value: str) -> None:
        payload = json.dumps({"t": kind, "v": value, "n": self.link.node}).encode()
        self.link.publish(self.link.control_channel, payload).addErrback(lambda _: None)

    # -- liveness ----------------------------------------------------------------------

    def _heartbeat(self) -> Deferred[None]:
        d = self.link.eval(HEARTBEAT_SCRIPT, self.args(self._connection_count()))

        def beat(added: Any) -> None:
            self._started(None)
            if added == 1:
                # Reaped while we could not heartbeat (or never registered):
                # put this node's users and viewers back.
                self.reregister()

        return d.addCallbacks(beat, lambda _: None)

    def reregister(self) -> None:
        """This node was missing from the nodes set: register all of its
        local state again (at most once per reactor turn)."""
        if self._reregister_call is not None or self._stopping:
            return

        def run() -> None:
            self._reregister_call = None
            self._register_local()

        self._reregister_call = self.clock.callLater(0, run)

    def _register_local(self) -> None:
        self.presence.register_all()
        self.viewers.register_all()

    def _reap(self) -> Deferred[None]:
        d = self.link.eval(REAP, [self.link.prefix, int(self.node_timeout * 1000), ""])
        d.addCallback(self._reaped)
        return d.addErrback(lambda _: None)

    def _reaped(self, result: list[Any]) -> Deferred[None]:
        """Announce what a REAP took out: users now offline everywhere (last
        seen at their node's last heartbeat), changed viewer counts."""
        offline, streams = _parse_reaped(result)
        announcements = [self.presence.cluster_offline(user, seen) for user, seen in offline]
        for stream in streams:
            self.announce("views", stream)
            self.viewers.remote_changed(stream)
        if announcements:
            log.info(
                "reaped a silent node: {count} users offline",
                event="cluster.reaped",
                count=len(announcements),
            )
            self.reaped_nodes += 1
        return DeferredList(announcements, consumeErrors=True).addCallback(lambda _: None)


def _parse_reaped(result: list[Any]) -> tuple[list[tuple[str, int]], set[str]]:
    """REAP's flat reply: ``'o', user, last-seen ms`` and ``'s', stream``."""
    offline: list[tuple[str, int]] = []
    streams: set[str] = set()
    i = 0
    while i < len(result):
        if _text(result[i]) == "o":
            offline.append((_text(result[i + 1]), int(float(_text(result[i + 2])))))
            i += 3
        else:
            streams.add(_text(result[i + 1]))
            i += 2
    return offline, streams


def _settled(d: Deferred[Any]) -> Deferred[None]:
    """Waits for ``d`` without passing a cancellation on to it (a loop's
    Deferred belongs to the LoopingCall, which fires it itself)."""
    waiter: Deferred[None] = Deferred()

    def fire(_: object) -> None:
        if not waiter.called:
            waiter.callback(None)

    d.addBoth(fire)
    return waiter


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


class _GraceOver:
    """The local tracker's listener inside ``ClusterPresence``: a user gone
    from this node may still be online on another, so Redis decides."""

    def __init__(self, presence: ClusterPresence) -> None:
        self._presence = presence

    def went_online(self, user_id: str, online: OnlineDirectory) -> Deferred[None]:
        return succeed(None)  # the USER_SET script decides that, in ``opened``

    def went_offline(self, user_id: str, at_ms: int, online: OnlineDirectory) -> Deferred[None]:
        return self._presence.left_this_node(user_id, at_ms)


class ClusterPresence:
    """``PresenceTracker`` for several nodes: local counts with the grace
    period as in one process, and the cluster's view in Redis.  The
    transitions it decides go to ``announcer``, with itself as the
    directory of who is online (on any node)."""

    def __init__(
        self, cluster: Cluster, announcer: PresenceListener, local: LocalTrackerFactory
    ) -> None:
        self.cluster = cluster
        self.link = cluster.link
        self._announcer = announcer
        self.local = local(_GraceOver(self))
        self._online: set[str] = set()

    # -- synchronous reads (local counts + the mirror) ------------------------------------

    def is_online(self, user_id: str) -> bool:
        return self.local.is_online(user_id) or user_id in self._online

    def online_among(self, user_ids: list[str]) -> list[str]:
        return [u for u in user_ids if self.is_online(u)]

    def connections(self, user_id: str) -> int:
        local = self.local.connections(user_id)
        if local:
            return local
        return 1 if user_id in self._online and not self.local.is_online(user_id) else 0

    def mirror(self, online: bool, user_id: str) -> None:
        if online:
            self._online.add(user_id)
        else:
            self._online.discard(user_id)

    # -- transitions ---------------------------------------------------------------------

    def opened(self, user_id: str) -> None:
        self.local.opened(user_id)
        self._set(user_id, +1)

    def closed(self, user_id: str) -> None:
        self.local.closed(user_id)
        self._set(user_id, -1)

    def _set(self, user_id: str, delta: int) -> Deferred[None]:
        count = self.local.connections(user_id)
        d = self.link.eval(USER_SET, self.cluster.args(user_id, count, delta))
        d.addCallbacks(
            self._set_done, self._set_failed, callbackArgs=(user_id,), errbackArgs=(user_id, delta)
        )
        return d

    def _set_done(self, result: Any, user_id: str) -> None:
        became_online, missing = result
        if missing == 1:
            self.cluster.reregister()
        if became_online == 1:
            self._online.add(user_id)
            self.cluster.announce("on", user_id)
            self._announcer.went_online(user_id, self)

    def _set_failed(self, failure: Failure, user_id: str, delta: int) -> None:
        """Redis is down: behave as one process for this node's users (the
        state is registered again when Redis returns)."""
        if delta > 0 and self.local.connections(user_id) == 1 and user_id not in self._online:
            self._announcer.went_online(user_id, self)

    def left_this_node(self, user_id: str, at_ms: int) -> Deferred[None]:
        """The grace period ran out here: offline if no other node holds
        the user (Redis down: if none did when it went down)."""
        d = self.link.eval(USER_LEAVE, self.cluster.args(user_id))

        def left(went_offline: Any) -> Deferred[None] | None:
            if went_offline == 1:
                return self.cluster_offline(user_id, at_ms)
            return None

        def failed(_: Failure) -> Deferred[None] | None:
            if user_id in self._online:
                return None
            return self._announcer.went_offline(user_id, at_ms, self)

        return d.addCallbacks(left, failed)

    def cluster_offline(self, user_id: str, at_ms: int) -> Deferred[None]:
        """This node emptied the user's hash (or reaped the node that held
        them): tell everyone."""
        self._online.discard(user_id)
        self.cluster.announce("off", user_id)
        return self._announcer.went_offline(user_id, at_ms, self)

    def register_all(self) -> None:
        """After (re)connecting: every local user again, and a fresh mirror."""
        for user_id in list(self.local.local_counts()):
            self._set(user_id, 0)
        d = self.link.command("smembers", self.link.prefix + "online")
        d.addCallbacks(self._reload_mirror, lambda _: None)

    def _reload_mirror(self, members: Any) -> None:
        self._online = {_text(m) for m in members}

    # -- cluster-wide counts for the HTTP API ---------------------------------------------

    def connection_counts(self, user_ids: list[str]) -> Deferred[dict[str, int]]:
        if not user_ids:
            return succeed({})
        d = self.link.eval(COUNTS, [self.link.prefix, *user_ids])
        d.addCallback(_pairs)
        return d.addErrback(lambda _: {u: self.local.connections(u) for u in user_ids})

    def connected_users(self) -> Deferred[dict[str, int]]:
        d = self.link.eval(COUNTS, [self.link.prefix, "*"])
        d.addCallback(lambda pairs: {u: n for u, n in _pairs(pairs).items() if n > 0})
        return d.addErrback(lambda _: {u: n for u, n in self.local.local_counts().items() if n > 0})

    def total_connections(self) -> Deferred[int]:
        d = self.link.eval(TOTAL, [self.link.prefix])
        d.addCallback(int)
        return d.addErrback(lambda _: sum(self.local.local_counts().values()))

    def stop(self) -> Deferred[None]:
        """The local grace timers (leaving the cluster is ``Cluster.stop``)."""
        return self.local.stop()


def _pairs(flat: list[Any]) -> dict[str, int]:
    return {_text(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}


ViewersChanged = Callable[[str], None]
"""Called with a stream whose cluster-wide viewer count changed."""


class ClusterViewers:
    """``ViewerCounter`` across nodes: users watching a stream from any node,
    each counted once (a restarted node's old entries are reaped, and a user
    on two nodes is one hash field)."""

    def __init__(self, cluster: Cluster, local: LocalViewerTable) -> None:
        self.cluster = cluster
        self.link = cluster.link
        self.local = local
        self._listeners: list[ViewersChanged] = []
        self._counts: dict[str, int] = {}

    def add_listener(self, listener: ViewersChanged) -> None:
        """Hear about count changes (the live service pushes them, coalesced,
        to this node's viewers)."""
        self._listeners.append(listener)

    def _changed(self, stream_id: str) -> None:
        for listener in self._listeners:
            listener(stream_id)

    def add(self, stream_id: str, user_id: str) -> Deferred[None] | None:
        self.local.add(stream_id, user_id)
        if not self.local.is_first(stream_id, user_id):
            return None
        return self._change(stream_id, user_id, True)

    def remove(self, stream_id: str, user_id: str) -> None:
        self.local.remove(stream_id, user_id)
        if user_id not in self.local.streams().get(stream_id, {}):
            self._change(stream_id, user_id, False)

    def _change(self, stream_id: str, user_id: str, adding: bool) -> Deferred[None]:
        d = self.link.eval(
            VIEW_CHANGE, self.cluster.args(stream_id, user_id, "1" if adding else "0")
        )

        def counted(result: Any) -> None:
            count, missing = result
            if missing == 1:
                self.cluster.reregister()
            self._remember(stream_id, int(count))
            self.cluster.announce("views", stream_id)
            self._changed(stream_id)

        return d.addCallbacks(counted, lambda _: None)

    def _remember(self, stream_id: str, count: int) -> None:
        if self.local.local_users(stream_id):
            self._counts[stream_id] = count
        else:
            self._counts.pop(stream_id, None)

    def count(self, stream_id: str) -> int:
        local = self.local.local_users(stream_id)
        if not self.link.is_up():
            return local
        return max(self._counts.get(stream_id, local), local)

    def remote_changed(self, stream_id: str) -> None:
        """Another node's viewers of a stream changed: if this node has
        viewers of it, read the count and push it to them."""
        if not self.local.local_users(stream_id):
            return
        d = self.link.command("hlen", self.link.prefix + "viewers:" + stream_id)

        def counted(count: Any) -> None:
            self._remember(stream_id, int(count))
            self._changed(stream_id)

        d.addCallbacks(counted, lambda _: None)

    def register_all(self) -> None:
        for stream_id, users in list(self.local.streams().items()):
            for user_id in list(users):
                self._change(stream_id, user_id, True)
