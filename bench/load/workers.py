"""Forked generator processes (receivers, viewers, connectors) and the
pipes the main process drives them with.

One Python process cannot count the pushes of a thousand connections as
fast as chatd sends them, so the scenarios fork workers before any event
loop exists and talk to them over ``multiprocessing`` pipes: the main
process sends ``("room", id)``/``("go",)``/``("stop",)``, a worker answers
``("ready", setup)`` and finally ``("done", figures)`` or ``("fail", why)``.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Callable
from typing import Any

import uvloop


def pipe_future(conn: Any) -> asyncio.Future:
    """The next object from a multiprocessing pipe, without blocking the loop."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def readable() -> None:
        loop.remove_reader(conn.fileno())
        try:
            # uvloop makes a watched fd non-blocking; a big message may
            # still be arriving, so read it in blocking mode.
            os.set_blocking(conn.fileno(), True)
            fut.set_result(conn.recv())
        except (EOFError, OSError) as e:
            fut.set_exception(e)

    loop.add_reader(conn.fileno(), readable)
    return fut


def pipe_send(conn: Any, obj: Any) -> None:
    """Send on a pipe the loop may have made non-blocking (see ``pipe_future``)."""
    os.set_blocking(conn.fileno(), True)
    conn.send(obj)


def run_worker(conn: Any, main: Callable, *args: Any) -> None:
    """The body of a forked worker process: run ``main(conn, *args)`` on
    uvloop; report a failure to the parent, never leave it hanging."""
    try:
        uvloop.run(main(conn, *args))
    except Exception as e:
        try:
            pipe_send(conn, ("fail", f"{type(e).__name__}: {e}"))
        except OSError:
            pass


def fork_workers(main: Callable, shares: list[tuple]) -> tuple[list, list]:
    """Fork one worker per entry of ``shares`` (the arguments of
    ``main`` after the pipe), before any event loop exists."""
    ctx = multiprocessing.get_context("fork")
    pipes, procs = [], []
    for share in shares:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=run_worker, daemon=True, args=(child, main, *share))
        proc.start()
        child.close()
        pipes.append(parent)
        procs.append(proc)
    return pipes, procs


def stop_workers(pipes: list, procs: list) -> None:
    """Tell every worker to stop, and kill those that do not within 5 s."""
    for p in pipes:
        try:
            p.send(("stop",))
        except OSError:
            pass
    for proc in procs:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join(1)


async def await_ready(pipes: list, what: str) -> list[dict]:
    """The set-up figures of every worker's ``("ready", …)``; a worker that
    failed instead ends the run."""
    readies = []
    for p in pipes:
        reply = await asyncio.wait_for(pipe_future(p), 300)
        if reply[0] != "ready":
            raise RuntimeError(f"{what} worker failed: {reply[1]}")
        readies.append(reply[1])
    return readies


def slowest(readies: list[dict]) -> dict:
    """Each set-up time of the slowest worker (they ran in parallel)."""
    setup: dict = {}
    for ready in readies:
        setup = {k: max(setup.get(k, 0), v) for k, v in ready.items()}
    return setup


async def gather_workers(
    futures: list[asyncio.Future], timeout: float, what: str
) -> tuple[list[dict], list[str]]:
    """The ("done", result) of every worker: (results, failures)."""
    outs, failures = [], []
    for fut in futures:
        try:
            reply = await asyncio.wait_for(fut, timeout)
        except (TimeoutError, EOFError, OSError) as e:
            reply = ("fail", f"no result from a {what} worker: {e!r}")
        (outs if reply[0] == "done" else failures).append(reply[1])
    return outs, failures
