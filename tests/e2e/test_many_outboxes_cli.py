"""`outbox-relay migrate` and `status` over several outboxes, as a person runs them: two
databases of the session's PostgreSQL with two schemas each, a database that does not
exist beside them, the lists in environment variables, and --schema-pattern
(docs/multi-tenant.md)."""

from __future__ import annotations

import secrets
from urllib.parse import quote

import orjson
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.support.cli import clean_env, outbox_relay
from tests.support.services import create_database, drop_database

pytestmark = pytest.mark.e2e
CANARY = "CanaryPw"


@pytest.fixture
def databases(pg_dsn):
    """Two fresh databases of the session's server: (name, DSN) each, dropped afterwards."""
    names = [f"many_{letter}_{secrets.token_hex(3)}" for letter in "ab"]
    yield [(name, create_database(pg_dsn, name)) for name in names]
    for name in names:
        drop_database(pg_dsn, name)


def as_url(dsn: str) -> str:
    """The DSN as a postgresql:// URL, the form a line of several DSNs takes."""
    params = conninfo_to_dict(dsn)
    user = quote(str(params.get("user", "postgres")), safe="")
    password = f":{quote(str(params['password']), safe='')}" if params.get("password") else ""
    host = params.get("host") or "localhost"
    return f"postgresql://{user}{password}@{host}:{params.get('port') or 5432}/{params['dbname']}"


def missing_database(dsn: str) -> str:
    """A DSN of the same server naming a database that does not exist, with a password
    that must never be shown."""
    return make_conninfo(dsn, dbname=f"missing_{secrets.token_hex(3)}", password=CANARY)


def enqueue(dsn: str, schema: str, count: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for n in range(count):
            conn.execute(f"SELECT {schema}.enqueue('t', %s, '{{}}'::jsonb)", (f"k{n}",))


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = outbox_relay(*args, env=env)
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    assert CANARY not in result.stdout + result.stderr
    return result.returncode, result.stdout, result.stderr


def test_two_databases_by_two_schemas_are_migrated_then_shown_with_their_totals(databases):
    (name_a, dsn_a), (name_b, dsn_b) = databases
    both = ["--dsn", dsn_a, "--dsn", dsn_b, "--schema", "a", "--schema", "b"]
    code, out, err = run("migrate", *both)
    assert code == 0, err
    lines = out.splitlines()
    assert [line.split(": ")[0] for line in lines] == [
        f"{name_a}/a",
        f"{name_a}/b",
        f"{name_b}/a",
        f"{name_b}/b",
    ]
    assert all("': applied 0001" in line for line in lines), out
    for dsn, schema, count in [(dsn_a, "a", 3), (dsn_b, "a", 2), (dsn_a, "b", 1), (dsn_b, "b", 0)]:
        enqueue(dsn, schema, count)

    code, out, err = run("status", "--dsn", dsn_a, "--dsn", dsn_b, "--schema", "a", "--schema", "b")
    assert code == 0, err
    assert f"== {name_b}/a ==\noutbox schema:       a\npending messages:    2" in out
    assert out.count("outbox schema:") == 4
    assert "== totals: 4 outboxes ==\npending messages:    6\n" in out

    code, out, err = run("status", *both, "--json")
    assert code == 0, err
    shown = orjson.loads(out)
    assert set(shown) == {"version", "outboxes", "totals"}
    pending = {(o["database"], o["schema"]): o["pending"] for o in shown["outboxes"]}
    assert pending == {(name_a, "a"): 3, (name_b, "a"): 2, (name_a, "b"): 1, (name_b, "b"): 0}
    totals = shown["totals"]
    assert (totals["outboxes"], totals["failed"], totals["pending"]) == (4, 0, 6)
    assert (totals["dead_letters"], totals["scheduled"]) == (0, 0)

    code, out, err = run("migrate", *both)
    assert code == 0 and out.count("is up to date") == 4, out + err


def test_a_database_that_does_not_exist_is_named_and_the_others_are_done(databases):
    (name_a, dsn_a), _ = databases
    missing = missing_database(dsn_a)
    missing_name = conninfo_to_dict(missing)["dbname"]
    pair = ["--dsn", missing, "--dsn", dsn_a, "--schema", "a", "--schema", "b"]
    code, out, err = run("migrate", *pair)
    assert code == 1
    lines = out.splitlines()
    assert len(lines) == 2, out
    assert lines[0].startswith(f"{name_a}/a: outbox and inbox schema 'a': applied 0001")
    assert lines[1].startswith(f"{name_a}/b: outbox and inbox schema 'b': applied 0001")
    failed = err.splitlines()
    assert [line.split(": ")[2] for line in failed] == [f"{missing_name}/a", f"{missing_name}/b"]
    assert all(line.startswith("outbox-relay: error: ") for line in failed)
    assert "cannot connect to PostgreSQL" in failed[0], err

    code, out, err = run("status", *pair)
    assert code == 1, err
    assert f"== {missing_name}/a ==\nerror: cannot connect to PostgreSQL" in out
    assert f"== {name_a}/b ==\noutbox schema:       b\npending messages:    0" in out
    assert "== totals: 4 outboxes, 2 not read ==" in out
    code, out, err = run("status", *pair, "--json")
    assert code == 1, err
    shown = orjson.loads(out)
    errors = {(o["database"], o["schema"]): "error" in o for o in shown["outboxes"]}
    assert errors == {
        (missing_name, "a"): True,
        (missing_name, "b"): True,
        (name_a, "a"): False,
        (name_a, "b"): False,
    }
    assert (shown["totals"]["outboxes"], shown["totals"]["failed"]) == (4, 2)


def test_a_schema_without_an_outbox_is_named_in_status_and_the_others_shown(databases):
    (name_a, dsn_a), _ = databases
    assert run("migrate", "--dsn", dsn_a, "--schema", "a")[0] == 0
    enqueue(dsn_a, "a", 2)
    code, out, _ = run("status", "--dsn", dsn_a, "--schema", "a", "--schema", "never")
    assert code == 1
    assert f"== {name_a}/a ==\noutbox schema:       a\npending messages:    2" in out
    assert f"== {name_a}/never ==\nerror: " in out and "outbox-relay migrate" in out
    assert "== totals: 2 outboxes, 1 not read ==\npending messages:    2" in out


def test_the_lists_in_environment_variables(databases):
    """OUTBOX_RELAY_SCHEMA split at commas and spaces, two URLs on one line of
    OUTBOX_RELAY_DSN."""
    (name_a, dsn_a), (name_b, dsn_b) = databases
    env = clean_env(OUTBOX_RELAY_SCHEMA="a, b", OUTBOX_RELAY_DSN=f"{as_url(dsn_a)} {as_url(dsn_b)}")
    code, out, err = run("migrate", env=env)
    assert code == 0, err
    assert [line.split(": ")[0] for line in out.splitlines()] == [
        f"{name_a}/a",
        f"{name_a}/b",
        f"{name_b}/a",
        f"{name_b}/b",
    ]
    code, out, err = run("status", "--json", env=env)
    assert code == 0, err
    shown = orjson.loads(out)["outboxes"]
    assert [(o["database"], o["schema"]) for o in shown] == [
        (name_a, "a"),
        (name_a, "b"),
        (name_b, "a"),
        (name_b, "b"),
    ]


def test_schema_pattern_migrates_existing_schemas_and_status_shows_those_with_an_outbox(
    databases,
):
    (name_a, dsn_a), (name_b, dsn_b) = databases
    with psycopg.connect(dsn_a, autocommit=True) as conn:
        for schema in ("tenant_1", "tenant_2", "other"):
            conn.execute(f"CREATE SCHEMA {schema}")
    # status before: the schemas exist, but none holds an outbox yet
    code, out, _ = run("status", "--dsn", dsn_a, "--schema-pattern", "tenant_%")
    assert code == 1
    assert "holds an outbox" in out and f"== {name_a}/tenant_% ==" in out

    code, out, err = run("migrate", "--dsn", dsn_a, "--schema-pattern", "tenant_%")
    assert code == 0, err
    assert [line.split(": ")[0] for line in out.splitlines()] == [
        f"{name_a}/tenant_1",
        f"{name_a}/tenant_2",
    ]
    with psycopg.connect(dsn_a) as conn:
        row = conn.execute("SELECT to_regclass('other.messages')").fetchone()
        assert row == (None,)  # not matched: left alone

    enqueue(dsn_a, "tenant_2", 4)
    code, out, err = run("status", "--dsn", dsn_a, "--schema-pattern", "tenant_%", "--json")
    assert code == 0, err
    shown = orjson.loads(out)
    assert [(o["schema"], o["pending"]) for o in shown["outboxes"]] == [
        ("tenant_1", 0),
        ("tenant_2", 4),
    ]

    # where it matches nothing: a plain sentence, exit 1, the other database still done
    code, out, err = run("migrate", "--dsn", dsn_a, "--dsn", dsn_b, "--schema-pattern", "tenant_%")
    assert code == 1
    assert out.count("is up to date") == 2, out
    assert err == (
        f"outbox-relay: error: {name_b}/tenant_%: no schema matches the pattern 'tenant_%'; "
        "create the schemas first\n"
    )


def test_print_and_print_grants_take_one_schema():
    for flags in (["--print"], ["--print-grants", "relay"]):
        result = outbox_relay("migrate", *flags, "--schema", "a", "--schema", "b")
        assert result.returncode == 2
        assert "give one --schema" in result.stderr
    single = outbox_relay("migrate", "--print-grants", "relay", "--schema", "a")
    assert single.returncode == 0 and 'GRANT USAGE ON SCHEMA "a" TO "relay"' in single.stdout


def test_doctor_checks_each_outbox_in_its_block_and_names_the_one_not_migrated(databases):
    (name_a, dsn_a), _ = databases
    missing = missing_database(dsn_a)
    missing_name = conninfo_to_dict(missing)["dbname"]
    assert run("migrate", "--dsn", dsn_a, "--schema", "a")[0] == 0

    code, out, err = run("doctor", "--dsn", dsn_a, "--schema", "a", "--schema", "b")
    assert code == 1, err
    blocks = out.split("== ")[1:]
    assert [block.split(" ==")[0] for block in blocks] == [f"{name_a}/a", f"{name_a}/b"]
    assert "ok   database: connected to" in blocks[0]
    assert "ok   outbox schema: schema 'a' is at version" in blocks[0]
    assert "ok   database: connected to" in blocks[1]
    assert "FAIL outbox schema: " in blocks[1] and "outbox-relay migrate" in blocks[1]

    # a database that cannot be reached: one FAIL line for each of its outboxes, no password
    pair = ["--dsn", missing, "--dsn", dsn_a, "--schema", "a", "--schema", "b"]
    code, out, err = run("doctor", *pair)
    assert code == 1, err
    blocks = out.split("== ")[1:]
    assert [block.split(" ==")[0] for block in blocks] == [
        f"{missing_name}/a",
        f"{missing_name}/b",
        f"{name_a}/a",
        f"{name_a}/b",
    ]
    for block in blocks[:2]:
        assert block.count("\n") == 2, out  # the heading and one line
        assert "\nFAIL database: cannot connect to PostgreSQL at " in block
    assert out.count("FAIL") == 3 and "ok   outbox schema: schema 'a'" in blocks[2]


def test_doctor_with_a_pattern_checks_each_outbox_it_finds(databases):
    (name_a, dsn_a), (name_b, dsn_b) = databases
    with psycopg.connect(dsn_a, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA tenant_3")  # not migrated: not an outbox the pattern finds
    for schema in ("tenant_1", "tenant_2"):
        assert run("migrate", "--dsn", dsn_a, "--schema", schema)[0] == 0
    code, out, err = run("doctor", "--dsn", dsn_a, "--schema-pattern", "tenant_%")
    assert code == 0, out + err
    headings = [line for line in out.splitlines() if line.startswith("== ")]
    assert headings == [f"== {name_a}/tenant_1 ==", f"== {name_a}/tenant_2 =="]
    assert out.count("ok   outbox schema:") == 2 and "FAIL" not in out

    code, out, _ = run("doctor", "--dsn", dsn_a, "--dsn", dsn_b, "--schema-pattern", "tenant_%")
    assert code == 1
    assert out.endswith(
        f"== {name_b}/tenant_% ==\nFAIL outbox schema: no schema that matches the pattern "
        "'tenant_%' holds an outbox; run outbox-relay migrate\n"
    )
    missing = missing_database(dsn_a)
    code, out, _ = run("doctor", "--dsn", missing, "--schema-pattern", "tenant_%")
    assert code == 1
    assert out.startswith(f"== {conninfo_to_dict(missing)['dbname']}/tenant_% ==\nFAIL database: ")
    assert len(out.splitlines()) == 2, out


def test_doctor_refuses_one_outboxs_cdc_names_with_several_as_run_does():
    many = ["--dsn", "host=127.0.0.1 dbname=nowhere", "--schema", "a", "--schema", "b"]
    sentence = "--cdc-table and --cdc-debezium name one outbox's table;"
    doctor = outbox_relay("doctor", *many, "--mode", "cdc", "--cdc-table", "a.messages")
    assert doctor.returncode == 2, doctor.stdout + doctor.stderr
    assert sentence in doctor.stderr and doctor.stdout == ""
    relay = outbox_relay("run", *many, "--mode", "cdc", "--cdc-table", "a.messages")
    assert relay.returncode == 2 and sentence in relay.stderr


def test_doctor_in_cdc_mode_checks_the_slot_each_outbox_shares(databases):
    (name_a, dsn_a), _ = databases
    both = ["--dsn", dsn_a, "--schema", "a", "--schema", "b"]
    assert run("migrate", *both)[0] == 0
    code, out, err = run("doctor", *both, "--mode", "cdc")
    assert code == 0, out + err
    assert out.count("ok   wal_level") == 2 and "FAIL" not in out
    block_b = out.split(f"== {name_a}/b ==")[1]
    assert "slot outbox_relay__shared will be created" in block_b
    assert (
        "publication outbox_relay__shared will be created for inserts into b.messages" in block_b
    )
