from datetime import UTC, datetime, timedelta, timezone

import pytest
from prometheus_client import CollectorRegistry, Histogram

from relay.latency_histogram import BatchHistogram

BOUNDS = (0.005, 0.1, 1, 30)
VALUES = [0.0, 0.005, 0.0051, 0.1, 0.5, 1.0, 29.9, 31.0, 1000.0]


def test_a_batch_exposes_what_observing_one_by_one_would():
    ours, reference = CollectorRegistry(), CollectorRegistry()
    batch = BatchHistogram("lat_seconds", "doc", "connector", BOUNDS, registry=ours)
    single = Histogram("lat_seconds", "doc", ["connector"], buckets=BOUNDS, registry=reference)
    batch.observe_many("kafka", VALUES[:4])
    batch.observe_many("kafka", VALUES[4:])
    for value in VALUES:
        single.labels("kafka").observe(value)
    for le in ("0.005", "0.1", "1.0", "30.0", "+Inf"):
        labels = {"connector": "kafka", "le": le}
        assert ours.get_sample_value("lat_seconds_bucket", labels) == reference.get_sample_value(
            "lat_seconds_bucket", labels
        ), le
    for sample in ("lat_seconds_count", "lat_seconds_sum"):
        assert ours.get_sample_value(sample, {"connector": "kafka"}) == pytest.approx(
            reference.get_sample_value(sample, {"connector": "kafka"})
        )


def test_bounds_must_increase():
    with pytest.raises(ValueError, match="increasing"):
        BatchHistogram("x", "doc", "l", (1, 0.5), registry=CollectorRegistry())


def _series(registry: CollectorRegistry) -> dict[str, float | None]:
    labels = {"connector": "kafka"}
    found: dict[str, float | None] = {
        le: registry.get_sample_value("lat_seconds_bucket", {**labels, "le": le})
        for le in ("0.005", "0.1", "1.0", "30.0", "+Inf")
    }
    found["count"] = registry.get_sample_value("lat_seconds_count", labels)
    found["sum"] = registry.get_sample_value("lat_seconds_sum", labels)
    return found


@pytest.mark.parametrize("split", [(5,), tuple(range(1, 14))], ids=["batches", "one by one"])
@pytest.mark.parametrize("zone", [UTC, timezone(timedelta(hours=-5))])
def test_ages_count_as_their_values_would(zone, split):
    # Ages on and next to each bound, beyond the last one, and starts in the future
    # (a relay whose clock is behind the database's), which count as 0.
    now = datetime(2026, 12, 5, 6, 0, tzinfo=UTC)
    ages = [0.0, 0.004999, 0.005, 0.005001, 0.1, 0.100001, 0.7, 1.0, 29.999999, 30.0, 31.0,
            1000.0, -0.002, -3.0]
    starts = [(now - timedelta(seconds=age)).astimezone(zone) for age in ages]
    ours, reference = CollectorRegistry(), CollectorRegistry()
    by_age = BatchHistogram("lat_seconds", "doc", "connector", BOUNDS, registry=ours)
    by_value = BatchHistogram("lat_seconds", "doc", "connector", BOUNDS, registry=reference)
    # in batches of more than FEW_STARTS (the cutoffs), or one at a time (the ages)
    for begin, end in zip((0, *split), (*split, len(starts)), strict=True):
        by_age.observe_ages("kafka", now, starts[begin:end])
    by_value.observe_many("kafka", [max(0.0, age) for age in ages])
    found, expected = _series(ours), _series(reference)
    assert found.pop("sum") == pytest.approx(expected.pop("sum"))
    assert found == expected
    assert found["0.005"] == 5  # 0, 0.004999, 0.005 and the two in the future


def test_ages_of_one_transaction_sum_like_the_rest():
    now = datetime.now(UTC)
    commit = now - timedelta(milliseconds=12)
    registry = CollectorRegistry()
    histogram = BatchHistogram("lat_seconds", "doc", "connector", BOUNDS, registry=registry)
    histogram.observe_ages("kafka", now, [commit] * 2048)
    assert _series(registry)["0.1"] == 2048 and _series(registry)["0.005"] == 0
    assert _series(registry)["sum"] == pytest.approx(2048 * 0.012)


def test_observing_ages_builds_no_timedelta_from_seconds(monkeypatch):
    """The bounds' timedeltas are made once: one from float seconds costs ~1.5 µs, and
    a batch's observation would make one per bound, more than the rest of it."""
    import relay.latency_histogram as module

    histogram = BatchHistogram("age_seconds", "doc", "connector", BOUNDS,
                               registry=CollectorRegistry())

    def no_seconds(*args, **kwargs):
        assert not args and not kwargs, "a timedelta built per observation"
        return timedelta()

    monkeypatch.setattr(module, "timedelta", no_seconds)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    histogram.observe_ages("kafka", now, [now - timedelta(seconds=0.05)])
    monkeypatch.undo()
    counts = histogram._series["kafka"]
    assert counts.buckets == [0, 1, 0, 0, 0]
    assert counts.total == pytest.approx(0.05)
