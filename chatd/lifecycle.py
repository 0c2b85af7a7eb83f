"""A service tree whose start and stop wait for their children.

Twisted's ``MultiService`` starts its children one after the other but
drops the Deferred each ``startService`` returns, and it stops them all at
once, so "stop accepting, let pending writes commit, close the connections,
leave the cluster, close storage" cannot be expressed with it.  chatd's
start-up must fail loudly and its shutdown must drain in order, so:

- ``AsyncMultiService`` starts its children in the order they were added,
  each one only after the previous one's Deferred fired; if a child fails to
  start, the children already started are stopped again (in reverse) and
  the failure is passed up.
- It stops its children in reverse order of start, each one after the one
  started after it has finished stopping.  A child that fails to stop is
  logged and the others still stop; the first failure is passed up at the
  end.
- ``ComponentService`` makes a plain object with ``start()``/``stop()``
  (returning a Deferred or None) a child of the tree, so the domain and
  infrastructure classes need not inherit from Twisted's ``Service``.

The idea comes from Buildbot's ``AsyncMultiService``; the code is ours.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeAlias

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()


Step: TypeAlias = Callable[[], "Deferred[Any] | Coroutine[Any, Any, Any] | None"]
"""A start or stop action: plain, Deferred-returning or a coroutine function."""


class Component(Protocol):
    """Something long-lived that the tree starts and stops."""

    def start(self) -> Deferred[Any] | None: ...

    def stop(self) -> Deferred[Any] | None: ...


class ComponentService(Service):
    """A child of the tree that starts and stops one component, or runs a
    pair of callables (for steps such as "drain pending writes" that belong
    to a point in the stop order rather than to one object)."""

    def __init__(
        self,
        name: str,
        start: Step | None = None,
        stop: Step | None = None,
    ) -> None:
        self.setName(name)
        self._start = start
        self._stop = stop

    @classmethod
    def of(cls, name: str, component: Component) -> ComponentService:
        return cls(name, component.start, component.stop)

    def startService(self) -> Deferred[None]:
        Service.startService(self)
        return _run(self._start).addErrback(self._not_started)

    def _not_started(self, failure: Failure) -> Failure:
        """A component that failed to start is not running (and so is not
        stopped again)."""
        self.running = False
        return failure

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return _run(self._stop)


def _run(step: Step | None) -> Deferred[None]:
    if step is None:
        return succeed(None)
    try:
        result = step()
    except BaseException:
        return fail()
    if isinstance(result, Coroutine):
        result = Deferred.fromCoroutine(result)
    if isinstance(result, Deferred):
        return result.addCallback(lambda _: None)
    return succeed(None)


class AsyncMultiService(MultiService):
    """A ``MultiService`` whose start and stop are sequential and waited
    for (see the module docstring)."""

    def startService(self) -> Deferred[None]:
        Service.startService(self)
        return Deferred.fromCoroutine(self._start_children())

    async def _start_children(self) -> None:
        started: list[IService] = []
        for child in list(self):
            try:
                await maybeDeferred(child.startService)
            except BaseException:
                failure = Failure()
                log.failure("{child} failed to start", failure, child=_name(child))
                self.running = False
                await self._stop_children(list(reversed(started)))
                failure.raiseException()
            started.append(child)

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        children = [child for child in reversed(list(self)) if child.running]
        return Deferred.fromCoroutine(self._stop_children(children))

    async def _stop_children(self, children: list[IService]) -> None:
        first: Failure | None = None
        for child in children:
            try:
                await maybeDeferred(child.stopService)
            except BaseException:
                failure = Failure()
                log.failure("{child} failed to stop", failure, child=_name(child))
                first = first or failure
        if first is not None:
            first.raiseException()


def _name(service: IService) -> str:
    return str(getattr(service, "name", None) or type(service).__name__)
