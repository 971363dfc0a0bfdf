"""A circuit breaker for one connector: closed, open, half-open.

Closed: publishes go through. A publish *fails* for the breaker when the broker confirmed
nothing of the batch and at least one message is RETRYABLE (see :func:`broker_outage`),
or when the connector raised or overran its deadline. ``failure_threshold`` failures in a
row, or a failure rate of ``failure_rate`` over the last ``window`` publishes (once
``min_calls`` were seen), open the circuit.

Open: nothing is published and the poller claims nothing, for a cooldown that doubles with
each re-opening (capped, with jitter so that a fleet of relays does not probe in step).

Half-open: one probe batch goes through; success closes the circuit, failure opens it
again with a longer cooldown.

The breaker is a plain object with an injectable clock, so its state machine is tested
without sleeping; :class:`relay.decorators.BreakerConnector` applies it to a connector.
"""

from __future__ import annotations

import enum
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from relay.model import Outcome, OutcomeKind

log = logging.getLogger(__name__)


class CircuitState(enum.Enum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"


# Exported as the value of the outbox_relay_circuit_state gauge.
STATE_VALUES = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}


@dataclass(frozen=True)
class BreakerSettings:
    failure_threshold: int = 3
    window: int = 20
    failure_rate: float = 0.5
    min_calls: int = 10
    cooldown_base: float = 1.0
    cooldown_cap: float = 30.0

    @classmethod
    def for_retries(cls, retry_base: float, retry_cap: float) -> BreakerSettings:
        """Cooldowns on the scale of the relay's retry settings (at least 1 s)."""
        base = max(1.0, retry_base)
        return cls(cooldown_base=base, cooldown_cap=max(base, retry_cap))


def broker_outage(outcomes: Sequence[Outcome]) -> bool:
    """True when the broker confirmed nothing of a batch, some of it may be retried, and
    nothing shows the broker answered (no nack, no broker error code): the broker, or the
    way to it, is down, not one message. Such a failure is counted against the circuit,
    never against the messages' attempts."""
    if not outcomes:
        return False
    if any(o.kind is OutcomeKind.DELIVERED or o.answered for o in outcomes):
        return False
    return any(o.kind is OutcomeKind.RETRYABLE for o in outcomes)


Transition = Callable[[CircuitState, CircuitState, str], None]


class CircuitBreaker:
    """The state machine; not thread-safe (it lives on the relay's event loop)."""

    def __init__(
        self,
        name: str,
        settings: BreakerSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        on_transition: Transition | None = None,
    ) -> None:
        self.name = name
        self.settings = settings or BreakerSettings()
        self._clock = clock
        self._rng = rng or random.Random()
        self._listeners: list[Transition] = [on_transition] if on_transition else []
        self.state = CircuitState.CLOSED
        self._recent: deque[bool] = deque(maxlen=self.settings.window)
        self._failures_in_a_row = 0
        self._openings_in_a_row = 0
        self._open_until = 0.0
        self._probe_in_flight = False
        self.last_error: str | None = None

    def add_listener(self, listener: Transition) -> None:
        self._listeners.append(listener)

    def retry_in(self) -> float:
        """Seconds until a publish may be attempted; 0 when one may go now."""
        if self.state is CircuitState.OPEN:
            return max(0.0, self._open_until - self._clock())
        if self.state is CircuitState.HALF_OPEN and self._probe_in_flight:
            return self.settings.cooldown_base
        return 0.0

    def allow(self) -> bool:
        """May a publish go through now? In half-open state only one probe may."""
        if self.state is CircuitState.OPEN:
            if self._clock() < self._open_until:
                return False
            self._move(CircuitState.HALF_OPEN, "cooldown over; probing the broker")
        if self.state is CircuitState.HALF_OPEN:
            if self._probe_in_flight:
                return False
            self._probe_in_flight = True
        return True

    def record_success(self) -> None:
        self._recent.append(True)
        self._failures_in_a_row = 0
        self._probe_in_flight = False
        if self.state is not CircuitState.CLOSED:
            self._openings_in_a_row = 0
            self.last_error = None
            self._move(CircuitState.CLOSED, "the broker confirmed messages again")

    def record_failure(self, error: str) -> None:
        self._recent.append(False)
        self._failures_in_a_row += 1
        self.last_error = error
        probing = self.state is CircuitState.HALF_OPEN
        self._probe_in_flight = False
        if probing or self._should_open():
            self._open(error)

    def _should_open(self) -> bool:
        s = self.settings
        if self._failures_in_a_row >= s.failure_threshold:
            return True
        failures = sum(1 for ok in self._recent if not ok)
        return len(self._recent) >= s.min_calls and failures / len(self._recent) >= s.failure_rate

    def _open(self, error: str) -> None:
        s = self.settings
        ceiling = min(s.cooldown_cap, s.cooldown_base * 2 ** min(self._openings_in_a_row, 30))
        # "equal jitter": at least half the cooldown, so an open circuit really rests
        cooldown = ceiling / 2 + self._rng.uniform(0.0, ceiling / 2)
        self._openings_in_a_row += 1
        self._open_until = self._clock() + cooldown
        self._recent.clear()
        self._move(CircuitState.OPEN, f"{error}; next probe in {cooldown:.1f}s")

    def _move(self, to: CircuitState, why: str) -> None:
        before, self.state = self.state, to
        if before is to:
            return
        level = logging.WARNING if to is CircuitState.OPEN else logging.INFO
        log.log(level, "circuit %s %s -> %s: %s", self.name, before.value, to.value, why)
        for listener in self._listeners:
            listener(before, to, why)
