"""LiveService without a socket: the per-user reaction rate on the reactor
clock, live chat stamped by the wall clock, host control."""

from __future__ import annotations

import pytest
import pytest_twisted

from chatd.domain.live import LiveService
from chatd.domain.models import ActingUser
from chatd.errors import ChatError, ErrorCode
from tests.unit.domain_world import T0_ISO, build_world


@pytest_twisted.async_yield_fixture
async def world(tmp_path):
    world = build_world(str(tmp_path / "live.sqlite3"))
    yield world
    await world.store.close()


def live_of(world, reaction_rate: float = 2.0) -> LiveService:
    return LiveService(
        world.chat, world.registry, world.clock, world.wall, reaction_rate=reaction_rate
    )


async def _refused(d, code: ErrorCode) -> None:
    with pytest.raises(ChatError) as caught:
        await d
    assert caught.value.code == code


@pytest_twisted.ensureDeferred
async def test_reactions_are_limited_per_user_across_connections(world):
    live = live_of(world, reaction_rate=2.0)  # a burst of 4, then 2 per second
    assert await live.put_stream("s", "star", "Show") == ("star", "idle", "Show")
    tab1, tab2, viewer = world.connect("fan"), world.connect("fan"), world.connect("other")
    for conn in (tab1, tab2, viewer):
        await live.join(conn, "s")
    for n in range(4):
        await live.react(tab1 if n % 2 else tab2, "s", "<3")
    await _refused(live.react(tab1, "s", "<3"), ErrorCode.RATE_LIMIT_EXCEEDED)
    await live.react(viewer, "s", "<3")  # another user has a bucket of their own
    world.clock.advance(0.5)
    await live.react(tab1, "s", "<3")
    await _refused(live.react(tab2, "s", "<3"), ErrorCode.RATE_LIMIT_EXCEEDED)
    assert len(viewer.events("live:reaction")) == 6


@pytest_twisted.ensureDeferred
async def test_live_chat_needs_a_join_and_carries_the_wall_clock(world):
    live = live_of(world)
    await live.put_stream("s", "star", None)
    fan = world.connect("fan")
    await _refused(live.message(fan, "s", "hi"), ErrorCode.NOT_A_MEMBER)
    await live.join(fan, "s")
    sent = await live.message(fan, "s", "hi")
    (pushed,) = fan.events("live:message")
    assert pushed["id"] == sent["id"] and pushed["createdAt"] == T0_ISO


@pytest_twisted.ensureDeferred
async def test_only_the_host_changes_the_status(world):
    live = live_of(world)
    await live.put_stream("s", "star", None)
    fan = world.connect("fan")
    await live.join(fan, "s")
    await _refused(live.set_status(fan, "s", "started"), ErrorCode.FORBIDDEN)
    await live.set_status(ActingUser.named("star"), "s", "started")
    assert fan.events("live:status") == [{"streamId": "s", "status": "started"}]
    # handed to a new host by the backend: read afresh, not from the cache
    await live.put_stream("s", "fan", None)
    await live.set_status(fan, "s", "ended")
