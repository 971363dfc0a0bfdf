"""The ecosystem's formats as a user gets them: the installed ``outbox-relay`` command,
read back with ``kcat`` (when installed) and a plain confluent_kafka consumer; a bad
format flag is one sentence and exit 2; OpenTelemetry configured only through its
standard environment variables, received by a small OTLP/HTTP endpoint."""

from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import confluent_kafka
import psycopg
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.integration.test_formats_brokers import DEBEZIUM_TABLE, headers_of, kafka_read
from tests.support.cli import RelayProcess, outbox_relay, user_env
from tests.support.kafka_harness import KafkaHarness

pytestmark = pytest.mark.e2e
FAST = ["--publish-timeout", "1s", "--shutdown-timeout", "10s", "--metrics-port", "0",
        "--poll-interval", "200ms"]
CDC_FAST = ["--mode", "cdc", "--cdc-takeover-ttl", "2s", "--cdc-heartbeat", "1s", *FAST]
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def kafka(kafka_bootstrap) -> Iterator[KafkaHarness]:
    harness = KafkaHarness(kafka_bootstrap)
    yield harness
    harness.cleanup()


@pytest.fixture
def kcat(tmp_path):
    """``kcat(bootstrap, topic, count)``: the first ``count`` records as kcat prints them,
    key|headers|timestamp|value, waiting for them up to 30 s (no ``-e``: the relay may not
    have published them yet when kcat reaches the end of the partition).

    Debian's kcat 1.7.1 comes with librdkafka 2.0.2, which misreads the ApiVersions v3
    answer of the Kafka-protocol broker in the tests ("Read underflow") and never
    connects; kcat runs here on the newer librdkafka that confluent-kafka's wheel ships.
    """
    if shutil.which("kcat") is None:
        pytest.skip("kcat is not installed (apt-get install kcat)")
    env = dict(os.environ)
    bundled = sorted(Path(confluent_kafka.__file__).parent.parent.glob(
        "confluent_kafka.libs/librdkafka-*.so.1"))
    if bundled:
        (tmp_path / "librdkafka.so.1").symlink_to(bundled[0])
        env["LD_LIBRARY_PATH"] = str(tmp_path)

    def read(bootstrap: str, topic: str, count: int) -> list[str]:
        done = subprocess.run(
            ["kcat", "-C", "-b", bootstrap, "-t", topic, "-p", "0", "-o", "beginning",
             "-c", str(count), "-q", "-f", "%k|%h|%T|%s\\n"],
            capture_output=True, text=True, timeout=30, check=False, env=env)
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    return read


def running(args: list[str], log, until: str, env: dict[str, str] | None = None):
    relay = RelayProcess(args, log, env=env or user_env())
    relay.wait_for_log(until, 30)
    return relay


def wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def test_a_debezium_table_arrives_as_debeziums_router_would_send_it(
    db_dsn, kafka, kcat, tmp_path
):
    assert outbox_relay("migrate", "--dsn", db_dsn).returncode == 0
    aggregate = f"Order{uuid.uuid4().hex[:8]}"
    topic = f"outbox.event.{aggregate}"
    kafka.create_topic(topic)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute(DEBEZIUM_TABLE)
        conn.execute("INSERT INTO app.outbox VALUES (%s, %s, 'order-0', 'OrderCreated', "
                     "'{\"n\": 0}', NULL)", (old := uuid.uuid4(), aggregate))
    relay = running(["--dsn", db_dsn, "--kafka-bootstrap", kafka.bootstrap, *CDC_FAST,
                     "--cdc-table", "app.outbox", "--cdc-debezium", "--cdc-snapshot", "existing"],
                    tmp_path / "relay.log", "streaming slot")
    try:
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO app.outbox VALUES (%s, %s, 'order-1', 'OrderCreated', "
                         "'{\"n\": 1}', NULL)", (new := uuid.uuid4(), aggregate))
        records = kafka_read(kafka.bootstrap, topic, 2)
        printed = kcat(kafka.bootstrap, topic, 2)
        assert relay.terminate() == 0
    finally:
        relay.stop()
    assert [r.key() for r in records] == [b"order-0", b"order-1"]
    assert [headers_of(r)["id"] for r in records] == [str(old), str(new)]
    assert [headers_of(r)["message_id"] for r in records] == [str(old), str(new)]
    assert [line.split("|")[0] for line in printed] == ["order-0", "order-1"]
    assert f"id={new}" in printed[1].split("|")[1]
    assert printed[1].split("|")[3] == '{"n": 1}'


def test_cloudevents_headers_reach_kcat(db_dsn, kafka, kcat, tmp_path):
    assert outbox_relay("migrate", "--dsn", db_dsn).returncode == 0
    topic = kafka.new_topic()
    relay = running(["--dsn", db_dsn, "--kafka-bootstrap", kafka.bootstrap, *FAST,
                     "--envelope", "cloudevents", "--cloudevents-source", "/billing"],
                    tmp_path / "relay.log", "started")
    try:
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            ident = conn.execute("SELECT outbox.enqueue(%s, 'k', '{\"n\": 1}', "
                                 "'{\"type\": \"billing.paid\"}')", (topic,)).fetchone()[0]
        [line] = kcat(kafka.bootstrap, topic, 1)
        assert relay.terminate() == 0
    finally:
        relay.stop()
    key, headers, _stamp, value = line.split("|")
    assert (key, value) == ("k", '{"n": 1}')
    for header in ("ce_specversion=1.0", f"ce_id={ident}", "ce_source=/billing",
                   "ce_type=billing.paid", "content-type=application/json", f"message_id={ident}"):
        assert header in headers.split(","), headers


@pytest.mark.parametrize(
    ("flags", "sentence"),
    [
        (["--envelope", "cloudevents"], "--envelope cloudevents needs --cloudevents-source"),
        (["--topic-template", "outbox.event.${routedByValue}"], "write {topic}"),
        (["--mode", "cdc", "--cdc-table", "app.outbox", "--cdc-debezium",
          "--cdc-debezium-option", "route.topic.replacement=x"],
         "set the topic with --topic-template"),
        (["--mode", "cdc", "--cdc-snapshot", "existing"], "is for Debezium tables"),
    ],
)
def test_a_bad_format_flag_is_one_sentence_and_exit_2(db_dsn, flags, sentence):
    done = outbox_relay("run", "--dsn", db_dsn, *flags, env=user_env())
    assert done.returncode == 2, done.stderr
    assert sentence in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1


class _Collector(http.server.BaseHTTPRequestHandler):
    """OTLP/HTTP's trace endpoint, keeping every request it gets."""

    requests: list[ExportTraceServiceRequest] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/v1/traces":
            self.requests.append(ExportTraceServiceRequest.FromString(body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_otel_environment_variables_send_the_relays_spans_to_a_collector(
    db_dsn, kafka, tmp_path
):
    assert outbox_relay("migrate", "--dsn", db_dsn).returncode == 0
    topic = kafka.new_topic()
    _Collector.requests = []
    server = http.server.HTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    env = user_env(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{server.server_port}",
                   OTEL_BSP_SCHEDULE_DELAY="100", OTEL_SERVICE_NAME="billing-relay")
    try:
        relay = running(["--dsn", db_dsn, "--kafka-bootstrap", kafka.bootstrap, *FAST],
                        tmp_path / "relay.log", "started", env=env)
        try:
            with psycopg.connect(db_dsn, autocommit=True) as conn:
                conn.execute("SELECT outbox.enqueue(%s, 'k', '{}', %s::jsonb)",
                             (topic, f'{{"traceparent": "{TRACEPARENT}"}}'))
            wait_for(lambda: len(spans_of(_Collector.requests)) >= 2, 20, "two spans")
            assert relay.terminate() == 0
            output = relay.output()
        finally:
            relay.stop()
    finally:
        server.shutdown()
        server.server_close()
    assert "tracing: OpenTelemetry spans go to OTLPSpanExporter" in output
    spans = spans_of(_Collector.requests)
    [child] = [s for s in spans if s.parent_span_id]
    assert child.trace_id.hex() == TRACEPARENT.split("-")[1]
    assert child.parent_span_id.hex() == TRACEPARENT.split("-")[2]
    assert child.name == f"send {topic}"
    services = {a.value.string_value for r in _Collector.requests for rs in r.resource_spans
                for a in rs.resource.attributes if a.key == "service.name"}
    assert services == {"billing-relay"}


def spans_of(requests: list[ExportTraceServiceRequest]) -> list[Any]:
    return [span for request in requests for resource in request.resource_spans
            for scope in resource.scope_spans for span in scope.spans]
