import asyncio
from uuid import uuid4

from relay.connector import Connector
from relay.model import OutboxMessage, OutcomeKind
from tests.support.fakes import InMemoryConnector


def message(topic="t"):
    return OutboxMessage(id=uuid4(), topic=topic, key="k", payload=b"{}")


def test_in_memory_connector_follows_the_protocol():
    connector = InMemoryConnector()
    assert isinstance(connector, Connector)
    connector.fail_topic("bad", permanently=True)

    async def scenario():
        await connector.open()
        outcomes = await connector.publish([message(), message("bad")], timeout=1)
        connector.down = True
        outage = await connector.publish([message()], timeout=1)
        await connector.close(timeout=1)
        await connector.close(timeout=1)
        return outcomes, outage

    outcomes, outage = asyncio.run(scenario())
    assert [o.kind for o in outcomes] == [OutcomeKind.DELIVERED, OutcomeKind.PERMANENT]
    assert [o.kind for o in outage] == [OutcomeKind.RETRYABLE]
    assert len(connector.published) == 1
