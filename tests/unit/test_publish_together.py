"""Several outboxes' batches in one connector call (relay.publish_together)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from uuid import uuid4

import pytest

from relay import publish_together
from relay.errors import RetryableError
from relay.model import DELIVERED, OutboxMessage, Outcome, permanent
from relay.publish_together import PublishTogether


def msg(key: str | None, payload: bytes = b"{}") -> OutboxMessage:
    return OutboxMessage(id=uuid4(), topic="t", key=key, payload=payload)


class HeldConnector:
    """Records each call's keys; a call returns once ``release`` is set (set: at once).
    A message whose payload is ``b"poison"`` is refused."""

    name = "held"

    def __init__(self) -> None:
        self.calls: list[list[str | None]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.fail: Exception | None = None

    async def publish(self, batch: Sequence[OutboxMessage], *, timeout: float) -> list[Outcome]:
        self.calls.append([m.key for m in batch])
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return [permanent("refused") if m.payload == b"poison" else DELIVERED for m in batch]

    async def open(self) -> None:
        pass

    async def close(self, *, timeout: float) -> None:
        pass


def together() -> tuple[PublishTogether, HeldConnector]:
    inner = HeldConnector()
    return PublishTogether(inner), inner


def hand(member, *messages: OutboxMessage) -> asyncio.Task[list[Outcome]]:
    return asyncio.create_task(member.publish(list(messages), timeout=5.0))


async def turns(n: int = 3) -> None:
    """Let the event loop go round: batches handed in, a joint call made and started."""
    for _ in range(n):
        await asyncio.sleep(0)


def test_batches_handed_in_while_a_call_is_out_go_together_and_get_their_own_outcomes():
    async def scenario() -> None:
        shared, inner = together()
        a, b, c = shared.member(), shared.member(), shared.member()
        inner.release.clear()
        first = hand(a, msg("a1"))
        await turns()
        assert inner.calls == [["a1"]]  # nothing was in flight: it went at once
        second = hand(b, msg("b1"), msg("b2", b"poison"), msg("b3"))
        third = hand(c, msg("c1"))
        await turns()
        assert inner.calls == [["a1"]]  # they wait for the call in flight
        inner.release.set()
        assert await first == [DELIVERED]
        assert await second == [DELIVERED, permanent("refused"), DELIVERED]
        assert await third == [DELIVERED]
        assert inner.calls == [["a1"], ["b1", "b2", "b3", "c1"]]

    asyncio.run(scenario())


def test_batches_whose_keys_meet_do_not_share_a_call():
    async def scenario() -> None:
        shared, inner = together()
        a, b, c = shared.member(), shared.member(), shared.member()
        tasks = [hand(a, msg("k"), msg("x")), hand(b, msg("k")),
                 hand(c, msg("y"), msg(None))]
        await asyncio.gather(*tasks)
        assert inner.calls == [["k", "x", "y", None], ["k"]]

    asyncio.run(scenario())


def test_an_outbox_whose_last_call_failed_publishes_alone_until_one_delivers_everything():
    async def scenario() -> None:
        shared, inner = together()
        a, b = shared.member(), shared.member()
        assert await a.publish([msg("a1", b"poison")], timeout=5.0) == [permanent("refused")]
        inner.release.clear()
        held = hand(b, msg("b1"))
        await turns()
        alone = hand(a, msg("a2"))
        await turns()
        # a did not wait behind b's call, nor join one: a call of its own, at once
        assert inner.calls[1:] == [["b1"], ["a2"]]
        inner.release.set()
        await asyncio.gather(held, alone)
        tasks = [hand(a, msg("a3")), hand(b, msg("b2"))]
        await asyncio.gather(*tasks)
        assert inner.calls[3:] == [["a3", "b2"]]  # all of a2 delivered: together again

    asyncio.run(scenario())


def test_a_batch_goes_on_its_own_when_the_call_in_flight_takes_long(monkeypatch):
    monkeypatch.setattr(publish_together, "WAIT_BEHIND", 0.01)

    async def scenario() -> None:
        shared, inner = together()
        a, b = shared.member(), shared.member()
        inner.release.clear()
        stuck = hand(a, msg("a1"))
        await turns()
        waiting = hand(b, msg("b1"))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while len(inner.calls) < 2 and loop.time() < deadline:
            await asyncio.sleep(0.005)
        assert inner.calls == [["a1"], ["b1"]]
        inner.release.set()
        await asyncio.gather(stuck, waiting)

    asyncio.run(scenario())


def test_a_failed_call_fails_every_batch_in_it():
    async def scenario() -> None:
        shared, inner = together()
        a, b = shared.member(), shared.member()
        inner.fail = RetryableError("broker gone")
        tasks = [hand(a, msg("a1")), hand(b, msg("b1"))]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert [type(r) for r in results] == [RetryableError, RetryableError]
        assert inner.calls == [["a1", "b1"]]

    asyncio.run(scenario())


def test_a_batch_whose_publisher_gave_up_is_left_out_of_the_answers():
    async def scenario() -> None:
        shared, inner = together()
        a, b, c = shared.member(), shared.member(), shared.member()
        inner.release.clear()
        first = hand(a, msg("a1"))
        await turns()
        second, third = hand(b, msg("b1")), hand(c, msg("c1"))
        await turns(1)  # both handed in, waiting behind a1's call
        second.cancel()
        inner.release.set()
        assert await first == [DELIVERED]
        assert await third == [DELIVERED]
        with pytest.raises(asyncio.CancelledError):
            await second
        assert inner.calls == [["a1"], ["c1"]]

    asyncio.run(scenario())
