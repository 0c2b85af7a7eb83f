"""The two SQL engines chatd runs on, and what differs between them:
driver, parameter style, connection set-up, the errors that mean "the
database is not reachable", and how migrations are serialised between
processes that start at the same time."""

from __future__ import annotations

import os
import sqlite3
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.extras
from twisted.enterprise import adbapi


@dataclass(frozen=True)
class Engine(ABC):
    name: str
    url: str

    # -- connection ---------------------------------------------------------
    @abstractmethod
    def connect(self) -> Any:
        """A plain blocking connection (used before the reactor runs)."""

    @abstractmethod
    def pool(self) -> adbapi.ConnectionPool:
        """The adbapi pool the running server uses."""

    # -- SQL ----------------------------------------------------------------
    def sql(self, query: str) -> str:
        """Queries are written with ``?``; translate to the driver's style."""
        return query

    def insert_many(self, cursor: Any, query: str, rows: list[tuple[Any, ...]]) -> None:
        cursor.executemany(self.sql(query), rows)

    @abstractmethod
    def lock_for_migrations(self, cursor: Any) -> None:
        """Begin a transaction that keeps two processes from applying the
        same migration at once."""

    @abstractmethod
    def is_unavailable(self, error: BaseException) -> bool:
        """True when ``error`` means the database could not be reached."""

    def is_bad_data(self, error: BaseException) -> bool:
        """True when the database refused a value itself (psycopg2 raises
        ValueError for a NUL in text): the request's fault, not the server's."""
        return isinstance(error, ValueError | self.data_error)

    data_error: type[BaseException] = ValueError


SQLITE_SYNCHRONOUS = ("full", "normal")


@dataclass(frozen=True)
class SqliteEngine(Engine):
    """``synchronous``: ``full`` fsyncs every commit (an ack survives power
    loss); ``normal`` leaves WAL commits to the OS and fsyncs at
    checkpoints (an ack survives chatd crashing or being killed, not the
    machine losing power) — the ``sqlite_synchronous`` setting."""

    synchronous: str = "full"
    data_error = sqlite3.DataError

    @property
    def path(self) -> str:
        return self.url[len("sqlite:///") :]

    def _prepare_directory(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)

    def connect(self) -> sqlite3.Connection:
        self._prepare_directory()
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        _tune_sqlite(conn, self.synchronous)
        return conn

    def pool(self) -> adbapi.ConnectionPool:
        self._prepare_directory()
        # One connection on one thread: SQLite has a single writer anyway,
        # and sqlite3 objects must not be shared between threads.
        return adbapi.ConnectionPool(
            "sqlite3",
            self.path,
            timeout=30,
            check_same_thread=False,
            cp_min=1,
            cp_max=1,
            cp_openfun=lambda conn: _tune_sqlite(conn, self.synchronous),
            cp_reconnect=False,
        )

    def lock_for_migrations(self, cursor: Any) -> None:
        cursor.execute("BEGIN IMMEDIATE")

    def is_unavailable(self, error: BaseException) -> bool:
        return isinstance(error, sqlite3.OperationalError | adbapi.ConnectionLost)


def _tune_sqlite(conn: sqlite3.Connection, synchronous: str = "full") -> None:
    # WAL lets readers (python -m chatd tools) run beside the server;
    # synchronous=FULL keeps "ack means committed" true across power loss;
    # group commit pays the fsync once per batch.  NORMAL (an operator's
    # choice) keeps it true across a crash of chatd, not of the machine.
    for attempt in range(50):
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError:
            # Switching a brand-new file to WAL fails at once (no busy
            # wait) when another process does the same; it is done soon.
            if attempt == 49:
                raise
            time.sleep(0.1)
    if synchronous not in SQLITE_SYNCHRONOUS:
        raise ValueError(f"sqlite synchronous must be one of {SQLITE_SYNCHRONOUS}")
    conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")


class PostgresEngine(Engine):
    data_error = psycopg2.DataError

    def connect(self) -> Any:
        return psycopg2.connect(self.url, connect_timeout=5)

    def pool(self) -> adbapi.ConnectionPool:
        return adbapi.ConnectionPool(
            "psycopg2",
            dsn=self.url,
            connect_timeout=5,
            cp_min=1,
            cp_max=4,
            cp_reconnect=False,
            cp_noisy=False,
        )

    def sql(self, query: str) -> str:
        return query.replace("?", "%s")

    def insert_many(self, cursor: Any, query: str, rows: list[tuple[Any, ...]]) -> None:
        # execute_values sends one statement for the whole batch instead of
        # one round trip per row.
        head, _, values = self.sql(query).partition(" VALUES ")
        if not values:
            raise ValueError("insert_many needs an INSERT ... VALUES (...) statement")
        psycopg2.extras.execute_values(cursor, head + " VALUES %s", rows, page_size=1000)

    def lock_for_migrations(self, cursor: Any) -> None:
        cursor.execute("SELECT pg_advisory_xact_lock(7417201)")

    def is_unavailable(self, error: BaseException) -> bool:
        return isinstance(
            error, psycopg2.OperationalError | psycopg2.InterfaceError | adbapi.ConnectionLost
        )


def engine_for(url: str, sqlite_synchronous: str = "full") -> Engine:
    if url.startswith("sqlite:///"):
        return SqliteEngine("sqlite", url, synchronous=sqlite_synchronous)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresEngine("postgresql", url)
    raise ValueError(f"unsupported database URL: {url}")
