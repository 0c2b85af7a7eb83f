// The reference Node server of chatd's Socket.IO benchmark: what a team
// would write with socket.io 4 for the same scenarios, so that chatd over
// Socket.IO can be measured against it on the same machine, with the same
// load generator, in one run (bench/run.py --protocol socketio).
//
//     node bench/socketio-node/server.js PORT SECRET_FILE
//
// It implements only what the scenarios use, with chatd's event names and
// shapes (docs/protocol.md):
//
// * every connection must carry an HS256 JWT (CONNECT auth {token}, else
//   ?token=, else Authorization: Bearer), checked with the secret in
//   SECRET_FILE (bench/run.py writes it; the token needs `sub` and a valid
//   `exp`, as chatd's do); a bad one gets CONNECT_ERROR
//   {message, data: {code: "UNAUTHORIZED"}}, as from chatd; a good one gets
//   the `authenticated` event chatd pushes, so both send the same frames;
// * chat:create {name, type} -> ack {room}; chat:join {chatId} (or the bare
//   id) -> the socket joins the room, ack {room, messages: [], users: [],
//   hasMore: false};
// * chat:message {chatId, content, tempId?} from a joined socket ->
//   broadcast chat:message {id, chatId, seq, userId, content, tempId?,
//   createdAt} to the room (the sender included, as chatd does) and ack
//   {id, seq, createdAt, tempId?}.  Nothing is stored: chatd stores every
//   message before it acks, this server keeps a counter.
//
// Without an ack callback the result goes out as chatd's confirmation event
// (chat:created, chat:joined); errors as {error: {code, message}} in the ack.
//
// It answers GET /healthz (bench/run.py waits for it), prints "ready" when
// it listens, and exits 0 on SIGTERM or SIGINT.

"use strict";

const fs = require("fs");
const http = require("http");
const jwt = require("jsonwebtoken");
const { Server } = require("socket.io");

const [portArg, secretFile] = process.argv.slice(2);
const port = Number(portArg);
if (!Number.isInteger(port) || port <= 0 || !secretFile) {
  console.error("usage: node server.js PORT SECRET_FILE");
  process.exit(2);
}
const secret = fs.readFileSync(secretFile, "utf8").trim();

const httpServer = http.createServer((req, res) => {
  // socket.io handles /socket.io/ itself; everything else lands here.
  if (req.url === "/healthz") {
    res.writeHead(200, { "content-type": "text/plain" });
    res.end("ok\n");
  } else {
    res.writeHead(404);
    res.end();
  }
});

// socket.io 4's defaults otherwise (polling and websocket, pingInterval 25 s
// and pingTimeout 20 s like chatd's, no per-message deflate).
const io = new Server(httpServer, { serveClient: false });

function bearer(header) {
  return typeof header === "string" && header.startsWith("Bearer ") ? header.slice(7) : undefined;
}

io.use((socket, next) => {
  const hs = socket.handshake;
  const token =
    (hs.auth && hs.auth.token) || hs.query.token || bearer(hs.headers.authorization);
  try {
    const claims = jwt.verify(String(token || ""), secret, { algorithms: ["HS256"] });
    if (typeof claims.sub !== "string" || !claims.sub || claims.exp === undefined) {
      throw new Error("sub and exp are required");
    }
    socket.data.userId = claims.sub;
    next();
  } catch (e) {
    const err = new Error("invalid or missing token");
    err.data = { code: "UNAUTHORIZED" };
    next(err);
  }
});

const rooms = new Map(); // id -> room
const members = new Map(); // room id -> Set of user ids (memberCount, as chatd counts users)
let roomCounter = 0;
let seq = 0;

function fail(code, message) {
  return { error: { code, message } };
}

function reply(socket, ack, event, data) {
  if (typeof ack === "function") ack(data);
  else if (!data.error) socket.emit(event, data);
  else socket.emit("error", { ...data.error, event });
}

io.on("connection", (socket) => {
  socket.emit("authenticated", { userId: socket.data.userId, connectionId: socket.id });

  socket.on("chat:create", (data, ack) => {
    const d = data || {};
    if (typeof d.name !== "string" || !d.name) {
      return reply(socket, ack, "chat:created", fail("INVALID_MESSAGE", "name is required"));
    }
    const room = {
      id: `r_node${++roomCounter}`,
      name: d.name,
      description: typeof d.description === "string" ? d.description : "",
      type: d.type === "private" ? "private" : "public",
      memberCount: 1,
      createdAt: new Date().toISOString(),
      lastSeq: 0,
    };
    rooms.set(room.id, room);
    members.set(room.id, new Set([socket.data.userId]));
    reply(socket, ack, "chat:created", { room });
  });

  socket.on("chat:join", (data, ack) => {
    const id = typeof data === "string" ? data : data && data.chatId;
    const room = rooms.get(id);
    if (!room) return reply(socket, ack, "chat:joined", fail("ROOM_NOT_FOUND", "no such room"));
    socket.join(id);
    const users = members.get(id);
    users.add(socket.data.userId);
    room.memberCount = users.size;
    reply(socket, ack, "chat:joined", { room, messages: [], users: [], hasMore: false });
  });

  socket.on("chat:message", (data, ack) => {
    const d = data || {};
    const room = rooms.get(d.chatId);
    let error;
    if (!room) error = fail("ROOM_NOT_FOUND", "no such room");
    else if (!socket.rooms.has(room.id)) error = fail("NOT_A_MEMBER", "join the room first");
    else if (typeof d.content !== "string" || !d.content || d.content.length > 4000) {
      error = fail("INVALID_MESSAGE", "content must be 1 to 4000 characters");
    }
    if (error) return reply(socket, ack, "chat:message", error);
    seq += 1;
    room.lastSeq = seq;
    const msg = {
      id: `m_${seq}`,
      chatId: room.id,
      seq,
      userId: socket.data.userId,
      content: d.content,
      ...(d.tempId !== undefined ? { tempId: d.tempId } : {}),
      createdAt: new Date().toISOString(),
    };
    // One broadcast: socket.io encodes the packet (and its WebSocket frame)
    // once and writes it to every socket in the room.
    io.to(room.id).emit("chat:message", msg);
    if (typeof ack === "function") {
      const result = { id: msg.id, seq, createdAt: msg.createdAt };
      if (d.tempId !== undefined) result.tempId = d.tempId;
      ack(result);
    }
  });
});

function stop() {
  io.close(() => process.exit(0));
  // io.close waits for the HTTP server; never hang a benchmark on it.
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);

httpServer.listen({ port, host: "127.0.0.1", backlog: 2048 }, () => {
  console.log(`ready: socket.io ${require("socket.io/package.json").version} on 127.0.0.1:${port}`);
});
