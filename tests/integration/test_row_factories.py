"""The Python API on the caller's own connection, whatever rows it makes.

Applications often open their connections with ``row_factory=dict_row`` (or a class of
their own); the helpers that take such a connection read their results through cursors
of their own row factory. Each check is read back with plain SQL on a plain connection.
"""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from psycopg.rows import class_row, dict_row, namedtuple_row

import relay
from relay.inbox import AsyncInbox, Inbox
from relay.migrations import applied_versions, migrate

pytestmark = pytest.mark.integration


class Pair:
    def __init__(self, **columns: Any) -> None:
        self.columns = columns


FACTORIES = [
    pytest.param(dict_row, id="dict_row"),
    pytest.param(namedtuple_row, id="namedtuple_row"),
    pytest.param(class_row(Pair), id="class_row"),
]


def written_ids(dsn: str) -> list[UUID]:
    with psycopg.connect(dsn) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM outbox.messages ORDER BY seq")]


@pytest.fixture(params=FACTORIES)
def factory(request: pytest.FixtureRequest) -> Any:
    return request.param


@pytest.fixture
def outbox(db_dsn: str, factory: Any) -> str:
    with psycopg.connect(db_dsn, autocommit=True, row_factory=factory) as conn:
        migrate(conn, "outbox")
        assert max(applied_versions(conn, "outbox")) >= 10
        assert migrate(conn, "outbox") == []  # the versions read back: nothing to apply
    return db_dsn


def test_enqueue_and_enqueue_many_return_the_ids_they_wrote(outbox, factory):
    with psycopg.connect(outbox, row_factory=factory) as conn:
        one = relay.enqueue(conn, topic="t", key="k", payload={"n": 1})
        many = relay.enqueue_many(conn, [{"topic": "t", "payload": n} for n in range(3)])
        single = relay.enqueue_many(conn, [{"topic": "t", "payload": "alone"}])
    assert written_ids(outbox) == [one, *many, *single]


def test_the_asyncio_twins_return_the_ids_they_wrote(outbox, factory):
    async def scenario() -> list[UUID]:
        async with await psycopg.AsyncConnection.connect(outbox, row_factory=factory) as conn:
            one = await relay.enqueue_async(conn, topic="t", key="k", payload=b"\x00")
            many = await relay.enqueue_many_async(conn, [{"topic": "t", "payload": 1}] * 2)
            return [one, *many]

    ids = asyncio.run(scenario())
    assert written_ids(outbox) == ids


def test_the_inbox_replays_a_kept_result(outbox, factory):
    inbox, message_id = Inbox(consumer="c", keep_results=True), uuid4()
    with psycopg.connect(outbox, row_factory=factory, autocommit=True) as conn:
        first = inbox.process(conn, message_id, lambda _: {"charged": 5})
        again = inbox.process(conn, message_id, lambda _: {"charged": 99})
    assert (first.duplicate, again.duplicate) == (False, True)
    assert again.result == {"charged": 5}


def test_the_async_inbox_replays_a_kept_result(outbox, factory):
    inbox, message_id = AsyncInbox(consumer="c", keep_results=True), uuid4()

    async def handled(value: int) -> Any:
        async def handler(_: Any) -> dict[str, int]:
            return {"charged": value}

        async with await psycopg.AsyncConnection.connect(
            outbox, row_factory=factory, autocommit=True
        ) as conn:
            return await inbox.process(conn, message_id, handler)

    first, again = asyncio.run(handled(5)), asyncio.run(handled(99))
    assert (first.duplicate, again.duplicate) == (False, True)
    assert again.result == {"charged": 5}
