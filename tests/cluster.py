"""Several real ``twistd -n chatd`` processes sharing one PostgreSQL schema
and one Redis (under a key prefix of their own), for the scale-out tests.

Redis comes from ``CHATD_TEST_REDIS_URL`` (``.ci/run`` sets it); tests that
stop Redis start a private ``redis-server`` on a free port instead
(``PrivateRedis``), never the machine's shared one."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from chatd.auth import mint_token
from chatd.config import Config
from tests.daemon import Daemon, clean_env, free_port
from tests.syncclient import Client

REDIS_ENV = "CHATD_TEST_REDIS_URL"
SECRET = "cluster-secret-" + "y" * 40
API_KEY = "cluster-api-key-" + "z" * 24


def requires_redis() -> str:
    url = os.environ.get(REDIS_ENV)
    if not url:
        if os.environ.get("CHATD_TEST_REQUIRE_SERVICES"):
            pytest.fail(f"{REDIS_ENV} is not set but CHATD_TEST_REQUIRE_SERVICES is")
        pytest.skip(f"{REDIS_ENV} is not set (CI sets it; see .ci/run)")
    return url


def requires_redis_server() -> str:
    path = shutil.which("redis-server")
    if path is None:
        if os.environ.get("CHATD_TEST_REQUIRE_SERVICES"):
            pytest.fail("redis-server is not installed but CHATD_TEST_REQUIRE_SERVICES is set")
        pytest.skip("redis-server is not installed")
    return path


def pubsub_channels(redis_url: str, pattern: str) -> set[str]:
    """PUBSUB CHANNELS over a plain socket (RESP), to see what nodes subscribe."""
    from urllib.parse import urlsplit

    parts = urlsplit(redis_url)
    command = [b"PUBSUB", b"CHANNELS", pattern.encode()]
    wire = b"*%d\r\n" % len(command) + b"".join(b"$%d\r\n%s\r\n" % (len(c), c) for c in command)
    with socket.create_connection((parts.hostname, parts.port or 6379), timeout=5) as s:
        s.sendall(wire)
        reader = s.makefile("rb")
        count = int(reader.readline()[1:])
        channels = set()
        for _ in range(count):
            length = int(reader.readline()[1:])
            channels.add(reader.read(length + 2)[:-2].decode())
    return channels


class PrivateRedis:
    """A redis-server of the test's own, on a free loopback port, that the
    test may stop and start again (same port)."""

    def __init__(self, workdir: Path, tls: dict[str, Path] | None = None) -> None:
        self.binary = requires_redis_server()
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.listen = ["--port", str(self.port)]
        if tls is not None:  # TLS only, on the same port
            self.listen = [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                str(tls["cert"]),
                "--tls-key-file",
                str(tls["key"]),
                "--tls-ca-cert-file",
                str(tls["ca"]),
                "--tls-auth-clients",
                "no",
            ]

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            *self.listen,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
        ]
        self.proc = subprocess.Popen(
            args, stdout=open(self.workdir / "redis.log", "ab"), stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"redis-server exited: {(self.workdir / 'redis.log').read_text()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


class Node:
    def __init__(self, daemon: Daemon, port: int) -> None:
        self.daemon = daemon
        self.port = port
        self.ws_url = f"ws://127.0.0.1:{port}/ws"
        self.base = f"http://127.0.0.1:{port}"


class Cluster:
    def __init__(self, tmp_path: Path, database: str, redis_url: str, grace: float = 0.5) -> None:
        self.tmp_path = tmp_path
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.database = database
        self.redis_url = redis_url
        self.prefix = f"t{secrets.token_hex(4)}:"
        self.grace = grace
        self.nodes: list[Node] = []
        self.clients: list[Client] = []
        self.config = Config(jwt_secret=SECRET)

    def start(
        self, count: int = 1, extra: list[str] | None = None, ready: bool = True
    ) -> list[Node]:
        """Start nodes; wait until healthy and (unless ``ready=False``) ready."""
        started = [self._spawn(extra or []) for _ in range(count)]
        for node in started:
            node.daemon.wait_healthy(node.port)
        for node in started:
            if ready:
                self.wait_ready(node)
        return started

    def _spawn(self, extra: list[str]) -> Node:
        port = free_port()
        index = len(self.nodes)
        args = [
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--database",
            self.database,
            "--redis",
            self.redis_url,
            "--redis-prefix",
            self.prefix,
            "--jwt-secret",
            SECRET,
            "--api-key",
            API_KEY,
            "--data-dir",
            str(self.tmp_path / f"node{index}"),
            "--presence-grace",
            str(self.grace),
            "--viewer-count-interval",
            "0.2",
            *extra,
        ]
        node = Node(Daemon(args, clean_env(), str(self.tmp_path)), port)
        self.nodes.append(node)
        return node

    def wait_ready(self, node: Node, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, _ = self.http(node, "GET", "/readyz", auth=False)
            if status == 200:
                return
            time.sleep(0.1)
        raise AssertionError(f"node {node.port} not ready:\n{node.daemon.output()}")

    def token(self, user: str, admin: bool = False) -> str:
        return mint_token(self.config, user, admin=admin)

    def client(self, node: Node, user: str) -> Client:
        client = Client(node.ws_url, self.token(user))
        self.clients.append(client)
        return client

    def http(
        self, node: Node, method: str, path: str, body: Any = None, auth: bool = True
    ) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(node.base + path, data=data, method=method)
        if auth:
            request.add_header("Authorization", f"Bearer {API_KEY}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                raw = response.read()
                status = response.status
        except urllib.error.HTTPError as e:
            raw, status = e.read(), e.code
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def kill(self, node: Node) -> None:
        node.daemon.proc.send_signal(signal.SIGKILL)
        node.daemon.proc.wait()

    def stop(self) -> list[str]:
        """Close clients, stop every node; return nodes that did not stop
        cleanly (with their log)."""
        for client in self.clients:
            try:
                client.close()
            except Exception:
                pass
        unclean = []
        for node in self.nodes:
            if (
                node.daemon.proc.poll() is not None
                and node.daemon.proc.returncode == -signal.SIGKILL
            ):
                node.daemon.log.close()
                continue
            if not node.daemon.terminate():
                unclean.append(node.daemon.output()[-3000:])
        return unclean
