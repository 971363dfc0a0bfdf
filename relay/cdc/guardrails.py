"""Decide how to start streaming from what the slot and ``cdc_state`` say.

The relay writes ``cdc_state.confirmed_lsn`` before it reports a position to the server,
so under its control the slot is never ahead of it. A slot that is missing, invalidated
(``wal_status = lost``) or ahead (someone else consumed or recreated it) may have
skipped events: the relay says so loudly, recreates the slot and republishes the outbox
rows its watermark does not cover. A slot that is behind (PostgreSQL restarted after a
crash and restored an older position) is harmless: streaming starts from the relay's own
saved position, which is never past an unpublished event. Pure functions.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from relay.cdc.frames import lsn_to_str
from relay.cdc.leader import CdcState
from relay.errors import PermanentError


@dataclass(frozen=True)
class SlotInfo:
    name: str
    plugin: str | None
    slot_type: str
    database: str | None
    active_pid: int | None
    wal_status: str | None
    confirmed_flush: int | None
    restart: int | None
    lag_bytes: int | None = None
    retained_bytes: int | None = None


class Action(enum.Enum):
    STREAM = "stream"  # start from the slot's position
    SNAPSHOT = "snapshot"  # publish pending rows first (no exported snapshot), then stream
    CREATE = "create"  # create the slot, publish pending rows at its snapshot, stream


@dataclass(frozen=True)
class Verdict:
    action: Action
    level: int  # how loudly to say it
    message: str
    drop_slot: bool = False
    covered_xmin: str | None = None  # republish rows the watermark does not cover
    snapshot_lsn: int | None = None  # SNAPSHOT without state: record the slot's position


def assess(slot: SlotInfo | None, state: CdcState, database: str, slot_name: str) -> Verdict:
    """What to do before streaming ``slot_name``; PermanentError if the slot is not ours."""
    if slot is not None:
        _check_ownership(slot, database)
    if slot is None:
        return _missing(state, slot_name)
    if slot.wal_status == "lost":
        return Verdict(
            Action.CREATE, logging.ERROR,
            f"replication slot {slot_name} was invalidated (wal_status=lost): PostgreSQL "
            "removed WAL it still needed (max_slot_wal_keep_size). Recreating it and "
            f"republishing outbox rows newer than the last confirmed position; {_LOSS_NOTE}",
            drop_slot=True, covered_xmin=state.covered_xmin,
        )
    if state.confirmed_lsn is None:
        return Verdict(
            Action.SNAPSHOT, logging.WARNING,
            f"replication slot {slot_name} exists but this relay has no record of streaming "
            "it; publishing every pending outbox row first (some may arrive twice)",
            snapshot_lsn=slot.confirmed_flush,
        )
    return _compare_positions(slot, state, slot_name)


_LOSS_NOTE = (
    "events written with emit() (no table row) or deleted from the table in the meantime "
    "cannot be recovered"
)


def _missing(state: CdcState, slot_name: str) -> Verdict:
    if state.confirmed_lsn is None:
        return Verdict(Action.CREATE, logging.INFO,
                       f"creating replication slot {slot_name}; pending outbox rows are "
                       "published first")
    return Verdict(
        Action.CREATE, logging.ERROR,
        f"replication slot {slot_name} is missing (dropped?); it was last confirmed at "
        f"{lsn_to_str(state.confirmed_lsn)}. Recreating it and republishing outbox rows "
        f"newer than that; {_LOSS_NOTE}",
        covered_xmin=state.covered_xmin,
    )


def _compare_positions(slot: SlotInfo, state: CdcState, slot_name: str) -> Verdict:
    confirmed = state.confirmed_lsn or 0
    flushed = slot.confirmed_flush or 0
    if flushed > confirmed:
        return Verdict(
            Action.CREATE, logging.ERROR,
            f"replication slot {slot_name} is at {lsn_to_str(flushed)}, past the "
            f"{lsn_to_str(confirmed)} this relay confirmed: something else consumed or "
            "recreated it and events in between may have been skipped. Recreating it and "
            f"republishing outbox rows newer than the last confirmed position; {_LOSS_NOTE}",
            drop_slot=True, covered_xmin=state.covered_xmin,
        )
    action = Action.STREAM if state.snapshot_done else Action.SNAPSHOT
    if flushed < confirmed:
        return Verdict(
            action, logging.WARNING,
            f"replication slot {slot_name} is at {lsn_to_str(flushed)}, behind the "
            f"{lsn_to_str(confirmed)} this relay saved (PostgreSQL restarted: before version "
            "17 a slot's position is not always saved at shutdown, and a crash restores an "
            "older one); streaming from the relay's own position",
            covered_xmin=state.covered_xmin,
        )
    if action is Action.SNAPSHOT:
        return Verdict(action, logging.WARNING,
                       f"the snapshot of slot {slot_name} was interrupted; publishing the "
                       "pending outbox rows again (some may arrive twice)",
                       covered_xmin=state.covered_xmin)
    if slot.wal_status == "unreserved":
        return Verdict(action, logging.WARNING,
                       f"replication slot {slot_name} is about to lose WAL it needs "
                       "(wal_status=unreserved): the relay is far behind")
    return Verdict(action, logging.DEBUG,
                   f"replication slot {slot_name} is in order at {lsn_to_str(flushed)}")


def undecodable(slot_name: str, publication: str, state: CdcState) -> Verdict:
    """The slot exists but failed to decode while streaming: its publication is younger
    than the point it decodes from (pgoutput looks the publication up as of each change,
    so one created, or dropped and created again, after the slot cannot be read), and it
    never will be. Made again, after the outbox rows its watermark does not cover."""
    return Verdict(
        Action.CREATE, logging.ERROR,
        f"replication slot {slot_name} cannot be decoded with publication {publication} "
        "(created after the slot, or dropped and created again since). Recreating the slot "
        f"and republishing outbox rows newer than the last confirmed position; {_LOSS_NOTE}",
        drop_slot=True, covered_xmin=state.covered_xmin,
    )


def _check_ownership(slot: SlotInfo, database: str) -> None:
    if slot.slot_type != "logical" or slot.plugin != "pgoutput":
        raise PermanentError(
            f"replication slot {slot.name} is a {slot.slot_type} slot with plugin "
            f"{slot.plugin!r}, not a pgoutput logical slot; choose another name with --cdc-slot"
        )
    if slot.database != database:
        raise PermanentError(
            f"replication slot {slot.name} belongs to database {slot.database!r}, not "
            f"{database!r}; slot names are cluster-wide, choose another with --cdc-slot"
        )
