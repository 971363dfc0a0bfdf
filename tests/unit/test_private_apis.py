"""The private parts of pika, psycopg, prometheus-client and typer the relay relies on are still
there and still behave as it expects (docs/architecture.md, "Reliance on private APIs").

pyproject.toml bounds each of these libraries above; when one of these tests fails after
raising a bound, the message says what changed and where the relay relies on it.
"""

from __future__ import annotations

import inspect
from importlib.metadata import version

import pika
import psycopg
from pika import connection, spec
from pika.adapters.asyncio_connection import AsyncioConnection
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from relay.eager_reads import EagerReadConnection
from relay.latency_histogram import BatchHistogram

SEE = "see docs/architecture.md, 'Reliance on private APIs', for why and the fallback"


def parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_pika_still_takes_raw_frames_and_drops_its_socket_the_same_way():
    for name, expected in (
        ("_adapter_emit_data", ["self", "data"]),
        ("_adapter_disconnect_stream", ["self"]),
    ):
        method = getattr(AsyncioConnection, name, None)
        assert callable(method) and parameters(method) == expected, (
            f"pika {pika.__version__} changed AsyncioConnection.{name}, which "
            f"connectors/rabbitmq.py calls; {SEE}"
        )


class _Capture(connection.Connection):
    """pika's own Connection without I/O, keeping what it hands to the adapter."""

    def __init__(self) -> None:
        super().__init__(pika.ConnectionParameters(), internal_connection_workflow=False)
        self._body_max_length = self._get_body_frame_max_length()
        self.emitted: list[bytes] = []

    def _adapter_emit_data(self, data: bytes) -> None:
        self.emitted.append(data)

    def _adapter_add_callback_threadsafe(self, callback: object) -> None: ...
    def _adapter_call_later(self, delay: float, callback: object) -> None: ...
    def _adapter_remove_timeout(self, timeout_id: object) -> None: ...
    def _adapter_connect_stream(self) -> None: ...
    def _adapter_disconnect_stream(self) -> None: ...


def test_pika_still_counts_the_frames_and_bytes_it_emits():
    """connectors/rabbitmq.py writes frames past pika's own path and keeps the counters
    pika keeps (frames_sent, bytes_sent) in step, so pika's view of the link stays true."""
    capture = _Capture()
    publish = spec.Basic.Publish(exchange="x", routing_key="k", mandatory=True)
    capture._send_message(1, publish, (pika.BasicProperties(), b"body"))
    assert capture.frames_sent == 3 and capture.bytes_sent == sum(map(len, capture.emitted)), (
        f"pika {pika.__version__} no longer counts frames_sent/bytes_sent per emitted frame "
        f"as connectors/rabbitmq.py's _FrameConnection assumes; {SEE}"
    )


def test_psycopg_still_routes_every_wait_through_the_connections_wait_method():
    """relay/eager_reads.py overrides AsyncConnection.wait; psycopg must keep calling it
    (a query that bypassed it would only be slower) with the same signature."""
    ours, theirs = EagerReadConnection.wait, psycopg.AsyncConnection.wait
    assert inspect.iscoroutinefunction(theirs) and parameters(ours) == parameters(theirs), (
        f"psycopg {psycopg.__version__} changed AsyncConnection.wait, which "
        f"relay/eager_reads.py overrides; {SEE}"
    )
    execute = inspect.getsource(psycopg.AsyncCursor.execute)
    assert "self._conn.wait(" in execute, (
        f"psycopg {psycopg.__version__}'s AsyncCursor.execute no longer waits through "
        f"AsyncConnection.wait, so relay/eager_reads.py would do nothing; {SEE}"
    )


def bucket_lines(registry: CollectorRegistry) -> list[str]:
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if "_bucket{" in line]


def test_prometheus_still_writes_histogram_buckets_as_the_batch_histogram_does():
    """relay/latency_histogram.py writes a histogram's series itself (with
    prometheus_client.utils.floatToGoString, undocumented) instead of Histogram.observe:
    /metrics must read the same as a Histogram's."""
    bounds = (0.0005, 0.005, 0.1, 1, 2.5, 30, 1e3, 2e6)  # 2e6: Go writes 2.0e+06
    ours, reference = CollectorRegistry(), CollectorRegistry()
    batch = BatchHistogram("lat_seconds", "doc", "connector", bounds, registry=ours)
    single = Histogram("lat_seconds", "doc", ["connector"], buckets=bounds, registry=reference)
    values = [0.0001, 0.004, 0.2, 2.5, 31.0, 5000.0, 3e6]
    batch.observe_many("kafka", values)
    for value in values:
        single.labels("kafka").observe(value)
    assert bucket_lines(ours) == bucket_lines(reference), (
        f"prometheus-client {version('prometheus-client')} now writes histogram buckets "
        f"differently from relay/latency_histogram.py; {SEE}"
    )


def test_typer_still_builds_each_options_help_cell_in_one_function():
    import typer
    import typer.rich_utils

    from relay.cli.command import fold_long_words_in_help

    fold_long_words_in_help()  # what the first --help does
    function = getattr(typer.rich_utils, "_get_parameter_help", None)
    assert callable(function) and getattr(function, "__wrapped_by_relay__", False), (
        f"typer {typer.__version__} no longer has rich_utils._get_parameter_help, which "
        f"relay/cli/command.py wraps so that --help never cuts a long default; {SEE}"
    )
