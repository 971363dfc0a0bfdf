"""A labelled histogram that takes a whole batch of observations at once.

prometheus_client's ``Histogram.observe`` takes a lock and walks the buckets for every
value: at tens of thousands of messages a second that was the relay's largest single
cost after the database. This collector counts a batch under one lock, with a binary
search per value, and exposes the same ``_bucket`` / ``_count`` / ``_sum`` series.
"""

from __future__ import annotations

import bisect
import collections
import threading
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from itertools import repeat

from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

FEW_STARTS = 4  # up to this many, ages are counted one by one (observe_ages)


class _Counts:
    __slots__ = ("buckets", "total")

    def __init__(self, size: int) -> None:
        self.buckets = [0] * size  # per bucket, not cumulative; the last one is +Inf
        self.total = 0.0


class BatchHistogram(Collector):
    """``name`` with one label, observed a batch at a time; thread-safe."""

    def __init__(
        self,
        name: str,
        documentation: str,
        label: str,
        bounds: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        if list(bounds) != sorted(bounds) or not bounds:
            raise ValueError("histogram bounds must be a non-empty increasing sequence")
        self._name = name
        self._documentation = documentation
        self._label = label
        self._bounds = [float(b) for b in bounds]
        # Made once: a timedelta from float seconds costs more than the rest of a
        # small batch's observation.
        self._spans = [timedelta(seconds=bound) for bound in reversed(self._bounds)]
        self._lock = threading.Lock()
        self._series: dict[str, _Counts] = {}
        registry.register(self)

    def observe_many(self, label_value: str, values: Sequence[float]) -> None:
        """Count every value of ``values`` (seconds, or any unit the bounds use)."""
        bounds = self._bounds
        where = [bisect.bisect_left(bounds, value) for value in values]
        total = sum(values)
        with self._lock:
            counts = self._series.get(label_value)
            if counts is None:
                counts = self._series[label_value] = _Counts(len(bounds) + 1)
            for index in where:
                counts.buckets[index] += 1
            counts.total += total

    def observe_ages(self, label_value: str, now: datetime, starts: Sequence[datetime]) -> None:
        """Count the age at ``now`` of each of ``starts``, in seconds (0 for one in the
        future): what ``observe_many`` of those ages would count, without an age per start.

        Each start is placed by comparing it, as a datetime, with ``now`` minus each bound,
        and the ages are summed as timedeltas: per start, a binary search and a subtraction
        in C and no Python bytecode (this runs for every message on the hot path).
        A few starts (a lone transaction's) are cheaper as ages: the cutoffs are a
        datetime per bound."""
        if len(starts) <= FEW_STARTS:
            self.observe_many(label_value, [max((now - s).total_seconds(), 0.0) for s in starts])
            return
        # Ascending: the oldest cutoff (now - the largest bound) first, ``now`` last.
        cutoffs = [now - span for span in self._spans]
        cutoffs.append(now)
        places = collections.Counter(map(bisect.bisect_right, repeat(cutoffs), starts))
        newest = len(self._bounds)
        if places.get(newest + 1):  # some start at or after now: those ages count as 0
            ages = sum((now - start for start in starts if start < now), timedelta())
        else:
            ages = sum(map(now.__sub__, starts), timedelta())
        with self._lock:
            counts = self._series.get(label_value)
            if counts is None:
                counts = self._series[label_value] = _Counts(newest + 1)
            for place, count in places.items():
                # ``place`` cutoffs are at or before the start: the age is at most the
                # bounds of those, and above all the others.
                counts.buckets[newest - min(place, newest)] += count
            counts.total += ages.total_seconds()

    def collect(self) -> Iterable[HistogramMetricFamily]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=[self._label])
        with self._lock:
            snapshot = {k: (list(v.buckets), v.total) for k, v in self._series.items()}
        for label_value, (buckets, total) in sorted(snapshot.items()):
            cumulative, running = [], 0
            bounds = [*map(floatToGoString, self._bounds), "+Inf"]
            for bound, count in zip(bounds, buckets, strict=True):
                running += count
                cumulative.append((bound, float(running)))
            family.add_metric([label_value], cumulative, total)
        return [family]

