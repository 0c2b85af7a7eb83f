"""Versioned SQL migrations, applied at start-up and recorded.

Migrations are ``migrations/NNNN_name.sql`` files written in the SQL both
engines understand (``BIGINT`` has integer affinity in SQLite); where a
step must differ, ``NNNN_name.<engine>.sql`` beside it replaces it for that
engine.  They run in order inside one transaction, under a lock that keeps
several chatd processes starting together from racing, and each applied
version is written to ``schema_migrations``.  This runs before the reactor
starts, with a plain blocking connection, so a database that cannot be
reached or migrated stops start-up with one clear error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

from chatd.clock import now_ms
from chatd.storage.engines import Engine

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)(?:\.(sqlite|postgresql))?\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def available_migrations(engine: Engine) -> list[Migration]:
    folder = resources.files("chatd.storage") / "migrations"
    common: dict[int, Migration] = {}
    specific: dict[int, Migration] = {}
    for entry in folder.iterdir():
        match = _FILE_NAME.match(entry.name)
        if not match:
            continue
        migration = Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8"))
        if match.group(3) is None:
            common[migration.version] = migration
        elif match.group(3) == engine.name:
            specific[migration.version] = migration
    return [m for _, m in sorted({**common, **specific}.items())]


def _statements(sql: str) -> list[str]:
    """Split a migration file on semicolons that end a line (our files keep
    to that, so no SQL parser is needed)."""
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";\n") if s.strip().rstrip(";")]


def migrate(engine: Engine) -> list[int]:
    """Apply every migration not yet recorded; return the versions applied."""
    conn = engine.connect()
    try:
        return _migrate(engine, conn)
    finally:
        conn.close()


def _migrate(engine: Engine, conn: Any) -> list[int]:
    """All pending migrations in ONE transaction under the migration lock:
    of several processes starting together, the first applies everything
    and the others find it done; a failing step leaves nothing half-applied."""
    applied: list[int] = []
    cur = conn.cursor()
    _begin(engine, cur)
    try:
        cur.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)"
        )
        for migration in available_migrations(engine):
            cur.execute(
                engine.sql("SELECT 1 FROM schema_migrations WHERE version = ?"),
                (migration.version,),
            )
            if cur.fetchone():
                continue
            for statement in _statements(migration.sql):
                cur.execute(statement)
            cur.execute(
                engine.sql(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)"
                ),
                (migration.version, migration.name, now_ms()),
            )
            applied.append(migration.version)
    except BaseException:
        _rollback(engine, conn, cur)
        raise
    _commit(engine, conn, cur)
    return applied


def _begin(engine: Engine, cur: Any) -> None:
    # sqlite3 runs in autocommit mode here, so transactions are explicit;
    # psycopg2 opens one implicitly and the advisory lock lives in it.
    engine.lock_for_migrations(cur)


def _commit(engine: Engine, conn: Any, cur: Any) -> None:
    if engine.name == "sqlite":
        cur.execute("COMMIT")
    else:
        conn.commit()


def _rollback(engine: Engine, conn: Any, cur: Any) -> None:
    if engine.name == "sqlite":
        cur.execute("ROLLBACK")
    else:
        conn.rollback()


def current_version(engine: Engine) -> int:
    conn = engine.connect()
    try:
        cur = conn.cursor()
        cur.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        return int(cur.fetchone()[0])
    finally:
        conn.close()
