"""The store: the domain's ``Store`` interface on ``twisted.enterprise.adbapi``
for sqlite3 and psycopg2.

Two rules shape it:

* An ack means committed.  Messages go through ``GroupCommitWriter``: while
  one transaction is in flight, new messages queue up and all go together
  into the next one, so throughput is not one round trip per message.  Seqs
  are taken with ``UPDATE rooms SET last_seq = last_seq + n ... RETURNING``
  inside the same transaction, which row-locks the room: several processes
  on one PostgreSQL still get a strictly increasing, gap-free seq per room.
* A database that cannot be reached surfaces as ``StoreUnavailable`` and
  leaves nothing half-done.  A statement that fails on a connection that
  went stale while idle is retried once on a fresh connection, as long as
  the transaction had not started to commit, so chatd recovers by itself
  when the database comes back.
* No request waits longer than the engine's ``request_timeout`` (given a
  reactor): a database that goes silent with its connection open (a
  network partition) gets the request ``StoreUnavailable`` on time, and its
  pool thread is woken by cutting that connection (``_Job``).  A
  transaction cut before its commit was sent is rolled back and never
  commits later; one cut during its commit has an unknown outcome, like
  any commit that fails (``_CommitStarted``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from twisted.enterprise import adbapi
from twisted.internet import threads
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatd.attribution import SERVER
from chatd.domain.models import JoinSnapshot, Message, MessagePage, NewMessage, Room
from chatd.errors import ChatError, ErrorCode, StoreUnavailable
from chatd.storage.engines import Engine, Interrupter
from chatd.storage.fair import FairScheduler
from chatd.storage.social import SocialQueries, StreamQueries

T = TypeVar("T")
log = Logger()

_ROOM_COLUMNS = (
    "r.id, r.name, r.description, r.type, r.created_at, r.last_seq,"
    " (SELECT COUNT(*) FROM room_members m WHERE m.room_id = r.id)"
)
_MESSAGE_COLUMNS = "id, room_id, seq, user_id, content, temp_id, created_at, username"


def _room(row: tuple[Any, ...]) -> Room:
    return Room(
        id=row[0],
        name=row[1],
        description=row[2],
        type=row[3],
        created_at_ms=int(row[4]),
        last_seq=int(row[5]),
        member_count=int(row[6]),
    )


def _message(row: tuple[Any, ...]) -> Message:
    return Message(
        id=row[0],
        chat_id=row[1],
        seq=int(row[2]),
        user_id=row[3],
        content=row[4],
        temp_id=row[5],
        created_at_ms=int(row[6]),
        username=row[7],
    )


class _CommitStarted(Exception):
    """Internal marker: the failure happened while committing, so the
    transaction's outcome is unknown and it must not be retried."""


class _NoAnswer(Exception):
    """Internal marker: the request's time ran out before its transaction
    committed (or began): nothing of it was, or will be, committed."""


class Seconds(Protocol):
    """A monotonic clock (the reactor's ``seconds``)."""

    def seconds(self) -> float: ...


@dataclass(frozen=True, slots=True)
class WriteObserver:
    """What the group-commit writer reports (for the metrics): the size of
    each batch, and how long each commit took in seconds."""

    batch: Callable[[int], None] | None = None
    commit: Callable[[float], None] | None = None


class SqlStore(SocialQueries, StreamQueries):
    """``Store`` on an adbapi pool.  ``clock`` times the commits (the
    reactor; a monotonic clock by default)."""

    def __init__(
        self,
        engine: Engine,
        pool: adbapi.ConnectionPool | None = None,
        max_batch: int = 500,
        observer: WriteObserver | None = None,
        clock: Seconds | None = None,
        reactor: IReactorTime | None = None,
    ) -> None:
        """``reactor`` arms the engine's ``request_timeout`` (scripts that
        build a store without one wait as long as the database takes)."""
        self.engine = engine
        self.pool = pool if pool is not None else engine.pool()
        self.writer = GroupCommitWriter(
            self, max_batch, observer or WriteObserver(), clock or _MonotonicClock()
        )
        self._outage = False
        self._batchers: dict[Callable[..., Any], TransactionBatcher] = {}
        timeout = engine.request_timeout
        self._deadline = (timeout, reactor) if timeout is not None and reactor is not None else None
        # Requests whose deadline is armed, until they are answered; and
        # who waits for there to be none (close).
        self._timed: dict[_Job, Deferred[Any]] = {}
        self._timed_idle: list[Deferred[None]] = []
        # The database's turns go round the users behind the requests
        # (chatd.storage.fair): as many in flight as the pool has threads.
        self._fair = FairScheduler(max(1, int(getattr(self.pool, "max", 1))))

    # -- running transactions ------------------------------------------------

    def run_batched(self, work: Callable[..., T], *args: Any) -> Deferred[T]:
        """Like ``run``, for small transactions that come in bursts (a
        session opening, a user going offline): calls of the same ``work``
        share one transaction while another of them is in flight, so a
        burst of connections pays one commit per batch, not one each."""
        batcher = self._batchers.get(work)
        if batcher is None:
            batcher = self._batchers[work] = TransactionBatcher(self, work)
        return batcher.call(*args)

    def run(self, work: Callable[..., T], *args: Any) -> Deferred[T]:
        """Run ``work(cursor, *args)`` in one transaction on a pool thread,
        in the turn of the user the current request came from
        (``chatd.attribution``)."""
        return self.run_as(None, work, *args)

    def run_as(self, owner: str | None, work: Callable[..., T], *args: Any) -> Deferred[T]:
        """``run`` in ``owner``'s turn (``SERVER`` for the server's own
        work, which no request's owner should be charged for)."""
        if self._deadline is None:
            d = self._fair.submit(lambda: self._untimed(work, args), owner)
        else:
            timeout, reactor = self._deadline
            # The deadline counts from the request, its wait for a turn
            # included: a request still waiting when it passes is answered
            # then, unstarted.
            due = reactor.seconds() + timeout
            d = self._fair.submit(lambda: self._run_timed(work, args, due, reactor), owner)
        d.addCallbacks(self._reachable, self._translate)
        return d

    def _untimed(self, work: Callable[..., T], args: tuple[Any, ...]) -> Deferred[T]:
        d = self.pool.runWithConnection(self._transaction, work, args)
        return d.addCallback(_raise_failed)

    def _run_timed(
        self, work: Callable[..., T], args: tuple[Any, ...], due: float, reactor: IReactorTime
    ) -> Deferred[T]:
        """``run`` with a deadline: the answer is the transaction's, or
        ``_NoAnswer``/``_CommitStarted`` once the time ``due`` has come; a
        late result of the thread is dropped."""
        timeout = self._deadline[0] if self._deadline is not None else 0.0
        remaining = due - reactor.seconds()
        if remaining <= 0:
            return fail(_NoAnswer(f"no turn at the database within {timeout:g} s"))
        job = _Job()
        answer: Deferred[T] = Deferred()
        self._timed[job] = answer
        timer = reactor.callLater(remaining, self._expire, job, timeout)
        running = threads.deferToThreadPool(
            self.pool._reactor, self.pool.threadpool, self._timed_transaction, job, work, args
        )
        running.addCallback(_raise_failed)

        def settle(result: Any) -> None:
            if timer.active():
                timer.cancel()
            if self._answered(job) is not None:
                if isinstance(result, Failure):
                    answer.errback(result)
                else:
                    answer.callback(result)

        running.addBoth(settle)
        return answer

    def _answered(self, job: _Job) -> Deferred[Any] | None:
        """Take ``job``'s answer out of the waiting ones (None: answered
        already), and tell ``close`` when none waits any more."""
        answer = self._timed.pop(job, None)
        if not self._timed and self._timed_idle:
            idle, self._timed_idle = self._timed_idle, []
            for d in idle:
                d.callback(None)
        return answer

    def _expire(self, job: _Job, timeout: float) -> None:
        """The deadline passed: answer now, and wake the pool thread."""
        state = job.abandon()
        if state == _Job.DONE:
            return  # the thread's result is on its way: settle() answers
        answer = self._answered(job)
        if answer is None:
            return
        if state == _Job.COMMITTING:
            error: Exception = _CommitStarted(f"no answer to the commit within {timeout:g} s")
        else:
            error = _NoAnswer(f"no answer from the database within {timeout:g} s")
        answer.errback(Failure(error))

    def _timed_transaction(
        self, job: _Job, work: Callable[..., T], args: tuple[Any, ...]
    ) -> T | _Failed:
        """On a pool thread, like adbapi's ``runWithConnection`` (which
        would connect before anything could tell it that the request is
        over): a request whose time ran out while it was queued is not
        started at all."""
        if not job.begin():
            return _Failed(_NoAnswer("no pool thread became free in time"))
        try:
            conn = self.pool.connectionFactory(self.pool)  # connects if need be
            return self._transaction(conn, work, args, job)
        finally:
            job.finish()

    def _reachable(self, result: T) -> T:
        if self._outage:
            self._outage = False
            log.info("database reachable again", event="storage.up")
        return result

    def _transaction(
        self,
        conn: adbapi.Connection,
        work: Callable[..., T],
        args: tuple[Any, ...],
        job: _Job | None = None,
    ) -> T | _Failed:
        """Runs on a pool thread.  Never raises: adbapi's own rollback and
        reconnect path logs tracebacks and can trip over a connection we
        replaced, so commit, rollback and reconnection are handled here and
        a failure travels back as a ``_Failed`` value.  With a ``job`` (a
        deadline), each step first checks that the request still waits, and
        a connection the reactor cut is dropped, not retried."""
        for attempt in (1, 2):
            if job is not None and not job.attach(self.engine.interrupter(conn._connection)):
                return _Failed(_NoAnswer("the request's time ran out while connecting"))
            try:
                cursor = conn.cursor()
                try:
                    result = work(cursor, *args)
                finally:
                    _close_quietly(cursor)
            except BaseException as e:
                if job is not None and job.abandoned:
                    self._drop_connection(conn, job)
                    return _Failed(e)
                if not self.engine.connection_broken(e, conn._connection):
                    _rollback_quietly(conn)
                    return _Failed(e)
                if not self._replace_connection(conn, job) or attempt == 2:
                    return _Failed(e)
                log.warn(
                    "database connection failed ({error}); retrying on a new connection",
                    event="storage.error",
                    error=_short(e),
                )
                continue
            if job is not None and not job.committing():
                # Cut before the commit went out: it never will.
                self._drop_connection(conn, job)
                return _Failed(_NoAnswer("the request's time ran out before its commit"))
            try:
                conn.commit()
            except BaseException as e:
                if job is not None and job.abandoned:
                    self._drop_connection(conn, job)
                else:
                    self._replace_connection(conn, job)
                return _Failed(_CommitStarted(_short(e)))
            if job is not None and not job.committed():
                self._drop_connection(conn, job)
            return result
        raise AssertionError("unreachable")

    def _replace_connection(self, conn: adbapi.Connection, job: _Job | None = None) -> bool:
        """Drop this thread's broken connection and try to open a new one;
        False (with a placeholder left behind) when the database is still
        unreachable — the next transaction connects afresh."""
        self._drop_connection(conn, job)
        try:
            conn._connection = self.pool.connect()
            return True
        except Exception:
            return False

    def _drop_connection(self, conn: adbapi.Connection, job: _Job | None) -> None:
        """Close this thread's connection (broken, or cut by the reactor)
        and leave a placeholder: the next transaction connects afresh."""
        if job is not None:
            job.detach()  # the reactor must not cut what is closed now
        with contextlib.suppress(Exception):  # it is broken already
            self.pool.disconnect(conn._connection)
        conn._connection = _LostConnection()

    def _translate(self, failure: Failure) -> Failure:
        error = failure.value
        if isinstance(error, _CommitStarted | _NoAnswer) or self.engine.is_unavailable(error):
            if not self._outage:  # once per outage, not once per request
                self._outage = True
                log.warn(
                    "database unavailable ({error}); requests that need it get UNAVAILABLE",
                    event="storage.down",
                    error=_short(error),
                )
            raise StoreUnavailable(_short(error))
        if self.engine.is_bad_data(error):
            raise ChatError(
                ErrorCode.INVALID_MESSAGE, f"the database refused a value: {_short(error)}"
            )
        return failure

    # -- rooms ---------------------------------------------------------------

    def create_room(
        self, room: Room, creator: str | None, members: list[str]
    ) -> Deferred[Room | None]:
        return self.run(self._create_room, room, creator, members)

    def _create_room(
        self, cur: Any, room: Room, creator: str | None, members: list[str]
    ) -> Room | None:
        """None when a room with that id exists already (nothing changed)."""
        sql = self.engine.sql
        cur.execute(
            sql(
                "INSERT INTO rooms (id, name, description, type, created_by, created_at, last_seq)"
                " VALUES (?, ?, ?, ?, ?, ?, 0) ON CONFLICT (id) DO NOTHING"
            ),
            (room.id, room.name, room.description, room.type, creator, room.created_at_ms),
        )
        if cur.rowcount != 1:
            return None
        unique = list(dict.fromkeys([creator, *members] if creator is not None else members))
        if unique:
            self.engine.insert_many(
                cur,
                "INSERT INTO room_members (room_id, user_id, joined_at) VALUES (?, ?, ?)",
                [(room.id, user, room.created_at_ms) for user in unique],
            )
        found = self._get_room(cur, room.id)
        assert found is not None
        return found

    def get_room(self, room_id: str) -> Deferred[Room | None]:
        return self.run(self._get_room, room_id)

    def _get_room(self, cur: Any, room_id: str) -> Room | None:
        cur.execute(
            self.engine.sql(f"SELECT {_ROOM_COLUMNS} FROM rooms r WHERE r.id = ?"), (room_id,)
        )
        row = cur.fetchone()
        return _room(row) if row else None

    def is_member(self, room_id: str, user_id: str) -> Deferred[bool]:
        return self.run(self._is_member, room_id, user_id)

    def _is_member(self, cur: Any, room_id: str, user_id: str) -> bool:
        cur.execute(
            self.engine.sql("SELECT 1 FROM room_members WHERE room_id = ? AND user_id = ?"),
            (room_id, user_id),
        )
        return cur.fetchone() is not None

    def add_member(self, room_id: str, user_id: str, at_ms: int = 0) -> Deferred[bool]:
        return self.run(self._add_member, room_id, user_id, at_ms)

    def _add_member(self, cur: Any, room_id: str, user_id: str, at_ms: int) -> bool:
        cur.execute(
            self.engine.sql(
                "INSERT INTO room_members (room_id, user_id, joined_at) VALUES (?, ?, ?)"
                " ON CONFLICT (room_id, user_id) DO NOTHING"
            ),
            (room_id, user_id, at_ms),
        )
        return cur.rowcount == 1

    def remove_member(self, room_id: str, user_id: str) -> Deferred[bool]:
        return self.run(self._remove_member, room_id, user_id)

    def _remove_member(self, cur: Any, room_id: str, user_id: str) -> bool:
        cur.execute(
            self.engine.sql("DELETE FROM room_members WHERE room_id = ? AND user_id = ?"),
            (room_id, user_id),
        )
        return cur.rowcount == 1

    def count_rooms_created_by(self, user_id: str) -> Deferred[int]:
        """The rooms (not direct-message rooms) ``user_id`` created and is
        still a member of: the count the per-user room quota checks."""
        return self.run(self._count_rooms_created_by, user_id)

    def _count_rooms_created_by(self, cur: Any, user_id: str) -> int:
        # Through the user's memberships (indexed by user) rather than
        # rooms.created_by (not indexed): a creator is a member of every
        # room they create, so this reads the user's rows, not every room.
        cur.execute(
            self.engine.sql(
                "SELECT COUNT(*) FROM room_members m JOIN rooms r ON r.id = m.room_id"
                " WHERE m.user_id = ? AND r.created_by = ? AND r.kind = 'room'"
            ),
            (user_id, user_id),
        )
        return int(cur.fetchone()[0])

    def members(self, room_id: str) -> Deferred[list[str]]:
        return self.run(self._members, room_id)

    def _members(self, cur: Any, room_id: str) -> list[str]:
        cur.execute(
            self.engine.sql("SELECT user_id FROM room_members WHERE room_id = ? ORDER BY user_id"),
            (room_id,),
        )
        return [row[0] for row in cur.fetchall()]

    def join_snapshot(
        self, room_id: str, user_id: str, since: int | None, limit: int
    ) -> Deferred[JoinSnapshot | None]:
        return self.run(self._join_snapshot, room_id, user_id, since, limit)

    def _join_snapshot(
        self, cur: Any, room_id: str, user_id: str, since: int | None, limit: int
    ) -> JoinSnapshot | None:
        room = self._get_room(cur, room_id)
        if room is None:
            return None
        members = self._members(cur, room_id)
        if since is None:
            page = self._history(cur, room_id, None, None, limit)
        else:
            page = self._history(cur, room_id, None, since, limit)
        return JoinSnapshot(room=room, is_member=user_id in members, members=members, page=page)

    # -- messages ------------------------------------------------------------

    def append_message(self, message: NewMessage) -> Deferred[Message]:
        return self.writer.append(message)

    def drain(self) -> Deferred[None]:
        """Fires once queued message writes and batched transactions are
        done (or failed)."""
        waiting = [self.writer.drain(), *(b.drain() for b in self._batchers.values())]
        return gatherResults(waiting, consumeErrors=True).addBoth(lambda _: None)

    def _write_batch(self, cur: Any, batch: list[NewMessage]) -> list[Message | None]:
        """Store a batch; a message for a room that does not exist maps to
        None (the others are stored).  Rooms are locked in id order so two
        processes writing to the same rooms cannot deadlock."""
        by_room: dict[str, list[int]] = {}
        for index, message in enumerate(batch):
            by_room.setdefault(message.chat_id, []).append(index)
        results: list[Message | None] = [None] * len(batch)
        rows: list[tuple[Any, ...]] = []
        sql = self.engine.sql
        for room_id in sorted(by_room):
            indexes = by_room[room_id]
            cur.execute(
                sql("UPDATE rooms SET last_seq = last_seq + ? WHERE id = ? RETURNING last_seq"),
                (len(indexes), room_id),
            )
            row = cur.fetchone()
            if row is None:
                continue
            first = int(row[0]) - len(indexes) + 1
            for offset, index in enumerate(indexes):
                stored = batch[index].stored(first + offset)
                results[index] = stored
                rows.append(
                    (
                        stored.id,
                        stored.chat_id,
                        stored.seq,
                        stored.user_id,
                        stored.content,
                        stored.temp_id,
                        stored.created_at_ms,
                        stored.username,
                    )
                )
        if rows:
            self.engine.insert_many(
                cur,
                f"INSERT INTO messages ({_MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        return results

    def history(
        self, room_id: str, before: int | None, after: int | None, limit: int
    ) -> Deferred[MessagePage]:
        return self.run(self._history, room_id, before, after, limit)

    def _history(
        self, cur: Any, room_id: str, before: int | None, after: int | None, limit: int
    ) -> MessagePage:
        """Ascending pages: with ``after`` the first ``limit`` messages past
        it, otherwise the newest ``limit`` before ``before`` (or the end)."""
        clauses = ["room_id = ?"]
        params: list[Any] = [room_id]
        if after is not None:
            clauses.append("seq > ?")
            params.append(after)
        if before is not None:
            clauses.append("seq < ?")
            params.append(before)
        order = "ASC" if after is not None else "DESC"
        cur.execute(
            self.engine.sql(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE {' AND '.join(clauses)}"
                f" ORDER BY seq {order} LIMIT ?"
            ),
            (*params, limit + 1),
        )
        rows = cur.fetchall()
        has_more = len(rows) > limit
        messages = [_message(row) for row in rows[:limit]]
        if order == "DESC":
            messages.reverse()
        return MessagePage(messages, has_more)

    def get_message(self, message_id: str) -> Deferred[Message | None]:
        return self.run(self._get_message, message_id)

    def _get_message(self, cur: Any, message_id: str) -> Message | None:
        cur.execute(
            self.engine.sql(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = ?"), (message_id,)
        )
        row = cur.fetchone()
        return _message(row) if row else None

    # -- reads and reactions -------------------------------------------------

    def set_read(self, room_id: str, user_id: str, message_id: str, seq: int) -> Deferred[bool]:
        return self.run(self._set_read, room_id, user_id, message_id, seq)

    def _set_read(self, cur: Any, room_id: str, user_id: str, message_id: str, seq: int) -> bool:
        """Read pointers only move forward; True when this one moved."""
        cur.execute(
            self.engine.sql(
                "UPDATE room_members SET last_read_seq = ?, last_read_id = ?"
                " WHERE room_id = ? AND user_id = ? AND last_read_seq < ?"
            ),
            (seq, message_id, room_id, user_id, seq),
        )
        return cur.rowcount == 1

    def read_pointer(self, room_id: str, user_id: str) -> Deferred[tuple[int, str | None] | None]:
        return self.run(self._read_pointer, room_id, user_id)

    def _read_pointer(self, cur: Any, room_id: str, user_id: str) -> tuple[int, str | None] | None:
        cur.execute(
            self.engine.sql(
                "SELECT last_read_seq, last_read_id FROM room_members WHERE room_id = ? AND user_id = ?"
            ),
            (room_id, user_id),
        )
        row = cur.fetchone()
        return (int(row[0]), row[1]) if row else None

    def set_reaction(
        self, message_id: str, user_id: str, reaction: str, present: bool, at_ms: int
    ) -> Deferred[bool]:
        return self.run(self._set_reaction, message_id, user_id, reaction, present, at_ms)

    def _set_reaction(
        self, cur: Any, message_id: str, user_id: str, reaction: str, present: bool, at_ms: int
    ) -> bool:
        """Add or remove one reaction; True when that changed anything."""
        if present:
            cur.execute(
                self.engine.sql(
                    "INSERT INTO reactions (message_id, user_id, reaction, created_at) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (message_id, user_id, reaction) DO NOTHING"
                ),
                (message_id, user_id, reaction, at_ms),
            )
        else:
            cur.execute(
                self.engine.sql(
                    "DELETE FROM reactions WHERE message_id = ? AND user_id = ? AND reaction = ?"
                ),
                (message_id, user_id, reaction),
            )
        return cur.rowcount == 1

    def reactions(self, message_id: str) -> Deferred[dict[str, list[str]]]:
        return self.run(self._reactions, message_id)

    def _reactions(self, cur: Any, message_id: str) -> dict[str, list[str]]:
        cur.execute(
            self.engine.sql(
                "SELECT reaction, user_id FROM reactions WHERE message_id = ? ORDER BY created_at, user_id"
            ),
            (message_id,),
        )
        grouped: dict[str, list[str]] = {}
        for reaction, user in cur.fetchall():
            grouped.setdefault(reaction, []).append(user)
        return grouped

    # -- lifecycle -----------------------------------------------------------

    def ping(self) -> Deferred[None]:
        return self.run(_select_one)

    def close(self) -> Deferred[None]:
        """After the queued writes, and the requests still waiting (each
        answered by its deadline, its pool thread woken): closing the pool
        joins its threads, which must not be stuck on a silent database."""
        d = self.drain()

        def wait_for_timed(_: object) -> Deferred[None]:
            if not self._timed:
                return succeed(None)
            idle: Deferred[None] = Deferred()
            self._timed_idle.append(idle)
            return idle

        def close_pool(_: object) -> None:
            self.pool.close()

        d.addBoth(wait_for_timed)
        d.addBoth(close_pool)
        return d


class TransactionBatcher:
    """One kind of small transaction, batched: one batch in flight at a
    time, and every call that arrived meanwhile goes into the next one.
    Results come back per call.  If a batch fails on a statement (not an
    outage), its calls are run again one by one, so one bad call does not
    fail the others."""

    def __init__(self, store: SqlStore, work: Callable[..., Any], max_batch: int = 200) -> None:
        self._store = store
        self._work = work
        self._max_batch = max_batch
        self._pending: list[tuple[tuple[Any, ...], Deferred[Any]]] = []
        self._in_flight = False
        self._idle: list[Deferred[None]] = []

    def call(self, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self._pending.append((args, d))
        if not self._in_flight:
            self._next()
        return d

    def drain(self) -> Deferred[None]:
        if not self._in_flight and not self._pending:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        return d

    def _next(self) -> None:
        if not self._pending:
            self._in_flight = False
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)
            return
        batch = self._pending[: self._max_batch]
        del self._pending[: self._max_batch]
        self._in_flight = True
        running: Deferred[Any] = self._store.run_as(
            SERVER, self._run_all, [args for args, _ in batch]
        )
        running.addCallbacks(self._done, self._failed, callbackArgs=(batch,), errbackArgs=(batch,))
        running.addBoth(self._finished)

    def _finished(self, _: object) -> None:
        self._next()

    def _run_all(self, cur: Any, calls: list[tuple[Any, ...]]) -> list[Any]:
        return [self._work(cur, *args) for args in calls]

    @staticmethod
    def _done(results: list[Any], batch: list[tuple[tuple[Any, ...], Deferred[Any]]]) -> None:
        for (_, d), result in zip(batch, results, strict=True):
            d.callback(result)

    def _failed(
        self, failure: Failure, batch: list[tuple[tuple[Any, ...], Deferred[Any]]]
    ) -> Deferred[None] | None:
        if failure.check(StoreUnavailable) or len(batch) == 1:
            for _, d in batch:
                d.errback(failure)
            return None
        return Deferred.fromCoroutine(self._one_by_one(batch))

    async def _one_by_one(self, batch: list[tuple[tuple[Any, ...], Deferred[Any]]]) -> None:
        for args, d in batch:
            try:
                result = await self._store.run_as(SERVER, self._work, *args)
            except Exception:
                d.errback(Failure())
            else:
                d.callback(result)


class _Job:
    """One timed transaction, between the reactor thread (its deadline) and
    its pool thread.  The lock makes the two agree on one order of events:
    either the thread commits (or finishes) before the deadline, or the
    deadline abandons the job, cuts the connection the thread waits on, and
    the thread then commits nothing and drops that connection."""

    WAITING, RUNNING, COMMITTING, DONE, ABANDONED = range(5)
    __slots__ = ("_lock", "state", "_interrupter")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.state = _Job.WAITING
        self._interrupter: Interrupter | None = None

    @property
    def abandoned(self) -> bool:
        """True once the deadline passed; the connection was cut then if
        the thread was waiting on one."""
        return self.state == _Job.ABANDONED

    # -- the pool thread --------------------------------------------------------

    def begin(self) -> bool:
        with self._lock:
            if self.state == _Job.ABANDONED:
                return False
            self.state = _Job.RUNNING
            return True

    def attach(self, interrupter: Interrupter | None) -> bool:
        """The connection the thread uses now; False when the job was
        abandoned meanwhile (while connecting: nothing to cut)."""
        with self._lock:
            if self.state == _Job.ABANDONED:
                abandoned = True
            else:
                abandoned = False
                self._release_locked()
                self._interrupter = interrupter
        if abandoned and interrupter is not None:
            interrupter.release()
        return not abandoned

    def detach(self) -> None:
        with self._lock:
            self._release_locked()

    def committing(self) -> bool:
        with self._lock:
            if self.state == _Job.ABANDONED:
                return False
            self.state = _Job.COMMITTING
            return True

    def committed(self) -> bool:
        """After the commit: False when the deadline passed during it (the
        request was answered "outcome unknown" and the connection cut)."""
        with self._lock:
            if self.state == _Job.ABANDONED:
                return False
            self.state = _Job.DONE
            return True

    def finish(self) -> None:
        with self._lock:
            if self.state != _Job.ABANDONED:
                self.state = _Job.DONE
            self._release_locked()

    def _release_locked(self) -> None:
        if self._interrupter is not None:
            self._interrupter.release()
            self._interrupter = None

    # -- the reactor thread -----------------------------------------------------

    def abandon(self) -> int:
        """The state the deadline found; unless DONE (the result is on
        its way), the job is abandoned and its connection cut."""
        with self._lock:
            state = self.state
            if state in (_Job.DONE, _Job.ABANDONED):
                return state
            self.state = _Job.ABANDONED
            if self._interrupter is not None:
                self._interrupter.interrupt()
            return state


class _Failed:
    """A transaction's exception, carried back as a value (see _transaction)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _raise_failed(result: Any) -> Any:
    if isinstance(result, _Failed):
        raise result.error
    return result


class _LostConnection:
    """Stands in for a connection that could not be reopened, so that
    adbapi's closing commit is a no-op; the pool reconnects next time."""

    def commit(self) -> None:
        return None

    def rollback(self) -> None:
        return None

    def close(self) -> None:
        return None

    def cursor(self) -> Any:
        raise adbapi.ConnectionLost("database connection lost")


def _short(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def _rollback_quietly(conn: adbapi.Connection) -> None:
    """Roll back after a failed statement; the statement's error is the one
    worth reporting, not a rollback's on a connection in trouble."""
    with contextlib.suppress(Exception):
        conn.rollback()


def _select_one(cursor: Any) -> None:
    cursor.execute("SELECT 1")
    cursor.fetchall()


def _close_quietly(cursor: Any) -> None:
    with contextlib.suppress(Exception):
        cursor.close()


class GroupCommitWriter:
    """Batches message inserts: one transaction in flight at a time, and
    everything that arrived meanwhile goes into the next one.

    Results fire in arrival order, so callbacks that publish a message run
    in seq order for each room."""

    def __init__(
        self, store: SqlStore, max_batch: int, observer: WriteObserver, clock: Seconds
    ) -> None:
        self._store = store
        self._max_batch = max_batch
        self._pending: list[tuple[NewMessage, Deferred[Message]]] = []
        self._in_flight = False
        self._drained: list[Deferred[None]] = []
        self._clock = clock
        self.observe_batch = observer.batch
        self.observe_commit = observer.commit

    @property
    def queued(self) -> int:
        return len(self._pending)

    def append(self, message: NewMessage) -> Deferred[Message]:
        d: Deferred[Message] = Deferred()
        self._pending.append((message, d))
        if not self._in_flight:
            self._flush()
        return d

    def drain(self) -> Deferred[None]:
        """Fires once every queued message has been written (or failed)."""
        if not self._in_flight and not self._pending:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._drained.append(d)
        return d

    def _flush(self) -> None:
        batch = self._pending[: self._max_batch]
        del self._pending[: self._max_batch]
        self._in_flight = True
        if self.observe_batch is not None:
            self.observe_batch(len(batch))
        d = self._store.run_as(SERVER, self._store._write_batch, [m for m, _ in batch])
        if self.observe_commit is not None:
            observe, seconds = self.observe_commit, self._clock.seconds
            started = seconds()
            d.addBoth(lambda result: (observe(seconds() - started), result)[1])
        # Start the next transaction before this batch's callbacks (fan-out,
        # acks) run, so the database works while the reactor delivers.
        d.addBoth(self._next)
        d.addCallbacks(self._written, self._failed, callbackArgs=(batch,), errbackArgs=(batch,))
        d.addBoth(self._maybe_drained)

    def _written(
        self, results: list[Message | None], batch: list[tuple[NewMessage, Deferred[Message]]]
    ) -> None:
        for (message, d), stored in zip(batch, results, strict=True):
            if stored is None:
                d.errback(
                    ChatError(ErrorCode.ROOM_NOT_FOUND, f"room {message.chat_id} does not exist")
                )
            else:
                d.callback(stored)

    def _failed(
        self, failure: Failure, batch: list[tuple[NewMessage, Deferred[Message]]]
    ) -> Deferred[None] | None:
        """An outage fails the whole batch (nothing was stored).  Any other
        error may be one message's fault: write them one by one so that
        only the guilty one fails."""
        if failure.check(StoreUnavailable) or len(batch) == 1:
            if not failure.check(StoreUnavailable, ChatError):
                log.failure("storing a message failed", failure, event="storage.error")
            for _, d in batch:
                d.errback(failure)
            return None
        log.warn(
            "message batch of {count} failed ({error}); storing one by one",
            event="storage.error",
            count=len(batch),
            error=failure.getErrorMessage(),
        )
        return self._one_by_one(batch)

    def _one_by_one(self, batch: list[tuple[NewMessage, Deferred[Message]]]) -> Deferred[None]:
        return Deferred.fromCoroutine(self._write_one_by_one(batch))

    async def _write_one_by_one(self, batch: list[tuple[NewMessage, Deferred[Message]]]) -> None:
        for item in batch:
            try:
                results = await self._store.run_as(SERVER, self._store._write_batch, [item[0]])
            except Exception:
                self._failed(Failure(), [item])
            else:
                self._written(results, [item])

    def _next(self, result: T) -> T:
        self._in_flight = False
        if self._pending:
            self._flush()
        return result

    def _maybe_drained(self, _: object) -> None:
        """After a batch's callbacks (so its acks are out): wake drain()
        waiters when nothing is queued or in flight any more."""
        if self._drained and not self._in_flight and not self._pending:
            waiting, self._drained = self._drained, []
            for d in waiting:
                d.callback(None)


class _MonotonicClock:
    """``seconds()`` for a store built without the reactor (scripts)."""

    def seconds(self) -> float:
        return time.monotonic()
