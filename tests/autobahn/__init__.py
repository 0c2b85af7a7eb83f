"""The Autobahn TestSuite run against chatd's WebSocket layer (run.py)."""
