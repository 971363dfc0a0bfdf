"""Logging set-up: one line per event, secrets scrubbed from every record."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

from relay.dsn import redact


class ScrubSecrets(logging.Filter):
    """Replaces known secrets and URL/DSN passwords in the rendered message."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        message = redact(record.getMessage())
        for secret in self._secrets:
            message = message.replace(secret, "***")
        record.msg, record.args = message, None
        return True


def configure_logging(level: str, secrets: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(ScrubSecrets(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # librdkafka and pika are chatty at INFO; their problems reach us as outcomes.
    logging.getLogger("pika").setLevel(logging.WARNING)
