"""Settings of CDC mode: which slot, publication and table, and how fast to fail over.

``CdcSettings`` is frozen and typed like ``RelayConfig``; names left at ``None`` are
derived from the outbox schema (slot and publication ``outbox_relay_<schema>``, table
``<schema>.messages``). ``resolve(schema)`` turns it into the concrete names one relay uses.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from relay.cdc.debezium_options import DebeziumRouting, parse_routing, routing_problems
from relay.durations import MAX_TIMEOUT, MIN_TIMEOUT, PG_TIMEOUT, DurationRange
from relay.names import is_plain_identifier

DEFAULT_SCHEMA = "outbox"

DEFAULT_HEARTBEAT_INTERVAL = 10.0
DEFAULT_TAKEOVER_TTL = 10.0
# A short linger lets the events committed right behind the first share its batch; a
# longer one raised the p99 for no CPU saved (benchmarks/README.md). Only the first event
# after a publish during which none arrived lingers; events that waited out a publish go
# at once, trading some CPU per message for a lower p99.
DEFAULT_LINGER = 0.002
MIN_TAKEOVER_TTL = 1.0
HEARTBEAT_RANGE = DurationRange(MIN_TIMEOUT, MAX_TIMEOUT, zero="off")
# The leader's connection takes the TTL as tcp_user_timeout and half of it as
# statement_timeout, both int milliseconds.
TAKEOVER_RANGE = DurationRange(MIN_TAKEOVER_TTL, MAX_TIMEOUT, reason=PG_TIMEOUT.reason)
NAME_PREFIX = "outbox_relay_"
# The slot and publication a database's outboxes share in a relay of many (two
# underscores: no schema's derived name can be it unless the schema is "_shared").
SHARED_NAME = "outbox_relay__shared"
MESSAGE_PREFIX = "outbox-relay:"
HEARTBEAT_PREFIX = "outbox-relay-heartbeat"
# --cdc-snapshot: which rows of a Debezium table the first start publishes. The relay's
# own outbox always publishes its pending rows first, whatever this says.
SNAPSHOT_NONE = "none"
SNAPSHOT_EXISTING = "existing"
SNAPSHOT_CHOICES = (SNAPSHOT_NONE, SNAPSHOT_EXISTING)
# Slot names: lowercase letters, digits and underscores, at most 63 bytes (NAMEDATALEN - 1).
_SLOT_NAME = re.compile(r"[a-z0-9_]{1,63}")


@dataclass(frozen=True, slots=True)
class TableName:
    schema: str
    name: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"


def parse_table_name(text: str) -> TableName | None:
    """``schema.table`` of two plain identifiers, or None when it is not that."""
    schema, dot, name = text.partition(".")
    if not dot or not is_plain_identifier(schema) or not is_plain_identifier(name):
        return None
    return TableName(schema, name)


@dataclass(frozen=True, slots=True)
class CdcNames:
    """The concrete names one CDC relay works with."""

    schema: str
    slot: str
    publication: str
    table: TableName
    debezium: bool
    routing: DebeziumRouting | None = None  # set when debezium
    snapshot_existing: bool = False  # a Debezium table's rows are published on first start
    shared: bool = False  # the slot is the database's, shared with its other outboxes

    @property
    def own_name(self) -> str:
        """This outbox's name for its own locks and derived ids: the slot's, or the
        slot's and the schema's when the slot is shared."""
        return f"{self.slot}/{self.schema}" if self.shared else self.slot

    @property
    def message_prefix(self) -> str:
        """Prefix of the logical messages ``<schema>.emit()`` writes (see 0002_cdc.sql)."""
        return f"{MESSAGE_PREFIX}{self.schema}"


@dataclass(frozen=True)
class CdcSettings:
    """What ``outbox-relay run --mode cdc`` needs beyond RelayConfig.

    ``table`` is ``schema.table``; ``None`` captures the relay's own outbox table.
    ``debezium`` reads ``table`` as a Debezium outbox table (id, aggregatetype,
    aggregateid, type, payload, extra columns as headers), with ``debezium_options``
    (Debezium's own router option names, relay.cdc.debezium_options) choosing the columns;
    ``snapshot`` ``existing`` also publishes the rows already in such a table when the slot
    is first created. ``heartbeat_interval`` 0
    turns the heartbeat off. A standby takes over within about ``takeover_ttl * 1.25``
    of the active relay freezing, and within ``takeover_ttl / 4`` of it dying.
    """

    slot: str | None = None
    publication: str | None = None
    table: str | None = None
    debezium: bool = False
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    takeover_ttl: float = DEFAULT_TAKEOVER_TTL
    linger: float = DEFAULT_LINGER
    snapshot: str = SNAPSHOT_NONE
    debezium_options: Mapping[str, str] = field(default_factory=dict)
    # Several outboxes of one database stream through one slot and one publication,
    # named SHARED_NAME unless given (docs/multi-tenant.md).
    shared: bool = False

    def names_one_outbox(self) -> bool:
        """A table named outright, or a Debezium mapping: they belong to one outbox."""
        return self.table is not None or self.debezium

    def _default_name(self, schema: str) -> str:
        return SHARED_NAME if self.shared else f"{NAME_PREFIX}{schema}"

    def resolve(self, schema: str) -> CdcNames:
        """The names for outbox ``schema``; call ``problems()`` first."""
        derived = self._default_name(schema)
        table = parse_table_name(self.table) if self.table else TableName(schema, "messages")
        if table is None:
            raise ValueError(f"not a schema.table name: {self.table!r}")
        return CdcNames(
            schema=schema,
            slot=self.slot or derived,
            publication=self.publication or derived,
            table=table,
            debezium=self.debezium,
            routing=parse_routing(self.debezium_options) if self.debezium else None,
            snapshot_existing=self.debezium and self.snapshot == SNAPSHOT_EXISTING,
            shared=self.shared,
        )

    def problems(
        self, schema: str = DEFAULT_SCHEMA, *, publish_timeout: float | None = None
    ) -> list[str]:
        """Every problem with these settings, each as one plain sentence.

        With ``publish_timeout`` it also checks that a leader's lease outlives a publish.
        """
        found: list[str] = []
        slot = self.slot or self._default_name(schema)
        if not _SLOT_NAME.fullmatch(slot):
            found.append(
                f"The replication slot name {slot!r} is not valid: use at most 63 lowercase "
                "letters, digits and underscores (pass --cdc-slot for a long schema name)."
            )
        publication = self.publication or self._default_name(schema)
        if not is_plain_identifier(publication):
            found.append(
                f"The publication name {publication!r} is not a plain identifier of at most "
                "63 characters (pass --cdc-publication for a long schema name)."
            )
        if self.table is not None and parse_table_name(self.table) is None:
            found.append(
                f"The CDC table {self.table!r} must be written schema.table, both plain "
                "identifiers."
            )
        if self.debezium and self.table is None:
            found.append("Debezium mapping needs the outbox table to capture (--cdc-table).")
        found.extend(self._debezium_problems())
        if problem := HEARTBEAT_RANGE.problem("CDC heartbeat interval", self.heartbeat_interval):
            found.append(problem)
        if problem := TAKEOVER_RANGE.problem("CDC takeover TTL", self.takeover_ttl):
            found.append(problem)
        if not 0 <= self.linger <= 1:
            found.append("The CDC linger must be between 0 and 1 second.")
        if publish_timeout is not None and self.takeover_ttl < 2 * publish_timeout:
            found.append(
                "The CDC takeover TTL must be at least twice the publish timeout, so a "
                "standby cannot take over while the leader still waits for the broker."
            )
        return found

    def _debezium_problems(self) -> list[str]:
        found: list[str] = []
        if self.snapshot not in SNAPSHOT_CHOICES:
            found.append(f"The CDC snapshot {self.snapshot!r} is unknown; choose one of: "
                         f"{', '.join(SNAPSHOT_CHOICES)}.")
        elif self.snapshot == SNAPSHOT_EXISTING and not self.debezium:
            found.append("--cdc-snapshot existing is for Debezium tables (--cdc-debezium); "
                         "the relay's own outbox always publishes its pending rows first.")
        if self.debezium_options and not self.debezium:
            found.append("Debezium options (--cdc-debezium-option) need --cdc-debezium.")
        found.extend(routing_problems(self.debezium_options))
        return found

