"""A test client over the independent ``websockets`` library.

Tests run on Twisted's asyncio reactor, so websockets' coroutines and the
server under test share one event loop; every method returns a Deferred the
test can await.  Frames that are not the awaited reply are kept in order,
so a test can assert on pushes after it got its ack.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import websockets
from twisted.internet.defer import Deferred, DeferredList

DEFAULT_TIMEOUT = 5.0


def deferred(coro: Any) -> Deferred[Any]:
    """Await an asyncio coroutine from a Twisted coroutine."""
    return Deferred.fromFuture(asyncio.ensure_future(coro))


async def gather(*coroutines: Any) -> list[Any]:
    """Run Twisted coroutines concurrently; fail if any fails."""
    results = await DeferredList(
        [Deferred.fromCoroutine(c) for c in coroutines], fireOnOneErrback=True, consumeErrors=True
    )
    return [value for _, value in results]


class WsClient:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.inbox: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self.user_id: str | None = None
        self.connection_id: str | None = None

    @classmethod
    async def open(
        cls,
        url: str,
        token: str | None = None,
        header_token: str | None = None,
        expect_auth: bool = True,
        **kwargs: Any,
    ) -> WsClient:
        if token is not None:
            url = f"{url}?token={token}"
        headers = {"Authorization": f"Bearer {header_token}"} if header_token is not None else None
        ws = await deferred(
            websockets.connect(url, additional_headers=headers, open_timeout=5, **kwargs)
        )
        client = cls(ws)
        if expect_auth and (token is not None or header_token is not None):
            frame = await client.next("authenticated")
            client.user_id = frame["data"]["userId"]
            client.connection_id = frame["data"]["connectionId"]
        return client

    # -- sending ------------------------------------------------------------------

    async def send_raw(self, payload: str | bytes) -> None:
        await deferred(self.ws.send(payload))

    async def send(self, event: str, data: Any = None, request_id: str | None = None) -> None:
        frame: dict[str, Any] = {"type": event}
        if data is not None:
            frame["data"] = data
        if request_id is not None:
            frame["id"] = request_id
        await self.send_raw(json.dumps(frame))

    async def request(
        self, event: str, data: Any = None, timeout: float = DEFAULT_TIMEOUT
    ) -> dict[str, Any]:
        """Send with a fresh id; return the ack or error frame for it."""
        request_id = f"r{next(self._ids)}"
        await self.send(event, data, request_id)
        return await self.reply(request_id, timeout)

    async def ok(
        self, event: str, data: Any = None, timeout: float = DEFAULT_TIMEOUT
    ) -> dict[str, Any]:
        """A request that must succeed; returns the ack's data."""
        frame = await self.request(event, data, timeout)
        assert frame["type"] == "ack", f"{event} failed: {frame}"
        return frame["data"]

    async def fails(self, event: str, data: Any, code: str) -> dict[str, Any]:
        frame = await self.request(event, data)
        assert frame["type"] == "error", f"{event} should fail with {code}: {frame}"
        assert frame["data"]["code"] == code, frame
        return frame

    # -- receiving ----------------------------------------------------------------

    async def _receive(self, timeout: float) -> dict[str, Any]:
        raw = await deferred(asyncio.wait_for(self.ws.recv(), timeout))
        return json.loads(raw)

    async def next_matching(
        self, predicate: Any, timeout: float = DEFAULT_TIMEOUT
    ) -> dict[str, Any]:
        for index, frame in enumerate(self.inbox):
            if predicate(frame):
                return self.inbox.pop(index)
        loop = asyncio.get_event_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no matching frame within {timeout}s; inbox: {self.inbox[-5:]}")
            frame = await self._receive(remaining)
            if predicate(frame):
                return frame
            self.inbox.append(frame)

    async def next(self, event: str, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        return await self.next_matching(lambda f: f.get("type") == event, timeout)

    async def reply(self, request_id: str, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        return await self.next_matching(
            lambda f: f.get("type") in ("ack", "error") and f.get("id") == request_id, timeout
        )

    async def collect(
        self, event: str, count: int, timeout: float = DEFAULT_TIMEOUT
    ) -> list[dict[str, Any]]:
        return [await self.next(event, timeout) for _ in range(count)]

    async def drain(self, seconds: float) -> None:
        """Read whatever arrives within ``seconds`` into the inbox."""
        try:
            await self.next_matching(lambda frame: False, seconds)
        except TimeoutError:
            pass

    async def none_before(
        self,
        event: str,
        barrier: str = "ping",
        data: Any = None,
        *,
        until: Any = None,
        where: Any = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> dict[str, Any]:
        """Assert that no ``event`` frame (whose data matches ``where``, when
        given) came before a barrier; return the barrier frame.

        The barrier is the reply to a ``barrier`` request sent now, or, with
        ``until``, the first frame matching that predicate.  Call it once the
        action under test has shown its effect elsewhere (the actor's ack, a
        witness's push of the same fan-out): the server writes a connection's
        frames in order, so anything the action sent here is ahead of the
        barrier.  Unlike ``nothing`` this waits for no fixed time, so a slow
        machine cannot make it pass."""
        if until is None:
            frame = await self.request(barrier, data, timeout)
            assert frame["type"] == "ack", f"barrier {barrier} failed: {frame}"
            before = self.inbox
        else:
            index = next((i for i, f in enumerate(self.inbox) if until(f)), None)
            if index is None:
                frame = await self.next_matching(until, timeout)
                before = self.inbox
            else:
                before = self.inbox[:index]
                frame = self.inbox.pop(index)
        unexpected = [
            f for f in before if f.get("type") == event and (where is None or where(f.get("data")))
        ]
        assert not unexpected, f"unexpected {event} before the barrier: {unexpected}"
        return frame

    async def nothing(self, event: str, within: float = 0.3) -> None:
        """Assert that no ``event`` frame arrives within ``within`` seconds.
        Only for what no later frame can bound (a timer that must not fire,
        work behind an asynchronous store read); otherwise ``none_before``."""
        try:
            frame = await self.next(event, within)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected {event}: {frame}")

    async def closed(self, timeout: float = DEFAULT_TIMEOUT) -> int | None:
        """Wait until the server closes the connection; return its close code."""
        loop = asyncio.get_event_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                frame = await self._receive(max(0.01, deadline - loop.time()))
                self.inbox.append(frame)
            except websockets.ConnectionClosed as e:
                return e.rcvd.code if e.rcvd is not None else None
            if loop.time() > deadline:
                raise TimeoutError("connection still open")

    @property
    def is_open(self) -> bool:
        return self.ws.state == websockets.protocol.State.OPEN

    async def close(self) -> None:
        await deferred(self.ws.close())


async def open_seed000(server: Any, user: str, path: str = "/ws/seed000") -> WsClient:
    """A seed 000 client, authenticated its way (``authenticate`` with a
    top-level token); closed with the server's clients."""
    client = await WsClient.open(f"ws://127.0.0.1:{server.port}{path}", expect_auth=False)
    server.clients.append(client)
    await client.send_raw(json.dumps({"type": "authenticate", "token": server.token(user)}))
    await client.next("authenticated")
    return client


async def open_chatflow(
    server: Any, user: str, path: str = "/ws/chatflow", username: str | None = None
) -> WsClient:
    """A Chat Flow client, authenticated its way (``AUTHENTICATE``, with
    the display name when given)."""
    client = await WsClient.open(f"ws://127.0.0.1:{server.port}{path}", expect_auth=False)
    server.clients.append(client)
    payload: dict[str, Any] = {"token": server.token(user)}
    if username is not None:
        payload["username"] = username
    frame = {"type": "AUTHENTICATE", "payload": payload, "requestId": "a"}
    await client.send_raw(json.dumps(frame))
    await client.next("AUTH_SUCCESS")
    return client
