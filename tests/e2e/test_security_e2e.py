"""Secrets never leave the process, secret files work, oversized messages are refused.

A canary password sits in the DSN (the throwaway cluster trusts local connections, so a
password in the DSN is accepted and ignored), in a librdkafka option file and in AMQP
URLs. A full run at debug level, with the broker dying and coming back, plus ``status``
and the metrics endpoint, must not show it anywhere.
"""

from __future__ import annotations

import socket
import time
from urllib.parse import quote, urlsplit, urlunsplit

import orjson
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from tests.support.cli import RelayProcess, clean_env, outbox_relay
from tests.support.http import http_get
from tests.support.kafka_harness import KafkaHarness
from tests.support.services import free_port

pytestmark = pytest.mark.e2e
DB_CANARY = "Canary-db-pw-5150"
KAFKA_CANARY = "Canary-kafka-pw-6160"
AMQP_CANARY = "Canary-amqp-pw-7170"
CANARIES = (DB_CANARY, KAFKA_CANARY, AMQP_CANARY)
FAST = [
    "--lease-ttl",
    "3s",
    "--publish-timeout",
    "1s",
    "--poll-interval",
    "500ms",
    "--shutdown-timeout",
    "10s",
]


def with_password(dsn: str, password: str) -> str:
    """``dsn`` as a URL with ``password`` in it (trust authentication ignores it)."""
    params = conninfo_to_dict(dsn)
    user, host = params.get("user", "postgres"), params.get("host", "127.0.0.1")
    port, dbname = params.get("port", "5432"), params["dbname"]
    return f"postgresql://{user}:{quote(password)}@{host}:{port}/{quote(str(dbname))}"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_no_canary(*outputs: str) -> None:
    for output in outputs:
        for canary in CANARIES:
            assert canary not in output, f"{canary} leaked:\n{output}"


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return found


def pending(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM outbox.messages WHERE sent_at IS NULL")
        return int(row.fetchone()[0])


def enqueue(dsn: str, topic: str, count: int, size: int = 10) -> None:
    with psycopg.connect(dsn) as conn:
        for i in range(count):
            conn.execute(
                "SELECT outbox.enqueue(%s, %s, %s::jsonb, %s::jsonb)",
                (
                    topic,
                    f"k{i % 3}",
                    orjson.dumps({"pad": "x" * size}).decode(),
                    orjson.dumps({"trace": f"t{i}"}).decode(),
                ),
            )


@pytest.fixture
def migrated(db_dsn):
    result = outbox_relay("migrate", "--dsn", db_dsn)
    assert result.returncode == 0, result.stderr
    return db_dsn


def test_a_full_run_with_a_failing_broker_never_shows_a_secret(migrated, private_tansu, tmp_path):
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text(with_password(migrated, DB_CANARY) + "\n")
    kafka_file = tmp_path / "kafka.properties"
    kafka_file.write_text(f"# secrets\nsasl.username=relay\nsasl.password={KAFKA_CANARY}\n")
    kafka = KafkaHarness(private_tansu.bootstrap, private_tansu)
    topic = kafka.new_topic()
    port = free_port()
    env = clean_env(OUTBOX_RELAY_DSN_FILE=str(dsn_file), OUTBOX_RELAY_LOG_LEVEL="debug")
    relay = RelayProcess(
        [
            "--kafka-bootstrap",
            private_tansu.bootstrap,
            "--kafka-option-file",
            str(kafka_file),
            "--metrics-port",
            str(port),
            *FAST,
        ],
        tmp_path / "relay.log",
        env=env,
    )
    try:
        enqueue(migrated, topic, 10)
        assert len(kafka.read(topic, 10, timeout=60)) == 10
        wait_for(lambda: pending(migrated) == 0, 30, "10 messages marked sent")
        metrics = wait_for(
            lambda: (m := http_get(port, "/metrics"))[0] == 200 and m, 10, "/metrics"
        )[1]
        before = relay.output()
        private_tansu.kill()  # the broker dies with messages waiting
        enqueue(migrated, topic, 5)
        wait_for(
            lambda: any(w in relay.output()[len(before) :] for w in ("WARNING", "ERROR")),
            30,
            "the relay to report the broker outage",
        )
        private_tansu.start()
        kafka.create_topic(topic)  # in-memory Tansu lost it
        status_json = outbox_relay("status", "--json", env=env)
        status_text = outbox_relay("status", env=env)
        assert status_json.returncode == 0 and status_text.returncode == 0
        assert relay.terminate() == 0
    finally:
        relay.stop()
        kafka.cleanup()
    log = relay.log_path.read_text()
    assert "DEBUG" in log  # debug level really was on
    assert "outbox_relay" in metrics
    assert_no_canary(
        log,
        metrics,
        status_json.stdout + status_json.stderr,
        status_text.stdout + status_text.stderr,
    )


def test_failures_reading_secret_files_name_the_file_never_the_secret(migrated, tmp_path):
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text(f"host=127.0.0.1 port={closed_port()} password={DB_CANARY}\n")
    results = [outbox_relay("status", "--dsn-file", str(dsn_file))]
    url_file = tmp_path / "amqp-url"
    url_file.write_text(f"amqp://relay:{AMQP_CANARY}@127.0.0.1:{closed_port()}/%2F\n")
    results.append(
        outbox_relay(
            "run", "--dsn", migrated, "--connector", "rabbitmq", "--amqp-url-file", str(url_file)
        )
    )
    kafka_file = tmp_path / "kafka.properties"
    kafka_file.write_text(f"sasl.password={KAFKA_CANARY}\nnot an option line {KAFKA_CANARY}\n")
    results.append(outbox_relay("run", "--dsn", migrated, "--kafka-option-file", str(kafka_file)))
    for result in results:
        assert result.returncode != 0
        assert result.stderr.strip().splitlines()[-1].startswith("outbox-relay: error: ")
        assert_no_canary(result.stdout + result.stderr)
    assert "cannot connect to PostgreSQL at 127.0.0.1" in results[0].stderr
    assert "Cannot reach RabbitMQ at 127.0.0.1" in results[1].stderr
    assert "line 2 of" in results[2].stderr and "kafka.properties" in results[2].stderr


def test_a_refused_rabbitmq_login_does_not_show_the_password(migrated, amqp_url, tmp_path):
    parts = urlsplit(amqp_url)
    url = urlunsplit(parts._replace(netloc=f"outbox:{AMQP_CANARY}@{parts.hostname}:{parts.port}"))
    url_file = tmp_path / "amqp-url"
    url_file.write_text(url)
    result = outbox_relay(
        "run",
        "--dsn",
        migrated,
        "--connector",
        "rabbitmq",
        "--amqp-url-file",
        str(url_file),
        "--log-level",
        "debug",
        "--metrics-port",
        "0",
    )
    assert result.returncode == 1
    assert "refused the login of user 'outbox'" in result.stderr
    assert_no_canary(result.stdout + result.stderr)


def test_secret_files_through_the_environment_and_their_errors(migrated, tmp_path):
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text(migrated + "\r\n")
    env = clean_env(OUTBOX_RELAY_DSN_FILE=str(dsn_file))
    assert outbox_relay("migrate", env=env).returncode == 0
    status = outbox_relay("status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    both = outbox_relay("status", "--dsn", migrated, env=env)
    assert both.returncode == 2
    assert "give either --dsn or --dsn-file, not both" in both.stderr
    missing = outbox_relay("run", "--dsn-file", str(tmp_path / "nope"))
    assert missing.returncode == 2
    assert "DSN file" in missing.stderr and "does not exist" in missing.stderr
    amqp_both = outbox_relay(
        "run",
        "--dsn",
        migrated,
        "--connector",
        "rabbitmq",
        "--amqp-url",
        "amqp://a@b/",
        "--amqp-url-file",
        str(dsn_file),
    )
    assert amqp_both.returncode == 2
    assert "give either --amqp-url or --amqp-url-file, not both" in amqp_both.stderr


def test_an_oversized_message_becomes_a_dead_letter_and_the_rest_flows(migrated, tmp_path):
    enqueue(migrated, "small", 5, size=10)
    enqueue(migrated, "big", 1, size=5000)
    relay = RelayProcess(
        [
            "--dsn",
            migrated,
            "--connector",
            "memory",
            "--max-message-bytes",
            "1000",
            "--metrics-port",
            "0",
            *FAST,
        ],
        tmp_path / "relay.log",
    )
    try:
        wait_for(lambda: pending(migrated) == 0, 30, "the outbox to drain")
        assert relay.terminate() == 0
    finally:
        relay.stop()
    with psycopg.connect(migrated) as conn:
        dead = conn.execute("SELECT topic, last_error FROM outbox.dead_letters").fetchall()
        left = conn.execute("SELECT count(*) FROM outbox.messages")  # the 5 deleted on ack
        assert left.fetchone()[0] == 0
    assert len(dead) == 1 and dead[0][0] == "big"
    assert "over the limit of 1000" in dead[0][1]


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on ``port`` (from /proc/net/tcp*)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        with open(table) as lines:
            for line in list(lines)[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:
                    raw = bytes.fromhex(address)
                    # the kernel prints each 32-bit word in host (little-endian) order
                    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                    family = socket.AF_INET if width == 8 else socket.AF_INET6
                    found.add(socket.inet_ntop(family, words))
    return found


def test_the_metrics_and_health_server_listens_on_loopback_only_by_default(migrated, tmp_path):
    port = free_port()
    relay = RelayProcess(
        ["--dsn", migrated, "--connector", "memory", "--metrics-port", str(port), *FAST],
        tmp_path / "relay.log",
    )
    try:
        wait_for(lambda: http_get(port, "/readyz")[0] == 200, 30, "/readyz to answer 200")
        assert http_get(port, "/healthz")[0] == 200
        status, metrics = http_get(port, "/metrics")
        assert status == 200 and "outbox_relay" in metrics
        assert http_get(port, "/no-such-page")[0] == 404
        assert listening_addresses(port) == {"127.0.0.1"}
        assert relay.terminate() == 0
    finally:
        relay.stop()


def test_every_database_command_reads_the_dsn_from_a_file(migrated, tmp_path):
    inbox = outbox_relay("migrate", "--dsn", migrated, "--inbox-only")
    assert inbox.returncode == 0, inbox.stderr
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text(with_password(migrated, DB_CANARY) + "\n")
    commands = [
        ["dead-letters", "list", "--json"],
        ["dead-letters", "retry", "--all"],
        ["dead-letters", "drop", "--all"],
        ["inbox", "purge"],
    ]
    for command in commands:
        result = outbox_relay(*command, "--dsn-file", str(dsn_file))
        assert result.returncode == 0, (command, result.stderr)
        assert_no_canary(result.stdout + result.stderr)
    unreachable = tmp_path / "unreachable"
    unreachable.write_text(f"host=127.0.0.1 port={closed_port()} password={DB_CANARY}\n")
    for command in commands:
        result = outbox_relay(*command, "--dsn-file", str(unreachable))
        assert result.returncode != 0 and "cannot connect to PostgreSQL" in result.stderr
        assert_no_canary(result.stdout + result.stderr)
    both = outbox_relay("dead-letters", "list", "--dsn", migrated, "--dsn-file", str(dsn_file))
    assert both.returncode == 2 and "not both" in both.stderr
