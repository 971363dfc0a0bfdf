"""What every fault scenario shares: a workload in the outbox, relays as subprocesses,
and the verdict (lost, duplicated, reordered, recovery time) read back from the broker."""

from __future__ import annotations

import itertools
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
import psycopg

from tests.support.harness import Received
from tests.support.written_log import sent_and_pending, written_rows

# Quick timings so that a fault and its recovery fit in seconds, not minutes.
RELAY_TIMINGS = [
    "--lease-ttl", "3s",
    "--publish-timeout", "1s",
    "--poll-interval", "500ms",
    "--retry-base", "100ms",
    "--retry-cap", "2s",
    "--shutdown-timeout", "10s",
    "--batch-size", "100",
    "--claim-lanes", "2",
]  # fmt: skip
# No --metrics-port here: a test that wants the probes gives one, and a flag given twice
# is refused; without it, the test environment's OUTBOX_RELAY_METRICS_PORT=0 applies.


@dataclass
class Figures:
    """One scenario's result, as reported in the JSON summary."""

    scenario: str
    written: int = 0
    received: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    dead_letters: int = 0
    recovery_seconds: float | None = None
    drain_seconds: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Workload:
    """Rows in one topic over ``keys`` keys; a writer thread adds more while faults hit."""

    def __init__(self, dsn: str, topic: str, keys: int = 20) -> None:
        self.dsn = dsn
        self.topic = topic
        self.keys = keys
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self.written_by_writer = 0

    def backlog(self, count: int) -> None:
        with psycopg.connect(self.dsn) as conn:
            conn.execute(
                "INSERT INTO outbox.messages (topic, key, payload) "
                "SELECT %s, 'k' || (i %% %s), jsonb_build_object('n', i) "
                "FROM generate_series(1, %s) i",
                (self.topic, self.keys, count),
            )

    def enqueue(self, key: str | None, payload: Any, topic: str | None = None) -> None:
        with psycopg.connect(self.dsn) as conn:
            conn.execute(
                "SELECT outbox.enqueue(%s, %s, %s::jsonb)",
                (topic or self.topic, key, orjson.dumps(payload).decode()),
            )

    def start_writer(self, per_second: int = 200) -> None:
        self._writer = threading.Thread(target=self._write, args=(per_second,), daemon=True)
        self._writer.start()

    def stop_writer(self) -> None:
        self._stop.set()
        if self._writer is not None:
            self._writer.join(30)

    def _write(self, per_second: int) -> None:
        # The database may be down on purpose: the writer retries like an application.
        n = 0
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.dsn, connect_timeout=2) as conn:
                    while not self._stop.is_set():
                        with conn.transaction():
                            for _ in range(10):
                                conn.execute(
                                    "SELECT outbox.enqueue(%s, %s, %s::jsonb)",
                                    (self.topic, f"k{n % self.keys}", f'{{"w": {n}}}'),
                                )
                                n += 1
                        self.written_by_writer = n
                        self._stop.wait(10 / per_second)
            except psycopg.Error:
                self._stop.wait(0.2)

    def counts(self) -> tuple[int, int]:
        """(sent, pending) of this workload's topic; sent counts rows the relay deleted on
        acknowledgement (the default) as well as rows it marked sent."""
        return sent_and_pending(self.dsn, self.topic, connect_timeout=3)

    def sent(self) -> int:
        try:
            return self.counts()[0]
        except psycopg.OperationalError:
            return -1

    def wait_progress(self, since: int, timeout: float) -> float:
        """Seconds until more than ``since`` messages are marked sent."""
        return wait_for(lambda: self.sent() > since, timeout, "the relays to make progress")

    def wait_drained(self, timeout: float) -> float:
        return wait_for(lambda: self.counts()[1] == 0, timeout, "the outbox to drain")

    def expected(self) -> dict[str, tuple[str | None, int]]:
        """id -> (key, seq) of every message written to the topic that is not (now) a
        dead letter: what must reach the broker."""
        dead = {letter["id"] for letter in self.dead_letters()}
        return {
            row[0]: (row[1], row[2])
            for row in written_rows(self.dsn, self.topic)
            if row[0] not in dead
        }

    def dead_letters(self) -> list[dict[str, Any]]:
        with psycopg.connect(self.dsn) as conn, conn.cursor(row_factory=_dict_row()) as cur:
            return cur.execute(
                "SELECT id::text, key, seq, reason, last_error, attempts "
                "FROM outbox.dead_letters ORDER BY seq"
            ).fetchall()


def _dict_row() -> Any:
    from psycopg.rows import dict_row

    return dict_row


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``check`` until true; the seconds it took. Fails with ``what`` on timeout."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - started


def hold_fault(seconds: float) -> None:
    """Keep a fault in place for ``seconds``: the duration is the scenario itself."""
    time.sleep(seconds)


def read_everything(
    read: Callable[[int, float], list[Received]], expected_ids: Iterable[str], timeout: float = 60
) -> list[Received]:
    """Read until every expected id arrived (or ``timeout``), then once more briefly so
    that late duplicates are counted too."""
    wanted = set(expected_ids)
    received: list[Received] = []
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while not wanted <= seen and time.monotonic() < deadline:
        batch = read(max(1, len(wanted - seen)), min(5.0, max(0.1, deadline - time.monotonic())))
        received.extend(batch)
        seen.update(r.message_id or "" for r in batch)
    received.extend(read(100_000, 1.0))
    return received


def judge(
    figures: Figures,
    received: list[Received],
    expected: dict[str, tuple[str | None, int]],
) -> Figures:
    """Fill in lost / duplicated / reordered. Order is judged on each message's first
    arrival: a re-delivered copy may come late, but no message may come before an
    earlier one of its key."""
    ids = [r.message_id or "" for r in received]
    figures.written = len(expected)
    figures.received = len(ids)
    figures.lost = len(set(expected) - set(ids))
    figures.duplicated = len(ids) - len(set(ids))
    firsts: dict[str | None, list[int]] = defaultdict(list)
    for message_id in dict.fromkeys(ids):
        if message_id in expected:
            key, seq = expected[message_id]
            if key is not None:
                firsts[key].append(seq)
    figures.reordered = sum(
        sum(1 for a, b in itertools.pairwise(seqs) if b < a) for seqs in firsts.values()
    )
    return figures


def assert_clean(figures: Figures) -> None:
    assert figures.lost == 0, f"{figures.lost} messages lost: {figures.as_dict()}"
    assert figures.reordered == 0, f"{figures.reordered} reorderings: {figures.as_dict()}"
