"""What a claim lane does between rounds (relay.poll.poller), against fakes."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from relay.config import RelayConfig
from relay.poll.poller import Poller
from relay.poll.wakeups import WakeupSwitch


class CountingSession:
    """A claim session that counts the connections taken from it."""

    def __init__(self) -> None:
        self.taken = 0

    async def connection(self) -> Any:
        self.taken += 1
        return object()

    async def release(self) -> None:
        return None

    async def discard(self) -> None:
        return None


def lane(session: CountingSession, switch: WakeupSwitch) -> Poller:
    config = RelayConfig(dsn="postgresql://localhost/db").validate()
    return Poller(config, session, None, None, uuid.uuid4(), asyncio.Event(), switch=switch)  # type: ignore[arg-type]


def test_a_lane_about_to_wait_takes_no_connection_while_writers_notify():
    async def scenario() -> None:
        session = CountingSession()
        switch = WakeupSwitch("outbox", uuid.uuid4(), lanes=1)
        poller = lane(session, switch)
        assert not await poller._writers_were_quiet(switch.epoch)
        assert await poller._writers_were_quiet(switch.epoch - 1)  # the flag came back since
        assert session.taken == 0

    asyncio.run(scenario())


def test_a_lane_about_to_wait_while_writers_are_quiet_asks_them_to_notify():
    async def scenario() -> None:
        session = CountingSession()
        switch = WakeupSwitch("outbox", uuid.uuid4(), lanes=1)
        switch.listening = False
        poller = lane(session, switch)
        asked: list[bool] = []

        async def change(_conn: Any, *, listening: bool) -> bool:
            asked.append(listening)
            switch.listening = listening
            switch.epoch += 1
            return True

        switch._change = change  # type: ignore[method-assign]
        assert await poller._writers_were_quiet(switch.epoch)  # look once more first
        assert asked == [True] and session.taken == 1

    asyncio.run(scenario())
