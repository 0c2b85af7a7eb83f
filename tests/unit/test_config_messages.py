"""Every refused setting is one line in chatd's words (issue 16, point 9):
check-config parses ``listen`` as start-up does, and no parser lets
Python's own error text (``invalid literal for int()``, ``could not
convert string to float``, ``Invalid IPv6 URL``) reach the operator."""

from __future__ import annotations

import datetime

import pytest
from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactor

from chatd.__main__ import main
from chatd.config import SETTINGS, ConfigError, load_config

SECRET = "config-messages-secret-0123456789"
PYTHON_WORDS = (
    "invalid literal",
    "could not convert",
    "argument must be",
    "object has no attribute",
    "not supported between",
    "unexpected keyword",
    "positional argument",
    "Invalid IPv6 URL",
    "could not be cast",
    "Errno",
)


def check_config(tmp_path, capsys, text: str) -> tuple[int, list[str]]:
    """``python -m chatd check-config FILE``: its status and stderr lines."""
    path = tmp_path / "chatd.toml"
    path.write_text(text)
    status = main(["check-config", str(path)], environ={})
    return status, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.mark.parametrize("secret", [f'jwt_secret = "{SECRET}"\n', ""])
def test_check_config_refuses_a_listen_port_that_is_not_a_number(tmp_path, capsys, secret):
    status, lines = check_config(tmp_path, capsys, f'{secret}listen = "tcp:abc"\n')
    assert status == 1 and len(lines) == 1, lines
    assert lines[0].startswith("chatd: invalid listen (tcp:abc): port 'abc' is not a number")
    assert "non-loopback" not in lines[0] and "invalid literal" not in lines[0]


def test_check_config_says_a_rate_limit_is_not_a_number(tmp_path, capsys):
    status, lines = check_config(
        tmp_path, capsys, f'jwt_secret = "{SECRET}"\nrate_limit = "fast"\n'
    )
    assert status == 1 and len(lines) == 1, lines
    assert "invalid rate_limit (config file" in lines[0]
    assert lines[0].endswith(': "fast" is not a number'), lines[0]


def test_check_config_still_accepts_a_good_file(tmp_path, capsys):
    text = f'jwt_secret = "{SECRET}"\nlisten = "tcp:0:interface=127.0.0.1"\nrate_limit = 50\n'
    assert check_config(tmp_path, capsys, text) == (0, [])


GOOD_LISTEN = [
    "tcp:8080:interface=127.0.0.1",
    "tcp:0",
    "tcp:8080:127.0.0.1",
    "tcp:8080:interface=127.0.0.1:backlog=10",
    "tcp6:8080:interface=\\:\\:1",
    "unix:/tmp/chatd.sock:mode=660",
    "unix:/tmp/chatd.sock:lockfile=0",
]
BAD_LISTEN = {
    "tcp:abc": "port 'abc' is not a number",
    "tcp:99999": "port '99999' is not a number from 0 to 65535",
    "tcp": "no port",
    "tcp:8080:backlog=many": "backlog 'many' is not a whole number",
    "tcp:8080:interface=127.0.0.1:colour=blue": "unknown parameter 'colour'",
    "tcp:8080:127.0.0.1:50:9": "too many ':'-separated values",
    "ssl:8443:privateKey=/nonexistent/key.pem": "cannot read /nonexistent/key.pem",
    "unix:/tmp/chatd.sock:mode=rw": "mode 'rw' is not an octal file mode",
    "unix:/tmp/chatd.sock:lockfile=yes": "lockfile 'yes' is not 0 or 1",
    "systemd:domain=NOPE:index=0": "domain 'NOPE' is not an address family",
    "systemd:domain=INET": "give exactly one of index= or name=",
    "systemd:domain=INET:index=first": "index 'first' is not a whole number",
    "http:8080": "expected tcp:, tcp6:, ssl:, unix: or systemd:",
}


@pytest.mark.parametrize("listen", GOOD_LISTEN)
def test_a_listen_start_up_accepts_passes(tmp_path, listen):
    serverFromString(MemoryReactor(), listen)  # what chatd.service calls at start-up
    cfg = load_config(
        {"listen": listen, "jwt_secret": SECRET, "data_dir": str(tmp_path)},
        environ={},
        create_secret=False,
    )
    assert cfg.listen == listen


@pytest.mark.parametrize(("listen", "words"), BAD_LISTEN.items())
@pytest.mark.parametrize("secret", [SECRET, None])
def test_a_listen_start_up_refuses_is_one_line_in_chatds_words(tmp_path, listen, words, secret):
    # systemd: needs systemd's sockets to parse at all; port 99999 parses
    # and fails at bind (start-up's "cannot listen on"), so later.
    if not listen.startswith("systemd:") and listen != "tcp:99999":
        with pytest.raises(Exception):  # noqa: B017 - any refusal: start-up's own call
            serverFromString(MemoryReactor(), listen)
    with pytest.raises(ConfigError) as info:
        load_config(
            {"listen": listen, "jwt_secret": secret, "data_dir": str(tmp_path)},
            environ={},
            create_secret=False,
        )
    message = str(info.value)
    assert message.startswith(f"invalid listen ({listen}): ") and words in message, message
    assert "non-loopback" not in message
    assert not any(w in message for w in PYTHON_WORDS), message


ODD_VALUES = [
    "fast",
    "",
    "[",
    "1.5",
    "-1",
    "nan",
    "inf",
    "http://[::1",
    "redis://host:port/0",
    "line\nbreak",
    "x" * 400,
    [1],
    {"a": 1},
    True,
    -1,
    1.5,
    datetime.date(2020, 1, 1),
]


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_no_setting_leaks_python_error_text(tmp_path, setting):
    """Each setting, fed values from TOML and the environment that it may
    refuse: a refusal is one ConfigError line naming the setting, never an
    uncaught exception or Python's own words."""
    for value in ODD_VALUES:
        try:
            load_config(
                {setting.name: value, "jwt_secret": SECRET, "data_dir": str(tmp_path / "d")},
                environ={},
                create_secret=False,
            )
        except ConfigError as e:
            message = str(e)
            assert "\n" not in message and setting.name in message, message
            assert not any(w in message for w in PYTHON_WORDS), (value, message)


@pytest.mark.parametrize(
    ("setting", "value", "words"),
    [
        ("rate_burst", "lots", '"lots" is not a number'),
        ("rate_burst", "1.5", '"1.5" is not a whole number'),
        ("rate_burst", 0, "0 is not a positive whole number"),
        ("auth_timeout", [10], "[10] is not a number"),
        ("presence_grace", "-1", '"-1" is not a number >= 0'),
        ("ping_interval", "nan", '"nan" is not a finite number'),
        ("metrics_require_auth", 1, "1 is not true or false"),
        ("redis", "redis://h:abc/0", "not a valid URL"),
        ("database", "postgresql://u:hunter2@h:abc/db", "not a valid URL"),
    ],
)
def test_number_and_url_errors_name_the_value(tmp_path, setting, value, words):
    with pytest.raises(ConfigError) as info:
        load_config(
            {setting: value, "jwt_secret": SECRET, "data_dir": str(tmp_path)},
            environ={},
            create_secret=False,
        )
    assert f"): {words}" in str(info.value), str(info.value)
    assert "hunter2" not in str(info.value)


def test_whole_numbers_from_toml_or_text_still_work(tmp_path):
    cfg = load_config(
        {
            "rate_burst": "1e3",
            "max_connections": 20.0,
            "rate_limit": " 7.5",
            "jwt_secret": SECRET,
            "data_dir": str(tmp_path),
        },
        environ={},
        create_secret=False,
    )
    assert (cfg.rate_burst, cfg.max_connections, cfg.rate_limit) == (1000, 20, 7.5)
