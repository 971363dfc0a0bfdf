"""When the set-aside drain looks on its own (relay.cdc.aside.AsideDrain)."""

from __future__ import annotations

import asyncio

from relay.cdc.aside import AsideDrain, AsideRound
from relay.shared_sessions import Lookout


class CountingStore:
    """Counts drain rounds; each finds nothing and nothing due."""

    def __init__(self) -> None:
        self.wake = asyncio.Event()
        self.turn = asyncio.Lock()
        self.batch_size = 10
        self.rounds = 0
        self.round_done = asyncio.Event()

    async def drain_once(self, publish, may_publish) -> AsideRound:
        self.rounds += 1
        self.round_done.set()
        return AsideRound()


async def rounds_after(covered: bool, *, wake: bool) -> int:
    store = CountingStore()
    drain = AsideDrain(store, publish=None, may_publish=lambda: True,  # type: ignore[arg-type]
                       on_delivered=lambda _n: None, every=0.01, covered=lambda: covered)
    halt = asyncio.Event()
    task = asyncio.create_task(drain.run(halt))
    await store.round_done.wait()
    await asyncio.sleep(0.1)  # ten of its own periods
    if wake:
        store.round_done.clear()
        store.wake.set()
        await asyncio.wait_for(store.round_done.wait(), 5)
    halt.set()
    await task
    return store.rounds


def test_the_drain_looks_on_its_own_every_period_while_no_shared_look_answers():
    assert asyncio.run(rounds_after(False, wake=False)) > 2


def test_while_a_shared_look_answers_the_drain_waits_to_be_woken():
    assert asyncio.run(rounds_after(True, wake=False)) == 1
    assert asyncio.run(rounds_after(True, wake=True)) == 2


class AnsweringSession:
    """One look's rows through ``turn()``, or a failure."""

    def __init__(self) -> None:
        self.fail = False

    def turn(self):
        session = self

        class Turn:
            async def __aenter__(self):
                if session.fail:
                    from relay.errors import DatabaseUnavailableError

                    raise DatabaseUnavailableError("down")
                return Conn()

            async def __aexit__(self, *exc):
                return False

        return Turn()

    async def discard(self) -> None:
        pass


class Conn:
    async def execute(self, _query):
        class Cursor:
            async def fetchall(self):
                return []

        return Cursor()


def test_the_shared_look_answers_for_the_outboxes_it_looked_at_while_it_succeeds():
    async def scenario() -> None:
        session = AnsweringSession()
        lookout = Lookout(session, 60.0)  # type: ignore[arg-type]
        lookout._wakes["a"] = lambda: None  # as add() does, without its task
        assert not lookout.answering("a")
        await lookout._with_work()
        assert lookout.answering("a") and not lookout.answering("b")
        session.fail = True
        lookout._answered = (lookout._answered[0] - 200.0, lookout._answered[1])
        await lookout._with_work()
        assert not lookout.answering("a")  # its last answer is too old: own looks again

    asyncio.run(scenario())
