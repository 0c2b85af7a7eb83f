"""connect over Socket.IO: ``--connects`` connections opened, connected to
the namespace with a token, and closed, ``--connect-window`` in flight.

What one connection does is what socket.io-client does with
``transports: ["websocket"]``: the upgrade to
``/socket.io/?EIO=4&transport=websocket&token=…``, Engine.IO's open packet,
CONNECT ``40{"token":…}``; it is complete when the server's CONNECT reply
``40{"sid":…}`` arrives (both servers send it only after checking the
token); then ``socket.disconnect()``: DISCONNECT ``41``, then the
WebSocket's CLOSE 1000 and the server's CLOSE back.  Anything else (chatd's
``authenticated`` event after the CONNECT reply) is ignored.

The main process is ``load.connect.run``: the same figures (connects/s,
p50/p99 from TCP connect start to the CONNECT reply, server CPU per
connection over the connect phase and with the tail until the server is
idle), from workers that report what ``load.connect``'s do.
"""

from __future__ import annotations

import asyncio
from typing import Any

from picows import WSCloseCode, WSListener, WSMsgType, WSTransport, ws_connect

from load.client import token
from load.connect import ConnectTally, run_connect_worker
from load.measure import monotonic_ns
from load.sio import CONNECT_ERROR, CONNECTED, DISCONNECT, OPEN, PING, PONG, connect_packet
from load.sio import with_token as sio_url
from load.workers import fork_workers


class Connector(WSListener):
    """One connection: open packet → CONNECT with the token → CONNECT reply
    → DISCONNECT and a clean WebSocket close."""

    def __init__(self, started: int, token: str) -> None:
        loop = asyncio.get_running_loop()
        self.started = started  # monotonic_ns before the TCP connect
        self.token = token
        self.authenticated = 0  # monotonic_ns of the CONNECT reply
        self.refused = ""  # CONNECT_ERROR's data
        self.clean = False  # the server answered our CLOSE
        self.ready: asyncio.Future[bool] = loop.create_future()
        self.gone: asyncio.Future[bool] = loop.create_future()

    def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
        kind = frame.msg_type
        if kind == WSMsgType.TEXT:
            p = frame.get_payload_as_bytes()
            if self.authenticated:
                if p[:1] == PING:
                    transport.send(WSMsgType.TEXT, PONG + p[1:])
                return
            if p.startswith(OPEN):
                transport.send(WSMsgType.TEXT, connect_packet(self.token))
            elif p.startswith(CONNECTED):
                self.authenticated = monotonic_ns()
                self.ready.set_result(True)
                transport.send(WSMsgType.TEXT, DISCONNECT)
                transport.send_close(WSCloseCode.OK)
            elif p.startswith(CONNECT_ERROR):
                self.refused = p[2:].decode(errors="replace")[:200]
                self.ready.set_result(False)
            elif p[:1] == PING:
                transport.send(WSMsgType.TEXT, PONG + p[1:])
        elif kind == WSMsgType.CLOSE:
            self.clean = bool(self.authenticated)
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        for fut in (self.ready, self.gone):
            if not fut.done():
                fut.set_result(False)


async def connect_once(job: tuple[str, str], tally: ConnectTally, timeout: float) -> None:
    """Open one connection (``job`` = (URL, token)) and wait for its
    CONNECT reply; the close goes on without holding the window slot."""
    url, tok = job
    started = monotonic_ns()
    try:
        transport, ln = await ws_connect(
            lambda: Connector(started, tok), url, websocket_handshake_timeout=timeout
        )
    except Exception as e:  # refused, reset, handshake rejected or timed out
        tally.fail(f"handshake: {type(e).__name__}: {e}")
        return
    try:
        ok = await asyncio.wait_for(asyncio.shield(ln.ready), timeout)
    except TimeoutError:
        ok = False
    if not ok:
        transport.disconnect()
        why = f"CONNECT_ERROR {ln.refused}" if ln.refused else "no CONNECT reply"
        tally.fail(f"{why} (disconnected: {transport.is_disconnected()})")
        return
    tally.latencies.append(ln.authenticated - started)
    tally.last = max(tally.last, ln.authenticated)
    tally.open.append(ln)  # type: ignore[arg-type]  # only .gone and .clean are read


async def _connect_worker(
    conn: Any, jobs: list[tuple[str, str]], window: int, timeout: float
) -> None:
    """A forked process opening its share of the connections, ``window``
    at a time; reports what ``load.connect``'s workers report."""
    await run_connect_worker(conn, jobs, window, timeout, connect_once)


def start_workers(args: Any) -> tuple[list, list]:
    """Fork the connect workers, each with its share of the connections
    (round robin over the servers) and of the window; tokens are minted
    here, before the measured phase."""
    n = args.connects
    workers = max(1, min(args.workers, n))
    jobs = []
    for i in range(n):
        tok = token(args, f"c{i}")
        jobs.append((sio_url(args.urls[i % len(args.urls)], tok), tok))
    return fork_workers(
        _connect_worker,
        [
            (jobs[w::workers], -(-args.connect_window // workers), args.stall)
            for w in range(workers)
        ],
    )
