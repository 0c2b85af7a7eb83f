"""The real ``socket.io-client`` 4 from npm (pinned by
tests/js/sioclient/package-lock.json) against chatd's Socket.IO binding.

``tests/js/sioclient/driver.mjs`` runs each scenario twice, with
socket.io-client's default options (polling, then the upgrade) and with
``transports: ["websocket"]``, each time with users of its own, and prints
what it observed as JSON lines; the assertions are here.  The node
process runs while the reactor serves it (an asyncio subprocess), is
bounded by a deadline and is killed if it overruns.  Waits in the driver
are for events with a deadline; "nothing arrived" is checked after a
round trip (a ``ping`` ack), never after a sleep.

Needs ``node`` and ``npm ci --prefix tests/js/sioclient`` (.ci/run does it).
Without them these tests skip, unless CHATD_TEST_REQUIRE_SERVICES is set
(CI), where they fail."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from tests.test_http_api import API_KEY
from tests.wsclient import deferred

CLIENT_DIR = Path(__file__).resolve().parent / "js" / "sioclient"
MODES = ("default", "websocket")
ROLES = ("alice", "bob", "carol", "dave")
RUN_TIMEOUT = 60.0  # bounds a hang; a scenario takes well under a second
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

# Short timers, so presence and viewer counts settle quickly.
SERVER_CONFIG: dict[str, Any] = {
    "api_key": API_KEY,
    "presence_grace": 0.1,
    "viewer_count_interval": 0.1,
}


def require_client() -> None:
    """Skip without node or the npm packages, unless CI requires them."""
    missing = None
    if shutil.which("node") is None:
        missing = "node is not installed"
    elif not (CLIENT_DIR / "node_modules" / "socket.io-client").is_dir():
        missing = "tests/js/sioclient/node_modules is absent (npm ci --prefix tests/js/sioclient)"
    if missing is None:
        return
    if os.environ.get("CHATD_TEST_REQUIRE_SERVICES"):
        pytest.fail(f"{missing}, but CHATD_TEST_REQUIRE_SERVICES is set")
    pytest.skip(missing)


async def run_node(
    script: str, args: list[str], stdin: str = "", timeout: float = RUN_TIMEOUT
) -> tuple[int, str, str]:
    """Run ``node <script> <args>`` in tests/js/sioclient while the reactor
    keeps serving; (exit status, stdout, stderr).  Killed if it overruns."""
    return await deferred(_run_node(script, args, stdin, timeout))


async def _run_node(script: str, args: list[str], stdin: str, timeout: float) -> Any:
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(CLIENT_DIR / script),
        *args,
        cwd=CLIENT_DIR,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), timeout)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        pytest.fail(
            f"node {script} did not finish in {timeout:.0f}s:\n{out.decode()}{err.decode()}"
        )
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def user_id(role: str, scenario: str, mode: str) -> str:
    return f"{role}-{scenario}-{mode}"


async def drive(server: Any, scenario: str) -> dict[str, dict[str, Any]]:
    """Run one driver scenario in every mode: {mode: {key: value}}."""
    modes = {
        mode: {
            "users": {role: user_id(role, scenario, mode) for role in ROLES},
            "tokens": {role: server.token(user_id(role, scenario, mode)) for role in ROLES},
        }
        for mode in MODES
    }
    status, out, err = await run_node(
        "driver.mjs",
        [server.http, scenario],
        json.dumps({"apiKey": API_KEY, "modes": modes}),
    )
    assert status == 0, f"driver exited with {status}:\n{out}\n{err}"
    results: dict[str, dict[str, Any]] = {mode: {} for mode in MODES}
    finished: dict[str, str | None] = {}
    for line in out.splitlines():
        record = json.loads(line)
        assert record["scenario"] == scenario
        if "key" in record:
            results[record["mode"]][record["key"]] = record["value"]
        else:
            finished[record["mode"]] = record.get("error")
    for mode in MODES:
        assert mode in finished, f"{mode}: the driver did not finish\n{out}\n{err}"
        assert finished[mode] is None, f"{mode}: {finished[mode]}\nobserved: {results[mode]}"
    return results


@pytest.fixture
def node_server(server_factory: Any) -> Any:
    require_client()

    async def start(**overrides: Any) -> Any:
        return await server_factory(**{**SERVER_CONFIG, **overrides})

    return start


async def scenario(node_server: Any, name: str) -> list[tuple[str, dict[str, Any], Any]]:
    """Start a chatd, run scenario ``name`` in every mode: a list of (mode,
    what it observed, the user id of a role in that mode)."""
    results = await drive(await node_server(), name)
    return [(mode, results[mode], lambda role, m=mode: user_id(role, name, m)) for mode in MODES]


def is_error(value: Any, code: str) -> bool:
    return isinstance(value, dict) and value.get("error", {}).get("code") == code


# -- authentication --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_every_way_to_authenticate_and_the_refusals(node_server):
    results = await scenario(node_server, "auth")
    for mode, seen, uid in results:
        for how in ("auth", "header", "query"):
            authenticated = seen[f"{how}:authenticated"]
            assert authenticated["userId"] == uid("alice"), (mode, how)
            # socket.id is chatd's connectionId.
            assert authenticated["connectionId"] == seen[f"{how}:socketId"], (mode, how)
            # The default options end on WebSocket after the upgrade.
            assert seen[f"{how}:transport"] == "websocket", (mode, how)
            assert ISO.match(seen[f"{how}:pong"]["timestamp"]), (mode, how)
        for how in ("auth", "header", "query", "none"):
            refused = seen[f"bad-{how}:connect_error"]
            assert refused["data"] == {"code": "UNAUTHORIZED"}, (mode, how, refused)
            assert refused["message"].startswith("authentication "), (mode, how)
            assert seen[f"bad-{how}:connected"] is False


# -- rooms and messages -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_rooms_create_join_leave(node_server):
    results = await scenario(node_server, "rooms")
    for mode, seen, uid in results:
        room = seen["created"]
        assert room["name"] == "general" and room["type"] == "public", mode
        assert set(room) >= {"id", "name", "description", "type", "memberCount", "createdAt"}
        assert seen["created-event"]["type"] == "private"
        joined = seen["join-ack"]
        assert joined["room"]["id"] == room["id"] and joined["messages"] == []
        assert uid("alice") in joined["users"] and joined["hasMore"] is False
        event = seen["joined-event"]
        assert event["room"]["id"] == room["id"], mode
        assert {uid("alice"), uid("bob")} <= set(event["users"])
        assert is_error(seen["private-join"], "NOT_A_MEMBER"), (mode, seen["private-join"])
        error = seen["error-event"]
        assert error["code"] == "ROOM_NOT_FOUND" and error["event"] == "chat:join", mode
        # {chatId}, not PROTOCOL.md's {}: documented in docs/protocol.md 5.5.
        assert seen["leave-ack"] == {"chatId": room["id"]}, mode
        assert seen["left-event"] == {"chatId": room["id"]}, mode
        assert seen["bob-after-leave"] == [], mode


@pytest_twisted.ensureDeferred
async def test_messages_with_and_without_ack_callbacks(node_server):
    results = await scenario(node_server, "messages")
    for mode, seen, uid in results:
        ack = seen["ack"]
        assert ack["seq"] == 1 and ack["tempId"] == "t1" and ISO.match(ack["createdAt"]), mode
        for who in ("alice", "bob"):  # the sender's own connection included
            pushed = seen[f"{who}-push-1"]
            assert pushed["id"] == ack["id"] and pushed["content"] == "hi", (mode, who)
            assert pushed["userId"] == uid("alice") and pushed["tempId"] == "t1"
            second = seen[f"{who}-push-2"]
            assert (second["seq"], second["content"]) == (2, "hello"), (mode, who)
            assert second["userId"] == uid("bob") and second["tempId"] == "t2"
        error = seen["error-event"]
        assert error["code"] == "INVALID_MESSAGE" and error["event"] == "chat:message", mode
        assert is_error(seen["error-ack"], "INVALID_MESSAGE"), mode


@pytest_twisted.ensureDeferred
async def test_typing(node_server):
    results = await scenario(node_server, "typing")
    for mode, seen, uid in results:
        assert seen["ack"] == {}, mode
        start, stop = seen["bob-start"], seen["bob-stop"]
        assert start["userId"] == uid("alice") and start["isTyping"] is True, mode
        assert stop["userId"] == uid("alice") and stop["isTyping"] is False, mode
        assert start["chatId"] == stop["chatId"]
        assert seen["alice-own"] == [], mode  # not echoed to the typist


@pytest_twisted.ensureDeferred
async def test_read_receipts(node_server):
    results = await scenario(node_server, "reads")
    for mode, seen, uid in results:
        assert seen["ack"] == {}, mode
        sent, read = seen["sent"], seen["alice-read"]
        assert read["userId"] == uid("bob") and read["messageId"] == sent["id"], mode
        assert read["seq"] == sent["seq"] and read["chatId"] == seen["room"], mode


@pytest_twisted.ensureDeferred
async def test_reactions(node_server):
    results = await scenario(node_server, "reactions")
    for mode, seen, uid in results:
        assert seen["ack"] == {}, mode
        added, removed = seen["alice-added"], seen["alice-removed"]
        for push in (added, removed):
            assert push["messageId"] == seen["sent"]["id"] and push["userId"] == uid("bob")
            assert push["reaction"] == "👍" and push["chatId"], mode
        assert added["removed"] is False and removed["removed"] is True, mode


@pytest_twisted.ensureDeferred
async def test_history(node_server):
    results = await scenario(node_server, "history")
    for mode, seen, _ in results:

        def contents(page: dict[str, Any]) -> list[str]:
            return [m["content"] for m in page["messages"]]

        assert contents(seen["newest"]) == ["m4", "m5"] and seen["newest"]["hasMore"], mode
        assert contents(seen["before"]) == ["m2", "m3"] and seen["before"]["hasMore"], mode
        assert contents(seen["after"]) == ["m4", "m5"] and not seen["after"]["hasMore"], mode


@pytest_twisted.ensureDeferred
async def test_direct_messages(node_server):
    results = await scenario(node_server, "dms")
    for mode, seen, uid in results:
        message = seen["ack"]["message"]
        assert message["content"] == "Hello!" and message["senderId"] == uid("alice"), mode
        assert message["recipientId"] == uid("bob") and message["sessionId"] == "s-1"
        assert message["tempId"] == "t-1"
        assert seen["bob-receive"]["message"] == message, mode
        reply = seen["bob-sent"]["message"]
        assert reply["content"] == "Hi back" and reply["chatId"] == message["chatId"], mode
        assert seen["alice-receive"]["message"] == reply
        error = seen["bob-error"]
        assert error["code"] == "INVALID_MESSAGE" and error["tempId"] == "x", (mode, error)


# -- presence, friends, notifications ------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_presence_reaches_friends_not_strangers(node_server):
    results = await scenario(node_server, "presence")
    for mode, seen, uid in results:
        assert seen["alice-status"] == {"userIds": [uid("bob")]}, mode
        assert seen["dave-status"] == {"userIds": []}, mode
        offline = seen["alice-offline"]
        assert offline["userId"] == uid("bob") and ISO.match(offline["lastSeen"]), mode
        assert seen["alice-online"] == {"userId": uid("bob")}, mode
        assert seen["dave-presence"] == [], mode


@pytest_twisted.ensureDeferred
async def test_friend_request_and_accept(node_server):
    results = await scenario(node_server, "friends")
    for mode, seen, uid in results:
        assert seen["request-ack"] == {} and seen["accept-ack"] == {}, mode
        assert seen["bob-request"] == {"fromUserId": uid("alice")}, mode
        notification = seen["bob-notification"]
        assert notification["type"] == "friend_request", mode
        assert notification["data"] == {"fromUserId": uid("alice")}
        message = seen["bob-message"]  # seed 004's form of the same notification
        assert message["data"]["id"] == notification["id"], mode
        assert message["data"]["kind"] == "friend_request"
        assert message["data"]["title"] == notification["title"]
        assert [i.get("userId", i) for i in seen["bob-lists"]["incoming"]] == [uid("alice")]
        assert seen["alice-accepted"] == {"userId": uid("bob")}, mode
        assert seen["bob-accepted"] == {"userId": uid("alice")}, mode
        assert [f["userId"] for f in seen["alice-lists"]["friends"]] == [uid("bob")], mode


@pytest_twisted.ensureDeferred
async def test_notifications_kept_for_offline_user(node_server):
    results = await scenario(node_server, "notifications")
    for mode, seen, _ in results:
        posted = seen["posted"]
        assert posted["status"] == 200 and posted["body"]["delivered"] == 0, (mode, posted)
        handed = seen["handed-over"]
        assert [n["type"] for n in handed] == ["friend_request", "direct_message", "notification"]
        assert handed[2]["id"] == posted["body"]["id"]
        assert handed[2]["title"] == "Later" and handed[2]["message"] == "while you were away"
        assert handed[1]["message"] == "while away"
        messages = seen["handed-over-messages"]
        assert [m["data"]["id"] for m in messages] == [n["id"] for n in handed], mode
        assert messages[2]["data"]["body"] == "while you were away"
        assert messages[2]["data"]["category"] == "message"
        assert seen["after-ack"] == [], mode


# -- live streams ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_live_stream(node_server):
    results = await scenario(node_server, "live")
    for mode, seen, uid in results:
        stream = f"stream-{mode}"
        assert seen["alice-join"] == {"streamId": stream, "viewerCount": 1, "status": "idle"}
        assert seen["status-ack"] == {}, mode
        assert seen["alice-status"] == {"streamId": stream, "status": "started"}
        assert seen["bob-joined"] == {"streamId": stream, "viewerCount": 2, "status": "started"}
        assert seen["alice-count"] == {"streamId": stream, "count": 2}
        assert seen["reaction-ack"] == {}
        assert seen["alice-reaction"] == {"streamId": stream, "userId": uid("bob"), "emoji": "🔥"}
        message = seen["alice-message"]
        assert message["id"] == seen["message-ack"]["id"] and message["content"] == "great stream"
        assert message["userId"] == uid("bob") and ISO.match(message["createdAt"])
        assert is_error(seen["bob-status"], "FORBIDDEN"), mode  # only the host
        assert seen["alice-count-after-leave"] == {"streamId": stream, "count": 1}


# -- the HTTP API ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_backend_pushes(node_server):
    results = await scenario(node_server, "push")
    for mode, seen, _ in results:
        assert seen["user"] == {"status": 200, "body": {"delivered": 1}}, mode
        message = seen["alice-message"]
        assert message["type"] == "chat", mode
        assert message["data"] == {"message": "Hello!", "sender": "system"}
        assert ISO.match(message["timestamp"])
        assert seen["users"] == {"status": 200, "body": {"delivered": 2}}, mode
        for who in ("alice", "bob"):
            assert seen[f"{who}-users"]["type"] == "announcement"
            assert seen[f"{who}-users"]["data"] == {"title": "System Update", "message": "tonight"}
        posted = seen["notification"]
        assert posted["status"] == 200 and posted["body"]["delivered"] == 1, mode
        notification = seen["alice-notification"]
        assert notification["id"] == posted["body"]["id"] and notification["title"] == "New Message"
        assert notification["message"] == "You have received a new message"
        assert seen["alice-notification-message"] == {
            "type": "notification",
            "data": {
                "title": "New Message",
                "body": "You have received a new message",
                "category": "message",
                "priority": "normal",
                "id": notification["id"],
                "kind": "notification",
            },
            "timestamp": notification["createdAt"],
        }
        assert seen["bob-notifications"] == [], mode


@pytest_twisted.ensureDeferred
async def test_disconnect_by_the_http_api(node_server):
    results = await scenario(node_server, "disconnect")
    for mode, seen, uid in results:
        assert seen["answer"] == {"status": 200, "body": {"disconnected": 2}}, mode
        # A Socket.IO DISCONNECT first: the client does not reconnect.
        assert seen["alice-reason"] == "io server disconnect", mode
        assert seen["other-reason"] == "io server disconnect", mode
        assert seen["alice-connected"] is False and seen["alice-active"] is False, mode
        assert seen["bob-connected"] is True
        status = seen["status"]["body"]
        assert status["userId"] == uid("alice") and status["connections"] == 0, mode


@pytest_twisted.ensureDeferred
async def test_reconnect_and_join_since(node_server):
    results = await scenario(node_server, "reconnect")
    for mode, seen, uid in results:
        # engine.close() is socket.io-client's "forced close"; it reconnects.
        assert seen["alice-reason"] == "forced close", mode
        assert seen["reauthenticated"]["userId"] == uid("alice"), mode
        rejoin = seen["rejoin"]
        assert [(m["seq"], m["content"]) for m in rejoin["messages"]] == [
            (2, "missed 1"),
            (3, "missed 2"),
        ], mode
        assert rejoin["hasMore"] is False


# -- a chatd bug found with socket.io-client (fixed in 63442e6) -------------------------


async def _poll(server: Any, query: str, timeout: float) -> tuple[int, bytes]:
    """One Engine.IO polling GET, given up after ``timeout`` seconds."""
    from twisted.internet import reactor
    from twisted.web.client import Agent, readBody

    url = f"{server.http}/socket.io/?EIO=4&transport=polling{query}"
    request = Agent(reactor).request(b"GET", url.encode())
    request.addTimeout(timeout, reactor)
    response = await request
    return response.code, await readBody(response)


@pytest_twisted.ensureDeferred
async def test_a_poll_that_arrives_after_the_probe_is_released(server_factory):
    """What socket.io-client does when its GET that carried the CONNECT
    reply returned just before the probe: it polls again, gets the 3probe
    over WebSocket, then waits for that GET to return before it sends 5.
    Node's engine.io answers every GET during an upgrade with a noop (it
    checks every 100 ms).  Until 63442e6 chatd released only the GET
    pending when the probe came, so this one hung until the next ping
    (25 s): about one connection in five of the scenarios above stalled
    its upgrade and every emit with it."""
    import websockets

    server = await server_factory()
    status, body = await _poll(server, "", 5.0)
    assert status == 200 and body.startswith(b"0{")
    sid = json.loads(body[1:])["sid"]
    ws = await deferred(
        websockets.connect(
            f"ws://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=websocket&sid={sid}",
            open_timeout=5,
        )
    )
    try:
        await deferred(ws.send("2probe"))
        assert await deferred(asyncio.wait_for(ws.recv(), 5)) == "3probe"
        # No GET was pending when the probe came; this one comes after it.
        status, body = await _poll(server, f"&sid={sid}", 2.0)
        assert (status, body) == (200, b"6")
    finally:
        await deferred(ws.close())
