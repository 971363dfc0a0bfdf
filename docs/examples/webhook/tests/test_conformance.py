"""outbox-relay's connector conformance suite, run against the webhook connector and a
real HTTP endpoint: receiver.py, in a process of its own so that it can be frozen
(SIGSTOP), killed and started again."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from outbox_relay_webhook import WebhookConnector

from relay.model import OutboxMessage
from relay.testing.conformance import ConnectorConformance, Received

RECEIVER = Path(__file__).with_name("receiver.py")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class WebhookHarness:
    """Runs receiver.py and reads back what it wrote (a ConformanceHarness)."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.log = directory / "received.jsonl"
        self.log.touch()
        self._process: subprocess.Popen[str] | None = None
        self._read: dict[str, int] = {}  # records of each topic already returned

    def connector(self, *, publish_timeout: float) -> WebhookConnector:
        return WebhookConnector(f"http://127.0.0.1:{self.port}/events")

    def new_topic(self) -> str:
        return f"topic-{uuid.uuid4().hex[:8]}"

    def read(self, topic: str, count: int, timeout: float) -> list[Received]:
        deadline = time.monotonic() + timeout
        while True:
            lines = self.log.read_text(encoding="utf-8").splitlines()
            records = [r for r in map(json.loads, lines) if r["topic"] == topic]
            fresh = records[self._read.get(topic, 0) :][:count]
            if len(fresh) == count or time.monotonic() >= deadline:
                break
            time.sleep(0.05)  # a poll with a deadline: the file has no wait-for-lines
        self._read[topic] = self._read.get(topic, 0) + len(fresh)
        return [received(r) for r in fresh]

    def refused_before_sending(self, topic: str, key: str) -> OutboxMessage | None:
        # A space is not allowed in an HTTP header name.
        return OutboxMessage(uuid.uuid4(), topic, key, b"{}", headers={"not a token": "v"})

    def unroutable_topic(self) -> str | None:
        return f"unroutable-{uuid.uuid4().hex[:8]}"

    def start_broker(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, str(RECEIVER), str(self.port), str(self.log)],
            stdin=subprocess.PIPE,  # closed when this process ends: the receiver follows
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        assert self._process.stdout.readline() == f"ready {self.port}\n"

    def stop_broker(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.wait(10)
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    pipe.close()

    def pause_broker(self) -> None:
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGSTOP)

    def resume_broker(self) -> None:
        if self._process is not None:
            os.kill(self._process.pid, signal.SIGCONT)


def received(record: dict[str, Any]) -> Received:
    return Received(
        message_id=record["message_id"],
        topic=record["topic"],
        key=record["key"],
        value=base64.b64decode(record["body"]),
        headers=record["headers"],
        content_type=record["content_type"],
    )


class TestWebhookConnector(ConnectorConformance):
    @pytest.fixture
    def connector_harness(self, tmp_path: Path) -> Iterator[WebhookHarness]:
        harness = WebhookHarness(tmp_path)
        harness.start_broker()
        yield harness
        harness.resume_broker()  # a failed test may have left it frozen
        harness.stop_broker()
