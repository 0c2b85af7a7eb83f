"""chatd's text observer writes what twistd's would, line for line."""

from __future__ import annotations

import io
import os
import time

from twisted.logger import LogLevel, textFileLogObserver
from twisted.python.failure import Failure

from chatd.logs import TextLinesObserver, twistd_logs_to_stdout

NOW = time.time()


def _events() -> list[dict]:
    try:
        raise ZeroDivisionError("boom")
    except ZeroDivisionError:
        failure = Failure()
    return [
        {
            "log_format": "connection {connection} opened from {peer} as {user}",
            "log_level": LogLevel.info,
            "log_namespace": "chatd.session",
            "log_time": NOW,
            "connection": "c_1",
            "peer": "tcp:127.0.0.1:5000",
            "user": "alice",
        },
        {
            "log_format": "two\nlines",
            "log_level": LogLevel.warn,
            "log_namespace": "chatd",
            "log_time": NOW + 1.5,
        },
        {"log_format": "legacy", "log_system": "-", "log_time": NOW, "log_level": LogLevel.info},
        {"log_format": "no level", "log_namespace": "x", "log_time": NOW},
        {"log_format": "no time", "log_namespace": "x", "log_level": LogLevel.info},
        {"log_format": "{missing}", "log_namespace": "x", "log_time": NOW},
        {"log_format": "{v!r} {v:>6} {{braces}}", "v": "ab", "log_namespace": "x", "log_time": NOW},
        {"log_format": "{v.real} {w[0]}", "v": 3, "w": [7], "log_namespace": "x", "log_time": NOW},
        {"log_format": "{f()}", "f": lambda: "called", "log_namespace": "x", "log_time": NOW},
        {"log_format": "{} positional", "log_namespace": "x", "log_time": NOW},
        {"log_format": b"bytes {v}", "v": 1, "log_namespace": "x", "log_time": NOW},
        {"log_format": "{bad", "log_namespace": "x", "log_time": NOW},
        {"log_format": None, "log_namespace": "x", "log_time": NOW},
        {"message": ("old", "style"), "log_namespace": "x", "log_time": NOW},
        {
            "log_format": "failed",
            "log_failure": failure,
            "log_level": LogLevel.critical,
            "log_namespace": "chatd",
            "log_time": NOW,
        },
    ]


def test_every_line_is_twistds() -> None:
    for event in _events():
        ours, theirs = io.StringIO(), io.StringIO()
        TextLinesObserver(ours)(dict(event))
        textFileLogObserver(theirs)(dict(event))
        assert ours.getvalue() == theirs.getvalue(), event


def test_a_broken_stream_does_not_raise() -> None:
    class Broken(io.StringIO):
        def write(self, s: str) -> int:
            raise OSError("disk full")

    TextLinesObserver(Broken())(_events()[0])


def test_only_twistds_stdout_logging_is_replaced() -> None:
    assert twistd_logs_to_stdout({"nodaemon": True, "logfile": None})
    assert twistd_logs_to_stdout({"nodaemon": True, "logfile": "-"})
    assert not twistd_logs_to_stdout({"nodaemon": True, "logfile": "chatd.log"})
    assert not twistd_logs_to_stdout({"nodaemon": False, "logfile": None})
    assert not twistd_logs_to_stdout({"nodaemon": True, "syslog": True})
    assert not twistd_logs_to_stdout({"nodaemon": True, "logger": "my.observer"})
    assert not twistd_logs_to_stdout(None)


def test_twistds_own_options_say_where_it_logs(monkeypatch, tmp_path) -> None:
    from twisted.scripts.twistd import ServerOptions

    for name in [n for n in os.environ if n.startswith("CHATD_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)

    for argv, expected in (
        (["--nodaemon", "chatd"], True),
        (["--nodaemon", "--logfile=-", "chatd"], True),
        (["--nodaemon", "--logfile=chatd.log", "chatd"], False),
        (["--nodaemon", "--syslog", "chatd"], False),
    ):
        options = ServerOptions()
        options.parseOptions(argv)
        assert twistd_logs_to_stdout(options.subOptions.parent) is expected, argv
