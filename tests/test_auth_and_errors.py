"""Authentication (PROTOCOL.md section 2), the envelope's error codes and
close codes (section 3), over real sockets.  After every refused request
the connection must still work."""

from __future__ import annotations

import asyncio
import json
import time

import jwt
import pytest_twisted
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import TEST_SECRET
from tests.wsclient import WsClient, deferred


def hs256(claims, secret=TEST_SECRET, **headers):
    return jwt.encode(claims, secret, algorithm="HS256", headers=headers or None)


def claims(sub="alice", ttl=60, **extra):
    return {"sub": sub, "exp": int(time.time()) + ttl, **extra}


async def still_works(client):
    frame = await client.request("ping")
    assert frame["type"] == "ack" and frame["data"]["timestamp"]


@pytest_twisted.ensureDeferred
async def test_header_query_and_first_frame_auth(server):
    by_header = await WsClient.open(server.url, header_token=server.token("alice"))
    assert by_header.user_id == "alice" and by_header.connection_id
    by_query = await WsClient.open(server.url, token=server.token("bob"))
    assert by_query.user_id == "bob"
    by_frame = await WsClient.open(server.url)
    ack = await by_frame.ok("auth", {"token": server.token("carol")})
    assert ack["userId"] == "carol"
    pushed = await by_frame.next("authenticated")
    assert pushed["data"] == {"userId": "carol", "connectionId": ack["connectionId"]}
    await by_frame.ok("chat:create", {"name": "x", "type": "public"})
    for client in (by_header, by_query, by_frame):
        await client.close()


@pytest_twisted.ensureDeferred
async def test_unauthenticated_requests_are_refused_but_ping_works(server):
    client = await WsClient.open(server.url)
    await client.fails("chat:create", {"name": "x", "type": "public"}, "UNAUTHORIZED")
    await still_works(client)
    await client.ok("auth", {"token": server.token("alice")})
    await client.ok("chat:create", {"name": "x", "type": "public"})
    await client.close()


async def refused(server, token, **open_kwargs):
    client = await WsClient.open(server.url, token=token, expect_auth=False, **open_kwargs)
    error = await client.next("error")
    assert error["data"]["code"] == "UNAUTHORIZED"
    assert await client.closed() == 4001
    return error


@pytest_twisted.ensureDeferred
async def test_bad_tokens_are_refused_with_4001(server):
    now = int(time.time())
    await refused(server, "not-a-jwt")
    await refused(server, hs256(claims(), secret="another-secret-that-is-long-enough-for-hs256"))
    await refused(server, hs256({"sub": "alice", "exp": now - 3600}))  # expired
    await refused(server, hs256({"sub": "alice"}))  # no exp
    await refused(server, hs256({"exp": now + 60}))  # no sub
    await refused(server, hs256({"sub": 42, "exp": now + 60}))  # sub not a string
    await refused(
        server, jwt.encode(claims(), TEST_SECRET * 2, algorithm="HS512")
    )  # not on the allow-list
    unsigned = jwt.encode(claims(), None, algorithm="none")
    error = await refused(server, unsigned)
    assert "algorithm" in error["data"]["message"]


@pytest_twisted.ensureDeferred
async def test_bad_header_token_and_bad_auth_frame(server):
    client = await WsClient.open(server.url, header_token="garbage", expect_auth=False)
    assert (await client.next("error"))["data"]["code"] == "UNAUTHORIZED"
    assert await client.closed() == 4001
    client = await WsClient.open(server.url)
    frame = await client.request("auth", {"token": "garbage"})
    assert frame["type"] == "error" and frame["data"]["code"] == "UNAUTHORIZED"
    assert await client.closed() == 4001


@pytest_twisted.ensureDeferred
async def test_issuer_and_audience_are_checked_when_configured(server_factory):
    server = await server_factory(jwt_issuer="https://auth.example", jwt_audience="chat")
    good = hs256(claims(iss="https://auth.example", aud="chat"))
    client = await WsClient.open(server.url, token=good)
    assert client.user_id == "alice"
    await client.close()
    await refused(server, hs256(claims(iss="https://evil.example", aud="chat")))
    await refused(server, hs256(claims(iss="https://auth.example", aud="other")))
    await refused(server, hs256(claims()))


@pytest_twisted.ensureDeferred
async def test_es256_with_public_key_file(server_factory, tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    public = tmp_path / "jwt.pub"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    server = await server_factory(
        jwt_algorithms="ES256", jwt_public_key=str(public), jwt_secret=None
    )
    token = jwt.encode(claims("erin"), key, algorithm="ES256")
    client = await WsClient.open(server.url, token=token)
    assert client.user_id == "erin"
    await client.close()
    await refused(server, hs256(claims()))  # HS256 is not on this allow-list


@pytest_twisted.ensureDeferred
async def test_auth_timeout_closes_with_4001(server_factory):
    server = await server_factory(auth_timeout=0.3)
    client = await WsClient.open(server.url)
    assert await client.closed(timeout=3) == 4001


@pytest_twisted.ensureDeferred
async def test_envelope_errors_keep_the_connection(server):
    alice = await server.connect("alice")
    room = (await alice.ok("chat:create", {"name": "r", "type": "public"}))["room"]

    await alice.send_raw("{not json")
    assert (await alice.next("error"))["data"]["code"] == "INVALID_MESSAGE"
    await alice.send_raw(json.dumps([1, 2]))
    assert (await alice.next("error"))["data"]["code"] == "INVALID_MESSAGE"
    await alice.send_raw(b"\xff\xfe binary")
    assert (await alice.next("error"))["data"]["code"] == "INVALID_MESSAGE"
    await alice.send_raw(json.dumps({"type": "chat:join", "id": 7, "data": room["id"]}))
    error = await alice.next("error")
    assert error["data"]["code"] == "INVALID_MESSAGE" and "'id'" in error["data"]["message"]
    await alice.send_raw(json.dumps({"type": "chat:join", "id": "x" * 65, "data": room["id"]}))
    assert (await alice.next("error"))["data"]["code"] == "INVALID_MESSAGE"
    await alice.send_raw(json.dumps({"id": "n1", "data": {}}))
    error = await alice.reply("n1")
    assert error["data"]["code"] == "INVALID_MESSAGE"

    await alice.fails("chat:nonsense", {}, "UNKNOWN_EVENT")
    await alice.fails("chat:message", {"chatId": room["id"]}, "INVALID_MESSAGE")  # missing content
    await alice.fails("chat:message", {"chatId": room["id"], "content": 5}, "INVALID_MESSAGE")
    await alice.fails("chat:message", {"chatId": room["id"], "content": "   "}, "INVALID_MESSAGE")
    await alice.fails("chat:message", "just a string", "INVALID_MESSAGE")
    await alice.fails("chat:typing", {"chatId": room["id"], "isTyping": "yes"}, "INVALID_MESSAGE")
    await alice.fails("chat:create", {"name": "r", "type": "secret"}, "INVALID_MESSAGE")
    await alice.fails(
        "chat:create", {"name": "r", "type": "public", "members": "bob"}, "INVALID_MESSAGE"
    )
    await alice.fails("chat:history", {"chatId": room["id"], "limit": 0}, "INVALID_MESSAGE")
    await alice.fails("chat:join", {"chatId": room["id"], "since": -1}, "INVALID_MESSAGE")
    await alice.fails("chat:reaction", {"messageId": "m_none", "reaction": "x"}, "INVALID_MESSAGE")
    await alice.fails("chat:join", {"chatId": "r_none"}, "ROOM_NOT_FOUND")
    await alice.fails("chat:history", {"chatId": "r_none"}, "ROOM_NOT_FOUND")
    await alice.fails(
        "chat:message", {"chatId": room["id"], "content": "x" * 4001}, "PAYLOAD_TOO_LARGE"
    )
    await alice.fails(
        "chat:message", {"chatId": room["id"], "content": "\ud800"}, "INVALID_MESSAGE"
    )
    await still_works(alice)
    await alice.ok("chat:join", room["id"])
    ack = await alice.ok("chat:message", {"chatId": room["id"], "content": "x" * 4000})
    assert ack["seq"] == 1


@pytest_twisted.ensureDeferred
async def test_handler_crash_is_server_error_and_connection_lives(server):
    alice = await server.connect("alice")

    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    server.service.chat.history = explode
    frame = await alice.request("chat:history", {"chatId": "r_x"})
    assert frame["type"] == "error" and frame["data"]["code"] == "SERVER_ERROR"
    assert "boom" not in frame["data"]["message"]
    await still_works(alice)


@pytest_twisted.ensureDeferred
async def test_oversized_frame_is_closed_with_1009(server_factory):
    server = await server_factory(max_message_size=1024)
    alice = await server.connect("alice", max_size=None)
    await alice.send_raw(json.dumps({"type": "ping", "data": {"pad": "x" * 2000}}))
    assert await alice.closed() == 1009
    bob = await server.connect("bob")
    await still_works(bob)


@pytest_twisted.ensureDeferred
async def test_rate_limit_then_flood_close_4008(server_factory):
    server = await server_factory(rate_limit=0.5, rate_burst=5)  # slow refill: timing-proof
    alice = await server.connect("alice")
    for i in range(6):
        await alice.send("ping", None, f"p{i}")
    replies = [await alice.reply(f"p{i}") for i in range(6)]
    assert [r["type"] for r in replies[:5]] == ["ack"] * 5
    assert replies[5]["type"] == "error" and replies[5]["data"]["code"] == "RATE_LIMIT_EXCEEDED"
    assert alice.is_open
    try:
        for i in range(50):
            await alice.send("ping", None, f"f{i}")
    except websockets.ConnectionClosed:
        pass
    assert await alice.closed() == 4008


@pytest_twisted.ensureDeferred
async def test_second_auth_as_another_user_is_forbidden(server):
    alice = await server.connect("alice")
    await alice.fails("auth", {"token": server.token("bob")}, "FORBIDDEN")
    await still_works(alice)
    again = await alice.ok("auth", {"token": server.token("alice")})
    assert again["userId"] == "alice"
    # a refresh with a bad token is refused, but the proven identity stays
    await alice.fails("auth", {"token": "expired-or-garbage"}, "UNAUTHORIZED")
    await still_works(alice)
    await alice.ok("chat:create", {"name": "still me", "type": "public"})


@pytest_twisted.ensureDeferred
async def test_sustained_flooding_is_closed_even_when_some_requests_pass(server_factory):
    """The limiter lets a request through now and then while a client
    floods; that must not reset the count of refusals."""
    server = await server_factory(rate_limit=50, rate_burst=20)
    alice = await server.connect("alice")
    codes = []
    try:
        for i in range(2000):
            await alice.send("ping", None, f"x{i}")
            if i % 100 == 99:
                await deferred(asyncio.sleep(0.05))  # long enough for a token or two
    except websockets.ConnectionClosed:
        pass
    codes.append(await alice.closed())
    assert codes == [4008]


@pytest_twisted.ensureDeferred
async def test_flooding_in_bursts_below_the_limit_is_closed_though_requests_pass(server_factory):
    """Bursts smaller than rate_burst, a token's refill apart: a request
    passes in each, the rest are refused, and the refusals never pause for a
    second, so the refusals must add up to a 4008 (a count that started over
    whenever a request passed never would).  Every reset the server's clock
    could allow is allowed for, from the client's own timings, so a slow
    machine can only make the test flood longer."""
    rate, burst, size = 5.0, 4, 3
    server = await server_factory(rate_limit=rate, rate_burst=burst)
    alice = await server.connect("alice")
    loop = asyncio.get_event_loop()
    refusals = 0  # since the server last may have started counting over
    last_refusal_sent: float | None = None
    passed_after_refusals = 0
    try:
        for round_ in range(40):
            await deferred(asyncio.sleep(1 / rate))  # refills at least one token
            sent = {}
            for i in range(size):
                sent[f"b{round_}.{i}"] = loop.time()
                await alice.send("ping", None, f"b{round_}.{i}")
            for request_id, sent_at in sent.items():
                frame = await alice.reply(request_id)
                if frame["type"] == "ack":
                    if last_refusal_sent is not None and loop.time() - last_refusal_sent >= 1.0:
                        refusals = 0  # a refusal-free second may have passed on the server
                    passed_after_refusals += refusals > 0
                    continue
                assert frame["data"]["code"] == "RATE_LIMIT_EXCEEDED", frame
                refusals += 1
                last_refusal_sent = sent_at
                assert refusals <= burst, (
                    f"still open after {refusals} refusals (rate_burst {burst}) with no "
                    f"refusal-free second and {passed_after_refusals} requests passing between"
                )
    except websockets.ConnectionClosed:
        pass
    assert not alice.is_open, "never closed: the machine kept pausing for a second"
    assert await alice.closed() == 4008
    assert passed_after_refusals >= 1  # requests did squeeze through the flood


@pytest_twisted.ensureDeferred
async def test_http_root_and_health(server):
    from twisted.internet import reactor
    from twisted.web.client import Agent, readBody

    agent = Agent(reactor)
    for path, expected in ((b"/", b"/ws"), (b"/healthz", b'"status":"ok"')):
        response = await agent.request(b"GET", server.http.encode() + path)
        assert response.code == 200
        assert expected in await readBody(response)
