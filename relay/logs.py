"""Logging set-up: one line per event (text or JSON), secrets scrubbed from every record."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson

from relay.secrets import redact

_TRACEBACKS = logging.Formatter()

# The outbox whose work logs a line, in a relay of several (relay.fleet sets it in each
# outbox's task; the tasks it starts inherit it): text lines begin with [database/schema],
# JSON lines have an "outbox" field.
CURRENT_OUTBOX: ContextVar[str | None] = ContextVar("outbox_relay_outbox", default=None)


class NameTheOutbox(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if (outbox := CURRENT_OUTBOX.get()) is not None:
            record.outbox = outbox
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        outbox = getattr(record, "outbox", None)
        if outbox is None:
            return line
        head, _, message = line.partition(f"{record.name}: ")
        return f"{head}{record.name}: [{outbox}] {message}"


class ScrubSecrets(logging.Filter):
    """Replaces known secrets and URL/DSN passwords in the message and its traceback."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage(), self._secrets), None
        if record.exc_info and not record.exc_text:
            # Formatters print exc_text when it is set: the scrubbed one, then.
            record.exc_text = _TRACEBACKS.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self._secrets)
        return True


# Attributes every LogRecord has; anything else came in through ``extra=`` and is kept.
_STANDARD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line. Field names are stable (alerting and log pipelines key
    on them): ``time`` (UTC, RFC 3339), ``level``, ``logger``, ``message``, then
    ``exception`` when there is one and any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)  # as Formatter does
        if record.exc_text:
            entry["exception"] = redact(record.exc_text)
        for name, value in record.__dict__.items():
            if name not in _STANDARD_ATTRIBUTES and not name.startswith("_"):
                entry[name] = value
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str, secrets: Iterable[str] = (), log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    handler.addFilter(ScrubSecrets(secrets))
    handler.addFilter(NameTheOutbox())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
