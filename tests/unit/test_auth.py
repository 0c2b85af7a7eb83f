"""JWT verification (PROTOCOL.md section 2) in chatd/auth.py."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from chatd.auth import MAX_TOKEN_LENGTH, AuthError, TokenVerifier, identity_from_claims, mint_token
from chatd.config import Config, load_config
from chatd.domain.models import Identity

SECRET = "unit-test-secret-" + "s" * 64
OTHER_SECRET = "another-secret-" + "o" * 64


def verifier(
    algorithms=("HS256",), secret=SECRET, public_key=None, issuer=None, audience=None
) -> TokenVerifier:
    return TokenVerifier(
        algorithms=tuple(algorithms),
        secret=secret,
        public_key=public_key,
        issuer=issuer,
        audience=audience,
    )


def claims(**extra):
    now = int(time.time())
    base = {"sub": "alice", "iat": now, "exp": now + 600}
    base.update(extra)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP = object()


def hs256(payload, secret=SECRET, algorithm="HS256", headers=None) -> str:
    return jwt.encode(payload, secret, algorithm=algorithm, headers=headers)


def refused(v: TokenVerifier, token, *fragments: str) -> AuthError:
    with pytest.raises(AuthError) as info:
        v.verify(token)
    for fragment in fragments:
        assert fragment in str(info.value)
    return info.value


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def hand_signed_hs256(payload: dict, key: bytes) -> str:
    """An HS256 token signed with arbitrary bytes (PyJWT refuses PEM keys as
    HMAC secrets, which is exactly the attack, so sign by hand)."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps(payload).encode())
    signing_input = f"{header}.{body}".encode()
    signature = hmac.new(key, signing_input, hashlib.sha256).digest()
    return f"{header}.{body}.{b64url(signature)}"


# -- keys -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_keys():
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem.decode()


@pytest.fixture(scope="module")
def ec_keys():
    private = ec.generate_private_key(ec.SECP256R1())
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem.decode()


# -- HS256 happy path ---------------------------------------------------------------


def test_valid_hs256_token():
    identity = verifier().verify(hs256(claims()))
    assert identity == Identity("alice", None, None)
    assert not identity.is_admin


def test_name_and_role_land_in_identity():
    identity = verifier().verify(hs256(claims(name="Alice A.", role="admin")))
    assert identity == Identity("alice", "Alice A.", "admin")
    assert identity.is_admin


def test_non_string_name_and_role_are_dropped():
    identity = verifier().verify(hs256(claims(name=42, role=["admin"])))
    assert identity == Identity("alice", None, None)
    assert not identity.is_admin


def test_other_role_is_not_admin():
    assert not verifier().verify(hs256(claims(role="user"))).is_admin


def test_expired_within_leeway_is_accepted():
    now = int(time.time())
    assert verifier().verify(hs256(claims(exp=now - 2))).user_id == "alice"


def test_expired_beyond_leeway_is_refused():
    now = int(time.time())
    refused(verifier(), hs256(claims(exp=now - 30)), "expired")
    refused(verifier(), hs256(claims(exp=now - 7)), "expired")


def test_missing_exp():
    refused(verifier(), hs256(claims(exp=_DROP)), "'exp'")


def test_null_exp_counts_as_missing():
    refused(verifier(), hs256(claims(exp=None)))


def test_non_numeric_exp():
    refused(verifier(), hs256(claims(exp="tomorrow")))


def test_missing_sub():
    refused(verifier(), hs256(claims(sub=_DROP)), "'sub'")


@pytest.mark.parametrize("sub", [42, True, ["alice"], {"id": "alice"}, None])
def test_non_string_sub(sub):
    refused(verifier(), hs256(claims(sub=sub)))


@pytest.mark.parametrize("sub", ["", "   "])
def test_blank_sub(sub):
    refused(verifier(), hs256(claims(sub=sub)))


def test_sub_length_limit():
    assert verifier().verify(hs256(claims(sub="u" * 128))).user_id == "u" * 128
    refused(verifier(), hs256(claims(sub="u" * 129)), "sub")


@pytest.mark.parametrize(
    "claim, value",
    [
        ("sub", "\ud800"),
        ("sub", "alice\udfff"),
        ("sub", "nul\x00user"),
        ("name", "\ud83d"),
        ("username", "x\udc00"),
        ("role", "admin\ud800"),
    ],
)
def test_text_claims_no_store_or_log_can_hold_are_refused(claim, value):
    """PyJWT's JSON lets a lone surrogate through; such a token must not
    authenticate (its user could be neither stored nor logged)."""
    token = hs256(claims(**{claim: value}))
    refused(verifier(), token, repr(claim))
    with pytest.raises(AuthError):
        identity_from_claims({"sub": "alice", claim: value})


def test_control_characters_in_a_sub_are_text_like_any():
    """They are escaped where they are logged (chatd/logs.py), not refused."""
    assert verifier().verify(hs256(claims(sub="eve\x1b[31m"))).user_id == "eve\x1b[31m"


def test_wrong_signature():
    refused(verifier(), hs256(claims(), secret=OTHER_SECRET), "signature")


def test_tampered_payload():
    token = hs256(claims())
    header, _, signature = token.split(".")
    forged = b64url(json.dumps(claims(sub="mallory")).encode())
    refused(verifier(), f"{header}.{forged}.{signature}")


def test_alg_none_is_refused():
    token = jwt.encode(claims(), None, algorithm="none")
    assert jwt.get_unverified_header(token)["alg"] == "none"
    refused(verifier(), token, "not allowed")
    # also when someone put "none" on the verifier's list by hand
    refused(verifier(algorithms=("HS256", "none")), token)


def test_hand_made_alg_none_without_signature_is_refused():
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims()).encode())
    refused(verifier(), f"{header}.{body}.")
    refused(verifier(), f"{header}.{body}")


def test_algorithm_not_on_allow_list():
    refused(verifier(), hs256(claims(), algorithm="HS512"), "HS512", "not allowed")
    refused(verifier(), hs256(claims(), algorithm="HS384"), "not allowed")


def test_algorithm_on_allow_list_other_than_first():
    assert (
        verifier(algorithms=("HS256", "HS512")).verify(hs256(claims(), algorithm="HS512")).user_id
        == "alice"
    )


def test_missing_alg_header_is_refused():
    header = b64url(json.dumps({"typ": "JWT"}).encode())
    body = b64url(json.dumps(claims()).encode())
    sig = b64url(hmac.new(SECRET.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest())
    refused(verifier(), f"{header}.{body}.{sig}", "not allowed")


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "a.b.c",
        "a.b",
        "....",
        "eyJhbGciOiJIUzI1NiJ9",
        "eyJ.eyJ.sig",
        "Bearer x.y.z",
        "🙂.🙂.🙂",
    ],
)
def test_malformed_token(token):
    refused(verifier(), token)


def test_header_that_is_not_an_object():
    header = b64url(b'["HS256"]')
    body = b64url(json.dumps(claims()).encode())
    refused(verifier(), f"{header}.{body}.sig")


@pytest.mark.parametrize(
    "token", [None, 123, 1.5, b"bytes.token.here", ["a"], {"token": "x"}, True, ""]
)
def test_non_string_or_empty_token(token):
    refused(verifier(), token, "non-empty string")


def test_too_long_token():
    refused(verifier(), "a" * (MAX_TOKEN_LENGTH + 1), "too long")
    # a real, validly signed token over the limit is refused too
    big = hs256(claims(name="n" * MAX_TOKEN_LENGTH))
    assert len(big) > MAX_TOKEN_LENGTH
    refused(verifier(), big, "too long")


def test_no_secret_configured_for_hmac():
    refused(verifier(secret=None), hs256(claims()), "no key")


# -- issuer and audience --------------------------------------------------------------


def test_issuer_right_wrong_missing():
    v = verifier(issuer="https://auth.example")
    assert v.verify(hs256(claims(iss="https://auth.example"))).user_id == "alice"
    refused(v, hs256(claims(iss="https://evil.example")), "issuer")
    refused(v, hs256(claims()), "'iss'")


def test_issuer_not_configured_ignores_iss():
    assert verifier().verify(hs256(claims(iss="anyone"))).user_id == "alice"


def test_audience_right_wrong_missing():
    v = verifier(audience="chatd")
    assert v.verify(hs256(claims(aud="chatd"))).user_id == "alice"
    assert v.verify(hs256(claims(aud=["other", "chatd"]))).user_id == "alice"
    refused(v, hs256(claims(aud="other")), "audience")
    refused(v, hs256(claims(aud=["a", "b"])), "audience")
    refused(v, hs256(claims()), "'aud'")


def test_audience_not_configured_ignores_aud():
    assert verifier().verify(hs256(claims(aud="whatever"))).user_id == "alice"


def test_issuer_and_audience_together():
    v = verifier(issuer="iss", audience="aud")
    assert v.verify(hs256(claims(iss="iss", aud="aud"))).user_id == "alice"
    refused(v, hs256(claims(iss="iss")))
    refused(v, hs256(claims(aud="aud")))


# -- asymmetric keys ---------------------------------------------------------------------


def test_rs256_with_public_key(rsa_keys):
    private_pem, public_pem = rsa_keys
    v = verifier(algorithms=("RS256",), secret=None, public_key=public_pem)
    token = jwt.encode(claims(role="admin"), private_pem, algorithm="RS256")
    assert v.verify(token) == Identity("alice", None, "admin")


def test_rs256_signed_by_another_key(rsa_keys):
    _, public_pem = rsa_keys
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(claims(), other, algorithm="RS256")
    refused(verifier(algorithms=("RS256",), secret=None, public_key=public_pem), token, "signature")


def test_es256_with_public_key(ec_keys):
    private_pem, public_pem = ec_keys
    v = verifier(algorithms=("ES256",), secret=None, public_key=public_pem)
    assert v.verify(jwt.encode(claims(name="Al"), private_pem, algorithm="ES256")) == Identity(
        "alice", "Al", None
    )


def test_rs256_token_refused_when_only_hs256_allowed(rsa_keys):
    private_pem, public_pem = rsa_keys
    token = jwt.encode(claims(), private_pem, algorithm="RS256")
    refused(verifier(public_key=public_pem), token, "not allowed")


def test_asymmetric_algorithm_without_public_key(rsa_keys):
    private_pem, _ = rsa_keys
    token = jwt.encode(claims(), private_pem, algorithm="RS256")
    refused(verifier(algorithms=("RS256",), secret=SECRET, public_key=None), token, "no key")


def test_key_confusion_refused_with_rs256_only(rsa_keys):
    _, public_pem = rsa_keys
    token = hand_signed_hs256(claims(sub="mallory"), public_pem.encode())
    refused(
        verifier(algorithms=("RS256",), secret=None, public_key=public_pem), token, "not allowed"
    )


def test_key_confusion_refused_with_rs256_and_hs256(rsa_keys):
    _, public_pem = rsa_keys
    v = verifier(algorithms=("RS256", "HS256"), secret=SECRET, public_key=public_pem)
    token = hand_signed_hs256(claims(sub="mallory"), public_pem.encode())
    refused(v, token)
    # the same verifier still accepts honest tokens of both kinds
    assert v.verify(hs256(claims())).user_id == "alice"
    assert v.verify(hand_signed_hs256(claims(), SECRET.encode())).user_id == "alice"


def test_key_confusion_refused_with_ec_key(ec_keys):
    _, public_pem = ec_keys
    v = verifier(algorithms=("ES256", "HS256"), secret=SECRET, public_key=public_pem)
    refused(v, hand_signed_hs256(claims(sub="mallory"), public_pem.encode()))


# -- from_config, identity_from_claims, mint_token ------------------------------------------------


def test_from_config_reads_public_key(tmp_path, rsa_keys):
    private_pem, public_pem = rsa_keys
    key_file = tmp_path / "key.pem"
    key_file.write_text(public_pem)
    config = Config(
        data_dir=str(tmp_path),
        jwt_algorithms=("RS256",),
        jwt_public_key=str(key_file),
        jwt_issuer="i",
        jwt_audience="a",
    )
    v = TokenVerifier.from_config(config)
    assert v.public_key == public_pem and v.secret is None and v.algorithms == ("RS256",)
    assert (
        v.verify(jwt.encode(claims(iss="i", aud="a"), private_pem, algorithm="RS256")).user_id
        == "alice"
    )


def test_identity_from_claims():
    assert identity_from_claims({"sub": "bob", "name": "Bob", "role": "admin"}) == Identity(
        "bob", "Bob", "admin"
    )
    with pytest.raises(AuthError):
        identity_from_claims({"sub": 1})
    with pytest.raises(AuthError):
        identity_from_claims({})


def test_mint_token_round_trip(tmp_path):
    config = load_config(
        {
            "jwt_secret": SECRET,
            "data_dir": str(tmp_path),
            "jwt_issuer": "chatd-test",
            "jwt_audience": "clients",
        },
        environ={},
    )
    token = mint_token(config, "carol", admin=True, ttl=60, name="Carol")
    payload = jwt.decode(token, SECRET, algorithms=["HS256"], audience="clients")
    assert payload["iss"] == "chatd-test" and payload["exp"] - payload["iat"] == 60
    assert TokenVerifier.from_config(config).verify(token) == Identity("carol", "Carol", "admin")


def test_mint_token_plain(tmp_path):
    config = load_config({"jwt_secret": SECRET, "data_dir": str(tmp_path)}, environ={})
    identity = TokenVerifier.from_config(config).verify(mint_token(config, "dave"))
    assert identity == Identity("dave", None, None)


def test_mint_token_uses_first_hmac_algorithm(tmp_path):
    config = load_config(
        {"jwt_secret": SECRET, "data_dir": str(tmp_path), "jwt_algorithms": "HS512,HS256"},
        environ={},
    )
    token = mint_token(config, "erin")
    assert jwt.get_unverified_header(token)["alg"] == "HS512"
    assert TokenVerifier.from_config(config).verify(token).user_id == "erin"


def test_minted_token_expires(tmp_path):
    config = load_config({"jwt_secret": SECRET, "data_dir": str(tmp_path)}, environ={})
    refused(TokenVerifier.from_config(config), mint_token(config, "x", ttl=-60), "expired")


def test_mint_token_needs_hmac(tmp_path, rsa_keys):
    key_file = tmp_path / "key.pem"
    key_file.write_text(rsa_keys[1])
    config = Config(data_dir=str(tmp_path), jwt_algorithms=("RS256",), jwt_public_key=str(key_file))
    with pytest.raises(AuthError):
        mint_token(config, "x")
    with pytest.raises(AuthError):
        mint_token(Config(data_dir=str(tmp_path), jwt_secret=None), "x")


def test_not_before_in_the_future_is_refused():
    now = int(time.time())
    refused(verifier(), hs256(claims(nbf=now + 60)))
    assert verifier().verify(hs256(claims(nbf=now + 2))).user_id == "alice"  # within leeway


def test_bytes_secret_style_tokens_from_other_issuers():
    # A backend that signs with the same shared secret (as bytes) is accepted.
    token = jwt.encode(claims(sub="backend-user"), SECRET.encode(), algorithm="HS256")
    assert verifier().verify(token).user_id == "backend-user"


def test_the_secret_vetted_once_verifies_what_pyjwt_verifies() -> None:
    from chatd.auth import hmac_decoder

    decoder = hmac_decoder(SECRET)
    for algorithm in ("HS256", "HS384", "HS512"):
        good = jwt.encode(claims(), SECRET, algorithm=algorithm)
        assert decoder.decode(good, SECRET, algorithms=[algorithm])["sub"] == "alice"
        forged = jwt.encode(claims(), OTHER_SECRET, algorithm=algorithm)
        with pytest.raises(jwt.InvalidSignatureError):
            decoder.decode(forged, SECRET, algorithms=[algorithm])
        # Another key is vetted as PyJWT vets it.
        assert decoder.decode(forged, OTHER_SECRET, algorithms=[algorithm])["sub"] == "alice"
    with pytest.raises(jwt.InvalidAlgorithmError):
        decoder.decode(
            jwt.encode(claims(), SECRET, algorithm="HS512"), SECRET, algorithms=["HS256"]
        )


def test_a_secret_pyjwt_refuses_is_still_refused_for_every_token() -> None:
    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    secret = pem.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    token = jwt.encode(claims(), "x" * 64, algorithm="HS256")
    with pytest.raises(AuthError):
        verifier(secret=secret).verify(token)


# -- accept_tokens_without_exp ------------------------------------------------------------


def lenient() -> TokenVerifier:
    """A verifier as ``accept_tokens_without_exp = true`` builds it."""
    return TokenVerifier(
        algorithms=("HS256",),
        secret=SECRET,
        public_key=None,
        issuer=None,
        audience=None,
        require_exp=False,
    )


def test_a_token_without_exp_is_accepted_when_the_setting_is_on():
    # Seed 004's sample tokens: sub, name and iat, no exp.
    token = hs256({"sub": "user123", "name": "John Doe", "iat": 1516239022})
    assert lenient().verify(token) == Identity("user123", "John Doe", None)
    refused(verifier(), token, "'exp'")


def test_an_exp_that_is_there_is_still_checked_when_the_setting_is_on():
    now = int(time.time())
    refused(lenient(), hs256(claims(exp=now - 30)), "expired")
    refused(lenient(), hs256(claims(exp="tomorrow")))
    assert lenient().verify(hs256(claims(exp=now + 60))).user_id == "alice"


@pytest.mark.parametrize("sub", [_DROP, 42, None, ["alice"], "", "  ", "u" * 129])
def test_sub_is_still_a_required_string_when_the_setting_is_on(sub):
    refused(lenient(), hs256(claims(exp=_DROP, sub=sub)))


def test_the_signature_and_algorithm_still_count_when_the_setting_is_on():
    refused(lenient(), hs256(claims(exp=_DROP), secret=OTHER_SECRET), "signature")
    refused(lenient(), hs256(claims(exp=_DROP), algorithm="HS384"), "not allowed")


def test_from_config_follows_the_setting(tmp_path):
    token = hs256({"sub": "bob", "iat": int(time.time())})
    base = {"jwt_secret": SECRET, "data_dir": str(tmp_path)}
    strict = TokenVerifier.from_config(load_config(base, environ={}))
    assert strict.require_exp
    refused(strict, token, "'exp'")
    on = load_config(base, environ={"CHATD_ACCEPT_TOKENS_WITHOUT_EXP": "true"})
    assert TokenVerifier.from_config(on).verify(token).user_id == "bob"
