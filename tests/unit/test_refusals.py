"""BatchRefusals: a message a connector refuses before sending holds back its key's later
messages in the batch, and only those."""

import itertools
from uuid import uuid4

from relay.model import DELIVERED, OutboxMessage, permanent, retryable
from relay.refusals import HELD_BACK, BatchRefusals


def message(key):
    return OutboxMessage(id=uuid4(), topic="t", key=key, payload=b"x")


def walk(batch, refused_indices):
    """What a connector does: send what ``sendable()`` yields unless it refuses it."""
    refusals = BatchRefusals(batch)
    sent = []
    for index, _ in refusals.sendable():
        if index in refused_indices:
            refusals.refuse(index, permanent("cannot carry it"))
        else:
            sent.append(index)
    return refusals, sent


def test_a_refusal_holds_back_the_later_messages_of_its_key_only():
    batch = [message(k) for k in ("a", "a", "b", "a", None, None, "b", "c")]
    refusals, sent = walk(batch, refused_indices={1, 4})
    assert sent == [0, 2, 5, 6, 7]  # "a" after index 1 waits; a null key holds nothing back
    assert refusals.outcomes == {
        1: permanent("cannot carry it"),
        3: HELD_BACK,
        4: permanent("cannot carry it"),
    }
    assert HELD_BACK.error == "behind a refused message of the same key"
    assert [m.id for m in refusals.unsettled()] == [batch[i].id for i in sent]


def test_merge_puts_every_outcome_in_batch_order():
    batch = [message(k) for k in ("a", "a", "b", "a")]
    refusals, sent = walk(batch, refused_indices={1})
    assert sent == [0, 2]
    from_broker = [DELIVERED, retryable("nacked", answered=True)]  # for indices 0 and 2
    assert refusals.merge(from_broker) == [
        DELIVERED,
        permanent("cannot carry it"),
        retryable("nacked", answered=True),
        HELD_BACK,
    ]


def test_nothing_refused_passes_the_batch_and_outcomes_through():
    batch = [message("a"), message("a")]
    refusals, sent = walk(batch, refused_indices=set())
    assert sent == [0, 1]
    assert refusals.unsettled() == batch
    assert refusals.merge([DELIVERED, DELIVERED]) == [DELIVERED, DELIVERED]


def test_a_refusal_of_the_first_message_holds_back_the_whole_key():
    batch = [message("a") for _ in range(5)]
    refusals, sent = walk(batch, refused_indices={0})
    assert sent == []
    assert refusals.unsettled() == []
    assert list(refusals.outcomes.values())[1:] == [HELD_BACK] * 4


def test_merge_takes_only_one_outcome_per_unsettled_message():
    # A connector cut short mid-batch gives every message it did not send the same outcome.
    lost = retryable("connection lost")
    for refused in (set(), {1}):
        refusals, _ = walk([message("a"), message("b"), message("c")], refused)
        merged = refusals.merge(itertools.repeat(lost))
        assert len(merged) == 3 and merged.count(lost) == 3 - len(refused)
