"""Guards for chatd/bindings/socket_write.py: the Twisted and Autobahn
internals it relies on still exist and still mean what it assumes.

When one of these fails after a Twisted or Autobahn upgrade, the fast write
path (or the slow-consumer accounting, or the pformat patch) is wrong for
that version: re-read the module's docstring against the new source, fix
the module, then update ``TESTED_WITH``.  Real loopback sockets, but a
``MemoryReactor``: the global reactor is never touched."""

from __future__ import annotations

import inspect
import socket
from collections.abc import Iterator
from importlib.metadata import version

import autobahn.websocket.protocol as autobahn_protocol
import pytest
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import tcp
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions
from twisted.internet.testing import MemoryReactor
from twisted.protocols.tls import TLSMemoryBIOFactory

from chatd.bindings import socket_write
from chatd.bindings.socket_write import (
    TESTED_WITH,
    LazyPformat,
    buffered_bytes,
    defer_autobahn_pformat,
    direct_writer,
    socket_transport,
)
from chatd.bindings.websocket import ChatdServerProtocol, ChatdWebSocketFactory

INSTALLED = {"twisted": version("twisted"), "autobahn": version("autobahn")}


def changed(what: str) -> str:
    return (
        f"{what}: chatd/bindings/socket_write.py was checked against Twisted "
        f"{TESTED_WITH['twisted']} and autobahn {TESTED_WITH['autobahn']}; installed are "
        f"Twisted {INSTALLED['twisted']} and autobahn {INSTALLED['autobahn']}. "
        "Re-check the module against the new internals before trusting the fast path."
    )


@pytest.fixture
def pair() -> Iterator[tuple[tcp.Connection, socket.socket]]:
    """A Twisted TCP transport over one end of a loopback connection (as
    ``Port.doRead`` builds it) and the raw socket at the other end, both
    with small buffers so the kernel stops taking bytes soon."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    peer = socket.socket()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    peer.connect(listener.getsockname())
    accepted, address = listener.accept()
    listener.close()
    accepted.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    peer.setblocking(False)
    transport = tcp.Server(accepted, Protocol(), address, None, 1, MemoryReactor())  # type: ignore[arg-type]
    transport.connected = 1
    yield transport, peer
    accepted.close()
    peer.close()


def drain(transport: tcp.Connection, peer: socket.socket, expected: int) -> bytes:
    """Let Twisted write (``doWrite``, as the reactor would) and read the
    other end until ``expected`` bytes arrived."""
    received = b""
    for _ in range(10_000):
        if len(received) >= expected:
            break
        if transport.dataBuffer or transport._tempDataLen:
            transport.doWrite()
        try:
            received += peer.recv(65536)
        except BlockingIOError:
            pass
    return received


def fill_kernel(transport: tcp.Connection) -> int:
    """Send straight to the socket until the kernel refuses more."""
    total = 0
    chunk = b"k" * 4096
    while True:
        try:
            total += transport.socket.send(chunk)
        except BlockingIOError:
            return total


def test_tcp_transport_has_the_attributes_the_module_reads(pair) -> None:
    transport, _ = pair
    for name in ("dataBuffer", "offset", "_tempDataLen", "_tempDataBuffer", "socket"):
        assert hasattr(transport, name), changed(f"tcp.Connection has no {name!r}")
    assert transport.connected and not transport.disconnecting, changed(
        "connected/disconnecting no longer say whether writes are taken"
    )
    assert getattr(transport, "TLS", None) is False, changed("tcp.Connection.TLS is not False")
    assert socket_transport(transport) is transport
    assert buffered_bytes(transport) == 0


def test_twisted_queued_bytes_show_up_in_the_buffered_count(pair) -> None:
    transport, peer = pair
    transport.write(b"a" * 1000)
    transport.write(b"b" * 500)
    assert buffered_bytes(transport) == 1500, changed(
        "bytes written with transport.write are not in dataBuffer/_tempDataLen"
    )
    taken = fill_kernel(transport)
    accepted: list[int] = []
    real = transport.writeSomeData

    def counting(data):  # type: ignore[no-untyped-def]
        n = real(data)
        accepted.append(n if isinstance(n, int) else 0)
        return n

    transport.writeSomeData = counting  # type: ignore[method-assign]
    big = b"c" * 300_000
    transport.write(big)
    transport.doWrite()
    total = 1500 + len(big)
    assert buffered_bytes(transport) == total - sum(accepted), changed(
        "len(dataBuffer) - offset + _tempDataLen is not what Twisted still holds"
    )
    assert buffered_bytes(transport) > 0
    received = drain(transport, peer, taken + total)
    assert received == b"k" * taken + b"a" * 1000 + b"b" * 500 + big
    assert buffered_bytes(transport) == 0


def test_direct_writer_goes_to_the_socket_and_keeps_order_with_twisted_writes(pair) -> None:
    transport, peer = pair
    write = direct_writer(transport, transport)
    assert write != transport.write, "a plain TCP transport gets the direct writer"
    write(b"1" * 100)
    assert buffered_bytes(transport) == 0, "with nothing queued the bytes go to the socket at once"
    transport.write(b"2" * 100)  # a reply queued through Twisted
    write(b"3" * 100)  # must queue behind it, not overtake it
    assert buffered_bytes(transport) == 200
    write(b"4" * 50_000)
    expected = b"1" * 100 + b"2" * 100 + b"3" * 100 + b"4" * 50_000
    assert drain(transport, peer, len(expected)) == expected


def test_direct_writer_queues_what_the_kernel_does_not_take(pair) -> None:
    transport, peer = pair
    write = direct_writer(transport, transport)
    taken = fill_kernel(transport)
    write(b"x" * 20_000)
    assert buffered_bytes(transport) == 20_000, "a full kernel leaves the frame to Twisted"
    write(b"y" * 10)
    assert drain(transport, peer, taken + 20_010) == b"k" * taken + b"x" * 20_000 + b"y" * 10


def test_direct_writer_steps_aside_once_disconnecting(pair) -> None:
    transport, _ = pair
    write = direct_writer(transport, transport)
    transport.disconnecting = True
    write(b"late")
    assert buffered_bytes(transport) == 4, "a disconnecting transport gets Twisted's write"


def test_tls_is_found_by_type_and_never_written_around(pair) -> None:
    transport, _ = pair
    factory = TLSMemoryBIOFactory(CertificateOptions(), False, Factory.forProtocol(Protocol))
    tls = factory.buildProtocol(None)
    tls.makeConnection(transport)
    assert tls.__dict__.get("transport") is transport, changed(
        "TLSMemoryBIOProtocol no longer keeps the lower transport in its instance 'transport'"
    )
    assert socket_transport(tls) is transport
    assert direct_writer(tls, transport) == tls.write, "TLS must use its own (encrypting) write"
    transport.TLS = True
    assert direct_writer(transport, transport) == transport.write, (
        "startTLS inside TCP: no raw send"
    )


def test_transports_without_a_buffer_are_answered_with_none() -> None:
    class Opaque:
        def write(self, data: bytes) -> None: ...

    opaque = Opaque()
    assert socket_transport(opaque) is None
    assert buffered_bytes(None) is None
    assert direct_writer(opaque, None) == opaque.write


def test_autobahn_still_pformats_the_connection_config(monkeypatch) -> None:
    source = inspect.getsource(autobahn_protocol)
    assert "from pprint import pformat" in source and "attrs=pformat(" in source, changed(
        "autobahn.websocket.protocol no longer pretty-prints the config through 'pformat'"
    )
    monkeypatch.setattr(autobahn_protocol, "pformat", autobahn_protocol.pformat)
    defer_autobahn_pformat()
    assert autobahn_protocol.pformat is LazyPformat
    lazy = LazyPformat({"a": 1})
    assert str(lazy) == "{'a': 1}" and f"{lazy:>10}" == "  {'a': 1}"


def test_the_pformat_patch_is_not_an_import_side_effect() -> None:
    source = inspect.getsource(socket_write)
    module_level = [
        line for line in source.splitlines() if line.startswith("autobahn_protocol.pformat")
    ]
    assert not module_level


def test_chatd_overrides_no_autobahn_internals() -> None:
    """Autobahn's ``_trigger`` calls its own ``_send()`` for queued writes;
    a chatd method of that name (or any other private one) breaks it."""
    assert ChatdServerProtocol._send is WebSocketServerProtocol._send
    allowed = {"onConnect", "onOpen", "onMessage", "onClose", "sendCloseFrame", "__init__"}
    for ours, theirs in (
        (ChatdServerProtocol, WebSocketServerProtocol),
        (ChatdWebSocketFactory, WebSocketServerFactory),
    ):
        clashes = {
            name
            for name in vars(ours)
            if hasattr(theirs, name) and name not in allowed and not name.startswith("__")
        }
        assert not clashes, changed(f"{ours.__name__} overrides Autobahn's {sorted(clashes)}")
