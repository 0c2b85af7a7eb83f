"""Whose work is this?  The user a request came from, carried through the
request's coroutines and Deferreds in a context variable, so that shared
resources can be handed out fairly between users (the database's turns:
``chatd.storage.fair``) without every call in between passing it on.

The session layer sets it while it handles a request (``owned_by``); what
the server does of its own accord (the message group commit, batched
session bookkeeping, timers) is ``SERVER``'s.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

SERVER = "\x00server"
"""The owner of the server's own work (no user id can equal it: ids are
refused with a NUL in them)."""

BACKEND = "\x00backend"
"""The owner of what the HTTP API does for a backend (the API key)."""

_owner: ContextVar[str] = ContextVar("chatd_owner", default=SERVER)


def current_owner() -> str:
    return _owner.get()


@contextmanager
def owned_by(owner: str) -> Iterator[None]:
    """Work started inside (and in coroutines started inside, which keep
    the context across their awaits) counts as ``owner``'s."""
    token = _owner.set(owner)
    try:
        yield
    finally:
        _owner.reset(token)
