"""Connector decorators (Watermill style): the circuit breaker and the metrics wrap a
connector from outside; connectors themselves know nothing of either.

``instrument(raw, breaker, metrics)`` builds the usual stack::

    MeteredConnector -> BreakerConnector -> (size limit, ...) -> the broker's connector

The breaker layer also enforces the publish deadline: a connector that overruns
``timeout`` plus a grace is abandoned and its batch counted RETRYABLE, so no broker can
hold the drain loop past its lease.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, Protocol

from relay.breaker import CircuitBreaker, CircuitState, broker_outage
from relay.connector import Connector
from relay.errors import RetryableError
from relay.metrics import RelayMetrics
from relay.model import OutboxMessage, Outcome, OutcomeKind, retryable
from relay.overrun import OverrunWatch


class PublishStack(Connector, Protocol):
    """A connector behind the relay's decorators: what the sources publish through."""

    def ready_in(self) -> float:
        """Seconds until the circuit lets a batch through (0 when it does now): a source
        claims nothing it could not publish."""
        ...


# How far past its own publish timeout a connector may run before it is abandoned.
PUBLISH_GRACE = 2.0


class ConnectorWrapper:
    """Delegates the protocol to ``inner``; attribute reads fall through to it (so an
    in-memory connector's ``published`` stays reachable through the decorators)."""

    def __init__(self, inner: Connector) -> None:
        self.inner = inner
        self.name = inner.name

    async def open(self) -> None:
        await self.inner.open()

    async def close(self, *, timeout: float) -> None:
        await self.inner.close(timeout=timeout)

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)


class BreakerConnector(ConnectorWrapper):
    """Publishes through ``breaker``: nothing reaches the broker while the circuit is open."""

    def __init__(self, inner: Connector, breaker: CircuitBreaker, grace: float = PUBLISH_GRACE):
        super().__init__(inner)
        self.breaker = breaker
        self._grace = grace
        self._watch = OverrunWatch()

    def ready_in(self) -> float:
        return self.breaker.retry_in()

    async def publish(self, batch: Sequence[OutboxMessage], *, timeout: float) -> list[Outcome]:
        if not batch:
            return []
        if not self.breaker.allow():
            wait = self.breaker.retry_in()
            return [retryable(f"circuit open; next probe in {wait:.1f}s")] * len(batch)
        task = asyncio.current_task()
        assert task is not None
        cancelling = task.cancelling()
        self._watch.start(task, timeout + self._grace)
        try:
            outcomes = await self.inner.publish(batch, timeout=timeout)
        except asyncio.CancelledError:
            if not self._watch.overran(task, cancelling):
                self.breaker.record_failure("the connector raised")
                raise
            outcomes = self._overran(batch, timeout)
        except TimeoutError:  # the connector's own wait gave up: as good as an overrun
            outcomes = self._overran(batch, timeout)
        except RetryableError as exc:
            outcomes = [retryable(str(exc))] * len(batch)
        except BaseException:
            self.breaker.record_failure("the connector raised")
            raise
        finally:
            self._watch.stop(task)
        self._record(outcomes)
        return outcomes

    def _overran(self, batch: Sequence[OutboxMessage], timeout: float) -> list[Outcome]:
        return [retryable(f"the {self.name} connector overran {timeout:g}s")] * len(batch)

    def _record(self, outcomes: Sequence[Outcome]) -> None:
        if broker_outage(outcomes):
            first = next(o for o in outcomes if o.kind is OutcomeKind.RETRYABLE)
            self.breaker.record_failure(first.error or "not confirmed")
        else:
            self.breaker.record_success()


class MeteredConnector(ConnectorWrapper):
    """Counts what the connector below reports: outcomes, batch sizes, latencies."""

    def __init__(self, inner: BreakerConnector, metrics: RelayMetrics) -> None:
        super().__init__(inner)
        self.metrics = metrics
        self.ready_in = inner.ready_in

    async def publish(self, batch: Sequence[OutboxMessage], *, timeout: float) -> list[Outcome]:
        started = time.monotonic()
        outcomes = await self.inner.publish(batch, timeout=timeout)
        if batch:
            self.metrics.observe_batch(self.name, batch, outcomes, time.monotonic() - started)
        return outcomes


def instrument(raw: Connector, breaker: CircuitBreaker, metrics: RelayMetrics) -> PublishStack:
    """``raw`` behind the circuit breaker and the metrics, with transitions exported."""

    def exported(_before: CircuitState, to: CircuitState, _why: str) -> None:
        metrics.circuit_changed(raw.name, to)

    breaker.add_listener(exported)
    return MeteredConnector(BreakerConnector(raw, breaker), metrics)
