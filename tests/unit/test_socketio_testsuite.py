"""The test-only mode for the protocol test suites: off by default, refused
off loopback, mounted only when on; and the general Socket.IO encoder its
server uses (namespaces, acks, binary attachments)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from twisted.internet.task import Clock
from twisted.web.resource import Resource

from chatd.bindings.socketio import sio
from chatd.bindings.socketio.testsuite import ProtocolTestSuites
from chatd.config import Config, ConfigError, load_config
from chatd.web.site import build_site


def _load(tmp_path, **values):
    base = {"data_dir": str(tmp_path), "jwt_secret": "s" * 32}
    return load_config({**base, **values}, environ={})


def test_off_by_default(tmp_path):
    assert Config().socketio_test_suites is False
    assert _load(tmp_path).socketio_test_suites is False


def test_on_with_a_loopback_listen(tmp_path):
    cfg = _load(tmp_path, socketio_test_suites="true", listen="tcp:3000:interface=127.0.0.1")
    assert cfg.socketio_test_suites is True


@pytest.mark.parametrize(
    "listen", ["tcp:3000", "tcp:3000:interface=0.0.0.0", "systemd:domain=INET:index=0"]
)
def test_refused_unless_listening_on_loopback_only(tmp_path, listen):
    with pytest.raises(ConfigError, match="socketio_test_suites"):
        _load(tmp_path, socketio_test_suites=True, listen=listen)


def _children(test_suites: ProtocolTestSuites | None) -> set[bytes]:
    site = build_site(
        SimpleNamespace(connections=[]),
        Resource(),
        {},
        engine_io_test_suite=test_suites.engine_io.resource if test_suites else None,
        socketio_test_suite=test_suites.socket_io.resource if test_suites else None,
    )
    return set(site.resource.children)


def test_mounted_only_when_on():
    assert not {b"engine.io", b"testsuite"} & _children(None)
    suites = ProtocolTestSuites(Clock(), 10.0, 3.0)
    assert {b"engine.io", b"testsuite", b"ws"} <= _children(suites)
    assert suites.engine_io.engine.settings.ping_interval == 0.3
    assert suites.socket_io.engine.settings.ping_timeout == 0.2
    assert suites.socket_io.engine is not suites.engine_io.engine


@pytest.mark.parametrize(
    ("args", "packet", "attachments"),
    [
        ((sio.CONNECT, {"sid": "x"}), b'0{"sid":"x"}', []),
        ((sio.CONNECT, {"sid": "x"}, "/custom"), b'0/custom,{"sid":"x"}', []),
        ((sio.EVENT, ["auth", {}], "/custom"), b'2/custom,["auth",{}]', []),
        ((sio.ACK, [1, "2"], "/", 456), b'3456[1,"2"]', []),
        ((sio.DISCONNECT, None, "/custom"), b"1/custom,", []),
        (
            (sio.EVENT, ["m", b"\x01", {"k": [b"\x02"]}]),
            b'52-["m",{"_placeholder":true,"num":0},{"k":[{"_placeholder":true,"num":1}]}]',
            [b"\x01", b"\x02"],
        ),
        (
            (sio.ACK, [b"\x03"], "/custom", 7),
            b'61-/custom,7[{"_placeholder":true,"num":0}]',
            [b"\x03"],
        ),
    ],
    ids=[
        "connect",
        "connect-namespace",
        "event-namespace",
        "ack",
        "disconnect",
        "binary-event",
        "binary-ack",
    ],
)
def test_encode_packet(args, packet, attachments):
    assert sio.encode_packet(*args) == (packet, attachments)


def test_encode_packet_round_trips_through_the_decoder():
    text, buffers = sio.encode_packet(sio.EVENT, ["m", b"\x01\x02", [b"\x03"]], "/custom", 9)
    assembler = sio.BinaryAssembler(sio.decode(text.decode()))
    assert assembler.add(buffers[0]) is None
    done = assembler.add(buffers[1])
    assert done == sio.SioPacket(sio.EVENT, "/custom", 9, ["m", b"\x01\x02", [b"\x03"]])


def test_only_events_and_acks_carry_attachments():
    with pytest.raises(ValueError):
        sio.encode_packet(sio.CONNECT, {"x": b"\x00"})
