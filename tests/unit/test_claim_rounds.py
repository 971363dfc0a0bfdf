"""Which lanes a claim round takes (relay.poll.rounds), with the round itself faked."""

from __future__ import annotations

import asyncio
from typing import Any

from relay.poll.rounds import ClaimRound, DrainResult, Waiting
from relay.shared_sessions import ClaimPool


class RecordedRounds(ClaimRound):
    """Records how many lanes each round took, and answers them at once."""

    def __init__(self, linger: float) -> None:
        super().__init__(ClaimPool([]), deadline=1.0, linger=linger)
        self.sizes: list[int] = []

    async def _round(self, taken: list[Waiting]) -> None:
        self.sizes.append(len(taken))
        for _, future in taken:
            future.set_result(DrainResult())


async def ask_apart(rounds: ClaimRound, gap: float) -> None:
    """Two lanes asking ``gap`` seconds apart."""
    lane: Any = object()
    first = asyncio.create_task(rounds.drain(lane))
    await asyncio.sleep(gap)
    await asyncio.gather(first, rounds.drain(lane))


def test_a_round_asked_for_soon_after_the_last_waits_a_linger_for_the_lanes_behind():
    async def scenario() -> list[int]:
        rounds = RecordedRounds(linger=0.05)
        await rounds.drain(object())  # type: ignore[arg-type]
        await ask_apart(rounds, 0.01)  # right after the last round: the second joins
        await asyncio.sleep(0.2)  # past two lingers: a lone ask, claimed at once
        await ask_apart(rounds, 0.01)
        await rounds.stop()
        return rounds.sizes

    assert asyncio.run(scenario()) == [1, 2, 1, 1]


def test_without_a_linger_each_ask_goes_at_once():
    async def scenario() -> list[int]:
        rounds = RecordedRounds(linger=0.0)
        await ask_apart(rounds, 0.01)
        await rounds.stop()
        return rounds.sizes

    assert asyncio.run(scenario()) == [1, 1]
