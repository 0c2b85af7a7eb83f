#!/usr/bin/env bash
# The Node packages some tests drive (socket.io-client, the NextAuth/Auth.js
# encoders, the reference socket.io server of the bench smoke test), at the
# versions their package-lock.json files pin.  Without npm the tests that
# need them skip with that reason (and fail on CI, where
# CHATD_TEST_REQUIRE_SERVICES is set).
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v npm >/dev/null 2>&1; then
  echo "tests/js/install.sh: npm not found; the Node-driven tests will skip" >&2
  exit 0
fi
for dir in tests/js/nextauth tests/js/sioclient bench/socketio-node; do
  npm ci --silent --no-audit --no-fund --prefix "$dir"
done
