// Loaded with `node --import ./harness.mjs <seed script>`: the seed's
// client code stays exactly as its README shows it, and what it prints
// with console.log / console.error reaches tests/test_seed_clients.py as
// one JSON line per call, {"level", "args"}, instead of util.inspect text.

function plain(value) {
  if (value instanceof Error) {
    return { error: value.message, data: value.data ?? null };
  }
  return value;
}

for (const level of ["log", "info", "warn", "error"]) {
  console[level] = (...args) => {
    process.stdout.write(JSON.stringify({ level, args: args.map(plain) }) + "\n");
  };
}

// The test ends the app with SIGTERM once it has seen what the README
// promises; leave quietly.
process.on("SIGTERM", () => process.exit(0));
