"""SizeLimitedConnector: oversized messages are refused before the broker sees them."""

import asyncio
from uuid import uuid4

import pytest

from relay.connector import Connector
from relay.limits import SizeLimitedConnector, limit_message_size, message_size
from relay.model import OutboxMessage, OutcomeKind
from relay.refusals import HELD_BACK
from tests.support.fakes import InMemoryConnector

D, R, P = OutcomeKind.DELIVERED, OutcomeKind.RETRYABLE, OutcomeKind.PERMANENT


def message(size, key="k", topic="t", headers=None):
    return OutboxMessage(
        id=uuid4(), topic=topic, key=key, payload=b"x" * size, headers=headers or {}
    )


def publish(connector, batch):
    return asyncio.run(connector.publish(batch, timeout=1))


def test_size_counts_payload_key_topic_and_headers_in_utf8_bytes():
    m = OutboxMessage(
        id=uuid4(), topic="tö", key="ké", payload=b"12345", headers={"h": "é€", "n": ""}
    )
    assert message_size(m) == 5 + 3 + 3 + (1 + 5) + 1
    assert message_size(OutboxMessage(id=uuid4(), topic="t", key=None, payload=None)) == 1


def test_oversized_messages_are_permanent_with_their_size_and_the_limit():
    inner = InMemoryConnector()
    limited = SizeLimitedConnector(inner, max_bytes=100)
    big = message(200, key="a")
    outcomes = publish(limited, [message(10, key="b"), big, message(10, key="c")])
    assert [o.kind for o in outcomes] == [D, P, D]
    size = message_size(big)
    assert outcomes[1].error.startswith(f"message is {size} bytes, over the limit of 100")
    assert big.id not in {m.id for m in inner.published}
    assert len(inner.published) == 2


def test_a_message_exactly_at_the_limit_passes():
    m = message(98)  # 98 + key "k" + topic "t"
    assert message_size(m) == 100
    outcomes = publish(SizeLimitedConnector(InMemoryConnector(), 100), [m])
    assert [o.kind for o in outcomes] == [D]


def test_headers_or_multibyte_text_can_be_what_goes_over():
    by_headers = message(10, key="h", headers={"trace": "x" * 100})
    by_key = message(10, key="é" * 50)  # 100 bytes of UTF-8, though 50 characters
    fits = message(10, key="f", headers={"n": "1"})
    outcomes = publish(SizeLimitedConnector(InMemoryConnector(), 100), [by_headers, by_key, fits])
    assert [o.kind for o in outcomes] == [P, P, D]


def test_later_messages_of_an_oversized_key_wait_and_other_keys_flow_in_order():
    inner = InMemoryConnector()
    limited = SizeLimitedConnector(inner, max_bytes=50)
    batch = [
        message(5, key="a"),
        message(500, key="a"),
        message(5, key="b"),
        message(5, key="a"),
        message(5, key=None),
        message(500, key=None),
        message(5, key="b"),
    ]
    outcomes = publish(limited, batch)
    assert [o.kind for o in outcomes] == [D, P, D, R, D, P, D]
    assert outcomes[3] == HELD_BACK
    assert [m.id for m in inner.published] == [batch[i].id for i in (0, 2, 4, 6)]


def test_the_inner_connector_is_not_called_when_every_message_is_refused():
    inner = InMemoryConnector()
    outcomes = publish(SizeLimitedConnector(inner, 10), [message(50, key=None)] * 3)
    assert [o.kind for o in outcomes] == [P, P, P]
    assert inner.batches == 0


def test_inner_failures_keep_their_place_among_refusals():
    inner = InMemoryConnector()
    inner.fail_topic("down")
    batch = [message(5, topic="down", key="x"), message(500, key="y"), message(5, key="z")]
    outcomes = publish(SizeLimitedConnector(inner, 100), batch)
    assert [o.kind for o in outcomes] == [R, P, D]


def test_it_is_a_connector_that_delegates_everything_else():
    inner = InMemoryConnector()
    limited = limit_message_size(inner, 10)
    assert isinstance(limited, Connector)
    assert limited.name == "memory"
    assert limited.published is inner.published
    assert limit_message_size(limited, 10) is limited

    async def lifecycle():
        await limited.open()
        opened = inner.opened
        await limited.close(timeout=1)
        return opened, inner.opened

    assert asyncio.run(lifecycle()) == (True, False)


def test_a_limit_below_one_byte_is_refused():
    with pytest.raises(ValueError):
        SizeLimitedConnector(InMemoryConnector(), 0)
