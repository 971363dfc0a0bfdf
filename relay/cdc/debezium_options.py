"""Debezium's Outbox Event Router options, as ``--cdc-debezium-option name=value`` takes them.

The names and defaults are the router's own (``io.debezium.transforms.outbox.
EventRouterConfigDefinition``), so a connector configuration can be copied over option by
option. Only the options that choose columns, and header placements, have a meaning
here; the others change what the router does in ways the relay does not, and each is
refused with the reason (docs/cdc.md has the full table). The topic is set with
``--topic-template`` (Debezium's ``route.topic.replacement``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

ROUTE_BY_FIELD = "route.by.field"
EVENT_ID = "table.field.event.id"
EVENT_KEY = "table.field.event.key"
EVENT_PAYLOAD = "table.field.event.payload"
EVENT_TIMESTAMP = "table.field.event.timestamp"
ADDITIONAL_PLACEMENT = "table.fields.additional.placement"

_DEFAULT_COLUMNS = {
    ROUTE_BY_FIELD: "aggregatetype",
    EVENT_ID: "id",
    EVENT_KEY: "aggregateid",
    EVENT_PAYLOAD: "payload",
}
SUPPORTED = (*_DEFAULT_COLUMNS, EVENT_TIMESTAMP, ADDITIONAL_PLACEMENT)
# Router options that exist but that the relay does not follow, with the reason.
UNSUPPORTED = {
    "route.topic.replacement": "set the topic with --topic-template, writing {topic} where "
    "Debezium writes ${routedByValue}",
    "route.topic.regex": "the whole routing value is the topic's {topic}",
    "route.tombstone.on.empty.payload": "a NULL payload is always a tombstone and an empty "
    "one is published as it is",
    "table.expand.json.payload": "a JSON payload is always published as its JSON text",
    "table.json.payload.null.behavior": "a JSON payload is always published as its JSON text",
    "table.field.event.type": "every column without a role (id, routing value, key, "
    "payload, timestamp) travels as a header of its own name unless "
    "table.fields.additional.placement says otherwise",
    "table.field.event.schema.version": "the relay sends no schema with the value",
    "table.op.invalid.behavior": "updates and deletes of the table are always ignored",
    "table.fields.additional.error.on.missing": "every column named in the options "
    "must exist",
}
_PLACEMENTS_REFUSED = {
    "envelope": "the relay publishes the payload unchanged as the value, not in an envelope",
    "partition": "the relay leaves the partition to the key",
}


@dataclass(frozen=True, slots=True)
class HeaderPlacement:
    """``column:header[:alias]``: the column's value travels as header ``alias``."""

    column: str
    header: str


@dataclass(frozen=True, slots=True)
class DebeziumRouting:
    """Which column is what, with Debezium's defaults. ``placements`` None: every other
    column becomes a header of its own name (the relay's default, a superset of
    Debezium's); a tuple: exactly those columns, as Debezium does."""

    route_by: str = "aggregatetype"
    event_id: str = "id"
    event_key: str = "aggregateid"
    payload: str = "payload"
    timestamp: str | None = None
    placements: tuple[HeaderPlacement, ...] | None = None

    @property
    def required_columns(self) -> tuple[str, ...]:
        """Every column the options name; the table must have them all."""
        named = [self.event_id, self.route_by, self.event_key, self.payload]
        if self.timestamp is not None:
            named.append(self.timestamp)
        named.extend(p.column for p in self.placements or ())
        return tuple(dict.fromkeys(named))


def routing_problems(options: Mapping[str, str]) -> list[str]:
    """Every problem with ``options``, each as one plain sentence."""
    found: list[str] = []
    for name, value in options.items():
        if name in UNSUPPORTED:
            found.append(f"The Debezium option {name} is not supported: {UNSUPPORTED[name]}.")
        elif name not in SUPPORTED:
            found.append(
                f"The Debezium option {name!r} is unknown; the relay follows "
                f"{', '.join(SUPPORTED)}."
            )
        elif name == ADDITIONAL_PLACEMENT:
            found.extend(_placement_problems(value))
        elif not value.strip():
            found.append(f"The Debezium option {name} needs a column name.")
    return found


def _placement_problems(value: str) -> list[str]:
    found: list[str] = []
    for entry in value.split(","):
        parts = [part.strip() for part in entry.split(":")]
        if len(parts) not in (2, 3) or not all(parts):
            found.append(
                f"The placement {entry.strip()!r} in {ADDITIONAL_PLACEMENT} must be "
                "column:header or column:header:alias."
            )
        elif parts[1].lower() in _PLACEMENTS_REFUSED:
            found.append(f"The placement {entry.strip()!r} is not supported: "
                         f"{_PLACEMENTS_REFUSED[parts[1].lower()]}.")
        elif parts[1].lower() != "header":
            found.append(f"The placement {entry.strip()!r} names an unknown place "
                         f"{parts[1]!r}; the relay supports header.")
    return found


def parse_routing(options: Mapping[str, str]) -> DebeziumRouting:
    """The routing ``options`` describe; call ``routing_problems`` first."""
    columns = {name: options.get(name, default).strip()
               for name, default in _DEFAULT_COLUMNS.items()}
    placements = None
    if ADDITIONAL_PLACEMENT in options:
        placements = tuple(_placement(entry) for entry in options[ADDITIONAL_PLACEMENT].split(","))
    timestamp = options.get(EVENT_TIMESTAMP)
    return DebeziumRouting(
        route_by=columns[ROUTE_BY_FIELD],
        event_id=columns[EVENT_ID],
        event_key=columns[EVENT_KEY],
        payload=columns[EVENT_PAYLOAD],
        timestamp=timestamp.strip() if timestamp else None,
        placements=placements,
    )


def _placement(entry: str) -> HeaderPlacement:
    parts = [part.strip() for part in entry.split(":")]
    return HeaderPlacement(parts[0], parts[2] if len(parts) == 3 else parts[0])
