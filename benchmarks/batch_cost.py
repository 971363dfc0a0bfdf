"""What the polling relay's own Python costs per message, from claimed row to acknowledgement.

    python -m benchmarks.batch_cost [--batches 200] [--rounds 5] [--relay-source DIR]

No database and no broker: 500-row batches, as the binary claim loads them (~1 KB JSON
payloads, 100 keys), go through what the relay does with each batch besides waiting:
rows to messages (``message_from_claim``), the message size check, the Kafka
connector's produce loop (a real librdkafka producer with no broker, so messages only
queue), one delivery report per message (called here as librdkafka's thread would),
the acknowledgement plan and its array literal, and the batch's metrics. Prints the
best round's µs per message, in total and per stage.

Wall time on a shared 2-core machine wanders; instruction counts do not. For an A/B
that holds, count instructions with callgrind at two sizes and take the difference:

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python -m benchmarks.batch_cost --batches 1 --rounds 1
    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python -m benchmarks.batch_cost --batches 41 --rounds 1

(the "Collected" totals, difference / 20,000 = instructions per message).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from benchmarks.payloads import body_pool, event_key, event_text

BATCH = 500


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--relay-source", help="import relay/ and connectors/ from here")
    return parser.parse_args()


def claimed_rows(count: int) -> list[tuple[Any, ...]]:
    """Rows as the binary claim loads them (relay.outbox_rows.CLAIM_COLUMNS)."""
    pool, now = body_pool(), time.time()
    created = datetime.now(UTC)
    return [
        (n, uuid.uuid4(), "orders", event_key(pool, n), event_text(pool, n, now).encode(),
         None, "application/json", None, created, 0)
        for n in range(count)
    ]  # fmt: skip


class Stages:
    """Wall time per stage name, summed over batches."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - started


class QueueOnlyKafka:
    """The Kafka connector's produce loop and report path, with no broker behind it."""

    name = "kafka"

    def __init__(self, stages: Stages) -> None:
        from connectors.kafka import _ProducerSession

        self.stages = stages
        # No bootstrap servers: librdkafka only queues, and never connects anywhere.
        settings = {
            "bootstrap.servers": "",
            "queue.buffering.max.messages": 10_000_000,
            "queue.buffering.max.kbytes": 2_097_151,
            "message.timeout.ms": 3_600_000,
        }
        self.session = _ProducerSession(settings)

    async def publish(self, batch: Sequence[Any], *, timeout: float) -> list[Any]:
        from connectors.kafka import _BatchDelivery, _produce_batch

        delivery = _BatchDelivery(len(batch), asyncio.get_running_loop())
        deadline = time.monotonic() + timeout
        with self.stages.timed("produce loop"):
            _produce_batch(self.session, batch, delivery, deadline)
        with self.stages.timed("delivery reports"):
            report_all(delivery, len(batch))
        await delivery.done
        return delivery.seal()


def report_all(delivery: Any, count: int) -> None:
    for index in range(count):
        delivery.on_delivery(index, None, None)


async def run_batches(rows: list[tuple[Any, ...]], batches: int, stages: Stages) -> None:
    from relay.limits import limit_message_size
    from relay.metrics import RelayMetrics
    from relay.outbox_rows import (
        FailurePolicy,
        bigint_array,
        message_from_claim,
        plan_acknowledgement,
    )

    connector = QueueOnlyKafka(stages)
    limited = limit_message_size(connector, 1_000_000)
    metrics, policy = RelayMetrics(), FailurePolicy(retry_base=0.5, retry_cap=30)
    began = time.perf_counter()
    for number in range(batches):
        chunk = rows[(number % (len(rows) // BATCH)) * BATCH :][:BATCH]
        with stages.timed("rows to messages"):
            batch = [message_from_claim(row) for row in chunk]
        with stages.timed("publish (all)"):
            outcomes = await limited.publish(batch, timeout=30.0)
        with stages.timed("ack plan"):
            ack = plan_acknowledgement(batch, outcomes, policy)
        with stages.timed("ack array"):
            bigint_array(ack.sent)
        with stages.timed("metrics"):
            metrics.observe_batch("kafka", batch, outcomes, 0.01)
        if len(ack.sent) != len(batch):
            sys.exit(f"{len(ack.sent)} of {len(batch)} messages delivered")
    stages.seconds["total"] = time.perf_counter() - began
    await asyncio.to_thread(connector.session.shutdown, 0.0)


def main() -> None:
    args = parse_args()
    if args.relay_source:
        sys.path.insert(0, args.relay_source)
    import relay

    rows = claimed_rows(20 * BATCH)
    best: Stages | None = None
    for _ in range(args.rounds):
        stages = Stages()
        asyncio.run(run_batches(rows, args.batches, stages))
        if best is None or stages.seconds["total"] < best.seconds["total"]:
            best = stages
    assert best is not None
    messages = args.batches * BATCH
    print(f"{messages:,} messages in {args.batches} batches, best of {args.rounds} "
          f"(relay from {relay.__file__}), µs per message:")  # fmt: skip
    for name, seconds in best.seconds.items():
        print(f"  {name:18} {seconds / messages * 1e6:6.2f}")


if __name__ == "__main__":
    main()
