"""How the relay starts, given what the slot and cdc_state say."""

import logging

import pytest

from relay.cdc.guardrails import Action, SlotInfo, assess
from relay.cdc.leader import CdcState
from relay.errors import PermanentError


def slot(confirmed=1000, wal_status="reserved", **changes):
    base = {"name": "s", "plugin": "pgoutput", "slot_type": "logical", "database": "db",
            "active_pid": None, "wal_status": wal_status, "confirmed_flush": confirmed,
            "restart": confirmed}
    return SlotInfo(**{**base, **changes})


STREAMED = CdcState(confirmed_lsn=1000, covered_xmin="700", snapshot_done=True)


def test_first_start_creates_the_slot_and_publishes_all_pending_rows():
    verdict = assess(None, CdcState(), "db", "s")
    assert verdict.action is Action.CREATE and verdict.level == logging.INFO
    assert verdict.covered_xmin is None


def test_a_healthy_slot_streams():
    verdict = assess(slot(), STREAMED, "db", "s")
    assert verdict.action is Action.STREAM and verdict.level == logging.DEBUG


def test_a_missing_slot_is_an_error_and_republishes_what_the_watermark_misses():
    verdict = assess(None, STREAMED, "db", "s")
    assert verdict.action is Action.CREATE and verdict.level == logging.ERROR
    assert verdict.covered_xmin == "700" and "missing" in verdict.message
    assert "emit()" in verdict.message  # says what cannot come back


def test_an_invalidated_slot_is_dropped_and_recreated():
    verdict = assess(slot(wal_status="lost"), STREAMED, "db", "s")
    assert (verdict.action, verdict.drop_slot, verdict.level) == (Action.CREATE, True,
                                                                  logging.ERROR)
    assert "wal_status=lost" in verdict.message


def test_a_slot_ahead_of_the_relay_was_moved_by_someone_else():
    verdict = assess(slot(confirmed=2000), STREAMED, "db", "s")
    assert verdict.action is Action.CREATE and verdict.drop_slot
    assert verdict.level == logging.ERROR and "past" in verdict.message


def test_a_slot_behind_the_relay_streams_from_the_relays_own_position():
    verdict = assess(slot(confirmed=500), STREAMED, "db", "s")
    assert verdict.action is Action.STREAM and verdict.level == logging.WARNING
    assert "relay's own position" in verdict.message


def test_an_interrupted_snapshot_is_run_again():
    state = CdcState(confirmed_lsn=1000, covered_xmin=None, snapshot_done=False)
    assert assess(slot(), state, "db", "s").action is Action.SNAPSHOT


def test_a_slot_this_relay_never_recorded_gets_a_snapshot_at_its_position():
    verdict = assess(slot(confirmed=1234), CdcState(), "db", "s")
    assert (verdict.action, verdict.snapshot_lsn) == (Action.SNAPSHOT, 1234)


@pytest.mark.parametrize("change", [{"database": "other"}, {"plugin": "wal2json"},
                                    {"slot_type": "physical"}])
def test_a_slot_that_is_not_ours_stops_the_relay(change):
    with pytest.raises(PermanentError, match="--cdc-slot"):
        assess(slot(**change), STREAMED, "db", "s")
