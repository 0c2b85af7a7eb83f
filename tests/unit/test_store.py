"""The store (chatd/storage/store.py) on the real engines: SQLite in a
temporary file and PostgreSQL in a private schema (``pg_schema_url``)."""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, DeferredList, gatherResults

from chatd.domain.models import Message, NewMessage, Room
from chatd.errors import ChatError, ErrorCode, StoreUnavailable
from chatd.storage import schema
from chatd.storage.engines import PostgresEngine, SqliteEngine, engine_for
from chatd.storage.store import SqlStore

T0 = 1_700_000_000_000
_ids = itertools.count(1)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.sqlite3"
    return request.getfixturevalue("pg_schema_url")


@pytest_twisted.async_yield_fixture
async def open_store(db_url):
    """``open_store()`` migrates the test's database once and opens a
    SqlStore on it; every store still open is closed at the end."""
    opened: list[SqlStore] = []
    migrated = []

    def open_() -> SqlStore:
        engine = engine_for(db_url)
        if not migrated:
            schema.migrate(engine)
            migrated.append(True)
        store = SqlStore(engine)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        if store.pool.running:
            await store.close()


@pytest_twisted.async_yield_fixture
async def store(open_store):
    yield open_store()


def room(room_id: str | None = None, room_type: str = "public", name: str = "General") -> Room:
    return Room(
        id=room_id or f"room-{next(_ids)}",
        name=name,
        description="about",
        type=room_type,
        member_count=0,
        created_at_ms=T0,
        last_seq=0,
    )


def new_message(
    room_id: str, user: str = "alice", content: str | None = None, temp_id: str | None = None
) -> NewMessage:
    n = next(_ids)
    return NewMessage(
        f"m-{n}", room_id, user, content if content is not None else f"message {n}", temp_id, T0 + n
    )


async def make_room(
    store: SqlStore, creator: str = "alice", members: list[str] | None = None, **kwargs
) -> Room:
    return await store.create_room(room(**kwargs), creator, members or [])


async def fill(store: SqlStore, room_id: str, count: int) -> list[Message]:
    return await gatherResults([store.append_message(new_message(room_id)) for _ in range(count)])


# -- migrations ---------------------------------------------------------------------------------------


def _count_migration_rows(engine) -> list[tuple]:
    conn = engine.connect()
    try:
        cur = conn.cursor()
        cur.execute("SELECT version, name FROM schema_migrations ORDER BY version")
        return list(cur.fetchall())
    finally:
        conn.close()


def test_engine_for(db_url):
    engine = engine_for(db_url)
    assert isinstance(engine, SqliteEngine if db_url.startswith("sqlite") else PostgresEngine)
    with pytest.raises(ValueError):
        engine_for("mysql://x/y")


def test_migrations_applied_once_and_recorded(db_url):
    engine = engine_for(db_url)
    available = schema.available_migrations(engine)
    assert available and [m.version for m in available] == sorted(m.version for m in available)
    assert schema.migrate(engine) == [m.version for m in available]
    assert schema.migrate(engine) == []
    assert schema.current_version(engine) == available[-1].version
    assert _count_migration_rows(engine) == [(m.version, m.name) for m in available]


def test_concurrent_migrations_apply_once(db_url):
    """Processes starting together on one database apply each migration
    once (the migration lock).  The SQLite file is created (and switched to
    WAL) first: switching a brand-new file to WAL from several connections
    at once is a separate start-up race, not what this test is about."""
    engines = [engine_for(db_url) for _ in range(6)]
    engines[0].connect().close()
    barrier = threading.Barrier(len(engines))

    def migrate(engine):
        barrier.wait()
        return schema.migrate(engine)

    with ThreadPoolExecutor(len(engines)) as pool:
        results = list(pool.map(migrate, engines))
    versions = [m.version for m in schema.available_migrations(engines[0])]
    assert sorted(v for applied in results for v in applied) == versions
    assert [r for r in results if r] == [versions]
    assert [v for v, _ in _count_migration_rows(engines[0])] == versions


# -- rooms and members ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_create_room_dedups_creator(store):
    wanted = room(room_type="private", name="Secret")
    created = await store.create_room(wanted, "alice", ["bob", "alice", "carol", "bob"])
    assert created == Room(wanted.id, "Secret", "about", "private", 3, T0, 0)
    assert await store.members(wanted.id) == ["alice", "bob", "carol"]
    assert await store.get_room(wanted.id) == created


@pytest_twisted.ensureDeferred
async def test_create_room_creator_only(store):
    created = await make_room(store, "zed")
    assert created.member_count == 1 and created.last_seq == 0
    assert await store.members(created.id) == ["zed"]


@pytest_twisted.ensureDeferred
async def test_get_room_missing(store):
    assert await store.get_room("no-such-room") is None


@pytest_twisted.ensureDeferred
async def test_get_room_member_count_and_last_seq(store):
    r = await make_room(store, "alice", ["bob"])
    await fill(store, r.id, 3)
    assert await store.add_member(r.id, "carol", T0)
    got = await store.get_room(r.id)
    assert (got.member_count, got.last_seq) == (3, 3)
    await store.remove_member(r.id, "bob")
    got = await store.get_room(r.id)
    assert (got.member_count, got.last_seq) == (2, 3)


@pytest_twisted.ensureDeferred
async def test_membership(store):
    r = await make_room(store, "alice")
    assert await store.is_member(r.id, "alice") is True
    assert await store.is_member(r.id, "bob") is False
    assert await store.add_member(r.id, "bob", T0) is True
    assert await store.add_member(r.id, "bob", T0) is False  # idempotent
    assert await store.is_member(r.id, "bob") is True
    assert await store.members(r.id) == ["alice", "bob"]
    assert await store.remove_member(r.id, "bob") is True
    assert await store.remove_member(r.id, "bob") is False
    assert await store.is_member(r.id, "bob") is False
    assert await store.remove_member(r.id, "nobody") is False
    assert await store.is_member("no-such-room", "alice") is False
    assert await store.members("no-such-room") == []


# -- messages -------------------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_append_message_sequential_seqs(store):
    r = await make_room(store)
    stored = []
    for i in range(5):
        m = new_message(r.id, "bob", f"héllo {i} 👋", temp_id=f"t{i}" if i % 2 else None)
        got = await store.append_message(m)
        assert got == m.stored(i + 1)
        stored.append(got)
    assert [m.seq for m in stored] == [1, 2, 3, 4, 5]
    assert (await store.get_room(r.id)).last_seq == 5


@pytest_twisted.ensureDeferred
async def test_seqs_are_per_room(store):
    a = await make_room(store)
    b = await make_room(store)
    ds = [store.append_message(new_message(a.id if i % 3 else b.id)) for i in range(30)]
    results = await gatherResults(ds)
    assert [m.seq for m in results if m.chat_id == a.id] == list(range(1, 21))
    assert [m.seq for m in results if m.chat_id == b.id] == list(range(1, 11))


@pytest_twisted.ensureDeferred
async def test_group_commit_batches_and_keeps_order(store):
    r = await make_room(store)
    sizes: list[int] = []
    store.writer.observe_batch = sizes.append
    count = 200
    fired: list[int] = []
    messages = [new_message(r.id) for _ in range(count)]
    ds = []
    for index, m in enumerate(messages):
        d = store.append_message(m)
        d.addCallback(lambda result, index=index: fired.append(index) or result)
        ds.append(d)
    assert store.writer.queued > 0
    results = await gatherResults(ds)
    assert [m.seq for m in results] == list(range(1, count + 1))
    assert [m.id for m in results] == [m.id for m in messages]
    assert fired == list(range(count))  # results fire in arrival order
    assert sum(sizes) == count
    assert len(sizes) < count
    assert store.writer.queued == 0
    page = await store.history(r.id, None, None, count)
    assert [m.seq for m in page.messages] == list(range(1, count + 1))
    assert [m.id for m in page.messages] == [m.id for m in messages]


@pytest_twisted.ensureDeferred
async def test_max_batch_is_respected(open_store):
    store = open_store()
    store.writer._max_batch = 7  # a small batch, to watch the split
    r = await make_room(store)
    sizes: list[int] = []
    store.writer.observe_batch = sizes.append
    results = await fill(store, r.id, 50)
    assert [m.seq for m in results] == list(range(1, 51))
    assert max(sizes) <= 7 and sum(sizes) == 50


@pytest_twisted.ensureDeferred
async def test_missing_room_fails_alone_in_its_batch(store):
    r = await make_room(store)
    sizes: list[int] = []
    store.writer.observe_batch = sizes.append
    first = store.append_message(new_message(r.id))  # goes out alone
    good1 = store.append_message(new_message(r.id))  # these three share
    bad = store.append_message(new_message("no-such-room"))  # the next batch
    good2 = store.append_message(new_message(r.id))
    assert sizes == [1]
    assert (await first).seq == 1
    with pytest.raises(ChatError) as info:
        await bad
    assert info.value.code == ErrorCode.ROOM_NOT_FOUND
    assert (await good1).seq == 2
    assert (await good2).seq == 3
    assert sizes == [1, 3]
    assert (await store.get_room(r.id)).last_seq == 3
    assert [m.seq for m in (await store.history(r.id, None, None, 10)).messages] == [1, 2, 3]


@pytest_twisted.ensureDeferred
async def test_get_message(store):
    r = await make_room(store)
    m = new_message(r.id, "bob", "content", "tmp-1")
    stored = await store.append_message(m)
    assert (
        await store.get_message(m.id)
        == stored
        == Message(m.id, r.id, 1, "bob", "content", "tmp-1", m.created_at_ms)
    )
    assert await store.get_message("no-such-message") is None


@pytest_twisted.ensureDeferred
async def test_the_senders_name_is_stored_with_the_message(store):
    """``username`` goes into the same group-committed insert and comes back
    from every read: history, both join snapshots and get_message."""
    r = await make_room(store)
    named = NewMessage("m-named", r.id, "bob", "hi", None, T0 + 1, "Bob B.")
    plain = NewMessage("m-plain", r.id, "carol", "hey", None, T0 + 2)
    stored = await gatherResults([store.append_message(named), store.append_message(plain)])
    assert [(m.seq, m.username) for m in stored] == [(1, "Bob B."), (2, None)]
    assert stored[0].to_wire()["username"] == "Bob B." and "username" not in stored[1].to_wire()
    assert await store.get_message("m-named") == stored[0]
    assert await store.get_message("m-plain") == stored[1]
    page = await store.history(r.id, None, None, 10)
    assert page.messages == stored
    for since in (None, 0):
        snapshot = await store.join_snapshot(r.id, "bob", since, 10)
        assert [m.username for m in snapshot.page.messages] == ["Bob B.", None]


@pytest_twisted.ensureDeferred
async def test_the_username_migration_keeps_older_messages(db_url, monkeypatch):
    """A database from before migration 4 gets the column, and the messages
    it already held read back without a name."""
    engine = engine_for(db_url)
    every = schema.available_migrations
    monkeypatch.setattr(
        schema, "available_migrations", lambda e: [m for m in every(e) if m.version < 4]
    )
    schema.migrate(engine)
    conn = engine.connect()
    try:
        cur = conn.cursor()
        cur.execute(
            engine.sql(
                "INSERT INTO rooms (id, name, type, created_at, last_seq) VALUES (?, ?, ?, ?, ?)"
            ),
            ("old", "Old", "public", T0, 1),
        )
        cur.execute(
            engine.sql(
                "INSERT INTO messages (id, room_id, seq, user_id, content, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)"
            ),
            ("m-old", "old", 1, "alice", "from before", T0),
        )
        conn.commit()
    finally:
        conn.close()
    monkeypatch.setattr(schema, "available_migrations", every)
    assert 4 in schema.migrate(engine)
    store = SqlStore(engine)
    try:
        old = await store.get_message("m-old")
        assert old is not None and old.username is None and "username" not in old.to_wire()
        new = await store.append_message(NewMessage("m-new", "old", "bob", "x", None, T0, "Bob"))
        assert (new.seq, new.username) == (2, "Bob")
    finally:
        await store.close()


# -- history -------------------------------------------------------------------------------------------------------


def seqs(page) -> list[int]:
    return [m.seq for m in page.messages]


@pytest_twisted.ensureDeferred
async def test_history_paging(store):
    r = await make_room(store)
    other = await make_room(store)
    await fill(store, other.id, 4)
    await fill(store, r.id, 10)
    cases = [
        # (before, after, limit) -> (seqs, has_more)
        ((None, None, 3), ([8, 9, 10], True)),
        ((None, None, 10), (list(range(1, 11)), False)),
        ((None, None, 50), (list(range(1, 11)), False)),
        ((8, None, 3), ([5, 6, 7], True)),
        ((4, None, 3), ([1, 2, 3], False)),
        ((3, None, 5), ([1, 2], False)),
        ((1, None, 5), ([], False)),
        ((None, 2, 3), ([3, 4, 5], True)),
        ((None, 7, 3), ([8, 9, 10], False)),
        ((None, 7, 5), ([8, 9, 10], False)),
        ((None, 10, 5), ([], False)),
        ((None, 0, 4), ([1, 2, 3, 4], True)),
        ((6, 2, 10), ([3, 4, 5], False)),
        ((6, 2, 2), ([3, 4], True)),
        ((6, 2, 3), ([3, 4, 5], False)),
        ((3, 5, 10), ([], False)),
    ]
    for (before, after, limit), (expected, has_more) in cases:
        page = await store.history(r.id, before, after, limit)
        assert (seqs(page), page.has_more) == (expected, has_more), (before, after, limit)
        assert all(m.chat_id == r.id for m in page.messages)
    empty = await store.history("no-such-room", None, None, 10)
    assert (empty.messages, empty.has_more) == ([], False)


@pytest_twisted.ensureDeferred
async def test_history_walk_backwards_and_forwards(store):
    r = await make_room(store)
    await fill(store, r.id, 25)
    seen: list[int] = []
    before = None
    while True:
        page = await store.history(r.id, before, None, 7)
        seen = seqs(page) + seen
        if not page.has_more:
            break
        before = page.messages[0].seq
    assert seen == list(range(1, 26))
    seen, after = [], 0
    while True:
        page = await store.history(r.id, None, after, 7)
        seen += seqs(page)
        if not page.has_more:
            break
        after = page.messages[-1].seq
    assert seen == list(range(1, 26))


# -- join snapshot ----------------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_join_snapshot(store):
    r = await make_room(store, "alice", ["bob"], room_type="private")
    await fill(store, r.id, 10)
    assert await store.join_snapshot("no-such-room", "alice", None, 50) is None

    snap = await store.join_snapshot(r.id, "alice", None, 3)
    assert snap.room.id == r.id and snap.room.last_seq == 10 and snap.room.member_count == 2
    assert snap.is_member is True and snap.members == ["alice", "bob"]
    assert (seqs(snap.page), snap.page.has_more) == ([8, 9, 10], True)

    snap = await store.join_snapshot(r.id, "carol", None, 50)
    assert snap.is_member is False and snap.members == ["alice", "bob"]
    assert (seqs(snap.page), snap.page.has_more) == (list(range(1, 11)), False)

    snap = await store.join_snapshot(r.id, "bob", 7, 100)
    assert (seqs(snap.page), snap.page.has_more) == ([8, 9, 10], False)
    snap = await store.join_snapshot(r.id, "bob", 2, 3)
    assert (seqs(snap.page), snap.page.has_more) == ([3, 4, 5], True)
    snap = await store.join_snapshot(r.id, "bob", 0, 100)
    assert seqs(snap.page) == list(range(1, 11))
    snap = await store.join_snapshot(r.id, "bob", 10, 100)
    assert (snap.page.messages, snap.page.has_more) == ([], False)
    snap = await store.join_snapshot(r.id, "bob", 99, 100)
    assert (snap.page.messages, snap.page.has_more) == ([], False)


@pytest_twisted.ensureDeferred
async def test_join_snapshot_empty_room(store):
    r = await make_room(store, "alice")
    snap = await store.join_snapshot(r.id, "alice", None, 50)
    assert snap.room.last_seq == 0 and snap.page.messages == [] and snap.page.has_more is False


# -- reads and reactions ------------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_set_read_moves_forward_only(store):
    r = await make_room(store, "alice", ["bob"])
    msgs = await fill(store, r.id, 5)
    assert await store.read_pointer(r.id, "bob") == (0, None)
    assert await store.set_read(r.id, "bob", msgs[2].id, 3) is True
    assert await store.read_pointer(r.id, "bob") == (3, msgs[2].id)
    assert await store.set_read(r.id, "bob", msgs[1].id, 2) is False
    assert await store.set_read(r.id, "bob", msgs[2].id, 3) is False
    assert await store.read_pointer(r.id, "bob") == (3, msgs[2].id)
    assert await store.set_read(r.id, "bob", msgs[4].id, 5) is True
    assert await store.read_pointer(r.id, "bob") == (5, msgs[4].id)
    assert await store.read_pointer(r.id, "alice") == (0, None)
    # not a member: nothing to move
    assert await store.set_read(r.id, "carol", msgs[4].id, 5) is False
    assert await store.read_pointer(r.id, "carol") is None


@pytest_twisted.ensureDeferred
async def test_reactions(store):
    r = await make_room(store)
    m1, m2 = await fill(store, r.id, 2)
    assert await store.reactions(m1.id) == {}
    assert await store.set_reaction(m1.id, "bob", "👍", True, T0 + 1) is True
    assert await store.set_reaction(m1.id, "bob", "👍", True, T0 + 2) is False  # idempotent
    assert await store.set_reaction(m1.id, "alice", "👍", True, T0 + 3) is True
    assert await store.set_reaction(m1.id, "bob", "🎉", True, T0 + 4) is True
    assert await store.set_reaction(m2.id, "carol", "👍", True, T0 + 5) is True
    assert await store.reactions(m1.id) == {"👍": ["bob", "alice"], "🎉": ["bob"]}
    assert await store.reactions(m2.id) == {"👍": ["carol"]}
    assert await store.set_reaction(m1.id, "bob", "👍", False, T0 + 6) is True
    assert await store.set_reaction(m1.id, "bob", "👍", False, T0 + 7) is False  # idempotent
    assert await store.set_reaction(m1.id, "dave", "👍", False, T0 + 8) is False
    assert await store.reactions(m1.id) == {"👍": ["alice"], "🎉": ["bob"]}
    assert await store.reactions("no-such-message") == {}


# -- lifecycle ------------------------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_drain_fires_after_queued_writes(store):
    r = await make_room(store)
    idle = store.drain()
    assert idle.called  # nothing queued: fires at once
    done: list[int] = []
    ds = []
    for i in range(40):
        d = store.append_message(new_message(r.id))
        d.addCallback(lambda m, i=i: done.append(i) or m)
        ds.append(d)
    drained = store.drain()
    second = store.drain()
    assert not drained.called
    drained.addCallback(lambda _: done.append(-1))
    await drained
    await second
    assert done[:-1] == list(range(40)) and done[-1] == -1
    assert all(d.called for d in ds)
    await gatherResults(ds)


@pytest_twisted.ensureDeferred
async def test_drain_waits_for_failed_writes_too(store):
    bad = store.append_message(new_message("no-such-room"))
    bad.addErrback(lambda f: f.trap(ChatError))
    await store.drain()
    assert bad.called


@pytest_twisted.ensureDeferred
async def test_ping(store):
    await store.ping()  # fires (with nothing useful) while the database answers


@pytest_twisted.ensureDeferred
async def test_unreachable_database_is_store_unavailable():
    # Nothing listens on port 1: connecting is refused at once.
    store = SqlStore(engine_for("postgresql://chatd@127.0.0.1:1/nowhere"))
    try:
        with pytest.raises(StoreUnavailable):
            await store.ping()
        with pytest.raises(StoreUnavailable):
            await store.get_room("r")
        with pytest.raises(StoreUnavailable):
            await store.append_message(new_message("r"))
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_close_waits_for_pending_writes(open_store):
    store = open_store()
    r = await make_room(store)
    ds = [store.append_message(new_message(r.id)) for _ in range(30)]
    closed = store.close()
    assert isinstance(closed, Deferred)
    await closed
    assert all(d.called for d in ds)
    assert [m.seq for m in await gatherResults(ds)] == list(range(1, 31))
    assert not store.pool.running
    # the data is durable: a fresh store sees it
    fresh = open_store()
    assert (await fresh.get_room(r.id)).last_seq == 30
    await fresh.close()


# -- several processes on one database -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_two_stores_write_concurrently_gap_free(open_store):
    a = open_store()
    b = open_store()
    r = await make_room(a)
    per_store = 150
    da, db = [], []
    for _ in range(per_store):
        da.append(a.append_message(new_message(r.id, "alice")))
        db.append(b.append_message(new_message(r.id, "bob")))
    results_a = await gatherResults(da)
    results_b = await gatherResults(db)
    seqs_a = [m.seq for m in results_a]
    seqs_b = [m.seq for m in results_b]
    assert seqs_a == sorted(seqs_a) and seqs_b == sorted(seqs_b)
    assert sorted(seqs_a + seqs_b) == list(range(1, 2 * per_store + 1))
    assert (await b.get_room(r.id)).last_seq == 2 * per_store
    page = await a.history(r.id, None, 0, 1000)
    assert seqs(page) == list(range(1, 2 * per_store + 1))
    by_id = {m.id: m.seq for m in results_a + results_b}
    assert {m.id: m.seq for m in page.messages} == by_id


@pytest_twisted.ensureDeferred
async def test_one_unstorable_message_does_not_sink_its_batch(store):
    """U+0000 is valid JSON and valid Unicode, and the parsers let it
    through.  Whatever the store does with such a message (store it, or
    refuse it as INVALID_MESSAGE), the other users' messages that happen to
    share its group-commit batch must still be stored."""
    r = await make_room(store, "alice", ["bob"])
    sizes: list[int] = []
    store.writer.observe_batch = sizes.append
    first = store.append_message(new_message(r.id, "alice"))
    before = store.append_message(new_message(r.id, "alice", "before"))
    nul = store.append_message(new_message(r.id, "mallory", "a\x00b"))
    after = store.append_message(new_message(r.id, "bob", "after"))
    assert sizes == [1]
    await first
    (ok_before, got_before), (ok_nul, got_nul), (ok_after, got_after) = await DeferredList(
        [before, nul, after], consumeErrors=True
    )
    assert ok_before and ok_after, (
        f"messages sharing a batch with the NUL one failed: {got_before!r} / {got_after!r}"
    )
    assert got_before.content == "before" and got_after.content == "after"
    if ok_nul:
        assert got_nul.content == "a\x00b"
        assert (await store.get_message(got_nul.id)).content == "a\x00b"
    else:
        assert got_nul.check(ChatError) and got_nul.value.code == ErrorCode.INVALID_MESSAGE, got_nul
    assert sizes == [1, 3]
    page = await store.history(r.id, None, None, 10)
    assert [m.seq for m in page.messages] == list(range(1, len(page.messages) + 1))


# -- batched small transactions (session opens, offlines) -------------------------------


@pytest_twisted.ensureDeferred
async def test_session_opens_in_a_burst_share_transactions_and_keep_their_results(store):
    transactions: list[int] = []
    run_as = store.run_as

    def counting_run(owner, work, *args):
        transactions.append(len(args[0]) if args and isinstance(args[0], list) else 1)
        return run_as(owner, work, *args)

    store.run_as = counting_run
    opened = [store.open_session(f"u{i}", f"User {i}", 1000 + i, 10) for i in range(40)]
    results = await gatherResults(opened)
    assert results == [[] for _ in range(40)]
    assert len(transactions) < 40 and sum(transactions) == 40  # batched, nobody lost
    store.run_as = run_as
    for i in (0, 39):
        assert await store.user_exists(f"u{i}")


@pytest_twisted.ensureDeferred
async def test_a_failing_call_fails_alone_in_its_batch(store):
    def fragile(cur, value):
        if value == "bad":
            raise ValueError("this one is broken")
        cur.execute("SELECT 1")
        return value

    calls = [store.run_batched(fragile, v) for v in ("a", "b", "bad", "c")]
    outcomes = await DeferredList(calls, consumeErrors=True)
    assert [ok for ok, _ in outcomes] == [True, True, False, True]
    assert [r for ok, r in outcomes if ok] == ["a", "b", "c"]
    assert outcomes[2][1].check(ValueError, ChatError)  # a statement error, as from run()


@pytest_twisted.ensureDeferred
async def test_drain_waits_for_batched_transactions(store):
    pending = [store.close_session(f"v{i}", 5000) for i in range(10)]
    await store.drain()
    assert all(d.called for d in pending)


def test_sqlite_synchronous_is_the_settings(tmp_path):
    from chatd.storage.engines import SqliteEngine

    for setting, pragma in (("full", 2), ("normal", 1)):
        engine = engine_for(f"sqlite:///{tmp_path}/{setting}.db", setting)
        assert isinstance(engine, SqliteEngine)
        conn = engine.connect()
        try:
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == pragma
        finally:
            conn.close()


def test_sqlite_synchronous_normal_is_warned_about(tmp_path):
    from chatd.config import config_warnings, load_config

    base = {"data_dir": str(tmp_path), "jwt_secret": "s" * 40}
    assert not config_warnings(load_config(base, environ={}))
    warned = config_warnings(load_config({**base, "sqlite_synchronous": "normal"}, environ={}))
    assert any("sqlite_synchronous" in w for w in warned)
