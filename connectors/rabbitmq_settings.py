"""The RabbitMQ connector's settings: the broker's URL (a secret) and the exchange."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from connectors.amqp_url import url_parameters, url_problems
from relay.connector_settings import ConnectorSettings, setting
from relay.errors import ConfigError

DEFAULT_URL = "amqp://guest:guest@localhost:5672/%2F"
DEFAULT_EXCHANGE = "outbox"
# AMQP short strings: exchange names are letters, digits, hyphen, underscore, period, colon.
_AMQP_NAME = re.compile(r"^[A-Za-z0-9_.:\-]{1,255}$")


@dataclass(frozen=True)
class RabbitMQSettings(ConnectorSettings):
    """What ``--connector rabbitmq`` is configured with."""

    connector_name: ClassVar[str] = "rabbitmq"

    url: str = setting(
        DEFAULT_URL,
        secret=True,
        help="amqp[s]://user:password@host:port/vhost; TLS files as RabbitMQ's URI query "
        "parameters (cacertfile, certfile, keyfile, verify, server_name_indication).",
    )
    exchange: str = setting(
        DEFAULT_EXCHANGE,
        help="The durable topic exchange to publish to; a message's topic is its routing key.",
    )

    def problems(self) -> list[str]:
        found = url_problems(self.url)
        if not found:
            try:
                url_parameters(self.url)  # pika's own parameters and the TLS files
            except ConfigError as exc:
                found.append(_sentence(str(exc)))
        if not _AMQP_NAME.match(self.exchange):
            found.append(f"The exchange name {self.exchange!r} has characters AMQP forbids.")
        return found


def _sentence(text: str) -> str:
    text = text[:1].upper() + text[1:]
    return text if text.endswith(".") else text + "."
