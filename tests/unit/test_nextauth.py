"""NextAuth.js / Auth.js session tokens (chatd/nextauth.py, through
chatd/auth.py's TokenVerifier) and their two settings.

The tokens here are made in-test with joserfc, the same library that reads
them, from keys derived the way the JS libraries derive them; the
known-answer vectors below pin those derivations independently (they were
computed with Node's crypto.hkdfSync and @panva/hkdf, which next-auth and
@auth/core call).  tests/test_nextauth_tokens.py checks tokens made by the
real npm encoders."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from joserfc import jwe, jwk
from joserfc.jwe import JWERegistry
from joserfc.jwk import OctKey

from chatd.auth import AuthError, TokenVerifier
from chatd.config import NEXTAUTH_DEFAULT_FORMATS, Config, ConfigError, load_config
from chatd.domain.models import Identity
from chatd.nextauth import SessionTokenDecryptor, TokenFormat, parse_formats

SECRET = "nextauth-unit-secret-" + "n" * 32
OTHER_SECRET = "some-other-nextauth-secret-" + "o" * 32
JWT_SECRET = "plain-jwt-secret-" + "j" * 32
V4 = TokenFormat.parse("v4")
V5 = TokenFormat.parse("v5:authjs.session-token")
V5_SECURE = TokenFormat.parse("v5:__Secure-authjs.session-token")

_DROP = object()


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "name": "Alice A.",
        "email": "alice@example.com",
        "picture": None,
        "sub": "user-1",
        "iat": now,
        "exp": now + 600,
        "jti": "0d9c3c1e-8d1f-4c1a-9d0e-1f2a3b4c5d6e",
    }
    base.update(extra)
    return {k: v for k, v in base.items() if v is not _DROP}


def encrypt(
    payload: Any,
    fmt: TokenFormat = V4,
    secret: str = SECRET,
    *,
    enc: str | None = None,
    header: dict[str, Any] | None = None,
    kid: Any = "auto",
) -> str:
    """A session token as next-auth 4 (``v4``) or Auth.js (``v5``) makes it."""
    key = OctKey.import_key(fmt.derive_key(secret))
    protected: dict[str, Any] = {"alg": "dir", "enc": enc or fmt.enc}
    if fmt.version == "v5" and kid == "auto":
        protected["kid"] = jwk.thumbprint(key.as_dict(private=True), "sha512")
    elif kid not in ("auto", None):
        protected["kid"] = kid
    protected.update(header or {})
    plaintext = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    registry = JWERegistry(algorithms=[protected["alg"], protected["enc"], "DEF"])
    return jwe.encrypt_compact(protected, plaintext, key, registry=registry)


def verifier(
    secret: str | None = SECRET, formats: tuple[str, ...] = NEXTAUTH_DEFAULT_FORMATS
) -> TokenVerifier:
    decryptor = SessionTokenDecryptor.from_specs(secret, formats) if secret else None
    return TokenVerifier(
        algorithms=("HS256",),
        secret=JWT_SECRET,
        public_key=None,
        issuer=None,
        audience=None,
        nextauth=decryptor,
    )


def refused(v: TokenVerifier, token: Any, *fragments: str) -> str:
    with pytest.raises(AuthError) as info:
        v.verify(token)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


# -- the derivations ---------------------------------------------------------------

KNOWN_SECRET = "known-answer-secret-0123456789"


def test_v4_key_derivation_matches_node():
    # crypto.hkdfSync("sha256", secret, "", "NextAuth.js Generated Encryption Key", 32)
    assert TokenFormat.parse("v4").derive_key(KNOWN_SECRET).hex() == (
        "681a75d6c3efd1a5bfbf29226f6d14ea6f0f84ae0d8ad9cd7bf59e0ce4aa1d1c"
    )


def test_v5_key_derivation_matches_node():
    # crypto.hkdfSync("sha256", secret, salt, `Auth.js Generated Encryption Key (${salt})`, 64)
    assert TokenFormat.parse("v5:authjs.session-token").derive_key(KNOWN_SECRET).hex() == (
        "e877724eb7aabf42770bed07cd458736b8388682c3c336105f63384eb28427fe"
        "1561143d7739318c2d93b87cd890f680b907f71a188561100bacc83a9861345a"
    )


def test_formats_derive_different_keys():
    keys = {fmt.derive_key(SECRET) for fmt in (V4, TokenFormat.parse("v4:x"), V5, V5_SECURE)}
    assert len(keys) == 4


# -- accepted ------------------------------------------------------------------------


def test_v4_token():
    assert verifier().verify(encrypt(claims())) == Identity("user-1", "Alice A.", None)


@pytest.mark.parametrize("fmt", [V5, V5_SECURE], ids=lambda f: f.spec)
def test_v5_token_for_each_default_cookie_name(fmt):
    assert verifier().verify(encrypt(claims(), fmt)) == Identity("user-1", "Alice A.", None)


def test_v5_token_without_kid_tries_each_salt():
    token = encrypt(claims(sub="bob"), V5_SECURE, kid=None)
    assert "kid" not in header_of(token)
    assert verifier().verify(token).user_id == "bob"


def test_v4_with_a_salt():
    v = verifier(formats=("v4:my-app",))
    assert v.verify(encrypt(claims(), TokenFormat.parse("v4:my-app"))).user_id == "user-1"
    refused(v, encrypt(claims(), V4), "could not be decrypted")


def test_custom_cookie_name():
    fmt = TokenFormat.parse("v5:myapp.session")
    v = verifier(formats=("v5:myapp.session",))
    assert v.verify(encrypt(claims(), fmt)).user_id == "user-1"
    refused(v, encrypt(claims(), V5))


def test_missing_or_odd_name_and_role():
    assert verifier().verify(encrypt(claims(name=_DROP))) == Identity("user-1", None, None)
    assert verifier().verify(encrypt(claims(name=None))) == Identity("user-1", None, None)
    assert verifier().verify(encrypt(claims(name=7))) == Identity("user-1", None, None)
    admin = verifier().verify(encrypt(claims(role="admin"), V5))
    assert admin.is_admin  # the app's jwt callback put it there, with the shared secret


def test_expired_within_leeway_is_accepted():
    assert verifier().verify(encrypt(claims(exp=int(time.time()) - 2))).user_id == "user-1"


def test_plain_jwts_still_work_alongside():
    now = int(time.time())
    token = jwt.encode({"sub": "carol", "exp": now + 60}, JWT_SECRET, algorithm="HS256")
    assert verifier().verify(token).user_id == "carol"


class _Untouchable:
    def claims(self, token: str) -> dict[str, Any]:
        raise AssertionError("a three-part JWT must not reach the JWE path")


def test_plain_jwts_never_reach_the_decryptor():
    v = TokenVerifier(("HS256",), JWT_SECRET, None, None, None, nextauth=_Untouchable())  # type: ignore[arg-type]
    now = int(time.time())
    assert v.verify(jwt.encode({"sub": "d", "exp": now + 60}, JWT_SECRET)).user_id == "d"
    refused(v, "not.a.jwt")


# -- refused -------------------------------------------------------------------------


def test_without_nextauth_secret_a_jwe_is_refused():
    refused(verifier(secret=None), encrypt(claims()), "nextauth_secret")


@pytest.mark.parametrize("fmt", [V4, V5], ids=lambda f: f.spec)
def test_wrong_secret(fmt):
    message = refused(verifier(), encrypt(claims(), fmt, secret=OTHER_SECRET))
    assert "NextAuth secret" in message


def test_wrong_secret_without_kid():
    refused(
        verifier(), encrypt(claims(), V5, secret=OTHER_SECRET, kid=None), "could not be decrypted"
    )


def test_v5_salt_not_configured():
    refused(verifier(formats=("v4", "v5:authjs.session-token")), encrypt(claims(), V5_SECURE))


def test_format_not_configured():
    refused(verifier(formats=("v4",)), encrypt(claims(), V5), "'A256CBC-HS512'", "not among")
    refused(verifier(formats=("v5:authjs.session-token",)), encrypt(claims()), "'A256GCM'")


def test_expired():
    refused(verifier(), encrypt(claims(exp=int(time.time()) - 60)), "expired")
    refused(verifier(), encrypt(claims(exp=int(time.time()) - 60), V5), "expired")


@pytest.mark.parametrize("exp", [_DROP, None])
def test_missing_exp(exp):
    refused(verifier(), encrypt(claims(exp=exp)), "'exp'")


@pytest.mark.parametrize("exp", ["tomorrow", True, [1]])
def test_non_numeric_exp(exp):
    refused(verifier(), encrypt(claims(exp=exp)), "exp")


def test_nan_exp_never_counts_as_valid():
    payload = json.dumps(claims()).replace(f'"exp": {claims()["exp"]}', '"exp": NaN')
    assert "NaN" in payload
    refused(verifier(), encrypt(payload.encode()), "exp")


def test_missing_sub():
    refused(verifier(), encrypt(claims(sub=_DROP)), "'sub'")
    refused(verifier(), encrypt(claims(sub=_DROP, exp=_DROP)), "'exp'", "'sub'")


@pytest.mark.parametrize("sub", [42, ["user-1"], "", "   ", "u" * 129])
def test_bad_sub(sub):
    refused(verifier(), encrypt(claims(sub=sub)), "sub")


def test_not_yet_valid():
    refused(verifier(), encrypt(claims(nbf=int(time.time()) + 60)), "invalid token")
    refused(verifier(), encrypt(claims(iat=int(time.time()) + 60)), "invalid token")


def header_of(token: str) -> dict[str, Any]:
    segment = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def _parts(token: str) -> list[str]:
    parts = token.split(".")
    assert len(parts) == 5
    return parts


def _flip(segment: str) -> str:
    return ("A" if segment[0] != "A" else "B") + segment[1:]


@pytest.mark.parametrize("fmt", [V4, V5], ids=lambda f: f.spec)
@pytest.mark.parametrize("index", [2, 3, 4], ids=["iv", "ciphertext", "tag"])
def test_tampered(fmt, index):
    parts = _parts(encrypt(claims(), fmt))
    parts[index] = _flip(parts[index])
    refused(verifier(), ".".join(parts))


@pytest.mark.parametrize("fmt", [V4, V5], ids=lambda f: f.spec)
def test_tampered_header_is_authenticated(fmt):
    # The protected header is the AAD: an extra member breaks the tag.
    parts = _parts(encrypt(claims(), fmt))
    header = header_of(".".join(parts))
    header["typ"] = "JWT"
    parts[0] = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    refused(verifier(), ".".join(parts))


def test_swapped_ciphertext_from_another_token():
    one, other = _parts(encrypt(claims())), _parts(encrypt(claims(sub="mallory")))
    refused(verifier(), ".".join(one[:3] + other[3:4] + one[4:]))


@pytest.mark.parametrize("enc", ["A128GCM", "A128CBC-HS256", "A192GCM"])
def test_wrong_enc(enc):
    key = OctKey.import_key(V5.derive_key(SECRET)[: {"A128GCM": 16, "A192GCM": 24}.get(enc, 32)])
    token = jwe.encrypt_compact(
        {"alg": "dir", "enc": enc},
        json.dumps(claims()).encode(),
        key,
        registry=JWERegistry(algorithms=["dir", enc]),
    )
    refused(verifier(), token, repr(enc), "not among")


def test_v4_enc_with_a_v5_key_is_refused():
    # Auth.js's decode would also take A256GCM with its own derivation; no
    # stock encoder makes one, so chatd keeps one enc per format.
    key = OctKey.import_key(V5.derive_key(SECRET)[:32])
    token = jwe.encrypt_compact(
        {"alg": "dir", "enc": "A256GCM"},
        json.dumps(claims()).encode(),
        key,
        registry=JWERegistry(algorithms=["dir", "A256GCM"]),
    )
    refused(verifier(), token, "could not be decrypted")


def test_other_alg_is_refused():
    key = OctKey.generate_key(256)
    token = jwe.encrypt_compact(
        {"alg": "A256KW", "enc": "A256GCM"},
        json.dumps(claims()).encode(),
        key,
        registry=JWERegistry(algorithms=["A256KW", "A256GCM"]),
    )
    refused(verifier(), token, "'A256KW'")


def test_compressed_token_is_refused():
    # NextAuth never compresses; a "zip" header is not on the allow-list.
    refused(verifier(), encrypt(claims(), header={"zip": "DEF"}))


def test_unknown_kid():
    refused(verifier(), encrypt(claims(), V5, kid="someone-elses-key"), "NextAuth secret")


@pytest.mark.parametrize("payload", [b"not json", b"[1, 2]", b'"user-1"', b"\xff\xfe"])
def test_payload_that_is_not_a_claims_object(payload):
    refused(verifier(), encrypt(payload), "payload")


@pytest.mark.parametrize(
    "token",
    [
        "....",
        "a.b.c.d.e",
        "eyJhbGciOiJkaXIifQ....",
        "W10.a.b.c.d",  # header []
        "🙂.🙂.🙂.🙂.🙂",
        "eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2R0NNIn0....",
        "eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2R0NNIn0..!!.??.%%",
    ],
)
def test_malformed_five_part_tokens(token):
    refused(verifier(), token)


def test_error_never_echoes_the_token_or_secret():
    token = encrypt(claims(), secret=OTHER_SECRET)
    message = refused(verifier(), token)
    assert token not in message and SECRET not in message and OTHER_SECRET not in message


# -- formats and settings --------------------------------------------------------------


def test_parse_formats_normalises():
    assert parse_formats([" v4 ", "v5:a", "v4", "", "v5:a"]) == ("v4", "v5:a")


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("v3", "unknown"),
        ("v5", "salt"),
        ("v5:", "empty salt"),
        ("v4:", "empty salt"),
        ("v5:a b", "invalid salt"),
        ("v5:" + "s" * 201, "invalid salt"),
        ("A256GCM", "unknown"),
    ],
)
def test_bad_format_spec(spec, fragment):
    with pytest.raises(ValueError, match=fragment):
        TokenFormat.parse(spec)


def test_defaults(tmp_path):
    config = load_config({"data_dir": str(tmp_path)}, environ={})
    assert config.nextauth_secret is None
    assert config.nextauth_formats == NEXTAUTH_DEFAULT_FORMATS
    assert TokenVerifier.from_config(config).nextauth is None


def test_settings_from_environment_and_file(tmp_path):
    config = load_config(
        {"data_dir": str(tmp_path)},
        environ={"CHATD_NEXTAUTH_SECRET": SECRET, "CHATD_NEXTAUTH_FORMATS": "v4, v5:a.session"},
    )
    assert config.nextauth_secret == SECRET and config.nextauth_formats == ("v4", "v5:a.session")
    path = tmp_path / "chatd.toml"
    path.write_text(
        f'nextauth_secret = "{SECRET}"\nnextauth_formats = ["v5:__Secure-authjs.session-token"]\n'
    )
    config = load_config({"config": str(path), "data_dir": str(tmp_path)}, environ={})
    assert config.nextauth_formats == ("v5:__Secure-authjs.session-token",)
    v = TokenVerifier.from_config(config)
    assert v.verify(encrypt(claims(), V5_SECURE)).user_id == "user-1"
    refused(v, encrypt(claims(), V4))


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        ({"CHATD_NEXTAUTH_FORMATS": "v4,v6"}, "invalid nextauth_formats (environment"),
        ({"CHATD_NEXTAUTH_FORMATS": "v5"}, "invalid nextauth_formats"),
        ({"CHATD_NEXTAUTH_FORMATS": " , "}, "at least one format"),
        ({"CHATD_NEXTAUTH_SECRET": "short"}, "invalid nextauth_secret: use at least 16"),
    ],
)
def test_bad_settings_stop_start_up_with_one_line(tmp_path, environ, fragment):
    with pytest.raises(ConfigError) as info:
        load_config({"data_dir": str(tmp_path)}, environ=environ)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_bad_formats_in_file(tmp_path):
    path = tmp_path / "chatd.toml"
    path.write_text("nextauth_formats = [4]\n")
    with pytest.raises(ConfigError, match="invalid nextauth_formats"):
        load_config({"config": str(path), "data_dir": str(tmp_path)}, environ={})


def test_secret_is_never_in_the_config_repr_or_an_error(tmp_path):
    config = load_config({"data_dir": str(tmp_path), "nextauth_secret": SECRET}, environ={})
    assert SECRET not in repr(config)
    assert SECRET not in repr(TokenVerifier.from_config(config))
    with pytest.raises(ConfigError) as info:
        load_config({"data_dir": str(tmp_path), "nextauth_secret": "tiny-secret"}, environ={})
    assert "tiny-secret" not in str(info.value)


def test_nextauth_secret_alone_allows_a_public_address(tmp_path):
    # No jwt_secret: nothing is generated, HS256 JWTs are refused ("no key").
    config = load_config(
        {"data_dir": str(tmp_path / "d"), "listen": "tcp:8080", "nextauth_secret": SECRET},
        environ={},
    )
    assert config.jwt_secret is None and not config.secret_generated
    assert not (tmp_path / "d").exists()
    v = TokenVerifier.from_config(config)
    assert v.verify(encrypt(claims())).user_id == "user-1"
    token = jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    refused(v, token, "no key")
    with pytest.raises(ConfigError, match="non-loopback"):
        load_config({"data_dir": str(tmp_path), "listen": "tcp:8080"}, environ={})


def test_hs256_signed_with_the_nextauth_secret_via_jwt_secret(tmp_path):
    """The other common pattern: the app signs HS256 JWTs with NEXTAUTH_SECRET;
    give chatd the same value as jwt_secret (and nextauth_secret for the
    session tokens)."""
    config = load_config(
        {"data_dir": str(tmp_path), "jwt_secret": SECRET, "nextauth_secret": SECRET}, environ={}
    )
    v = TokenVerifier.from_config(config)
    signed = jwt.encode({"sub": "e", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    assert v.verify(signed).user_id == "e"
    assert v.verify(encrypt(claims(sub="f"), V5)).user_id == "f"


def test_config_dataclass_default_matches_setting():
    assert Config().nextauth_formats == NEXTAUTH_DEFAULT_FORMATS


@pytest.mark.parametrize("fmt", [V4, V5], ids=lambda f: f.spec)
def test_every_one_character_change_is_refused_cleanly(fmt):
    """Whatever one character becomes, the answer is an AuthError: never
    another exception (a crash on the connect path), never a token that
    still verifies."""
    token = encrypt(claims(), fmt)
    v = verifier()
    for i, original in enumerate(token):
        for replacement in "A_-.=é":
            if replacement == original:
                continue
            with pytest.raises(AuthError):
                v.verify(token[:i] + replacement + token[i + 1 :])
    for cut in range(1, len(token)):
        with pytest.raises(AuthError):
            v.verify(token[:cut])


def test_documented_examples_are_valid(tmp_path):
    """etc/chatd.toml's commented NextAuth lines, uncommented, load; the
    README's table names both settings with the real default."""
    root = Path(__file__).resolve().parents[2]
    lines = (root / "etc" / "chatd.toml").read_text().splitlines()
    chosen = [line[2:].split("#")[0] for line in lines if line.startswith("# nextauth_")]
    assert len(chosen) == 2
    path = tmp_path / "chatd.toml"
    path.write_text("\n".join(chosen) + "\n")
    config = load_config({"config": str(path), "data_dir": str(tmp_path)}, environ={})
    assert config.nextauth_secret and config.nextauth_formats == NEXTAUTH_DEFAULT_FORMATS
    readme = (root / "README.md").read_text()
    assert "| `--nextauth-secret` | `CHATD_NEXTAUTH_SECRET` | `nextauth_secret` |" in readme
    assert f"| `nextauth_formats` | `{','.join(NEXTAUTH_DEFAULT_FORMATS)}` |" in readme


def test_long_header_values_are_not_echoed_whole():
    header = base64.urlsafe_b64encode(json.dumps({"alg": "dir", "enc": "E" * 500}).encode())
    token = header.rstrip(b"=").decode() + "..aaaa.bbbb.cccc"
    message = refused(verifier(), token, "not among")
    assert "E" * 50 not in message and len(message) < 200
