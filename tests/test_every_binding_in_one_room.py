"""One room, one client of every binding chatd speaks: native /ws, seed
000 and Chat Flow on the bare host, and Socket.IO. Each sends; each sees
everyone's messages, in one order, with the senders' display names."""

from __future__ import annotations

import json

import pytest_twisted

from tests.test_socketio import _close_all, sio_clients  # noqa: F401  (the fixture)
from tests.wsclient import open_chatflow, open_seed000


@pytest_twisted.ensureDeferred
async def test_four_bindings_in_one_room_see_one_order(server, sio_clients):  # noqa: F811
    made, make = sio_clients
    try:
        native = await server.connect("nat")
        room = (await native.ok("chat:create", {"name": "all", "type": "public"}))["room"]["id"]
        await native.ok("chat:join", {"chatId": room})
        seed = await open_seed000(server, "sid", "/")
        await seed.send_raw(json.dumps({"type": "join_room", "data": {"roomId": room}}))
        await seed.next("room_joined")
        flow = await open_chatflow(server, "flo", "/", username="Flo")
        await flow.send_raw(
            json.dumps({"type": "JOIN_ROOM", "payload": {"roomId": room}, "requestId": "j"})
        )
        await flow.next("ROOM_JOINED")
        sio = await make().connect(server.http, auth={"token": server.token("sio")})
        await sio.ok("chat:join", {"chatId": room})

        sends = [
            lambda i: native.send("chat:message", {"chatId": room, "content": f"m{i}"}),
            lambda i: seed.send_raw(
                json.dumps({"type": "message", "data": {"roomId": room, "content": f"m{i}"}})
            ),
            lambda i: flow.send_raw(
                json.dumps(
                    {"type": "SEND_MESSAGE", "payload": {"roomId": room, "content": f"m{i}"}}
                )
            ),
            lambda i: sio.emit("chat:message", {"chatId": room, "content": f"m{i}"}),
        ]
        for i in range(8):
            await sends[i % 4](i)

        native_seen = [
            (f["data"]["seq"], f["data"]["content"], f["data"]["userId"])
            for f in await native.collect("chat:message", 8)
        ]
        seed_seen = []
        for _ in range(8):
            frame = await seed.next("message")
            seed_seen.append(
                (frame["message"]["seq"], frame["message"]["content"], frame["message"]["userId"])
            )
        flow_seen = []
        names = {}
        for _ in range(8):
            payload = (await flow.next("NEW_MESSAGE"))["payload"]
            flow_seen.append((payload["seq"], payload["content"], payload["userId"]))
            names[payload["userId"]] = payload["username"]
        sio_seen = [
            (m["seq"], m["content"], m["userId"])
            for m in [await sio.next("chat:message") for _ in range(8)]
        ]
        assert native_seen == seed_seen == flow_seen == sio_seen
        assert [seq for seq, _, _ in native_seen] == list(range(1, 9))
        assert {user for _, _, user in native_seen} == {"nat", "sid", "flo", "sio"}
        # The name Chat Flow's AUTHENTICATE offered travels with its messages.
        assert names["flo"] == "Flo"
    finally:
        await _close_all(made)
