"""A blocking WebSocket client (``websockets.sync``) for tests that drive
real ``twistd`` processes: replies are matched by id, every other frame is
kept in order for ``next``."""

from __future__ import annotations

import json
import time
from typing import Any

from websockets.sync.client import connect


class Client:
    def __init__(self, url: str, token: str) -> None:
        # Unbounded queue: frames a test does not read must not stop the
        # reader (which would also leave the closing handshake unread).
        self.ws = connect(f"{url}?token={token}", open_timeout=10, max_queue=None).__enter__()
        self.inbox: list[dict[str, Any]] = []
        self.counter = 0
        hello = self.next("authenticated")
        self.connection_id = hello.get("connectionId")

    def next(self, event: str, timeout: float = 5, where: Any = None) -> dict[str, Any]:
        """The next push of this type (matching ``where`` when given)."""

        def wanted(frame: dict[str, Any]) -> bool:
            return frame["type"] == event and (where is None or where(frame["data"]))

        for i, frame in enumerate(self.inbox):
            if wanted(frame):
                return self.inbox.pop(i)["data"]
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"no {event} within {timeout} s; got {[f['type'] for f in self.inbox]}"
                )
            frame = json.loads(self.ws.recv(timeout=remaining))
            if wanted(frame):
                return frame["data"]
            self.inbox.append(frame)

    def none_before(
        self, event: str, until: Any = None, where: Any = None, timeout: float = 5
    ) -> dict[str, Any]:
        """Assert that no push of this type (whose data matches ``where``,
        when given) came before a barrier; return the barrier frame.

        The barrier is the reply to a ``ping`` sent now, or, with ``until``,
        the first frame for which ``until(frame)`` is true.  Across nodes the
        barrier must be published after the action, by the node that would
        have sent the unwanted push or by another one: Redis hands a node what
        it subscribed to in the order of the PUBLISH commands.  No fixed wait,
        so a slow machine cannot make it pass."""
        if until is None:
            frame = self.request("ping", {}, timeout)
            assert frame["type"] == "ack", frame
            before = self.inbox
        else:
            index = next((i for i, f in enumerate(self.inbox) if until(f)), None)
            if index is not None:
                before, frame = self.inbox[:index], self.inbox.pop(index)
            else:
                deadline = time.monotonic() + timeout
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError(f"no barrier within {timeout} s")
                    frame = json.loads(self.ws.recv(timeout=remaining))
                    if until(frame):
                        break
                    self.inbox.append(frame)
                before = self.inbox
        unexpected = [
            f for f in before if f["type"] == event and (where is None or where(f.get("data")))
        ]
        assert not unexpected, f"unexpected {event} before the barrier: {unexpected}"
        return frame

    def nothing(self, event: str, wait: float = 0.5) -> None:
        """Assert no push of this type arrives within ``wait`` seconds.
        Only for what no later frame can bound; otherwise ``none_before``."""
        try:
            data = self.next(event, timeout=wait)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected {event}: {data}")

    def request(self, event: str, data: Any, timeout: float = 5) -> dict[str, Any]:
        self.counter += 1
        request_id = f"q{self.counter}"
        self.ws.send(json.dumps({"type": event, "id": request_id, "data": data}))
        deadline = time.monotonic() + timeout
        while True:
            frame = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if frame.get("id") == request_id:
                return frame
            self.inbox.append(frame)

    def ok(self, event: str, data: Any, timeout: float = 5) -> dict[str, Any]:
        frame = self.request(event, data, timeout)
        assert frame["type"] == "ack", frame
        return frame["data"]

    def closed_with(self, timeout: float = 5) -> int | None:
        """Wait for the server to close the connection; its close code."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.inbox.append(
                    json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
                )
        except TimeoutError:
            raise
        except Exception:
            pass
        return self.ws.close_code

    def close(self) -> None:
        self.ws.close()
