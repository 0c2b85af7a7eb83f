"""Fixtures: real chatd services in-process on free loopback ports, on
SQLite and (when CHATD_TEST_POSTGRES_URL is set) PostgreSQL.

Each PostgreSQL test gets a schema of its own (search_path in the URL), so
tests never see each other's rows and the shared database stays clean."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import psycopg2
import pytest
import pytest_twisted

from chatd.auth import mint_token
from chatd.config import Config, load_config
from chatd.service import ChatdService
from tests.wsclient import WsClient

POSTGRES_ENV = "CHATD_TEST_POSTGRES_URL"
TEST_SECRET = "test-secret-" + "x" * 40


def postgres_url() -> str | None:
    return os.environ.get(POSTGRES_ENV) or None


def requires_postgres() -> str:
    url = postgres_url()
    if url is None:
        if os.environ.get("CHATD_TEST_REQUIRE_SERVICES"):
            pytest.fail(f"{POSTGRES_ENV} is not set but CHATD_TEST_REQUIRE_SERVICES is")
        pytest.skip(f"{POSTGRES_ENV} is not set (CI sets it; see .ci/run)")
    return url


@pytest.fixture
def pg_schema_url() -> Any:
    """A PostgreSQL URL whose search_path is a fresh, private schema."""
    base = requires_postgres()
    schema = "t_" + secrets.token_hex(6)
    conn = psycopg2.connect(base)
    conn.autocommit = True
    conn.cursor().execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in base else "?"
    yield f"{base}{separator}options={quote(f'-csearch_path={schema}')}"
    conn.cursor().execute(f"DROP SCHEMA {schema} CASCADE")
    conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: Any, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/chatd.sqlite3"
    return request.getfixturevalue("pg_schema_url")


def make_config(tmp_path: Any, database: str, **overrides: Any) -> Config:
    values: dict[str, Any] = {
        "listen": "tcp:0:interface=127.0.0.1",
        "data_dir": str(tmp_path / "data"),
        "database": database,
        "jwt_secret": TEST_SECRET,
    }
    values.update(overrides)
    return load_config(values, environ={})


class RunningServer:
    def __init__(self, service: ChatdService) -> None:
        self.service = service
        self.config = service.config
        port = service.port
        assert port is not None
        self.port = port.getHost().port
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        self.http = f"http://127.0.0.1:{self.port}"
        self.clients: list[WsClient] = []

    def token(self, user: str, **kwargs: Any) -> str:
        return mint_token(self.config, user, **kwargs)

    async def connect(self, user: str | None = None, **kwargs: Any) -> WsClient:
        token = self.token(user) if user is not None else None
        client = await WsClient.open(self.url, token=token, **kwargs)
        self.clients.append(client)
        return client

    async def connect_with_token(self, token: str) -> WsClient:
        client = await WsClient.open(self.url, token=token)
        self.clients.append(client)
        return client

    async def stop(self) -> None:
        for client in self.clients:
            if client.is_open:
                await client.close()
        if self.service.running:
            await self.service.stopService()


async def start_server(config: Config, prepare: bool = True) -> RunningServer:
    from twisted.internet import reactor  # installed by pytest-twisted (asyncio)

    service = ChatdService(config, reactor)
    if prepare:
        service.prepare()
    service.privilegedStartService()
    await service.startService()
    return RunningServer(service)


@pytest_twisted.async_yield_fixture
async def server_factory(tmp_path: Any, database_url: str) -> Any:
    """Start servers on the test's database: ``await server_factory(**overrides)``."""
    started: list[RunningServer] = []

    async def start(**overrides: Any) -> RunningServer:
        server = await start_server(make_config(tmp_path, database_url, **overrides))
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


@pytest_twisted.async_yield_fixture
async def server(server_factory: Callable[..., Any]) -> Any:
    yield await server_factory()
