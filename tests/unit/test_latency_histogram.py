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
