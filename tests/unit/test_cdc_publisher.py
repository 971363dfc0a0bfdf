"""Publishing a run of events: an outage retries from the first failure, counting
nothing; anything else the broker did not take is set aside with polling mode's rules,
and a held key's messages wait behind it; always in order."""

import asyncio
from uuid import uuid4

from relay.cdc.outgoing import Unmappable
from relay.cdc.publisher import BatchPublisher, park_params, plan_run
from relay.errors import LeaseLostError
from relay.model import DELIVERED, OutboxMessage, permanent, retryable
from relay.outbox_rows import FailurePolicy
from tests.support.fakes import InMemoryConnector


class RecordingParker:
    def __init__(self):
        self.parked = []

    async def park_unmappable(self, items):
        self.parked.extend(item.id for item in items)


class MemoryAside:
    """The table, as far as the publisher can tell: what was set aside, in order, with
    the acknowledgement written for it; keys stay held once something of theirs is."""

    def __init__(self, held=(), **policy):
        self.turn = asyncio.Lock()
        self.policy = FailurePolicy(**{"retry_base": 0.001, "retry_cap": 0.002, **policy})
        self.held = set(held)
        self.rows = []
        self.acks = []

    def holding(self):
        return bool(self.held)

    def holds(self, key):
        return key in self.held

    async def settle(self, messages, ack):
        assert self.turn.locked()  # never while set-aside rows are being published
        self.rows.extend(messages)
        self.acks.append(ack)
        self.held.update(m.key for m in messages if m.key is not None)


def events(count, key="k"):
    return [
        OutboxMessage(id=uuid4(), topic="t", key=key, payload=str(i).encode()) for i in range(count)
    ]


def deliver(connector, items, *, aside=None, may_publish=lambda: True, stop_after=None):
    parker, aside = RecordingParker(), aside or MemoryAside()
    publisher = BatchPublisher(connector, parker, aside, timeout=1, may_publish=may_publish)
    acknowledged = []

    async def go():
        stopping = asyncio.Event()
        if stop_after is not None:
            asyncio.get_running_loop().call_later(stop_after, stopping.set)
        return await publisher.deliver(items, stopping, acknowledged.append)

    return asyncio.run(go()), acknowledged, parker.parked, aside, publisher.stats


def ids(messages):
    return [m.id for m in messages]


def test_a_message_the_broker_refuses_is_set_aside_with_its_keys_later_ones():
    batch = [*events(3), *events(2, key="other")]
    connector = InMemoryConnector(rules=[lambda m: retryable("nacked") if m is batch[1] else None])
    done, acknowledged, _, aside, stats = deliver(connector, batch)
    assert done and acknowledged == [5]  # the run goes on: the table has the rest of "k"
    assert ids(connector.published) == ids([batch[0], *batch[3:]])
    assert ids(aside.rows) == ids(batch[1:3])  # in order, the failed one first
    (ack,) = aside.acks
    assert ack.failed_seqs == [0] and ack.failed_errors == ["nacked"]  # one attempt
    assert ack.hold_keys == ["k"] and ack.hold_forever == [False]
    assert ack.waiting == 1  # the one behind it waits, no attempt
    assert (stats.published, stats.set_aside, stats.retries) == (3, 2, 0)


def test_a_permanent_refusal_is_a_dead_letter_and_blocks_its_key():
    batch = events(3)
    connector = InMemoryConnector(
        rules=[lambda m: permanent("too large") if m is batch[0] else None]
    )
    done, acknowledged, _, aside, stats = deliver(connector, batch)
    assert done and acknowledged == [3] and connector.published == []
    (ack,) = aside.acks
    assert ack.dead_seqs == [0] and ack.dead_reasons == ["permanent"]
    assert ack.hold_keys == ["k"] and ack.hold_forever == [True]
    assert ids(aside.rows) == ids(batch)
    assert (stats.dead_lettered, stats.set_aside) == (1, 2)


def test_with_on_poison_skip_a_dead_letter_releases_its_key():
    batch = events(1)
    connector = InMemoryConnector(rules=[lambda m: permanent("unroutable")])
    _, _, _, aside, _ = deliver(connector, batch, aside=MemoryAside(on_poison="skip"))
    (ack,) = aside.acks
    assert ack.dead_seqs == [0] and ack.hold_keys == [] and ack.released_keys == ["k"]


def test_the_last_attempt_makes_a_dead_letter():
    batch = events(1)
    connector = InMemoryConnector(rules=[lambda m: retryable("nacked")])
    _, _, _, aside, _ = deliver(connector, batch, aside=MemoryAside(max_attempts=1))
    (ack,) = aside.acks
    assert ack.dead_reasons == ["max_attempts"] and ack.failed_seqs == []


def test_messages_of_a_held_key_wait_in_the_table_without_being_sent():
    batch = [*events(1, key="free"), *events(2, key="held"), *events(1, key="free")]
    connector = InMemoryConnector()
    done, acknowledged, _, aside, stats = deliver(connector, batch, aside=MemoryAside({"held"}))
    assert done and acknowledged == [4]
    assert ids(connector.published) == ids([batch[0], batch[3]])
    assert ids(aside.rows) == ids(batch[1:3])
    (ack,) = aside.acks
    assert not (ack.failed_seqs or ack.dead_seqs or ack.hold_keys)  # waiting is no attempt
    assert stats.set_aside == 2


def test_an_outage_retries_the_run_from_its_first_message_and_counts_nothing():
    batch = events(5)
    connector = InMemoryConnector(down=True)
    calls = {"n": 0}
    publish = connector.publish

    async def down_twice(messages, *, timeout):
        calls["n"] += 1
        connector.down = calls["n"] <= 2
        return await publish(messages, timeout=timeout)

    connector.publish = down_twice
    done, acknowledged, _, aside, stats = deliver(connector, batch)
    assert done and acknowledged == [0, 0, 5]  # never past a message not yet confirmed
    assert ids(connector.published) == ids(batch)
    assert aside.rows == [] and stats.retries == 2


def test_unmappable_events_are_parked_without_publishing():
    bad = Unmappable(uuid4(), b"raw", "no topic", 0)
    batch = [*events(1), bad, *events(1)]
    connector = InMemoryConnector()
    done, acknowledged, parked, _, _ = deliver(connector, batch)
    assert done and parked == [bad.id] and acknowledged == [3]
    assert len(connector.published) == 2


def test_stopping_during_an_outage_leaves_the_rest_unacknowledged():
    connector = InMemoryConnector(down=True)
    done, acknowledged, _, aside, _ = deliver(connector, events(3), stop_after=0.05)
    assert not done and set(acknowledged) == {0} and aside.rows == []


def test_a_relay_whose_lease_ran_out_does_not_publish():
    connector = InMemoryConnector()
    try:
        deliver(connector, events(1), may_publish=lambda: False)
    except LeaseLostError:
        pass
    else:
        raise AssertionError("published without a valid lease")
    assert connector.published == []


POLICY = FailurePolicy(retry_base=0.5, retry_cap=30)


def test_plan_run_in_an_outage_decides_only_the_front_before_the_first_retryable():
    run = events(4)
    down = retryable("connection lost")  # unanswered
    step = plan_run(run, [None, permanent("too large"), down, down], POLICY)
    assert step.done == 2 and ids(step.aside) == ids(run[:2])
    assert step.ack.dead_seqs == [1]  # the held key's message waits, no attempt


def test_plan_run_delivered_runs_set_nothing_aside():
    step = plan_run(events(3), [DELIVERED] * 3, POLICY)
    assert (step.done, step.delivered, step.aside) == (3, 3, [])


def test_park_params_keep_json_as_text_and_bytes_as_bytes():
    json_event = OutboxMessage(id=uuid4(), topic="t", key="k", payload=b'{"a":1}')
    raw_event = OutboxMessage(id=uuid4(), topic="t" * 300, key=None, payload=b"\x00",
                              content_type="application/octet-stream")  # fmt: skip
    params = park_params([(json_event, "e1"), (raw_event, "e2")])
    assert params["payloads"] == ['{"a":1}', None]
    assert params["payload_bytes"] == [None, b"\x00"]
    assert len(params["topics"][1]) == 249
