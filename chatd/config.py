"""Configuration: one typed ``Config`` built from defaults, a TOML file,
``CHATD_*`` environment variables and the command line, in rising precedence.

Every setting is declared once in ``SETTINGS``; the twistd options, the
environment names, the TOML keys and the README table all come from that
list, so they cannot drift apart.  A bad value or an unknown key raises
``ConfigError`` with one line that names it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

# Twisted's endpoint-description parser; private, but unchanged for over a
# decade, and the only way to read a description exactly as Twisted will.
from twisted.internet.endpoints import _parse as _parse_endpoint

ENV_PREFIX = "CHATD_"
MIN_SECRET_LENGTH = 16
SECRETS = ("jwt_secret", "nextauth_secret", "api_key")
"""Settings that are secrets someone could guess: each, when set, needs
``MIN_SECRET_LENGTH`` characters (a 5-character API key is an admin
password anyone can try)."""
SECRET_FILE_NAME = "jwt-secret"
SUPPORTED_ALGORITHMS = frozenset(
    {
        "HS256",
        "HS384",
        "HS512",
        "RS256",
        "RS384",
        "RS512",
        "ES256",
        "ES384",
        "ES512",
        "PS256",
        "PS384",
        "PS512",
        "EdDSA",
    }
)

# What stock next-auth 4 and Auth.js (its http and https cookie names) send;
# chatd/nextauth.py reads these.
NEXTAUTH_DEFAULT_FORMATS = ("v4", "v5:authjs.session-token", "v5:__Secure-authjs.session-token")


class ConfigError(ValueError):
    """A configuration value that chatd refuses to start with."""


@dataclass(frozen=True, slots=True)
class Setting:
    """One configuration knob: its name, parser, default and help line."""

    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str

    @property
    def option(self) -> str:
        return self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def _optional_text(value: Any) -> str | None:
    if value is None:
        return None
    text = _text(value).strip()
    return text or None


def _shown(value: Any) -> str:
    """A rejected value as the operator wrote it, on one short line."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _number(value: Any) -> float:
    """A finite number from TOML or text, refused in chatd's words (not
    ``float()``'s ``could not convert string to float``)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{_shown(value)} is not a number") from None
    else:
        raise ValueError(f"{_shown(value)} is not a number")
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(f"{_shown(value)} is not a finite number")
    return number


def _integer(value: Any) -> int:
    """A whole number from TOML or text (``1000`` or ``1000.0``), refused
    in chatd's words (not ``int()``'s ``invalid literal``)."""
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    number = _number(value)
    if not number.is_integer():
        raise ValueError(f"{_shown(value)} is not a whole number")
    return int(number)


def _positive_number(value: Any) -> float:
    number = _number(value)
    if not number > 0:
        raise ValueError(f"{_shown(value)} is not a positive number")
    return number


def _positive_int(value: Any) -> int:
    number = _integer(value)
    if number <= 0:
        raise ValueError(f"{_shown(value)} is not a positive whole number")
    return number


def _non_negative_number(value: Any) -> float:
    number = _number(value)
    if not number >= 0:
        raise ValueError(f"{_shown(value)} is not a number >= 0")
    return number


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise ValueError(f"{_shown(value)} is not true or false")
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _dm_policy(value: Any) -> str:
    text = _text(value)
    if text not in ("anyone", "friends"):
        raise ValueError("expected 'anyone' or 'friends'")
    return text


def _algorithms(value: Any) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ValueError("expected a comma-separated list or a list of strings")
    names = tuple(str(item).strip() for item in items if str(item).strip())
    if not names:
        raise ValueError("at least one algorithm is required")
    for name in names:
        if name.lower() == "none":
            raise ValueError("'none' is never allowed")
        if name not in SUPPORTED_ALGORITHMS:
            raise ValueError(f"unsupported algorithm {name!r}")
    return names


def _nextauth_formats(value: Any) -> tuple[str, ...]:
    from chatd.nextauth import parse_formats

    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise ValueError("expected a comma-separated list or a list of strings")
    return parse_formats(items)


def _split_url(url: str) -> SplitResult:
    """``urlsplit`` with the port read, refused in chatd's words rather
    than ``Invalid IPv6 URL`` or ``Port could not be cast to integer``.
    The URL is not echoed: it may hold a password."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - reading it is the check
    except ValueError:
        raise ValueError(
            "not a valid URL (check the [ ] around an IPv6 host, and that the port is a number"
            " from 0 to 65535)"
        ) from None
    return parts


def _database(value: Any) -> str | None:
    url = _optional_text(value)
    if url is None:
        return None
    scheme = _split_url(url).scheme
    if scheme == "sqlite":
        if not url.startswith("sqlite:///") or len(url) <= len("sqlite:///"):
            raise ValueError("expected sqlite:///path/to/file.db")
    elif scheme not in ("postgresql", "postgres"):
        raise ValueError("expected sqlite:///path or postgresql://...")
    return url


def _redis(value: Any) -> str | None:
    url = _optional_text(value)
    if url is not None:
        from chatd.broker.target import RedisTarget

        _split_url(url)
        RedisTarget.parse(url)
    return url


def _origins(value: Any) -> tuple[str, ...]:
    """Browser origins (``scheme://host[:port]``) or ``*``."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ValueError("expected a comma-separated list or a list of strings")
    origins = tuple(str(item).strip().rstrip("/") for item in items if str(item).strip())
    for origin in origins:
        if origin == "*":
            continue
        try:
            parts = _split_url(origin)
        except ValueError:
            parts = urlsplit("")
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
            raise ValueError(f"{origin!r} is not an origin like https://app.example.com or *")
    return origins


def _networks(value: Any) -> tuple[str, ...]:
    """IP addresses or networks (``10.0.0.0/8``, ``::1``), comma-separated
    or a list; empty is allowed."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ValueError("expected a comma-separated list or a list of strings")
    networks = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        try:
            networks.append(str(ipaddress.ip_network(text, strict=False)))
        except ValueError:
            raise ValueError(f"{text!r} is not an IP address or network") from None
    return tuple(networks)


def _log_format(value: Any) -> str:
    text = _text(value)
    if text not in ("text", "json"):
        raise ValueError("expected 'text' or 'json'")
    return text


def _sqlite_synchronous(value: Any) -> str:
    text = _text(value).lower()
    if text not in ("full", "normal"):
        raise ValueError("expected 'full' or 'normal'")
    return text


def _redis_prefix(value: Any) -> str:
    text = _text(value)
    if not text or len(text) > 64 or any(c.isspace() for c in text):
        raise ValueError("expected 1 to 64 characters without spaces")
    return text


def _public_key_file(value: Any) -> str | None:
    path = _optional_text(value)
    if path is None:
        return None
    try:
        found = Path(path).is_file()
    except OSError as e:  # a name too long, say: Path only hides "not found"
        raise ValueError(f"cannot use {_shown(path)}: {e.strerror}") from None
    if not found:
        raise ValueError(f"no such file: {path}")
    return path


def default_data_dir() -> str:
    """systemd's StateDirectory when run as a unit, else the XDG data home."""
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return state.split(":")[0]
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return os.path.join(xdg, "chatd")


def default_runtime_dir(data_dir: str) -> str:
    """systemd's RuntimeDirectory when run as a unit (shared by the
    instances, see systemd/chatd@.service), else ``chatd-run`` next to the
    data directory: instances whose data directories are siblings
    (``/var/lib/chatd/1``, ``/var/lib/chatd/2``) share it."""
    runtime = os.environ.get("RUNTIME_DIRECTORY")
    if runtime:
        return runtime.split(":")[0]
    parent = os.path.dirname(os.path.abspath(data_dir.rstrip(os.sep) or os.sep))
    return os.path.join(parent, "chatd-run")


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "listen", _text, "tcp:8080:interface=127.0.0.1", "Twisted endpoint description to listen on"
    ),
    Setting(
        "data_dir",
        _text,
        None,
        "directory for the SQLite file and the generated JWT secret (default: $STATE_DIRECTORY or ~/.local/share/chatd)",
    ),
    Setting(
        "database",
        _database,
        None,
        "sqlite:///path or postgresql://user@host:port/db (default: sqlite file in data_dir)",
    ),
    Setting(
        "redis",
        _redis,
        None,
        "redis://[user:password@]host:port/db or rediss://… (TLS) shared by several processes (in-process fan-out when unset)",
    ),
    Setting(
        "redis_prefix",
        _redis_prefix,
        "chatd:",
        "prefix of every Redis key and channel, so deployments can share one Redis",
    ),
    Setting(
        "redis_ca",
        _public_key_file,
        None,
        "PEM CA certificate(s) to check a rediss:// server against (default: the system's trust store)",
    ),
    Setting(
        "jwt_secret",
        _optional_text,
        None,
        "shared secret for HS* tokens (generated into data_dir when no key is configured)",
    ),
    Setting(
        "jwt_public_key", _public_key_file, None, "PEM public key file for RS*/ES*/PS*/EdDSA tokens"
    ),
    Setting(
        "jwt_algorithms", _algorithms, ("HS256",), "comma-separated allow-list of JWT algorithms"
    ),
    Setting("jwt_issuer", _optional_text, None, "required `iss` claim, checked when set"),
    Setting("jwt_audience", _optional_text, None, "required `aud` claim, checked when set"),
    Setting(
        "accept_tokens_without_exp",
        _boolean,
        False,
        "accept JWTs that have no `exp` claim (they never expire; one with `exp` is still checked); for apps that issue such tokens",
    ),
    Setting(
        "nextauth_secret",
        _optional_text,
        None,
        "the NextAuth.js/Auth.js app's NEXTAUTH_SECRET (AUTH_SECRET): accept its encrypted session tokens (JWE) wherever a JWT is",
    ),
    Setting(
        "nextauth_formats",
        _nextauth_formats,
        NEXTAUTH_DEFAULT_FORMATS,
        "session token formats accepted with nextauth_secret: v4 (next-auth 4, A256GCM) and v5:<cookie name> (Auth.js, A256CBC-HS512)",
    ),
    Setting(
        "api_key",
        _optional_text,
        None,
        "server API key accepted as an admin bearer by the HTTP API",
    ),
    Setting(
        "auth_timeout",
        _positive_number,
        10.0,
        "seconds an unauthenticated connection may stay open",
    ),
    Setting(
        "max_message_size",
        _positive_int,
        65536,
        "largest WebSocket frame/message in bytes (bigger: close 1009)",
    ),
    Setting(
        "max_content_length", _positive_int, 4000, "longest chat message content in characters"
    ),
    Setting(
        "max_send_buffer",
        _positive_int,
        1048576,
        "bytes a slow client may fall behind before it is closed with 4029",
    ),
    Setting(
        "ping_interval",
        _non_negative_number,
        30.0,
        "seconds between WebSocket pings to detect dead peers (0 disables)",
    ),
    Setting(
        "ping_timeout",
        _positive_number,
        15.0,
        "seconds to wait for a pong before dropping the peer",
    ),
    Setting(
        "open_handshake_timeout",
        _positive_number,
        10.0,
        "seconds a new connection has to send its first request (the WebSocket upgrade)",
    ),
    Setting(
        "close_handshake_timeout",
        _positive_number,
        3.0,
        "seconds allowed for the closing handshake",
    ),
    Setting(
        "http_header_timeout",
        _positive_number,
        10.0,
        "seconds an HTTP request has to send all of its headers (from the connection's hand-over, or the previous answer on a kept-alive one); then 408 and close",
    ),
    Setting(
        "max_http_connections_per_ip",
        _positive_int,
        64,
        "open HTTP connections one client address may hold (IPv6: per /64; ip_limit_exempt is not counted; upgraded WebSockets do not count); more: 429 and close",
    ),
    Setting(
        "socketio_ping_interval",
        _positive_number,
        25.0,
        "seconds between Engine.IO pings on /socket.io/ (sent to clients in the handshake)",
    ),
    Setting(
        "socketio_ping_timeout",
        _positive_number,
        20.0,
        "seconds a Socket.IO client has to answer a ping before it is dropped",
    ),
    Setting(
        "socketio_max_payload",
        _positive_int,
        100000,
        "largest Engine.IO message or polling request body in bytes on /socket.io/",
    ),
    Setting(
        "socketio_test_suites",
        _boolean,
        False,
        "test only: also serve the Engine.IO/Socket.IO protocol test suites' echo servers at /engine.io/ and /testsuite/ (no auth; loopback listen only)",
    ),
    Setting(
        "websocket_echo",
        _boolean,
        False,
        "test only: also serve a WebSocket echo at /ws/echo on /ws's protocol and options (16 MiB messages) for the Autobahn TestSuite (no auth; loopback listen only)",
    ),
    Setting(
        "runtime_dir",
        _text,
        None,
        "directory shared by the chatd processes of one host for their local sockets (0700; default: $RUNTIME_DIRECTORY, else chatd-run next to data_dir); a polling request for another process's Socket.IO session is handed to it there",
    ),
    Setting(
        "allowed_origins",
        _origins,
        (),
        "browser origins allowed besides the server's own (comma-separated, or *); every WebSocket endpoint (403 at the upgrade) and the HTTP API and /socket.io/ polling (CORS) check it",
    ),
    Setting(
        "rate_limit",
        _positive_number,
        200.0,
        "sustained requests per second allowed per connection",
    ),
    Setting(
        "rate_burst",
        _positive_int,
        400,
        "requests a connection may send in a burst above rate_limit",
    ),
    Setting(
        "user_rate_limit",
        _positive_number,
        400.0,
        "sustained request cost per second allowed per user, shared by all of the user's connections (with Redis: on every process; costs: docs/security.md)",
    ),
    Setting(
        "user_rate_burst",
        _positive_int,
        1000,
        "request cost a user may spend in a burst above user_rate_limit",
    ),
    Setting(
        "max_connections",
        _positive_int,
        50000,
        "open WebSocket/Socket.IO sessions this process accepts (more: close 1013)",
    ),
    Setting(
        "max_connections_per_ip",
        _positive_int,
        256,
        "open sessions from one client address (more: close 4013); ip_limit_exempt is not counted",
    ),
    Setting(
        "ip_limit_exempt",
        _networks,
        ("127.0.0.0/8", "::1/128"),
        "addresses or networks (comma-separated) the per-address limit does not count, such as a reverse proxy's; empty: count every address",
    ),
    Setting(
        "max_connections_per_user",
        _positive_int,
        20,
        "authenticated sessions one user may hold in this process (more: close 4013)",
    ),
    Setting(
        "max_rooms_per_user",
        _positive_int,
        500,
        "rooms one user may create with chat:create (more: RATE_LIMIT_EXCEEDED)",
    ),
    Setting(
        "max_members_per_request",
        _positive_int,
        100,
        "members one chat:create may name (more: PAYLOAD_TOO_LARGE)",
    ),
    Setting(
        "friend_request_cooldown",
        _non_negative_number,
        86400.0,
        "seconds in which a repeated friend:request to the same user is stored but pushes and notifies nothing (0: each one notifies)",
    ),
    Setting(
        "max_pending_friend_requests",
        _positive_int,
        100,
        "friend requests one user may have waiting for an answer (more: RATE_LIMIT_EXCEEDED)",
    ),
    Setting(
        "max_notifications_per_user",
        _positive_int,
        1000,
        "stored notifications kept per user; a new one beyond it drops the oldest (read ones first)",
    ),
    Setting(
        "shutdown_timeout",
        _positive_number,
        10.0,
        "seconds SIGTERM waits for pending writes and closing handshakes",
    ),
    Setting(
        "dm_policy",
        _dm_policy,
        "anyone",
        "who may send a direct message to whom: 'anyone' or 'friends'",
    ),
    Setting(
        "presence_grace",
        _non_negative_number,
        3.0,
        "seconds after a user's last connection closes before user:offline",
    ),
    Setting(
        "reaction_rate",
        _positive_number,
        10.0,
        "live reactions per second allowed per user (burst: twice that)",
    ),
    Setting(
        "viewer_count_interval",
        _positive_number,
        0.5,
        "least seconds between two live:viewer-count pushes of a stream",
    ),
    Setting(
        "metrics_require_auth",
        _boolean,
        False,
        "whether GET /metrics needs the API key or an admin token",
    ),
    Setting(
        "tls_cert",
        _public_key_file,
        None,
        "PEM certificate (chain) file: serve TLS (wss://, https://) on any listen endpoint, systemd: included",
    ),
    Setting("tls_key", _public_key_file, None, "PEM private key file for tls_cert"),
    Setting(
        "sqlite_synchronous",
        _sqlite_synchronous,
        "full",
        "SQLite only: 'full' fsyncs every commit, so an acked message survives power loss; "
        "'normal' leaves commits to the OS (fsync at checkpoints): an acked message survives "
        "chatd crashing or kill -9, not an OS crash or power loss",
    ),
    Setting(
        "database_timeout",
        _positive_number,
        5.0,
        "seconds a request waits for PostgreSQL before UNAVAILABLE (also its connect, statement, "
        "idle-transaction and TCP timeouts and keepalives), and the most /readyz waits for each check",
    ),
    Setting(
        "log_format",
        _log_format,
        "text",
        "'text' (human-readable) or 'json' (one JSON object per line, for journald and log shippers)",
    ),
)

SETTINGS_BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


@dataclass(frozen=True, slots=True)
class Config:
    """The validated settings chatd runs with."""

    listen: str = "tcp:8080:interface=127.0.0.1"
    data_dir: str = field(default_factory=default_data_dir)
    database: str = ""
    redis: str | None = None
    redis_prefix: str = "chatd:"
    redis_ca: str | None = None
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwt_algorithms: tuple[str, ...] = ("HS256",)
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    accept_tokens_without_exp: bool = False
    # repr=False: the secret never shows in a logged or printed Config.
    nextauth_secret: str | None = field(default=None, repr=False)
    nextauth_formats: tuple[str, ...] = NEXTAUTH_DEFAULT_FORMATS
    api_key: str | None = None
    auth_timeout: float = 10.0
    max_message_size: int = 65536
    max_content_length: int = 4000
    max_send_buffer: int = 1048576
    ping_interval: float = 30.0
    ping_timeout: float = 15.0
    open_handshake_timeout: float = 10.0
    close_handshake_timeout: float = 3.0
    http_header_timeout: float = 10.0
    max_http_connections_per_ip: int = 64
    socketio_ping_interval: float = 25.0
    socketio_ping_timeout: float = 20.0
    socketio_max_payload: int = 100000
    socketio_test_suites: bool = False
    websocket_echo: bool = False
    allowed_origins: tuple[str, ...] = ()
    runtime_dir: str = ""
    rate_limit: float = 200.0
    rate_burst: int = 400
    user_rate_limit: float = 400.0
    user_rate_burst: int = 1000
    max_connections: int = 50000
    max_connections_per_ip: int = 256
    ip_limit_exempt: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    max_connections_per_user: int = 20
    max_rooms_per_user: int = 500
    max_members_per_request: int = 100
    friend_request_cooldown: float = 86400.0
    max_pending_friend_requests: int = 100
    max_notifications_per_user: int = 1000
    shutdown_timeout: float = 10.0
    dm_policy: str = "anyone"
    presence_grace: float = 3.0
    reaction_rate: float = 10.0
    viewer_count_interval: float = 0.5
    metrics_require_auth: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    log_format: str = "text"
    sqlite_synchronous: str = "full"
    database_timeout: float = 5.0
    secret_generated: bool = False
    unknown_environment: tuple[str, ...] = ()  # CHATD_* names that are no setting

    @property
    def sqlite_path(self) -> str | None:
        if self.database.startswith("sqlite:///"):
            return self.database[len("sqlite:///") :]
        return None


def config_warnings(config: Config) -> list[str]:
    """Settings that weaken a safeguard on purpose: said once at start-up
    (a warning log line) and by ``check-config``, so nobody runs with one
    without being told."""
    warnings: list[str] = []
    if config.accept_tokens_without_exp:
        warnings.append(
            "accept_tokens_without_exp is on: JWTs without an `exp` claim are accepted"
            " and never expire (a leaked one works until the signing key changes)"
        )
    if config.unknown_environment:
        warnings.append(
            f"ignoring {', '.join(config.unknown_environment)}: not chatd settings (a typo?"
            " Kubernetes also sets CHATD_PORT, CHATD_SERVICE_* and the like for a Service"
            " named chatd)"
        )
    if config.sqlite_synchronous == "normal" and config.database.startswith("sqlite:"):
        warnings.append(
            "sqlite_synchronous is 'normal': commits are not fsynced, so messages acked in the"
            " last moments before an OS crash or power loss can be lost (a chatd crash loses none)"
        )
    return warnings


def _parse(setting: Setting, raw: Any, source: str) -> Any:
    try:
        return setting.parse(raw)
    except (ValueError, TypeError) as e:
        # Control characters from the value are escaped: one line, always.
        why = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(e))
        raise ConfigError(f"invalid {setting.name} ({source}): {why}") from None


def read_config_file(path: str) -> dict[str, Any]:
    """Read a TOML file; every key must be a known setting."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    values: dict[str, Any] = {}
    for key, raw in data.items():
        name = key.replace("-", "_")
        if name not in SETTINGS_BY_NAME:
            raise ConfigError(f"unknown key {key!r} in config file {path}")
        values[name] = _parse(SETTINGS_BY_NAME[name], raw, f"config file {path}")
    return values


def read_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """Read the ``CHATD_*`` variables that name a setting (a bad value is
    an error); other ``CHATD_`` names are left to ``unknown_environment``."""
    known = {s.env: s for s in SETTINGS}
    values: dict[str, Any] = {}
    for key, raw in environ.items():
        setting = known.get(key)
        if setting is not None:
            values[setting.name] = _parse(setting, raw, f"environment {key}")
    return values


def unknown_environment(environ: Mapping[str, str]) -> tuple[str, ...]:
    """``CHATD_*`` names that are no setting: warned about, not refused.
    Kubernetes gives every pod of a Service named ``chatd`` variables such
    as ``CHATD_PORT=tcp://…`` and ``CHATD_SERVICE_HOST``, so refusing them
    would stop chatd there; a typo is still named at start-up and by
    ``check-config`` (``config_warnings``)."""
    known = {s.env for s in SETTINGS} | {ENV_PREFIX + "CONFIG"}
    return tuple(sorted(k for k in environ if k.startswith(ENV_PREFIX) and k not in known))


def load_config(
    cli: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
    create_secret: bool = True,
) -> Config:
    """Merge the sources (command line > environment > file > defaults) and
    validate the result as a whole.  ``create_secret=False`` validates
    without reading or generating the embedded default's secret."""
    environ = os.environ if environ is None else environ
    cli = dict(cli or {})
    config_file = (
        cli.pop("config", None) or config_file or environ.get(ENV_PREFIX + "CONFIG") or None
    )
    values: dict[str, Any] = {}
    if config_file:
        values.update(read_config_file(config_file))
    values.update(read_environment(environ))
    values["unknown_environment"] = unknown_environment(environ)
    for name, raw in cli.items():
        if raw is None:
            continue
        if name not in SETTINGS_BY_NAME:
            raise ConfigError(f"unknown option --{name.replace('_', '-')}")
        values[name] = _parse(SETTINGS_BY_NAME[name], raw, f"--{name.replace('_', '-')}")
    return _finish(values, create_secret)


def _finish(values: dict[str, Any], create_secret: bool) -> Config:
    data_dir = values.get("data_dir") or default_data_dir()
    values["data_dir"] = data_dir
    values["runtime_dir"] = values.get("runtime_dir") or default_runtime_dir(data_dir)
    if not values.get("database"):
        values["database"] = "sqlite:///" + os.path.join(data_dir, "chatd.sqlite3")
    listen = values.get("listen", SETTINGS_BY_NAME["listen"].default)
    _check_endpoint(listen)
    algorithms = values.get("jwt_algorithms", ("HS256",))
    uses_hmac = any(a.startswith("HS") for a in algorithms)
    uses_keys = any(not a.startswith("HS") for a in algorithms)
    if uses_keys and not values.get("jwt_public_key"):
        raise ConfigError("invalid jwt_algorithms: asymmetric algorithms need jwt_public_key")
    generated = False
    if uses_hmac and not values.get("jwt_secret"):
        loopback = is_loopback_endpoint(listen)
        # With only a NextAuth secret, HS* JWTs are refused ("no key"): fine
        # on any address, and nothing is generated that could leak.
        if not loopback and not values.get("nextauth_secret"):
            raise ConfigError(
                f"invalid listen ({listen}): refusing a non-loopback address without a configured jwt_secret"
            )
        if create_secret and loopback:
            values["jwt_secret"] = load_or_create_secret(data_dir)
            generated = True
    if values.get("socketio_test_suites") and not is_loopback_endpoint(listen):
        # Unauthenticated echo servers: never where anyone else can reach them.
        raise ConfigError(
            f"invalid socketio_test_suites: refusing it with a non-loopback listen ({listen})"
        )
    if values.get("websocket_echo") and not is_loopback_endpoint(listen):
        raise ConfigError(
            f"invalid websocket_echo: refusing it with a non-loopback listen ({listen})"
        )
    if bool(values.get("tls_cert")) != bool(values.get("tls_key")):
        raise ConfigError("invalid tls_cert/tls_key: give both, or neither")
    if values.get("tls_cert") and listen.startswith("ssl:"):
        raise ConfigError("invalid tls_cert: listen is ssl: already (use one or the other)")
    if values.get("tls_cert"):
        _check_tls(values["tls_cert"], values["tls_key"])
    for name in SECRETS:
        if values.get(name) and len(values[name]) < MIN_SECRET_LENGTH:
            raise ConfigError(f"invalid {name}: use at least {MIN_SECRET_LENGTH} characters")
    cfg = Config(
        **{k: v for k, v in values.items() if k in {f.name for f in fields(Config)}},
        secret_generated=generated,
    )
    if cfg.ping_interval and cfg.ping_timeout >= cfg.ping_interval:
        raise ConfigError("invalid ping_timeout: must be shorter than ping_interval")
    return cfg


def _check_tls(cert_file: str, key_file: str) -> None:
    from chatd.tls import server_options

    try:
        server_options(cert_file, key_file)
    except Exception as e:
        raise ConfigError(
            f"invalid tls_cert/tls_key: {' '.join(str(e).split()) or type(e).__name__}"
        ) from None


_LISTEN_EXAMPLE = "e.g. tcp:8080:interface=127.0.0.1"


def _check_endpoint(description: str) -> None:
    """Refuse a ``listen`` that start-up would refuse, with one line.

    The values Twisted's endpoint parsers turn with ``int()`` are checked
    first, so the operator reads chatd's words rather than ``invalid literal
    for int()``; then the description goes through ``serverFromString``,
    the call start-up makes (chatd.service), on a MemoryReactor so that
    nothing is bound.  check-config and twistd therefore agree on every
    description, systemd: aside: its sockets exist only under systemd, so
    only its form is checked here."""
    if not description.isprintable():
        # Said without echoing it raw, so the error stays one line.
        raise ConfigError(f"invalid listen {_shown(description)}: contains a control character")
    problem = _endpoint_problem(description)
    if problem is None and not description.startswith("systemd:"):
        problem = _endpoint_parse_problem(description)
    if problem is not None:
        raise ConfigError(f"invalid listen ({description}): {problem}")


def _endpoint_problem(description: str) -> str | None:
    try:
        args, kwargs = _parse_endpoint(description)
    except Exception:
        return f"not an endpoint description ({_LISTEN_EXAMPLE})"
    kind = args[0] if args else ""
    if kind not in ("tcp", "tcp6", "ssl", "unix", "systemd"):
        return "expected tcp:, tcp6:, ssl:, unix: or systemd:"
    if kind in ("tcp", "tcp6", "ssl"):
        port = args[1] if len(args) > 1 else kwargs.get("port")
        if port is None:
            return f"no port ({_LISTEN_EXAMPLE})"
        if not port.isdigit() or int(port) > 65535:
            return f"port {port!r} is not a number from 0 to 65535 ({_LISTEN_EXAMPLE})"
    backlog = kwargs.get("backlog")
    if backlog is not None and not backlog.isdigit():
        return f"backlog {backlog!r} is not a whole number"
    if kind == "unix":
        mode = kwargs.get("mode", "666")
        if not mode or any(c not in "01234567" for c in mode):
            return f"mode {mode!r} is not an octal file mode such as 660"
        if kwargs.get("lockfile", "1") not in ("0", "1"):
            return f"lockfile {kwargs['lockfile']!r} is not 0 or 1"
    if kind == "systemd":
        return _systemd_problem(args, kwargs)
    return None


def _systemd_problem(args: list[str], kwargs: dict[str, str]) -> str | None:
    import socket

    domain = kwargs.get("domain", args[1] if len(args) > 1 else "")
    if not domain or not hasattr(socket, "AF_" + domain):
        return f"domain {domain!r} is not an address family such as INET, INET6 or UNIX"
    index = kwargs.get("index", args[2] if len(args) > 2 else None)
    name = kwargs.get("name", args[3] if len(args) > 3 else None)
    if (index is None) == (name is None):
        return "give exactly one of index= or name= (e.g. systemd:domain=INET:index=0)"
    if index is not None and not index.isdigit():
        return f"index {index!r} is not a whole number"
    return None


def _endpoint_parse_problem(description: str) -> str | None:
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor

    try:
        serverFromString(MemoryReactor(), description)
    except OSError as e:
        return f"cannot read {e.filename or 'a file it names'}: {e.strerror or e}"
    except TypeError as e:
        words = str(e)
        if "unexpected keyword argument" in words:
            return f"unknown parameter {words.rsplit(' ', 1)[-1]} ({_LISTEN_EXAMPLE})"
        if "positional argument" in words:
            return f"too many ':'-separated values ({_LISTEN_EXAMPLE})"
        return " ".join(words.split()) or type(e).__name__
    except Exception as e:
        return " ".join(str(e).split()) or type(e).__name__
    return None


def is_loopback_endpoint(description: str) -> bool:
    """True when a listen description only accepts local connections.

    The description is read with Twisted's own parser (escaped colons, the
    last of repeated keys winning, a positional interface for tcp), so this
    check and what Twisted binds cannot disagree.  A missing interface means
    all interfaces, so it is not loopback; unix sockets are local by nature;
    systemd sockets are whatever the unit says, so they count as
    non-loopback and need a real secret."""
    try:
        args, kwargs = _parse_endpoint(description)
    except Exception:
        return False
    kind = args[0] if args else ""
    if kind == "unix":
        return True
    if kind not in ("tcp", "tcp6", "ssl"):
        return False
    interface = kwargs.get("interface")
    if interface is None and kind in ("tcp", "tcp6") and len(args) > 2:
        interface = args[2]
    if not interface:
        return False
    if interface == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False


def make_private_directory(path: str) -> None:
    """Create ``path`` (and what is missing above it) mode 0700 whatever
    the umask: the data directory holds the secret and every message.  An
    existing directory is left as it is (see chatd.storage.engines)."""
    if os.path.isdir(path):
        return
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)


def generated_secret_path(config: Config) -> Path | None:
    """Where the daemon keeps the secret it generates for ``config``, or
    None when it would not use one (a configured jwt_secret, no HS*
    algorithm, or a listen that is not loopback); ``_finish`` applies the
    same rule, so the token command signs with what the daemon checks."""
    hmac = any(a.startswith("HS") for a in config.jwt_algorithms)
    if config.jwt_secret or not hmac or not is_loopback_endpoint(config.listen):
        return None
    return Path(config.data_dir) / SECRET_FILE_NAME


def read_generated_secret(path: Path) -> str | None:
    """The generated secret at ``path``, or None while the daemon has not
    written one; never creates it (see ``load_or_create_secret``)."""
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(f"cannot read the generated secret {path}: {e.strerror}") from None


def load_or_create_secret(data_dir: str) -> str:
    """The embedded default's HS256 secret, kept in the data directory so
    tokens minted by ``python -m chatd token`` survive a restart."""
    path = Path(data_dir) / SECRET_FILE_NAME
    try:
        secret = path.read_text().strip()
    except FileNotFoundError:
        secret = ""
    except OSError as e:
        raise ConfigError(
            f"invalid data_dir ({data_dir}): cannot read {path}: {e.strerror}"
        ) from None
    if secret:
        return secret
    # Missing: create it exclusively, so two processes starting together
    # agree on one secret.  Empty (an interrupted first start): replace it.
    secret = secrets.token_urlsafe(48)
    try:
        make_private_directory(str(path.parent))
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if path.exists() else os.O_EXCL)
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        return load_or_create_secret(data_dir)
    except OSError as e:
        raise ConfigError(
            f"invalid data_dir ({data_dir}): cannot create {path}: {e.strerror}"
        ) from None
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return secret
