"""The store when the database misbehaves, at the unit level: the request
deadline (a fake clock) over a real SQLite pool whose statements never end
until they are cut, a full database (``max_page_count``), and the
timeouts every PostgreSQL connection carries."""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater

from chatd.errors import StoreUnavailable
from chatd.storage import schema
from chatd.storage.engines import SqliteEngine, engine_for
from chatd.storage.store import SqlStore, _Job
from tests.unit.test_store import make_room, new_message

FOREVER = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
"""A statement that runs until it is interrupted: a database that never answers."""


@dataclass(frozen=True)
class _DeadlinedSqlite(SqliteEngine):
    """SQLite with PostgreSQL's request deadline (one second)."""

    @property
    def request_timeout(self) -> float | None:
        return 1.0


class _Stuck:
    """Work that signals when it runs, then waits on the database forever
    (until cut); ``release`` cuts it from the test if the store did not."""

    def __init__(self, write_first: str | None = None) -> None:
        self.started = threading.Event()
        self.connections: list[Any] = []
        self.write_first = write_first

    def __call__(self, cursor: Any) -> None:
        self.connections.append(cursor.connection)
        if self.write_first is not None:
            cursor.execute(
                "INSERT INTO rooms (id, name, description, type, created_by, created_at, last_seq)"
                " VALUES (?, 'n', '', 'public', 'alice', 0, 0)",
                (self.write_first,),
            )
        if self.started.is_set():
            return  # a retry (there must be none): do not hang the test
        self.started.set()
        cursor.execute(FOREVER)

    async def running(self) -> None:
        from twisted.internet import reactor

        for _ in range(500):
            if self.started.is_set():
                return
            await deferLater(reactor, 0.01, lambda: None)
        raise AssertionError("the work never started")

    def release(self) -> None:
        for conn in self.connections:
            with contextlib.suppress(Exception):  # closed by the store already
                conn.interrupt()


@pytest_twisted.async_yield_fixture
async def deadlined(tmp_path: Any) -> Any:
    """(store, clock): the store's deadlines run on ``clock``."""
    engine = _DeadlinedSqlite("sqlite", f"sqlite:///{tmp_path}/deadline.sqlite3")
    schema.migrate(engine)
    clock = Clock()
    store = SqlStore(engine, reactor=clock)
    yield store, clock
    clock.advance(60)  # whatever still waits is answered, its thread cut
    await store.close()


def _failed_with(d: Deferred[Any], kind: type[BaseException]) -> BaseException:
    assert d.called, "no answer at the deadline"
    failures: list[Any] = []
    d.addErrback(failures.append)
    assert failures and failures[0].check(kind), failures
    return failures[0].value


@pytest_twisted.ensureDeferred
async def test_a_statement_that_never_ends_is_answered_at_the_deadline(deadlined):
    store, clock = deadlined
    stuck = _Stuck()
    d = store.run(stuck)
    try:
        await stuck.running()
        clock.advance(0.9)
        assert not d.called
        clock.advance(0.1)
        error = _failed_with(d, StoreUnavailable)
        assert "within 1 s" in str(error)
        # the pool thread was woken: the next request runs on it
        assert await store.get_room("nothing") is None
    finally:
        stuck.release()


@pytest_twisted.ensureDeferred
async def test_a_write_cut_before_its_commit_never_commits(deadlined):
    store, clock = deadlined
    stuck = _Stuck(write_first="cut-room")
    d = store.run(stuck)
    try:
        await stuck.running()
        clock.advance(1.0)
        _failed_with(d, StoreUnavailable)
        assert await store.get_room("cut-room") is None
    finally:
        stuck.release()


@pytest_twisted.ensureDeferred
async def test_a_request_whose_time_ran_out_in_the_queue_never_runs(deadlined):
    store, clock = deadlined
    stuck = _Stuck()
    ran: list[str] = []

    def queued(cursor: Any) -> None:
        ran.append("ran")

    first = store.run(stuck)
    try:
        await stuck.running()
        second = store.run(queued)  # SQLite has one pool thread: it waits
        clock.advance(1.0)
        _failed_with(first, StoreUnavailable)
        _failed_with(second, StoreUnavailable)
        assert await store.get_room("nothing") is None  # after the queued one
        assert ran == []
    finally:
        stuck.release()


@pytest_twisted.ensureDeferred
async def test_a_deadline_during_the_commit_is_an_unknown_outcome(deadlined):
    """The order the job's lock enforces: once the commit went out, the
    deadline cuts the connection and answers "unknown", and the thread,
    whatever the commit did, drops that connection."""
    store, clock = deadlined
    cut: list[str] = []

    class Interrupter:
        def interrupt(self) -> None:
            cut.append("interrupt")

        def release(self) -> None:
            cut.append("release")

    job = _Job()
    assert job.begin() and job.attach(Interrupter()) and job.committing()
    answer: Deferred[Any] = Deferred()
    store._timed[job] = answer
    store._expire(job, 1.0)
    assert cut == ["interrupt"]
    failures: list[Any] = []
    answer.addErrback(failures.append)
    assert "no answer to the commit" in str(failures[0].value)
    assert not job.committed()  # the thread learns it was cut
    job.finish()
    assert cut == ["interrupt", "release"]


@pytest_twisted.ensureDeferred
async def test_a_full_database_is_unavailable_and_reads_go_on(tmp_path):
    engine = engine_for(f"sqlite:///{tmp_path}/full.sqlite3")
    schema.migrate(engine)
    setup = SqlStore(engine)
    room = await make_room(setup)
    await setup.close()

    pool = engine.pool()
    tune = pool.openfun

    def no_room_to_grow(conn: Any) -> None:
        tune(conn)
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLITE_FULL beyond it

    pool.openfun = no_room_to_grow
    store = SqlStore(engine, pool=pool)
    try:
        stored = []
        for _ in range(500):
            try:
                stored.append(await store.append_message(new_message(room.id, content="x" * 3000)))
            except StoreUnavailable as e:
                assert "full" in str(e)
                break
        else:
            raise AssertionError("the database never filled up")
        page = await store.history(room.id, None, None, 1000)
        assert [m.seq for m in page.messages] == [m.seq for m in stored]
        assert (await store.get_room(room.id)).last_seq == len(stored)
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_postgresql_connections_carry_the_timeouts(pg_schema_url):
    engine = engine_for(pg_schema_url, database_timeout=2.5)
    store = SqlStore(engine)

    def settings(cursor: Any) -> tuple[Any, ...]:
        shown = []
        for name in ("statement_timeout", "idle_in_transaction_session_timeout", "search_path"):
            cursor.execute(f"SHOW {name}")
            shown.append(cursor.fetchone()[0])
        return (*shown, cursor.connection.get_dsn_parameters())

    try:
        statement, idle, search_path, dsn = await store.run(settings)
    finally:
        await store.close()
    assert (statement, idle) == ("2500ms", "2500ms")
    assert search_path.startswith("t_"), "the URL's own options were lost"
    assert dsn["keepalives"] == "1" and dsn["keepalives_idle"] == "2"
    assert dsn["keepalives_count"] == "3" and dsn["tcp_user_timeout"] == "2500"
    assert dsn["connect_timeout"] == "3"

    # Migrations may wait for another process's: no statement timeout there.
    migrating = engine.connect()
    try:
        cursor = migrating.cursor()
        cursor.execute("SHOW statement_timeout")
        assert cursor.fetchone()[0] == "0"
        assert migrating.get_dsn_parameters()["tcp_user_timeout"] == "2500"
    finally:
        migrating.close()


def test_a_parameter_the_url_names_is_the_urls(pg_schema_url):
    engine = engine_for(pg_schema_url + "&keepalives_idle=60&tcp_user_timeout=0")
    conn = engine.connect()
    try:
        dsn = conn.get_dsn_parameters()
    finally:
        conn.close()
    assert dsn["keepalives_idle"] == "60" and dsn["tcp_user_timeout"] == "0"
    assert dsn["keepalives_interval"] == "2"  # derived from the 5 s default


def test_database_timeout_is_a_positive_number_of_seconds():
    from chatd.config import ConfigError, load_config

    assert (
        load_config({"database_timeout": "2.5"}, environ={}, create_secret=False).database_timeout
        == 2.5
    )
    assert load_config({}, environ={}, create_secret=False).database_timeout == 5.0
    for bad in ("0", "-1", "soon"):
        with pytest.raises(ConfigError, match="database_timeout"):
            load_config({"database_timeout": bad}, environ={}, create_secret=False)
