"""Spans of a publish, following OpenTelemetry's messaging semantic conventions.

Per batch: a ``send`` span (kind CLIENT: its context is not injected into the messages)
named ``send {destination}`` (``send`` when the batch goes to several), with
``messaging.batch.message_count`` and a link to each message's creation context (the
``traceparent`` given at enqueue time, when sampled) carrying that message's id and
destination.

Per message that carries a ``traceparent``: a ``send {destination}`` span (kind CLIENT)
whose parent is that context, so it shows in the writer's own trace, with a link back to
its batch's span. The ``traceparent`` header itself reaches the consumer unchanged: the
conventions say a creation context the producer gave SHOULD NOT be modified. Both spans
last from the hand-over to the connector until its outcomes are in, and end with status
ERROR (and ``error.type`` ``retryable`` or ``permanent``) for a message not delivered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from relay.connector import Connector
from relay.decorators import ConnectorWrapper
from relay.model import OutboxMessage, Outcome, OutcomeKind
from relay.tasks import result_within

TRACEPARENT = "traceparent"
OPERATION = "send"
_PROPAGATOR = TraceContextTextMapPropagator()


def creation_context(headers: Mapping[str, str]) -> Context | None:
    """The W3C trace context given at enqueue time, or None (none, or not valid)."""
    if TRACEPARENT not in headers:
        return None
    context = _PROPAGATOR.extract(carrier=headers)
    return context if trace.get_current_span(context).get_span_context().is_valid else None


class TracingConnector(ConnectorWrapper):
    """Records spans around ``inner.publish``; attribute reads fall through to ``inner``."""

    def __init__(
        self,
        inner: Connector,
        provider: TracerProvider,
        *,
        system: str,
        destination: Callable[[str], str],
        owns_provider: bool,
    ) -> None:
        super().__init__(inner)
        self._provider = provider
        self._owns_provider = owns_provider
        self._tracer = provider.get_tracer("outbox-relay")
        self._system = system
        self._destination = destination

    async def close(self, *, timeout: float) -> None:
        await super().close(timeout=timeout)
        if self._owns_provider:  # export what is buffered, within the same bound
            shutdown = asyncio.ensure_future(asyncio.to_thread(self._provider.shutdown))
            await result_within(shutdown, timeout)  # TimeoutError: the caller's bound

    async def publish(self, batch: Sequence[OutboxMessage], *, timeout: float) -> list[Outcome]:
        if not batch:
            return await self.inner.publish(batch, timeout=timeout)
        started = time.time_ns()
        destinations = [self._destination(m.topic) for m in batch]
        contexts = [creation_context(m.headers) for m in batch]
        batch_span = self._batch_span(batch, destinations, contexts, started)
        spans = [None if context is None else
                 self._message_span(message, where, context, batch_span, started)
                 for message, where, context in zip(batch, destinations, contexts, strict=True)]
        try:
            outcomes = await self.inner.publish(batch, timeout=timeout)
        except BaseException as exc:
            for span in [*spans, batch_span]:
                if span is not None:
                    span.record_exception(exc)
                    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                    span.end()
            raise
        for span, outcome in zip(spans, outcomes, strict=False):
            if span is not None:
                _finish(span, [outcome])
        _finish(batch_span, outcomes)
        return outcomes

    def _common(self, destination: str | None) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "messaging.system": self._system,
            "messaging.operation.name": OPERATION,
            "messaging.operation.type": OPERATION,
        }
        if destination is not None:
            attributes["messaging.destination.name"] = destination
        return attributes

    def _batch_span(self, batch: Sequence[OutboxMessage], destinations: list[str],
                    contexts: list[Context | None], started: int) -> Span:
        single = destinations[0] if len(set(destinations)) == 1 else None
        attributes = self._common(single)
        attributes["messaging.batch.message_count"] = len(batch)
        # Links only to sampled contexts: an unsampled writer's span is never exported.
        links = [Link(span, {"messaging.message.id": str(message.id),
                             "messaging.destination.name": where})
                 for message, where, context in zip(batch, destinations, contexts, strict=True)
                 if context is not None and (span := _span_context(context)).trace_flags.sampled]
        name = f"{OPERATION} {single}" if single is not None else OPERATION
        # A root span of its own: the batch is the relay's work, no one request's.
        return self._tracer.start_span(name, context=Context(), kind=SpanKind.CLIENT,
                                       attributes=attributes, links=links, start_time=started)

    def _message_span(self, message: OutboxMessage, destination: str, parent: Context,
                      batch_span: Span, started: int) -> Span:
        attributes = self._common(destination)
        attributes["messaging.message.id"] = str(message.id)
        if self._system == "kafka":
            if message.key is not None:
                attributes["messaging.kafka.message.key"] = message.key
            if message.payload is None:
                attributes["messaging.kafka.message.tombstone"] = True
        elif self._system == "rabbitmq":
            attributes["messaging.rabbitmq.destination.routing_key"] = message.topic
        return self._tracer.start_span(
            f"{OPERATION} {destination}", context=parent, kind=SpanKind.CLIENT,
            attributes=attributes, links=[Link(batch_span.get_span_context())],
            start_time=started)


def _span_context(context: Context) -> SpanContext:
    return trace.get_current_span(context).get_span_context()


def _finish(span: Span, outcomes: Sequence[Outcome]) -> None:
    failed = [o for o in outcomes if not o.delivered]
    if failed:
        permanent = [o for o in failed if o.kind is OutcomeKind.PERMANENT]
        span.set_attribute("error.type", "permanent" if permanent else "retryable")
        first = (permanent or failed)[0]
        detail = first.error or first.kind.value
        if len(outcomes) > 1:
            detail = f"{len(failed)} of {len(outcomes)} not delivered; first: {detail}"
        span.set_status(Status(StatusCode.ERROR, detail))
    span.end()
