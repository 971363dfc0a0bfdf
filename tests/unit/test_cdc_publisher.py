"""Publishing a run of events: retry from the first failure, park refusals, in order."""

import asyncio
from uuid import uuid4

from relay.cdc.outgoing import Unmappable
from relay.cdc.publisher import BatchPublisher, park_params
from relay.errors import LeaseLostError
from relay.model import OutboxMessage, permanent, retryable
from tests.support.fakes import InMemoryConnector


class RecordingParker:
    def __init__(self):
        self.parked = []

    async def park(self, failures):
        self.parked.extend(message.id for message, _ in failures)

    async def park_unmappable(self, items):
        self.parked.extend(item.id for item in items)


def events(count, key="k"):
    return [OutboxMessage(id=uuid4(), topic="t", key=key, payload=str(i).encode())
            for i in range(count)]


def deliver(connector, items, *, may_publish=lambda: True, stop_after=None):
    parker = RecordingParker()
    publisher = BatchPublisher(connector, parker, timeout=1, retry_base=0.001,
                               retry_cap=0.002, may_publish=may_publish)
    acknowledged = []

    async def go():
        stopping = asyncio.Event()
        if stop_after is not None:
            asyncio.get_running_loop().call_later(stop_after, stopping.set)
        return await publisher.deliver(items, stopping, acknowledged.append)

    return asyncio.run(go()), acknowledged, parker.parked, publisher.stats


def test_a_retryable_failure_retries_from_it_on_in_order():
    left = {"n": 3}
    batch = events(5)

    def flaky_third(message):
        if message.id == batch[2].id and left["n"]:
            left["n"] -= 1
            return retryable("not now")
        return None

    connector = InMemoryConnector(rules=[flaky_third])
    done, acknowledged, parked, stats = deliver(connector, batch)
    assert done and parked == []
    assert [m.id for m in connector.published] == [m.id for m in batch]
    assert acknowledged == [2, 2, 2, 5]  # never past the third before it went through
    assert stats.retries == 3 and stats.published == 5


def test_a_permanent_failure_is_parked_and_the_rest_goes_on():
    batch = events(3, key=None)
    connector = InMemoryConnector(
        rules=[lambda m: permanent("too large") if m.id == batch[1].id else None])
    done, acknowledged, parked, stats = deliver(connector, batch)
    assert done and parked == [batch[1].id] and acknowledged == [3]
    assert [m.id for m in connector.published] == [batch[0].id, batch[2].id]
    assert (stats.published, stats.parked) == (2, 1)


def test_unmappable_events_are_parked_without_publishing():
    bad = Unmappable(uuid4(), b"raw", "no topic", 0)
    batch = [*events(1), bad, *events(1)]
    connector = InMemoryConnector()
    done, acknowledged, parked, _ = deliver(connector, batch)
    assert done and parked == [bad.id] and acknowledged == [3]
    assert len(connector.published) == 2


def test_stopping_during_an_outage_leaves_the_rest_unacknowledged():
    connector = InMemoryConnector(down=True)
    done, acknowledged, _, _ = deliver(connector, events(3), stop_after=0.05)
    assert not done and set(acknowledged) == {0}


def test_a_relay_whose_lease_ran_out_does_not_publish():
    connector = InMemoryConnector()
    try:
        deliver(connector, events(1), may_publish=lambda: False)
    except LeaseLostError:
        pass
    else:
        raise AssertionError("published without a valid lease")
    assert connector.published == []


def test_park_params_keep_json_as_text_and_bytes_as_bytes():
    json_event = OutboxMessage(id=uuid4(), topic="t", key="k", payload=b'{"a":1}')
    raw_event = OutboxMessage(id=uuid4(), topic="t" * 300, key=None, payload=b"\x00",
                              content_type="application/octet-stream")
    params = park_params([(json_event, "e1"), (raw_event, "e2")])
    assert params["payloads"] == ['{"a":1}', None]
    assert params["payload_bytes"] == [None, b"\x00"]
    assert len(params["topics"][1]) == 249
