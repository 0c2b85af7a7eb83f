"""A bare Twisted + Autobahn echo server with chatd's ``/ws`` options: the
baseline run.py compares chatd's ``/ws/echo`` with.

``python -m tests.autobahn.bare_echo PORT`` listens on 127.0.0.1:PORT.
Nothing of chatd runs here but ``protocol_options`` (the very dict
``ChatdWebSocketFactory`` applies) and the echo's message cap, so any case
that is worse on chatd than here is chatd's doing: its protocol class, its
session, its write path (bindings/socket_write.py).
"""

from __future__ import annotations

import sys

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor

from chatd.bindings.echo import ECHO_MAX_MESSAGE_SIZE
from chatd.bindings.websocket import protocol_options
from chatd.config import Config


class EchoProtocol(WebSocketServerProtocol):
    """Autobahn's own write path: ``sendMessage``."""

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.sendMessage(payload, isBinary)


def main() -> None:
    port = int(sys.argv[1])
    defaults = Config()
    factory = WebSocketServerFactory(server="bare-autobahn")
    factory.protocol = EchoProtocol
    factory.setProtocolOptions(
        **protocol_options(
            ECHO_MAX_MESSAGE_SIZE,
            defaults.close_handshake_timeout,
            ping_interval=defaults.ping_interval,
            ping_timeout=defaults.ping_timeout,
        )
    )
    reactor.listenTCP(port, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    print(f"bare Autobahn echo listening on 127.0.0.1:{port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
