"""Load generator for chatd (and bench/ceiling.py, bench/socketio-node) on picows + uvloop.

Five scenarios, each printing one JSON object (its results) as the last line
of stdout; each is a module of bench/load/ whose docstring says what it
does and counts:

* ``fanout``: one sender, ``--receivers`` members of one public room,
  ``--messages`` sent with ``--window`` un-acked.
* ``ingest``: ``--connections`` connections in ``--rooms`` rooms, each
  keeping ``--window`` messages un-acked for ``--duration`` seconds.
* ``live``: ``--viewers`` watch one live stream while ``--senders`` send
  ``--reactions`` live:reactions at ``--reaction-rate`` per second.
* ``connect``: ``--connects`` connections opened (token in the URL),
  authenticated and closed cleanly, ``--connect-window`` in flight.
* ``idle``: ``--idle-connections`` connections opened and held idle;
  the server's resident memory per connection.

``--protocol socketio`` speaks Socket.IO v5 over Engine.IO v4's WebSocket
transport instead of the native envelope (``load.sio``; ``--url`` is then
``ws://host:port/socket.io/?EIO=4&transport=websocket``) for ``fanout``
(``load.sio_fanout``), ``connect`` (``load.sio_connect``) and ``idle``.

The content of every message starts with ``~T<20-digit monotonic_ns><8-digit
index>`` (a reaction's ``emoji`` is exactly that, 30 of its 32 characters);
receivers find it with ``bytes.find``, never parse JSON on the hot path.
``time.monotonic_ns()`` is CLOCK_MONOTONIC, the same clock in every
process on the machine, so sender and receivers can be different processes.

With ``--server-pid`` the server's CPU time (utime+stime from /proc, all its
threads) is sampled at the start and at the end of the measured window; the
generator's own CPU (main process plus workers) is measured the same way,
and so is every other process on the machine (PostgreSQL, or whatever else
disturbs the run).  The delay is measured when the generator handles the
frame, so it includes any time the frame waited for the generator.

Several servers of one cluster (chatd processes sharing Redis and the
database): give ``--url`` once per server (or comma-separated) and
``--server-pid`` once per server.  Receivers, viewers and ingest
connections are spread round robin over the URLs (so every worker process
talks to every server); the fanout sender, the live host and the reaction
senders use the first URL.  Server CPU is the sum over the processes; ``connections_by_server``
and ``short_by_server`` (connections that missed pushes) are keyed by URL
index.

Used by bench/run.py; can be run by hand against a running server:

    python bench/loadgen.py fanout --url ws://127.0.0.1:8080/ws --secret-file DIR/jwt-secret
    python bench/loadgen.py fanout --protocol socketio \
        --url 'ws://127.0.0.1:8080/socket.io/?EIO=4&transport=websocket' --secret-file DIR/jwt-secret
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import uvloop

from load import connect, fanout, idle, ingest, latency, live, sio_connect, sio_fanout
from load.workers import stop_workers

# -- command line --------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("scenario", choices=["fanout", "ingest", "live", "connect", "idle", "latency"])
    p.add_argument(
        "--protocol",
        choices=["native", "socketio"],
        default="native",
        help="native: chatd's JSON envelope on /ws; socketio: Socket.IO v5 on /socket.io/ "
        "(fanout, connect, idle, latency) (default native)",
    )
    p.add_argument(
        "--url",
        required=True,
        action="append",
        help="ws://host:port/ws; several servers of one cluster: repeat it or separate with commas "
        "(receivers/viewers are spread round robin, everything else uses the first)",
    )
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--secret", help="HS256 secret to mint tokens with")
    g.add_argument(
        "--secret-file", help="file holding the HS256 secret (chatd's DATA_DIR/jwt-secret)"
    )
    p.add_argument(
        "--server-pid",
        type=int,
        action="append",
        default=[],
        help="sample this process's CPU over the measured window (repeat for several servers: summed)",
    )
    p.add_argument(
        "--size", type=int, default=64, help="characters of message content (default 64)"
    )
    p.add_argument(
        "--window", type=int, default=None, help="un-acked messages per sending connection"
    )
    p.add_argument(
        "--stall", type=float, default=15.0, help="give up after this many seconds without progress"
    )
    p.add_argument(
        "--user-tag",
        default=None,
        help="user ids are bench-TAG-<name> (default: a fresh random TAG per run; '' for bench-<name>)",
    )
    p.add_argument("--timeout", type=float, default=120.0, help="upper bound for the sending phase")
    f = p.add_argument_group("fanout")
    f.add_argument(
        "--receiver-dialect",
        choices=["native", "chatflow", "seed000"],
        default="native",
        help="fanout: the receivers' dialect (its /ws/<name> path); the sender stays native",
    )
    f.add_argument("--receivers", type=int, default=1000)
    f.add_argument("--messages", type=int, default=2000)
    f.add_argument(
        "--workers",
        type=int,
        default=1,
        help="receiver (fanout), viewer (live) or connecting (connect) processes",
    )
    f.add_argument(
        "--sample",
        type=int,
        default=10,
        help="every N-th receiver or viewer also measures delay and order (all count exactly; default 10)",
    )
    i = p.add_argument_group("ingest")
    i.add_argument("--connections", type=int, default=50)
    i.add_argument("--rooms", type=int, default=5, help="ingest and latency: rooms")
    i.add_argument(
        "--duration", type=float, default=10.0, help="ingest and latency: seconds measured"
    )
    la = p.add_argument_group("latency")
    la.add_argument("--members", type=int, default=5, help="latency: connections per room")
    la.add_argument(
        "--rate", type=float, default=1.0, help="latency: messages per second per connection"
    )
    la.add_argument(
        "--warmup", type=float, default=3.0, help="latency: seconds sent before measuring"
    )
    lv = p.add_argument_group("live")
    lv.add_argument(
        "--viewers", type=int, default=1000, help="connections that join the stream and count"
    )
    lv.add_argument("--reactions", type=int, default=5000, help="reactions sent in all")
    lv.add_argument(
        "--reaction-rate",
        type=float,
        default=500.0,
        help="reactions per second, all senders together",
    )
    lv.add_argument(
        "--senders", type=int, default=4, help="reacting connections (users of their own)"
    )
    c = p.add_argument_group("connect")
    c.add_argument(
        "--connects", type=int, default=5000, help="connections opened, authenticated and closed"
    )
    c.add_argument(
        "--connect-window",
        type=int,
        default=64,
        help="connection attempts in flight, all workers together",
    )
    c.add_argument(
        "--settle",
        type=float,
        default=4.0,
        help="after the last close, wait this long (chatd's 3 s presence grace + 1) and then for the "
        "server to go idle, and report the server CPU used meanwhile",
    )
    d = p.add_argument_group("idle")
    d.add_argument(
        "--idle-connections",
        type=int,
        default=2000,
        help="idle connections whose memory is measured (default 2000)",
    )
    d.add_argument(
        "--idle-warmup",
        type=int,
        default=100,
        help="connections opened before the baseline is read, so one-time allocations are not "
        "counted per connection (default 100)",
    )
    args = p.parse_args(argv)
    if args.protocol == "socketio" and args.scenario not in (
        "fanout",
        "connect",
        "idle",
        "latency",
    ):
        p.error("--protocol socketio has the scenarios fanout, connect, idle and latency")
    if args.scenario == "live" and (
        args.reactions < 1 or args.reaction_rate <= 0 or args.viewers < 1
    ):
        p.error("live needs --viewers >= 1, --reactions >= 1 and --reaction-rate > 0")
    if args.user_tag is None:
        args.user_tag = os.urandom(3).hex()
    args.urls = [u for value in args.url for u in value.split(",") if u]
    args.url = args.urls[0]
    args.server_pids = args.server_pid
    if args.secret_file:
        with open(args.secret_file) as fh:
            args.secret = fh.read().strip()
    if args.window is None:
        args.window = 32 if args.scenario == "fanout" else 8
    return args


# (scenario, protocol) -> (fork its worker processes, run it in the main process)
WORKER_SCENARIOS = {
    ("fanout", "native"): (fanout.start_workers, fanout.run),
    ("live", "native"): (live.start_workers, live.run),
    ("connect", "native"): (connect.start_workers, connect.run),
    ("fanout", "socketio"): (sio_fanout.start_workers, sio_fanout.run),
    # The main process only collects what the workers report, the same for both.
    ("connect", "socketio"): (sio_connect.start_workers, connect.run),
}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.worker_pids = []
    if (args.scenario, args.protocol) in WORKER_SCENARIOS:
        start, run = WORKER_SCENARIOS[args.scenario, args.protocol]
        pipes, procs = start(args)
        args.worker_pids = [proc.pid for proc in procs]
        try:
            result = uvloop.run(run(args, pipes, len(pipes)))
        finally:
            stop_workers(pipes, procs)
    elif args.scenario == "idle":
        result = uvloop.run(idle.run(args))
    elif args.scenario == "latency":
        result = uvloop.run(latency.run(args))
    else:
        result = uvloop.run(ingest.run(args))
    result["protocol"] = args.protocol
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
