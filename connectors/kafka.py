"""Publish outbox messages to Kafka (or any Kafka-protocol broker) with librdkafka.

One ``Producer`` per connector. A small batch is queued with ``produce()`` on the event
loop itself; a large one, or the rest of a batch that met a full queue, in a worker thread
(one hop per batch). A dedicated thread calls ``poll()`` so delivery reports arrive even
while the event loop is busy. Each report fills one slot of its batch; the last one
resolves the batch's single future through ``call_soon_threadsafe``: one cross-thread
wake-up per batch, not per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from itertools import chain
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from connectors.kafka_records import message_headers, timestamp_ms
from connectors.kafka_settings import KafkaSettings
from relay.config import DEFAULT_CONNECT_TIMEOUT, DEFAULT_PUBLISH_TIMEOUT, RelayConfig
from relay.errors import BrokerUnavailableError, ConfigError
from relay.model import DELIVERED, OutboxMessage, Outcome, permanent, retryable
from relay.refusals import BatchRefusals
from relay.secrets import redact, secret_values

logger = logging.getLogger(__name__)
_librdkafka_log = logging.getLogger(f"{__name__}.librdkafka")

# Extra wait after the publish timeout for librdkafka's own timeout report to arrive.
REPORT_GRACE = 0.5
# How long the delivery-report thread blocks in poll(); bounds how fast it notices stop().
_POLL_INTERVAL = 0.1
# With no batch waiting for reports for this long, the thread stops polling in short
# slices (ten wake-ups a second for nothing) and looks at librdkafka's own callbacks
# (errors, logs) once per IDLE_LOOK instead, until a batch or stop() wakes it.
QUIET_AFTER = 1.0
IDLE_LOOK = 1.0
NO_REPORT = retryable("no delivery report before timeout")
# Batches in a row with nothing confirmed before the producer is replaced.
STUCK_AFTER_BATCHES = 3
# Batches up to this size are queued on the event loop: produce() takes a few
# microseconds a message, less than the hop to a worker thread and back costs a batch.
INLINE_BATCH = 64
# A new producer asks for the cluster's metadata until one of its brokers answers, at
# most this many times and for this long (see _ProducerSession.hear_from_the_cluster).
CLUSTER_ANSWERS = 3
CLUSTER_WAIT = 1.0

# Errors about the message or its topic: retrying the same message cannot succeed.
# Everything else (broker down, leader moving, timeouts, purges, a fenced producer,
# authentication) is the broker's or the client's state, so the message is retried.
_MESSAGE_FAULTS = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.TOPIC_EXCEPTION,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError.POLICY_VIOLATION,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError._INVALID_ARG,
    }
)
# Errors about the idempotent producer's identity (id, epoch, sequence): the broker no
# longer accepts this producer, so it must be replaced, just as for a fatal error.
_PRODUCER_STATE_FAULTS = frozenset(
    {
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.UNKNOWN_PRODUCER_ID,
        KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
        KafkaError.INVALID_PRODUCER_ID_MAPPING,
        KafkaError._FENCED,
    }
)


def needs_new_producer(err: KafkaError) -> bool:
    return bool(err.fatal()) or err.code() in _PRODUCER_STATE_FAULTS


def outcome_for(err: KafkaError) -> Outcome:
    """Map a librdkafka error to an outcome, from its code only."""
    text = f"{err.name()}: {err.str()}"
    if err.code() in _MESSAGE_FAULTS and not err.fatal():
        return permanent(text)
    # Negative codes are librdkafka's own (timeouts, transport); positive ones came from
    # a broker, which is therefore reachable.
    return retryable(text, answered=err.code() >= 0)


class _BatchDelivery:
    """The outcomes of one batch, filled from any thread; resolves ``done`` when full."""

    def __init__(
        self,
        size: int,
        loop: asyncio.AbstractEventLoop,
        on_producer_fault: Callable[[KafkaError], None] | None = None,
    ) -> None:
        self.done: asyncio.Future[None] = loop.create_future()
        self._on_producer_fault = on_producer_fault
        self._loop = loop
        self._outcomes: list[Outcome | None] = [None] * size
        self._missing = size
        self._sealed = False
        self._lock = threading.Lock()

    def on_delivery(self, index: int, err: KafkaError | None, _msg: Message) -> None:
        if err is not None and self._on_producer_fault and needs_new_producer(err):
            self._on_producer_fault(err)
        self.settle(index, DELIVERED if err is None else outcome_for(err))

    def settle(self, index: int, outcome: Outcome) -> None:
        with self._lock:
            if self._sealed or self._outcomes[index] is not None:
                return
            self._outcomes[index] = outcome
            self._missing -= 1
            if self._missing:
                return
        self._wake()

    def settle_rest(self, outcome: Outcome) -> None:
        """Give every message still waiting for a report this outcome."""
        with self._lock:
            if self._sealed:
                return
            self._outcomes = [o or outcome for o in self._outcomes]
            self._missing = 0
        self._wake()

    def seal(self) -> list[Outcome]:
        """Stop accepting reports; messages without one are RETRYABLE."""
        with self._lock:
            self._sealed = True
            return [o or NO_REPORT for o in self._outcomes]

    async def wait(self, timeout: float) -> None:
        """Until every report is in or ``timeout`` passes. The future is awaited
        directly, with a timer of its own: ``asyncio.wait`` would add a future, a
        callback and a turn of the event loop to every batch."""
        timer = self._loop.call_later(timeout, self._resolve)
        try:
            await self.done  # cancelling the caller cancels the future and ends the wait
        finally:
            timer.cancel()

    def _wake(self) -> None:
        # RuntimeError: the loop closed before a late report came in; nobody waits.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


def _log_client_error(err: KafkaError) -> None:
    """error_cb: errors librdkafka recovers from by itself, for the log only.

    confluent-kafka raises fatal errors from poll()/flush() instead of calling error_cb;
    serve_reports() catches them.
    """
    level = logging.DEBUG if err.code() == KafkaError._TRANSPORT else logging.WARNING
    logger.log(level, "Kafka client error: %s", err.str())


class _ProducerSession:
    """One librdkafka producer, its delivery-report thread and the batches it owes.

    A fatal error (e.g. a fenced idempotent producer) makes the session unusable: its
    pending batches become RETRYABLE at once and the connector builds a new session.
    """

    def __init__(self, settings: dict[str, Any]) -> None:
        self.fatal: KafkaError | None = None
        self._pending: set[_BatchDelivery] = set()
        self._lock = threading.Lock()
        logging_settings = {"error_cb": _log_client_error, "logger": _librdkafka_log}
        self.producer = Producer({**settings, **logging_settings})
        self._stopping = threading.Event()
        self._woken = threading.Event()  # a batch to report on, or stop()
        self._idle = False  # the report thread sleeps on _woken (or is about to)
        self._busy_at = time.monotonic()
        self.cluster_broker: int | None = None  # who answered hear_from_the_cluster()
        self._thread = threading.Thread(target=self._serve, name="kafka-reports", daemon=True)
        self._thread.start()

    def track(self, delivery: _BatchDelivery) -> None:
        with self._lock:
            if self.fatal is None:
                self._pending.add(delivery)
                if self._idle:  # a trickle finds the thread polling: no wake-up to pay
                    self._woken.set()
                return
        delivery.settle_rest(retryable(f"the Kafka producer failed: {self.fatal.str()}"))

    def untrack(self, delivery: _BatchDelivery) -> None:
        with self._lock:
            self._pending.discard(delivery)

    def shutdown(self, flush_timeout: float) -> None:
        """Flush up to ``flush_timeout``, then drop what is left (RETRYABLE). Blocks."""
        if flush_timeout > 0 and self.fatal is None:
            self.serve_reports(flush_timeout, flush=True)
        self._stopping.set()
        self._woken.set()
        self._thread.join()
        with contextlib.suppress(KafkaException):
            self.producer.purge()
        self.serve_reports(0)  # the purge reports: _PURGE_QUEUE, _PURGE_INFLIGHT
        self._fail_pending(retryable("the Kafka producer closed before the broker confirmed"))

    def serve_reports(self, timeout: float, *, flush: bool = False) -> None:
        """Run delivery reports and client callbacks for up to ``timeout`` seconds."""
        try:
            if flush:
                self.producer.flush(timeout)
            else:
                self.producer.poll(timeout)
        except KafkaException as exc:  # how confluent-kafka reports a fatal error
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and needs_new_producer(err):
                self.mark_fatal(err)
            else:
                logger.exception("Kafka client callback failed")
        except Exception:  # one of our callbacks raised; keep serving the other reports
            logger.exception("Kafka client callback failed")

    def _serve(self) -> None:
        self.cluster_broker = self.hear_from_the_cluster()
        while not self._stopping.is_set():
            if self._pending:
                self._busy_at = time.monotonic()
            if time.monotonic() - self._busy_at < QUIET_AFTER:
                self.serve_reports(_POLL_INTERVAL)  # returns as soon as a report comes
                continue
            self.serve_reports(0)  # errors and logs that came meanwhile
            self._idle = True
            if not self._pending:  # a batch tracked before _idle was set finds it here
                self._woken.wait(IDLE_LOOK)
            self._idle = False
            self._woken.clear()  # whatever set it, _pending and _stopping say why

    def hear_from_the_cluster(self) -> int:
        """Ask for the cluster's metadata until one of its brokers answers, not only a
        bootstrap address (at most ``CLUSTER_ANSWERS`` answers within ``CLUSTER_WAIT``);
        return the id of the broker that answered last (-1: a bootstrap address or
        none). The report thread does this first, beside whatever the relay starts.

        An idempotent producer needs a producer id before its first message goes out.
        librdkafka asks for one when a metadata answer comes in from a broker that is
        up, and otherwise on a 500 ms timer. A new producer's first answer usually
        comes from the bootstrap connection, which librdkafka closes as the cluster's
        own broker connects, so nothing asked again before the timer and the relay's
        first message after a start could wait half a second for it."""
        deadline = time.monotonic() + CLUSTER_WAIT
        answered, answers = -1, 0
        while answers < CLUSTER_ANSWERS and not self._stopping.is_set():
            left = min(deadline - time.monotonic(), _POLL_INTERVAL)
            if left <= 0:
                break
            tried = time.monotonic()
            try:
                answered = int(self.producer.list_topics(timeout=left).orig_broker_id)
            except KafkaException:  # not yet: the next try, or open() says unreachable
                # never sooner than this try's timeout, however fast it failed
                self._stopping.wait(max(0.0, tried + left - time.monotonic()))
                continue
            answers += 1
            if answered >= 0:
                break
        return answered

    def mark_fatal(self, err: KafkaError) -> None:
        """Retire this producer: its pending batches become RETRYABLE now."""
        with self._lock:
            first, self.fatal = self.fatal is None, err
        if first:
            logger.error("Kafka producer hit a fatal error, it will be recreated: %s", err.str())
        self._fail_pending(retryable(f"the Kafka producer failed: {err.str()}"))

    def _fail_pending(self, outcome: Outcome) -> None:
        with self._lock:
            pending, self._pending = self._pending, set()
        for delivery in pending:
            delivery.settle_rest(outcome)


class KafkaConnector:
    """Publishes each message to ``message.topic`` with its key, payload and headers.

    Defaults are safe (``acks=all``, idempotence, lz4); every librdkafka property in
    the settings passes through verbatim and wins over the defaults.
    """

    name = "kafka"
    settings = KafkaSettings

    def __init__(
        self,
        settings: KafkaSettings | None = None,
        *,
        publish_timeout: float = DEFAULT_PUBLISH_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        self._settings = (settings or KafkaSettings()).validate()
        self._connect_timeout = connect_timeout
        # What librdkafka gets (``settings`` is the class of what users write).
        self.client_config: dict[str, Any] = self._settings.client_config(
            publish_timeout=publish_timeout
        )
        self._session: _ProducerSession | None = None
        self._renewing = asyncio.Lock()
        self._barren_batches = 0

    @classmethod
    def from_config(
        cls, config: RelayConfig, settings: KafkaSettings | None = None
    ) -> KafkaConnector:
        """The connector for ``config``; its options are parsed unless ``settings`` is given."""
        return cls(
            settings or KafkaSettings.parse(config.connector_options),
            publish_timeout=config.publish_timeout,
            connect_timeout=config.connect_timeout,
        )

    async def open(self) -> None:
        """Create the producer and check that the broker answers within the connect timeout."""
        if self._session is not None:
            return
        session = self._new_session()
        try:
            await asyncio.to_thread(session.producer.list_topics, timeout=self._connect_timeout)
        except KafkaException as exc:
            await asyncio.to_thread(session.shutdown, 0.0)
            where = self.client_config["bootstrap.servers"]
            raise BrokerUnavailableError(
                f"Kafka at {where} is not reachable within {self._connect_timeout:g}s "
                f"({exc.args[0].str()}); check the bootstrap address and that the broker runs."
            ) from exc
        self._session = session

    async def publish(self, batch: Sequence[OutboxMessage], *, timeout: float) -> list[Outcome]:
        """Publish ``batch``; one outcome per message, within ``timeout`` plus a grace."""
        if not batch:
            return []
        session = await self._usable_session()
        delivery = _BatchDelivery(len(batch), asyncio.get_running_loop(), session.mark_fatal)
        deadline = time.monotonic() + timeout
        session.track(delivery)
        try:
            production = _Production(session, batch, delivery, deadline)
            if len(batch) > INLINE_BATCH or not production.run(careful=False):
                await asyncio.to_thread(production.run, careful=True)
            left = deadline + REPORT_GRACE - time.monotonic()
            await delivery.wait(max(left, 0.0))
        finally:
            session.untrack(delivery)
        outcomes = delivery.seal()
        self._watch_for_a_stuck_producer(session, outcomes)
        return outcomes

    def _watch_for_a_stuck_producer(
        self, session: _ProducerSession, outcomes: Sequence[Outcome]
    ) -> None:
        """Replace a producer that confirms nothing, batch after batch.

        An idempotent producer whose broker restarted can wait forever for a new producer
        id (seen with Tansu; librdkafka has had such stalls too), timing out every message
        without ever raising. A fresh producer also skips the reconnect backoff that grew
        during the outage, so replacing it during a real outage costs nothing.
        """
        if any(o.delivered for o in outcomes) or not outcomes:
            self._barren_batches = 0
            return
        self._barren_batches += 1
        if self._barren_batches >= STUCK_AFTER_BATCHES:
            self._barren_batches = 0
            session.mark_fatal(
                KafkaError(
                    KafkaError._TIMED_OUT, f"nothing confirmed in {STUCK_AFTER_BATCHES} batches"
                )
            )

    async def close(self, *, timeout: float) -> None:
        """Deliver what is in flight for up to ``timeout`` seconds, then stop."""
        async with self._renewing:  # not while a producer is being recreated
            session, self._session = self._session, None
        if session is not None:
            await asyncio.to_thread(session.shutdown, timeout)

    async def _usable_session(self) -> _ProducerSession:
        """The current session; after a fatal error, a new one (the first caller builds it)."""
        if self._session is not None and self._session.fatal is None:
            return self._session
        async with self._renewing:
            session = self._session
            if session is None:
                raise RuntimeError("KafkaConnector.publish() called before open() or after close()")
            if session.fatal is not None:
                await asyncio.to_thread(session.shutdown, 0.0)
                session = self._session = self._new_session()
                logger.warning("recreated the Kafka producer after a fatal error")
            return session

    def _new_session(self) -> _ProducerSession:
        try:
            return _ProducerSession(self.client_config)
        except (KafkaException, TypeError, ValueError) as exc:
            detail = exc.args[0].str() if isinstance(exc, KafkaException) else str(exc)
            # Not chained: the driver's own text may quote a secret that redact() removed.
            secrets = secret_values(self._settings.passed_through, KafkaSettings.is_secret)
            raise ConfigError(
                f"The Kafka client settings are invalid: {redact(detail, secrets)}."
            ) from None


def _produce_batch(
    session: _ProducerSession,
    batch: Sequence[OutboxMessage],
    delivery: _BatchDelivery,
    deadline: float,
) -> None:
    """Hand every message to librdkafka, in order, waiting for room when the queue is full."""
    _Production(session, batch, delivery, deadline).run(careful=True)


class _Production:
    """One batch handed to librdkafka in order, in one go or two.

    ``run(careful=False)`` (on the event loop) stops at the first message that
    ``produce()`` does not take at once: a full queue is waited for, which only a worker
    thread may do. ``run(careful=True)`` then goes on from that message.

    Once librdkafka refuses a message outright, the later messages of its key in this
    batch are not produced (``relay.refusals``): they would overtake it on the partition.
    """

    def __init__(
        self,
        session: _ProducerSession,
        batch: Sequence[OutboxMessage],
        delivery: _BatchDelivery,
        deadline: float,
    ) -> None:
        self._session = session
        self._delivery = delivery
        self._deadline = deadline
        self._refusals = BatchRefusals(batch)
        self._sendable = self._refusals.sendable()
        self._stalled: list[tuple[int, OutboxMessage]] = []  # taken, not yet queued

    def run(self, *, careful: bool) -> bool:
        """Queue the batch's messages; False when not careful and one had to wait."""
        refusals, session = self._refusals, self._session
        # Looked up once, and the usual message queued inline, without a call of its
        # own: this loop runs for every message.
        report, produce = self._delivery.on_delivery, session.producer.produce
        for index, message in chain(self._stalled, self._sendable):
            on_delivery = partial(report, index)
            try:
                key = None if message.key is None else message.key.encode()
                headers = message_headers(message)
            except UnicodeEncodeError as exc:
                failure: Outcome | None = permanent(
                    f"the key or a header is not valid UTF-8: {exc.reason}"
                )
            else:
                stamp = 0 if message.timestamp is None else timestamp_ms(message.timestamp)
                try:
                    produce(message.topic, message.payload, key, on_delivery=on_delivery,
                            headers=headers, timestamp=stamp)
                    continue
                except (BufferError, KafkaException):
                    if not careful:
                        self._stalled = [(index, message)]
                        return False
                    # Nothing was queued: the careful path waits, retries or refuses.
                    failure = _produce_one(session, message.topic, message.payload, key,
                                           headers, on_delivery, self._deadline, stamp)
            if failure is not None:
                refusals.refuse(index, failure)
        self._stalled = []
        for index, outcome in refusals.outcomes.items():
            self._delivery.settle(index, outcome)
        return True


def _produce_one(
    session: _ProducerSession,
    topic: str,
    payload: bytes | None,
    key: bytes | None,
    headers: list[tuple[str, str | bytes | None]],
    on_delivery: Callable[[KafkaError | None, Message], None],
    deadline: float,
    timestamp: int = 0,
) -> Outcome | None:
    """Queue one message whose first produce() raised, waiting for room in a full queue
    until ``deadline``; return its outcome only when librdkafka refused it outright."""
    while True:
        try:
            session.producer.produce(
                topic, payload, key, on_delivery=on_delivery, headers=headers,
                timestamp=timestamp,
            )
            return None
        except BufferError:
            if time.monotonic() >= deadline:
                return retryable("the producer queue stayed full until the publish timeout")
            session.serve_reports(0.01)  # the queue drains as reports are served
        except KafkaException as exc:
            if needs_new_producer(exc.args[0]):  # in case poll() has not seen it yet
                session.mark_fatal(exc.args[0])
            return outcome_for(exc.args[0])
