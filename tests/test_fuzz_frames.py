"""Random and mutated frames against a live ``twistd -n chatd``, on every
wire binding: native ``/ws``, ``/ws/seed000``, ``/ws/chatflow``, the
WebSocket on ``/`` (whose first frame picks the dialect) and Socket.IO over
WebSocket.

The frames (hypothesis): mutations of each dialect's valid requests (a
field replaced by a value of any JSON type, deleted, or an unknown one
added; the event renamed; numbers past 2^63 and past Python's 4,300-digit
limit, NaN and Infinity, lone surrogates, control characters), random JSON
of any type, text that is not JSON, nesting deeper than any parser allows,
binary frames, invalid UTF-8 in text frames and messages over the size
limit, and for Socket.IO every Engine.IO and Socket.IO packet type with
those bodies.

After each frame the server must:

* answer it with an error or ignore it (a frame that is no request at all
  must get ``INVALID_MESSAGE`` where the dialect promises one), never with
  ``SERVER_ERROR``, and only with strict JSON;
* keep the connection: a normal request on it is answered; unless the
  frame breaks the WebSocket or Engine.IO protocol, which must close it
  (with 1007 for invalid UTF-8, 1009 for an oversized message), and then a
  new connection works;
* stay healthy: ``/healthz`` answers, and its log gets no traceback.

The default budget is small (``DEFAULT_EXAMPLES`` per dialect, the same
examples every run).  A larger, random run is a separate command::

    FUZZ_EXAMPLES=3000 .venv/bin/python -m pytest -q tests/test_fuzz_frames.py

(``--hypothesis-seed=N`` replays one).  ``FUZZ_EXAMPLES`` is not a
``CHATD_*`` variable on purpose: chatd refuses unknown ones, and this one is
the test's, never passed to the server.
"""

from __future__ import annotations

import copy
import json
import os
import re
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from chatd.auth import mint_token
from chatd.bindings.codec import json_object
from chatd.bindings.dialects import root_dialects
from chatd.config import SETTINGS_BY_NAME, Config
from tests.daemon import Daemon, clean_env, free_port
from tests.syncclient import Client

SECRET = "fuzz-test-secret-" + "x" * 24
TIMEOUT = 5.0
DEFAULT_EXAMPLES = 30
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES") or 0)
OVER_EVERY_LIMIT = 100_001
"""Bytes over both ``max_message_size`` (65,536) and ``socketio_max_payload``
(100,000)."""
LOG_ALARMS = re.compile(r"Traceback|Unhandled|unexpected failure")

FUZZ = settings(
    max_examples=EXAMPLES or DEFAULT_EXAMPLES,
    derandomize=not EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,  # the connection deliberately spans examples
    ],
)


# -- frames ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """One WebSocket message to send.  ``closes``: the close code the
    frame must get (it breaks the WebSocket protocol); ``may_end``: it may
    end the session (Engine.IO's rules); ``junk``: it is no request at all,
    so the dialect must answer it with ``INVALID_MESSAGE``."""

    payload: bytes
    text: bool = True
    closes: int | None = None
    may_end: bool = False
    junk: bool = False

    def __repr__(self) -> str:
        shown = self.payload if len(self.payload) <= 300 else self.payload[:300] + b"..."
        kind = "text" if self.text else "binary"
        flags = f", closes={self.closes}" if self.closes else ""
        flags += ", may_end" if self.may_end else ""
        flags += ", junk" if self.junk else ""
        return f"Frame({kind}, {len(self.payload)} bytes{flags}: {shown!r})"


HUGE_INTEGERS = st.sampled_from(
    [2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, -1, 0, 10**30, -(10**30)]
)
NON_FINITE = st.sampled_from([float("nan"), float("inf"), float("-inf")])
ODD_TEXT = st.sampled_from(
    ["", " ", "\x00", "\x1b[31mred", "a\r\nb", "%2541", "../..", "dm_a_b", "$ROOM", "x" * 5000]
)
TEXT = (
    st.text(max_size=20)
    | st.text(st.characters(categories=("Cs",)), min_size=1, max_size=3)  # lone surrogates
    | ODD_TEXT
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | HUGE_INTEGERS
    | st.floats(allow_nan=False, allow_infinity=False)
    | NON_FINITE
    | TEXT
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)

NATIVE_REQUESTS: list[dict[str, Any]] = [
    {"type": "ping", "id": "f1"},
    {"type": "auth", "id": "f2", "data": {"token": "$TOKEN", "name": "Fuzz"}},
    {
        "type": "chat:create",
        "id": "f3",
        "data": {"name": "r", "type": "public", "description": "d", "members": ["$PEER"]},
    },
    {"type": "chat:join", "id": "f4", "data": {"chatId": "$ROOM", "since": 0}},
    {"type": "chat:leave", "data": {"chatId": "$ROOM"}},
    {
        "type": "chat:message",
        "id": "f5",
        "data": {"chatId": "$ROOM", "content": "hi", "tempId": "t"},
    },
    {"type": "chat:typing", "data": {"chatId": "$ROOM", "isTyping": True}},
    {"type": "chat:read", "data": {"chatId": "$ROOM", "messageId": "m_1"}},
    {"type": "chat:reaction", "data": {"messageId": "m_1", "reaction": "+1", "remove": False}},
    {
        "type": "chat:history",
        "id": "f6",
        "data": {"chatId": "$ROOM", "before": 10, "after": 1, "limit": 20},
    },
    {"type": "message:send", "id": "f7", "data": {"recipientId": "$PEER", "content": "dm"}},
    {"type": "status:request", "data": {"userId": "$PEER"}},
    {"type": "friend:request", "data": {"userId": "$PEER"}},
    {"type": "friend:accept", "data": {"userId": "$PEER"}},
    {"type": "friend:remove", "data": {"userId": "$PEER"}},
    {"type": "friends:list", "id": "f8"},
    {"type": "notification:ack", "data": {"id": "n_1"}},
    {"type": "live:join", "data": {"streamId": "s1"}},
    {"type": "live:message", "data": {"streamId": "s1", "content": "hey"}},
    {"type": "live:reaction", "data": {"streamId": "s1", "emoji": "+1"}},
    {"type": "live:status", "data": {"streamId": "s1", "status": "live"}},
]
SEED000_REQUESTS: list[dict[str, Any]] = [
    {"type": "authenticate", "token": "$TOKEN"},
    {"type": "message", "data": {"receiverId": "$PEER", "content": "hi", "messageType": "TEXT"}},
    {"type": "message", "data": {"roomId": "$ROOM", "content": "hi", "tempId": "t"}},
    {"type": "typing_start", "data": {"friendId": "$PEER"}},
    {"type": "typing_stop", "data": {"roomId": "$ROOM"}},
    {"type": "join_room", "data": {"roomId": "$ROOM", "since": 0}},
    {"type": "join_room", "data": {"friendId": "$PEER"}},
    {"type": "leave_room", "data": {"chatId": "$ROOM"}},
]
CHATFLOW_REQUESTS: list[dict[str, Any]] = [
    {"type": "AUTHENTICATE", "payload": {"token": "$TOKEN", "username": "fuzz"}, "requestId": "a"},
    {"type": "JOIN_ROOM", "payload": {"roomId": "$ROOM"}, "requestId": "j"},
    {"type": "CREATE_ROOM", "payload": {"name": "n", "type": "public"}, "requestId": "c"},
    {"type": "LEAVE_ROOM", "payload": {"roomId": "$ROOM"}, "requestId": "l"},
    {"type": "SEND_MESSAGE", "payload": {"roomId": "$ROOM", "content": "hi"}, "requestId": "s"},
    {"type": "TYPING_STATUS", "payload": {"roomId": "$ROOM", "isTyping": True}},
    {
        "type": "GET_HISTORY",
        "payload": {"roomId": "$ROOM", "before": 5, "limit": 9},
        "requestId": "h",
    },
    {"type": "PING", "requestId": "p"},
]
EVENT_NAMES = sorted(
    {r["type"] for r in NATIVE_REQUESTS + SEED000_REQUESTS + CHATFLOW_REQUESTS} | {"JOIN_HISTORY"}
)


def containers(value: Any) -> Iterator[Any]:
    """Every dict and list inside ``value``, itself included."""
    if isinstance(value, dict | list):
        yield value
        for item in value.values() if isinstance(value, dict) else value:
            yield from containers(item)


def slots(value: Any) -> list[tuple[Any, Any]]:
    """Every (container, key) inside ``value``: each field and list item."""
    return [
        (container, key)
        for container in containers(value)
        for key in (list(container) if isinstance(container, dict) else range(len(container)))
    ]


NASTY = HUGE_INTEGERS | NON_FINITE | ODD_TEXT | JSON
"""What goes into a field: numbers past 2^63, NaN, odd text, or any JSON."""


@st.composite
def mutated(draw: Callable[..., Any], requests: list[Any]) -> Any:
    """A valid request with up to three things changed: a field's value
    (``NASTY``), a field or item deleted, an unknown field added, the
    event renamed, a value wrapped in a list."""
    request = copy.deepcopy(draw(st.sampled_from(requests)))
    for _ in range(draw(st.integers(0, 3))):
        operation = draw(st.sampled_from(["replace", "replace", "delete", "add", "rename", "wrap"]))
        fields = slots(request)
        if operation == "add" or not fields:
            target = draw(st.sampled_from(list(containers(request))))
            if isinstance(target, dict):
                target[draw(TEXT)] = draw(JSON)
            else:
                target.append(draw(JSON))
            continue
        if operation == "rename" and isinstance(request, dict):
            request["type"] = draw(st.sampled_from(EVENT_NAMES) | TEXT)
            continue
        target, key = draw(st.sampled_from(fields))
        if operation == "delete":
            del target[key]
        elif operation == "wrap":
            target[key] = [target[key]]
        else:
            target[key] = draw(NASTY)
    return request


@st.composite
def encoded(draw: Callable[..., Any], value: Any) -> str:
    """JSON text as a careless client writes it: non-ASCII raw or escaped,
    NaN and Infinity as Python writes them."""
    ascii_only = draw(st.booleans())
    try:
        text = json.dumps(value, ensure_ascii=ascii_only)
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: escaped, or the frame is not UTF-8
        text = json.dumps(value)
    return text


def utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def deep(depth: int, opener: str) -> str:
    closer = {"[": "]", '{"a":': "}"}[opener]
    return opener * depth + "0" + closer * depth


DEEP = st.builds(deep, st.integers(900, 9_000), st.sampled_from(["[", '{"a":']))
"""Past any JSON parser's recursion limit, inside ``max_message_size``."""
LONG_NUMBER = st.integers(4_000, 6_000).map(lambda digits: "9" * digits)
INVALID_UTF8 = st.builds(
    lambda head, bad, tail: head + bad + tail,
    st.sampled_from([b"", b'{"type":"ping","id":"', b"42"]),
    st.sampled_from(
        [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"\xe2\x82"]
    ),
    st.sampled_from([b"", b'"}', b"x" * 10]),
)


def json_frames(requests: list[Any]) -> st.SearchStrategy[Frame]:
    """Frames for the JSON dialects over a plain WebSocket."""
    requests_as_text = mutated(requests).flatmap(encoded)
    nested_in_request = st.builds(
        lambda event, inner: f'{{"type":"{event}","id":"d","data":{inner}}}',
        st.sampled_from(EVENT_NAMES),
        DEEP | LONG_NUMBER,
    )
    objects = st.builds(
        dict,
        type=st.sampled_from(EVENT_NAMES) | TEXT,
        data=JSON,
    ).flatmap(encoded)
    junk_text = (
        JSON.filter(lambda v: not isinstance(v, dict)).flatmap(encoded)
        | st.text(max_size=50).filter(lambda t: json_object(utf8(t)) is None)
        | DEEP
        | LONG_NUMBER
    )
    return st.one_of(
        requests_as_text.map(lambda t: Frame(utf8(t))),
        objects.map(lambda t: Frame(utf8(t))),
        nested_in_request.map(lambda t: Frame(utf8(t))),
        junk_text.map(lambda t: Frame(utf8(t), junk=True)),
        (requests_as_text | st.text(max_size=30)).map(lambda t: Frame(utf8(t), text=False)),
        st.binary(max_size=64).map(lambda b: Frame(b, text=False)),
        INVALID_UTF8.map(lambda b: Frame(b, closes=1007)),
        st.integers(OVER_EVERY_LIMIT, OVER_EVERY_LIMIT + 1000).map(
            lambda n: Frame(b'{"type":"ping","data":"' + b"x" * n + b'"}', closes=1009)
        ),
    )


def engine_frame(prefix: str, body: str) -> Frame:
    """An Engine.IO packet over WebSocket: a MESSAGE (``4``) carries
    Socket.IO; any other type from a client (or none) is out of place, and
    Engine.IO ends the session for it, as for a client's DISCONNECT."""
    text = prefix + body
    may_end = not text or text[0] not in "346" or text.startswith("41")
    return Frame(utf8(text), may_end=may_end)


SIO_EVENTS = [[r["type"], r.get("data")] for r in NATIVE_REQUESTS]


def socketio_frames() -> st.SearchStrategy[Frame]:
    packet = st.sampled_from(
        ["42", "42", "421", "42999", "40", "41", "43", "437", "44", "451-", "461-", "47", "4/x,"]
    )
    engine = st.sampled_from(["", "0", "1", "2", "3", "5", "6", "7", "x", "4"])
    events = mutated(SIO_EVENTS).flatmap(encoded)
    body = events | JSON.flatmap(encoded) | st.text(max_size=30) | DEEP | LONG_NUMBER
    return st.one_of(
        st.builds(engine_frame, packet, body),
        st.builds(engine_frame, engine, body),
        st.just(engine_frame("40", '{"token":"$TOKEN"}')),
        st.just(engine_frame("45", '1-["ping",{"_placeholder":true,"num":0}]')),
        st.binary(max_size=64).map(lambda b: Frame(b, text=False)),
        INVALID_UTF8.map(lambda b: Frame(b"4" + b, closes=1007)),
        st.integers(OVER_EVERY_LIMIT, OVER_EVERY_LIMIT + 1000).map(
            lambda n: Frame(b'42["ping","' + b"x" * n + b'"]', closes=1009)
        ),
    )


# -- what the server sends -------------------------------------------------------------------


def _refuse_constant(name: str) -> Any:
    raise AssertionError(f"chatd sent {name}, which is not JSON")


def strict_json(text: str) -> Any:
    return json.loads(text, parse_constant=_refuse_constant)


def sio_json(text: str) -> Any:
    """The JSON of a Socket.IO packet (``4<type>[n-][/nsp,][id]<JSON>``)."""
    match = re.match(r"4\d(\d+-)?(/[^,]*,)?\d*", text)
    assert match is not None, f"not a Socket.IO packet: {text!r}"
    rest = text[match.end() :]
    return strict_json(rest) if rest else None


def codes(value: Any) -> list[str]:
    """Every ``code`` anywhere in a frame."""
    found = []
    for container in containers(value):
        if isinstance(container, dict) and isinstance(container.get("code"), str):
            found.append(container["code"])
    return found


@dataclass
class Probe:
    """A normal request in a dialect, and how its answer is told apart."""

    frame: Callable[[int], str]
    answers: Callable[[int, Any], bool]
    succeeded: Callable[[Any], bool]


PROBES = {
    "native": Probe(
        lambda n: json.dumps({"type": "ping", "id": f"probe-{n}"}),
        lambda n, f: isinstance(f, dict) and f.get("id") == f"probe-{n}",
        lambda f: f["type"] == "ack",
    ),
    "chatflow": Probe(
        lambda n: json.dumps({"type": "PING", "requestId": f"probe-{n}"}),
        lambda n, f: isinstance(f, dict) and f.get("requestId") == f"probe-{n}",
        lambda f: f["type"] == "PONG",
    ),
    # Seed 000 has no request ids: an event the server must refuse by name.
    "seed000": Probe(
        lambda n: json.dumps({"type": f"probe-{n}"}),
        lambda n, f: isinstance(f, dict) and (f.get("data") or {}).get("event") == f"probe-{n}",
        lambda f: f["type"] == "error" and f["data"]["code"] == "UNKNOWN_EVENT",
    ),
    "socketio": Probe(
        lambda n: f'42{10**9 + n}["ping"]',
        lambda n, f: isinstance(f, tuple) and f[0] == f"43{10**9 + n}",
        lambda f: not (isinstance(f[1], list) and f[1] and "error" in (f[1][0] or {})),
    ),
}
INVALID = {
    "native": lambda f: f.get("type") == "error",
    "seed000": lambda f: f.get("type") == "error",
    "chatflow": lambda f: f.get("type") == "ERROR",
}
PROBE_NAMES = {"ws": "native", "seed000": "seed000", "chatflow": "chatflow"}


def root_probe(payload: bytes, text: bool) -> str:
    """On ``/`` the first frame (as sent) picks the dialect
    (docs/dialects.md): the probe speaks whichever it picked; native if it
    picked none."""
    obj = json_object(payload) if text else None
    for dialect in root_dialects() if obj is not None else ():
        if dialect.claims(obj):
            return PROBE_NAMES[dialect.name]
    return "native"


# -- the server and its connections ----------------------------------------------------------


def raised_request_limits() -> list[str]:
    """A large budget sends thousands of frames a second from one user:
    the request limits (per connection, and per user where this chatd has
    that setting) are not what is fuzzed here.  Quotas stay as they are:
    refusing a fuzzed request with RATE_LIMIT_EXCEEDED is a fine answer."""
    args = []
    for name in ("rate_limit", "rate_burst", "user_rate_limit", "user_rate_burst"):
        if name in SETTINGS_BY_NAME:
            args += [f"--{SETTINGS_BY_NAME[name].option}", "1000000"]
    return args


class FuzzServer:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        args = [
            *("--listen", f"tcp:{self.port}:interface=127.0.0.1"),
            *("--data-dir", str(workdir / "data")),
            *("--jwt-secret", SECRET),
            *raised_request_limits(),
        ]
        self.daemon = Daemon(args, clean_env(), str(workdir))
        self.daemon.wait_healthy(self.port)
        self._log = open(self.daemon.log_path, "rb")
        self.config = Config(jwt_secret=SECRET)
        self.peers: dict[str, Peer] = {}

    def token(self, user: str) -> str:
        return mint_token(self.config, user)

    def room_for(self, user: str) -> str:
        """A public room of ``user``'s own, so that no two dialects' fuzzing
        meet."""
        owner = Client(f"ws://127.0.0.1:{self.port}/ws", self.token(f"{user}-owner"))
        try:
            room: str = owner.ok("chat:create", {"name": user, "type": "public"})["room"]["id"]
        finally:
            owner.close()
        return room

    def new_log_alarms(self) -> list[str]:
        """Alarming lines the log got since the last call, each with the
        lines that follow it (the traceback)."""
        lines = self._log.read().decode("utf-8", "replace").splitlines()
        found = [i for i, line in enumerate(lines) if LOG_ALARMS.search(line)]
        return ["\n".join(lines[max(0, i - 1) : i + 15]) for i in found]

    def healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.port}/healthz"
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return bool(response.status == 200)

    def peer(self, dialect: str) -> Peer:
        """The dialect's fuzzing connection, kept across examples."""
        if dialect not in self.peers:
            user = f"fuzz-{dialect}"
            self.peers[dialect] = Peer(self, dialect, user, self.room_for(user))
        return self.peers[dialect]

    def stop(self) -> None:
        for peer in self.peers.values():
            peer.close()
        self._log.close()
        assert self.daemon.terminate(), self.daemon.output()


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: Any) -> Iterator[FuzzServer]:
    server = FuzzServer(tmp_path_factory.mktemp("fuzz"))
    yield server
    server.stop()


class Closed(Exception):
    def __init__(self, code: int | None) -> None:
        super().__init__(f"closed with {code}")
        self.code = code


@dataclass
class Peer:
    """One dialect's fuzzing connection, reopened after a frame that was
    allowed to end it."""

    server: FuzzServer
    dialect: str
    user: str
    room: str
    ws: Any = None
    probes: int = 0
    seen: list[Any] = field(default_factory=list)

    @property
    def path(self) -> str:
        token = self.server.token(self.user)
        return {
            "native": f"/ws?token={token}",
            "seed000": f"/ws/seed000?token={token}",
            "chatflow": f"/ws/chatflow?token={token}",
            "root": f"/?token={token}",
            "socketio": "/socket.io/?EIO=4&transport=websocket",
        }[self.dialect]

    def open(self) -> None:
        self.close()
        self.ws = connect(
            f"ws://127.0.0.1:{self.server.port}{self.path}",
            open_timeout=TIMEOUT,
            close_timeout=2,
            max_size=None,
            max_queue=None,
        ).__enter__()
        if self.dialect == "socketio":
            assert self.ws.recv(timeout=TIMEOUT).startswith("0{")
            self.connect_socketio()

    def connect_socketio(self) -> None:
        try:
            self.ws.send("40" + json.dumps({"token": self.server.token(self.user)}))
        except ConnectionClosed as e:
            raise Closed(e.rcvd.code if e.rcvd is not None else None) from None

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
            self.ws = None

    def substitute(self, payload: bytes) -> bytes:
        return (
            payload.replace(b"$ROOM", self.room.encode())
            .replace(b"$PEER", f"{self.user}-peer".encode())
            .replace(b"$TOKEN", self.server.token(self.user).encode())
        )

    def send(self, frame: Frame) -> None:
        payload = self.substitute(frame.payload)
        try:
            self.ws.send(payload, text=frame.text)
        except (ConnectionClosed, OSError):
            pass  # closed while sending (an oversized frame): read the close below

    def receive(self, timeout: float = TIMEOUT) -> Any:
        """The next frame, decoded (Socket.IO: ``(prefix, JSON)``), checked
        to be strict JSON without SERVER_ERROR."""
        while True:
            try:
                raw = self.ws.recv(timeout=timeout)
            except ConnectionClosed as e:
                raise Closed(e.rcvd.code if e.rcvd is not None else None) from None
            assert isinstance(raw, str), f"chatd sent a binary frame: {raw!r}"
            if self.dialect != "socketio":
                frame = strict_json(raw)
            elif raw == "2":
                self.ws.send("3")  # Engine.IO's heartbeat
                continue
            elif raw.startswith("4"):
                head = re.match(r"4\d(\d+-)?(/[^,]*,)?\d*", raw)
                frame = (head.group(0) if head else raw, sio_json(raw))
            else:
                frame = (raw[:1], strict_json(raw[1:]) if raw[1:] else None)
            self.seen.append(frame)
            assert "SERVER_ERROR" not in codes(frame), f"chatd failed on a frame: {raw[:500]}"
            return frame

    def probe(self, dialect: str) -> list[Any]:
        """A normal request in ``dialect``: the frames that came before its
        answer (the answer itself must be a success)."""
        self.probes += 1
        probe = PROBES[dialect]
        self.seen = []
        try:
            self.ws.send(probe.frame(self.probes))
        except ConnectionClosed as e:
            raise Closed(e.rcvd.code if e.rcvd is not None else None) from None
        while True:
            frame = self.receive()
            if probe.answers(self.probes, frame):
                assert probe.succeeded(frame), f"the probe failed: {frame}"
                return self.seen[:-1]

    def expect_close(self, code: int) -> None:
        while True:
            try:
                self.receive()
            except Closed as closed:
                assert closed.code == code, f"expected close {code}, got {closed.code}"
                return


def fuzz_one(server: FuzzServer, peer: Peer, frame: Frame) -> None:
    """Send one frame; then the connection must answer a normal request, or
    (for a frame that may or must end it) a new connection must."""
    fresh = "native" if peer.dialect == "root" else peer.dialect
    if peer.dialect == "root" or peer.ws is None:
        peer.open()  # on "/", the frame under test is the connection's first
    peer.send(frame)
    if frame.closes is not None:
        peer.expect_close(frame.closes)
        reopen = True
    else:
        probe = (
            root_probe(peer.substitute(frame.payload), frame.text)
            if peer.dialect == "root"
            else peer.dialect
        )
        try:
            if frame.may_end:
                peer.connect_socketio()  # a new CONNECT, should the old one have ended
            before = peer.probe(probe)
        except Closed as closed:
            assert frame.may_end, f"the connection closed ({closed.code}) after {frame!r}"
            reopen = True
        else:
            reopen = False
            if frame.junk and probe in INVALID:
                assert any(INVALID[probe](f) for f in before), f"no error for junk: {before}"
    if reopen:
        peer.open()
        peer.probe(fresh)
    if peer.dialect == "root":
        peer.close()
    assert server.healthy()
    alarms = server.new_log_alarms()
    assert not alarms, "\n".join(alarms[:20])


FRAMES = {
    "native": json_frames(NATIVE_REQUESTS),
    "seed000": json_frames(SEED000_REQUESTS),
    "chatflow": json_frames(CHATFLOW_REQUESTS),
    "root": json_frames(NATIVE_REQUESTS + SEED000_REQUESTS + CHATFLOW_REQUESTS),
    "socketio": socketio_frames(),
}


HUGE = str(2**63)
REGRESSIONS: dict[str, list[Frame]] = {
    # Always run first: what was once broken (issue 15: numbers past 2^63
    # reaching the database, NaN, lone surrogates, control characters).
    "native": [
        Frame(
            utf8(f'{{"type":"chat:history","id":"h","data":{{"chatId":"$ROOM","before":{HUGE}}}}}')
        ),
        Frame(utf8(f'{{"type":"chat:join","id":"j","data":{{"chatId":"$ROOM","since":{HUGE}}}}}')),
        Frame(
            utf8(
                '{"type":"chat:history","id":"h","data":{"chatId":"$ROOM","after":1e400,"limit":NaN}}'
            )
        ),
        Frame(
            utf8(
                '{"type":"chat:message","id":"m","data":{"chatId":"$ROOM","content":"\\ud800\\u001b[2J"}}'
            )
        ),
        Frame(utf8('{"type":"auth","id":"a","data":{"token":"\\ud800"}}')),
        Frame(utf8('{"type":"ping","id":"n","data":{"v":NaN}}')),
        Frame(utf8('{"type":"ping","id":"d","data":' + deep(5000, "[") + "}"), junk=True),
        Frame(b'{"type":"ping","id":"b"}', text=False),
    ],
    "seed000": [
        Frame(utf8(f'{{"type":"join_room","data":{{"roomId":"$ROOM","since":{HUGE}}}}}')),
        Frame(utf8('{"type":"message","data":{"roomId":"$ROOM","content":"\\ud800"}}')),
    ],
    "chatflow": [
        Frame(
            utf8(
                f'{{"type":"GET_HISTORY","payload":{{"roomId":"$ROOM","before":{HUGE},'
                '"limit":NaN},"requestId":"h"}'
            )
        ),
    ],
    "root": [
        Frame(utf8(f'{{"type":"GET_HISTORY","payload":{{"roomId":"$ROOM","after":{HUGE}}}}}')),
        Frame(utf8(f'{{"type":"join_room","data":{{"roomId":"$ROOM","since":{HUGE}}}}}')),
        Frame(utf8('{"type":"\\u001b[2J","id":"x"}')),
    ],
    "socketio": [
        engine_frame("42", f'["chat:history",{{"chatId":"$ROOM","before":{HUGE}}}]'),
        engine_frame("421", '["chat:join",{"chatId":"$ROOM","since":1e400}]'),
        engine_frame("42", '["ping",NaN]'),
    ],
}


def fuzz_test(dialect: str) -> Any:
    """One test per dialect (pytest-twisted, which runs every test, wraps a
    parametrized hypothesis test once per parameter, over and over)."""

    @FUZZ
    @given(frame=FRAMES[dialect])
    def test(fuzz_server: FuzzServer, frame: Frame) -> None:
        peer = fuzz_server.peer(dialect)
        try:
            fuzz_one(fuzz_server, peer, frame)
        except Exception as e:
            # The next example starts on a new connection and log, not behind
            # this one's unread frames and lines; the message names the frame (pytest-twisted
            # hides hypothesis's arguments).
            peer.close()
            fuzz_server.new_log_alarms()
            raise AssertionError(f"{dialect}, after {frame!r}:\n{e}") from e

    for frame in REGRESSIONS[dialect]:
        test = example(frame=frame)(test)
    return test


test_random_native_frames_get_an_error_or_nothing_and_the_server_goes_on = fuzz_test("native")
test_random_seed000_frames_get_an_error_or_nothing_and_the_server_goes_on = fuzz_test("seed000")
test_random_chatflow_frames_get_an_error_or_nothing_and_the_server_goes_on = fuzz_test("chatflow")
test_random_first_frames_on_root_get_an_error_or_nothing_and_the_server_goes_on = fuzz_test("root")
test_random_socketio_packets_get_an_error_or_nothing_and_the_server_goes_on = fuzz_test("socketio")


def test_after_the_fuzzing_no_late_failure_and_the_server_is_healthy(fuzz_server: FuzzServer):
    """Runs last: a frame whose failure came late (behind a storage read,
    after its probe was answered) is caught here, if not by a later
    example: every connection answers once more, and the whole log has no
    traceback."""
    for dialect, peer in fuzz_server.peers.items():
        if peer.ws is not None:
            peer.probe(dialect)
    assert fuzz_server.healthy()
    text = fuzz_server.daemon.log_path.read_text(errors="replace")
    alarms = [line for line in text.splitlines() if LOG_ALARMS.search(line)]
    assert not alarms, "\n".join(alarms[:20])
