"""NextAuth.js and Auth.js session tokens: the encrypted JWTs (JWE) those
libraries put in their session cookie, accepted wherever chatd accepts a
JWT (PROTOCOL.md section 7, last bullet).

A Next.js app that uses NextAuth's default ``jwt`` session strategy has no
signed JWT to hand to a chat client: its session token is a JWE with
``alg: dir`` whose key is derived from ``NEXTAUTH_SECRET``.  Sharing that
secret with chatd lets the app give its clients the session token as is.

The two derivations, as read in the npm packages' own source:

* next-auth v4 (``next-auth/jwt/index.js``, ``getDerivedEncryptionKey`` and
  ``encode``): ``enc: A256GCM``; key = HKDF-SHA256(secret, salt="",
  info="NextAuth.js Generated Encryption Key", 32 bytes).  ``encode`` takes
  an optional salt, and with one the info becomes ``"… Key (<salt>)"`` and
  the salt is used as such; ``getToken`` never passes one.
* Auth.js / next-auth v5 (``@auth/core/jwt.js``, ``getDerivedEncryptionKey``
  and ``encode``): ``enc: A256CBC-HS512``; key = HKDF-SHA256(secret,
  salt=<salt>, info="Auth.js Generated Encryption Key (<salt>)", 64 bytes),
  the salt being the session cookie's name (``authjs.session-token``, or
  ``__Secure-authjs.session-token`` over https).  Its header carries
  ``kid``, the key's RFC 7638 thumbprint with SHA-512, which picks the key.

Both set ``iat``, ``exp`` (30 days by default) and ``jti``; the user's id
is ``sub`` and the display name ``name``.  Keys are derived once, when the
verifier is built, never per token.  The JOSE work is joserfc's, the HKDF
cryptography's: nothing here is hand-written cryptography.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from joserfc import jwe, jwk
from joserfc.errors import (
    ClaimError,
    DecodeError,
    ExpiredTokenError,
    JoseError,
    MissingClaimError,
    UnsupportedAlgorithmError,
)
from joserfc.jwe import JWERegistry
from joserfc.jwk import OctKey
from joserfc.jwt import JWTClaimsRegistry
from joserfc.util import urlsafe_b64decode

V4_INFO = "NextAuth.js Generated Encryption Key"
V5_INFO = "Auth.js Generated Encryption Key"
V4_ENC = "A256GCM"
V5_ENC = "A256CBC-HS512"
MAX_SALT_LENGTH = 200  # @panva/hkdf refuses an info over 1024 bytes; cookie names are short


class SessionTokenError(Exception):
    """An encrypted session token was refused; the message says why without
    echoing it (chatd.auth turns it into an ``AuthError``)."""


@dataclass(frozen=True, slots=True)
class TokenFormat:
    """One accepted kind of session token: ``v4`` (next-auth 4, optionally
    ``v4:<salt>`` for an app that passes a salt to ``encode``) or
    ``v5:<salt>`` (Auth.js, the salt being the session cookie's name)."""

    version: str
    salt: str

    @classmethod
    def parse(cls, spec: str) -> TokenFormat:
        """Read ``v4``, ``v4:<salt>`` or ``v5:<salt>``; ``ValueError`` with
        a message fit for chatd's one-line configuration errors."""
        version, colon, salt = spec.strip().partition(":")
        if version not in ("v4", "v5"):
            raise ValueError(f"unknown NextAuth token format {spec!r} (expected v4 or v5:<salt>)")
        if colon and not salt:
            raise ValueError(f"empty salt in {spec!r}")
        if version == "v5" and not salt:
            raise ValueError(
                "v5 needs the salt, the session cookie's name (e.g. v5:authjs.session-token)"
            )
        if len(salt) > MAX_SALT_LENGTH or any(c.isspace() or c == "," for c in salt):
            raise ValueError(f"invalid salt in {spec!r} (at most 200 characters, no spaces)")
        return cls(version, salt)

    @property
    def spec(self) -> str:
        return f"{self.version}:{self.salt}" if self.salt else self.version

    @property
    def enc(self) -> str:
        return V4_ENC if self.version == "v4" else V5_ENC

    def derive_key(self, secret: str) -> bytes:
        """The content encryption key the JS library derives from the secret."""
        if self.version == "v4":
            info = f"{V4_INFO} ({self.salt})" if self.salt else V4_INFO
            length = 32
        else:
            info = f"{V5_INFO} ({self.salt})"
            length = 64
        hkdf = HKDF(
            algorithm=hashes.SHA256(),
            length=length,
            salt=self.salt.encode(),
            info=info.encode(),
        )
        return hkdf.derive(secret.encode())


def parse_formats(value: Iterable[str]) -> tuple[str, ...]:
    """Normalise a list of format specs (duplicates dropped, order kept)."""
    specs: list[str] = []
    for item in value:
        if not item.strip():
            continue
        spec = TokenFormat.parse(item).spec
        if spec not in specs:
            specs.append(spec)
    if not specs:
        raise ValueError("at least one format is required")
    return tuple(specs)


@dataclass(frozen=True, slots=True)
class _Key:
    format: TokenFormat
    key: OctKey
    kid: str | None  # what Auth.js puts in the header; v4 sends none


@dataclass(frozen=True)
class SessionTokenDecryptor:
    """Decrypts NextAuth/Auth.js session tokens and checks their claims.

    Built once from the secret and the accepted formats; holds the derived
    keys grouped by ``enc`` and one joserfc registry per ``enc`` that allows
    exactly ``dir`` plus that ``enc`` (so no ``zip``, no other algorithm)."""

    secret: str = field(repr=False)
    formats: tuple[TokenFormat, ...]
    leeway: float = 5.0
    _keys: dict[str, tuple[_Key, ...]] = field(init=False, repr=False, compare=False)
    _registries: dict[str, JWERegistry] = field(init=False, repr=False, compare=False)
    _claims: JWTClaimsRegistry = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        keys: dict[str, list[_Key]] = {}
        for fmt in self.formats:
            raw = fmt.derive_key(self.secret)
            key = OctKey.import_key(raw)
            kid = None
            if fmt.version == "v5":
                kid = jwk.thumbprint(key.as_dict(private=True), "sha512")
            keys.setdefault(fmt.enc, []).append(_Key(fmt, key, kid))
        object.__setattr__(self, "_keys", {enc: tuple(ks) for enc, ks in keys.items()})
        object.__setattr__(
            self, "_registries", {enc: JWERegistry(algorithms=["dir", enc]) for enc in keys}
        )
        # joserfc reads the clock itself at each validation, as PyJWT does.
        claims = JWTClaimsRegistry(
            leeway=int(self.leeway), exp={"essential": True}, sub={"essential": True}
        )
        object.__setattr__(self, "_claims", claims)

    @classmethod
    def from_specs(
        cls, secret: str, specs: Iterable[str], leeway: float = 5.0
    ) -> SessionTokenDecryptor:
        return cls(secret, tuple(TokenFormat.parse(s) for s in specs), leeway)

    def claims(self, token: str) -> dict[str, Any]:
        """The token's claims once decrypted, ``exp`` present and not past,
        ``nbf``/``iat`` not in the future; ``SessionTokenError`` otherwise.
        ``sub`` and ``name`` are left to ``chatd.auth.identity_from_claims``."""
        header = _protected_header(token)
        alg, enc = header.get("alg"), header.get("enc")
        if alg != "dir":
            raise SessionTokenError(
                f"encrypted token: alg {_shown(alg)} is not accepted (only 'dir')"
            )
        if not isinstance(enc, str) or enc not in self._keys:
            raise SessionTokenError(
                f"encrypted token: enc {_shown(enc)} is not among the configured NextAuth formats"
            )
        candidates = self._keys[enc]
        kid = header.get("kid")
        if kid is not None:
            # Auth.js names its key; a kid we do not know is another secret or salt.
            candidates = tuple(k for k in candidates if k.kid == kid)
            if not candidates:
                raise SessionTokenError(
                    "encrypted token was not made with the NextAuth secret and a configured salt"
                )
        registry = self._registries[enc]
        plaintext = None
        for candidate in candidates:
            try:
                plaintext = jwe.decrypt_compact(token, candidate.key, registry=registry).plaintext
                break
            except DecodeError:
                continue  # wrong key: the tag does not match; try the next salt
            except UnsupportedAlgorithmError as e:
                raise SessionTokenError(f"encrypted token: {e.description}") from None
            except JoseError as e:
                raise SessionTokenError(f"encrypted token is invalid: {e.error}") from None
            except (ValueError, TypeError):
                # joserfc lets bad base64 (binascii.Error) or a wrong IV size
                # through as ValueError: a malformed token, not a crash.
                raise SessionTokenError("malformed token") from None
        if plaintext is None:
            raise SessionTokenError(
                "encrypted token could not be decrypted with the NextAuth secret"
            )
        return self._checked(plaintext)

    def _checked(self, plaintext: bytes) -> dict[str, Any]:
        try:
            claims = json.loads(plaintext)
        except ValueError:
            raise SessionTokenError("encrypted token's payload is not JSON") from None
        if not isinstance(claims, dict):
            raise SessionTokenError("encrypted token's payload is not a JSON object")
        try:
            self._claims.validate(claims)
        except ExpiredTokenError:
            raise SessionTokenError("token has expired") from None
        except MissingClaimError as e:
            names = " and ".join(repr(name) for name in e.claim.split(","))
            raise SessionTokenError(f"token lacks the {names} claim") from None
        except ClaimError as e:
            raise SessionTokenError(f"invalid token: {e.description}") from None
        except JoseError as e:  # none is documented; refuse rather than crash
            raise SessionTokenError(f"invalid token: {e.error}") from None
        return claims


def _shown(value: object) -> str:
    """A header value for an error message, never a long one (the client
    chose it, and the message may be logged)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _protected_header(token: str) -> dict[str, Any]:
    """The JWE's protected header, read to pick the key (joserfc reads and
    checks it again while decrypting)."""
    encoded = token.partition(".")[0]
    try:
        header = json.loads(urlsafe_b64decode(encoded.encode("ascii")))
    except ValueError:
        raise SessionTokenError("malformed token") from None
    if not isinstance(header, dict):
        raise SessionTokenError("malformed token")
    return header
