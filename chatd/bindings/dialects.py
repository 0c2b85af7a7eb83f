"""The dialects chatd speaks over a plain WebSocket besides its own, in the
order a first frame on ``/`` is offered to them (the native envelope is
asked last: its shape is the least distinctive)."""

from __future__ import annotations

from chatd.bindings.chatflow import CHATFLOW
from chatd.bindings.codec import NATIVE, Dialect
from chatd.bindings.seed000 import SEED000


def seed_dialects() -> tuple[Dialect, ...]:
    """The seeds' dialects, each also at ``/ws/<name>``.  Seed 002's frames
    (``payload``, ``requestId``, upper-case types) are the most distinctive,
    so they are asked first."""
    return (CHATFLOW, SEED000)


def root_dialects() -> tuple[Dialect, ...]:
    """What a connection on ``/`` may turn out to speak, in asking order."""
    return (*seed_dialects(), NATIVE)
