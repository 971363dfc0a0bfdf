"""What the RabbitMQ connector costs this process per message, and how fast it publishes.

    python -m benchmarks.amqp_publish [--amqp-url URL] [--batches 40] [--batch 500]
        [--rounds 3] [--relay-source DIR]

Without ``--amqp-url`` it starts a private RabbitMQ node on free loopback ports and stops
it afterwards. It declares an exchange and a durable queue bound to every routing key
(so nothing comes back as unroutable), publishes ``--batches`` batches of ~1 KB JSON
events one after another with confirms, and prints per round:

- ``write``: CPU of the synchronous part of ``publish`` per message (encoding the
  frames and handing them to the connection);
- ``process``: all CPU of this process per message while publishing, confirms included;
- the rate, which RabbitMQ's own CPU bounds as much as the connector's.

``--relay-source DIR`` imports ``relay`` and ``connectors`` from DIR instead (another
tree, to compare). The queue and exchange are deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amqp-url")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--relay-source", help="import relay/ and connectors/ from here")
    return parser.parse_args()


@contextmanager
def rabbitmq(url: str | None) -> Iterator[str]:
    if url is not None:
        yield url
        return
    from tests.support.services import PrivateRabbitMQ

    with PrivateRabbitMQ() as node:
        yield node.url


def events(count: int) -> list[Any]:
    from benchmarks.payloads import body_pool, event_key, event_text
    from relay.model import OutboxMessage

    pool, created = body_pool(), datetime.now(UTC)
    return [
        OutboxMessage(uuid.uuid4(), "orders.created", event_key(pool, n),
                      event_text(pool, n, created.timestamp()).encode(), created_at=created)
        for n in range(count)
    ]


async def one_round(connector: Any, batches: list[list[Any]]) -> tuple[float, float, float]:
    link = await connector._usable_link(10.0)  # the connector's own link, to time its parts
    messages = sum(len(b) for b in batches)
    write_cpu = 0.0
    cpu, started = time.process_time(), time.perf_counter()
    for batch in batches:
        before = time.process_time()
        state = link.publish(batch)
        write_cpu += time.process_time() - before
        outcomes = await link.wait(state, 30.0)
        if not all(o.delivered for o in outcomes):
            raise RuntimeError(f"not delivered: {outcomes[0]}")
    elapsed = time.perf_counter() - started
    return write_cpu / messages * 1e6, (time.process_time() - cpu) / messages * 1e6, \
        messages / elapsed


async def measure(url: str, args: argparse.Namespace) -> list[tuple[float, float, float]]:
    import pika

    from connectors.rabbitmq import RabbitMQConnector

    exchange = f"bench-amqp-{uuid.uuid4().hex[:8]}"
    connector = RabbitMQConnector(url, exchange=exchange)
    await connector.open()
    admin = pika.BlockingConnection(pika.URLParameters(url))
    channel = admin.channel()
    queue = channel.queue_declare(f"{exchange}.q", durable=True).method.queue
    channel.queue_bind(queue, exchange, routing_key="#")
    try:
        messages = events(args.batches * args.batch)
        batches = [messages[i:i + args.batch] for i in range(0, len(messages), args.batch)]
        await one_round(connector, batches[:4])  # warm-up
        rounds = []
        for _ in range(args.rounds):
            rounds.append(await one_round(connector, batches))
            channel.queue_purge(queue)
        return rounds
    finally:
        await connector.close(timeout=10.0)
        channel.queue_delete(queue)
        channel.exchange_delete(exchange)
        admin.close()


def main() -> None:
    args = parse_args()
    if args.relay_source:
        sys.path.insert(0, args.relay_source)
    import connectors

    print(f"connectors imported from {connectors.__file__}")
    with rabbitmq(args.amqp_url) as url:
        rounds = asyncio.run(measure(url, args))
    for write, process, rate in rounds:
        print(f"  write {write:5.1f} µs/msg   process {process:5.1f} µs/msg   {rate:,.0f} msg/s")
    print(
        f"{args.batches} batches of {args.batch} ~1 KB events, median of {len(rounds)}: "
        f"write {statistics.median(r[0] for r in rounds):.1f} µs/msg, "
        f"process {statistics.median(r[1] for r in rounds):.1f} µs/msg, "
        f"{statistics.median(r[2] for r in rounds):,.0f} msg/s"
    )


if __name__ == "__main__":
    main()
