"""The small edges a newcomer meets in the first hour (issue 16, point 10):
a too-short API key is refused, every 404 and 405 the site answers itself
is the HTTP API's JSON error, the log does not say ``as None``, and an
unknown ``CHATD_*`` variable (Kubernetes sets some) is a warning, not a
refusal."""

from __future__ import annotations

import json
import time

import pytest
import pytest_twisted
from twisted.web.client import Agent, readBody
from websockets.sync.client import connect

from chatd.config import ConfigError, load_config
from tests.daemon import Daemon, clean_env, free_port, run_module, run_twistd

API_KEY = "edges-api-key-0123456789"


# -- api_key length --------------------------------------------------------------------


@pytest.mark.parametrize("source", ["cli", "environment", "file"])
def test_a_short_api_key_is_refused_from_every_source(tmp_path, source):
    base = {"data_dir": str(tmp_path), "jwt_secret": "edges-secret-0123456789"}
    cli, environ, config_file = dict(base), {}, None
    if source == "cli":
        cli["api_key"] = "12345"
    elif source == "environment":
        environ["CHATD_API_KEY"] = "12345"
    else:
        config_file = tmp_path / "chatd.toml"
        config_file.write_text('api_key = "12345"\n')
    with pytest.raises(ConfigError) as info:
        load_config(cli, environ=environ, config_file=str(config_file) if config_file else None)
    assert str(info.value) == "invalid api_key: use at least 16 characters"
    sixteen = load_config({**base, "api_key": "k" * 16}, environ={})
    assert sixteen.api_key == "k" * 16


def test_check_config_and_start_up_refuse_a_short_api_key_in_one_line(tmp_path):
    config_file = tmp_path / "chatd.toml"
    config_file.write_text(
        f'data_dir = "{tmp_path / "data"}"\njwt_secret = "edges-secret-0123456789"\n'
        'api_key = "12345"\n'
    )
    checked = run_module(["check-config", str(config_file)], clean_env(), str(tmp_path))
    assert checked.returncode == 1 and checked.stdout == ""
    assert checked.stderr == "chatd: invalid api_key: use at least 16 characters\n"
    started = run_twistd(["--config", str(config_file)], clean_env(), str(tmp_path))
    assert started.returncode != 0
    lines = [line for line in started.stderr.splitlines() if line.strip()]
    assert lines == ["chatd: invalid api_key: use at least 16 characters"], started.stderr


# -- JSON 404 and 405 everywhere ---------------------------------------------------------


async def _request(server, method: str, path: str) -> tuple[int, dict[bytes, list[bytes]], bytes]:
    from twisted.internet import reactor

    response = await Agent(reactor).request(method.encode(), (server.http + path).encode())
    body = await readBody(response)
    return response.code, dict(response.headers.getAllRawHeaders()), body


def _json_error(headers: dict[bytes, list[bytes]], body: bytes) -> dict[str, str]:
    assert headers[b"Content-Type"] == [b"application/json"], headers
    parsed = json.loads(body)
    assert list(parsed) == ["error"] and set(parsed["error"]) == {"code", "message"}
    return parsed["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "path",
    [
        "/nothing-here",
        "/nothing/deeper/still",
        "/console",
        "/console/",
        "/console/no-such-page",
        "/ws/no-such-dialect",
        "//below-the-console",
    ],
)
@pytest_twisted.ensureDeferred
async def test_every_404_outside_the_api_is_the_api_error_in_json(server, path):
    status, headers, body = await _request(server, "GET", path)
    assert status == 404, body
    error = _json_error(headers, body)
    assert error["code"] == "NOT_FOUND" and error["message"]


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "/healthz", {b"GET", b"HEAD"}),
        ("PUT", "/readyz", {b"GET", b"HEAD"}),
        ("DELETE", "/metrics", {b"GET", b"HEAD"}),
        ("POST", "/", {b"GET", b"HEAD"}),
        ("PATCH", "/console/demo-token", {b"GET", b"HEAD"}),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_method_a_resource_lacks_is_a_json_405_with_allow(server, method, path, allow):
    status, headers, body = await _request(server, method, path)
    assert status == 405, body
    error = _json_error(headers, body)
    assert error["code"] == "METHOD_NOT_ALLOWED" and method in error["message"]
    assert set(headers[b"Allow"][0].split(b", ")) == allow


@pytest_twisted.ensureDeferred
async def test_the_console_health_metrics_socketio_and_websocket_still_answer(server_factory):
    server = await server_factory(api_key=API_KEY)
    status, headers, body = await _request(server, "GET", "/")
    assert status == 200 and headers[b"Content-Type"][0].startswith(b"text/html")
    assert b"<html" in body.lower()
    status, headers, body = await _request(server, "HEAD", "/healthz")
    assert status == 200 and body == b""
    status, headers, body = await _request(server, "GET", "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, headers, body = await _request(server, "GET", "/readyz")
    assert status == 200 and json.loads(body)["status"] == "ready"
    status, headers, body = await _request(server, "GET", "/metrics")
    assert status == 200 and b"chatd_connections" in body
    status, headers, body = await _request(server, "GET", "/socket.io/?EIO=4&transport=polling")
    assert status == 200 and body.startswith(b"0{"), body
    status, headers, body = await _request(server, "GET", "/api/no-such-endpoint")
    assert status == 404 and _json_error(headers, body)["code"] == "NOT_FOUND"
    client = await server.connect("alice")
    assert client.user_id == "alice"


# -- the daemon: unknown CHATD_* variables and the open log line ---------------------------


def _wait_for(daemon: Daemon, text: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        output = daemon.output()
        if text in output:
            return output
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never logged:\n{daemon.output()}")


def test_unknown_chatd_variables_are_named_in_a_warning_and_start_up_goes_on(tmp_path):
    port = free_port()
    # What Kubernetes injects into every pod of a Service named chatd, and a typo.
    env = clean_env(
        CHATD_PORT="tcp://10.0.0.7:8080",
        CHATD_PORT_8080_TCP_ADDR="10.0.0.7",
        CHATD_SERVICE_HOST="10.0.0.7",
        CHATD_FOO="1",
    )
    args = ["--data-dir", str(tmp_path / "data"), "--listen", f"tcp:{port}:interface=127.0.0.1"]
    daemon = Daemon(args, env, str(tmp_path))
    try:
        daemon.wait_healthy(port)
        output = _wait_for(daemon, "ignoring CHATD_FOO")
        assert (
            "ignoring CHATD_FOO, CHATD_PORT, CHATD_PORT_8080_TCP_ADDR, CHATD_SERVICE_HOST: "
            "not chatd settings" in output
        )
        # A connection that has not authenticated yet is said so in words.
        with connect(f"ws://127.0.0.1:{port}/ws"):
            output = _wait_for(daemon, "not authenticated yet")
        assert "as None" not in output
        opened = [line for line in output.splitlines() if "opened from" in line]
        assert len(opened) == 1 and opened[0].endswith(", not authenticated yet"), opened
    finally:
        assert daemon.terminate(), daemon.output()


def test_check_config_warns_about_an_unknown_variable_and_passes(tmp_path):
    env = clean_env(CHATD_SERVICE_HOST="10.0.0.7")
    config_file = tmp_path / "chatd.toml"
    config_file.write_text(f'data_dir = "{tmp_path / "data"}"\n')
    checked = run_module(["check-config", str(config_file)], env, str(tmp_path))
    assert checked.returncode == 0 and checked.stdout == "configuration is valid\n"
    assert checked.stderr.startswith("chatd: warning: ignoring CHATD_SERVICE_HOST: not chatd")
    assert checked.stderr.count("\n") == 1


def test_a_known_chatd_variable_with_a_bad_value_still_stops_start_up(tmp_path):
    env = clean_env(CHATD_SERVICE_HOST="10.0.0.7", CHATD_AUTH_TIMEOUT="soon")
    result = run_twistd(["--data-dir", str(tmp_path / "data")], env, str(tmp_path))
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("chatd: invalid auth_timeout (environment CHATD_AUTH_TIMEOUT)")


# -- the systemd units name no documentation a pip install lacks ---------------------------


def test_the_units_point_at_no_documentation_that_is_not_installed():
    """``man:twistd(1)`` and ``file://`` paths are not on a pip-installed
    host (systemd-analyze verify is tests/test_operations.py's)."""
    from tests.test_operations import UNITS

    for unit in UNITS.iterdir():
        targets = [
            line.split("=", 1)[1].split()
            for line in unit.read_text().splitlines()
            if line.startswith("Documentation=")
        ]
        for target in (t for line in targets for t in line):
            assert target.startswith("https://"), f"{unit.name}: {target}"
