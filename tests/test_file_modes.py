"""The README's quick start outside systemd (umask 022, nothing configured):
the data directory chatd creates is 0700, and the SQLite file that holds
every DM, its -wal and -shm files, and the generated secret are 0600."""

from __future__ import annotations

import os
import urllib.request

from tests.daemon import Daemon, clean_env, free_port, run_module
from tests.unit.test_file_modes import mode, umask


def test_the_quick_start_under_umask_022_keeps_the_data_private(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = clean_env(HOME=str(home))
    env.pop("XDG_DATA_HOME", None)
    env.pop("STATE_DIRECTORY", None)
    port = free_port()
    with umask(0o022):  # inherited by the daemon
        daemon = Daemon(["--listen", f"tcp:{port}:interface=127.0.0.1"], env, str(tmp_path))
    try:
        daemon.wait_healthy(port)
        with umask(0o022):
            token = run_module(["token", "alice"], env, str(tmp_path))
        assert token.returncode == 0, token.stderr
        # a request that reads the database: the pool opens its connection,
        # and with it the -wal and -shm files
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as ready:
            assert ready.status == 200
        data_dir = home / ".local" / "share" / "chatd"
        database = data_dir / "chatd.sqlite3"
        files = {
            name: data_dir / name
            for name in ("chatd.sqlite3", "chatd.sqlite3-wal", "chatd.sqlite3-shm", "jwt-secret")
        }
        assert all(path.exists() for path in files.values()), os.listdir(data_dir)
        assert {name: mode(path) for name, path in files.items()} == dict.fromkeys(files, 0o600)
        assert mode(data_dir) == 0o700
        assert database.stat().st_size > 0
    finally:
        assert daemon.terminate(), daemon.output()
