"""The daemon as an operator meets it: `twistd chatd` from the installed
plugin, the embedded default, `python -m chatd token`, configuration errors
as one line with a non-zero exit, and SIGTERM's graceful drain."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.daemon import TWISTD, Daemon, clean_env, free_port, run_module, run_twistd


def test_twistd_lists_the_chatd_plugin(tmp_path):
    """The plugin as `pip install .` ships it (not this checkout)."""
    out = subprocess.run(
        [TWISTD, "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env(installed_only=True),
    )
    assert out.returncode == 0
    assert any(line.split()[:1] == ["chatd"] for line in out.stdout.splitlines()), out.stdout


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_embedded_default_starts_with_no_configuration(tmp_path):
    """No options, no environment, no file: 127.0.0.1:8080, SQLite in the
    data directory, a generated secret, and a hint how to get a token."""
    if not _port_is_free(8080):
        pytest.skip(
            "port 8080 is taken on this machine; the default listen address cannot be tested here"
        )
    home = tmp_path / "home"
    env = clean_env(HOME=str(home), XDG_DATA_HOME="", STATE_DIRECTORY="")
    env.pop("XDG_DATA_HOME"), env.pop("STATE_DIRECTORY")
    daemon = Daemon([], env, str(tmp_path))
    try:
        daemon.wait_healthy(8080)
        data_dir = home / ".local" / "share" / "chatd"
        assert (data_dir / "chatd.sqlite3").exists() and (data_dir / "jwt-secret").exists()
        assert "-m chatd token alice" in daemon.output()  # with the interpreter that has chatd
        minted = run_module(["token", "alice"], env, str(tmp_path))
        assert minted.returncode == 0, minted.stderr
        with connect(f"ws://127.0.0.1:8080/ws?token={minted.stdout.strip()}") as ws:
            assert json.loads(ws.recv(timeout=5))["data"]["userId"] == "alice"
    finally:
        assert daemon.terminate(), daemon.output()


def test_token_command_and_generated_secret_survive_restart(tmp_path):
    port = free_port()
    data = tmp_path / "data"
    env = clean_env()
    args = ["--data-dir", str(data), "--listen", f"tcp:{port}:interface=127.0.0.1"]
    token = None
    for _ in range(2):
        daemon = Daemon(args, env, str(tmp_path))
        try:
            daemon.wait_healthy(port)
            if token is None:
                minted = run_module(
                    ["token", "bob", "--admin", "--ttl", "600", "--data-dir", str(data)],
                    env,
                    str(tmp_path),
                )
                assert minted.returncode == 0, minted.stderr
                token = minted.stdout.strip()
            with connect(
                f"ws://127.0.0.1:{port}/ws", additional_headers={"Authorization": f"Bearer {token}"}
            ) as ws:
                assert json.loads(ws.recv(timeout=5))["type"] == "authenticated"
        finally:
            assert daemon.terminate(), daemon.output()


@pytest.mark.parametrize(
    ("args", "env", "file_text", "expected"),
    [
        (["--auth-timeout", "soon"], {}, None, "invalid auth_timeout (--auth-timeout)"),
        (["--max-message-size", "-5"], {}, None, "invalid max_message_size"),
        (["--database", "mysql://x"], {}, None, "invalid database"),
        (["--jwt-algorithms", "none"], {}, None, "'none' is never allowed"),
        (
            ["--listen", "tcp:8080"],
            {},
            None,
            "refusing a non-loopback address without a configured jwt_secret",
        ),
        (
            [],
            {"CHATD_MAX_MESSAGE_SIZE": "big"},
            None,
            "invalid max_message_size (environment CHATD_MAX_MESSAGE_SIZE)",
        ),
        (["--config", "FILE"], {}, 'colour = "blue"\n', "unknown key 'colour'"),
        (["--config", "FILE"], {}, "listen = [\n", "is not valid TOML"),
        (["--config", "FILE"], {}, "auth_timeout = -1\n", "invalid auth_timeout (config file"),
        (["--config", "missing.toml"], {}, None, "config file not found"),
        (["--listen", "tcp:{busy}:interface=127.0.0.1"], {}, None, "cannot listen on"),
        (["--database", "postgresql://127.0.0.1:1/none"], {}, None, "cannot prepare the database"),
    ],
)
def test_bad_configuration_stops_startup_with_one_line(tmp_path, args, env, file_text, expected):
    config_file = tmp_path / "chatd.toml"
    if file_text is not None:
        config_file.write_text(file_text)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    args = [
        a.replace("FILE", str(config_file)).replace("{busy}", str(busy.getsockname()[1]))
        for a in args
    ]
    result = run_twistd(
        ["--data-dir", str(tmp_path / "data"), *args], clean_env(**env), str(tmp_path)
    )
    busy.close()
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("chatd: ") and expected in lines[0], lines[0]


def test_precedence_command_line_over_environment_over_file(tmp_path):
    from chatd.config import load_config

    config_file = tmp_path / "c.toml"
    config_file.write_text(
        "auth_timeout = 3\nmax_message_size = 1000\nrate_limit = 7\n"
        f'data_dir = "{tmp_path}"\njwt_secret = "file-secret-long-enough"\n'
    )
    env = {
        "CHATD_MAX_MESSAGE_SIZE": "2000",
        "CHATD_RATE_LIMIT": "8",
        "CHATD_CONFIG": str(config_file),
    }
    config = load_config({"rate_limit": "9"}, environ=env)
    assert config.auth_timeout == 3 and config.max_message_size == 2000 and config.rate_limit == 9
    assert config.jwt_secret == "file-secret-long-enough" and not config.secret_generated


def test_sigterm_drains_writes_and_closes_with_1001(tmp_path):
    port = free_port()
    data = tmp_path / "data"
    env = clean_env()
    args = [
        "--data-dir",
        str(data),
        "--listen",
        f"tcp:{port}:interface=127.0.0.1",
        "--rate-limit",
        "100000",
        "--rate-burst",
        "100000",
    ]
    daemon = Daemon(args, env, str(tmp_path))
    token = None
    try:
        daemon.wait_healthy(port)
        token = run_module(
            ["token", "alice", "--data-dir", str(data)], env, str(tmp_path)
        ).stdout.strip()
        acked: list[str] = []
        with connect(f"ws://127.0.0.1:{port}/ws?token={token}") as ws:
            ws.recv(timeout=5)
            ws.send(
                json.dumps(
                    {"type": "chat:create", "id": "c", "data": {"name": "r", "type": "public"}}
                )
            )
            room = json.loads(ws.recv(timeout=5))["data"]["room"]["id"]
            for i in range(300):
                ws.send(
                    json.dumps(
                        {
                            "type": "chat:message",
                            "id": f"m{i}",
                            "data": {"chatId": room, "content": str(i)},
                        }
                    )
                )
            # SIGTERM while writes are in flight: after the first ack.
            while True:
                frame = json.loads(ws.recv(timeout=10))
                if frame["type"] == "ack":
                    acked.append(frame["data"]["id"])
                    break
            daemon.proc.send_signal(15)
            code = None
            try:
                while True:
                    frame = json.loads(ws.recv(timeout=10))
                    if frame["type"] == "ack" and frame["id"].startswith("m"):
                        acked.append(frame["data"]["id"])
            except ConnectionClosed as e:
                code = e.rcvd.code if e.rcvd else None
        assert code == 1001
        assert daemon.proc.wait(20) in (0, -15)
        assert "chatd stopped" in daemon.output()
        assert acked, "no message was acknowledged before shutdown"
    finally:
        daemon.terminate()

    daemon = Daemon(args, env, str(tmp_path))
    try:
        daemon.wait_healthy(port)
        with connect(f"ws://127.0.0.1:{port}/ws?token={token}") as ws:
            ws.recv(timeout=5)
            ws.send(
                json.dumps({"type": "chat:join", "id": "j", "data": {"chatId": room, "since": 0}})
            )
            stored = {m["id"] for m in json.loads(ws.recv(timeout=5))["data"]["messages"]}
            after = 100
            while True:
                ws.send(
                    json.dumps(
                        {
                            "type": "chat:history",
                            "id": "h",
                            "data": {"chatId": room, "after": after},
                        }
                    )
                )
                page = json.loads(ws.recv(timeout=5))["data"]
                stored |= {m["id"] for m in page["messages"]}
                if not page["hasMore"]:
                    break
                after = page["messages"][-1]["seq"]
        assert set(acked) <= stored, "an acknowledged message was lost"
    finally:
        assert daemon.terminate(), daemon.output()
