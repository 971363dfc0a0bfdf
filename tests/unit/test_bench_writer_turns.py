"""The writer workload's turns: with a relay running, a way's transaction is drained while
the next way writes, so no way may always come after the same one."""

from __future__ import annotations

import itertools
from collections import defaultdict

from benchmarks.writer_cost import turn_orders
from benchmarks.writer_ways import ways


def predecessors(turns: list[list[str]]) -> dict[str, set[str]]:
    """For each way, the ways that ran just before it, across turns too."""
    before: dict[str, set[str]] = defaultdict(set)
    sequence = list(itertools.chain.from_iterable(turns))
    for previous, way in itertools.pairwise(sequence):
        before[way].add(previous)
    return before


def test_every_way_follows_most_of_the_others_not_one():
    names = [f"{w.name} {w.style}" for w in ways()]
    turns = list(itertools.islice(turn_orders(names, seed=1000), 200))
    assert all(sorted(turn) == sorted(names) for turn in turns)  # each way once a turn
    # A rotation gives each way two or three predecessors; shuffled, nearly all of them.
    assert min(len(p) for p in predecessors(turns).values()) >= len(names) - 3


def test_the_same_seed_gives_the_same_turns():
    names = ["a", "b", "c", "d"]
    first = list(itertools.islice(turn_orders(names, seed=1), 20))
    assert first == list(itertools.islice(turn_orders(names, seed=1), 20))
    assert first != list(itertools.islice(turn_orders(names, seed=1000), 20))
