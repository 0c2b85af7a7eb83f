"""Where Redis is: parsing ``redis://`` and ``rediss://`` URLs and making
the client endpoint (TLS checked through service-identity).  Kept apart
from the txredisapi code, which installs the default reactor on import,
so configuration checks can use it anywhere."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from twisted.internet import endpoints
from twisted.internet.interfaces import IStreamClientEndpoint

CONNECT_TIMEOUT = 5.0


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is, from ``redis://[user:password@]host[:port][/db]`` or
    ``rediss://…`` (TLS, certificate and host name checked)."""

    host: str
    port: int
    db: int
    username: str | None
    password: str | None
    tls: bool

    @classmethod
    def parse(cls, url: str) -> RedisTarget:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError("expected redis://host:port/db or rediss://host:port/db")
        if not parts.hostname:
            raise ValueError("the Redis URL has no host")
        try:
            port = parts.port if parts.port is not None else 6379
        except ValueError as e:
            raise ValueError(f"bad port in the Redis URL: {e}") from None
        if not 0 < port < 65536:
            raise ValueError("the Redis port must be 1 to 65535")
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ValueError(f"the Redis database must be a number, not {path!r}")
        return cls(
            host=parts.hostname,
            port=port,
            db=int(path) if path else 0,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
            tls=parts.scheme == "rediss",
        )

    def safe(self) -> str:
        """The URL without a password (for logs)."""
        scheme = "rediss" if self.tls else "redis"
        user = f"{self.username}@" if self.username else ""
        return f"{scheme}://{user}{self.host}:{self.port}/{self.db}"

    def endpoint(self, reactor: Any, ca_file: str | None = None) -> IStreamClientEndpoint:
        endpoint = endpoints.HostnameEndpoint(
            reactor, self.host, self.port, timeout=CONNECT_TIMEOUT
        )
        if not self.tls:
            return endpoint
        from twisted.internet import ssl

        if ca_file:
            with open(ca_file, "rb") as f:
                trust = ssl.Certificate.loadPEM(f.read())
        else:
            trust = ssl.platformTrust()
        # optionsForClientTLS checks the certificate chain and, through
        # service-identity, that it names the host we asked for.
        return endpoints.wrapClientTLS(
            ssl.optionsForClientTLS(self.host, trustRoot=trust), endpoint
        )
