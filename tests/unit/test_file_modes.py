"""What chatd writes to disk is its user's only, whatever the umask: the
data directory 0700, the SQLite file and its -wal, -shm and journal 0600,
the generated secret 0600.  Files left wider are narrowed (with a log
line); a directory the operator made wider is left alone and warned about."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from twisted.logger import capturedLogs

from chatd.config import SECRET_FILE_NAME, load_config
from chatd.storage.engines import engine_for


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextmanager
def umask(value: int) -> Iterator[None]:
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


def _write_something(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS probe (x)")
    conn.execute("INSERT INTO probe VALUES (1)")


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o000], ids=oct)
def test_a_new_database_is_private_whatever_the_umask(tmp_path, mask):
    directory = tmp_path / "new" / "chatd"
    database = directory / "chatd.sqlite3"
    with umask(mask):
        conn = engine_for(f"sqlite:///{database}").connect()
        try:
            _write_something(conn)  # WAL mode: the -wal and -shm files now exist
            files = [database, Path(f"{database}-wal"), Path(f"{database}-shm")]
            assert all(f.exists() for f in files)
            assert {str(f.name): mode(f) for f in files} == {f.name: 0o600 for f in files}
        finally:
            conn.close()
    assert mode(directory) == 0o700


def test_the_generated_secret_and_its_directory_are_private(tmp_path):
    data_dir = tmp_path / "share" / "chatd"
    with umask(0o022):
        config = load_config({"data_dir": str(data_dir)}, environ={})
    assert config.secret_generated
    assert mode(data_dir) == 0o700
    assert mode(data_dir / SECRET_FILE_NAME) == 0o600


def test_files_left_wider_are_narrowed_and_said(tmp_path):
    database = tmp_path / "old.sqlite3"
    with umask(0o022):  # what an older chatd left behind
        older = sqlite3.connect(database)
        older.execute("PRAGMA journal_mode=WAL")
        _write_something(older)
        older.commit()
    wide = [database, Path(f"{database}-wal"), Path(f"{database}-shm")]
    for path in wide:
        path.chmod(0o644)
    try:
        with capturedLogs() as events:
            engine_for(f"sqlite:///{database}").connect().close()
    finally:
        older.close()
    assert [mode(p) for p in wide if p.exists()] == [0o600] * len([p for p in wide if p.exists()])
    said = [e for e in events if e.get("event") == "storage.file_mode"]
    assert {e["path"] for e in said} == {str(p) for p in wide}
    assert all(e["mode"] == 0o644 and e["narrowed"] == 0o600 for e in said)


def test_an_open_directory_is_left_alone_and_warned_about(tmp_path):
    directory = tmp_path / "shared"
    directory.mkdir()
    directory.chmod(0o755)
    engine = engine_for(f"sqlite:///{directory}/chatd.sqlite3")
    with capturedLogs() as events:
        pool = engine.pool()
    pool.close()
    assert mode(directory) == 0o755
    assert mode(directory / "chatd.sqlite3") == 0o600
    (warning,) = [e for e in events if e.get("event") == "storage.file_mode"]
    assert warning["directory"] == str(directory) and warning["mode"] == 0o755
    assert warning["log_level"].name == "warn"


def test_a_private_directory_is_not_warned_about(tmp_path):
    directory = tmp_path / "private"
    directory.mkdir(mode=0o700)
    with capturedLogs() as events:
        engine_for(f"sqlite:///{directory}/chatd.sqlite3").pool().close()
    assert not [e for e in events if e.get("event") == "storage.file_mode"]
