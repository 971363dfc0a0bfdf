"""`migrate --print-grants`: the printed privileges cover every query each role runs.

The integration tests prove it against PostgreSQL; these read the SQL files, so a new
query or table that the grants forgot fails here first, with the missing privilege named.
"""

from __future__ import annotations

import re
from collections import defaultdict
from importlib import resources

import pytest

from relay.errors import ConfigError
from relay.grants import GRANT_MODES, render_grants
from relay.sqlfiles import parse_named_blocks

SCHEMA = "outbox"
Needs = dict[str, set[str]]


def blocks(filename: str) -> dict[str, str]:
    text = resources.files("relay.sql").joinpath(filename).read_text(encoding="utf-8")
    return parse_named_blocks(text)


def needed(statements: list[str]) -> Needs:
    """Table -> privileges (and function -> EXECUTE) that the statements use."""
    needs: Needs = defaultdict(set)
    for text in statements:
        read = re.findall(r"\b(?:FROM|JOIN)\s+\{schema\}\.(\w+)", text)
        for table in read:
            needs[table].add("SELECT")
        for table in re.findall(r"\bINSERT INTO\s+\{schema\}\.(\w+)", text):
            needs[table].add("INSERT")
            if "DO UPDATE" in text:
                needs[table] |= {"UPDATE", "SELECT"}
            if "RETURNING" in text:
                needs[table].add("SELECT")
        for table in re.findall(r"\bUPDATE\s+\{schema\}\.(\w+)", text):
            needs[table] |= {"UPDATE", "SELECT"}
        if "FOR UPDATE" in text:  # row locks need UPDATE on the tables read
            for table in read:
                needs[table].add("UPDATE")
        for function in re.findall(r"(?<!INTO )\{schema\}\.(\w+)\(", text):
            needs[function].add("EXECUTE")
    return needs


def granted(script: str) -> Needs:
    found: Needs = defaultdict(set)
    pattern = re.compile(r"^GRANT (.+?) ON (FUNCTION )?(.+?) TO ", re.M | re.S)
    for privileges, function, targets in pattern.findall(script):
        if function:
            names = re.findall(rf'"{SCHEMA}"\.(\w+)\(', targets)
            privileges = "EXECUTE"
        else:
            names = re.findall(rf'"{SCHEMA}"\.(\w+)', targets)
        for name in names:
            for privilege in re.sub(r"\([^)]*\)", "", privileges).split(","):
                found[name].add(privilege.strip())
    return found


def missing(needs: Needs, have: Needs) -> dict[str, set[str]]:
    return {name: privs - have[name] for name, privs in needs.items() if privs - have[name]}


QUERIES = blocks("queries.sql")
PRODUCER_QUERIES = ("enqueue_json", "enqueue_message")
CDC_BY_OWNER = ("create_publication", "snapshot_rows_of_table")  # owner / user's own table
CDC_FROM_QUERIES = (
    "heartbeat",
    "forget_relay",
    "release_all_leases",
    "status_backlog",
    "status_relays",
    "held_keys",
    # set-aside messages: polling mode's writes after a batch (relay/cdc/aside.py)
    "mark_sent",
    "delete_sent",
    "purge_sent",
    "dead_letter",
    "release_holds",
    "record_failures",
    "hold_keys",
)


def test_polling_grants_cover_the_relay_status_and_dead_letter_queries():
    statements = [text for name, text in QUERIES.items() if name not in PRODUCER_QUERIES]
    statements += list(blocks("dead_letters.sql").values())
    statements += [blocks("cdc.sql")[name] for name in ("state", "slot_info")]  # status
    assert missing(needed(statements), granted(render_grants("r", SCHEMA, "poll"))) == {}


def test_cdc_grants_cover_the_streaming_relay_and_status_queries():
    statements = [text for name, text in blocks("cdc.sql").items() if name not in CDC_BY_OWNER]
    statements += list(blocks("cdc_set_aside.sql").values())
    statements += [QUERIES[name] for name in CDC_FROM_QUERIES]
    statements += list(blocks("dead_letters.sql").values())
    assert missing(needed(statements), granted(render_grants("r", SCHEMA, "cdc"))) == {}


def test_inbox_grants_cover_the_inbox_queries():
    needs = needed(list(blocks("inbox.sql").values()))
    assert missing(needs, granted(render_grants("r", SCHEMA, "inbox"))) == {}


def test_producer_grants_cover_enqueue_and_nothing_of_the_relay():
    have = granted(render_grants("r", SCHEMA, "producer"))
    assert missing(needed([QUERIES[name] for name in PRODUCER_QUERIES]), have) == {}
    assert {"enqueue", "enqueue_binary", "emit", "emit_binary", "uuid_v7"} <= set(have)
    assert have["messages"] == {"INSERT", "SELECT"}  # SELECT of the id column only
    assert not {"key_holds", "relays", "bucket_leases", "dead_letters"} & set(have)


def test_only_cdc_asks_for_replication_and_no_mode_for_more():
    for mode in GRANT_MODES:
        script = render_grants("relay", SCHEMA, mode)
        statements = "\n".join(
            line for line in script.splitlines() if not line.lstrip().startswith("--")
        )
        assert ("WITH REPLICATION" in statements) == (mode == "cdc")
        for power in ("SUPERUSER", "CREATEROLE", "CREATEDB", "BYPASSRLS", "ALL PRIVILEGES"):
            assert power not in statements
        assert "GRANT CREATE" not in statements
        assert script.count("BEGIN;") == 1 and script.count("COMMIT;") == 1
        transaction, after = script.split("COMMIT;")
        # what only a superuser may do stands apart, after the COMMIT, labelled as such
        assert "WITH REPLICATION" not in transaction
        assert ("NEEDS A SUPERUSER" in after) == ("WITH REPLICATION" in after) == (mode == "cdc")


def test_the_cdc_publication_is_created_by_the_owner_with_the_derived_name():
    script = render_grants("relay", "billing", "cdc")
    assert (
        'CREATE PUBLICATION "outbox_relay_billing" FOR TABLE "billing".messages '
        "WITH (publish = 'insert')" in script
    )
    custom = render_grants("relay", "billing", "cdc", publication="events_pub")
    assert 'CREATE PUBLICATION "events_pub"' in custom


@pytest.mark.parametrize(
    ("role", "quoted"),
    [
        ("relay", '"relay"'),
        ("Relay-Prod", '"Relay-Prod"'),
        ('x" TO public; DROP ROLE postgres; --', '"x"" TO public; DROP ROLE postgres; --"'),
        ("o'brien", '"o\'brien"'),
    ],
)
def test_the_role_is_always_one_quoted_identifier(role, quoted):
    script = render_grants(role, SCHEMA, "poll")
    grants = [line for line in script.splitlines() if line.startswith("GRANT ")]
    assert grants and all(line.endswith(f" TO {quoted};") for line in grants)
    literal = "'" + role.replace("'", "''") + "'"
    assert f"current_database(), {literal});" in script


@pytest.mark.parametrize(
    ("role", "reason"),
    [
        ("", "1 to 63 bytes"),
        ("r" * 64, "1 to 63 bytes"),
        ("é" * 32, "1 to 63 bytes"),
        ("a\nb", "control characters"),
        ("nul\x00", "control characters"),
        ("public", "reserved"),
        ("PUBLIC", "reserved"),
        ("pg_monitor", "reserved"),
    ],
)
def test_unusable_role_names_are_refused(role, reason):
    with pytest.raises(ConfigError, match=reason):
        render_grants(role, SCHEMA, "poll")


def test_an_unknown_mode_lists_the_known_ones():
    with pytest.raises(ConfigError, match="poll, cdc, inbox, producer"):
        render_grants("relay", SCHEMA, "admin")


def test_every_table_of_the_migrations_is_someones_business():
    """A new table must be granted to some role (or consciously to none)."""
    tables = set()
    schema_dir = resources.files("relay").joinpath("..", "schema")
    for path in sorted(p for p in schema_dir.iterdir() if p.name.endswith(".sql")):
        tables |= set(re.findall(r"CREATE TABLE \{schema\}\.(\w+)", path.read_text()))
    tables |= set(re.findall(r"CREATE TABLE \{schema\}\.(\w+)", _inbox_migration()))
    everyone = set()
    for mode in GRANT_MODES:
        everyone |= set(granted(render_grants("r", SCHEMA, mode)))
    assert tables - everyone == {"schema_migrations", "inbox_migrations"} - everyone
    assert tables - everyone == set()


def _inbox_migration() -> str:
    schema_dir = resources.files("relay").joinpath("..", "schema", "inbox")
    return "".join(p.read_text() for p in schema_dir.iterdir() if p.name.endswith(".sql"))


def test_every_role_that_writes_messages_may_run_the_check_on_headers():
    """The outbox's CHECK on headers calls valid_headers(); PostgreSQL asks for EXECUTE
    on it in every statement that inserts or updates a row, whatever the row holds."""
    for mode in ("poll", "cdc", "producer"):
        have = granted(render_grants("r", SCHEMA, mode))
        assert "INSERT" in have["messages"] or "UPDATE" in have["messages"]
        assert "EXECUTE" in have["valid_headers"], mode


BOOKKEEPING = {"seq", "id", "created_at", "attempts", "last_error", "sent_at", "parked_at"}


def inserted_columns(text: str) -> set[str]:
    """The columns of every INSERT INTO <schema>.messages in ``text``."""
    found: set[str] = set()
    pattern = r"INSERT INTO \{schema\}\.messages(?: AS \w+)?\s*\(([^)]*)\)"
    for columns in re.findall(pattern, text):
        found |= {c.strip() for c in columns.split(",")}
    return found


def test_a_producer_may_insert_exactly_the_columns_a_writer_sets():
    """Issue 27: column-level INSERT, so a producer cannot set the relay's bookkeeping
    (a range of seq with OVERRIDING SYSTEM VALUE, rows already sent...)."""
    script = render_grants("r", SCHEMA, "producer")
    (granted_columns,) = re.findall(r"GRANT INSERT \(([^)]*)\)", script)
    allowed = {c.strip() for c in granted_columns.split(",")}
    writers = "".join(text for name, text in QUERIES.items() if name.startswith("enqueue"))
    schema_dir = resources.files("relay").joinpath("..", "schema")
    writers += schema_dir.joinpath("0009_writer_api.sql").read_text()
    assert inserted_columns(writers) == allowed
    assert not allowed & BOOKKEEPING
    assert f"REVOKE INSERT ON {SCHEMA!r}.messages".replace("'", '"') in script
