"""RabbitMQ connector: outbox batches to a durable topic exchange, with publisher
confirms and ``mandatory``.

It runs pika's ``AsyncioConnection`` on the relay's own event loop rather than a
``SelectConnection`` in a helper thread: pika's callbacks then run on the loop that awaits
them, so resolving a future needs no ``call_soon_threadsafe`` and the connector holds no
lock shared between threads. A whole batch is written before any confirm is awaited,
and confirms (``multiple=True`` included) settle messages as they arrive, so many
publishes are in flight at once. The batch's frames are encoded by ``amqp_frames``
(pika's per-message objects cost more than the rest of the relay) and handed to the
connection in a few large writes; pika keeps the connection, the channel and the confirms.

What consumers see: routing key = the message topic, ``message_id`` = the outbox UUID,
``delivery_mode=2``, ``content_type``, ``timestamp`` (whole seconds of the message's own
``timestamp`` where it has one, else of ``created_at``; left out before 1970) and the
message headers plus a ``key`` header holding the message key (left out when the key is
null; it replaces a user header of the same name). AMQP has no key field, and a header is
what a consumer or a consistent-hash exchange can read.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import pika
from pika import exceptions as amqp
from pika.adapters.asyncio_connection import AsyncioConnection
from pika.adapters.utils.connection_workflow import AMQPConnectorException

from connectors.amqp_frames import FieldTooLong, PublishEncoder
from connectors.amqp_url import url_parameters
from connectors.rabbitmq_settings import DEFAULT_EXCHANGE, RabbitMQSettings
from relay.config import DEFAULT_CONNECT_TIMEOUT, RelayConfig
from relay.errors import BrokerUnavailableError, ConfigError, PermanentError, RelayError
from relay.formats.headers import AMQP_KEY
from relay.model import DELIVERED, OutboxMessage, Outcome, permanent, retryable
from relay.refusals import BatchRefusals
from relay.tasks import wait_any

log = logging.getLogger(__name__)

KEY_HEADER = AMQP_KEY
# AMQP 0-9-1 reply codes; decisions are taken on these, never on the reply text.
ACCESS_REFUSED = 403
PRECONDITION_FAILED = 406
WRITE_CHUNK = 1 << 18  # bytes per write handed to pika's transport
CLOSE_GRACE = 1.0  # a link given up on: time for the close handshake before the socket is cut
ABORT_WAIT = 0.5  # a cut socket is reported closed on the next turns of the loop
# Everything pika or the socket layer raises while connecting or declaring.
_CONNECT_ERRORS = (amqp.AMQPError, AMQPConnectorException, OSError, TimeoutError)


def quiet_pika() -> None:
    """Keep pika's own log lines out unless the relay logs at debug level.

    pika logs every failed connection attempt at ERROR, six to eight lines of them; the
    connector turns the same failure into one sentence (an error or a retryable outcome).
    """
    debugging = log.isEnabledFor(logging.DEBUG)
    logging.getLogger("pika").setLevel(logging.DEBUG if debugging else logging.CRITICAL)


class _ExchangeAccessRefused(Exception):
    """The user may not declare the exchange; it may still exist and be usable."""


class _Batch:
    """The outcomes of one publish() call, filled in as confirms arrive."""

    __slots__ = ("done", "outcomes", "remaining", "tags")

    def __init__(self, size: int, loop: asyncio.AbstractEventLoop) -> None:
        self.outcomes: list[Outcome | None] = [None] * size
        self.remaining = size
        self.tags: list[int] = []
        self.done: asyncio.Future[None] = loop.create_future()

    def settle(self, index: int, outcome: Outcome) -> None:
        if self.outcomes[index] is not None:
            return
        self.outcomes[index] = outcome
        self.remaining -= 1
        if self.remaining == 0 and not self.done.done():
            self.done.set_result(None)

    def settle_rest(self, outcome: Outcome) -> list[Outcome]:
        for index in range(len(self.outcomes)):
            self.settle(index, outcome)
        return [o for o in self.outcomes if o is not None]


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _describe(exc: BaseException) -> str:
    """A short reason built from reply codes and error types (never from the URL)."""
    code = getattr(exc, "reply_code", None)
    if isinstance(code, int):
        return f"{code} {getattr(exc, 'reply_text', '')}".strip()
    # pika's connection workflow wraps the real error: in .exceptions, .exception or args.
    wrapped = getattr(exc, "exceptions", None) or [getattr(exc, "exception", None), *exc.args]
    inner = next((e for e in reversed(wrapped) if isinstance(e, BaseException)), None)
    if inner is not None:
        return _describe(inner)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if exc.args and isinstance(exc.args[0], str):
        # pika's "probable" login and vhost errors carry the broker's close as text.
        return f"{type(exc).__name__}: {exc.args[0]}"
    return type(exc).__name__


class _FrameConnection(AsyncioConnection):  # type: ignore[misc]
    """An ``AsyncioConnection`` that also takes frames the relay encoded itself.

    pika hands every frame to its transport separately and the transport sends each with
    its own ``send()``: three system calls per message. A batch written here goes in
    chunks of ~256 KB. ``_adapter_emit_data`` is the method every pika adapter implements
    to take the bytes of frames, in order; the counters are the ones pika keeps.
    """

    def write_frames(self, frames: list[bytes]) -> None:
        """Hand ``frames`` to the transport in chunks of about WRITE_CHUNK bytes: the
        transport copies the unsent rest of a chunk after each partial send()."""
        self.frames_sent += len(frames)
        chunk: list[bytes] = []
        size = 0
        for data in frames:
            chunk.append(data)
            size += len(data)
            if size >= WRITE_CHUNK:
                self._emit(chunk, size)
                chunk, size = [], 0
        if chunk:
            self._emit(chunk, size)

    def _emit(self, chunk: list[bytes], size: int) -> None:
        self.bytes_sent += size
        self._adapter_emit_data(b"".join(chunk))


class _Link:
    """One connection with one confirm-mode channel, living and dying as a unit.

    Any close of either settles every unconfirmed message as RETRYABLE; the connector
    then builds a new link, because delivery tags start again at 1 on a new channel.
    """

    def __init__(self, exchange: str) -> None:
        self._loop = asyncio.get_running_loop()
        self._exchange = exchange
        self._connection: Any = None
        self._channel: Any = None
        self._encoder: PublishEncoder | None = None
        self._waiters: set[asyncio.Future[Any]] = set()
        self._pending: OrderedDict[int, tuple[_Batch, int, str]] = OrderedDict()
        self._tag_of: dict[str, int] = {}
        self._returned: dict[int, str] = {}
        self._next_tag = 1
        self._lost: BaseException | None = None
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._unblocked = asyncio.Event()
        self._unblocked.set()

    @property
    def usable(self) -> bool:
        return (
            self._lost is None
            and self._channel is not None
            and self._channel.is_open
            and self._connection.is_open
        )

    async def start(self, params: pika.URLParameters, *, passive: bool) -> None:
        await self._call(lambda done: self._connect(params, done))
        self._connection.add_on_connection_blocked_callback(lambda *_: self._unblocked.clear())
        self._connection.add_on_connection_unblocked_callback(lambda *_: self._unblocked.set())
        self._channel = await self._call(
            lambda done: self._connection.channel(on_open_callback=done)
        )
        self._channel.add_on_close_callback(self._on_lost)
        self._channel.add_on_return_callback(self._on_return)
        await self._declare_exchange(passive)
        await self._call(lambda done: self._channel.confirm_delivery(self._on_confirm, done))
        # frame_max is the value negotiated with the broker once the connection is open.
        self._encoder = PublishEncoder(
            self._channel.channel_number, self._exchange, self._connection.params.frame_max
        )

    def _connect(self, params: pika.URLParameters, done: Callable[..., None]) -> None:
        self._connection = _FrameConnection(
            params,
            on_open_callback=done,
            on_open_error_callback=self._on_connection_closed,
            on_close_callback=self._on_connection_closed,
        )

    async def _call(self, start: Callable[[Callable[..., None]], object]) -> Any:
        """Start a callback-style pika operation and wait for its callback; fails with
        the close reason if the link dies first."""
        if self._lost is not None:
            raise self._lost
        future: asyncio.Future[Any] = self._loop.create_future()
        self._waiters.add(future)
        try:
            start(lambda *args: _resolve(future, args[-1] if args else None))
            return await future
        finally:
            self._waiters.discard(future)

    async def _declare_exchange(self, passive: bool) -> None:
        channel, name = self._channel, self._exchange
        try:
            await self._call(
                lambda done: channel.exchange_declare(
                    name, "topic", passive=passive, durable=True, callback=done
                )
            )
        except amqp.ChannelClosedByBroker as exc:
            if exc.reply_code == PRECONDITION_FAILED:
                raise ConfigError(
                    f"The exchange {name!r} exists with other settings than the durable topic "
                    f"exchange the relay needs: {exc.reply_text}"
                ) from exc
            if exc.reply_code == ACCESS_REFUSED and not passive:
                raise _ExchangeAccessRefused from exc
            if exc.reply_code == ACCESS_REFUSED or passive:
                raise PermanentError(
                    f"The exchange {name!r} cannot be used: {_describe(exc)}. Create it as a "
                    "durable topic exchange, or grant the user configure permission on it."
                ) from exc
            raise

    def publish(self, batch: Sequence[OutboxMessage]) -> _Batch:
        """Write every message without waiting; confirms settle them later."""
        state = _Batch(len(batch), self._loop)
        encoder = self._encoder
        if encoder is None or not self.usable:  # usable: nothing lost, channel open
            reason = _describe(self._lost) if self._lost is not None else "channel closed"
            state.settle_rest(retryable(f"connection lost: {reason}"))
            return state
        refusals = BatchRefusals(batch)
        frames: list[bytes] = []
        try:
            for index, message in refusals.sendable():
                message_id = str(message.id)
                try:
                    frames += _encode(encoder, message, message_id)
                except FieldTooLong as exc:  # can never be sent as it is; its key waits
                    refusals.refuse(index, permanent(f"cannot publish to RabbitMQ: {exc}"))
                    continue
                tag, self._next_tag = self._next_tag, self._next_tag + 1
                self._pending[tag] = (state, index, message_id)
                self._tag_of[message_id] = tag
                state.tags.append(tag)
        finally:
            # Whatever got a delivery tag is written, even if a later message raised:
            # the broker numbers what it receives, and the tags must stay in step.
            # No I/O ran since the check above, so the connection is still open.
            if frames:
                self._connection.write_frames(frames)
        for index, outcome in refusals.outcomes.items():
            state.settle(index, outcome)
        return state

    async def wait(self, state: _Batch, timeout: float) -> list[Outcome]:
        await asyncio.wait([state.done], timeout=max(timeout, 0.0))
        # Unconfirmed messages will be published again; a confirm arriving later for
        # them is dropped, so it cannot settle a batch that already returned.
        for tag in state.tags:
            if tag in self._pending:
                self._forget(tag)
        return state.settle_rest(retryable("the broker did not confirm within the timeout"))

    async def wait_unblocked(self, timeout: float) -> bool:
        """Wait out a resource alarm; publishing into a blocked connection only queues
        data the broker will not read."""
        await wait_any(self._unblocked, timeout=max(timeout, 0.0))
        return self._unblocked.is_set()

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        nacked = isinstance(method, pika.spec.Basic.Nack)
        for tag in self._confirmed_tags(method.delivery_tag, method.multiple):
            state, index, returned = self._forget(tag)
            if nacked:
                state.settle(index, retryable("the broker nacked the message", answered=True))
            elif returned is not None:
                state.settle(index, permanent(returned))
            else:
                state.settle(index, DELIVERED)

    def _forget(self, tag: int) -> tuple[_Batch, int, str | None]:
        """Stop tracking ``tag``; return its batch, index and return reason, if any."""
        state, index, message_id = self._pending.pop(tag)
        if self._tag_of.get(message_id) == tag:
            del self._tag_of[message_id]
        return state, index, self._returned.pop(tag, None)

    def _confirmed_tags(self, delivery_tag: int, multiple: bool) -> list[int]:
        if not multiple:
            return [delivery_tag] if delivery_tag in self._pending else []
        tags: list[int] = []
        for tag in self._pending:  # insertion order is tag order
            if tag > delivery_tag > 0:  # tag 0 with multiple means "all outstanding"
                break
            tags.append(tag)
        return tags

    def _on_return(self, _channel: Any, method: Any, properties: Any, _body: bytes) -> None:
        # RabbitMQ sends basic.return before the ack of the same message, so the ack
        # handler finds the reason here.
        tag = self._tag_of.get(properties.message_id)
        if tag is not None:
            self._returned[tag] = (
                f"unroutable: {method.reply_code} {method.reply_text} "
                f"(exchange {method.exchange!r}, routing key {method.routing_key!r})"
            )

    def _on_lost(self, _source: Any, reason: BaseException) -> None:
        if self._lost is None:
            self._lost = reason
            # A link that never opened is reported by the caller, in one sentence.
            level = logging.INFO if self._encoder is not None else logging.DEBUG
            log.log(level, "RabbitMQ link closed: %s", _describe(reason))
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(reason)
        outcome = retryable(f"connection lost before the broker confirmed: {_describe(reason)}")
        for state, index, _ in self._pending.values():
            state.settle(index, outcome)
        self._pending.clear()
        self._tag_of.clear()
        self._returned.clear()
        self._unblocked.set()  # a publisher waiting for unblock must see the loss now
        if self._connection is not None and self._connection.is_open:
            self._connection.close()  # a channel closed on its own leaves nothing usable

    def _on_connection_closed(self, connection: Any, reason: BaseException) -> None:
        self._on_lost(connection, reason)
        _resolve(self._closed, None)

    async def close(self, timeout: float) -> None:
        connection = self._connection
        if connection is None or connection.is_closed:
            return
        if not connection.is_closing:
            connection.close()
        await asyncio.wait([self._closed], timeout=timeout)
        if not self._closed.done():
            log.warning("RabbitMQ did not finish closing the connection within %ss", timeout)
            # Drop the socket now: left to the garbage collector, it would stay open
            # (and count against the broker's connections) for as long as it pleases.
            connection._adapter_disconnect_stream()
            await asyncio.wait([self._closed], timeout=ABORT_WAIT)


def _encode(encoder: PublishEncoder, message: OutboxMessage, message_id: str) -> list[bytes]:
    headers = message.headers
    if message.key is not None:
        headers = {**headers, KEY_HEADER: message.key}
    created = message.timestamp or message.created_at
    return encoder.frames(
        message.topic,
        message.payload or b"",
        message_id=message_id,
        content_type=message.content_type,
        headers=headers,
        timestamp=int(created.timestamp()) if created is not None else None,
    )


class RabbitMQConnector:
    """Publishes outbox batches to a RabbitMQ topic exchange with publisher confirms."""

    name = "rabbitmq"
    settings = RabbitMQSettings

    def __init__(
        self,
        url: str,
        *,
        exchange: str = DEFAULT_EXCHANGE,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        connection_name: str = "outbox-relay",
    ) -> None:
        RabbitMQSettings(url=url, exchange=exchange).validate()  # never quotes the URL
        quiet_pika()
        self._params = url_parameters(url)
        # The whole TCP + AMQP handshake is bounded, not only the socket connect.
        self._params.socket_timeout = connect_timeout
        self._params.stack_timeout = connect_timeout
        self._params.client_properties = {"connection_name": connection_name}
        parts = urlsplit(url)
        self._password = parts.password or ""
        self._where = f"{parts.hostname or 'localhost'}:{parts.port or self._params.port}"
        self._where += f" (vhost {self._params.virtual_host!r})"
        self._exchange = exchange
        self._connect_timeout = connect_timeout
        self._passive = False
        self._link: _Link | None = None
        self._connecting = asyncio.Lock()

    @classmethod
    def from_config(
        cls, config: RelayConfig, settings: RabbitMQSettings | None = None
    ) -> RabbitMQConnector:
        """The connector for ``config``; its options are parsed unless ``settings`` is given."""
        settings = settings or RabbitMQSettings.parse(config.connector_options)
        return cls(
            settings.url,
            exchange=settings.exchange,
            connect_timeout=config.connect_timeout,
            connection_name=f"outbox-relay {config.relay_name} -> {settings.exchange}",
        )

    async def open(self) -> None:
        """Connect, declare the exchange and enter confirm mode; raise a RelayError if
        RabbitMQ is unreachable (retryable) or refuses the login or exchange (permanent)."""
        await self._usable_link(self._connect_timeout)

    async def publish(self, batch: Sequence[OutboxMessage], *, timeout: float) -> list[Outcome]:
        """Publish ``batch`` in order; one outcome per message, never raising for them."""
        if not batch:
            return []
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            link = await self._usable_link(timeout)
        except RelayError as exc:
            return [retryable(str(exc))] * len(batch)
        if not await link.wait_unblocked(deadline - asyncio.get_running_loop().time()):
            blocked = "RabbitMQ has blocked the connection (memory or disk alarm)"
            return [retryable(blocked)] * len(batch)
        state = link.publish(batch)
        return await link.wait(state, deadline - asyncio.get_running_loop().time())

    async def close(self, *, timeout: float) -> None:
        """Close the connection; harmless when called twice or before open()."""
        link, self._link = self._link, None
        if link is not None:
            await link.close(timeout)

    async def _usable_link(self, timeout: float) -> _Link:
        # Reconnect once when RabbitMQ closed the connection or channel (restart, admin
        # close, deleted exchange); a failure here becomes RETRYABLE outcomes.
        async with self._connecting:
            if self._link is None or not self._link.usable:
                stale, self._link = self._link, None
                if stale is not None:
                    await stale.close(CLOSE_GRACE)
                self._link = await self._connect(min(self._connect_timeout, timeout))
            return self._link

    async def _connect(self, timeout: float) -> _Link:
        try:
            return await self._start_link(timeout, passive=self._passive)
        except _ExchangeAccessRefused:
            # Least-privilege users may publish to an exchange operators created; the
            # passive declare checks it exists (its type cannot be checked that way).
            self._passive = True
            return await self._start_link(timeout, passive=True)

    async def _start_link(self, timeout: float, *, passive: bool) -> _Link:
        link = _Link(self._exchange)
        try:
            async with asyncio.timeout(timeout):
                await link.start(self._params, passive=passive)
        except BaseException as exc:
            await link.close(CLOSE_GRACE)
            if isinstance(exc, _CONNECT_ERRORS):
                raise self._translate(exc, timeout) from exc
            raise
        return link

    def _translate(self, exc: BaseException, timeout: float) -> RelayError:
        where, user = self._where, self._params.credentials.username
        # Broker and OS texts are scrubbed as defence in depth; ours never hold the URL.
        reason = _describe(exc).replace(self._password, "***") if self._password else _describe(exc)
        if isinstance(exc, amqp.AuthenticationError | amqp.ProbableAuthenticationError):
            return PermanentError(f"RabbitMQ at {where} refused the login of user {user!r}.")
        if isinstance(exc, amqp.ProbableAccessDeniedError):
            return PermanentError(
                f"RabbitMQ at {where} refused user {user!r} the virtual host: {reason}"
            )
        if isinstance(exc, TimeoutError):
            return BrokerUnavailableError(f"RabbitMQ at {where} did not answer within {timeout}s.")
        return BrokerUnavailableError(f"Cannot reach RabbitMQ at {where}: {reason}")
