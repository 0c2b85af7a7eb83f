"""``python -m chatd token`` as an operator runs it (issue 16, point 8):
it reads the daemon's configuration (options, ``CHATD_*``, ``--config``),
so its tokens pass the running daemon; it says which secret it signed
with, never prints the secret, and never creates one."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from websockets.sync.client import connect

from tests.daemon import Daemon, clean_env, free_port, run_module

SECRET = "operator-chosen-secret-0123456789"


def _authenticates(port: int, token: str) -> str:
    """The userId the daemon's ``authenticated`` push names for ``token``."""
    with connect(f"ws://127.0.0.1:{port}/ws?token={token}") as ws:
        reply = json.loads(ws.recv(timeout=5))
    assert reply["type"] == "authenticated", reply
    return reply["data"]["userId"]


def _minted(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stderr and SECRET not in result.stdout
    return result.stdout.strip()


def test_token_signs_with_the_secret_the_daemon_was_started_with(tmp_path):
    """The README's flow with a configured secret: flag, environment and
    config file each give a token the daemon accepts, and no jwt-secret
    file appears in the data directory."""
    port = free_port()
    data = tmp_path / "data"
    listen = f"tcp:{port}:interface=127.0.0.1"
    daemon = Daemon(
        ["--data-dir", str(data), "--listen", listen, "--jwt-secret", SECRET],
        clean_env(),
        str(tmp_path),
    )
    try:
        daemon.wait_healthy(port)
        # The same options as twistd chatd, --listen included.
        by_flag = run_module(
            ["token", "alice", "--data-dir", str(data), "--listen", listen, "--jwt-secret", SECRET],
            clean_env(),
            str(tmp_path),
        )
        assert "signed with HS256 and the jwt_secret from --jwt-secret" in by_flag.stderr
        assert _authenticates(port, _minted(by_flag)) == "alice"

        by_env = run_module(
            ["token", "bob"],
            clean_env(CHATD_JWT_SECRET=SECRET, CHATD_DATA_DIR=str(data)),
            str(tmp_path),
        )
        assert "the jwt_secret from CHATD_JWT_SECRET" in by_env.stderr
        assert _authenticates(port, _minted(by_env)) == "bob"

        config = tmp_path / "chatd.toml"
        config.write_text(f'jwt_secret = "{SECRET}"\ndata_dir = "{data}"\nlisten = "{listen}"\n')
        by_file = run_module(
            ["token", "carol", "--config", str(config)], clean_env(), str(tmp_path)
        )
        assert f"the jwt_secret in config file {config}" in by_file.stderr
        assert _authenticates(port, _minted(by_file)) == "carol"

        # Without the daemon's secret it refuses instead of inventing one.
        forgot = run_module(["token", "dave", "--data-dir", str(data)], clean_env(), str(tmp_path))
        assert forgot.returncode == 1 and forgot.stdout == ""
        assert "start chatd once" in forgot.stderr and "jwt_secret" in forgot.stderr
    finally:
        assert daemon.terminate(), daemon.output()
    assert not (data / "jwt-secret").exists()


def test_without_a_secret_token_refuses_until_chatd_generated_one(tmp_path):
    """No secret configured: the token command creates nothing and says to
    start chatd; after the first start, the hint's command (with the
    interpreter that has chatd) mints a token the daemon accepts."""
    port = free_port()
    data = tmp_path / "data"
    before = run_module(["token", "alice", "--data-dir", str(data)], clean_env(), str(tmp_path))
    assert before.returncode == 1 and before.stdout == ""
    lines = before.stderr.strip().splitlines()
    assert len(lines) == 1 and "start chatd once" in lines[0], before.stderr
    assert str(data / "jwt-secret") in lines[0] and "configure jwt_secret" in lines[0]
    assert not data.exists()

    args = ["--data-dir", str(data), "--listen", f"tcp:{port}:interface=127.0.0.1"]
    daemon = Daemon(args, clean_env(), str(tmp_path))
    try:
        daemon.wait_healthy(port)
        hint = re.search(
            r"Get a token: (\S+) -m chatd token alice (--data-dir \S+)", daemon.output()
        )
        assert hint, daemon.output()
        python, data_option = hint.group(1), hint.group(2).split()
        assert Path(python).is_absolute() and data_option == ["--data-dir", str(data)]
        result = subprocess.run(
            [python, "-m", "chatd", "token", "alice", *data_option],
            env=clean_env(),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert f"the data directory's generated secret {data / 'jwt-secret'}" in result.stderr
        assert _authenticates(port, _minted(result)) == "alice"
    finally:
        assert daemon.terminate(), daemon.output()


def test_with_only_a_public_key_token_says_it_cannot_mint(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = tmp_path / "public.pem"
    pem.write_bytes(
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    data = tmp_path / "data"
    result = run_module(
        ["token", "alice", "--data-dir", str(data)],
        clean_env(CHATD_JWT_ALGORITHMS="ES256", CHATD_JWT_PUBLIC_KEY=str(pem)),
        str(tmp_path),
    )
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "cannot mint" in lines[0] and "public key" in lines[0] and "ES256" in lines[0]
    assert not data.exists()
