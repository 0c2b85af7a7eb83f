"""Reference ceiling: the smallest Twisted+Autobahn broadcast server that
speaks enough of the chatd protocol for bench/loadgen.py.  Every chat:message
is framed ONCE (factory.prepareMessage) and the same bytes are written to
every connection joined to its room; rooms live in a dict (chat:create
makes one, chat:join enters it); no storage, no tokens, no validation.
Replies come in the shapes chatd uses (compact JSON, same field order).

    python bench/ceiling.py PORT
"""

import json
import sys
from functools import partial

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor

dumps = partial(json.dumps, separators=(",", ":"))  # compact, like chatd
ROOM = {
    "id": "r_ceiling_0",
    "name": "bench",
    "description": "",
    "type": "public",
    "memberCount": 0,
    "createdAt": "2026-01-01T00:00:00.000Z",
    "lastSeq": 0,
}


class Broadcast(WebSocketServerProtocol):
    def onOpen(self):
        self.factory.conns[self] = None
        self.rooms = []
        self.user = f"u{id(self):x}"
        hello = {
            "type": "authenticated",
            "data": {"userId": self.user, "connectionId": str(id(self))},
        }
        self.sendMessage(dumps(hello).encode())

    def onClose(self, wasClean, code, reason):
        self.factory.conns.pop(self, None)
        for room in getattr(self, "rooms", ()):  # not set when the handshake failed
            self.factory.rooms[room].pop(self, None)

    def onMessage(self, payload, isBinary):
        req = json.loads(payload)
        kind, rid, data = req.get("type"), req.get("id"), req.get("data") or {}
        if kind == "chat:message":
            f = self.factory
            f.seq += 1
            msg = {
                "id": f"m_{f.seq}",
                "chatId": data.get("chatId"),
                "seq": f.seq,
                "userId": self.user,
                "content": data.get("content"),
                "createdAt": "2026-01-01T00:00:00.000Z",
            }
            frame = f.prepareMessage(
                dumps({"type": "chat:message", "data": msg}).encode()
            ).payloadHybi
            for conn in f.rooms.get(msg["chatId"], ()):
                conn.transport.write(frame)
            reply = {"id": msg["id"], "seq": f.seq, "createdAt": msg["createdAt"]}
        elif kind == "chat:create":
            f = self.factory
            room = {**ROOM, "id": f"r_ceiling_{len(f.rooms)}"}
            f.rooms[room["id"]] = {}
            reply = {"room": room, "messages": [], "users": [], "hasMore": False}
        elif kind == "chat:join":
            room = {**ROOM, "id": data.get("chatId")}
            self.factory.rooms.setdefault(room["id"], {})[self] = None
            self.rooms.append(room["id"])
            reply = {"room": room, "messages": [], "users": [], "hasMore": False}
        else:
            reply = {}
        if rid is not None:
            self.sendMessage(dumps({"type": "ack", "id": rid, "data": reply}).encode())


if __name__ == "__main__":
    factory = WebSocketServerFactory(f"ws://127.0.0.1:{sys.argv[1]}/ws")
    factory.protocol, factory.conns, factory.rooms, factory.seq = Broadcast, {}, {}, 0
    factory.setProtocolOptions(
        perMessageCompressionAccept=lambda offers: None, tcpNoDelay=True, autoFragmentSize=0
    )
    reactor.listenTCP(int(sys.argv[1]), factory, interface="127.0.0.1", backlog=2048)
    reactor.run()
