"""Logging: human-readable by default (twistd's own format), or one JSON
object per line (``--log-format json``) for journald and log shippers.

chatd logs through ``twisted.logger`` with named fields, so both formats
carry the same facts.  Events about connections name the connection and
the user (``connection``, ``user``) and say what happened in ``event``
(``connection.open`` — with the user when the upgrade request carried a
good token —, ``auth.ok``, ``auth.failed``, ``error.sent``,
``connection.close``, ``storage.error``, ``redis.down``, ``redis.up``, …);
tokens and message content are never put into a log event.

Many values come from clients (a frame's ``type``, a token's ``sub``, a
``User-Agent`` in the access log line).  Both observers write every event
as one line that no value can break or forge, and that no value can turn
into a terminal escape: the text format escapes control characters in the
values (``escape``: C0 and C1 controls, DEL, U+2028/U+2029, the bidi
overrides, lone surrogates), and the JSON format, which escapes C0 by
nature, escapes the rest.  No event is lost to a value's text: what a
stream cannot encode is written escaped, and an event that cannot be
formatted at all still gives a line saying so.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import ILogObserver, formatEvent, formatEventAsClassicLogText, formatTime
from twisted.python.reflect import safe_repr
from zope.interface import implementer

LOG_FORMATS = ("text", "json")

_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
"""What a value must not put raw into a log line: C0 controls (ESC, CR,
LF, NUL, tab, ...), DEL and the C1 controls (U+009B is a CSI for a
terminal), the Unicode line and paragraph separators, the bidirectional
overrides and isolates (they reorder what an operator reads), and lone
surrogates (no encoder takes them)."""

_UNSAFE_IN_LINE = re.compile(
    r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
"""The same but for LF and tab: the last check on a whole text line,
where a newline of the message itself (a traceback) continues the event on
a line that starts with a tab, as twistd writes it."""

_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped_char(match: re.Match[str]) -> str:
    char = match.group()
    short = _SHORT.get(char)
    if short is not None:
        return short
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """``text`` with every character of ``_UNSAFE`` written as a Python
    escape (``\\x1b``, ``\\n``, ``\\u2028``, ``\\ud800``); printable text,
    whatever its script, is unchanged.  Backslashes are left as they are:
    the point is that a value can neither end the line nor drive the
    terminal, and ordinary text reads as it was sent."""
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(_escaped_char, text)


def _escape_line(text: str) -> str:
    if _UNSAFE_IN_LINE.search(text) is None:
        return text
    return _UNSAFE_IN_LINE.sub(_escaped_char, text)


class _Shown:
    """A logged value that is neither text nor a number, as the text
    format shows it: formatting (``{v}``, ``{v:>6}``, ``{v!r}``, attribute
    and item access, ``{f()}``) works as on the value, and whatever text
    comes out is escaped."""

    __slots__ = ("_value",)

    def __init__(self, value: Any) -> None:
        self._value = value

    def __format__(self, spec: str) -> str:
        return escape(format(self._value, spec))

    def __str__(self) -> str:
        return escape(str(self._value))

    def __repr__(self) -> str:
        return escape(repr(self._value))

    def __getattr__(self, name: str) -> Any:
        return shown(getattr(self._value, name))

    def __getitem__(self, key: Any) -> Any:
        return shown(self._value[key])

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return shown(self._value(*args, **kwargs))


def shown(value: Any) -> Any:
    """A value as the text format may show it: numbers, None and safe text
    as they are, anything else wrapped so that its text is escaped (once,
    also under ``{v!r}``)."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str) and _UNSAFE.search(value) is None:
        return value
    return _Shown(value)


_STRUCTURE = frozenset({"log_format", "log_failure", "log_level", "log_time", "log_flattened"})
"""Keys twisted.logger reads as the event's structure, not as values."""


def escaped_event(event: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``event`` for Twisted's own text formatting: every value
    (``log_io``, the access log line, included) is ``shown``, the structure
    is kept, and already flattened values are escaped too."""
    copy = {key: value if key in _STRUCTURE else shown(value) for key, value in event.items()}
    flattened = event.get("log_flattened")
    if isinstance(flattened, dict):
        copy["log_flattened"] = {key: shown(value) for key, value in flattened.items()}
    return copy


class _EscapedFields:
    """The event as ``str.format_map`` reads it: only the fields the format
    names are looked up, each ``shown`` (no copy of the event per line)."""

    __slots__ = ("_event",)

    def __init__(self, event: dict[str, Any]) -> None:
        self._event = event

    def __getitem__(self, key: str) -> Any:
        return shown(self._event[key])


def _write(stream: IO[str], text: str) -> None:
    """Write a line whatever the stream's encoding: text it cannot encode
    (a log read through a Latin-1 or ASCII terminal) goes out as escapes
    rather than the line being dropped."""
    try:
        stream.write(text)
    except UnicodeEncodeError:
        encoding = getattr(stream, "encoding", None) or "ascii"
        stream.write(text.encode(encoding, "backslashreplace").decode(encoding))
    stream.flush()


# Keys twisted.logger adds to every event, and legacy-log keys that repeat
# the message: not copied into the JSON object as fields.
_INTERNAL = {"format", "message", "isError", "system", "time", "why", "failure", "log_trace"}


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan", "inf": strict JSON has no such numbers
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
    return _json_line(json.dumps(record, ensure_ascii=False, separators=(",", ":")))


_JSON_UNSAFE = re.compile(r"[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
"""What ``json.dumps(ensure_ascii=False)`` leaves raw that a log line must
not carry (it escapes C0 itself)."""


def _json_escaped_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xD800 <= code <= 0xDFFF:
        # A lone surrogate: as the text "\\udXXX", because the JSON escape
        # of a lone surrogate is refused by strict parsers.
        return f"\\\\u{code:04x}"
    return f"\\u{code:04x}"


def _json_line(text: str) -> str:
    """The JSON line with ``_JSON_UNSAFE`` escaped.  Those characters can
    only stand inside strings there (keys and structure are ASCII), where
    ``\\uXXXX`` means the same character, so the record is unchanged."""
    if text.isascii():
        return text
    return _JSON_UNSAFE.sub(_json_escaped_char, text)


def _unformattable(event: dict[str, Any], error: BaseException) -> dict[str, Any]:
    """What is left of an event neither format could write: its level,
    namespace and time, and the error, so the line is never lost."""
    return {
        "log_format": "unformattable log event {event}: {error}",
        "log_level": event.get("log_level"),
        "log_namespace": str(event.get("log_namespace") or "-"),
        "log_time": event.get("log_time"),
        "event": safe_repr(event),
        "error": safe_repr(error),
    }


@implementer(ILogObserver)
class JsonLinesObserver:
    """Writes each event as one line of JSON and flushes it at once (a
    supervisor reading our stdout must see a line as soon as it is logged)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream

    def __call__(self, event: dict[str, Any]) -> None:
        stream = self._stream or sys.__stdout__ or sys.stdout
        _observe(stream, event, lambda e: event_as_json(e) + "\n")


def _observe(stream: IO[str], event: dict[str, Any], render: Callable[[Any], str | None]) -> None:
    """Write ``render(event)``; if rendering fails, a line that says so.
    Nothing raises out of an observer: a log line must never take the
    server down (a stream that fails is given up on for that line)."""
    try:
        try:
            text = render(event)
        except Exception as e:
            text = render(_unformattable(event, e))
        if text:
            _write(stream, text)
    except Exception:
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
        _observe(stream, event, self.format)

    def format(self, event: dict[str, Any]) -> str | None:
        """The line: values escaped (``shown``), then the whole line checked
        once more, so that nothing Twisted adds (a traceback's text) carries
        a control character either."""
        if "log_failure" in event:
            line = formatEventAsClassicLogText(escaped_event(event))
            return None if line is None else _escape_line(line)
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
        text = text.replace("\n", "\n\t")
        return _escape_line(f"{self._time(event.get('log_time'))} [{escape(system)}] {text}\n")

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
            return fmt.format_map(_EscapedFields(event))
        except Exception:
            pass
    return formatEvent(escaped_event(event))


@dataclass(frozen=True)
class LogTarget:
    """Where twistd, run with the given options, would write its log:
    ``stdout``, a ``file`` (``path``), ``syslog`` (``prefix``), or a
    ``custom`` observer of the operator's (``--logger``), which twistd
    installs in place of any other."""

    kind: str
    path: str | None = None
    prefix: str | None = None


def twistd_log_target(twistd_options: Any) -> LogTarget | None:
    """What twistd does with these options (a plugin's options'
    ``parent``): ``--logger`` wins, then ``--syslog``, then ``--logfile``
    (``-`` is stdout), then stdout under ``--nodaemon`` and ``twistd.log``
    for a daemon.  ``None`` outside twistd."""
    if twistd_options is None:
        return None
    try:
        if twistd_options.get("logger"):
            return LogTarget("custom")
        if twistd_options.get("syslog"):
            return LogTarget("syslog", prefix=twistd_options.get("prefix") or "twisted")
        logfile = twistd_options.get("logfile")
        if logfile == "-" or (twistd_options.get("nodaemon") and not logfile):
            return LogTarget("stdout")
        return LogTarget("file", path=logfile or "twistd.log")
    except Exception:
        return None


def twistd_logs_to_stdout(twistd_options: Any) -> bool:
    """Whether twistd, run with these options, writes its log to stdout."""
    target = twistd_log_target(twistd_options)
    return target is not None and target.kind == "stdout"


@implementer(ILogObserver)
class EscapingObserver:
    """Hands another observer (syslog's) each event with its values
    escaped, as chatd's own text observer writes them."""

    def __init__(self, observer: ILogObserver) -> None:
        self._observer = observer

    def __call__(self, event: dict[str, Any]) -> None:
        try:
            self._observer(escaped_event(event))
        except Exception:
            pass  # a log line must never take the server down


def observer_for(target: LogTarget | None, log_format: str) -> ILogObserver | None:
    """chatd's observer for twistd's log target, so that every target gets
    chatd's escaping (and JSON when asked): stdout and a log file (rotated
    as twistd rotates it: at 1 MB, and on SIGUSR1) get chatd's line
    observers; syslog gets twistd's, fed escaped events.  ``None`` leaves
    twistd's own (a ``--logger`` of the operator's, or text outside
    twistd)."""
    if target is None:
        return JsonLinesObserver() if log_format == "json" else None
    if target.kind == "custom":
        return None
    if target.kind == "syslog":
        from twisted.logger import LegacyLogObserverWrapper
        from twisted.python.syslog import SyslogObserver

        emit: Any = SyslogObserver(target.prefix or "twisted").emit  # a legacy observer
        return EscapingObserver(LegacyLogObserverWrapper(emit))
    stream: Any = None
    if target.kind == "file" and target.path is not None:
        stream = _rotated_log_file(target.path)
    return JsonLinesObserver(stream) if log_format == "json" else TextLinesObserver(stream)


def _rotated_log_file(path: str) -> Any:
    """The log file as twistd opens it for ``--logfile``, with its SIGUSR1
    rotation (unless the signal is taken already)."""
    import signal

    from twisted.python.logfile import LogFile

    log_file = LogFile.fromFullPath(path)
    if not signal.getsignal(signal.SIGUSR1):

        def rotate(signum: int, frame: Any) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(log_file.rotate)  # type: ignore[attr-defined]

        signal.signal(signal.SIGUSR1, rotate)
    return log_file
