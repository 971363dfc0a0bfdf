"""The one place a message is shaped for the wire before a connector publishes it.

``FormattingConnector`` wraps the connector: each message of a batch is published as a
copy with its envelope applied (CloudEvents attributes in the binding's header names,
or the structured JSON value) and its topic rendered through the template. The
originals, which the poller and the CDC stream hold, stay as they were: a message that
is parked keeps the topic and payload it was written with, and a retry shapes it anew.
Connectors only apply what they are given (headers, value, content type, timestamp).
"""

from __future__ import annotations

from collections.abc import Sequence

from relay.config import RelayConfig
from relay.connector import Connector
from relay.decorators import ConnectorWrapper
from relay.formats.cloudevents import CloudEventsEnvelope, binding_for, reshaped
from relay.formats.settings import ENVELOPE_CLOUDEVENTS
from relay.formats.topics import TopicTemplate
from relay.model import OutboxMessage, Outcome


class FormattingConnector(ConnectorWrapper):
    """Publishes shaped copies of each batch; attribute reads fall through to ``inner``."""

    def __init__(
        self,
        inner: Connector,
        *,
        template: TopicTemplate | None = None,
        envelope: CloudEventsEnvelope | None = None,
    ) -> None:
        super().__init__(inner)
        self._template = template
        self._envelope = envelope

    async def publish(self, batch: Sequence[OutboxMessage], *, timeout: float) -> list[Outcome]:
        return await self.inner.publish([self.shape(m) for m in batch], timeout=timeout)

    def shape(self, message: OutboxMessage) -> OutboxMessage:
        """``message`` as it goes on the wire (a copy; ``message`` is left alone). The
        envelope sees the topic as written: CloudEvents' ``type`` falls back to it."""
        shaped = self._envelope.apply(message) if self._envelope is not None else reshaped(message)
        if self._template is not None:
            shaped.topic = self._template.render(message.topic)
        return shaped


def format_connector(inner: Connector, config: RelayConfig) -> Connector:
    """``inner`` behind the configured template and envelope; ``inner`` itself when
    neither is configured, so the usual relay pays nothing for them."""
    formats = config.formats
    text = formats.template_for(debezium=config.mode == "cdc" and config.cdc.debezium)
    template = TopicTemplate(text) if text is not None else None
    if template is not None and template.is_identity:
        template = None
    envelope = None
    if formats.envelope == ENVELOPE_CLOUDEVENTS and formats.cloudevents_source:
        envelope = CloudEventsEnvelope(formats.cloudevents_source,
                                       binding_for(config.connector), formats.mode)
    if template is None and envelope is None:
        return inner
    return FormattingConnector(inner, template=template, envelope=envelope)
