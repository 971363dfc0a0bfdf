"""How many messages per second one KafkaConnector publishes, one batch at a time.

    .venv/bin/python benchmarks/kafka_publish.py [--bootstrap HOST:PORT] [--messages 200000]
        [--batch 500] [--size 1024] [--partitions 1] [--concurrency 1] [--option K=V ...]

Without ``--bootstrap`` it starts a private Tansu broker (in-memory storage) on a free
loopback port and stops it afterwards. Payloads are ``--size``-byte JSON documents that
differ per message (compressible, like real outbox payloads). ``--concurrency`` publishes
that many batches at once from one connector (the relay publishes one at a time per
worker). ``--option`` passes a librdkafka property through, as ``kafka_options`` would.
The figure is the median of the rounds; the broker, client and benchmark share
the machine, so it is a lower bound for the connector alone.
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connectors.kafka import KafkaConnector
from connectors.kafka_settings import KafkaSettings
from relay.model import OutboxMessage
from tests.support.kafka_harness import KafkaHarness
from tests.support.services import TansuBroker

ROUNDS = 5


@contextmanager
def broker(bootstrap: str | None) -> Iterator[str]:
    if bootstrap is not None:
        yield bootstrap
        return
    with TansuBroker() as tansu:
        yield tansu.bootstrap


def payload(i: int, size: int) -> bytes:
    head = b'{"order_id":%d,"status":"created","note":"' % i
    return head + b"x" * max(size - len(head) - 2, 0) + b'"}'


def batches(topic: str, args: argparse.Namespace) -> list[list[OutboxMessage]]:
    messages = [
        OutboxMessage(uuid.uuid4(), topic, f"order-{i % 1000}", payload(i, args.size))
        for i in range(args.messages // ROUNDS)
    ]
    return [messages[i : i + args.batch] for i in range(0, len(messages), args.batch)]


async def one_round(
    connector: KafkaConnector, work: list[list[OutboxMessage]], lanes: int
) -> float:
    async def lane(mine: list[list[OutboxMessage]]) -> None:
        for batch in mine:
            outcomes = await connector.publish(batch, timeout=30.0)
            if not all(o.delivered for o in outcomes):
                raise RuntimeError(f"not delivered: {outcomes[0]}")

    started = time.perf_counter()
    await asyncio.gather(*(lane(work[i::lanes]) for i in range(lanes)))
    return sum(len(b) for b in work) / (time.perf_counter() - started)


async def measure(bootstrap: str, args: argparse.Namespace) -> list[float]:
    topic = KafkaHarness(bootstrap).new_topic(partitions=args.partitions)
    options = dict(option.split("=", 1) for option in args.option)
    settings = KafkaSettings.parse({"bootstrap.servers": bootstrap, **options})
    connector = KafkaConnector(settings, publish_timeout=30.0)
    await connector.open()
    try:
        work = batches(topic, args)
        await one_round(connector, work[:4], 1)  # warm-up: connections, metadata
        return [await one_round(connector, work, args.concurrency) for _ in range(ROUNDS)]
    finally:
        await connector.close(timeout=30.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap")
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    with broker(args.bootstrap) as bootstrap:
        rates = asyncio.run(measure(bootstrap, args))
    rounds = ", ".join(f"{r:,.0f}" for r in rates)
    print(
        f"{args.size} B payloads, batches of {args.batch}, {args.partitions} partition(s), "
        f"{args.concurrency} batch(es) at once, options {args.option}: "
        f"median {statistics.median(rates):,.0f} msg/s (rounds: {rounds})"
    )


if __name__ == "__main__":
    main()
