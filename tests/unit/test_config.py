"""Configuration loading and validation (chatd/config.py)."""

from __future__ import annotations

import os
import stat

import pytest

from chatd.config import (
    SECRET_FILE_NAME,
    SETTINGS,
    Config,
    ConfigError,
    config_warnings,
    is_loopback_endpoint,
    load_config,
    load_or_create_secret,
)

SECRET = "config-test-secret-0123456789"


@pytest.fixture
def data_dir(tmp_path):
    return str(tmp_path / "data")


def load(data_dir, cli=None, environ=None, config_file=None, create_secret=True) -> Config:
    values = {"data_dir": data_dir, "jwt_secret": SECRET}
    values.update(cli or {})
    return load_config(
        values, environ=environ or {}, config_file=config_file, create_secret=create_secret
    )


def refused(fragment: str, *args, **kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(*args, **kwargs)
    message = str(info.value)
    assert fragment in message, message
    assert "\n" not in message
    return info.value


def toml(tmp_path, text: str, name="chatd.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# -- defaults and precedence ------------------------------------------------------------


def test_defaults(data_dir):
    cfg = load(data_dir)
    assert cfg.listen == "tcp:8080:interface=127.0.0.1"
    assert cfg.data_dir == data_dir
    assert cfg.database == "sqlite:///" + os.path.join(data_dir, "chatd.sqlite3")
    assert cfg.sqlite_path == os.path.join(data_dir, "chatd.sqlite3")
    assert cfg.jwt_algorithms == ("HS256",)
    assert cfg.jwt_secret == SECRET and cfg.secret_generated is False
    assert (
        cfg.redis is None
        and cfg.jwt_issuer is None
        and cfg.jwt_audience is None
        and cfg.api_key is None
    )
    assert (
        cfg.auth_timeout,
        cfg.max_message_size,
        cfg.max_content_length,
        cfg.max_send_buffer,
    ) == (
        10.0,
        65536,
        4000,
        1048576,
    )
    assert (cfg.ping_interval, cfg.ping_timeout) == (30.0, 15.0)
    assert (cfg.open_handshake_timeout, cfg.close_handshake_timeout) == (10.0, 3.0)
    assert (cfg.rate_limit, cfg.rate_burst, cfg.shutdown_timeout) == (200.0, 400, 10.0)


def test_settings_defaults_match_config_defaults():
    defaults = Config()
    for setting in SETTINGS:
        if setting.default is not None:
            assert getattr(defaults, setting.name) == setting.default, setting.name
        assert setting.env == "CHATD_" + setting.name.upper()
        assert setting.option == setting.name.replace("_", "-")


def test_precedence_cli_env_file_defaults(tmp_path, data_dir):
    path = toml(tmp_path, "rate_limit = 1\nrate_burst = 11\nauth_timeout = 7\n")
    env = {"CHATD_RATE_LIMIT": "2", "CHATD_RATE_BURST": "22"}
    cfg = load(data_dir, {"rate_limit": 3}, env, path)
    assert cfg.rate_limit == 3.0  # command line
    assert cfg.rate_burst == 22  # environment over file
    assert cfg.auth_timeout == 7.0  # file over default
    assert cfg.shutdown_timeout == 10.0  # default
    assert load(data_dir, {}, env, path).rate_limit == 2.0
    assert load(data_dir, {}, {}, path).rate_limit == 1.0
    assert load(data_dir, {}, {}, None).rate_limit == 200.0


def test_cli_none_values_are_ignored(data_dir):
    cfg = load(data_dir, {"rate_limit": None, "listen": None}, {"CHATD_RATE_LIMIT": "5"})
    assert cfg.rate_limit == 5.0 and cfg.listen == "tcp:8080:interface=127.0.0.1"


def test_config_file_from_cli_env_or_argument(tmp_path, data_dir):
    a = toml(tmp_path, "rate_burst = 1\n", "a.toml")
    b = toml(tmp_path, "rate_burst = 2\n", "b.toml")
    c = toml(tmp_path, "rate_burst = 3\n", "c.toml")
    assert load(data_dir, {"config": a}, {"CHATD_CONFIG": b}, c).rate_burst == 1
    assert load(data_dir, {}, {"CHATD_CONFIG": b}, c).rate_burst == 3
    assert load(data_dir, {}, {"CHATD_CONFIG": b}).rate_burst == 2


def test_file_values_and_dashed_keys(tmp_path, data_dir):
    path = toml(
        tmp_path,
        'listen = "tcp:9000:interface=127.0.0.1"\n'
        "max-message-size = 1024\n"
        'jwt_algorithms = ["HS256", "HS512"]\n'
        'jwt_issuer = "  iss  "\n'
        'api_key = "   "\n'
        "ping_interval = 0\n"
        'redis = "redis://127.0.0.1:6379/0"\n'
        'database = "postgresql://u@h:5432/db"\n',
    )
    cfg = load(data_dir, {}, {}, path)
    assert cfg.listen == "tcp:9000:interface=127.0.0.1"
    assert cfg.max_message_size == 1024
    assert cfg.jwt_algorithms == ("HS256", "HS512")
    assert cfg.jwt_issuer == "iss" and cfg.api_key is None
    assert cfg.ping_interval == 0.0
    assert cfg.redis == "redis://127.0.0.1:6379/0"
    assert cfg.database == "postgresql://u@h:5432/db" and cfg.sqlite_path is None


def test_environment_strings_are_parsed(data_dir):
    env = {
        "CHATD_MAX_CONTENT_LENGTH": "10",
        "CHATD_PING_INTERVAL": "2.5",
        "CHATD_PING_TIMEOUT": "1",
        "CHATD_JWT_ALGORITHMS": " HS256 , HS384 ,",
        "CHATD_DATABASE": "sqlite:////tmp/x.db",
    }
    cfg = load(data_dir, {}, env)
    assert cfg.max_content_length == 10 and cfg.ping_interval == 2.5 and cfg.ping_timeout == 1.0
    assert cfg.jwt_algorithms == ("HS256", "HS384")
    assert cfg.sqlite_path == "/tmp/x.db"


def test_non_chatd_environment_is_ignored(data_dir):
    assert load(
        data_dir, {}, {"HOME": "/x", "CHAT_LISTEN": "nope", "chatd_listen": "x"}
    ).listen.startswith("tcp:")


# -- every parser's rejection names the setting ---------------------------------------------------


@pytest.mark.parametrize(
    "name, value",
    [
        ("listen", 5),
        ("listen", "http://0.0.0.0:80"),
        ("listen", "udp:53"),
        ("data_dir", 5),
        ("database", "mysql://h/db"),
        ("database", "sqlite:///"),
        ("database", "sqlite://relative.db"),
        ("database", 5),
        ("redis", "http://localhost:6379"),
        ("redis", 6379),
        ("jwt_secret", 12345678901234567890),
        ("jwt_secret", "short"),
        ("jwt_public_key", "/nonexistent/key.pem"),
        ("jwt_algorithms", ""),
        ("jwt_algorithms", " , "),
        ("jwt_algorithms", "none"),
        ("jwt_algorithms", "HS256,None"),
        ("jwt_algorithms", "HS1024"),
        ("jwt_algorithms", "hs256"),
        ("jwt_algorithms", 5),
        ("jwt_algorithms", []),
        ("jwt_issuer", 5),
        ("jwt_audience", ["a"]),
        ("api_key", 5),
        ("auth_timeout", 0),
        ("auth_timeout", -1),
        ("auth_timeout", "abc"),
        ("auth_timeout", True),
        ("auth_timeout", "nan"),
        ("auth_timeout", "inf"),
        ("auth_timeout", float("inf")),
        ("max_message_size", 0),
        ("max_message_size", -5),
        ("max_message_size", 1.5),
        ("max_message_size", "1.5"),
        ("max_message_size", "big"),
        ("max_message_size", True),
        ("max_content_length", 0),
        ("max_send_buffer", "0"),
        ("ping_interval", -1),
        ("ping_interval", "nan"),
        ("ping_interval", "inf"),
        ("ping_interval", False),
        ("ping_timeout", 0),
        ("open_handshake_timeout", 0),
        ("close_handshake_timeout", -0.5),
        ("rate_limit", 0),
        ("rate_burst", 0),
        ("rate_burst", 2.5),
        ("shutdown_timeout", "soon"),
    ],
)
def test_parser_rejections_from_cli(data_dir, name, value):
    error = refused(f"invalid {name}", data_dir, {name: value})
    if name not in ("listen", "jwt_secret"):
        assert f"--{name.replace('_', '-')}" in str(error)


@pytest.mark.parametrize(
    "name, raw",
    [
        ("auth_timeout", "-3"),
        ("max_message_size", "x"),
        ("jwt_algorithms", "none"),
        ("database", "oracle://x"),
        ("redis", "tcp://x"),
        ("ping_interval", "-1"),
    ],
)
def test_parser_rejections_from_environment(data_dir, name, raw):
    env_name = "CHATD_" + name.upper()
    error = refused(f"invalid {name}", data_dir, {}, {env_name: raw})
    assert env_name in str(error)


@pytest.mark.parametrize(
    "line, name",
    [
        ("max_message_size = -1", "max_message_size"),
        ("max_message_size = 2.5", "max_message_size"),
        ("rate_limit = true", "rate_limit"),
        ('listen = ["tcp:1"]', "listen"),
        ("jwt_algorithms = 256", "jwt_algorithms"),
        ('jwt_algorithms = ["HS256", "none"]', "jwt_algorithms"),
        ('database = "ftp://x"', "database"),
        ("ping-timeout = 0", "ping_timeout"),
    ],
)
def test_parser_rejections_from_file(tmp_path, data_dir, line, name):
    path = toml(tmp_path, line + "\n")
    error = refused(f"invalid {name}", data_dir, {}, {}, path)
    assert path in str(error)


def test_integral_float_is_an_integer(data_dir):
    assert load(data_dir, {"max_message_size": 2048.0}).max_message_size == 2048
    assert load(data_dir, {"max_message_size": "2048"}).max_message_size == 2048


def test_unknown_toml_key(tmp_path, data_dir):
    path = toml(tmp_path, 'listne = "tcp:1"\n')
    error = refused("unknown key 'listne'", data_dir, {}, {}, path)
    assert path in str(error)


def test_unknown_toml_table(tmp_path, data_dir):
    refused(
        "unknown key 'server'", data_dir, {}, {}, toml(tmp_path, '[server]\nlisten = "tcp:1"\n')
    )


def test_unknown_environment_variable_is_a_warning_not_a_refusal(data_dir):
    # What Kubernetes injects for a Service named chatd, and a typo.
    environ = {
        "CHATD_PORT": "tcp://10.0.0.7:8080",
        "CHATD_SERVICE_HOST": "10.0.0.7",
        "CHATD_LISTN": "tcp:1",
    }
    cfg = load(data_dir, environ=environ)
    assert cfg.listen == load(data_dir).listen
    assert cfg.unknown_environment == ("CHATD_LISTN", "CHATD_PORT", "CHATD_SERVICE_HOST")
    (warning,) = config_warnings(cfg)
    assert "ignoring CHATD_LISTN, CHATD_PORT, CHATD_SERVICE_HOST" in warning
    assert "\n" not in warning
    assert config_warnings(load(data_dir, environ={"CHATD_CONFIG": ""})) == []


def test_known_environment_variable_with_a_bad_value_is_still_refused(data_dir):
    refused(
        "invalid max_message_size (environment CHATD_MAX_MESSAGE_SIZE)",
        data_dir,
        {},
        {"CHATD_MAX_MESSAGE_SIZE": "big", "CHATD_SERVICE_HOST": "10.0.0.7"},
    )


def test_unknown_cli_option(data_dir):
    refused("unknown option --frobnicate", data_dir, {"frobnicate": 1})


def test_invalid_toml(tmp_path, data_dir):
    path = toml(tmp_path, "listen = \n[[[")
    error = refused("not valid TOML", data_dir, {}, {}, path)
    assert path in str(error)


def test_missing_config_file(tmp_path, data_dir):
    refused("config file not found", data_dir, {}, {}, str(tmp_path / "missing.toml"))


def test_config_file_is_a_directory(tmp_path, data_dir):
    refused("cannot read config file", data_dir, {}, {}, str(tmp_path))


# -- generated secret -------------------------------------------------------------------------------


def test_generated_secret_is_persisted_0600_and_reused(tmp_path):
    data_dir = str(tmp_path / "state" / "chatd")
    first = load_config({"data_dir": data_dir}, environ={})
    path = os.path.join(data_dir, SECRET_FILE_NAME)
    assert first.secret_generated is True
    assert first.jwt_secret and len(first.jwt_secret) >= 16
    assert os.path.isfile(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(path) as f:
        assert f.read().strip() == first.jwt_secret
    second = load_config({"data_dir": data_dir}, environ={})
    assert second.jwt_secret == first.jwt_secret and second.secret_generated is True


def test_generated_secrets_differ_between_data_dirs(tmp_path):
    a = load_config({"data_dir": str(tmp_path / "a")}, environ={})
    b = load_config({"data_dir": str(tmp_path / "b")}, environ={})
    assert a.jwt_secret != b.jwt_secret


def test_configured_secret_creates_no_file(data_dir):
    cfg = load(data_dir)
    assert cfg.secret_generated is False
    assert not os.path.exists(os.path.join(data_dir, SECRET_FILE_NAME))


def test_existing_secret_file_is_used(tmp_path):
    data_dir = tmp_path / "d"
    data_dir.mkdir()
    (data_dir / SECRET_FILE_NAME).write_text("  pre-existing-secret-value-123  \n")
    assert (
        load_config({"data_dir": str(data_dir)}, environ={}).jwt_secret
        == "pre-existing-secret-value-123"
    )


def test_empty_secret_file_is_replaced_by_a_real_secret(tmp_path):
    # A zero-length jwt-secret (e.g. left by a crash or a full disk) must not
    # turn into an empty HMAC secret with which no token ever verifies.
    data_dir = tmp_path / "d"
    data_dir.mkdir()
    (data_dir / SECRET_FILE_NAME).write_text("")
    cfg = load_config({"data_dir": str(data_dir)}, environ={})
    assert cfg.jwt_secret and len(cfg.jwt_secret) >= 16


def test_load_or_create_secret_directly(tmp_path):
    secret = load_or_create_secret(str(tmp_path / "x"))
    assert load_or_create_secret(str(tmp_path / "x")) == secret


def test_secret_in_unusable_data_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="invalid data_dir"):
        load_config({"data_dir": str(blocker / "sub")}, environ={})


def test_create_secret_false_creates_nothing(tmp_path):
    data_dir = str(tmp_path / "d")
    cfg = load_config({"data_dir": data_dir}, environ={}, create_secret=False)
    assert cfg.jwt_secret is None and cfg.secret_generated is False
    assert not os.path.exists(os.path.join(data_dir, SECRET_FILE_NAME))
    assert not os.path.exists(data_dir)


def test_create_secret_false_still_validates(tmp_path):
    with pytest.raises(ConfigError, match="invalid listen"):
        load_config(
            {"data_dir": str(tmp_path), "listen": "tcp:8080"}, environ={}, create_secret=False
        )


# -- listen -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "listen",
    [
        "tcp:8080",
        "tcp:8080:interface=0.0.0.0",
        "tcp6:8080",
        "systemd:domain=INET:index=0",
        "ssl:8443:privateKey=KEY:certKey=CERT",
        "tcp:8080:interface=10.1.2.3",
    ],
)
def test_non_loopback_listen_refused_without_secret(tmp_path, listen):
    if "KEY" in listen:  # ssl: reads its files as it parses, as start-up does
        from tests.certs import make_certificates

        files = make_certificates(tmp_path / "tls", ["localhost"])
        listen = listen.replace("KEY", str(files["key"])).replace("CERT", str(files["cert"]))
    with pytest.raises(ConfigError) as info:
        load_config({"data_dir": str(tmp_path), "listen": listen}, environ={})
    assert "invalid listen" in str(info.value) and "jwt_secret" in str(info.value)
    assert not os.path.exists(tmp_path / SECRET_FILE_NAME)


@pytest.mark.parametrize(
    "listen", ["tcp:8080", "tcp:8080:interface=0.0.0.0", "systemd:domain=INET:index=0"]
)
def test_non_loopback_listen_fine_with_secret(data_dir, listen):
    assert load(data_dir, {"listen": listen}).listen == listen


def test_non_loopback_listen_fine_with_asymmetric_only(tmp_path):
    key = tmp_path / "key.pem"
    key.write_text("-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n")
    cfg = load_config(
        {
            "data_dir": str(tmp_path),
            "listen": "tcp:8080",
            "jwt_algorithms": "RS256",
            "jwt_public_key": str(key),
        },
        environ={},
    )
    assert (
        cfg.jwt_secret is None and cfg.secret_generated is False and cfg.jwt_public_key == str(key)
    )


@pytest.mark.parametrize(
    "description, expected",
    [
        ("tcp:8080:interface=127.0.0.1", True),
        ("tcp:port=8080:interface=127.0.0.1", True),
        ("tcp:interface=127.0.0.1:port=8080", True),
        ("tcp:8080:backlog=50:interface=127.0.0.1", True),
        ("tcp:8080:interface=127.1.2.3", True),
        ("tcp:8080:interface=localhost", True),
        ("tcp:8080", False),
        ("tcp:port=8080", False),
        ("tcp:8080:interface=0.0.0.0", False),
        ("tcp:8080:interface=192.168.1.10", False),
        ("tcp:8080:interface=example.com", False),
        ("tcp6:8080", False),
        (r"tcp6:8080:interface=\:\:1", True),
        (r"tcp6:port=8080:interface=\:\:1", True),
        (r"tcp6:8080:interface=\:\:", False),
        (r"tcp6:8080:interface=2001\:db8\:\:1", False),
        ("ssl:8443:privateKey=key.pem:interface=127.0.0.1", True),
        ("ssl:8443:privateKey=key.pem", False),
        ("ssl:8443:interface=0.0.0.0:privateKey=key.pem", False),
        ("unix:/run/chatd.sock", True),
        ("unix:address=/tmp/chatd.sock:mode=660", True),
        ("systemd:domain=INET:index=0", False),
        ("systemd:domain=UNIX:index=0", False),
        ("udp:53", False),
    ],
)
def test_is_loopback_endpoint(description, expected):
    assert is_loopback_endpoint(description) is expected


def test_ipv6_loopback_listen_without_secret_is_allowed(tmp_path):
    cfg = load_config(
        {"data_dir": str(tmp_path), "listen": r"tcp6:8080:interface=\:\:1"}, environ={}
    )
    assert cfg.secret_generated is True


def test_unix_listen_without_secret_generates_one(tmp_path):
    cfg = load_config(
        {"data_dir": str(tmp_path), "listen": "unix:/tmp/chatd-test.sock"}, environ={}
    )
    assert cfg.secret_generated is True and cfg.jwt_secret


# -- cross-field checks -------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithms", ["RS256", "HS256,ES256", "EdDSA", "PS256"])
def test_asymmetric_algorithms_need_public_key(data_dir, algorithms):
    refused("jwt_public_key", data_dir, {"jwt_algorithms": algorithms})


def test_asymmetric_algorithm_with_public_key(tmp_path, data_dir):
    key = tmp_path / "k.pem"
    key.write_text("pem")
    cfg = load(data_dir, {"jwt_algorithms": "HS256,RS256", "jwt_public_key": str(key)})
    assert cfg.jwt_algorithms == ("HS256", "RS256") and cfg.jwt_secret == SECRET


@pytest.mark.parametrize("interval, timeout", [(10, 10), (10, 15), ("5", "5.5")])
def test_ping_timeout_must_be_shorter_than_interval(data_dir, interval, timeout):
    refused("invalid ping_timeout", data_dir, {"ping_interval": interval, "ping_timeout": timeout})


def test_ping_timeout_with_pings_disabled(data_dir):
    cfg = load(data_dir, {"ping_interval": 0, "ping_timeout": 60})
    assert cfg.ping_interval == 0 and cfg.ping_timeout == 60


def test_ping_timeout_shorter_is_fine(data_dir):
    assert load(data_dir, {"ping_interval": 10, "ping_timeout": 9.5}).ping_timeout == 9.5


def test_secret_length_boundary(data_dir):
    assert load(data_dir, {"jwt_secret": "x" * 16}).jwt_secret == "x" * 16
    refused("at least 16", data_dir, {"jwt_secret": "x" * 15})


def test_blank_secret_counts_as_unset(tmp_path):
    cfg = load_config({"data_dir": str(tmp_path), "jwt_secret": "   "}, environ={})
    assert cfg.secret_generated is True and cfg.jwt_secret.strip()


# -- is_loopback_endpoint agrees with what Twisted actually binds ----------------------------------------


def _bound_interface(description: str) -> str:
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.protocol import Factory
    from twisted.internet.testing import MemoryReactorClock

    reactor = MemoryReactorClock()
    serverFromString(reactor, description).listen(Factory())
    ((_port, _factory, _backlog, interface),) = reactor.tcpServers
    return interface


def _is_loopback_address(interface: str) -> bool:
    import ipaddress

    return interface != "" and ipaddress.ip_address(interface).is_loopback


@pytest.mark.parametrize(
    "description",
    [
        "tcp:8080:interface=127.0.0.1",
        "tcp:8080",
        "tcp:8080:interface=0.0.0.0",
        "tcp:8080:127.0.0.1",  # interface given positionally
        "tcp:8080:interface=127.0.0.1:interface=0.0.0.0",  # the last one wins in Twisted
        "tcp:8080:interface=0.0.0.0:interface=127.0.0.1",
        r"tcp6:8080:interface=\:\:1",
        "tcp6:8080",
    ],
)
def test_is_loopback_endpoint_matches_twisted(description):
    assert is_loopback_endpoint(description) is _is_loopback_address(_bound_interface(description))


def test_duplicate_interface_cannot_bypass_the_secret_guard(tmp_path):
    # Twisted binds 0.0.0.0 here; without a configured secret this must be
    # refused like any other non-loopback listen.
    listen = "tcp:8080:interface=127.0.0.1:interface=0.0.0.0"
    assert _bound_interface(listen) == "0.0.0.0"
    with pytest.raises(ConfigError, match="invalid listen"):
        load_config({"data_dir": str(tmp_path), "listen": listen}, environ={})


# -- accept_tokens_without_exp and the warnings about it ------------------------------------


def test_accept_tokens_without_exp_is_off_by_default_and_set_from_every_source(tmp_path, data_dir):
    assert load(data_dir).accept_tokens_without_exp is False
    assert config_warnings(load(data_dir)) == []
    assert load(data_dir, {"accept_tokens_without_exp": "yes"}).accept_tokens_without_exp
    assert load(
        data_dir, environ={"CHATD_ACCEPT_TOKENS_WITHOUT_EXP": "1"}
    ).accept_tokens_without_exp
    path = toml(tmp_path, "accept_tokens_without_exp = true\n")
    assert load(data_dir, config_file=path).accept_tokens_without_exp
    refused("accept_tokens_without_exp", data_dir, {"accept_tokens_without_exp": "maybe"})


def test_accept_tokens_without_exp_is_warned_about(data_dir):
    warnings = config_warnings(load(data_dir, {"accept_tokens_without_exp": True}))
    assert len(warnings) == 1 and "accept_tokens_without_exp" in warnings[0]
    assert "never expire" in warnings[0] and "\n" not in warnings[0]


def test_check_config_prints_the_warning_and_still_passes(tmp_path, capsys, monkeypatch):
    from chatd.__main__ import main

    for key in [k for k in os.environ if k.startswith("CHATD_")]:
        monkeypatch.delenv(key)
    quiet = toml(tmp_path, f'data_dir = "{tmp_path}"\n', "quiet.toml")
    assert main(["check-config", quiet]) == 0
    out, err = capsys.readouterr()
    assert out == "configuration is valid\n" and err == ""
    loud = toml(
        tmp_path, f'data_dir = "{tmp_path}"\naccept_tokens_without_exp = true\n', "loud.toml"
    )
    assert main(["check-config", loud]) == 0
    out, err = capsys.readouterr()
    assert out == "configuration is valid\n"
    assert (
        err.startswith("chatd: warning: accept_tokens_without_exp is on") and err.count("\n") == 1
    )
