"""Wire protocol: envelopes, typed requests, dispatch and the WebSocket bindings."""
