"""The two SQL engines chatd runs on, and what differs between them:
driver, parameter style, connection set-up, the errors that mean "the
database is not reachable", how a statement stuck on a silent connection
is cut short, and how migrations are serialised between processes that
start at the same time."""

from __future__ import annotations

import contextlib
import math
import os
import socket
import sqlite3
import stat
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
from twisted.enterprise import adbapi
from twisted.logger import Logger

from chatd.config import make_private_directory

log = Logger()

DATABASE_TIMEOUT = 5.0
"""The ``database_timeout`` setting's default, in seconds."""


class Interrupter(Protocol):
    """Cuts one pool thread's wait on its connection short."""

    def interrupt(self) -> None:
        """From the reactor thread: make the waiting call fail now."""

    def release(self) -> None:
        """From the pool thread, once it no longer waits on the connection."""


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

    @property
    def request_timeout(self) -> float | None:
        """How long the server waits for one transaction before answering
        UNAVAILABLE (None: as long as it takes)."""
        return None

    def interrupter(self, connection: Any) -> Interrupter | None:
        """Made on the pool thread before a transaction, so that the
        reactor thread can cut short whatever that thread then waits for
        on ``connection`` (None: nothing can)."""
        return None

    def connection_broken(self, error: BaseException, connection: Any) -> bool:
        """True when ``error`` left ``connection`` unusable, so that the
        transaction is worth one more try on a new connection."""
        return self.is_unavailable(error)

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

PRIVATE_FILE_MODE = 0o600
SQLITE_COMPANIONS = ("", "-wal", "-shm", "-journal")
"""The database file and the files SQLite keeps beside it: each holds
messages, so each is readable by chatd's user only."""


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

    def _prepare_files(self) -> None:
        """The directory 0700 and the database 0600, whatever the umask.
        SQLite creates its -wal, -shm and journal files with the database
        file's mode, so creating that one first covers them; files left
        wider by an older chatd are narrowed, with a log line each."""
        make_private_directory(os.path.dirname(os.path.abspath(self.path)))
        with contextlib.suppress(FileExistsError):
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))
        for suffix in SQLITE_COMPANIONS:
            _narrow_file(self.path + suffix)

    def connect(self) -> sqlite3.Connection:
        self._prepare_files()
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        _tune_sqlite(conn, self.synchronous)
        return conn

    def pool(self) -> adbapi.ConnectionPool:
        self._prepare_files()
        _warn_if_open_directory(os.path.dirname(os.path.abspath(self.path)))
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

    def interrupter(self, connection: Any) -> Interrupter | None:
        if not isinstance(connection, sqlite3.Connection):
            return None  # the placeholder of a lost one
        return _SqliteInterrupter(connection)

    def lock_for_migrations(self, cursor: Any) -> None:
        cursor.execute("BEGIN IMMEDIATE")

    def is_unavailable(self, error: BaseException) -> bool:
        # OperationalError covers SQLITE_FULL ("database or disk is full"),
        # SQLITE_IOERR, SQLITE_BUSY and SQLITE_CANTOPEN.
        return isinstance(error, sqlite3.OperationalError | adbapi.ConnectionLost)


def _narrow_file(path: str) -> None:
    """Take group and other access away from one of the database's files
    (an older chatd, or another tool, may have created it 0644)."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return
    if not mode & 0o077:
        return
    try:
        os.chmod(path, mode & 0o700)
    except OSError as e:
        log.warn(
            "{path} is mode {mode:04o} (other users can read messages) and cannot be narrowed: {error}",
            event="storage.file_mode",
            path=path,
            mode=mode,
            error=e.strerror,
        )
        return
    log.info(
        "narrowed {path} from mode {mode:04o} to {narrowed:04o}: it holds messages",
        event="storage.file_mode",
        path=path,
        mode=mode,
        narrowed=mode & 0o700,
    )


def _warn_if_open_directory(directory: str) -> None:
    """A directory the operator made is left as it is (it may be shared
    on purpose), but said once: its files are 0600, their names are not
    hidden from other users."""
    try:
        mode = stat.S_IMODE(os.stat(directory).st_mode)
    except OSError:
        return
    if mode & 0o077:
        log.warn(
            "the database directory {directory} is mode {mode:04o}: other users can list it"
            " (the files in it are 0600); chmod 700 {directory} to close it",
            event="storage.file_mode",
            directory=directory,
            mode=mode,
        )


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


@dataclass(frozen=True)
class PostgresEngine(Engine):
    """``timeout`` (the ``database_timeout`` setting) bounds every wait on
    the server: connecting, each statement (server side), a transaction
    left idle, and unacknowledged data or silence on the TCP connection
    (client side: ``tcp_user_timeout`` and keepalives).  A server that
    stops answering while the connection stays open (a network partition)
    is noticed by none of those, so the store also fails the request after
    ``request_timeout`` and cuts the connection (``interrupter``)."""

    timeout: float = DATABASE_TIMEOUT
    data_error = psycopg2.DataError

    @property
    def request_timeout(self) -> float | None:
        return self.timeout

    def connect(self) -> Any:
        # Migrations: no statement timeout (a long one, or a wait for
        # another process's migration lock, is fine before serving).
        return psycopg2.connect(self.url, **self.connection_settings(for_requests=False))

    def pool(self) -> adbapi.ConnectionPool:
        return adbapi.ConnectionPool(
            "psycopg2",
            dsn=self.url,
            cp_min=1,
            cp_max=4,
            cp_reconnect=False,
            cp_noisy=False,
            **self.connection_settings(for_requests=True),
        )

    def connection_settings(self, for_requests: bool) -> dict[str, Any]:
        """libpq parameters derived from ``timeout``; a parameter the URL
        names itself (``?keepalives_idle=60``) is the URL's."""
        given = _url_parameters(self.url)
        seconds = self.timeout
        millis = max(1, round(seconds * 1000))
        derived: dict[str, Any] = {
            "connect_timeout": max(2, math.ceil(seconds)),  # libpq's minimum is 2
            "keepalives": 1,
            "keepalives_idle": max(1, round(seconds)),
            "keepalives_interval": max(1, round(seconds / 3)),
            "keepalives_count": 3,
            "tcp_user_timeout": millis,
        }
        settings = {key: value for key, value in derived.items() if key not in given}
        if for_requests:
            ours = f"-c statement_timeout={millis} -c idle_in_transaction_session_timeout={millis}"
            # The URL's own options come last, so that its settings win.
            settings["options"] = f"{ours} {given['options']}" if given.get("options") else ours
        return settings

    def interrupter(self, connection: Any) -> Interrupter | None:
        try:
            fd = connection.fileno()
        except Exception:  # closed, or the placeholder of a lost one
            return None
        try:
            # A socket object of our own on a duplicate descriptor: libpq
            # closes its descriptor when the connection fails, and the
            # number may be reused at once; ours names this socket still.
            return _SocketInterrupter(socket.socket(fileno=os.dup(fd)))
        except OSError:
            return None

    def connection_broken(self, error: BaseException, connection: Any) -> bool:
        # A statement timeout or a lock the server refused leaves the
        # connection open: retrying would only wait as long again.
        if not self.is_unavailable(error):
            return False
        return getattr(connection, "closed", 1) != 0

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
        # OperationalError includes QueryCanceled (statement_timeout).
        return isinstance(
            error, psycopg2.OperationalError | psycopg2.InterfaceError | adbapi.ConnectionLost
        )


def _url_parameters(url: str) -> dict[str, str]:
    try:
        return dict(psycopg2.extensions.parse_dsn(url))
    except psycopg2.Error:
        return {}  # libpq says what is wrong with it when connecting


class _SocketInterrupter:
    """``shutdown`` wakes a thread blocked on the socket (libpq then
    reports "server closed the connection") and sends nothing the server
    could take for a request; the connection is dropped afterwards."""

    __slots__ = ("_socket",)

    def __init__(self, sock: socket.socket) -> None:
        self._socket = sock

    def interrupt(self) -> None:
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)

    def release(self) -> None:
        self._socket.close()


class _SqliteInterrupter:
    """sqlite3's ``interrupt()`` is meant to be called from another thread."""

    __slots__ = ("_connection",)

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def interrupt(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._connection.interrupt()

    def release(self) -> None:
        return None


def engine_for(
    url: str, sqlite_synchronous: str = "full", database_timeout: float = DATABASE_TIMEOUT
) -> Engine:
    if url.startswith("sqlite:///"):
        return SqliteEngine("sqlite", url, synchronous=sqlite_synchronous)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresEngine("postgresql", url, timeout=database_timeout)
    raise ValueError(f"unsupported database URL: {url}")
