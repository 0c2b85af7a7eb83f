"""Log lines no client can break, forge or turn into terminal escapes
(issue 15, item 10), and no event lost to a value's text: chatd's text and
JSON observers (chatd/logs.py) fed the events chatd logs with values a
client chose: an unauthenticated frame's ``type``, a token's ``sub``, a
``User-Agent`` in the access log line."""

from __future__ import annotations

import io
import json
import re
import time
from typing import Any

import pytest
from twisted.logger import Logger, LoggingFile, LogLevel
from twisted.python.failure import Failure

from chatd.logs import JsonLinesObserver, TextLinesObserver, escape
from chatd.web.site import access_log_line

NOW = time.time()
HOSTILE = "\x1b[2J\x1b]0;owned\x07\r\n2026-12-01T00:00:00+0000 [chatd#info] forged\x00\x7f\x9b\x85"
HOSTILE += "\u2028\u2029\u202e\u2066\t"
RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _event(fmt: str, **fields: Any) -> dict[str, Any]:
    return {
        "log_format": fmt,
        "log_level": LogLevel.info,
        "log_namespace": "chatd.protocol.websocket",
        "log_time": NOW,
        **fields,
    }


def _text(event: dict[str, Any]) -> str:
    stream = io.StringIO()
    TextLinesObserver(stream)(event)
    return stream.getvalue()


def _one_clean_line(text: str) -> None:
    assert text.endswith("\n") and text.count("\n") == 1, repr(text)
    assert not RAW_CONTROL.search(text), repr(text)


def test_an_unauthenticated_frames_type_is_escaped():
    line = _text(
        _event(
            "sent {code} to {connection} ({user}) for {request}",
            event="error.sent",
            code="UNAUTHORIZED",
            connection="c_1",
            user=None,
            request=HOSTILE,
        )
    )
    _one_clean_line(line)
    assert line.endswith(f" for {escape(HOSTILE)}\n")
    assert "\\x1b[2J\\x1b]0;owned\\x07\\r\\n2026" in line and "forged\\x00\\x7f\\x9b\\x85" in line
    assert "\\u2028\\u2029\\u202e\\u2066\\t" in line


def test_a_tokens_sub_is_escaped():
    for fmt in (
        "connection {connection} authenticated as {user}",
        "connection {connection} opened from {peer} as {user}",
        "connection {connection} ({user}) closed with {code} {reason}",
    ):
        line = _text(
            _event(
                fmt, connection="c_1", peer="tcp4:127.0.0.1:1", user=HOSTILE, code=1000, reason=""
            )
        )
        _one_clean_line(line)
        assert escape(HOSTILE) in line


class _Request:
    """What ``access_log_line`` reads of a request."""

    uri = b"/healthz?token=secret"
    method = b"GET"
    clientproto = b"HTTP/1.1"
    code = 200
    sentLength = 42

    def __init__(self, agent: bytes) -> None:
        self._agent = agent

    def getHeader(self, name: bytes) -> bytes | None:
        return self._agent if name == b"user-agent" else None

    def getClientAddress(self) -> Any:
        class Address:
            host = "127.0.0.1"

        return Address()


def test_a_user_agent_in_the_access_log_is_escaped():
    """The access log goes through twisted.web's log file, a LoggingFile:
    one ``{log_io}`` event per line, as the Site writes it."""
    stream = io.StringIO()
    observer = TextLinesObserver(stream)
    access = LoggingFile(Logger(namespace="twisted.web", observer=observer))
    for agent in (HOSTILE.replace("\r", "").replace("\n", "").encode(), b"bad utf-8 \xff\x1b[0m"):
        access.write(access_log_line("[01/Dec/2026:00:00:00 +0000]", _Request(agent)) + "\n")
    access.flush()
    lines = stream.getvalue()
    assert lines.count("\n") == 2
    for line in lines.splitlines(keepends=True):
        _one_clean_line(line)
    assert "\\x1b[2J\\x1b]0;owned\\x07" in lines and "\\xff\\x1b[0m" in lines
    assert "secret" not in lines


def test_a_newline_of_the_message_itself_continues_the_event_as_twistd_writes_it():
    line = _text(_event("first\nsecond {v}", v="a\nb"))
    assert line.endswith("first\n\tsecond a\\nb\n")


def test_a_traceback_with_hostile_text_stays_on_continuation_lines():
    try:
        raise ValueError(f"bad frame {HOSTILE}")
    except ValueError:
        failure = Failure()
    line = _text(_event("handler for {request} failed", request=HOSTILE, log_failure=failure))
    assert not RAW_CONTROL.search(line), repr(line)
    first, *rest = line.rstrip("\n").split("\n")
    assert escape(HOSTILE) in first
    assert rest and all(part.startswith("\t") for part in rest), rest


def test_formatting_still_works_on_escaped_values():
    line = _text(
        _event(
            "{v!r} {v:>6}|{n:03d} {w[0]} {o.real} {f()}",
            v="\x1b",
            n=7,
            w=["\r"],
            o=3,
            f=lambda: "\x00",
        )
    )
    assert line.endswith("'\\x1b'      \\x1b|007 \\r 3 \\x00\n"), repr(line)


def test_printable_text_is_written_as_it_was_sent():
    text = 'Zoë 東京 🙂 C:\\path "quoted" ‘curly’'
    assert escape(text) == text
    assert _text(_event("{v}", v=text)).endswith(f" {text}\n")


# -- no event lost to a value's text ------------------------------------------------------


def _utf8_stream() -> io.TextIOWrapper:
    return io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict", newline="\n")


def _written(stream: io.TextIOWrapper) -> str:
    stream.flush()
    return stream.buffer.getvalue().decode("utf-8")  # type: ignore[attr-defined]


SURROGATE_EVENTS = [
    _event(
        "connection {connection} opened from {peer} as {user}",
        connection="c_1",
        peer="p",
        user="\ud800",
    ),
    _event(
        "connection {connection} ({user}) closed with {code} {reason}",
        connection="c_1",
        user="x\udfffy",
        code=1000,
        reason="",
    ),
    _event(
        "sent {code} to {connection} for {request}",
        code="E",
        connection="c_1",
        request=b"\xed\xa0\x80".decode("utf-8", "surrogateescape"),
    ),
]


@pytest.mark.parametrize("event", SURROGATE_EVENTS)
def test_a_lone_surrogate_loses_no_text_line(event):
    stream = _utf8_stream()
    TextLinesObserver(stream)(dict(event))
    line = _written(stream)
    _one_clean_line(line)
    assert "c_1" in line and "\\ud" in line


@pytest.mark.parametrize("event", SURROGATE_EVENTS)
def test_a_lone_surrogate_loses_no_json_line(event):
    stream = _utf8_stream()
    JsonLinesObserver(stream)(dict(event))
    line = _written(stream)
    assert line.endswith("\n") and line.count("\n") == 1

    def refuse(name: str) -> Any:
        raise ValueError(name)

    record = json.loads(line, parse_constant=refuse)
    assert record["connection"] == "c_1"
    text = record.get("user") or record.get("request")
    assert "\\ud" in text  # the surrogate as text, which any parser takes
    assert text.encode("utf-8")


def test_json_lines_escape_what_json_leaves_raw():
    stream = io.StringIO()
    JsonLinesObserver(stream)(_event("for {request}", request=HOSTILE, ratio=float("nan")))
    line = stream.getvalue()
    assert line.count("\n") == 1 and not RAW_CONTROL.search(line), repr(line)
    assert "\\u009b" in line and "\\u2028" in line and "\\u202e" in line
    record = json.loads(line)
    assert record["request"] == HOSTILE  # the same value, escaped on the way
    assert record["ratio"] == "nan"


def test_a_stream_that_cannot_encode_the_text_still_gets_the_line():
    ascii_stream = io.TextIOWrapper(io.BytesIO(), encoding="ascii", errors="strict")
    TextLinesObserver(ascii_stream)(_event("authenticated as {user}", user="Zoë"))
    ascii_stream.flush()
    assert ascii_stream.buffer.getvalue().endswith(b"authenticated as Zo\\xeb\n")  # type: ignore[attr-defined]


class _Unprintable:
    def __format__(self, spec: str) -> str:
        raise RuntimeError("no format")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    __str__ = __repr__


@pytest.mark.parametrize("observer", [TextLinesObserver, JsonLinesObserver])
def test_an_unformattable_event_still_gives_a_line(observer):
    stream = io.StringIO()
    observer(stream)(_event("value {v}", v=_Unprintable()))
    assert stream.getvalue().count("\n") >= 1
    assert "format" in stream.getvalue()
