import random
import statistics
from datetime import UTC, datetime
from uuid import uuid4

import psycopg
import pytest
from psycopg.adapt import AdaptersMap, Transformer
from psycopg.pq import Format

from relay.backoff import full_jitter
from relay.model import DELIVERED, permanent, retryable
from relay.outbox_rows import (
    FailurePolicy,
    message_from_claim,
    plan_acknowledgement,
    register_claim_loaders,
)


def row(seq, key="k", attempts=0, payload=None, payload_bytes=None, headers=None):
    """A claimed row as the claim query's loaders hand it over (CLAIM_COLUMNS)."""
    values = (seq, uuid4(), "t", key, payload, payload_bytes, "application/json", headers,
              datetime.now(UTC), attempts)  # fmt: skip
    return message_from_claim(values)


def plan(rows, outcomes, **policy):
    settings = {"retry_base": 0.5, "retry_cap": 30, **policy}
    return plan_acknowledgement(rows, outcomes, FailurePolicy(**settings))


def test_all_delivered_is_one_write():
    ack = plan([row(1), row(2)], [DELIVERED, DELIVERED])
    assert ack.sent == [1, 2]
    assert not ack.failed_seqs and not ack.hold_keys and not ack.released_keys


def test_failed_message_holds_its_key_once_and_the_rest_of_the_key_only_waits():
    rows = [row(1, "a"), row(2, "a"), row(3, "b"), row(4, None)]
    ack = plan(rows, [retryable("x"), retryable("y"), DELIVERED, retryable("z")])
    assert ack.sent == [3]
    assert ack.failed_seqs == [1, 4]  # row 2 was not attempted on its own: no attempt counted
    assert ack.waiting == 1
    assert ack.hold_keys == ["a"]  # null keys never hold anything
    assert ack.hold_params()["seqs"] == [1]


def test_permanent_failure_moves_to_the_dead_letters_and_blocks_its_key():
    ack = plan([row(1, "a"), row(2, "a")], [permanent("unroutable"), retryable("behind")])
    assert ack.dead_seqs == [1] and ack.dead_reasons == ["permanent"]
    assert ack.hold_params()["parks"] == [True]
    assert not ack.failed_seqs  # row 2 waits behind the dead letter, untouched


def test_skip_policy_lets_the_key_go_on():
    ack = plan([row(1, "a", attempts=3)], [permanent("refused")], on_poison="skip")
    assert ack.dead_seqs == [1]
    assert not ack.hold_keys
    assert ack.released_keys == ["a"]  # its retry hold goes


def test_the_last_attempt_moves_to_the_dead_letters():
    ack = plan([row(1, "a", attempts=2), row(2, None)], [retryable("x"), DELIVERED], max_attempts=3)
    assert ack.dead_seqs == [1] and ack.dead_reasons == ["max_attempts"]
    assert ack.dead_errors == ["x"]


def test_a_broker_outage_writes_nothing_for_retryable_messages():
    rows = [row(1, "a", attempts=19), row(2, None), row(3, "b")]
    ack = plan(rows, [retryable("down")] * 3, max_attempts=20)
    assert ack.outage
    assert not ack.failed_seqs and not ack.dead_seqs and not ack.hold_keys and not ack.sent


def test_an_outage_still_dead_letters_what_was_refused_for_good():
    ack = plan([row(1, "a"), row(2, "b")], [permanent("too large"), retryable("down")])
    assert ack.outage
    assert ack.dead_seqs == [1]
    assert not ack.failed_seqs


def test_a_retried_message_that_gets_through_releases_its_key():
    ack = plan([row(1, "a", attempts=2), row(2, "b")], [DELIVERED, DELIVERED])
    assert ack.released_keys == ["a"]


def test_outcome_count_must_match():
    with pytest.raises(ValueError, match="1 outcomes for 2 messages"):
        plan([row(1), row(2)], [DELIVERED])


def claim_loader(type_name):
    adapters = AdaptersMap(psycopg.adapters)
    register_claim_loaders(adapters)
    oid = adapters.types[type_name].oid
    return Transformer(adapters).get_loader(oid, Format.BINARY)


def test_json_payload_is_its_text_and_binary_is_untouched():
    json_text = '{"a": [1, 2], "b": "é"}'.encode()  # json's binary form is its text
    loaded = claim_loader("json").load(memoryview(json_text))
    assert loaded == json_text and isinstance(loaded, bytes)
    assert row(1, payload=loaded).payload == json_text
    assert row(1, payload_bytes=memoryview(b"\x00\xff")).payload == b"\x00\xff"
    assert row(1).payload is None


def test_jsonb_headers_load_from_their_binary_form():
    loaded = claim_loader("jsonb").load(b'\x01{"n": 1, "s": "x"}')  # version byte, then text
    assert loaded == {"n": 1, "s": "x"}
    assert row(1, headers=loaded).headers == {"n": "1", "s": "x"}
    with pytest.raises(psycopg.DataError, match="version 2"):
        claim_loader("jsonb").load(memoryview(b"\x02{}"))


def test_non_string_headers_travel_as_json_text():
    message = row(1, headers={"n": 1, "s": "x", "o": {"a": True}})
    assert message.headers == {"n": "1", "s": "x", "o": '{"a":true}'}
    assert row(2, headers=None).headers == {}


def test_full_jitter_stays_under_the_cap():
    delays = [full_jitter(attempt, base=0.5, cap=4.0) for attempt in range(100)]
    assert all(0 <= d <= 4.0 for d in delays)
    assert full_jitter(0, base=0.5, cap=4.0) <= 0.5


@pytest.mark.parametrize("rng", [random.Random(7), None], ids=["seeded", "default"])
def test_full_jitter_spreads_retries_over_the_whole_range(rng):
    # Relays that retry in step hit a recovering broker together: the delay must be drawn
    # from all of [0, ceiling], not sit at the ceiling (or any one value).
    delays = [full_jitter(8, base=0.5, cap=4.0, rng=rng) for _ in range(400)]
    assert min(delays) < 0.4 and max(delays) > 3.6
    assert 1.6 < statistics.mean(delays) < 2.4
    assert len(set(delays)) > 390
