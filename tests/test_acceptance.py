"""The issue's acceptance path end to end against a real `twistd -n chatd`
process: two clients with tokens from `python -m chatd token` create a room,
join, exchange messages, see typing, reads and reactions; after a restart the
history is there and `since` returns exactly the missed messages."""

from __future__ import annotations

import pytest

from tests.daemon import Daemon, clean_env, free_port, run_module
from tests.syncclient import Client


@pytest.fixture(params=["sqlite", "postgresql"])
def database_args(request, tmp_path):
    if request.param == "sqlite":
        return []
    return ["--database", request.getfixturevalue("pg_schema_url")]


def test_two_cli_token_clients_chat_and_recover_after_restart(tmp_path, database_args):
    port = free_port()
    data = tmp_path / "data"
    env = clean_env()
    args = ["--data-dir", str(data), "--listen", f"tcp:{port}:interface=127.0.0.1", *database_args]
    url = f"ws://127.0.0.1:{port}/ws"

    daemon = Daemon(args, env, str(tmp_path))
    try:
        daemon.wait_healthy(port)
        tokens = {}
        for user in ("alice", "bob"):
            minted = run_module(["token", user, "--data-dir", str(data)], env, str(tmp_path))
            assert minted.returncode == 0, minted.stderr
            tokens[user] = minted.stdout.strip()
        alice, bob = Client(url, tokens["alice"]), Client(url, tokens["bob"])
        room = alice.ok("chat:create", {"name": "acceptance", "type": "public"})["room"]["id"]
        alice.ok("chat:join", {"chatId": room})
        bob.ok("chat:join", {"chatId": room})
        first = alice.ok("chat:message", {"chatId": room, "content": "hi bob"})
        assert bob.next("chat:message")["content"] == "hi bob"
        bob.ok("chat:message", {"chatId": room, "content": "hi alice"})
        assert alice.next("chat:message")["content"] == "hi bob"
        assert alice.next("chat:message")["content"] == "hi alice"
        bob.ok("chat:typing", {"chatId": room, "isTyping": True})
        assert alice.next("chat:typing") == {"chatId": room, "userId": "bob", "isTyping": True}
        bob.ok("chat:read", {"chatId": room, "messageId": first["id"]})
        assert alice.next("chat:read")["userId"] == "bob"
        bob.ok("chat:reaction", {"messageId": first["id"], "reaction": "🎉"})
        assert alice.next("chat:reaction")["reaction"] == "🎉"
        bob.ws.close()
        for i in range(3):
            alice.ok("chat:message", {"chatId": room, "content": f"missed {i}"})
        alice.ws.close()
    finally:
        assert daemon.terminate(), daemon.output()

    daemon = Daemon(args, env, str(tmp_path))
    try:
        daemon.wait_healthy(port)
        bob = Client(url, tokens["bob"])
        joined = bob.ok("chat:join", {"chatId": room, "since": 2})
        assert [m["content"] for m in joined["messages"]] == ["missed 0", "missed 1", "missed 2"]
        assert [m["seq"] for m in joined["messages"]] == [3, 4, 5]
        history = bob.ok("chat:history", {"chatId": room})
        assert [m["content"] for m in history["messages"]] == [
            "hi bob",
            "hi alice",
            "missed 0",
            "missed 1",
            "missed 2",
        ]
        bob.ws.close()
    finally:
        assert daemon.terminate(), daemon.output()
