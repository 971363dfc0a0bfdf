"""Connectors configured through the installed command: a third-party connector with
settings of its own, built and installed as a user would, and every bad connector
option refused with one sentence (exit 2) before anything connects, no secret shown."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import time
from pathlib import Path

import psycopg
import pytest

from tests.support.cli import RelayProcess, outbox_relay, user_env
from tests.support.installs import install_into_target

pytestmark = pytest.mark.e2e
SPOOL = Path(__file__).with_name("spool_connector")
CANARY = "Canary-pw-8128"
UNREACHABLE = "postgresql://nobody@127.0.0.1:1/nothing"


@pytest.fixture(scope="module")
def spool_env(tmp_path_factory):
    """A user's environment with the spool connector pip-installed where Python finds it."""
    target = tmp_path_factory.mktemp("site")
    install_into_target(SPOOL, target)
    return user_env(PYTHONPATH=str(target))


def private_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def assert_one_sentence(result, code, expected):
    """Exit ``code``, one line on stderr holding ``expected``, no canary, no traceback."""
    everything = result.stdout + result.stderr
    assert result.returncode == code, everything
    assert CANARY not in everything and "Traceback" not in everything
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("outbox-relay: error: "), everything
    assert expected in lines[0]


def test_connectors_describes_a_third_party_connectors_settings(spool_env):
    listing = outbox_relay("connectors", env=spool_env)
    assert "spool        Appends each message to a file as one signed JSON line." in listing.stdout
    described = outbox_relay("connectors", "spool", env=spool_env)
    assert described.returncode == 0, described.stderr
    assert "  signing.key  (text; secret; required)" in described.stdout
    assert "  fsync  (true or false; default true)" in described.stdout
    assert "  max.payload.bytes  (a whole number; default 65536)" in described.stdout


def test_a_third_party_connector_runs_with_its_own_options(db_dsn, spool_env, tmp_path):
    assert outbox_relay("migrate", "--dsn", db_dsn).returncode == 0
    rows = enqueue_sample(db_dsn)
    out = tmp_path / "spool dir" / "out.jsonl"  # a space: the variable keeps it
    out.parent.mkdir()
    secrets = private_file(tmp_path / "spool.secrets", f"# spool\nsigning.key={CANARY}\n")
    # one option per line: the path keeps its space
    options = f"path={out}\n# safer\nfsync=yes\n\nmax.payload.bytes=100\n"
    env = {**spool_env, "OUTBOX_RELAY_CONNECTOR_OPTION": options}
    relay = RelayProcess(
        [
            "--dsn",
            db_dsn,
            "--connector",
            "spool",
            "--connector-option-file",
            str(secrets),
            "--log-level",
            "debug",
            "--metrics-port",
            "0",
            "--poll-interval",
            "200ms",
        ],
        tmp_path / "relay.log",
        env=env,
    )
    try:
        wait_for_lines(out, len(rows) - 1, relay)
        assert relay.terminate() == 0
    finally:
        relay.stop()
    delivered = read_spool(out, CANARY)
    big = next(row for row in rows if row[2] == "big")
    assert [m["id"] for m in delivered] == [row[0] for row in rows if row != big]
    assert all(
        m["payload"] == row[3]
        for m, row in zip(delivered, [r for r in rows if r != big], strict=True)
    )
    with psycopg.connect(db_dsn) as conn:
        parked = conn.execute("SELECT id::text, last_error FROM outbox.dead_letters").fetchall()
    assert parked == [(big[0], "the payload is larger than max.payload.bytes")]
    log = relay.log_path.read_text()
    assert "connector spool" in log
    assert "open, signing with ***" in log  # the connector logged its key: scrubbed
    assert CANARY not in log


def enqueue_sample(dsn):
    """Rows of two keys and one payload over the spool's 100 bytes; (id, topic, key, payload)."""
    with psycopg.connect(dsn) as conn:
        for i in range(6):
            conn.execute(
                "SELECT outbox.enqueue('orders', %s, %s::jsonb)", (f"k{i % 2}", f'{{"n":{i}}}')
            )
        conn.execute("SELECT outbox.enqueue('orders', 'big', %s::jsonb)", (json.dumps("x" * 200),))
        return conn.execute(
            "SELECT id::text, topic, key, payload::text FROM outbox.messages ORDER BY seq"
        ).fetchall()


def wait_for_lines(path: Path, count: int, relay: RelayProcess, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() or len(path.read_bytes().splitlines()) < count:
        if relay.proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"never {count} lines in {path}; relay log:\n{relay.output()}")
        time.sleep(0.05)


def read_spool(path: Path, key: str) -> list[dict]:
    """The spooled messages, each line's HMAC checked with ``key``."""
    messages = []
    for line in path.read_text().splitlines():
        mac, body = line.split(" ", 1)
        assert hmac.compare_digest(
            mac, hmac.new(key.encode(), body.encode(), hashlib.sha256).hexdigest()
        )
        message = json.loads(body)
        message["payload"] = base64.b64decode(message["payload"]).decode()
        messages.append(message)
    return messages


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


RABBITMQ = ["--connector", "rabbitmq"]
# (arguments after `run --dsn UNREACHABLE`, what the one sentence says); exit 2 for each,
# before the (unreachable) database is tried. Issue 28, items 1 and 5.
BAD_OPTIONS = [
    ([*RABBITMQ, "--amqp-url", "garbage"], "must start with amqp:// or amqps://"),
    ([*RABBITMQ, "--amqp-url", "amqp:garbage"], "names no host"),
    ([*RABBITMQ, "--amqp-url", f"amqp://guest:{CANARY}@[::1"], "IPv6 address"),
    ([*RABBITMQ, "--amqp-url", ""], "The RabbitMQ URL is empty"),
    ([*RABBITMQ, "--amqp-url", "amqp://"], "names no host"),
    ([*RABBITMQ, "--amqp-url", f"amqp://guest:{CANARY}@rabbit:99999/"], "port is not a number"),
    ([*RABBITMQ, "--connector-option", f"url=amqp://guest:{CANARY}@/"], "names no host"),
    ([*RABBITMQ, "--amqp-exchange", "a b"], "exchange name 'a b' has characters AMQP forbids"),
    ([*RABBITMQ, "--connector-option", "exchnage=x"], "no setting 'exchnage' (did you mean "),
    (
        [*RABBITMQ, "--amqp-url", f"amqp://u:{CANARY}@h/", "--connector-option", "url=amqp://h/"],
        "rabbitmq connector's url is given twice, by --connector-option and by --amqp-url",
    ),
    (["--kafka-bootstrap", ""], "empty bootstrap servers"),
    (["--kafka-option", "bootstrap.servers="], "empty bootstrap servers"),
    (["--connector-option", "bootstrap.servers= , "], "empty bootstrap servers"),
    (
        ["--kafka-bootstrap", "a:9092", "--kafka-option", "bootstrap.servers=b:9092"],
        "bootstrap.servers is given twice, by --kafka-bootstrap and by --kafka-option",
    ),
    ([*RABBITMQ, "--kafka-bootstrap", "a:9092"], "--kafka-bootstrap is a setting of the kafka"),
    (["--connector-option", CANARY], "--connector-option takes name=value"),
    (["--kafka-option", f"sasl.password:{CANARY}"], "--kafka-option takes name=value"),
    (["--connector", "carrier-pigeon"], "unknown connector 'carrier-pigeon'"),
]


@pytest.mark.parametrize(
    ("args", "expected"), BAD_OPTIONS, ids=lambda v: " ".join(v) if isinstance(v, list) else None
)
def test_a_bad_connector_option_is_one_sentence_before_anything_connects(args, expected):
    result = outbox_relay("run", "--dsn", UNREACHABLE, *args)
    assert_one_sentence(result, 2, expected)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("garbage\n", "must start with amqp:// or amqps://"),
        (f"amqp://guest:{CANARY}@[::1\n", "IPv6 address"),
    ],
)
def test_a_bad_amqp_url_file_is_one_sentence(tmp_path, content, expected):
    url_file = private_file(tmp_path / "amqp-url", content)
    result = outbox_relay("run", "--dsn", UNREACHABLE, *RABBITMQ, "--amqp-url-file", str(url_file))
    assert_one_sentence(result, 2, expected)


def test_a_bad_amqp_url_in_the_environment_is_one_sentence():
    env = user_env(OUTBOX_RELAY_AMQP_URL=f"amqp:{CANARY}", OUTBOX_RELAY_CONNECTOR="rabbitmq")
    assert_one_sentence(outbox_relay("run", "--dsn", UNREACHABLE, env=env), 2, "names no host")


def test_a_kafka_shorthand_in_a_shared_environment_is_left_to_kafka_relays(tmp_path):
    env = user_env(OUTBOX_RELAY_KAFKA_BOOTSTRAP="kafka:9092", OUTBOX_RELAY_CONNECTOR="rabbitmq")
    result = outbox_relay("run", "--dsn", UNREACHABLE, env=env)
    assert_one_sentence(result, 1, "cannot connect to PostgreSQL")  # past the options


def test_a_connector_option_file_others_can_read_is_refused(tmp_path):
    secrets = private_file(tmp_path / "kafka.secrets", f"sasl.password={CANARY}\n", 0o644)
    result = outbox_relay("run", "--dsn", UNREACHABLE, "--connector-option-file", str(secrets))
    assert_one_sentence(result, 2, "can be read or changed by other users (mode 0644)")
    assert f"chmod 600 {secrets}" in result.stderr


def test_a_bad_line_in_a_connector_option_file_is_located_not_quoted(tmp_path):
    secrets = private_file(tmp_path / "kafka.secrets", f"sasl.username=relay\n{CANARY}\n")
    result = outbox_relay("run", "--dsn", UNREACHABLE, "--connector-option-file", str(secrets))
    assert_one_sentence(result, 2, "line 2 of")


def test_a_third_party_connectors_own_checks_are_one_sentence(spool_env, tmp_path):
    result = outbox_relay(
        "run",
        "--dsn",
        UNREACHABLE,
        "--connector",
        "spool",
        "--connector-option",
        f"path={tmp_path}/out",
        "--connector-option",
        "fsync=maybe",
        env=spool_env,
    )
    assert_one_sentence(result, 2, "fsync must be true or false, not 'maybe'.")
    assert "needs a value for signing.key" in result.stderr


def test_an_unreachable_rabbitmq_is_one_sentence_without_pikas_lines(db_dsn):
    """Issue 28, item 6: pika logged six to eight ERROR lines before the sentence."""
    assert outbox_relay("migrate", "--dsn", db_dsn).returncode == 0
    url = f"amqp://relay:{CANARY}@127.0.0.1:{closed_port()}/%2F"
    result = outbox_relay(
        "run", "--dsn", db_dsn, *RABBITMQ, "--amqp-url", url, "--metrics-port", "0"
    )
    assert_one_sentence(result, 1, "Cannot reach RabbitMQ at 127.0.0.1:")
    debug = outbox_relay(
        "run",
        "--dsn",
        db_dsn,
        *RABBITMQ,
        "--amqp-url",
        url,
        "--metrics-port",
        "0",
        "--log-level",
        "debug",
    )
    assert debug.returncode == 1
    assert " pika." in debug.stderr  # at debug level pika says what it tried
    assert CANARY not in debug.stdout + debug.stderr
