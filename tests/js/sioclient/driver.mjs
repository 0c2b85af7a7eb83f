// Runs scenarios with the real socket.io-client 4 against a chatd:
//
//   node driver.mjs <chatd base URL> <scenario>[,<scenario>...]  < tokens.json
//
// stdin: {"apiKey": "...", "modes": {"<mode>": {"users": {role: userId},
// "tokens": {role: jwt}}}}. Every scenario runs once per mode: "default"
// (socket.io-client's defaults: polling, then the upgrade) and "websocket"
// (transports: ["websocket"]), each mode with users of its own.
//
// stdout: one JSON object a line, {scenario, mode, key, value} for what a
// scenario observed, then {scenario, mode, done: true} or {scenario, mode,
// error}. tests/test_socketio_node_client.py asserts on them. Every socket a
// scenario opens is closed when it ends, whatever happened.

import { api, connect } from "./lib.mjs";

const MODES = { default: {}, websocket: { transports: ["websocket"] } };
const SCENARIO_TIMEOUT = 15000;

function out(line) {
  process.stdout.write(JSON.stringify(line) + "\n");
}

class Context {
  constructor(base, apiKey, scenario, mode, users, tokens) {
    Object.assign(this, { base, apiKey, scenario, mode, users, tokens });
    this.sockets = [];
  }

  report(key, value) {
    out({ scenario: this.scenario, mode: this.mode, key, value: value ?? null });
  }

  /** A socket for `role`, authenticated by `how` ("auth", "header",
   * "query" or "none"), with this mode's transports plus `extra`. */
  open(role, how = "auth", extra = {}, token = undefined) {
    const jwt = token ?? this.tokens[role];
    const options = { ...MODES[this.mode], ...extra };
    if (how === "auth") options.auth = { token: jwt };
    if (how === "header") options.extraHeaders = { Authorization: `Bearer ${jwt}` };
    if (how === "query") options.query = { token: jwt };
    const client = connect(this.base, options, `${this.mode}/${role}`);
    this.sockets.push(client);
    return client;
  }

  /** open() and wait for `authenticated`. */
  async user(role, how = "auth", extra = {}) {
    const client = this.open(role, how, extra);
    client.authenticated = await client.next("authenticated");
    return client;
  }

  api(method, path, body) {
    return api(this.base, this.apiKey, method, path, body);
  }

  id(role) {
    return this.users[role];
  }

  closeAll() {
    for (const client of this.sockets) client.close();
  }
}

async function publicRoom(owner, name, ...members) {
  const { room } = await owner.ok("chat:create", { name, type: "public" });
  for (const member of [owner, ...members]) await member.ok("chat:join", { chatId: room.id });
  return room;
}

const scenarios = {
  // Every way to authenticate, and the refusals.
  async auth(ctx) {
    for (const how of ["auth", "header", "query"]) {
      const client = await ctx.user("alice", how);
      await client.upgraded();
      ctx.report(`${how}:authenticated`, client.authenticated);
      ctx.report(`${how}:socketId`, client.socket.id);
      ctx.report(`${how}:transport`, client.transport);
      ctx.report(`${how}:pong`, await client.ack("ping"));
      client.close();
    }
    for (const [how, token] of [
      ["auth", "not-a-jwt"],
      ["header", "not-a-jwt"],
      ["query", "not-a-jwt"],
      ["none", undefined],
    ]) {
      const client = ctx.open("alice", how, {}, token);
      ctx.report(`bad-${how}:connect_error`, await client.next("#connect_error"));
      ctx.report(`bad-${how}:connected`, client.socket.connected);
      client.close();
    }
  },

  // chat:create / chat:join / chat:leave, with and without ack callbacks.
  async rooms(ctx) {
    const alice = await ctx.user("alice");
    const bob = await ctx.user("bob");
    const carol = await ctx.user("carol");
    const { room } = await alice.ok("chat:create", { name: "general", type: "public" });
    ctx.report("created", room);
    alice.socket.emit("chat:create", { name: "secret", type: "private" });
    const secret = (await alice.next("chat:created")).room;
    ctx.report("created-event", secret);
    ctx.report("join-ack", await alice.ack("chat:join", { chatId: room.id }));
    bob.socket.emit("chat:join", room.id); // seed 001's bare string
    ctx.report("joined-event", await bob.next("chat:joined"));
    ctx.report("private-join", await carol.ack("chat:join", { chatId: secret.id }));
    carol.socket.emit("chat:join", { chatId: "r_missing" });
    ctx.report("error-event", await carol.next("error"));
    ctx.report("leave-ack", await bob.ack("chat:leave", { chatId: room.id }));
    await bob.ok("chat:join", { chatId: room.id });
    bob.socket.emit("chat:leave", { chatId: room.id });
    ctx.report("left-event", await bob.next("chat:left"));
    // After leaving, bob gets none of the room's messages.
    await alice.ok("chat:message", { chatId: room.id, content: "after bob left" });
    await alice.next("chat:message");
    await bob.barrier();
    ctx.report("bob-after-leave", bob.all("chat:message"));
  },

  // chat:message with an ack callback (the ack), without one (the push).
  async messages(ctx) {
    const alice = await ctx.user("alice");
    const bob = await ctx.user("bob");
    const room = await publicRoom(alice, "talk", bob);
    ctx.report(
      "ack",
      await alice.ack("chat:message", { chatId: room.id, content: "hi", tempId: "t1" }),
    );
    ctx.report("alice-push-1", await alice.next("chat:message"));
    ctx.report("bob-push-1", await bob.next("chat:message"));
    bob.socket.emit("chat:message", { chatId: room.id, content: "hello", tempId: "t2" });
    ctx.report("alice-push-2", await alice.next("chat:message"));
    ctx.report("bob-push-2", await bob.next("chat:message"));
    bob.socket.emit("chat:message", { chatId: room.id, content: "" });
    ctx.report("error-event", await bob.next("error"));
    ctx.report("error-ack", await bob.ack("chat:message", { chatId: room.id, content: "" }));
  },

  async typing(ctx) {
    const alice = await ctx.user("alice");
    const bob = await ctx.user("bob");
    const room = await publicRoom(alice, "typing", bob);
    ctx.report("ack", await alice.ack("chat:typing", { chatId: room.id, isTyping: true }));
    ctx.report("bob-start", await bob.next("chat:typing"));
    alice.socket.emit("chat:typing", { chatId: room.id, isTyping: false });
    ctx.report("bob-stop", await bob.next("chat:typing"));
    await alice.barrier();
    ctx.report("alice-own", alice.all("chat:typing"));
  },

  async reads(ctx) {
    const alice = await ctx.user("alice");
    const bob = await ctx.user("bob");
    const room = await publicRoom(alice, "reads", bob);
    ctx.report("room", room.id);
    const sent = await alice.ok("chat:message", { chatId: room.id, content: "read me" });
    ctx.report("sent", sent);
    ctx.report("ack", await bob.ack("chat:read", { chatId: room.id, messageId: sent.id }));
    ctx.report("alice-read", await alice.next("chat:read"));
  },

  async reactions(ctx) {
    const alice = await ctx.user("alice");
    const bob = await ctx.user("bob");
    const room = await publicRoom(alice, "reactions", bob);
    const sent = await alice.ok("chat:message", { chatId: room.id, content: "react" });
    ctx.report("sent", sent);
    ctx.report("ack", await bob.ack("chat:reaction", { messageId: sent.id, reaction: "👍" }));
    ctx.report("alice-added", await alice.next("chat:reaction"));
    bob.socket.emit("chat:reaction", { messageId: sent.id, reaction: "👍", remove: true });
    ctx.report("alice-removed", await alice.next("chat:reaction"));
  },

  async history(ctx) {
    const alice = await ctx.user("alice");
    const room = await publicRoom(alice, "history");
    for (let i = 1; i <= 5; i++) {
      await alice.ok("chat:message", { chatId: room.id, content: `m${i}` });
    }
    const newest = await alice.ok("chat:history", { chatId: room.id, limit: 2 });
    ctx.report("newest", newest);
    ctx.report("before", await alice.ok("chat:history", { chatId: room.id, before: 4, limit: 2 }));
    ctx.report("after", await alice.ok("chat:history", { chatId: room.id, after: 3 }));
  },

  // Direct messages: message:send -> message:sent / message:receive.
  async dms(ctx) {
    const alice = await ctx.user("alice");
    const bob = await ctx.user("bob");
    ctx.report(
      "ack",
      await alice.ack("message:send", {
        recipientId: ctx.id("bob"),
        content: "Hello!",
        sessionId: "s-1",
        tempId: "t-1",
      }),
    );
    ctx.report("bob-receive", await bob.next("message:receive"));
    bob.socket.emit("message:send", { recipientId: ctx.id("alice"), content: "Hi back" });
    ctx.report("bob-sent", await bob.next("message:sent"));
    ctx.report("alice-receive", await alice.next("message:receive"));
    bob.socket.emit("message:send", { recipientId: ctx.id("bob"), content: "me", tempId: "x" });
    ctx.report("bob-error", await bob.next("message:error"));
  },

  // A friend sees user:online / user:offline; a stranger sees nothing.
  async presence(ctx) {
    const alice = await ctx.user("alice");
    const dave = await ctx.user("dave"); // a stranger to bob
    let bob = await ctx.user("bob");
    await alice.ok("friend:request", { userId: ctx.id("bob") });
    await bob.ok("friend:accept", { userId: ctx.id("alice") });
    await alice.next("user:online", (d) => d.userId === ctx.id("bob"));
    ctx.report("alice-status", await alice.ok("status:request", {}));
    dave.socket.emit("status:request", {});
    ctx.report("dave-status", await dave.next("users:online"));
    bob.close();
    ctx.report("alice-offline", await alice.next("user:offline"));
    bob = await ctx.user("bob");
    ctx.report("alice-online", await alice.next("user:online"));
    // Barrier: dave's round trip ends after any presence push sent to him.
    await dave.barrier();
    ctx.report("dave-presence", [...dave.all("user:online"), ...dave.all("user:offline")]);
  },

  async friends(ctx) {
    const alice = await ctx.user("alice");
    const bob = await ctx.user("bob");
    ctx.report("request-ack", await alice.ack("friend:request", { userId: ctx.id("bob") }));
    ctx.report("bob-request", await bob.next("friend:request"));
    ctx.report("bob-notification", await bob.next("notification"));
    ctx.report("bob-message", await bob.next("message", (m) => m.type === "notification"));
    ctx.report("bob-lists", await bob.ok("friends:list", {}));
    ctx.report("accept-ack", await bob.ack("friend:accept", { userId: ctx.id("alice") }));
    ctx.report("alice-accepted", await alice.next("friend:accepted"));
    ctx.report("bob-accepted", await bob.next("friend:accepted"));
    ctx.report("alice-lists", await alice.ok("friends:list", {}));
  },

  // Notifications kept for an offline user and handed over on connect.
  async notifications(ctx) {
    const alice = await ctx.user("alice");
    let bob = await ctx.user("bob"); // known to chatd from now on
    bob.close();
    await alice.ok("friend:request", { userId: ctx.id("bob") });
    await alice.ok("message:send", { recipientId: ctx.id("bob"), content: "while away" });
    const posted = await ctx.api("POST", "/websocket/notification", {
      userId: ctx.id("bob"),
      title: "Later",
      body: "while you were away",
      data: { category: "message" },
    });
    ctx.report("posted", posted);
    bob = await ctx.user("bob");
    const handed = [];
    for (let i = 0; i < 3; i++) handed.push(await bob.next("notification"));
    ctx.report("handed-over", handed);
    const messages = [];
    for (let i = 0; i < 3; i++) {
      messages.push(await bob.next("message", (m) => m.type === "notification"));
    }
    ctx.report("handed-over-messages", messages);
    for (const n of handed) await bob.ok("notification:ack", { id: n.id });
    bob.close();
    bob = await ctx.user("bob");
    await bob.barrier();
    ctx.report("after-ack", bob.all("notification"));
  },

  async live(ctx) {
    const alice = await ctx.user("alice");
    const bob = await ctx.user("bob");
    const stream = `stream-${ctx.mode}`;
    ctx.report("alice-join", await alice.ack("live:join", stream));
    ctx.report("status-ack", await alice.ack("live:status", { streamId: stream, status: "started" }));
    ctx.report("alice-status", await alice.next("live:status"));
    bob.socket.emit("live:join", stream); // seed 001's form, no ack callback
    ctx.report("bob-joined", await bob.next("live:joined"));
    ctx.report("alice-count", await alice.next("live:viewer-count", (d) => d.count === 2));
    ctx.report("reaction-ack", await bob.ack("live:reaction", { streamId: stream, emoji: "🔥" }));
    ctx.report("alice-reaction", await alice.next("live:reaction"));
    ctx.report(
      "message-ack",
      await bob.ack("live:message", { streamId: stream, content: "great stream" }),
    );
    ctx.report("alice-message", await alice.next("live:message"));
    ctx.report("bob-status", await bob.ack("live:status", { streamId: stream, status: "ended" }));
    await bob.ok("live:leave", { streamId: stream });
    ctx.report("alice-count-after-leave", await alice.next("live:viewer-count", (d) => d.count === 1));
  },

  // Pushes from a backend through the HTTP API.
  async push(ctx) {
    const alice = await ctx.user("alice");
    const bob = await ctx.user("bob");
    ctx.report(
      "user",
      await ctx.api("POST", "/websocket/message/user", {
        userId: ctx.id("alice"),
        type: "chat",
        data: { message: "Hello!", sender: "system" },
      }),
    );
    ctx.report("alice-message", await alice.next("message"));
    ctx.report(
      "users",
      await ctx.api("POST", "/websocket/message/users", {
        userIds: [ctx.id("alice"), ctx.id("bob")],
        type: "announcement",
        data: { title: "System Update", message: "tonight" },
      }),
    );
    ctx.report("alice-users", await alice.next("message"));
    ctx.report("bob-users", await bob.next("message"));
    ctx.report(
      "notification",
      await ctx.api("POST", "/websocket/notification", {
        userId: ctx.id("alice"),
        title: "New Message",
        body: "You have received a new message",
        data: { category: "message", priority: "normal" },
      }),
    );
    ctx.report("alice-notification", await alice.next("notification"));
    ctx.report("alice-notification-message", await alice.next("message"));
    await bob.barrier();
    ctx.report("bob-notifications", bob.all("notification"));
  },

  // DELETE /websocket/users/{id}/disconnect.
  async disconnect(ctx) {
    // Reconnection on: a server-side disconnect must not be retried.
    const alice = await ctx.user("alice", "auth", { reconnection: true, reconnectionDelay: 50 });
    const other = await ctx.user("alice");
    const bob = await ctx.user("bob");
    ctx.report("answer", await ctx.api("DELETE", `/websocket/users/${ctx.id("alice")}/disconnect`));
    ctx.report("alice-reason", await alice.next("#disconnect"));
    ctx.report("other-reason", await other.next("#disconnect"));
    await bob.barrier();
    ctx.report("alice-connected", alice.socket.connected);
    ctx.report("alice-active", alice.socket.active);
    ctx.report("bob-connected", bob.socket.connected);
    ctx.report("status", await ctx.api("GET", `/websocket/users/${ctx.id("alice")}/status`));
  },

  // The connection drops; socket.io-client reconnects by itself, and
  // chat:join with `since` returns what was missed.
  async reconnect(ctx) {
    const alice = await ctx.user("alice", "auth", { reconnection: true, reconnectionDelay: 50 });
    const bob = await ctx.user("bob");
    const room = await publicRoom(bob, "reconnect", alice);
    await bob.ok("chat:message", { chatId: room.id, content: "seen" });
    const seen = await alice.next("chat:message");
    alice.socket.io.engine.close(); // as if the network dropped
    ctx.report("alice-reason", await alice.next("#disconnect"));
    for (const content of ["missed 1", "missed 2"]) {
      await bob.ok("chat:message", { chatId: room.id, content });
    }
    await alice.next("#connect");
    ctx.report("reauthenticated", await alice.next("authenticated"));
    ctx.report("rejoin", await alice.ok("chat:join", { chatId: room.id, since: seen.seq }));
  },
};

async function runOne(ctx) {
  let timer;
  const limit = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${SCENARIO_TIMEOUT} ms`)), SCENARIO_TIMEOUT);
  });
  try {
    await Promise.race([scenarios[ctx.scenario](ctx), limit]);
    out({ scenario: ctx.scenario, mode: ctx.mode, done: true });
  } catch (err) {
    out({ scenario: ctx.scenario, mode: ctx.mode, error: String(err?.stack ?? err) });
  } finally {
    clearTimeout(timer);
    ctx.closeAll();
  }
}

async function main() {
  const [base, names] = process.argv.slice(2);
  if (!base || !names) {
    console.error("usage: node driver.mjs <base URL> <scenario,...> < tokens.json");
    process.exit(2);
  }
  let input = "";
  for await (const chunk of process.stdin) input += chunk;
  const { apiKey, modes } = JSON.parse(input);
  const wanted = names === "all" ? Object.keys(scenarios) : names.split(",");
  for (const name of wanted) {
    if (!(name in scenarios)) throw new Error(`unknown scenario ${name}`);
    for (const [mode, { users, tokens }] of Object.entries(modes)) {
      await runOne(new Context(base, apiKey, name, mode, users, tokens));
    }
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
