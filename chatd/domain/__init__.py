"""The domain: rooms, messages, membership, typing and local fan-out.

Nothing here imports Autobahn, twisted.web or a database driver; it talks to
connections, storage and the broker through ``chatd.domain.interfaces``."""
