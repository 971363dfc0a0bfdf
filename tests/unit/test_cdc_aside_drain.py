"""When the set-aside drain looks on its own (relay.cdc.aside.AsideDrain)."""

from __future__ import annotations

import asyncio

from relay.cdc.aside import AsideDrain, AsideRound
from relay.shared_sessions import Lookout


class CountingStore:
    """Counts drain rounds and looks; each round finds what ``found`` says (by default
    nothing and nothing due), each look what ``set_aside`` says."""

    def __init__(self, found: list[AsideRound] | None = None, held: bool = False) -> None:
        self.wake = asyncio.Event()
        self.turn = asyncio.Lock()
        self.batch_size = 10
        self.rounds = 0
        self.looks = 0
        self.round_done = asyncio.Event()
        self.found = found or []
        self.held = held
        self.set_aside = False

    def holding(self) -> bool:
        return self.held

    async def anything_set_aside(self) -> bool:
        self.looks += 1
        return self.set_aside

    async def drain_once(self, publish, may_publish) -> AsideRound:
        self.rounds += 1
        self.round_done.set()
        return self.found.pop(0) if self.found else AsideRound()


async def rounds_after(covered: bool, *, wake: bool, store: CountingStore | None = None) -> int:
    """Rounds and looks, each a look for work of the drain's own."""
    store = store or CountingStore()
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
    return store.rounds + store.looks


def test_the_drain_looks_on_its_own_every_period_while_no_shared_look_answers():
    assert asyncio.run(rounds_after(False, wake=False)) > 2


def test_while_a_shared_look_answers_the_drain_waits_to_be_woken():
    assert asyncio.run(rounds_after(True, wake=False)) == 1
    assert asyncio.run(rounds_after(True, wake=True)) == 2


async def drive(store: CountingStore, every: float, then) -> CountingStore:
    """Run a drain over ``store`` through ``then(store)``, then halt it."""
    drain = AsideDrain(store, publish=None, may_publish=lambda: True,  # type: ignore[arg-type]
                       on_delivered=lambda _n: None, every=every)
    halt = asyncio.Event()
    task = asyncio.create_task(drain.run(halt))
    try:
        await then(store)
    finally:
        halt.set()
        await task
    return store


async def until(condition, timeout: float = 5.0) -> None:
    """Until ``condition()`` holds (the drain's own periods go by meanwhile)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the drain never got there"
        await asyncio.sleep(0.005)


async def idle_drain(store: CountingStore, condition) -> CountingStore:
    """Run an idle drain (a 10 ms period) until ``condition(store)``."""
    return await drive(store, 0.01, lambda s: until(lambda: condition(s)))


async def round_after(store: CountingStore, change) -> None:
    """After the drain's first round, ``change(store)``; until the next round."""
    await store.round_done.wait()
    store.round_done.clear()
    change(store)
    await asyncio.wait_for(store.round_done.wait(), 5)


def test_an_idle_drain_looks_with_one_statement_instead_of_a_round():
    """Nothing set aside, no key held: after its first round the drain only asks
    whether anything is (a fenced round is several round trips, every period)."""
    store = asyncio.run(idle_drain(CountingStore(), lambda s: s.looks >= 3))
    assert store.rounds == 1


def test_a_look_that_finds_something_set_aside_runs_a_round():
    """A person's retry, or a deposed leader's set-aside row: seen by the next look."""

    def set_aside(store: CountingStore) -> None:
        store.set_aside = True

    store = asyncio.run(drive(CountingStore(), 0.01, lambda s: round_after(s, set_aside)))
    assert store.rounds >= 2 and store.looks >= 1


def test_a_wake_runs_a_round_without_a_look():
    """This relay set something aside: its round comes at once, no look first."""

    def wake(store: CountingStore) -> None:
        store.wake.set()

    store = asyncio.run(drive(CountingStore(), 30, lambda s: round_after(s, wake)))
    assert (store.rounds, store.looks) == (2, 0)


def test_a_message_set_aside_during_a_look_that_missed_it_gets_its_round():
    """The look answered from before the stream's write; the write's wake still counts."""

    class WokenDuringALook(CountingStore):
        async def anything_set_aside(self) -> bool:
            self.looks += 1
            if self.looks == 3:
                self.wake.set()  # a stream batch set a message aside meanwhile
            return False

    store = asyncio.run(idle_drain(WokenDuringALook(), lambda s: s.rounds >= 2))
    assert store.rounds == 2 and store.looks >= 3


def test_while_keys_are_held_or_rows_wait_every_period_is_a_round():
    """Held keys must be read again (a hold runs out) and waiting rows claimed when due."""
    held = asyncio.run(idle_drain(CountingStore(held=True), lambda s: s.rounds >= 3))
    assert held.looks == 0
    waiting = CountingStore(found=[AsideRound(next_due=0.01)] * 1000)
    due = asyncio.run(idle_drain(waiting, lambda s: s.rounds >= 3))
    assert due.looks == 0


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
