"""The queue between stream and broker: positions are confirmed only past delivered events."""

from uuid import uuid4

import pytest

from relay.cdc.outgoing import Outgoing
from relay.model import OutboxMessage
from tests.support.counted import Counted


def event(key="k"):
    return OutboxMessage(id=uuid4(), topic="t", key=key, payload=b"{}")


def test_an_idle_stream_confirms_keepalive_positions_at_once():
    out = Outgoing()
    out.add_mark(100, commit=False)
    assert (out.confirmed_lsn, out.confirmed_commit_lsn) == (100, 0)
    assert out.progressed.is_set()


def test_a_commit_is_confirmed_only_once_its_events_are_delivered():
    out = Outgoing()
    out.add(event())
    out.add(event())
    out.add_mark(200, commit=True)
    out.add_mark(250, commit=False)  # a keepalive behind the transaction
    batch = out.take(10)
    assert len(batch.items) == 2
    assert out.confirmed_lsn == 0
    out.acknowledge(batch, 1)
    assert out.confirmed_lsn == 0  # half a transaction is not a position
    out.acknowledge(batch, 2)
    assert out.confirmed_lsn == 250
    assert out.confirmed_commit_lsn >= 200  # data moved: worth saving at once
    assert out.idle


def test_a_large_transaction_spans_batches_and_confirms_at_its_end():
    out = Outgoing()
    for _ in range(5):
        out.add(event())
    out.add_mark(300, commit=True)
    first = out.take(3)
    out.acknowledge(first, 3)
    assert out.confirmed_lsn == 0
    second = out.take(3)
    assert len(second.items) == 2
    out.acknowledge(second, 2)
    assert out.confirmed_lsn == 300


def test_batches_cross_transactions_and_partial_delivery_confirms_whole_ones():
    out = Outgoing()
    out.add(event())
    out.add_mark(10, commit=True)
    out.add(event())
    out.add(event())
    out.add_mark(20, commit=True)
    batch = out.take(10)
    out.acknowledge(batch, 2)  # the second transaction is half delivered
    assert out.confirmed_lsn == 10
    out.acknowledge(batch, 3)
    assert out.confirmed_lsn == 20


def test_marks_arriving_while_a_batch_is_in_flight_wait_for_it():
    out = Outgoing()
    out.add(event())
    out.add_mark(10, commit=True)
    batch = out.take(10)
    out.add_mark(15, commit=False)
    out.add_mark(17, commit=False)  # folded into one mark
    assert out.confirmed_lsn == 0
    out.acknowledge(batch, 1)
    assert out.confirmed_lsn == 17


def test_backlog_counts_waiting_and_in_flight_events():
    out = Outgoing()
    for _ in range(4):
        out.add(event())
    batch = out.take(3)
    assert out.backlog == 4
    out.acknowledge(batch, 3)
    assert out.backlog == 1
    assert out.ready.is_set()


def test_only_one_batch_is_in_flight():
    out = Outgoing()
    out.add(event())
    out.add(event())
    out.take(1)
    with pytest.raises(RuntimeError, match="in flight"):
        out.take(1)


def test_ready_is_set_exactly_while_events_wait_and_set_once_for_many():
    """The publisher's wake: set by the first event after an empty queue (not again for
    each of a replay's thousands), cleared once a take leaves nothing waiting."""
    out = Outgoing()
    out.ready.set = sets = Counted(out.ready.set)
    for _ in range(1000):
        out.add(event())
    assert out.ready.is_set() and sets.calls == 1
    out.acknowledge(out.take(600), 600)
    assert out.ready.is_set()
    out.acknowledge(out.take(600), 400)
    assert not out.ready.is_set()
    out.add(event())
    assert out.ready.is_set() and sets.calls == 2
