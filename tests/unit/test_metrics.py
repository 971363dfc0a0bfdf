"""RelayMetrics.observe_batch: the per-batch counts and confirm latencies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4
from zoneinfo import ZoneInfo

from relay.metrics import RelayMetrics
from relay.model import DELIVERED, OutboxMessage, Outcome, OutcomeKind, permanent, retryable


def message(topic: str, age: float, tz=UTC) -> OutboxMessage:
    created = datetime.now(tz) - timedelta(seconds=age)
    return OutboxMessage(uuid4(), topic, "k", b"{}", created_at=created)


def count(metrics: RelayMetrics, topic: str, outcome: str) -> float | None:
    labels = {"topic": topic, "connector": "kafka", "outcome": outcome}
    return metrics.registry.get_sample_value("outbox_relay_messages_total", labels)


def latency(metrics: RelayMetrics, suffix: str, le: str | None = None) -> float | None:
    labels = {"connector": "kafka", **({"le": le} if le else {})}
    name = f"outbox_relay_commit_to_confirm_seconds_{suffix}"
    return metrics.registry.get_sample_value(name, labels)


def test_a_fully_delivered_batch_counts_per_topic_and_times_every_message():
    metrics = RelayMetrics()
    batch = [message("a", 0.0), message("b", 0.0), message("a", 3.0, ZoneInfo("Europe/Paris"))]
    metrics.observe_batch("kafka", batch, [DELIVERED, DELIVERED, DELIVERED], 0.01)
    assert (count(metrics, "a", "delivered"), count(metrics, "b", "delivered")) == (2, 1)
    assert latency(metrics, "count") == 3
    assert latency(metrics, "bucket", "0.1") == 2 and latency(metrics, "bucket", "5.0") == 3


def test_batches_of_one_message_count_per_topic_and_time_each():
    """The light-traffic path: one message a batch, the series looked up once."""
    metrics = RelayMetrics()
    for topic, age in (("a", 0.0), ("b", 3.0), ("a", 0.0), ("a", 0.0)):
        metrics.observe_batch("kafka", [message(topic, age)], [DELIVERED], 0.01)
    metrics.observe_batch("kafka", [message("a", 0.0)], [retryable("down")], 0.01)
    assert (count(metrics, "a", "delivered"), count(metrics, "b", "delivered")) == (3, 1)
    assert count(metrics, "a", "retryable") == 1
    assert latency(metrics, "count") == 4
    assert latency(metrics, "bucket", "0.1") == 3 and latency(metrics, "bucket", "5.0") == 4
    publishes = metrics.registry.get_sample_value(
        "outbox_relay_publish_seconds_count", {"connector": "kafka"}
    )
    assert publishes == 5


def test_a_mixed_batch_counts_each_outcome_and_times_only_the_delivered():
    metrics = RelayMetrics()
    batch = [message("a", 1.0), message("a", 0.0), message("b", 0.0), message("b", 0.0)]
    outcomes = [
        Outcome(OutcomeKind.DELIVERED),  # equal to DELIVERED, not the same object
        retryable("timed out"),
        permanent("too large"),
        DELIVERED,
    ]
    metrics.observe_batch("kafka", batch, outcomes, 0.01)
    assert count(metrics, "a", "delivered") == 1 and count(metrics, "a", "retryable") == 1
    assert count(metrics, "b", "permanent") == 1 and count(metrics, "b", "delivered") == 1
    assert latency(metrics, "count") == 2
    assert latency(metrics, "bucket", "0.5") == 1  # the 1 s old one lands above


def test_confirm_latency_can_be_read_against_a_15_or_20_ms_objective(monkeypatch):
    # The clock stands still while the batch is observed: ages 0.1 ms past a bound must
    # land above it however long the machine takes between building and observing.
    observed_at = datetime.now(UTC)

    class StoppedClock(datetime):
        @classmethod
        def now(cls, tz=None):
            return observed_at

    monkeypatch.setattr("relay.metrics.datetime", StoppedClock)
    metrics = RelayMetrics()
    created = [observed_at - timedelta(seconds=age) for age in (0.0101, 0.0151, 0.0201)]
    batch = [OutboxMessage(uuid4(), "a", "k", b"{}", created_at=at) for at in created]
    metrics.observe_batch("kafka", batch, [DELIVERED] * 3, 0.01)
    assert latency(metrics, "bucket", "0.015") == 1
    assert latency(metrics, "bucket", "0.02") == 2
    assert latency(metrics, "bucket", "0.025") == 3


def test_the_commit_timestamp_when_known_starts_the_confirm_latency():
    # CDC knows when the transaction committed; created_at is when it started
    metrics = RelayMetrics()
    long_transaction = message("a", 10.0)
    long_transaction.committed_at = datetime.now(UTC)
    metrics.observe_batch("kafka", [long_transaction, message("a", 10.0)], [DELIVERED] * 2, 0.01)
    assert latency(metrics, "bucket", "0.1") == 1  # from its commit
    assert latency(metrics, "bucket", "5.0") == 1 and latency(metrics, "bucket", "10.0") == 1
