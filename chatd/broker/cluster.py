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
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatd.clock import now_ms
from chatd.domain.live import LocalViewers
from chatd.domain.social import Presence

if TYPE_CHECKING:
    from chatd.broker.redis import RedisLink

log = Logger()

HEARTBEAT = 5.0
NODE_TIMEOUT = 15.0

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


class Cluster:
    """This node's membership: heartbeats, reaping dead nodes, the control
    channel and re-registration after Redis comes back."""

    def __init__(
        self,
        link: RedisLink,
        clock: IReactorTime,
        heartbeat: float = HEARTBEAT,
        node_timeout: float = NODE_TIMEOUT,
    ) -> None:
        self.link = link
        self.clock = clock
        self.heartbeat_interval = heartbeat
        self.node_timeout = node_timeout
        self.presence: ClusterPresence | None = None
        self.viewers: ClusterViewers | None = None
        self.connection_count: Callable[[], int] = lambda: 0
        self._beat = LoopingCall(self._heartbeat)
        self._beat.clock = clock
        self._sweep = LoopingCall(self._reap)
        self._sweep.clock = clock
        link.on_control = self._control
        link.on_subscriber_up.append(lambda _conn: self._resync())
        self.reaped_nodes = 0
        self._reregistering = False

    def args(self, *rest: Any) -> list[Any]:
        return [self.link.prefix, self.link.node, *rest]

    def start(self) -> None:
        self._beat.start(self.heartbeat_interval, now=True)
        self._sweep.start(self.heartbeat_interval, now=False)

    # -- control messages -------------------------------------------------------------

    def announce(self, kind: str, value: str) -> None:
        payload = json.dumps({"t": kind, "v": value, "n": self.link.node}).encode()
        self.link.publish(self.link.control_channel, payload).addErrback(lambda _: None)

    def _control(self, payload: bytes) -> None:
        try:
            message = json.loads(payload)
            kind, value = message["t"], message["v"]
        except (ValueError, KeyError, TypeError):
            log.warn("dropped a malformed cluster control message")
            return
        if kind in ("on", "off") and self.presence is not None:
            self.presence.mirror(kind == "on", value)
        elif kind == "views" and self.viewers is not None and message.get("n") != self.link.node:
            self.viewers.remote_changed(value)

    # -- liveness ----------------------------------------------------------------------

    def _heartbeat(self) -> Deferred[None]:
        d = self.link.eval(HEARTBEAT_SCRIPT, self.args(self.connection_count()))

        def beat(added: Any) -> None:
            if added == 1:
                # Reaped while we could not heartbeat (or never registered):
                # put this node's users and viewers back.
                self.reregister()

        return d.addCallbacks(beat, lambda _: None)

    def reregister(self) -> None:
        """This node was missing from the nodes set: register all of its
        local state again (at most once per reactor turn)."""
        if self._reregistering:
            return
        self._reregistering = True

        def run() -> None:
            self._reregistering = False
            self._register_local()

        self.clock.callLater(0, run)

    def _reap(self) -> Deferred[None]:
        d = self.link.eval(REAP, [self.link.prefix, int(self.node_timeout * 1000), ""])
        d.addCallback(self._reaped)
        return d.addErrback(lambda _: None)

    def _reaped(self, result: list[Any]) -> Deferred[Any]:
        announcements = []
        i = 0
        streams = set()
        while i < len(result):
            kind = _text(result[i])
            if kind == "o":
                user, seen = _text(result[i + 1]), int(float(_text(result[i + 2])))
                i += 3
                if self.presence is not None:
                    announcements.append(self.presence.cluster_offline(user, seen))
            else:
                streams.add(_text(result[i + 1]))
                i += 2
        for stream in streams:
            self.announce("views", stream)
            if self.viewers is not None:
                self.viewers.remote_changed(stream)
        if announcements:
            log.info(
                "reaped a silent node: {count} users offline",
                event="cluster.reaped",
                count=len(announcements),
            )
            self.reaped_nodes += 1
        return DeferredList(announcements, consumeErrors=True)

    def _resync(self) -> None:
        """(Re)connected: register this node and its local state again and
        reload the online mirror."""
        d = self._heartbeat()
        d.addCallback(lambda _: self._register_local())

    def _register_local(self) -> None:
        if self.presence is not None:
            self.presence.register_all()
        if self.viewers is not None:
            self.viewers.register_all()

    def stop(self) -> Deferred[Any]:
        """Leave cleanly: this node's users that are connected nowhere else
        go offline now (announced), its viewers leave the counts."""
        for loop in (self._beat, self._sweep):
            if loop.running:
                loop.stop()
        d = self.link.eval(REAP, [self.link.prefix, 0, self.link.node])
        d.addCallback(self._reaped)
        return d.addErrback(
            lambda f: log.warn(
                "leaving the cluster failed: {error}",
                event="cluster.error",
                error=f.getErrorMessage(),
            )
        )


class ClusterPresence:
    """``PresenceTracker`` for several nodes: local counts with the grace
    period as in one process, and the cluster's view in Redis."""

    def __init__(
        self,
        cluster: Cluster,
        clock: IReactorTime,
        grace: float,
        wall_clock: Callable[[], int] = now_ms,
    ) -> None:
        self.cluster = cluster
        self.link = cluster.link
        self.local = Presence(clock, grace, wall_clock)
        self.local.on_offline = self._grace_over
        self.on_online: Callable[[str], Any] | None = None
        self.on_offline: Callable[[str, int], Any] | None = None
        self._online: set[str] = set()
        cluster.presence = self

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
            if self.on_online is not None:
                self.on_online(user_id)

    def _set_failed(self, failure: Failure, user_id: str, delta: int) -> None:
        """Redis is down: behave as one process for this node's users (the
        state is registered again when Redis returns)."""
        if delta > 0 and self.local.connections(user_id) == 1 and user_id not in self._online:
            if self.on_online is not None:
                self.on_online(user_id)

    def _grace_over(self, user_id: str, at: int) -> Deferred[Any]:
        d = self.link.eval(USER_LEAVE, self.cluster.args(user_id))

        def left(went_offline: Any) -> Any:
            if went_offline == 1:
                return self.cluster_offline(user_id, at)
            return None

        def failed(_: Failure) -> Any:
            if user_id in self._online:
                return None
            return self._offline(user_id, at)

        return d.addCallbacks(left, failed)

    def cluster_offline(self, user_id: str, at: int) -> Deferred[Any]:
        """This node emptied the user's hash (or reaped the node that held
        them): tell everyone."""
        self._online.discard(user_id)
        self.cluster.announce("off", user_id)
        return self._offline(user_id, at)

    def _offline(self, user_id: str, at: int) -> Deferred[Any]:
        if self.on_offline is None:
            return succeed(None)
        return maybeDeferred(self.on_offline, user_id, at)

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

    def stop(self) -> None:
        self.local.stop()


def _pairs(flat: list[Any]) -> dict[str, int]:
    return {_text(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}


class ClusterViewers:
    """``ViewerCounter`` across nodes: users watching a stream from any node,
    each counted once (a restarted node's old entries are reaped, and a user
    on two nodes is one hash field)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.link = cluster.link
        self.local = LocalViewers()
        self.on_changed: Callable[[str], None] | None = None
        self._counts: dict[str, int] = {}
        cluster.viewers = self

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
            if self.on_changed is not None:
                self.on_changed(stream_id)

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
            if self.on_changed is not None:
                self.on_changed(stream_id)

        d.addCallbacks(counted, lambda _: None)

    def register_all(self) -> None:
        for stream_id, users in list(self.local.streams().items()):
            for user_id in list(users):
                self._change(stream_id, user_id, True)
