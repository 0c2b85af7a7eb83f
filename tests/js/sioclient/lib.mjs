// Shared by driver.mjs and the seed scripts: a socket.io-client socket
// whose every event is kept in order, so a scenario can wait for one
// event (with a deadline, never a fixed sleep) and still assert on the
// others afterwards.

import { io } from "socket.io-client";

export const TIMEOUT = 5000;

export class Recorder {
  constructor(socket, label) {
    this.socket = socket;
    this.label = label;
    this.inbox = [];
    this.seen = [];
    this.waiters = new Set();
    socket.onAny((event, ...args) => this.add(event, args[0]));
    // Reserved events do not reach onAny.
    socket.on("connect", () => this.add("#connect", { id: socket.id }));
    socket.on("connect_error", (err) =>
      this.add("#connect_error", { message: err.message, data: err.data ?? null }),
    );
    socket.on("disconnect", (reason) => this.add("#disconnect", reason));
  }

  add(event, data) {
    const entry = { event, data };
    this.inbox.push(entry);
    this.seen.push(entry);
    for (const waiter of this.waiters) waiter();
  }

  /** The first `event` whose data matches `where`, taken out of the inbox. */
  next(event, where = () => true, timeout = TIMEOUT) {
    return new Promise((resolve, reject) => {
      const look = () => {
        const index = this.inbox.findIndex((e) => e.event === event && where(e.data));
        if (index < 0) return false;
        const [entry] = this.inbox.splice(index, 1);
        this.waiters.delete(look);
        clearTimeout(timer);
        resolve(entry.data);
        return true;
      };
      const timer = setTimeout(() => {
        this.waiters.delete(look);
        const tail = JSON.stringify(this.seen.slice(-6).map((e) => e.event));
        reject(
          new Error(
            `${this.label}: no ${event} within ${timeout} ms (on ${this.transport}); last events ${tail}`,
          ),
        );
      }, timeout);
      if (!look()) this.waiters.add(look);
    });
  }

  /** Every event named `event` seen so far (taken or not). */
  all(event) {
    return this.seen.filter((e) => e.event === event).map((e) => e.data);
  }

  /** emit with an ack callback: the ack's argument. */
  async ack(event, data) {
    const transport = this.transport;
    try {
      return await this.socket.timeout(TIMEOUT).emitWithAck(event, data);
    } catch (err) {
      const now = this.transport;
      const tail = JSON.stringify(this.seen.slice(-6).map((e) => e.event));
      throw new Error(
        `${this.label}: no ack for ${event} within ${TIMEOUT} ms (sent on ${transport}, ` +
          `now ${now}, connected ${this.socket.connected}); last events ${tail}`,
      );
    }
  }

  async ok(event, data) {
    const result = await this.ack(event, data);
    if (result === null || typeof result !== "object" || "error" in result) {
      throw new Error(`${this.label}: ${event} ${JSON.stringify(data)} -> ${JSON.stringify(result)}`);
    }
    return result;
  }

  /** A round trip: every push sent to this socket before it is here now. */
  async barrier() {
    await this.ok("ping");
  }

  get transport() {
    return this.socket.io.engine?.transport?.name;
  }

  /** Resolves once the connection runs on WebSocket (at once if it does). */
  upgraded(timeout = TIMEOUT) {
    const engine = this.socket.io.engine;
    if (engine.transport.name === "websocket") return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${this.label}: no upgrade`)), timeout);
      engine.once("upgrade", () => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  close() {
    this.socket.disconnect();
  }
}

/** A new socket (never a multiplexed one) that records everything. */
export function connect(url, options, label) {
  const socket = io(url, { forceNew: true, reconnection: false, ...options });
  return new Recorder(socket, label);
}

/** A request to chatd's HTTP API with the backend's API key. */
export async function api(base, apiKey, method, path, body) {
  const response = await fetch(base + path, {
    method,
    headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}
