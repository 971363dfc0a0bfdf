"""How ``outbox-relay status`` adds up several outboxes: an outbox that could not be read
adds nothing, and a total that took a count stopped at the cap says "at least"."""

from __future__ import annotations

from relay.status import COUNT_CAP, format_many_status, status_totals

SHOWN = {"pending": 0, "oldest_pending_age_seconds": None, "parked": 0, "dead_letters": 0,
         "held_keys": 0, "sent_last_minute": 0, "counts_stop_at": COUNT_CAP, "relays": [],
         "scheduled": 0, "next_due_at": None, "next_due_in_seconds": None}


def outbox(schema: str, **counts: int) -> dict:
    return {"database": "app", "schema": schema, **SHOWN, **counts}


def unread(schema: str) -> dict:
    return {"database": "down", "schema": schema, "error": "cannot connect to PostgreSQL"}


def test_sums_across_the_outboxes_read_and_counts_those_not_read():
    shown = [outbox("a", pending=3, scheduled=1), outbox("b", pending=2, parked=4,
             dead_letters=4), unread("a")]
    assert status_totals(shown) == {"outboxes": 3, "failed": 1, "pending": 5,
                                    "dead_letters": 4, "scheduled": 1,
                                    "counts_stop_at": COUNT_CAP}


def test_blocks_headed_by_database_and_schema_then_the_totals():
    shown = [outbox("a", pending=COUNT_CAP), outbox("b", pending=1), unread("c")]
    text = format_many_status(shown, status_totals(shown))
    assert text.startswith("== app/a ==\noutbox schema:       a\n")
    assert "== down/c ==\nerror: cannot connect to PostgreSQL\n" in text
    assert text.endswith(
        "== totals: 3 outboxes, 1 not read ==\n"
        f"pending messages:    at least {COUNT_CAP + 1}\n"
        "parked messages:     0 in the dead letters\n"
        "scheduled messages:  0"
    )


def test_a_pattern_that_found_nothing_is_headed_by_the_pattern():
    failed = {"database": "app", "schema": None, "schema_pattern": "tenant_%",
              "error": "no schema that matches the pattern 'tenant_%' holds an outbox"}
    text = format_many_status([failed], status_totals([failed]))
    assert text.startswith("== app/tenant_% ==\nerror: no schema")
