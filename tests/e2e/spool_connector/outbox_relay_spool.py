"""A third-party outbox-relay connector: each message as one signed JSON line in a file.

Written the way a connector author would, against the public boundary only: the
``outbox_relay.connectors`` entry point, a ``ConnectorSettings`` class with settings of
its own (one of them secret), and the three-method connector protocol.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO, ClassVar

from relay.config import RelayConfig
from relay.connector_settings import ConnectorSettings, setting
from relay.model import DELIVERED, OutboxMessage, Outcome, permanent, retryable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpoolSettings(ConnectorSettings):
    connector_name: ClassVar[str] = "spool"

    path: str = setting("", required=True, help="The file each message is appended to.")
    signing_key: str = setting(
        "", name="signing.key", secret=True, required=True, help="Key of each line's HMAC."
    )
    fsync: bool = setting(True, help="fsync the file before a batch counts as delivered.")
    max_payload_bytes: int = setting(
        65536, name="max.payload.bytes", help="Larger payloads are refused for good."
    )

    def problems(self) -> list[str]:
        found = []
        if not os.path.isdir(os.path.dirname(os.path.abspath(self.path))):
            found.append("The spool file's directory does not exist.")
        if len(self.signing_key) < 8:
            found.append("The spool signing.key must be at least 8 characters long.")
        if self.max_payload_bytes < 1:
            found.append("The spool max.payload.bytes must be at least 1.")
        return found


def signed_line(key: str, message: OutboxMessage) -> bytes:
    record = {
        "id": str(message.id),
        "topic": message.topic,
        "key": message.key,
        "payload": base64.b64encode(message.payload or b"").decode(),
    }
    body = json.dumps(record, sort_keys=True)
    mac = hmac.new(key.encode(), body.encode(), hashlib.sha256).hexdigest()
    return f"{mac} {body}\n".encode()


class SpoolConnector:
    """Appends each message to a file as one signed JSON line."""

    name = "spool"
    settings = SpoolSettings

    def __init__(self, settings: SpoolSettings) -> None:
        self._settings = settings
        self._file: BinaryIO | None = None

    @classmethod
    def from_config(cls, config: RelayConfig, settings: SpoolSettings) -> SpoolConnector:
        return cls(settings)

    async def open(self) -> None:
        if self._file is None:
            self._file = open(self._settings.path, "ab")  # noqa: SIM115 - closed in close()
            # Careless on purpose: the relay scrubs a declared secret from every log line,
            # a connector's own lines included.
            settings = self._settings
            log.debug("spool %s open, signing with %s", settings.path, settings.signing_key)

    async def publish(self, batch: Sequence[OutboxMessage], *, timeout: float) -> list[Outcome]:
        if self._file is None:
            return [retryable("the spool file is not open")] * len(batch)
        outcomes: list[Outcome] = []
        lines: list[bytes] = []
        refused: set[str] = set()
        for message in batch:
            if message.key is not None and message.key in refused:
                outcomes.append(retryable("behind a refused message of the same key"))
            elif len(message.payload or b"") > self._settings.max_payload_bytes:
                outcomes.append(permanent("the payload is larger than max.payload.bytes"))
                if message.key is not None:
                    refused.add(message.key)
            else:
                lines.append(signed_line(self._settings.signing_key, message))
                outcomes.append(DELIVERED)
        await asyncio.to_thread(self._write, lines)
        return outcomes

    def _write(self, lines: list[bytes]) -> None:
        assert self._file is not None
        self._file.write(b"".join(lines))
        self._file.flush()
        if self._settings.fsync:
            os.fsync(self._file.fileno())

    async def close(self, *, timeout: float) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
