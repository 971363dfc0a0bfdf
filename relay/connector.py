"""The connector protocol and the registry that finds connectors by name.

A connector is the only piece that talks to a broker. It is deliberately small
(Watermill's Publisher, Debezium Server's sink): open, publish one batch with a timeout
and get exactly one outcome per message, close. Retries, ordering, leases and metrics
live outside it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Protocol, cast, runtime_checkable

from relay.config import RelayConfig
from relay.connector_settings import ConnectorSettings
from relay.errors import ConfigError
from relay.model import OutboxMessage, Outcome

ENTRY_POINT_GROUP = "outbox_relay.connectors"
_PROJECT_NAME = re.compile(r"^\s*[A-Za-z0-9][A-Za-z0-9._-]*")
_EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


@runtime_checkable
class Connector(Protocol):
    """A broker client that publishes batches of outbox messages."""

    name: str

    async def open(self) -> None:
        """Connect and verify the broker is usable. Raises a RelayError when not."""

    async def publish(self, batch: Sequence[OutboxMessage], *, timeout: float) -> list[Outcome]:
        """Publish ``batch`` in order; return one outcome per message, in batch order.

        Must return within ``timeout`` seconds (plus a small grace) and must not raise for
        a per-message failure: a broker that is down yields RETRYABLE outcomes.
        Messages with the same key must reach the broker in batch order.
        """
        ...

    async def close(self, *, timeout: float) -> None:
        """Release the broker connection. Harmless when called twice or before open."""


class ConnectorFactory(Protocol):
    """What an ``outbox_relay.connectors`` entry point names (usually the connector class).

    ``settings`` is its ``ConnectorSettings`` subclass: the relay parses the user's options
    with it (so every problem is reported before anything connects, and ``outbox-relay
    connectors NAME`` can describe them) and hands the result to ``from_config``.
    """

    settings: type[ConnectorSettings]

    # ``settings`` is the connector's own subclass; Any keeps each connector's signature
    # precise (a parameter typed with the base class would make them incompatible).
    @classmethod
    def from_config(cls, config: RelayConfig, settings: Any) -> Connector: ...


def installed_connectors() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))


def connector_factory(name: str) -> ConnectorFactory:
    """The factory of connector ``name``; ConfigError when it is unknown or its client
    library is missing (saying which extra to install)."""
    matches = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not matches:
        names = ", ".join(installed_connectors()) or "none"
        raise ConfigError(f"unknown connector {name!r}; installed connectors: {names}")
    try:
        factory = matches[0].load()
    except ModuleNotFoundError as exc:
        raise ConfigError(missing_library(matches[0], exc)) from None
    settings = getattr(factory, "settings", None)
    if not (isinstance(settings, type) and issubclass(settings, ConnectorSettings)):
        raise ConfigError(
            f"the connector {name!r} does not declare its settings (a ConnectorSettings "
            "subclass as its `settings` attribute)"
        )
    return cast(ConnectorFactory, factory)


def connector_settings(config: RelayConfig) -> ConnectorSettings:
    """The connector's parsed settings; ConfigError listing every problem."""
    return connector_factory(config.connector).settings.parse(config.connector_options)


def load_connector(config: RelayConfig) -> Connector:
    """Build the connector named in ``config``; an unknown name lists the installed ones."""
    factory = connector_factory(config.connector)
    return factory.from_config(config, factory.settings.parse(config.connector_options))


def missing_library(entry_point: EntryPoint, exc: ModuleNotFoundError) -> str:
    """One sentence for a connector whose client library is not installed: the extra of
    the connector's distribution that brings it, when there is one."""
    module = (exc.name or "").partition(".")[0]
    dist = entry_point.dist
    extra = _extra_providing(dist.requires or [], module, entry_point.name) if dist else None
    if dist is not None and extra is not None:
        return (
            f"the {entry_point.name} connector needs the Python module {module}, which is not "
            f"installed; install it with: pip install '{dist.name}[{extra}]'"
        )
    return (
        f"the {entry_point.name} connector cannot be loaded: the Python module {module or '?'} "
        "is not installed"
    )


def _extra_providing(requires: list[str], module: str, connector: str) -> str | None:
    """The extra whose requirements include the project named like ``module``
    (``confluent_kafka`` -> confluent-kafka); the one named after the connector first."""
    extras: list[str] = []
    for requirement in requires:
        project = _PROJECT_NAME.match(requirement)
        marker = _EXTRA_MARKER.search(requirement)
        if project and marker and _normal(project.group(0)) == _normal(module):
            extras.append(marker.group(1))
    if connector in extras:
        return connector
    return extras[0] if extras else None


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()
