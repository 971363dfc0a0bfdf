"""Before a shared slot streams: each outbox's verdict, the slot recreated where one
needs it, and the pending rows published first (relay.cdc.group's ``assess`` step).

Every outbox of the slot is judged on its own ``cdc_state``, as a slot of its own would
be (relay.cdc.guardrails), then read the way a shared slot means it
(``shared_verdict``). The slot itself is one: it is recreated when any outbox needs
that, and each outbox then snapshots what its own record does not cover.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

from relay.cdc.frames import lsn_to_str
from relay.cdc.guardrails import Action, SlotInfo, Verdict, assess, undecodable
from relay.cdc.leader import CdcState, Leadership
from relay.cdc.outbox import OutboxCdc
from relay.cdc.settings import CdcNames
from relay.cdc.slots import current_database, drop_slot, ensure_shared_publication, read_slot
from relay.cdc.snapshot import SnapshotRequest
from relay.cdc.stream import ReplicationStream
from relay.logs import CURRENT_OUTBOX

log = logging.getLogger(__name__)

Verdicts = dict[str, tuple[Verdict, CdcState]]


class GroupMember(Protocol):
    """What preparing needs of an outbox of the group (relay.cdc.group.SharedSlotOutbox)."""

    @property
    def schema(self) -> str: ...

    @property
    def names(self) -> CdcNames: ...

    @property
    def label(self) -> str: ...

    @property
    def outbox(self) -> OutboxCdc: ...


async def judge_members(
    leadership: Leadership, members: Sequence[GroupMember], *, undecodable_seen: bool
) -> tuple[SlotInfo | None, Verdicts]:
    """The slot as it is, and each outbox's verdict on it with the state it was read
    from. ``undecodable_seen``: the last session found what it could not decode."""
    names = members[0].names
    await ensure_shared_publication(
        leadership, names.publication, [member.names.table for member in members]
    )
    slot = await read_slot(leadership, names)
    database = await current_database(leadership)
    verdicts: Verdicts = {}
    for member in members:
        state = await leadership.refresh_state(member.schema)
        verdict = shared_verdict(assess(slot, state, database, names.slot), slot, state)
        if undecodable_seen and slot is not None:
            verdict = undecodable(names.slot, names.publication, state)
        _log_as(member, verdict.level, verdict.message)
        verdicts[member.schema] = (verdict, state)
    return slot, verdicts


async def snapshot_requests(
    stream: ReplicationStream,
    leadership: Leadership,
    names: CdcNames,
    slot: SlotInfo | None,
    verdicts: Verdicts,
) -> dict[str, SnapshotRequest]:
    """The snapshot each outbox takes before it streams; the slot (re)created first when
    any outbox's verdict asks for it."""
    if any(verdict.action is Action.CREATE for verdict, _ in verdicts.values()):
        if slot is not None and any(v.drop_slot for v, _ in verdicts.values()):
            await drop_slot(leadership, names, slot)
        consistent, exported = await stream.create_slot(names.slot)
        return {
            schema: SnapshotRequest(
                exported,
                v.covered_xmin if v.action is Action.CREATE else s.covered_xmin,
                consistent,
            )
            for schema, (v, s) in verdicts.items()
        }
    return {
        schema: SnapshotRequest(None, v.covered_xmin, s.confirmed_lsn or v.snapshot_lsn or 0)
        for schema, (v, s) in verdicts.items()
        if v.action is Action.SNAPSHOT
    }


async def take_snapshots(
    members: Sequence[GroupMember],
    verdicts: Verdicts,
    requests: dict[str, SnapshotRequest],
    stopping: asyncio.Event,
) -> dict[str, int] | None:
    """Each outbox's snapshot where it has a request; the position each outbox streams
    from (None: stopped meanwhile)."""
    starts: dict[str, int] = {}
    for member in members:
        request = requests.get(member.schema)
        if request is None:
            starts[member.schema] = verdicts[member.schema][1].confirmed_lsn or 0
            continue
        named = CURRENT_OUTBOX.set(member.label)
        try:
            start = await member.outbox.snapshot_then_stream(request, stopping)
        finally:
            CURRENT_OUTBOX.reset(named)
        if start is None:
            return None
        starts[member.schema] = start
    return starts


def shared_verdict(verdict: Verdict, slot: SlotInfo | None, state: CdcState) -> Verdict:
    """``assess``'s verdict for one outbox of a slot its database's outboxes share.

    Two cases read differently there. An outbox with no record joins the slot: news,
    not a warning. An outbox the slot has moved past was not streamed for a while (left
    out of the relay's outboxes, then back): the others streamed on, so the slot is not
    someone else's doing. Recreating it would republish every outbox's rows; this outbox
    alone republishes the rows its watermark does not cover instead."""
    if slot is None or slot.wal_status == "lost":
        return verdict  # gone or lost for every outbox: (re)create it
    if state.confirmed_lsn is None:
        return replace(
            verdict,
            level=logging.INFO,
            message=(
                f"joining slot {slot.name}; this outbox's pending rows are published first "
                "(those written while it joins may arrive twice)"
            ),
        )
    if verdict.action is not Action.CREATE:
        return verdict
    return Verdict(
        Action.SNAPSHOT,
        logging.WARNING,
        f"slot {slot.name} has moved on to {lsn_to_str(slot.confirmed_flush or 0)} since "
        f"this outbox was last streamed ({lsn_to_str(state.confirmed_lsn)}): republishing "
        "its rows newer than that; events it wrote with emit() in between are not in the "
        "slot any more",
        covered_xmin=state.covered_xmin,
        snapshot_lsn=slot.confirmed_flush,
    )


def _log_as(member: GroupMember, level: int, message: str) -> None:
    named = CURRENT_OUTBOX.set(member.label)
    try:
        log.log(level, message)
    finally:
        CURRENT_OUTBOX.reset(named)
