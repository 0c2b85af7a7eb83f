"""Logging: human-readable by default (twistd's own format), or one JSON
object per line (``--log-format json``) for journald and log shippers.

chatd logs through ``twisted.logger`` with named fields, so both formats
carry the same facts.  Events about connections name the connection and
the user (``connection``, ``user``) and say what happened in ``event``
(``connection.open`` — with the user when the upgrade request carried a
good token —, ``auth.ok``, ``auth.failed``, ``error.sent``,
``connection.close``, ``storage.error``, ``redis.down``, ``redis.up``, …);
tokens and message content are never put into a log event.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import ILogObserver, formatEvent, formatEventAsClassicLogText, formatTime
from zope.interface import implementer

LOG_FORMATS = ("text", "json")

# Keys twisted.logger adds to every event, and legacy-log keys that repeat
# the message: not copied into the JSON object as fields.
_INTERNAL = {"format", "message", "isError", "system", "time", "why", "failure", "log_trace"}


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)


def event_as_json(event: dict[str, Any]) -> str:
    """One log event as a JSON object: time (UTC, ISO 8601), level,
    namespace, the formatted message, then the event's own fields."""
    stamp = event.get("log_time")
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(stamp, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
        if isinstance(stamp, int | float)
        else None,
        "level": getattr(event.get("log_level"), "name", "info"),
        "namespace": event.get("log_namespace") or event.get("system") or "-",
        "message": formatEvent(event),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in _INTERNAL or key in record:
            continue
        record[key] = _plain(value)
    failure = event.get("log_failure")
    if failure is not None:
        record["error"] = f"{failure.type.__name__}: {failure.getErrorMessage()}"
        record["traceback"] = failure.getTraceback()
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


@implementer(ILogObserver)
class JsonLinesObserver:
    """Writes each event as one line of JSON and flushes it at once (a
    supervisor reading our stdout must see a line as soon as it is logged)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream

    def __call__(self, event: dict[str, Any]) -> None:
        stream = self._stream or sys.__stdout__ or sys.stdout
        try:
            stream.write(event_as_json(event) + "\n")
            stream.flush()
        except Exception:  # a log line must never take the server down
            pass


@implementer(ILogObserver)
class TextLinesObserver:
    """twistd's own text format, ``2026-12-01T20:11:35+0000
    [chatd.session#info] message``, line for line what twistd's observer
    writes to stdout, and flushed as it does, but cheaper: twistd formats
    the time stamp (local zone and all) for every line, and chatd logs two
    lines per connection, so that was about a tenth of the CPU of a
    connection.  The prefix is made once per second here.  Events with a
    failure are Twisted's to format (the traceback)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream
        self._second: int | None = None
        self._stamp = "-"

    def __call__(self, event: dict[str, Any]) -> None:
        stream = self._stream or sys.__stdout__ or sys.stdout
        try:
            text = self.format(event)
            if text:
                stream.write(text)
                stream.flush()
        except Exception:  # a log line must never take the server down
            pass

    def format(self, event: dict[str, Any]) -> str | None:
        if "log_failure" in event:
            return formatEventAsClassicLogText(event)
        text = _message(event)
        if not text:
            return None
        system = event.get("log_system")
        if system is None:
            level = event.get("log_level")
            system = f"{event.get('log_namespace', '-')}#{level.name if level is not None else '-'}"
        else:
            try:
                system = str(system)
            except Exception:
                system = "UNFORMATTABLE"
        return f"{self._time(event.get('log_time'))} [{system}] {text.replace(chr(10), chr(10) + chr(9))}\n"

    def _time(self, when: Any) -> str:
        if not isinstance(when, int | float):
            return formatTime(when)
        second = int(when)
        if second != self._second:
            self._second, self._stamp = second, formatTime(second)
        return self._stamp


def _message(event: dict[str, Any]) -> str:
    """``formatEvent``'s text.  A plain format string (no ``{call()}``,
    which only Twisted's formatter knows) is ``str.format_map``'s, in C;
    anything it cannot format is Twisted's, with Twisted's error text."""
    fmt = event.get("log_format")
    if type(fmt) is str and "()" not in fmt and "log_flattened" not in event:
        try:
            return fmt.format_map(event)
        except Exception:
            pass
    return formatEvent(event)


def twistd_logs_to_stdout(twistd_options: Any) -> bool:
    """Whether twistd, run with these options (a plugin's options'
    ``parent``), will write its text log to stdout: ``--nodaemon`` with no
    log file or ``--logfile=-``, and neither ``--syslog`` nor ``--logger``.
    That is where chatd's own observer may stand in for twistd's; a log
    file (with its rotation) or syslog stays twistd's."""
    if twistd_options is None:
        return False
    try:
        if twistd_options.get("syslog") or twistd_options.get("logger"):
            return False
        logfile = twistd_options.get("logfile")
        return bool(twistd_options.get("nodaemon")) and logfile in (None, "", "-")
    except Exception:
        return False
