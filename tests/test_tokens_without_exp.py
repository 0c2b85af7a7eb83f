"""``accept_tokens_without_exp`` over a real socket: seed 004's tokens
(``sub``, ``name``, ``iat`` and no ``exp``) authenticate only with the
setting on, and the daemon says so at start-up."""

from __future__ import annotations

import time

import jwt
import pytest_twisted
from twisted.logger import globalLogPublisher

from tests.conftest import TEST_SECRET
from tests.wsclient import WsClient


def seed_004_token(user: str, **extra: object) -> str:
    claims = {"sub": user, "name": "John Doe", "iat": int(time.time()), **extra}
    return jwt.encode(claims, TEST_SECRET, algorithm="HS256")


@pytest_twisted.ensureDeferred
async def test_without_the_setting_a_token_without_exp_is_refused(server):
    client = await WsClient.open(server.url, token=seed_004_token("user123"), expect_auth=False)
    error = await client.next("error")
    assert error["data"]["code"] == "UNAUTHORIZED" and "'exp'" in error["data"]["message"]
    assert await client.closed() == 4001


@pytest_twisted.ensureDeferred
async def test_with_the_setting_it_authenticates_and_start_up_warns(server_factory):
    warnings: list[dict] = []

    def observe(event: dict) -> None:
        if event.get("event") == "config.warning":
            warnings.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        server = await server_factory(accept_tokens_without_exp=True)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert len(warnings) == 1 and "accept_tokens_without_exp" in warnings[0]["warning"]
    assert warnings[0]["log_level"].name == "warn"

    client = await WsClient.open(server.url, token=seed_004_token("user123"))
    assert client.user_id == "user123"
    expired = seed_004_token("user456", exp=int(time.time()) - 60)
    late = await WsClient.open(server.url, token=expired, expect_auth=False)
    error = await late.next("error")
    assert error["data"]["code"] == "UNAUTHORIZED" and "expired" in error["data"]["message"]
    assert await late.closed() == 4001
    await client.close()
