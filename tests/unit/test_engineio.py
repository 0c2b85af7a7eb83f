"""The Engine.IO state machine and the Socket.IO binding on a ``Clock``,
through the ``/socket.io/`` resource with twisted.web's ``DummyRequest``:
handshake, errors, CORS, heartbeats, one pending GET, ``maxPayload``, the
upgrade to WebSocket (a recording transport stands in for Autobahn), and
the Socket.IO packets a chatd session gets from it."""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from chatd.bindings.socketio import eio
from chatd.bindings.socketio.server import SocketIOServer
from chatd.bindings.socketio.transports import (
    Write,
    frame_event_polling,
    frame_event_websocket,
)
from chatd.domain.models import Published
from chatd.session.session import Session
from tests.unit.session_fakes import Harness, token


class FakeWebSocket:
    """A WebSocket transport that records the packets written to it."""

    name = "websocket"
    framer = staticmethod(frame_event_websocket)

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.closed: tuple[int, str] | None = None
        self.aborted = False
        self.producer: IPushProducer | None = None

    def frame(self, packet: bytes) -> bytes:
        return b"<" + packet + b">"

    def write(self, data: bytes) -> None:
        self.frames.extend(part.lstrip(b"<") for part in data.split(b">") if part)

    def fast_writer(self) -> Write:
        return self.write

    def write_queued(self, data: bytes) -> None:
        self.write(data)

    def buffered_bytes(self) -> int | None:
        return 0

    def register_producer(self, producer: IPushProducer) -> None:
        self.producer = producer

    def unregister_producer(self) -> None:
        self.producer = None

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def abort(self) -> None:
        self.aborted = True


class World:
    """A hub on a ``Clock`` (echo routes: ``ping`` → ``{"pong": true}``)
    and the Socket.IO server over it."""

    def __init__(self, **overrides: Any) -> None:
        settings = {"socketio_ping_interval": 25.0, "socketio_ping_timeout": 20.0}
        settings.update(overrides)
        self.harness = Harness(**settings)
        self.clock = self.harness.clock
        self.hub = self.harness.hub
        self.server = SocketIOServer(self.harness.config, self.hub)
        self.resource = self.server.resource
        self.engine = self.server.engine

    def request(
        self,
        method: bytes = b"GET",
        sid: str | None = None,
        body: bytes | None = None,
        headers: dict[bytes, bytes] | None = None,
        **args: str,
    ) -> DummyRequest:
        request = DummyRequest([b""], client=IPv4Address("TCP", "127.0.0.1", 5000))
        request.method = method
        query = {"EIO": "4", "transport": "polling", **args}
        if sid is not None:
            query["sid"] = sid
        for name, value in query.items():
            if value is not None:
                request.args[name.encode()] = [value.encode()]
        for name, value in (headers or {}).items():
            request.requestHeaders.setRawHeaders(name, [value])
        request.content = BytesIO(body or b"")
        return request

    def render(self, request: DummyRequest) -> tuple[int, bytes]:
        """Status and body of a request answered at once."""
        result = self.resource.render(request)
        if result is NOT_DONE_YET:
            assert request.finished, "the request is still pending"
            return request.responseCode or 200, b"".join(request.written)
        return request.responseCode or 200, result

    def handshake(self, **headers: bytes) -> str:
        status, body = self.render(self.request(headers=headers))
        assert status == 200, body
        return json.loads(body[1:])["sid"]

    def post(self, sid: str, *packets: str) -> tuple[int, bytes]:
        body = "\x1e".join(packets).encode()
        return self.render(self.request(b"POST", sid, body))

    def get(self, sid: str) -> list[str]:
        """One GET answered at once (after the reactor turn): its packets."""
        request = self.request(sid=sid)
        assert self.resource.render(request) is NOT_DONE_YET
        self.clock.advance(0)
        assert request.finished, "nothing was queued"
        return b"".join(request.written).decode().split("\x1e")

    def pending_get(self, sid: str) -> DummyRequest:
        request = self.request(sid=sid)
        assert self.resource.render(request) is NOT_DONE_YET
        assert not request.finished
        return request

    def connect(self, user: str = "alice") -> tuple[str, Session]:
        sid = self.handshake()
        assert self.post(sid, "40" + json.dumps({"token": token(user, self.harness.config)}))[0]
        packets = self.get(sid)
        assert packets[0].startswith("40{"), packets
        assert json.loads(packets[1][2:])[0] == "authenticated"
        socket = self.engine.get(sid)
        assert socket is not None
        session = socket.handler.session  # type: ignore[attr-defined]
        assert isinstance(session, Session)
        return sid, session


def error(status_body: tuple[int, bytes]) -> tuple[int, int, str]:
    status, body = status_body
    parsed = json.loads(body)
    return status, parsed["code"], parsed["message"]


# -- handshake and errors -------------------------------------------------------------


def test_polling_handshake_open_packet():
    world = World()
    status, body = world.render(world.request())
    assert status == 200 and body.startswith(b"0")
    opened = json.loads(body[1:])
    assert opened == {
        "sid": opened["sid"],
        "upgrades": ["websocket"],
        "pingInterval": 25000,
        "pingTimeout": 20000,
        "maxPayload": 100000,
    }
    assert world.engine.get(opened["sid"]) is not None
    assert len(world.hub) == 0  # no chatd session before a Socket.IO CONNECT


def test_errors_as_engineio_gives_them():
    world = World()
    assert error(world.render(world.request(transport="abc"))) == (400, 0, "Transport unknown")
    assert error(world.render(world.request(transport=None)))[:2] == (400, 0)
    assert error(world.render(world.request(sid="nope"))) == (400, 1, "Session ID unknown")
    assert error(world.render(world.request(b"POST")))[:2] == (400, 2)
    status, code, message = error(world.render(world.request(EIO="3")))
    assert (status, code) == (400, 5) and "EIO=3 is Socket.IO v2" in message
    assert error(world.render(world.request(EIO=None)))[:2] == (400, 5)
    status, code, message = error(world.render(world.request(transport="websocket")))
    assert (status, code) == (400, 3) and "WebSocket upgrade" in message
    assert len(world.engine) == 0


def test_origins_same_host_listed_and_preflight():
    world = World(allowed_origins=("https://app.example",))
    foreign = {b"origin": b"https://evil.example", b"host": b"chat.example"}
    assert error(world.render(world.request(headers=foreign))) == (
        403,
        4,
        "Forbidden: this origin is not allowed",
    )
    own = world.request(headers={b"origin": b"https://chat.example", b"host": b"chat.example"})
    assert world.render(own)[0] == 200
    assert not own.responseHeaders.hasHeader(b"access-control-allow-origin")
    listed = {b"origin": b"https://app.example", b"host": b"chat.example"}
    request = world.request(headers=listed)
    assert world.render(request)[0] == 200
    assert request.responseHeaders.getRawHeaders(b"access-control-allow-origin") == [
        b"https://app.example"
    ]
    preflight = world.request(
        b"OPTIONS", headers={**listed, b"access-control-request-headers": b"authorization"}
    )
    assert world.render(preflight) == (204, b"")
    assert preflight.responseHeaders.getRawHeaders(b"access-control-allow-headers") == [
        b"authorization"
    ]
    assert error(world.render(world.request(b"OPTIONS", headers=foreign)))[0] == 403


def test_no_origin_list_means_same_host_only():
    world = World()
    request = world.request(headers={b"origin": b"http://localhost:3000", b"host": b"h:1"})
    assert error(world.render(request))[:2] == (403, 4)
    assert world.render(world.request())[0] == 200  # no Origin: not a browser's cross-site call


# -- polling ------------------------------------------------------------------------------


def test_connect_event_and_ack_over_polling():
    world = World()
    sid, session = world.connect("alice")
    assert world.post(sid, '42["ping",{}]', '427["ping",{}]') == (200, b"ok")
    packets = world.get(sid)
    assert packets == ['42["pong",{"pong":true}]', '437[{"pong":true}]']
    assert session.identity is not None and session.identity.user_id == "alice"


def test_fanout_frames_reach_the_polling_queue_and_leave_in_one_response():
    world = World()
    sid, session = world.connect()
    assert session.framer is frame_event_polling
    pending = world.pending_get(sid)
    session.send_frame(frame_event_polling(Published("a", b"{}")))
    session.send_frame(frame_event_polling(Published("b", b"[1]")))
    assert not pending.finished  # the rest of this turn joins the same response
    world.clock.advance(0)
    assert b"".join(pending.written) == b'42["a",{}]\x1e42["b",[1]]'


def test_second_pending_get_ends_the_session():
    world = World()
    sid, session = world.connect()
    first = world.pending_get(sid)
    assert error(world.render(world.request(sid=sid)))[:2] == (400, 3)
    assert b"".join(first.written).endswith(b"1")
    assert world.engine.get(sid) is None and len(world.hub) == 0


def test_post_over_max_payload_is_413_and_ends_the_session():
    world = World(socketio_max_payload=400)
    sid, _ = world.connect()
    other, _ = world.connect("bob")
    status, body = world.post(sid, '42["ping","' + "x" * 400 + '"]')
    assert status == 413 and json.loads(body)["code"] == 3
    assert world.engine.get(sid) is None
    assert world.post(other, '42["ping",{}]') == (200, b"ok")  # the others go on


def test_malformed_polling_body_is_400_and_others_go_on():
    world = World()
    sid, _ = world.connect()
    other, _ = world.connect("bob")
    status, code, message = error(world.post(sid, "abc"))
    assert (status, code) == (400, 3) and "unknown packet type" in message
    assert world.engine.get(sid) is None
    assert error(world.post(sid, "3"))[:2] == (400, 1)
    assert world.post(other, '42["ping",{}]') == (200, b"ok")
    assert world.get(other) == ['42["pong",{"pong":true}]']


def test_heartbeat_drops_a_peer_that_misses_its_pong():
    world = World()
    sid, session = world.connect()
    world.clock.advance(25)
    assert world.get(sid) == ["2"]
    assert world.post(sid, "3") == (200, b"ok")
    world.clock.advance(24.9)
    assert world.engine.get(sid) is not None
    world.clock.advance(0.1)
    assert world.get(sid) == ["2"]
    world.clock.advance(19.9)
    assert world.engine.get(sid) is not None
    world.clock.advance(0.1)
    assert world.engine.get(sid) is None and len(world.hub) == 0
    assert session not in world.hub.open


def test_every_session_shares_one_heartbeat_timer():
    """An idle connection holds no DelayedCall of its own (one is ~550
    bytes): the sessions' pings and pong deadlines share the wheel's timer,
    and a session that closes leaves nothing behind in it."""
    world = World()

    def heartbeat_timers() -> int:
        return sum(
            1
            for call in world.clock.getDelayedCalls()
            if getattr(call.func, "__self__", None) in (world.engine.heartbeats, *sockets)
        )

    sids = [world.connect(f"u{i}")[0] for i in range(20)]
    sockets = [world.engine.get(sid) for sid in sids]
    assert len(world.engine.heartbeats) == 20
    assert heartbeat_timers() == 1
    world.clock.advance(25)
    for sid in sids:
        assert world.get(sid) == ["2"]  # every one pinged by the one timer
    assert len(world.engine.heartbeats) == 20  # each waiting for its pong now
    assert heartbeat_timers() == 1
    for sid in sids:
        assert world.post(sid, "1") == (200, b"ok")
    assert len(world.engine.heartbeats) == 0
    assert heartbeat_timers() == 0


def test_a_heartbeat_due_between_ticks_is_not_early():
    """Due times round up to the wheel's resolution: a ping is never sent
    before ping_interval has passed."""
    world = World()
    world.clock.advance(0.4)
    sid, _ = world.connect()
    world.clock.advance(24.9)  # 25.3: the ping is due at 25.4
    assert world.engine.get(sid) is not None
    request = world.pending_get(sid)
    world.clock.advance(0.7)  # 26.0, the next tick
    assert b"".join(request.written) == b"2"


def test_polling_queue_is_bounded_like_a_send_buffer():
    world = World(max_send_buffer=150_000)
    sid, session = world.connect()
    big = b'"' + b"x" * 10_000 + b'"'
    for _ in range(10):  # past the high-water mark, within max_send_buffer
        session.send_frame(frame_event_polling(Published("big", big)))
    assert world.engine.get(sid) is not None and not world.harness.lifecycle.closed_sessions
    assert len(world.get(sid)) == 10  # the client reads: the queue drains
    for _ in range(20):
        session.send_frame(frame_event_polling(Published("big", big)))
    # Past the high-water mark the session checks the queue against
    # max_send_buffer and closes the slow consumer with 4029.
    assert world.harness.lifecycle.closed_sessions == [session]
    packets = world.get(sid)
    assert packets[-2:] == ["41", "1"]
    assert world.engine.get(sid) is None


def test_client_close_packet_releases_the_pending_get():
    world = World()
    sid, session = world.connect()
    pending = world.pending_get(sid)
    assert world.post(sid, "1") == (200, b"ok")
    world.clock.advance(0)
    assert pending.finished
    assert world.engine.get(sid) is None and len(world.hub) == 0


def test_lost_pending_get_ends_the_session():
    world = World()
    sid, _ = world.connect()
    pending = world.pending_get(sid)
    pending.processingFailed(Failure(ConnectionError("gone")))
    assert world.engine.get(sid) is None and len(world.hub) == 0


# -- the upgrade ---------------------------------------------------------------------------


def test_upgrade_probe_noop_then_websocket_framer():
    world = World()
    sid, session = world.connect()
    socket = world.engine.get(sid)
    assert socket is not None
    pending = world.pending_get(sid)
    ws = FakeWebSocket()
    assert socket.probe(ws)
    assert not socket.probe(FakeWebSocket())  # one probe at a time
    socket.probe_received(ws, eio.Packet("2", "probe"))
    assert ws.frames == [b"3probe"]
    assert b"".join(pending.written) == b"6"
    # Queued after the probe, before "5": moved to the WebSocket, in order.
    session.send_event("before", {})
    socket.probe_received(ws, eio.Packet("5"))
    assert socket.transport is ws and session.framer is frame_event_websocket
    assert ws.producer is session
    assert ws.frames[1:] == [b'42["before",{}]']
    assert world.harness.lifecycle.switched == [(session, frame_event_polling)]
    session.send_event("after", {})
    assert ws.frames[-1] == b'42["after",{}]'
    # Polling with the sid is refused now; the session goes on.
    assert error(world.render(world.request(sid=sid)))[:2] == (400, 3)
    socket.received(eio.Packet("4", '2["ping",{}]'))
    assert ws.frames[-1] == b'42["pong",{"pong":true}]'


def test_unexpected_packet_during_probe_closes_the_probe_only():
    world = World()
    sid, _ = world.connect()
    socket = world.engine.get(sid)
    assert socket is not None
    ws = FakeWebSocket()
    assert socket.probe(ws)
    socket.probe_received(ws, eio.Packet("4", "hello"))
    assert ws.closed is not None and socket.transport.name == "polling"
    assert world.post(sid, '42["ping",{}]') == (200, b"ok")


def test_upgrade_that_never_completes_times_out():
    world = World()
    sid, _ = world.connect()
    socket = world.engine.get(sid)
    assert socket is not None
    ws = FakeWebSocket()
    assert socket.probe(ws)
    world.clock.advance(world.harness.config.open_handshake_timeout)
    assert ws.closed is not None
    assert socket.probe(FakeWebSocket())  # a new attempt may come


# -- Socket.IO on top --------------------------------------------------------------------


def test_bad_token_is_connect_error_and_the_engine_session_stays():
    world = World()
    sid = world.handshake()
    world.post(sid, '40{"token":"not-a-jwt"}')
    (packet,) = world.get(sid)
    assert packet.startswith("44")
    body = json.loads(packet[2:])
    assert body["data"] == {"code": "UNAUTHORIZED"} and "authentication failed" in body["message"]
    assert len(world.hub) == 0 and world.engine.get(sid) is not None
    # Another CONNECT on the same Engine.IO session may succeed.
    world.post(sid, "40" + json.dumps({"token": token("alice", world.harness.config)}))
    assert world.get(sid)[0].startswith("40{")
    assert len(world.hub) == 1


def test_missing_token_and_unknown_namespace():
    world = World()
    sid = world.handshake()
    world.post(sid, "40", "40/admin,")
    first, second = world.get(sid)
    assert json.loads(first[2:])["data"] == {"code": "UNAUTHORIZED"}
    assert second.startswith("44/admin,")
    assert json.loads(second[len("44/admin,") :])["message"] == "Invalid namespace"
    world.clock.advance(world.harness.config.auth_timeout)
    assert world.get(sid) == ["1"]  # never connected: closed in time
    assert world.engine.get(sid) is None


def test_header_token_is_used_without_auth_payload():
    world = World()
    header = b"Bearer " + token("bob", world.harness.config).encode()
    sid = world.handshake(authorization=header)
    world.post(sid, "40")
    connected, authenticated = world.get(sid)
    assert json.loads(connected[2:])["sid"].startswith("c_")
    assert json.loads(authenticated[2:])[1]["userId"] == "bob"


def test_malformed_socketio_packets_get_errors_and_the_session_stays():
    world = World()
    sid, session = world.connect()
    world.post(sid, "42[not json", '43["x"]', '42["ping",1,2]', "45", "4" + '9["x"]')
    packets = world.get(sid)
    errors = [json.loads(p[2:]) for p in packets]
    assert errors[0] == [
        "error",
        {"code": "INVALID_MESSAGE", "message": "packet data is not valid JSON"},
    ]
    assert errors[1][1]["code"] == "INVALID_MESSAGE"  # an ACK nobody waits for
    assert errors[2][1]["event"] == "ping"  # more than one data argument
    assert all(e[1]["code"] == "INVALID_MESSAGE" for e in errors)
    assert len(errors) == 5
    assert world.engine.get(sid) is not None and session in world.hub.open


def test_binary_event_is_decoded_then_refused_with_its_ack_id():
    world = World()
    sid, _ = world.connect()
    world.post(sid, '451-3["upload",{"_placeholder":true,"num":0}]', "bAQID")
    (packet,) = world.get(sid)
    assert packet.startswith("433[")
    assert json.loads(packet[3:])[0]["error"]["message"].startswith("binary attachments")


def test_undecodable_packet_before_connect_ends_the_engine_session():
    world = World()
    sid = world.handshake()
    world.post(sid, "4abc")
    assert world.engine.get(sid) is None


def test_client_disconnect_and_server_disconnect():
    world = World()
    sid, session = world.connect()
    world.post(sid, "41")
    assert session not in world.hub.open
    # The Engine.IO session is the client's to close; it may CONNECT again.
    assert world.engine.get(sid) is not None
    world.post(sid, "40" + json.dumps({"token": token("alice", world.harness.config)}))
    again = world.get(sid)
    assert again[0].startswith("40") and len(world.hub) == 1
    world.post(sid, "41")
    # A client that neither closes nor connects again is closed in time.
    world.clock.advance(world.harness.config.auth_timeout)
    assert world.get(sid) == ["1"]
    assert world.engine.get(sid) is None
    sid, session = world.connect("bob")
    session.disconnect(4003, "disconnected by an admin")
    assert world.get(sid) == ["41", "1"]
    assert world.engine.get(sid) is None and len(world.hub) == 0


def test_shutdown_closes_sessions_without_disconnect_packet():
    world = World()
    sid, session = world.connect()
    bare = world.handshake()
    done = world.hub.shutdown(5)
    world.server.close_unconnected()
    assert world.get(sid) == ["1"]  # no 41: clients reconnect, as after a restart
    assert world.get(bare) == ["1"]
    assert done.called
