"""A slot several outboxes share: the session takes the stream apart by outbox
(relay.cdc.group_session), on pgoutput messages built byte by byte."""

from __future__ import annotations

import asyncio
import logging
import struct
from uuid import uuid4

from relay.cdc import session as session_module
from relay.cdc.changes import ChangeDecoder
from relay.cdc.envelope import encode_envelope
from relay.cdc.group_prepare import shared_verdict
from relay.cdc.group_session import GroupSession, Lane
from relay.cdc.guardrails import Action, SlotInfo, assess
from relay.cdc.leader import CdcState
from relay.cdc.mapping import OutboxTableMapping
from relay.cdc.outgoing import Mark, Outgoing
from relay.cdc.settings import CdcSettings, TableName
from relay.model import OutboxMessage
from tests.unit.test_cdc_changes import COLUMNS, insert_bytes


def relation(relation_id: int, schema: str, table: str = "messages") -> bytes:
    out = b"R" + struct.pack("!I", relation_id) + f"{schema}\0{table}\0".encode() + b"d"
    out += struct.pack("!H", len(COLUMNS))
    for name, oid in COLUMNS:
        out += b"\0" + name.encode() + b"\0" + struct.pack("!Ii", oid, -1)
    return out


def begin(final_lsn: int) -> bytes:
    return b"B" + struct.pack("!QqI", final_lsn, 0, 7)


def commit(final_lsn: int, end_lsn: int) -> bytes:
    return b"C" + struct.pack("!BQQq", 0, final_lsn, end_lsn, 0)


def message(prefix: str, content: bytes, lsn: int, *, transactional: bool = True) -> bytes:
    head = b"M" + struct.pack("!BQ", int(transactional), lsn) + prefix.encode() + b"\0"
    return head + struct.pack("!I", len(content)) + content


def lane(schema: str, start_lsn: int) -> Lane:
    names = CdcSettings(shared=True).resolve(schema)
    outgoing = Outgoing()
    mapping = OutboxTableMapping(TableName(schema, "messages"))
    decoder = ChangeDecoder(names, mapping, outgoing)
    return Lane(names, decoder, outgoing, publisher=None, start_lsn=start_lsn)  # type: ignore[arg-type]


def queued(lane: Lane) -> list[object]:
    return [
        ("event", item.position) if isinstance(item, OutboxMessage) else item
        for item in lane.outgoing._queue
    ]


class FakeLeadership:
    """Records the positions saved (the real one writes cdc_state)."""

    def __init__(self, *, together_fails: bool = False) -> None:
        self.saved: list[tuple[str, str]] = []
        self.queries = 0  # what went to the database: one a query of several statements
        self.together_fails = together_fails
        self.rendered = 0  # statements bound from their text
        self.lost = asyncio.Event()

    async def guarded(self, statement, params, *, schema=None):
        self.queries += 1
        self.saved.append((schema, params["lsn"]))

    async def render(self, statement, params):
        self.rendered += 1
        return statement.as_string(None).replace("%(lsn)s", f"'{params['lsn']}'")

    async def guarded_texts(self, texts):
        self.queries += 1
        if self.together_fails:  # one statement failed: the query wrote nothing
            return False
        self.saved.extend((_schema_of(text), _lsn_of(text)) for text in texts)
        return True


def _schema_of(text: str) -> str:
    return text.split('"')[1]  # UPDATE "a".cdc_state ...


def _lsn_of(text: str) -> str:
    return text.split("confirmed_lsn = '")[1].split("'")[0]


class FakeStream:
    def __init__(self) -> None:
        self.statuses: list[tuple[int, int]] = []

    async def send_status(self, written: int, flushed: int) -> None:
        self.statuses.append((written, flushed))


def session(*lanes: Lane) -> tuple[GroupSession, FakeLeadership, FakeStream]:
    leadership, stream = FakeLeadership(), FakeStream()
    group = GroupSession(stream, lanes, leadership, batch_size=10, linger=0)  # type: ignore[arg-type]
    return group, leadership, stream


def test_each_outbox_gets_its_own_changes_and_the_commits_of_its_transactions():
    a, b = lane("a", 0), lane("b", 0)
    group, _, _ = session(a, b)
    for payload in (relation(1, "a"), relation(2, "b"), relation(3, "c"), relation(4, "a", "other"),
                    begin(500), insert_bytes(1), insert_bytes(3), insert_bytes(4), commit(500, 510),
                    begin(600), insert_bytes(2), insert_bytes(1), commit(600, 610),
                    begin(700), insert_bytes(3), commit(700, 710)):
        group._route(payload)
    assert queued(a) == [("event", 500), Mark(510, True), ("event", 600), Mark(610, True)]
    assert queued(b) == [("event", 600), Mark(610, True)]
    assert group.boundary_lsn == 710


def test_a_transaction_an_outbox_published_before_is_skipped_for_it_alone():
    a, b = lane("a", 0), lane("b", 1000)  # b saved 1000 in an earlier session
    group, _, _ = session(a, b)
    for payload in (relation(1, "a"), relation(2, "b"),
                    begin(900), insert_bytes(1), insert_bytes(2), commit(900, 910),
                    begin(1000), insert_bytes(2), commit(1000, 1010)):
        group._route(payload)
    assert queued(a) == [("event", 900), Mark(910, True)]
    assert queued(b) == [("event", 1000), Mark(1010, True)]


def test_logical_messages_go_to_the_outbox_of_their_prefix():
    a, b = lane("a", 0), lane("b", 0)
    group, _, _ = session(a, b)
    envelope = encode_envelope(
        OutboxMessage(id=uuid4(), topic="t", key="k", payload=b'{"n": 1}'), body_kind="json")
    for payload in (begin(500), message("outbox-relay:b", envelope, 505),
                    message("outbox-relay:c", envelope, 506), commit(500, 510),
                    message("outbox-relay:a", envelope, 520, transactional=False)):
        group._route(payload)
    assert queued(b) == [("event", 500), Mark(510, True)]
    assert queued(a) == [("event", 520), Mark(521, True)]


def test_the_slot_is_confirmed_to_where_every_outbox_has_saved():
    a, b = lane("a", 0), lane("b", 0)
    group, leadership, stream = session(a, b)
    for payload in (relation(1, "a"), relation(2, "b"),
                    begin(500), insert_bytes(1), commit(500, 510),
                    begin(600), insert_bytes(2), commit(600, 610)):
        group._route(payload)
    batch = a.outgoing.take(10)  # a's event delivered; b's still waits for the broker
    assert batch is not None
    a.outgoing.acknowledge(batch, 1)
    asyncio.run(group._save_and_report())
    # Nothing of a waits any more: it follows the stream to the last commit read (610).
    assert leadership.saved == [("a", "0/262")]
    assert stream.statuses[-1][1] == 0  # b has saved nothing: the slot stays
    batch = b.outgoing.take(10)
    assert batch is not None
    b.outgoing.acknowledge(batch, 1)
    asyncio.run(group._save_and_report())
    assert leadership.saved[1:] == [("b", "0/262")]
    assert stream.statuses[-1][1] == 610


def idle_lanes_past_their_save_interval() -> tuple[GroupSession, FakeLeadership, FakeStream]:
    lanes = [lane(schema, 0) for schema in ("a", "b", "c")]
    group, leadership, stream = session(*lanes)
    group._route(begin(500))
    group._route(commit(500, 4096))  # another table's transaction: no outbox's
    return group, leadership, stream


def test_idle_outboxes_save_their_positions_in_one_query(monkeypatch):
    monkeypatch.setattr(session_module, "IDLE_SAVE_INTERVAL", 0.0)
    group, leadership, stream = idle_lanes_past_their_save_interval()
    asyncio.run(group._save_and_report())
    assert leadership.queries == 1
    assert leadership.saved == [("a", "0/1000"), ("b", "0/1000"), ("c", "0/1000")]
    assert stream.statuses[-1][1] == 4096


def test_outboxes_save_one_by_one_when_their_query_fails(monkeypatch):
    monkeypatch.setattr(session_module, "IDLE_SAVE_INTERVAL", 0.0)
    group, leadership, stream = idle_lanes_past_their_save_interval()
    leadership.together_fails = True  # a dropped outbox's statement, say
    asyncio.run(group._save_and_report())
    assert leadership.queries == 4
    assert leadership.saved == [("a", "0/1000"), ("b", "0/1000"), ("c", "0/1000")]
    assert stream.statuses[-1][1] == 4096


def test_an_outbox_in_the_middle_of_a_transaction_does_not_follow_the_stream():
    a, b = lane("a", 0), lane("b", 0)
    group, leadership, stream = session(a, b)
    for payload in (relation(1, "a"), relation(2, "b"),
                    begin(500), insert_bytes(2), commit(500, 510), begin(600)):
        group._route(payload)
    asyncio.run(group._save_and_report())
    assert leadership.saved == []  # a is idle, but a transaction is being read
    assert stream.statuses[-1][1] == 0


def keepalive(wal_end: int) -> memoryview:
    return memoryview(b"k" + struct.pack("!QqB", wal_end, 0, 0))


def test_a_keepalive_queues_behind_a_busy_outbox_and_an_idle_one_follows_it_when_saving():
    a, b = lane("a", 0), lane("b", 0)
    group, leadership, stream = session(a, b)
    for payload in (relation(1, "a"), begin(500), insert_bytes(1), commit(500, 510)):
        group._route(payload)
    group._take(keepalive(2000))
    assert queued(a) == [("event", 500), Mark(2000, True)]  # behind its event, merged
    assert queued(b) == [] and b.outgoing.confirmed_lsn == 0  # not marked one by one
    asyncio.run(group._save_and_report())
    assert b.outgoing.confirmed_lsn == 2000 and leadership.saved == [("b", "0/7D0")]
    assert stream.statuses[-1][1] == 0  # a's event still waits for the broker
    group._route(begin(3000))
    group._take(keepalive(4000))  # in the middle of a transaction: no boundary
    asyncio.run(group._save_and_report())
    assert b.outgoing.confirmed_lsn == 2000 and group.boundary_lsn == 2000


def test_a_keepalive_queues_behind_an_outbox_that_an_emit_outside_a_transaction_made_busy():
    a, b = lane("a", 0), lane("b", 0)
    group, _, _ = session(a, b)
    envelope = encode_envelope(
        OutboxMessage(id=uuid4(), topic="t", key="k", payload=b'{"n": 1}'), body_kind="json")
    group._route(message("outbox-relay:b", envelope, 520, transactional=False))
    group._take(keepalive(2000))
    assert queued(b) == [("event", 520), Mark(2000, True)]
    assert queued(a) == []


def slot_at(flush: int, wal_status: str = "reserved") -> SlotInfo:
    return SlotInfo("outbox_relay__shared", "pgoutput", "logical", "db", None, wal_status,
                    flush, flush)


def test_an_outbox_back_in_a_shared_slot_republishes_its_own_rows_without_a_new_slot():
    state = CdcState(confirmed_lsn=100, covered_xmin="42", snapshot_done=True)
    slot = slot_at(500)
    verdict = shared_verdict(assess(slot, state, "db", slot.name), slot, state)
    assert (verdict.action, verdict.drop_slot) == (Action.SNAPSHOT, False)
    assert (verdict.covered_xmin, verdict.snapshot_lsn) == ("42", 500)
    assert "emit()" in verdict.message  # what cannot come back is said


def test_a_shared_slot_that_is_lost_or_missing_is_made_again_for_every_outbox():
    state = CdcState(confirmed_lsn=100, covered_xmin="42", snapshot_done=True)
    lost = slot_at(50, "lost")
    for slot in (lost, None):
        verdict = shared_verdict(assess(slot, state, "db", "outbox_relay__shared"), slot, state)
        assert verdict.action is Action.CREATE


def test_an_outbox_joining_a_shared_slot_is_news_not_a_warning():
    slot, state = slot_at(500), CdcState()
    verdict = shared_verdict(assess(slot, state, "db", slot.name), slot, state)
    assert (verdict.action, verdict.level) == (Action.SNAPSHOT, logging.INFO)
    in_order = CdcState(confirmed_lsn=500, covered_xmin="42", snapshot_done=True)
    assert shared_verdict(assess(slot, in_order, "db", slot.name), slot, in_order).action \
        is Action.STREAM


def test_an_outbox_with_too_much_waiting_stops_the_reading_in_or_after_its_transaction(
    monkeypatch,
):
    from relay.cdc import group_session

    monkeypatch.setattr(group_session, "MIN_BACKLOG", 3)
    a, b, c = lane("a", 0), lane("b", 0), lane("c", 0)
    group = GroupSession(FakeStream(), [a, b, c], FakeLeadership(),  # type: ignore[arg-type]
                         batch_size=1, linger=0)
    for payload in (relation(1, "a"), relation(2, "b"), begin(500), insert_bytes(2),
                    commit(500, 510), begin(600), insert_bytes(1), insert_bytes(1)):
        group._route(payload)
    assert group._no_space() is None  # b has one event waiting, a two
    group._route(insert_bytes(1))
    assert group._no_space() is a.space  # still in a's transaction
    group._route(commit(600, 610))
    group._take(keepalive(700))
    assert group._no_space() is a.space
    batch = a.outgoing.take(10)
    assert batch is not None
    a.outgoing.acknowledge(batch, len(batch.items))
    assert group._no_space() is None


def test_each_outbox_s_save_is_bound_once_and_only_its_position_changes(monkeypatch):
    monkeypatch.setattr(session_module, "IDLE_SAVE_INTERVAL", 0.0)
    group, leadership, _ = idle_lanes_past_their_save_interval()
    asyncio.run(group._save_and_report())
    group._route(begin(5000))
    group._route(commit(5000, 8192))
    asyncio.run(group._save_and_report())
    assert leadership.queries == 2 and leadership.rendered == 3
    assert leadership.saved[3:] == [("a", "0/2000"), ("b", "0/2000"), ("c", "0/2000")]
