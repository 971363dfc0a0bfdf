"""``migrate``, ``status`` and ``doctor`` over several outboxes: every database of
``--dsn`` with every schema of ``--schema`` and those ``--schema-pattern`` matches
(docs/multi-tenant.md).

Each outbox is worked on by itself: one that fails is named with its reason, and the
others go on. The commands of one outbox keep their own output; these shapes are for
several, chosen by the flags given, not by how many outboxes a pattern found, so that a
script reading them sees one shape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg
import typer

from relay import config as defaults
from relay.cdc.preflight import Check, run_checks
from relay.cdc.settings import CdcSettings
from relay.cdc.status import cdc_status
from relay.cli.common import relay_version
from relay.cli.inbox import describe_migration
from relay.config import RelayConfig
from relay.errors import ConfigError, RelayError, translate_db_error
from relay.migrations import migrate
from relay.names import check_schema_name
from relay.outboxes import (
    OutboxAddress,
    database_labels,
    existing_schemas_like,
    pattern_problem,
    schemas_like,
)
from relay.status import collect_status, format_many_status, status_totals

Connect = Callable[[str], psycopg.Connection[Any]]
# (connection, pattern) -> the schemas the pattern selects in that database
Lookup = Callable[[psycopg.Connection[Any], str], list[str]]
# A pattern that selects nothing in a database is a mistake more often than not (a typo,
# the wrong database): said, and the command exits 1, rather than doing nothing quietly.
_NO_SCHEMA = "no schema matches the pattern {!r}; create the schemas first"
_NO_OUTBOX = "no schema that matches the pattern {!r} holds an outbox; run outbox-relay migrate"


@dataclass(frozen=True)
class OutboxChoice:
    """The outboxes a command was asked for, before any database is asked which schemas
    match the pattern."""

    dsns: tuple[str, ...]
    schemas: tuple[str, ...]
    pattern: str | None = None

    @property
    def named_schemas(self) -> tuple[str, ...]:
        """The schemas named outright; the default one only if none and no pattern."""
        if self.schemas or self.pattern is not None:
            return self.schemas
        return (defaults.DEFAULT_SCHEMA,)

    @property
    def many(self) -> bool:
        """More than one outbox, or a pattern that may find any number of them."""
        return max(len(self.dsns), 1) * len(self.named_schemas) > 1 or self.pattern is not None

    def check(self) -> None:
        """Raise ConfigError for the first thing wrong in what was typed."""
        for schema in self.named_schemas:
            check_schema_name(schema)
        if len(set(self.schemas)) < len(self.schemas):
            raise ConfigError("the same schema is given twice; give each schema once")
        if len(set(self.dsns)) < len(self.dsns):
            raise ConfigError("the same database DSN is given twice; give each database once")
        if self.pattern is not None and (problem := pattern_problem(self.pattern)):
            raise ConfigError(problem)

    def require_dsns(self) -> None:
        """Several outboxes are in some database: one must be named (``--print`` needs none)."""
        if not self.dsns:
            raise ConfigError("the database DSN is empty; pass --dsn or set OUTBOX_RELAY_DSN")


@dataclass(frozen=True)
class Failure:
    """What could not be done for one outbox, or for a database's pattern lookup."""

    database: str
    schema: str | None  # None: the pattern could not be looked up, or matched nothing
    reason: str
    pattern: str | None = None

    @property
    def name(self) -> str:
        return f"{self.database}/{self.schema if self.schema is not None else self.pattern}"


@dataclass
class Databases:
    """Connections to the chosen databases. A database that cannot be reached is tried
    once: its other outboxes get the same reason without waiting for another timeout."""

    connect: Connect
    _down: dict[str, str] = field(default_factory=dict)

    def open(self, dsn: str) -> psycopg.Connection[Any]:
        if dsn in self._down:
            raise RelayError(self._down[dsn])
        try:
            return self.connect(dsn)
        except RelayError as exc:
            self._down[dsn] = str(exc)
            raise

    def down(self, dsn: str) -> str | None:
        """Why ``dsn`` could not be reached, if it was tried and could not."""
        return self._down.get(dsn)

    def mark_down(self, dsn: str, why: str) -> None:
        """``dsn`` was found unreachable elsewhere (``doctor`` connects by itself)."""
        self._down.setdefault(dsn, why)


def reason(exc: RelayError | psycopg.Error) -> str:
    """One sentence for a failure of one outbox (a driver error translated once)."""
    if isinstance(exc, psycopg.Error):
        exc = translate_db_error(exc, "PostgreSQL refused the command")
    return str(exc)


def _selected(
    choice: OutboxChoice, databases: Databases, lookup: Lookup, no_match: str
) -> Iterator[OutboxAddress | Failure]:
    """Every chosen outbox in the order given, database by database; a database whose
    pattern lookup failed, or matched nothing, as a Failure in its place."""
    for dsn, label in zip(choice.dsns, database_labels(choice.dsns), strict=True):
        schemas = list(choice.named_schemas)
        if choice.pattern is not None:
            found = _matching(choice.pattern, dsn, label, databases, lookup)
            found = found or Failure(label, None, no_match.format(choice.pattern), choice.pattern)
            if isinstance(found, Failure):
                yield found
            else:
                schemas.extend(found)
        for schema in dict.fromkeys(schemas):
            yield OutboxAddress(label, schema, dsn)


def _matching(
    pattern: str, dsn: str, label: str, databases: Databases, lookup: Lookup
) -> list[str] | Failure:
    try:
        with databases.open(dsn) as conn:
            found = lookup(conn, pattern)
    except (RelayError, psycopg.Error) as exc:
        return Failure(label, None, reason(exc), pattern)
    return found


def migrate_each(
    choice: OutboxChoice, tracks: tuple[str, ...], connect: Connect
) -> Iterator[str | Failure]:
    """Migrate every chosen outbox, each on its own connection in its own transaction:
    a line saying what was applied, or the Failure that names it."""
    databases = Databases(connect)
    selected = _selected(choice, databases, existing_schemas_like, _NO_SCHEMA)
    for outbox in selected:
        if isinstance(outbox, Failure):
            yield outbox
            continue
        try:
            with databases.open(outbox.dsn) as conn:
                applied = migrate(conn, outbox.schema, tracks=tracks)
        except (RelayError, psycopg.Error) as exc:
            yield Failure(outbox.database, outbox.schema, reason(exc))
            continue
        yield f"{outbox.name}: {describe_migration(outbox.schema, applied, tracks)}"


def status_each(choice: OutboxChoice, connect: Connect) -> list[dict[str, Any]]:
    """Every chosen outbox's status (``database`` and ``schema`` first), or its ``error``."""
    databases = Databases(connect)
    shown: list[dict[str, Any]] = []
    by_dsn: dict[str, list[OutboxAddress]] = {}
    for outbox in _selected(choice, databases, schemas_like, _NO_OUTBOX):
        if isinstance(outbox, Failure):
            shown.append(_failed(outbox))
        else:
            by_dsn.setdefault(outbox.dsn, []).append(outbox)
    for outboxes in by_dsn.values():
        shown.extend(_statuses_of(outboxes, databases))
    return shown


def _statuses_of(outboxes: list[OutboxAddress], databases: Databases) -> list[dict[str, Any]]:
    """The status of each outbox of one database, read over one connection."""
    try:
        conn = databases.open(outboxes[0].dsn)
    except RelayError as exc:
        return [_failed(Failure(o.database, o.schema, reason(exc))) for o in outboxes]
    with conn:
        return [_status_of(conn, outbox) for outbox in outboxes]


def _status_of(conn: psycopg.Connection[Any], outbox: OutboxAddress) -> dict[str, Any]:
    try:
        status = collect_status(conn, outbox.schema)
        cdc = cdc_status(conn, outbox.schema, None)
    except (RelayError, psycopg.Error) as exc:
        return _failed(Failure(outbox.database, outbox.schema, reason(exc)))
    if cdc["exists"]:
        status["cdc"] = cdc
    return {"database": outbox.database, **status}


def _failed(failure: Failure) -> dict[str, Any]:
    shown: dict[str, Any] = {"database": failure.database, "schema": failure.schema}
    if failure.pattern is not None:
        shown["schema_pattern"] = failure.pattern
    return {**shown, "error": failure.reason}


def report_each(lines: Iterable[str | Failure], scrub: Callable[[str], str]) -> bool:
    """Print one line per outbox as each is done, a failure on stderr naming its outbox
    (``scrub`` takes the passwords out); whether none failed."""
    failed = False
    for line in lines:
        if isinstance(line, Failure):
            failed = True
            typer.echo(f"outbox-relay: error: {scrub(f'{line.name}: {line.reason}')}", err=True)
        else:
            typer.echo(line)
    return not failed


def show_many_status(
    choice: OutboxChoice, connect: Connect, scrub: Callable[[str], str], *, as_json: bool
) -> bool:
    """Print each outbox's status (one that could not be read with its reason) and the
    totals; whether every outbox was read."""
    shown = status_each(choice, connect)
    for status in shown:
        if "error" in status:
            status["error"] = scrub(status["error"])
    totals = status_totals(shown)
    if as_json:
        whole = {"version": relay_version(), "outboxes": shown, "totals": totals}
        typer.echo(orjson.dumps(whole, option=orjson.OPT_INDENT_2).decode())
    else:
        typer.echo(format_many_status(shown, totals))
    return not totals["failed"]


def show_checks(checks: Iterable[Check], scrub: Callable[[str], str]) -> bool:
    """Print ``doctor``'s ``ok``/``FAIL`` lines; whether every check passed."""
    passed = True
    for check in checks:
        passed = passed and check.ok
        typer.echo(scrub(f"{'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}"))
    return passed


def doctor_each(
    choice: OutboxChoice, mode: str, cdc: CdcSettings, connect: Connect, scrub: Callable[[str], str]
) -> bool:
    """``doctor``: the checks of the chosen outboxes printed; whether all passed. One
    outbox is checked and printed as it always was, without a heading."""
    if choice.many:
        return _doctor_many(choice, mode, cdc, connect, scrub)
    schema = choice.named_schemas[0]
    if mode == "cdc" and (problems := cdc.problems(schema)):
        raise ConfigError(" ".join(problems))
    config = RelayConfig(
        dsn=choice.dsns[0] if choice.dsns else "", schema=schema, mode=mode, cdc=cdc
    )
    return show_checks(run_checks(config.dsn, config, lead=True), scrub)


def _doctor_many(
    choice: OutboxChoice,
    mode: str,
    cdc: CdcSettings,
    connect: Connect,
    scrub: Callable[[str], str],
) -> bool:
    """Check every chosen outbox as ``doctor`` checks one, in a block headed by its name
    printed as soon as it is done; whether every check of every outbox passed. The flags
    are judged as ``run`` judges them first, so ``doctor`` refuses what ``run`` refuses
    (a slot named for several outboxes, in the same sentence)."""
    choice.require_dsns()
    config = RelayConfig(
        dsn=choice.dsns[0],
        dsns=choice.dsns if len(choice.dsns) > 1 else (),
        schemas=choice.schemas,
        schema_pattern=choice.pattern,
        mode=mode,
        cdc=cdc,
    ).validate()
    databases = Databases(connect)
    passed = True
    for outbox in _selected(choice, databases, schemas_like, _NO_OUTBOX):
        if isinstance(outbox, Failure):
            name, checks = outbox.name, [_pattern_check(outbox)]
        else:
            name, checks = outbox.name, _checks_of(outbox, config, databases)
        typer.echo(f"== {name} ==")
        passed = show_checks(checks, scrub) and passed
    return passed


def _pattern_check(failure: Failure) -> Check:
    """A pattern that matched no outbox, or whose database could not be asked."""
    unmatched = failure.reason == _NO_OUTBOX.format(failure.pattern)
    return Check("outbox schema" if unmatched else "database", False, failure.reason)


def _checks_of(outbox: OutboxAddress, config: RelayConfig, databases: Databases) -> list[Check]:
    """``doctor``'s checks of one outbox. A database found unreachable is not tried
    again for its other outboxes: each gets the same FAIL line without another wait."""
    if (why := databases.down(outbox.dsn)) is not None:
        return [Check("database", False, why)]
    checks = run_checks(outbox.dsn, config.for_outbox(outbox), lead=True)
    if checks[0].name == "database" and not checks[0].ok:
        databases.mark_down(outbox.dsn, checks[0].detail)
    return checks
