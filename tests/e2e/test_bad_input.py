"""Bad input through the installed command: one sentence, the right exit code (2 for what
the user typed, 1 for a failure at run time), never a traceback, never a password.

``CASES`` is the table of docs/cli-errors.md: the last test fails when the two differ.
None of these reaches a server: the DSN points at a closed port, so a check that let a
value through would end in "cannot connect" and exit 1, not 2.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.cli import outbox_relay

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "cli-errors.md"
CANARY = "CanaryPw"
DSN = "postgresql://127.0.0.1:1/app"


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    code: int
    says: str  # words of the one sentence on stderr

    def command_line(self) -> str:
        return " ".join(["outbox-relay", *(_shell_word(a) for a in self.args)])


def _shell_word(arg: str) -> str:
    """As a person types it in bash: plain, '...' or $'...' for control characters."""
    if any(not ch.isprintable() for ch in arg):
        return "$'" + arg.encode("unicode_escape").decode() + "'"
    if re.fullmatch(r"[\w@%+=:,./-]+", arg):
        return arg
    if "'" in arg:
        return '"' + re.sub(r'(["$`\\])', r"\\\1", arg) + '"'
    return "'" + arg + "'"


def case(line: str, code: int, says: str) -> Case:
    return Case(tuple(shlex.split(line)), code, says)


RABBIT = f"run --dsn {DSN} --connector rabbitmq"

CASES = [
    # durations and sizes outside what PostgreSQL (or the broker) can take
    case(f"run --dsn {DSN} --lease-ttl 30d", 2, "lease TTL (30d) must be between 1ms and 24d"),
    case(f"run --dsn {DSN} --publish-timeout 0", 2, "publish timeout (0) must be between 1ms"),
    case(f"run --dsn {DSN} --poll-interval 25d", 2, "poll interval (25d) must be between"),
    case(f"run --dsn {DSN} --shutdown-timeout 99999999999999999999", 2, "shutdown timeout"),
    case(f"run --dsn {DSN} --retention 99999999d", 2, "retention (99999999d) must be between 0"),
    case(f"run --dsn {DSN} --retry-cap 30d", 2, "retry cap (30d) must be between 1ms and 24d"),
    case(f"run --dsn {DSN} --mode cdc --cdc-takeover-ttl 30d", 2, "CDC takeover TTL (30d)"),
    case(f"run --dsn {DSN} --mode cdc --cdc-heartbeat 30d", 2, "CDC heartbeat interval (30d)"),
    case(f"run --dsn {DSN} --max-message-bytes 2000000000", 2, "between 1 and 1000000000 bytes"),
    case(f"run --dsn {DSN} --max-attempts 0", 2, "attempts must be at least 1"),
    case(f"run --dsn {DSN} --batch-size 0", 2, "batch size must be between 1 and 10000"),
    case(f"run --dsn {DSN} --claim-lanes 17", 2, "claim lanes must be between 1 and 16"),
    case(f"run --dsn {DSN} --metrics-port 70000", 2, "metrics port must be between 0"),
    case(f"run --dsn {DSN} --poll-linger 2s", 2, "poll linger must be between 0 and 1 second"),
    case(f"run --dsn {DSN} --lease-ttl soon", 2, "'soon' is not a duration"),
    case(f"dead-letters list --dsn {DSN} --older-than 99999999d", 2, "must be between 0 and"),
    case(f"dead-letters list --dsn {DSN} --limit 0", 2, "--limit must be between 1 and 100000"),
    case(f"dead-letters list --dsn {DSN} --limit -1", 2, "--limit must be between 1 and 100000"),
    case(f"inbox purge --dsn {DSN} --older-than 99999999d", 2, "dedupe window (99999999d)"),
    case(f"inbox purge --dsn {DSN} --batch-size 0", 2, "batch size must be at least 1 and at most"),
    # names
    Case(("run", "--dsn", DSN, "--schema", "name\n"), 2, "is not a plain identifier"),
    Case(("migrate", "--print", "--schema", "name\n"), 2, "is not a plain identifier"),
    case("migrate --print --schema information_schema", 2, "one of PostgreSQL's system schemas"),
    case("migrate --print --schema pg_catalog", 2, "one of PostgreSQL's system schemas"),
    case(f"status --dsn {DSN} --schema pg_toast", 2, "one of PostgreSQL's system schemas"),
    case(f"run --dsn {DSN} --schema pg_temp_1", 2, "one of PostgreSQL's system schemas"),
    case("migrate --print --schema " + "a" * 70, 2, "70 bytes long; PostgreSQL names are at most"),
    case("migrate --print --schema Outbox", 2, "is not a plain identifier"),
    # connection strings: the parameter named, never its value
    case(f"status --dsn postgresql://u:Wrong@{CANARY}@127.0.0.1:1/db", 2, "more than one '@'"),
    case("status --dsn 'host=127.0.0.1 port=abc'", 2, "parameter 'port' must be a port number"),
    case("status --dsn postgresql://127.0.0.1:abc/db", 2, "parameter 'port' must be a port"),
    case("status --dsn 'host=127.0.0.1 foo=bar'", 2, "parameter 'foo' is unknown"),
    case("status --dsn postgresql://127.0.0.1/db?foo=bar", 2, "parameter 'foo' is unknown"),
    case("status --dsn 'host=127.0.0.1 sslmode=sometimes'", 2, "parameter 'sslmode' must be"),
    case(f'status --dsn "host=127.0.0.1 password=\'{CANARY}"', 2, "DSN cannot be parsed"),
    # several outboxes (docs/multi-tenant.md): each once, and what names one outbox alone
    case(f"run --dsn {DSN} --schema a --schema a", 2, "The same schema is given twice"),
    case(f"run --dsn {DSN} --dsn {DSN}", 2, "The same database DSN is given twice"),
    case(f"run --dsn {DSN} --schema-pattern ''", 2, "The schema pattern is empty"),
    case(f"run --dsn {DSN} --mode cdc --cdc-table a.events --schema a --schema b", 2,
         "name one outbox's table"),
    case(f"status --dsn {DSN} --schema a --schema a", 2, "the same schema is given twice"),
    case(f"status --dsn {DSN} --dsn {DSN}", 2, "the same database DSN is given twice"),
    case(f"status --dsn {DSN} --schema a --schema b --cdc-slot s", 2, "names one outbox's slot"),
    case(f"migrate --dsn {DSN} --schema-pattern ''", 2, "the schema pattern is empty"),
    case("migrate --print --schema a --schema b", 2, "--print writes one schema's SQL"),
    case("migrate --print-grants relay --schema a --schema b", 2, "--print-grants writes one"),
    # a single-value option given twice
    case(f"run --dsn {DSN} --mode poll --mode cdc", 2, "--mode given twice"),
    case(f"status --dsn {DSN} --json --json", 2, "--json given twice"),
    case("migrate --print-grants relay --mode cdc --mode poll", 2, "--mode given twice"),
    case(f"dead-letters list --dsn {DSN} --limit 5 --limit 6", 2, "--limit given twice"),
    # connector settings, checked before anything connects (a password never quoted)
    case(f"{RABBIT} --amqp-url garbage", 2, "must start with amqp:// or amqps://"),
    case(f"{RABBIT} --amqp-url amqp:garbage", 2, "The RabbitMQ URL names no host"),
    case(f"{RABBIT} --amqp-url 'amqp://guest:x@[::1'", 2, "do not pair"),
    case(f"{RABBIT} --amqp-url ''", 2, "The RabbitMQ URL is empty"),
    case(f"{RABBIT} --amqp-url amqp://", 2, "The RabbitMQ URL names no host"),
    case(f"run --dsn {DSN} --kafka-bootstrap ''", 2, "empty bootstrap servers"),
    case(f"run --dsn {DSN} --connector-option bootstrap.servers=", 2, "empty bootstrap servers"),
    case(f"{RABBIT} --kafka-bootstrap k:9092", 2, "is a setting of the kafka connector"),
    # a runtime failure, for contrast: exit 1
    case(f"status --dsn postgresql://app:{CANARY}@127.0.0.1:1/db", 1, "cannot connect"),
]


def case_id(value: Case) -> str:
    return value.command_line().removeprefix("outbox-relay ")[:70]


@pytest.mark.parametrize("bad", CASES, ids=case_id)
def test_bad_input_gets_one_sentence_and_its_exit_code(bad):
    result = outbox_relay(*bad.args, timeout=30)
    output = result.stdout + result.stderr
    assert result.returncode == bad.code, output
    assert "Traceback" not in output and CANARY not in output, output
    assert "internal error" not in output
    assert bad.says in re.sub(r"[\s│]+", " ", output), output


def test_the_docs_table_lists_every_case():
    """docs/cli-errors.md shows each command line above with its exit code."""
    rows = {
        (match.group(1), int(match.group(2)))
        for match in re.finditer(r"^\| `(.+?)` \| (\d) \|", DOC.read_text(), re.M)
    }
    expected = {(bad.command_line(), bad.code) for bad in CASES}
    assert expected <= rows, sorted(expected - rows)


def test_each_command_line_in_the_docs_reads_back_as_its_arguments():
    for bad in CASES:
        if "$'" not in bad.command_line():  # bash only; shlex cannot read it
            assert tuple(shlex.split(bad.command_line()))[1:] == bad.args
