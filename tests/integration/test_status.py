"""The backlog figures that `outbox-relay status` and the metrics sampler read."""

from __future__ import annotations

import psycopg
import pytest

from relay import enqueue
from relay.status import format_status, sample_backlog
from tests.support.relays import install_outbox

pytestmark = pytest.mark.integration


def test_the_pending_count_stops_at_the_cap_and_says_so(db_dsn):
    """Counting a large backlog every few seconds costs the database more than the
    number is worth; past the cap the oldest pending age tells how far behind it is."""
    install_outbox(db_dsn)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        for i in range(12):
            enqueue(conn, topic="t", key=f"k{i}", payload={"n": i})
        capped = sample_backlog(conn, "outbox", cap=5)
        exact = sample_backlog(conn, "outbox")
    assert (capped["pending"], exact["pending"]) == (5, 12)
    assert capped["oldest_pending_age_seconds"] is not None
    shown = format_status({"schema": "outbox", **capped, "relays": []})
    assert "pending messages:    at least 5" in shown
    assert "pending messages:    12\n" in format_status({"schema": "outbox", **exact, "relays": []})
