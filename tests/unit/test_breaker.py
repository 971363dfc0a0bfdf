"""The circuit breaker's state machine and the connector decorators, without I/O."""

from __future__ import annotations

import asyncio
import random
from uuid import uuid4

import pytest

from relay.breaker import BreakerSettings, CircuitBreaker, CircuitState, broker_outage
from relay.decorators import instrument
from relay.metrics import RelayMetrics
from relay.model import DELIVERED, OutboxMessage, permanent, retryable
from tests.support.fakes import InMemoryConnector


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, **settings: float) -> CircuitBreaker:
    return CircuitBreaker("test", BreakerSettings(**settings), clock=clock, rng=random.Random(1))


def test_an_outage_is_a_batch_with_nothing_confirmed_and_something_retryable():
    assert broker_outage([retryable("down")] * 3)
    assert broker_outage([permanent("too big"), retryable("down")])
    assert not broker_outage([DELIVERED, retryable("nacked")])
    assert not broker_outage([permanent("unroutable")])
    assert not broker_outage([])


def test_consecutive_failures_open_the_circuit_for_a_cooldown():
    clock = Clock()
    cb = breaker(clock, failure_threshold=3, cooldown_base=2.0, cooldown_cap=8.0)
    for _ in range(2):
        assert cb.allow()
        cb.record_failure("down")
    assert cb.state is CircuitState.CLOSED
    cb.record_failure("down")
    assert cb.state is CircuitState.OPEN
    assert not cb.allow()
    assert 1.0 <= cb.retry_in() <= 2.0  # equal jitter: half the cooldown at least


def test_half_open_lets_one_probe_through_and_closes_on_success():
    clock = Clock()
    cb = breaker(clock, failure_threshold=1, cooldown_base=2.0)
    cb.record_failure("down")
    clock.now += 2.0
    assert cb.allow()
    assert cb.state is CircuitState.HALF_OPEN
    assert not cb.allow()  # one probe at a time
    cb.record_success()
    assert cb.state is CircuitState.CLOSED and cb.retry_in() == 0


def test_a_failed_probe_opens_again_with_a_longer_cooldown():
    clock = Clock()
    cb = breaker(clock, failure_threshold=1, cooldown_base=2.0, cooldown_cap=100.0)
    cb.record_failure("down")
    first = cb.retry_in()
    clock.now += first
    assert cb.allow()
    cb.record_failure("still down")
    assert cb.state is CircuitState.OPEN
    assert cb.retry_in() >= 2.0 > first / 2  # the ceiling doubled to 4 s


def test_the_cooldown_never_passes_the_cap():
    clock = Clock()
    cb = breaker(clock, failure_threshold=1, cooldown_base=1.0, cooldown_cap=3.0)
    for _ in range(20):
        cb.record_failure("down")
        assert cb.retry_in() <= 3.0
        clock.now += cb.retry_in()
        cb.allow()


def test_a_high_failure_rate_opens_the_circuit_too():
    clock = Clock()
    cb = breaker(clock, failure_threshold=100, window=10, min_calls=10, failure_rate=0.5)
    for i in range(1, 11):  # every other publish fails, the tenth too
        if i % 2:
            cb.record_success()
        else:
            cb.record_failure("flaky")
    assert cb.state is CircuitState.OPEN


def test_transitions_reach_listeners():
    seen: list[tuple[str, str]] = []
    cb = breaker(Clock(), failure_threshold=1)
    cb.add_listener(lambda before, to, _why: seen.append((before.value, to.value)))
    cb.record_failure("down")
    assert seen == [("closed", "open")]


def message(key: str = "k") -> OutboxMessage:
    return OutboxMessage(id=uuid4(), topic="t", key=key, payload=b"{}")


def test_an_open_circuit_keeps_batches_away_from_the_broker():
    async def scenario():
        raw = InMemoryConnector(down=True)
        cb = breaker(Clock(), failure_threshold=2)
        metrics = RelayMetrics()
        connector = instrument(raw, cb, metrics)
        for _ in range(2):
            await connector.publish([message()], timeout=1)
        assert cb.state is CircuitState.OPEN
        outcomes = await connector.publish([message()], timeout=1)
        return raw.batches, outcomes, metrics

    batches, outcomes, metrics = asyncio.run(scenario())
    assert batches == 2  # the third never reached the connector
    assert "circuit open" in (outcomes[0].error or "")
    assert (
        metrics.registry.get_sample_value("outbox_relay_circuit_state", {"connector": "memory"})
        == 2
    )


def test_a_connector_that_overruns_its_deadline_is_abandoned():
    async def scenario():
        raw = InMemoryConnector(delay=5.0)

        async def hang(batch, *, timeout):  # ignores its timeout, as a buggy client might
            await asyncio.sleep(5)
            return [DELIVERED] * len(batch)

        raw.publish = hang  # type: ignore[method-assign]
        connector = instrument(raw, breaker(Clock()), RelayMetrics())
        connector.inner._grace = 0.05  # type: ignore[attr-defined]
        return await connector.publish([message()], timeout=0.05)

    outcomes = asyncio.run(scenario())
    assert outcomes[0].kind.value == "retryable" and "overran" in (outcomes[0].error or "")


def test_a_connector_whose_own_wait_times_out_gets_retryable_outcomes():
    async def scenario():
        raw = InMemoryConnector()

        async def gives_up(batch, *, timeout):  # asyncio.timeout inside, not caught
            async with asyncio.timeout(0.01):
                await asyncio.sleep(5)

        raw.publish = gives_up  # type: ignore[method-assign]
        connector = instrument(raw, breaker(Clock()), RelayMetrics())
        outcomes = await connector.publish([message(), message()], timeout=1)
        assert asyncio.current_task().cancelling() == 0
        return outcomes

    outcomes = asyncio.run(scenario())
    assert [o.kind.value for o in outcomes] == ["retryable", "retryable"]


def test_a_stop_while_the_connector_publishes_is_not_swallowed():
    async def scenario():
        raw = InMemoryConnector(delay=5.0)
        connector = instrument(raw, breaker(Clock()), RelayMetrics())
        publishing = asyncio.ensure_future(connector.publish([message()], timeout=10))
        await asyncio.sleep(0.01)
        publishing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await publishing

    asyncio.run(scenario())


def test_metrics_count_outcomes_per_topic_and_the_confirm_latency():
    async def scenario():
        metrics = RelayMetrics()
        connector = instrument(InMemoryConnector(), breaker(Clock()), metrics)
        await connector.publish([message("a"), message("b")], timeout=1)
        return metrics

    metrics = asyncio.run(scenario())
    labels = {"topic": "t", "connector": "memory", "outcome": "delivered"}
    assert metrics.registry.get_sample_value("outbox_relay_messages_total", labels) == 2
    assert metrics.registry.get_sample_value("outbox_relay_batch_size_count") == 1


def test_a_nack_is_the_broker_answering_not_an_outage():
    assert not broker_outage([retryable("nacked", answered=True), retryable("behind")])
