"""Prometheus metrics of one relay, in a registry of its own.

Every metric name starts with ``outbox_relay_``; deploy/grafana and deploy/prometheus are
written against exactly these names, so renaming one is a breaking change. A registry per
relay (rather than prometheus_client's global one) lets several relays share a process in
tests without mixing their figures.
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from operator import attrgetter

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from relay.breaker import STATE_VALUES, CircuitState
from relay.db import DbSession
from relay.latency_histogram import BatchHistogram
from relay.model import DELIVERED, OutboxMessage, Outcome, OutcomeKind
from relay.status import COUNT_CAP

# Fine in the tens of milliseconds, where a healthy relay's commit-to-confirm lives, so a
# p99 objective can be read off the histogram; coarse above, where outages are.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.05, 0.1, 0.25, 0.5,
    1, 2.5, 5, 10, 30, 60, 300, 1800,
)  # fmt: skip
DELIVERED_KIND = OutcomeKind.DELIVERED
BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class RelayMetrics:
    """The relay's instruments. Components get this object and update it; nothing else
    in the relay imports prometheus_client."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.info = Info("outbox_relay", "The relay: name, mode and connector.", registry=r)
        self.messages = Counter(
            "outbox_relay_messages",
            "Messages the connector reported on, by topic, connector and outcome.",
            ["topic", "connector", "outcome"],
            registry=r,
        )
        self.confirm_latency = BatchHistogram(
            "outbox_relay_commit_to_confirm_seconds",
            "From the event's commit to the broker's confirm (CDC: the transaction's "
            "commit timestamp; polling: the row's created_at, its transaction's start).",
            "connector",
            LATENCY_BUCKETS,
            registry=r,
        )
        self.publish_seconds = Histogram(
            "outbox_relay_publish_seconds",
            "Time one batch spent in the connector.",
            ["connector"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "outbox_relay_batch_size",
            "Messages per published batch.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        # the hot path's labelled series, by their labels (see _publish_seconds_of)
        self._publish_seconds_by: dict[str, Histogram] = {}
        self._delivered_by: dict[tuple[str, str], Counter] = {}
        self._define_failures(r)
        self._define_backlog(r)
        self._define_state(r)

    def _define_failures(self, r: CollectorRegistry) -> None:
        self.attempts_failed = Counter(
            "outbox_relay_failed_attempts",
            "Failed deliveries counted against a message's attempts (never broker outages).",
            ["connector"],
            registry=r,
        )
        self.outage_batches = Counter(
            "outbox_relay_outage_batches",
            "Batches of which the broker confirmed nothing (not counted against messages).",
            ["connector"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "outbox_relay_dead_lettered",
            "Messages this relay moved to the dead-letter table, by reason.",
            ["reason"],
            registry=r,
        )

    def _define_backlog(self, r: CollectorRegistry) -> None:
        self.pending = Gauge(
            "outbox_relay_pending_messages",
            f"Messages not yet sent (whole outbox), counted up to {COUNT_CAP:,}.",
            registry=r,
        )
        self.oldest_pending_age = Gauge(
            "outbox_relay_oldest_pending_age_seconds",
            "Age of the oldest message not yet sent; 0 when there is none.",
            registry=r,
        )
        self.dead_letters = Gauge(
            "outbox_relay_dead_letters", "Messages in the dead-letter table.", registry=r
        )
        self.held_keys = Gauge(
            "outbox_relay_held_keys", "Keys held behind a failed or dead message.", registry=r
        )
        self.cdc_slot_lag = Gauge(
            "outbox_relay_cdc_slot_lag_bytes",
            "WAL written since the CDC slot's last confirmed position.",
            ["slot"],
            registry=r,
        )
        self.cdc_not_streamed = Gauge(
            "outbox_relay_cdc_not_streamed",
            "1 while this relay waits as a CDC standby and the relay leading the slot does "
            "not select this outbox: nobody streams it (docs/multi-tenant.md).",
            registry=r,
        )
        self.backlog_sampled = Gauge(
            "outbox_relay_backlog_sampled_timestamp_seconds",
            "When the backlog figures were last read from the database.",
            registry=r,
        )

    def _define_state(self, r: CollectorRegistry) -> None:
        self.circuit_state = Gauge(
            "outbox_relay_circuit_state",
            "Circuit breaker state per connector: 0 closed, 1 half-open, 2 open.",
            ["connector"],
            registry=r,
        )
        self.circuit_transitions = Counter(
            "outbox_relay_circuit_transitions",
            "Circuit breaker state changes, by the state entered.",
            ["connector", "state"],
            registry=r,
        )
        self.buckets_owned = Gauge(
            "outbox_relay_buckets_owned", "Buckets this relay leases now.", registry=r
        )
        self.last_loop = Gauge(
            "outbox_relay_last_loop_timestamp_seconds",
            "When the drain loop last went round.",
            registry=r,
        )
        self.batches = Counter("outbox_relay_batches", "Batches claimed and published.", registry=r)

    # --- hooks ---------------------------------------------------------------------------

    def describe(self, *, relay: str, mode: str, connector: str) -> None:
        self.info.info({"relay": relay, "mode": mode, "connector": connector})
        for state in CircuitState:
            self.circuit_transitions.labels(connector, state.value)
        self.circuit_state.labels(connector).set(0)

    def circuit_changed(self, connector: str, to: CircuitState) -> None:
        self.circuit_state.labels(connector).set(STATE_VALUES[to])
        self.circuit_transitions.labels(connector, to.value).inc()

    def set_cdc_slot_lag(self, slot: str, lag_bytes: int | None) -> None:
        """The hook for CDC mode: the slot's lag in bytes (None: the slot is missing)."""
        if lag_bytes is None:
            with contextlib.suppress(KeyError):  # never set: nothing to remove
                self.cdc_slot_lag.remove(slot)
            return
        self.cdc_slot_lag.labels(slot).set(lag_bytes)

    def observe_batch(
        self,
        connector: str,
        batch: Sequence[OutboxMessage],
        outcomes: Sequence[Outcome],
        seconds: float,
    ) -> None:
        """Count one published batch: outcomes per topic, sizes, and confirm latency.

        Per batch, not per message: outcomes are grouped first, and the latencies go to
        the histogram in one call (this runs for every batch on the hot path)."""
        self.batch_size.observe(len(batch))
        self._publish_seconds_of(connector).observe(seconds)
        if outcomes.count(DELIVERED) == len(batch):  # the usual batch: counted in C
            if len(batch) == 1:
                self._delivered_to(batch[0].topic, connector).inc()
            else:
                grouped = collections.Counter(map(attrgetter("topic"), batch))
                for topic, count in grouped.items():
                    self._delivered_to(topic, connector).inc(count)
            delivered: Sequence[OutboxMessage] = batch
        else:
            self._count_mixed(connector, batch, outcomes)
            delivered = [m for m, o in zip(batch, outcomes, strict=False) if o.delivered]
        starts = _latency_starts(delivered)
        if starts:
            self.confirm_latency.observe_ages(connector, datetime.now(UTC), starts)

    def _publish_seconds_of(self, connector: str) -> Histogram:
        # ``labels()`` takes a lock and checks its arguments on every call: a dict
        # lookup per batch instead (the series are the metric's own, kept by it too)
        series = self._publish_seconds_by.get(connector)
        if series is None:
            series = self._publish_seconds_by[connector] = self.publish_seconds.labels(connector)
        return series

    def _delivered_to(self, topic: str, connector: str) -> Counter:
        series = self._delivered_by.get((topic, connector))
        if series is None:
            series = self.messages.labels(topic, connector, DELIVERED_KIND.value)
            self._delivered_by[(topic, connector)] = series
        return series

    def _count_mixed(
        self, connector: str, batch: Sequence[OutboxMessage], outcomes: Sequence[Outcome]
    ) -> None:
        kinds = (outcome.kind.value for outcome in outcomes)
        grouped = collections.Counter(zip(map(attrgetter("topic"), batch), kinds, strict=False))
        for (topic, kind), count in grouped.items():
            self.messages.labels(topic, connector, kind).inc(count)

    def watch_sessions(self, sessions: Callable[[], Iterable[DbSession]]) -> None:
        """Export the state of the relay's database sessions (one per duty)."""
        self.registry.register(_SessionCollector(sessions))

    def loop_went_round(self) -> None:
        self.last_loop.set(time.time())


def _latency_starts(messages: Sequence[OutboxMessage]) -> list[datetime]:
    """When each message's confirm latency starts: its commit where known, else its
    created_at; messages with neither are left out. Read a whole batch at once in C in
    the usual cases, where every message has a commit time (CDC) or none does (polling)."""
    committed = list(map(_COMMITTED_AT, messages))
    if None not in committed:
        return committed
    created = list(map(_CREATED_AT, messages))
    if committed.count(None) == len(committed) and None not in created:
        return created
    return [start for start in map(_or, committed, created) if start is not None]


def _or(first: datetime | None, second: datetime | None) -> datetime | None:
    return first or second


_COMMITTED_AT = attrgetter("committed_at")
_CREATED_AT = attrgetter("created_at")


class _SessionCollector(Collector):
    def __init__(self, sessions: Callable[[], Iterable[DbSession]]) -> None:
        self._sessions = sessions

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        connected = GaugeMetricFamily(
            "outbox_relay_db_session_connected",
            "1 while the duty's PostgreSQL connection is open.",
            labels=["duty"],
        )
        connects = CounterMetricFamily(
            "outbox_relay_db_session_connects",
            "Connections opened per duty (more than one means reconnects).",
            labels=["duty"],
        )
        discards = CounterMetricFamily(
            "outbox_relay_db_session_discards",
            "Connections thrown away after a failure, per duty.",
            labels=["duty"],
        )
        for session in self._sessions():
            connected.add_metric([session.duty], 1.0 if session.connected else 0.0)
            connects.add_metric([session.duty], session.connects)
            discards.add_metric([session.duty], session.discards)
        return [connected, connects, discards]
