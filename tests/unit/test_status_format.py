"""How ``outbox-relay status`` words the scheduled (delayed) messages."""

from __future__ import annotations

from relay.status import format_status

BASE = {"schema": "outbox", "pending": 0, "oldest_pending_age_seconds": None, "parked": 0,
        "held_keys": 0, "sent_last_minute": 0, "counts_stop_at": 100_000, "relays": []}


def line(status: dict) -> str:
    text = format_status({**BASE, **status})
    return next(row for row in text.splitlines() if row.startswith("scheduled messages:"))


def test_none_scheduled():
    assert line({"scheduled": 0, "next_due_at": None, "next_due_in_seconds": None}) == (
        "scheduled messages:  0")


def test_the_next_due_time_and_how_far_off():
    shown = line({"scheduled": 2, "next_due_at": "2026-12-06T09:00:00+00:00",
                  "next_due_in_seconds": 59.96})
    assert shown == "scheduled messages:  2 (next due 2026-12-06T09:00:00+00:00, in 60.0s)"


def test_a_due_message_no_relay_moved_says_so():
    shown = line({"scheduled": 100_000, "next_due_at": "2026-12-06T09:00:00+00:00",
                  "next_due_in_seconds": -12.5})
    assert shown.startswith("scheduled messages:  at least 100000 (")
    assert shown.endswith("12.5s ago, not yet moved)")
