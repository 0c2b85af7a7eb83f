"""Session tokens made by the real npm encoders (next-auth 4's
``next-auth/jwt`` and Auth.js's ``@auth/core/jwt``, pinned by
tests/js/nextauth/package-lock.json) are accepted by chatd: in-process
through ``TokenVerifier`` and end to end over ``/ws``, Socket.IO and the
HTTP API.

Needs ``node`` and ``npm ci --prefix tests/js/nextauth`` (.ci/run does
it).  Without them these tests skip, unless CHATD_TEST_REQUIRE_SERVICES is
set (CI), where they fail: a compatibility check that silently skips would
prove nothing."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import socketio

from chatd.auth import AuthError, TokenVerifier
from chatd.config import load_config
from chatd.domain.models import Identity
from tests.test_http_api import http
from tests.test_socketio import SioClient
from tests.wsclient import WsClient

HELPER = Path(__file__).resolve().parent / "js" / "nextauth"
SECRET = "nextauth-compat-secret-" + "c" * 32  # what the app has as NEXTAUTH_SECRET
OTHER_SECRET = "not-the-apps-secret-" + "x" * 32
SALT = "authjs.session-token"
SECURE_SALT = "__Secure-authjs.session-token"

# name -> (kind, salt, token claims, extra encode parameters, secret)
CASES: dict[str, tuple[str, str | None, dict[str, Any], dict[str, Any], str]] = {
    "v4": ("v4", None, {"sub": "u-v4", "name": "Vera Four", "email": "v4@example.com"}, {}, SECRET),
    "v5": ("v5", SALT, {"sub": "u-v5", "name": "Fifi Five", "picture": None}, {}, SECRET),
    "v5_secure": ("v5", SECURE_SALT, {"sub": "u-v5s", "name": "Secure Sam"}, {}, SECRET),
    "v4_admin": ("v4", None, {"sub": "root", "role": "admin"}, {}, SECRET),
    "v4_short": ("v4", None, {"sub": "u-short"}, {"maxAge": 60}, SECRET),
    "v4_expired": ("v4", None, {"sub": "u-old"}, {"maxAge": -60}, SECRET),
    "v5_expired": ("v5", SALT, {"sub": "u-old"}, {"maxAge": -60}, SECRET),
    "v4_wrong_secret": ("v4", None, {"sub": "mallory"}, {}, OTHER_SECRET),
    "v5_wrong_secret": ("v5", SALT, {"sub": "mallory"}, {}, OTHER_SECRET),
    "v5_other_salt": ("v5", "myapp.session-token", {"sub": "mallory"}, {}, SECRET),
    "v4_no_sub": ("v4", None, {"name": "Nobody"}, {}, SECRET),
    "v5_no_sub": ("v5", SALT, {"email": "x@example.com"}, {}, SECRET),
}


def _helper_ready() -> None:
    missing = None
    if shutil.which("node") is None:
        missing = "node is not installed"
    elif not (HELPER / "node_modules" / "next-auth").is_dir():
        missing = (
            "tests/js/nextauth/node_modules is absent (run: npm ci --prefix tests/js/nextauth)"
        )
    if missing is None:
        return
    if os.environ.get("CHATD_TEST_REQUIRE_SERVICES"):
        pytest.fail(f"{missing}, but CHATD_TEST_REQUIRE_SERVICES is set")
    pytest.skip(missing)


def make_tokens(cases: dict[str, tuple[str, str | None, dict[str, Any], dict[str, Any], str]]):
    """Run tests/js/nextauth/make-tokens.mjs, once per secret."""
    tokens: dict[str, str] = {}
    for secret in {case[4] for case in cases.values()}:
        names = [name for name, case in cases.items() if case[4] == secret]
        request = {
            "secret": secret,
            "tokens": [
                {
                    "kind": cases[n][0],
                    "token": cases[n][2],
                    **({"salt": cases[n][1]} if cases[n][1] is not None else {}),
                    **cases[n][3],
                }
                for n in names
            ],
        }
        result = subprocess.run(
            ["node", str(HELPER / "make-tokens.mjs")],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        tokens.update(zip(names, json.loads(result.stdout), strict=True))
    return tokens


@pytest.fixture(scope="module")
def tokens() -> dict[str, str]:
    _helper_ready()
    return make_tokens(CASES)


@pytest.fixture
def verifier(tmp_path) -> TokenVerifier:
    config = load_config({"data_dir": str(tmp_path), "nextauth_secret": SECRET}, environ={})
    return TokenVerifier.from_config(config)


def _header(token: str) -> dict[str, Any]:
    segment = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


# -- in-process ----------------------------------------------------------------------


def test_the_encoders_make_what_chatd_expects(tokens):
    assert _header(tokens["v4"]) == {"alg": "dir", "enc": "A256GCM"}
    v5 = _header(tokens["v5"])
    assert v5["alg"] == "dir" and v5["enc"] == "A256CBC-HS512" and v5["kid"]
    assert all(len(t.split(".")) == 5 for t in tokens.values())


def test_real_tokens_map_sub_and_name(verifier, tokens):
    assert verifier.verify(tokens["v4"]) == Identity("u-v4", "Vera Four", None)
    assert verifier.verify(tokens["v5"]) == Identity("u-v5", "Fifi Five", None)
    assert verifier.verify(tokens["v5_secure"]) == Identity("u-v5s", "Secure Sam", None)
    assert verifier.verify(tokens["v4_admin"]).is_admin
    assert verifier.verify(tokens["v4_short"]).user_id == "u-short"


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("v4_expired", "expired"),
        ("v5_expired", "expired"),
        ("v4_wrong_secret", "could not be decrypted"),
        ("v5_wrong_secret", "NextAuth secret"),
        ("v5_other_salt", "NextAuth secret"),
        ("v4_no_sub", "'sub'"),
        ("v5_no_sub", "'sub'"),
    ],
)
def test_real_bad_tokens_are_refused(verifier, tokens, name, fragment):
    with pytest.raises(AuthError, match=fragment):
        verifier.verify(tokens[name])


def test_custom_salt_when_configured(tmp_path, tokens):
    config = load_config(
        {
            "data_dir": str(tmp_path),
            "nextauth_secret": SECRET,
            "nextauth_formats": "v5:myapp.session-token",
        },
        environ={},
    )
    v = TokenVerifier.from_config(config)
    assert v.verify(tokens["v5_other_salt"]).user_id == "mallory"
    with pytest.raises(AuthError):
        v.verify(tokens["v4"])  # v4 not configured here


def test_exp_is_what_next_auth_set(verifier, tokens):
    # maxAge 60 -> exp = iat + 60: chatd reads the token's own exp.
    claims = verifier.nextauth.claims(tokens["v4_short"])  # type: ignore[union-attr]
    assert claims["exp"] - claims["iat"] == 60
    assert abs(claims["iat"] - time.time()) < 120


def test_without_the_secret_configured(tmp_path, tokens):
    v = TokenVerifier.from_config(load_config({"data_dir": str(tmp_path)}, environ={}))
    with pytest.raises(AuthError, match="nextauth_secret"):
        v.verify(tokens["v4"])


# -- end to end ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_real_tokens_over_ws_and_http(server_factory, tokens):
    server = await server_factory(nextauth_secret=SECRET)
    # ?token= on the upgrade, the Authorization header, and the auth frame
    v4 = await WsClient.open(server.url, token=tokens["v4"])
    assert v4.user_id == "u-v4"
    v5 = await WsClient.open(server.url, header_token=tokens["v5"])
    assert v5.user_id == "u-v5"
    late = await WsClient.open(server.url)
    ack = await late.ok("auth", {"token": tokens["v5_secure"]})
    assert ack["userId"] == "u-v5s"
    # an ordinary chatd JWT still works on the same server
    plain = await server.connect("plain-user")
    assert plain.user_id == "plain-user"
    # and they chat like any other user
    room = (await v4.ok("chat:create", {"name": "nextauth", "type": "public"}))["room"]
    await v5.ok("chat:join", {"chatId": room["id"]})
    await v4.ok("chat:join", {"chatId": room["id"]})
    await v4.ok("chat:message", {"chatId": room["id"], "content": "hi from NextAuth"})
    pushed = (await v5.next("chat:message"))["data"]
    assert pushed["content"] == "hi from NextAuth" and pushed["userId"] == "u-v4"
    # HTTP API bearer tokens go through the same verifier
    status, _ = await http(server, "GET", "/websocket/users/connected", tokens["v4_admin"])
    assert status == 200
    status, answer = await http(server, "GET", "/websocket/users/connected", tokens["v5"])
    assert status == 403, answer  # verified, but not an admin
    status, answer = await http(server, "GET", "/websocket/users/connected", tokens["v4_expired"])
    assert status == 401 and answer["error"]["code"] == "UNAUTHORIZED"
    for client in (v4, v5, late, plain):
        await client.close()


@pytest_twisted.ensureDeferred
async def test_real_bad_tokens_over_ws_get_unauthorized_and_4001(server_factory, tokens):
    server = await server_factory(nextauth_secret=SECRET)
    for name in ("v4_expired", "v5_wrong_secret", "v4_no_sub", "v5_other_salt"):
        client = await WsClient.open(server.url, token=tokens[name], expect_auth=False)
        error = await client.next("error")
        assert error["data"]["code"] == "UNAUTHORIZED", (name, error)
        assert await client.closed() == 4001, name


@pytest_twisted.ensureDeferred
async def test_real_tokens_over_socketio(server_factory, tokens):
    """Seed 003's client: ``io(url, {auth: {token}})`` with the app's
    NextAuth session token, unchanged."""
    server = await server_factory(nextauth_secret=SECRET)
    made: list[SioClient] = []
    try:
        v4 = SioClient()
        made.append(v4)
        await v4.connect(server.http, auth={"token": tokens["v4"]})
        assert (await v4.next("authenticated"))["userId"] == "u-v4"
        v5 = SioClient()
        made.append(v5)
        await v5.connect(server.http, auth={"token": tokens["v5"]}, transports=["websocket"])
        assert (await v5.next("authenticated"))["userId"] == "u-v5"
        for name in ("v4_expired", "v5_wrong_secret"):
            bad = SioClient()
            made.append(bad)
            with pytest.raises(socketio.exceptions.ConnectionError):
                await bad.connect(server.http, auth={"token": tokens[name]})
            await bad.wait_until(lambda c=bad: bool(c.connect_errors))
            assert bad.connect_errors[0]["data"]["code"] == "UNAUTHORIZED", name
    finally:
        for client in made:
            await client.close()
