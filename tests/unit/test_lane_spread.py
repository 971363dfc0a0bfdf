"""relay.poll.spread: lane 0 claims alone until a full batch, every lane until none is full."""

from __future__ import annotations

from relay.poll.spread import LaneSpread


def test_lane_0_claims_every_bucket_until_a_claim_comes_back_full():
    changes = []
    spread = LaneSpread(3, full_batch=100, on_change=lambda: changes.append(spread.spread))
    assert [spread.claims(lane) for lane in range(3)] == [True, False, False]
    assert spread.share(0) == (0, 1) and spread.claiming() == 1
    assert spread.round_done(0, 99) is False and not spread.spread
    assert spread.round_done(0, 100) is True and changes == [True]
    assert [spread.claims(lane) for lane in range(3)] == [True, True, True]
    assert [spread.share(lane) for lane in range(3)] == [(0, 3), (1, 3), (2, 3)]


def test_the_lanes_gather_once_every_lane_claimed_less_than_a_full_batch():
    changes = []
    spread = LaneSpread(2, full_batch=100, on_change=lambda: changes.append(spread.spread))
    spread.round_done(0, 100)
    assert spread.round_done(0, 10) is False  # lane 1 has not claimed since the spread
    assert spread.round_done(0, 100) is False
    assert spread.round_done(1, 5) is False  # lane 0's last round was full
    assert spread.spread
    assert spread.round_done(0, 3) is True and not spread.spread
    assert changes == [True, False] and spread.claiming() == 1


def test_a_single_lane_never_spreads():
    spread = LaneSpread(1, full_batch=10)
    assert spread.round_done(0, 10) is False and spread.share(0) == (0, 1)
