// Loaded with `node --experimental-websocket --import ./harness.mjs
// readme-client.mjs`: the seed's client code stays exactly as its README
// shows it (Node 20 has the browser's WebSocket only behind that flag; no
// npm package is needed), and what it prints with console.log reaches
// tests/test_dialect_seed000.py as one JSON line per call, {"level", "args"}.

for (const level of ["log", "info", "warn", "error"]) {
  console[level] = (...args) => {
    process.stdout.write(JSON.stringify({ level, args }) + "\n");
  };
}

if (typeof WebSocket === "undefined") {
  console.error("no global WebSocket: run node with --experimental-websocket (Node >= 20.10)");
  process.exit(2);
}

// The test ends the app with SIGTERM once it has seen what the README
// promises; leave quietly.
process.on("SIGTERM", () => process.exit(0));
