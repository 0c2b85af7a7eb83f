"""The database failing under chatd, over the real protocol: PostgreSQL
going silent with its connections open (a network partition) and going
away under load, behind a TCP proxy the test controls; and SQLite's disk
filling up (a small tmpfs).  Every request gets an answer in time, nothing
acknowledged is lost, nothing half-done is stored, and chatd recovers
without a restart."""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import select
import socket
import struct
import subprocess
import threading
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from chatd.storage.engines import engine_for
from chatd.storage.schema import migrate
from tests.conftest import RunningServer, make_config, start_server
from tests.test_http_api import API_KEY, http
from tests.wsclient import WsClient, gather

BOUND = 1.0
"""database_timeout in these tests, in seconds."""
DEADLINE = 3 * BOUND + 2
"""How long a test waits for any answer: a message may wait for the batch
before its own (two bounds), plus room for a slow machine.  Without the
bound the answers come only when the partition heals."""


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class PartitionProxy:
    """A TCP proxy on a free loopback port in front of PostgreSQL, on a
    thread of its own (so that it keeps forwarding while the reactor
    waits for a pool thread).  ``partition()`` stops reading both ways with
    every socket left open: bytes and ends of stream wait in the kernel, as
    a network that drops packets leaves them to retransmission, and flow
    again on ``heal()``.  ``kill()`` resets every proxied connection (the
    server went away); new connections are accepted as before."""

    def __init__(self, host: str, port: int) -> None:
        self._upstream = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._peers: dict[socket.socket, socket.socket] = {}
        self._ended: set[socket.socket] = set()
        self._partitioned = False
        self._requests: queue.Queue[tuple[str, threading.Event, list[int]]] = queue.Queue()
        self._wake_read, self._wake_write = socket.socketpair()
        self._thread = threading.Thread(target=self._run, name="partition-proxy", daemon=True)
        self._thread.start()

    # -- the test's side: each call returns once the proxy thread did it ----------------

    def partition(self) -> None:
        self._call("partition")

    def heal(self) -> None:
        self._call("heal")

    def kill(self) -> int:
        """Reset every open connection; how many there were."""
        return self._call("kill")

    def stop(self) -> None:
        self._call("stop")
        self._thread.join(5)

    def _call(self, what: str) -> int:
        if not self._thread.is_alive():
            return 0
        done, result = threading.Event(), [0]
        self._requests.put((what, done, result))
        self._wake_write.send(b"x")
        assert done.wait(5), f"the proxy did not {what}"
        return result[0]

    # -- the proxy thread ---------------------------------------------------------------

    def _run(self) -> None:
        running = True
        while running:
            readable = [self._listener, self._wake_read]
            if not self._partitioned:
                readable += [s for s in self._peers if s not in self._ended]
            for sock in select.select(readable, [], [], 1.0)[0]:
                if sock is self._wake_read:
                    running = self._serve_requests()
                elif sock is self._listener:
                    self._accept()
                elif sock in self._peers:
                    self._forward(sock)
        for sock in [*self._peers, self._listener, self._wake_read, self._wake_write]:
            sock.close()

    def _serve_requests(self) -> bool:
        self._wake_read.recv(4096)
        running = True
        while not self._requests.empty():
            what, done, result = self._requests.get()
            if what == "partition":
                self._partitioned = True
            elif what == "heal":
                self._partitioned = False
            elif what == "kill":
                result[0] = len(self._peers) // 2
                for sock in list(self._peers):
                    self._reset(sock)
            else:
                running = False
            done.set()
        return running

    def _accept(self) -> None:
        inbound, _ = self._listener.accept()
        try:
            outbound = socket.create_connection(self._upstream, timeout=5)
        except OSError:
            inbound.close()
            return
        self._peers[inbound], self._peers[outbound] = outbound, inbound

    def _forward(self, sock: socket.socket) -> None:
        peer = self._peers[sock]
        try:
            data = sock.recv(65536)
            if data:
                peer.sendall(data)
                return
            peer.shutdown(socket.SHUT_WR)
        except OSError:
            self._reset(sock)
            return
        self._ended.add(sock)
        if peer in self._ended:
            for end in (sock, peer):
                self._peers.pop(end, None)
                self._ended.discard(end)
                end.close()

    def _reset(self, sock: socket.socket) -> None:
        for end in (sock, self._peers.pop(sock, None)):
            if end is None:
                continue
            self._peers.pop(end, None)
            self._ended.discard(end)
            with contextlib.suppress(OSError):
                end.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            end.close()


async def proxied_server(tmp_path: Any, pg_schema_url: str, **overrides: Any) -> Any:
    """chatd on the test's schema through a fresh ``PartitionProxy``."""
    parts = urlsplit(pg_schema_url)
    proxy = PartitionProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    port = proxy.port
    user = f"{parts.username}@" if parts.username else ""
    url = urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}"))
    # Migrations block (twistd runs them before the reactor): apply them
    # directly, since the proxy runs on this very reactor.
    migrate(engine_for(pg_schema_url))
    config = make_config(tmp_path, url, database_timeout=BOUND, api_key=API_KEY, **overrides)
    return proxy, await start_server(config, prepare=False)


async def ready(server: RunningServer, timeout: float = DEADLINE) -> tuple[int, Any]:
    answer: Deferred[tuple[int, Any]] = Deferred.fromCoroutine(http(server, "GET", "/readyz"))
    return await answer.addTimeout(timeout, _reactor())


async def answers(client: WsClient, requests: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """Send every request at once, then collect each one's reply; all of
    them within ``DEADLINE`` of the first send."""
    reactor = _reactor()
    ids = [f"q{index}-{reactor.seconds()}" for index in range(len(requests))]
    for request_id, (event, data) in zip(ids, requests, strict=True):
        await client.send(event, data, request_id)
    end = reactor.seconds() + DEADLINE
    return [await client.reply(rid, max(0.01, end - reactor.seconds())) for rid in ids]


async def history(client: WsClient, room_id: str) -> list[dict[str, Any]]:
    """Every message of the room, oldest first (paged with ``after``)."""
    messages: list[dict[str, Any]] = []
    while True:
        page = await client.ok(
            "chat:history",
            {"chatId": room_id, "after": messages[-1]["seq"] if messages else 0, "limit": 100},
        )
        messages += page["messages"]
        if not page["hasMore"]:
            return messages


@pytest_twisted.ensureDeferred
async def test_a_silent_database_gets_answers_in_time_and_recovers(tmp_path, pg_schema_url):
    proxy, server = await proxied_server(tmp_path, pg_schema_url)
    try:
        alice = await server.connect("alice")
        room = (await alice.ok("chat:create", {"name": "r", "type": "public"}))["room"]["id"]
        await alice.ok("chat:join", room)
        assert (await alice.ok("chat:message", {"chatId": room, "content": "before"}))["seq"] == 1

        proxy.partition()
        # Two rounds: the second finds the pool threads cut, reconnecting
        # or queued behind the first round.  More requests than threads.
        for round_ in ("first", "second"):
            replies = await answers(
                alice,
                [("chat:message", {"chatId": room, "content": f"{round_} try"})]
                + [("chat:history", {"chatId": room})] * 6,
            )
            assert [r["type"] for r in replies] == ["error"] * 7, replies
            assert {r["data"]["code"] for r in replies} == {"UNAVAILABLE"}, replies
            status, body = await ready(server)
            assert status == 503 and body["storage"].startswith("unavailable"), body
        status, body = await http(
            server, "POST", "/api/rooms", API_KEY, {"name": "x", "type": "public"}
        )
        assert status == 503 and body["error"]["code"] == "UNAVAILABLE"

        proxy.heal()
        # The same connection, no restart: the refused messages took no seq.
        ack = await alice.ok("chat:message", {"chatId": room, "content": "after"}, DEADLINE)
        assert ack["seq"] == 2
        assert [m["content"] for m in await history(alice, room)] == ["before", "after"]
        status, body = await ready(server)
        assert status == 200 and body == {"status": "ready", "storage": "ok"}
    finally:
        proxy.heal()  # so that nothing waits on it while stopping
        await server.stop()
        proxy.stop()


@pytest_twisted.ensureDeferred
async def test_postgresql_going_away_under_load_loses_nothing_acknowledged(tmp_path, pg_schema_url):
    proxy, server = await proxied_server(tmp_path, pg_schema_url)
    reactor = _reactor()
    try:
        clients = [await server.connect(f"user{i}") for i in range(4)]
        room = (await clients[0].ok("chat:create", {"name": "r", "type": "public"}))["room"]["id"]
        for client in clients:
            await client.ok("chat:join", room)
        acked: dict[str, int] = {}
        refused: list[str] = []
        killed: list[int] = []
        sending = [True]

        async def send_until_stopped(client: WsClient, name: str) -> None:
            n = 0
            while sending[0]:
                content = f"{name} {n}"
                n += 1
                frame = await client.request(
                    "chat:message", {"chatId": room, "content": content}, DEADLINE
                )
                if frame["type"] == "ack":
                    acked[content] = frame["data"]["seq"]
                else:
                    assert frame["data"]["code"] == "UNAVAILABLE", frame
                    refused.append(content)

        async def kill_now_and_then() -> None:
            for _ in range(5):
                await deferLater(reactor, 0.15, lambda: None)
                killed.append(proxy.kill())
            await deferLater(reactor, 0.15, lambda: None)
            sending[0] = False

        await gather(
            *(send_until_stopped(c, f"u{i}") for i, c in enumerate(clients)),
            kill_now_and_then(),
        )
        assert all(killed), f"some kill found no open connection: {killed}"
        for client in clients:  # read the pushes, so that closing is quick
            await client.drain(0.2)

        stored = await history(clients[0], room)
        seqs = [m["seq"] for m in stored]
        assert seqs == list(range(1, len(stored) + 1)), "seqs have a gap or a repeat"
        by_content = {m["content"]: m["seq"] for m in stored}
        assert len(by_content) == len(stored), "a message was stored twice"
        for content, seq in acked.items():
            assert by_content.get(content) == seq, f"acked {content!r} (seq {seq}) is not stored"
        unexplained = set(by_content) - set(acked) - set(refused)
        assert not unexplained, f"stored without being sent: {unexplained}"
        assert len(acked) > 20, "the load was too light to mean anything"
        # and it goes on: the same connections keep working
        ack = await clients[1].ok("chat:message", {"chatId": room, "content": "end"})
        assert ack["seq"] == len(stored) + 1
    finally:
        proxy.heal()  # so that nothing waits on it while stopping
        await server.stop()
        proxy.stop()


@pytest.fixture
def tiny_disk(tmp_path: Any) -> Any:
    """A 2 MiB tmpfs (root only); unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here: {done.stderr.strip()} (see tests/unit/test_storage_faults.py)"
        )
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(directory: Any) -> Any:
    """Take every free byte of the filesystem with one file; its path."""
    path = directory / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        size = 65536
        while size:
            try:
                os.write(fd, b"\0" * size)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                size //= 2
    finally:
        os.close(fd)
    return path


@pytest_twisted.ensureDeferred
async def test_a_full_disk_gives_unavailable_and_reads_go_on(tmp_path, tiny_disk):
    data = tiny_disk / "data"
    server = await start_server(
        make_config(tmp_path, f"sqlite:///{data}/chatd.sqlite3", data_dir=str(data))
    )
    filler = None
    try:
        alice = await server.connect("alice")
        room = (await alice.ok("chat:create", {"name": "r", "type": "public"}))["room"]["id"]
        await alice.ok("chat:join", room)
        acked = [await alice.ok("chat:message", {"chatId": room, "content": "first"})]
        filler = fill(tiny_disk)
        refused = None
        for n in range(3000):  # until the WAL has to grow
            frame = await alice.request(
                "chat:message", {"chatId": room, "content": f"{n:04} " + "x" * 3990}
            )
            if frame["type"] == "error":
                refused = frame
                break
            acked.append(frame["data"])
        assert refused is not None, "the disk never filled up"
        assert refused["data"]["code"] == "UNAVAILABLE", refused
        # reads go on, on this connection and new ones; the process is fine
        page = await alice.ok("chat:history", {"chatId": room, "limit": 1})
        assert page["messages"][-1]["seq"] == acked[-1]["seq"]
        bob = await server.connect("bob")
        assert (await bob.ok("chat:join", room))["room"]["lastSeq"] == acked[-1]["seq"]
        status, _ = await http(server, "GET", "/healthz")
        assert status == 200

        filler.unlink()
        filler = None
        ack = await alice.ok("chat:message", {"chatId": room, "content": "space again"})
        assert ack["seq"] == acked[-1]["seq"] + 1, "the refused message must not have taken a seq"
    finally:
        if filler is not None:
            filler.unlink()
        await server.stop()
