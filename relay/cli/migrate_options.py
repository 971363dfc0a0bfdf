"""The options of ``outbox-relay migrate``, ``status`` and ``doctor`` that ``run`` has
not, or says differently: which SQL ``migrate`` prints, and what ``--dsn`` and
``--schema-pattern`` mean to a command that runs once."""

from __future__ import annotations

from typing import Annotated

import typer

from relay.cli.outbox_options import dsns_option, schema_pattern_option
from relay.grants import GRANT_MODES

MigrateDsnsOption = Annotated[
    list[str] | None,
    dsns_option(
        "PostgreSQL connection string; give it again for each database. With "
        "--print: print only the migrations this database still needs."
    ),
]
StatusDsnsOption = Annotated[
    list[str] | None,
    dsns_option(
        "PostgreSQL connection string (URL or key=value); give it again for each database to show."
    ),
]
DoctorDsnsOption = Annotated[
    list[str] | None,
    dsns_option(
        "PostgreSQL connection string (URL or key=value); give it again for each database to check."
    ),
]
MigrateSchemaPatternOption = Annotated[
    str | None,
    schema_pattern_option(
        "Also every schema of each database whose name matches this LIKE pattern "
        "('tenant_%'), with an outbox or not yet."
    ),
]
StatusSchemaPatternOption = Annotated[
    str | None,
    schema_pattern_option(
        "Also every schema of each database whose name matches this LIKE pattern "
        "('tenant_%') and holds an outbox."
    ),
]
PrintSqlOption = Annotated[
    bool,
    typer.Option(
        "--print",
        "--dry-run",
        envvar="OUTBOX_RELAY_MIGRATE_PRINT",
        help="Write the SQL to stdout instead of applying it, one block per migration "
        "(for Alembic, Flyway, Django, ...).",
    ),
]
PrintGrantsOption = Annotated[
    str | None,
    typer.Option(
        "--print-grants",
        envvar="OUTBOX_RELAY_MIGRATE_PRINT_GRANTS",
        metavar="ROLE",
        show_default=False,
        help="Write the GRANTs ROLE needs (see --mode) to stdout; connects to nothing.",
    ),
]
GrantsModeOption = Annotated[
    str,
    typer.Option(
        "--mode",
        envvar="OUTBOX_RELAY_MODE",
        metavar="MODE",
        help=f"With --print-grants, what the role does: {', '.join(GRANT_MODES)}.",
    ),
]
