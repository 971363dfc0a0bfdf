"""An outbox-relay connector that POSTs each message to an HTTP endpoint (a webhook).

Each message goes to ``<url>/<topic>`` with the payload as the body and the message's
id, key, content type and headers as HTTP headers; a 2xx answer means delivered. The
messages of a batch are posted one after another on one keep-alive connection, so a
key's order is the batch's order.
"""

from __future__ import annotations

import asyncio
import http.client
import itertools
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar
from urllib.parse import quote, urlsplit

from relay.config import RelayConfig
from relay.connector_settings import ConnectorSettings, setting
from relay.errors import BrokerUnavailableError
from relay.model import DELIVERED, OutboxMessage, Outcome, OutcomeKind, permanent, retryable
from relay.refusals import BatchRefusals

HEADER_PREFIX = "Message-Header-"
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"  # what an HTTP header name may hold
_HEADER_NAME = re.compile(_TOKEN)
_MEDIA_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}(;[\x20-\x7e]*)?")


@dataclass(frozen=True)
class WebhookSettings(ConnectorSettings):
    """What ``--connector webhook`` is configured with: ``--connector-option url=...``."""

    connector_name: ClassVar[str] = "webhook"

    url: str = setting(
        "http://127.0.0.1:8080/events", help="Where to POST: http://host:port/path."
    )

    def problems(self) -> list[str]:
        parts = urlsplit(self.url)
        if parts.scheme != "http" or not parts.hostname:
            return ["The webhook URL must look like http://host:port/path."]
        return []


class WebhookConnector:
    """POSTs outbox messages to ``url``, one at a time, in batch order."""

    name = "webhook"
    settings = WebhookSettings  # the relay parses --connector-option into it

    def __init__(self, url: str, *, connect_timeout: float = 5.0) -> None:
        parts = urlsplit(url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80
        self._path = parts.path.rstrip("/")
        self._connect_timeout = connect_timeout

    @classmethod
    def from_config(cls, config: RelayConfig, settings: WebhookSettings) -> WebhookConnector:
        return cls(settings.url, connect_timeout=config.connect_timeout)

    async def open(self) -> None:
        """Check that the endpoint accepts connections."""
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, writer = await asyncio.open_connection(self._host, self._port)
        except (OSError, TimeoutError) as exc:
            where = f"{self._host}:{self._port}"
            raise BrokerUnavailableError(f"The webhook at {where} does not answer.") from exc
        writer.close()

    async def publish(self, batch: Sequence[OutboxMessage], *, timeout: float) -> list[Outcome]:
        """One outcome per message, in batch order, within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        return await asyncio.to_thread(self._post_batch, batch, deadline)

    async def close(self, *, timeout: float) -> None:
        """Nothing to release: each batch has its own connection."""

    def _post_batch(self, batch: Sequence[OutboxMessage], deadline: float) -> list[Outcome]:
        refusals = BatchRefusals(batch)  # keeps each key's order past a refused message
        delivered: list[Outcome] = []
        cut_short: Outcome | None = None
        connection = http.client.HTTPConnection(self._host, self._port)
        try:
            for index, message in refusals.sendable():
                try:
                    headers = request_headers(message)
                except ValueError as exc:  # cannot be sent over HTTP, now or ever
                    refusals.refuse(index, permanent(str(exc)))
                    continue
                outcome = self._post(connection, message, headers, deadline)
                if outcome.delivered:
                    delivered.append(outcome)
                elif outcome.answered:  # the endpoint refused this one: its key waits
                    refusals.refuse(index, outcome)
                else:  # timed out or cut off: this message and the rest are retried
                    cut_short = outcome
                    break
        finally:
            connection.close()
        if cut_short is not None:
            return refusals.merge(itertools.chain(delivered, itertools.repeat(cut_short)))
        return refusals.merge(delivered)

    def _post(
        self,
        connection: http.client.HTTPConnection,
        message: OutboxMessage,
        headers: dict[str, str],
        deadline: float,
    ) -> Outcome:
        left = deadline - time.monotonic()
        if left <= 0:
            return retryable("not sent within the publish timeout")
        connection.timeout = left  # for a new connection
        if connection.sock is not None:
            connection.sock.settimeout(left)  # for the open one
        path = f"{self._path}/{quote(message.topic, safe='')}"
        try:
            connection.request("POST", path, body=message.payload or b"", headers=headers)
            response = connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()  # the next request starts on a new connection
            return retryable(f"the webhook did not answer: {type(exc).__name__}")
        return outcome_of(response.status, response.reason)


def request_headers(message: OutboxMessage) -> dict[str, str]:
    """The message's id, key, content type and headers as HTTP headers; values are
    percent-encoded UTF-8. ValueError for a header name HTTP cannot carry."""
    headers = {"Content-Type": message.content_type, "Message-Id": str(message.id)}
    if message.key is not None:
        headers["Message-Key"] = quote(message.key, safe="")
    for name, value in message.headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"the header name {name[:40]!r} cannot be sent over HTTP")
        headers[HEADER_PREFIX + name] = quote(value, safe="")
    if not _MEDIA_TYPE.fullmatch(message.content_type):
        raise ValueError(f"the content type {message.content_type[:40]!r} is not valid")
    return headers


def outcome_of(status: int, reason: str) -> Outcome:
    if 200 <= status < 300:
        return DELIVERED
    error = f"the webhook answered {status} {reason}"
    if status in (408, 429) or status >= 500:
        return retryable(error, answered=True)
    return Outcome(OutcomeKind.PERMANENT, error, answered=True)
