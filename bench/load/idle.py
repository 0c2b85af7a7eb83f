"""idle: what an idle authenticated connection costs the server in memory.

A chat server holds far more idle connections than busy ones, so its
resident memory per connection decides how many users a host can keep.
The generator opens ``--idle-warmup`` connections first (the first
connections of a process pay for one-time allocations: lazily imported
code, grown tables, the allocator's first arenas), waits until the server
is idle and reads its VmRSS; then opens ``--idle-connections`` more
(``--connect-window`` at a time, users ``bench-<tag>-i<i>``), waits
``--settle`` s and until the server is idle again (chatd announces each
user online), reads VmRSS again, checks that every connection is still
open, and reports the growth per connection in KiB.

``--protocol native``: ``/ws?token=`` until the ``authenticated`` push
(chatd, bench/ceiling.py); ``socketio``: ``/socket.io/`` until the CONNECT
reply (chatd's binding, bench/socketio-node).  Both answer pings, so a
connection stays open however long the wait.
"""

from __future__ import annotations

from typing import Any

from picows import WSMsgType, WSTransport

from load import client, sio
from load.client import close_all, close_codes, token
from load.connect import settle
from load.measure import CpuWindow, monotonic_ns, own_pids, servers_rss, servers_rss_now


class Idle(client.Base):
    """A native connection that only waits for ``authenticated`` and then
    answers pings (``client.Base`` leaves the frames to its subclasses)."""

    def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            self.ctl.offer(frame.get_payload_as_bytes())
        else:
            self.control(transport, frame)


async def open_idle(args: Any, tokens: list[str]) -> list:
    """Open and authenticate one connection per token over ``args.protocol``."""
    if not tokens:
        return []
    if args.protocol == "socketio":
        return await sio.open_all(sio.SioBase, args.urls, tokens, args.connect_window)
    return await client.open_all(Idle, args.urls, tokens, args.connect_window)


async def run(args: Any) -> dict:
    """The idle scenario: warm-up, baseline, the idle connections, the
    growth of the server's resident memory."""
    n, warm = args.idle_connections, args.idle_warmup
    tokens = [token(args, f"i{i}") for i in range(warm + n)]
    pids = args.server_pids
    rss_start = servers_rss_now(pids)
    warmed = await open_idle(args, tokens[:warm])
    await settle(pids, 1.0, args.stall)
    rss_warm = servers_rss_now(pids)
    cpu = CpuWindow(pids, own_pids(args))
    t0 = monotonic_ns()
    idle = await open_idle(args, tokens[warm:])
    t1 = monotonic_ns()
    window = cpu.stop(t0)
    tail_s, tail_cpu_s = await settle(pids, args.settle, args.stall)
    rss_end = servers_rss_now(pids)
    everyone = warmed + idle
    alive = sum(1 for ln in everyone if not ln.closed)
    await close_all(everyone)
    growth = None if rss_end is None or rss_warm is None else rss_end - rss_warm
    connect_s = max(1e-9, (t1 - t0) / 1e9)
    return {
        "scenario": "idle",
        "protocol": args.protocol,
        "connections": n,
        "warmup": warm,
        "window": args.connect_window,
        "alive": alive,
        "expected_alive": warm + n,
        "server_closes": close_codes(everyone),
        "rss_start_mb": rss_start,
        "rss_warm_mb": rss_warm,
        "rss_end_mb": rss_end,
        "rss_growth_mb": growth,
        "kib_per_connection": None if growth is None or not n else growth * 1024 / n,
        "connect_s": connect_s,
        "connects_per_s": n / connect_s,
        **window,
        "server_us_per_connect": 1e6 * cpu.server_s / n if n else None,
        "settle_s": tail_s,
        "server_settle_cpu_s": tail_cpu_s,
        "server_peak_rss_mb": servers_rss(pids),
    }
