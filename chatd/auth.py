"""JWT verification shared by the WebSocket bindings and the HTTP API.

Rules (PROTOCOL.md section 2): only algorithms on the configured allow-list
are accepted (``none`` can never be on it), ``sub`` (a string) and ``exp``
are required (``exp`` only while ``accept_tokens_without_exp`` is off; a
token that has one is checked either way), ``iss`` and ``aud`` are checked
when configured.  HMAC algorithms verify with the shared secret and the
others with the public key, so a public key can never be abused as an HMAC
secret.

With ``nextauth_secret`` configured, an encrypted NextAuth.js / Auth.js
session token (a JWE: five dot-separated parts) is accepted too, wherever a
JWT is (chatd/nextauth.py).  Only a five-part token takes that path, so
plain JWT verification costs one ``count`` more than before.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
from jwt.algorithms import HMACAlgorithm

if TYPE_CHECKING:
    from jwt.types import Options

from chatd.config import Config
from chatd.domain.models import Identity
from chatd.errors import unstorable
from chatd.nextauth import SessionTokenDecryptor, SessionTokenError

MAX_USER_ID_LENGTH = 128
MAX_TOKEN_LENGTH = 8192


class AuthError(Exception):
    """A token was refused; the message says why without echoing it."""


@dataclass(frozen=True)
class TokenVerifier:
    algorithms: tuple[str, ...]
    secret: str | None
    public_key: str | None
    issuer: str | None
    audience: str | None
    leeway: float = 5.0
    #: NextAuth session tokens, when a NextAuth secret is configured.  Its
    #: keys are derived here, once, not per token.
    nextauth: SessionTokenDecryptor | None = None
    #: False with ``accept_tokens_without_exp``: apps such as seed 004's
    #: issue tokens without ``exp``; an ``exp`` that is there still counts.
    require_exp: bool = True
    _decoder: jwt.PyJWT = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_decoder", hmac_decoder(self.secret))

    @classmethod
    def from_config(cls, config: Config) -> TokenVerifier:
        public_key = Path(config.jwt_public_key).read_text() if config.jwt_public_key else None
        nextauth = None
        if config.nextauth_secret:
            nextauth = SessionTokenDecryptor.from_specs(
                config.nextauth_secret, config.nextauth_formats
            )
        return cls(
            algorithms=config.jwt_algorithms,
            secret=config.jwt_secret,
            public_key=public_key,
            issuer=config.jwt_issuer,
            audience=config.jwt_audience,
            nextauth=nextauth,
            require_exp=not config.accept_tokens_without_exp,
        )

    def verify(self, token: Any) -> Identity:
        if not isinstance(token, str) or not token:
            raise AuthError("token must be a non-empty string")
        if len(token) > MAX_TOKEN_LENGTH:
            raise AuthError("token is too long")
        if token.count(".") == 4:
            return self._verify_encrypted(token)
        if self.secret and all(a.startswith("HS") for a in self.algorithms):
            # One key for every allowed algorithm (the default, HS256): the
            # decoder checks the header's algorithm against the list, so the
            # header is read once, not twice (this runs per connection).
            try:
                return self._decode(token, self.secret, list(self.algorithms))
            except AuthError:
                self._explain_algorithm(token)
                raise
        algorithm = self._explain_algorithm(token)
        key = self.secret if algorithm.startswith("HS") else self.public_key
        if not key:
            raise AuthError(f"no key configured for {algorithm}")
        return self._decode(token, key, [algorithm])

    def _explain_algorithm(self, token: str) -> str:
        """The header's algorithm, or the reason it is refused (the clearer
        error, where the decoder's would only say "not allowed")."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("malformed token") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self.algorithms:
            raise AuthError(f"algorithm {algorithm!r} is not allowed")
        return algorithm

    def _decode(self, token: str, key: str, algorithms: list[str]) -> Identity:
        options: Options = {"require": ["sub", "exp"] if self.require_exp else ["sub"]}
        if self.audience is None:
            options["verify_aud"] = False
        try:
            claims = self._decoder.decode(
                token,
                key,
                algorithms=algorithms,
                options=options,
                issuer=self.issuer,
                audience=self.audience,
                leeway=self.leeway,
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token has expired") from None
        except jwt.MissingRequiredClaimError as e:
            raise AuthError(f"token lacks the {e.claim!r} claim") from None
        except jwt.InvalidIssuerError:
            raise AuthError("token has the wrong issuer") from None
        except jwt.InvalidAudienceError:
            raise AuthError("token has the wrong audience") from None
        except jwt.InvalidSignatureError:
            raise AuthError("token signature is invalid") from None
        except jwt.PyJWTError as e:
            raise AuthError(f"invalid token: {e}") from None
        return identity_from_claims(claims)

    def _verify_encrypted(self, token: str) -> Identity:
        """A JWE: a NextAuth/Auth.js session token.  ``iss``/``aud`` are not
        checked: NextAuth sets neither, and only holders of the NextAuth
        secret can make one."""
        if self.nextauth is None:
            raise AuthError("encrypted tokens (JWE) are accepted only with nextauth_secret set")
        try:
            claims = self.nextauth.claims(token)
        except SessionTokenError as e:
            raise AuthError(str(e)) from None
        return identity_from_claims(claims)


class _SecretVettedOnce(HMACAlgorithm):
    """PyJWT's HMAC algorithm, which vets the key on every token (it must
    not be a PEM, SSH or DER key, nor a JWK: a JSON parse and an X.509 parse
    attempt of the secret), about a third of verifying a token.  chatd's
    secret never changes, so its verdict is taken once, here; any other key
    is vetted as PyJWT does.  Signing and verifying are PyJWT's."""

    def __init__(self, hash_alg: Any, secret: str) -> None:
        super().__init__(hash_alg)
        self._secret = secret
        self._prepared = super().prepare_key(secret)

    def prepare_key(self, key: str | bytes) -> bytes:
        if key == self._secret:
            return self._prepared
        return super().prepare_key(key)


def hmac_decoder(secret: str | None) -> jwt.PyJWT:
    """A PyJWT decoder whose HS256/384/512 vet ``secret`` once.  If PyJWT's
    layout is not the one this was written against, or the secret fails
    PyJWT's vetting (then every token is refused, as before), it is PyJWT's
    plain decoder."""
    decoder = jwt.PyJWT()
    jws = getattr(decoder, "_jws", None)
    if not secret or not isinstance(jws, jwt.PyJWS):
        return decoder
    try:
        vetted = {
            name: _SecretVettedOnce(hash_alg, secret)
            for name, hash_alg in (
                ("HS256", HMACAlgorithm.SHA256),
                ("HS384", HMACAlgorithm.SHA384),
                ("HS512", HMACAlgorithm.SHA512),
            )
        }
    except jwt.InvalidKeyError:
        return decoder
    for name, algorithm in vetted.items():
        jws.unregister_algorithm(name)
        jws.register_algorithm(name, algorithm)
    return decoder


def _check_text(claims: dict[str, Any], claim: str) -> None:
    """A text claim chatd keeps, logs or stores must be text every store
    and log can hold: PyJWT's JSON lets a lone surrogate (``"\\ud800"``)
    through, which no UTF-8 encoder takes (a user id holding one would
    authenticate and then fail wherever it is written), and PostgreSQL
    text cannot hold NUL.  Refused like any bad token."""
    value = claims.get(claim)
    if not isinstance(value, str):
        return
    problem = unstorable(value)
    if problem is not None:
        raise AuthError(f"token {claim!r} {problem}")


def identity_from_claims(claims: dict[str, Any]) -> Identity:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub.strip() or len(sub) > MAX_USER_ID_LENGTH:
        raise AuthError("token 'sub' must be a non-empty string of at most 128 characters")
    for claim in ("sub", "name", "username", "role"):
        _check_text(claims, claim)
    name = claims.get("name")
    if not isinstance(name, str) or not name.strip():
        name = claims.get("username")  # what some apps (seed 002's) call it
    role = claims.get("role")
    return Identity(
        user_id=sub,
        name=name if isinstance(name, str) else None,
        role=role if isinstance(role, str) else None,
    )


def mint_token(
    config: Config, user_id: str, admin: bool = False, ttl: int = 86400, name: str | None = None
) -> str:
    """A token for ``python -m chatd token`` and the tests (HMAC only)."""
    algorithm = next((a for a in config.jwt_algorithms if a.startswith("HS")), None)
    if algorithm is None or not config.jwt_secret:
        raise AuthError("minting needs an HS* algorithm and a jwt_secret")
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user_id, "iat": now, "exp": now + ttl}
    if admin:
        claims["role"] = "admin"
    if name:
        claims["name"] = name
    if config.jwt_issuer:
        claims["iss"] = config.jwt_issuer
    if config.jwt_audience:
        claims["aud"] = config.jwt_audience
    return jwt.encode(claims, config.jwt_secret, algorithm=algorithm)
