"""The polling relay against real PostgreSQL, with the in-memory connector as the broker."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections import defaultdict
from datetime import UTC

import psycopg
import pytest
from psycopg import sql

from relay import enqueue
from relay.errors import LeaseLostError, SchemaMissingError
from relay.model import permanent, retryable
from relay.outbox_rows import (
    CLAIM_COLUMNS,
    bigint_array,
    message_from_claim,
    register_claim_loaders,
)
from relay.poll.claims import (
    BEGIN_READ_COMMITTED,
    SentAndCommit,
    lock_and_claim,
    lock_and_claim_simply,
    sent_and_commit_statement,
)
from relay.poll.leases import LeaseKeeper
from relay.poll.poller import Poller, claim_session, lock_space
from relay.poll.source import duty_session
from relay.service import RelayService, preflight
from relay.sqlfiles import query
from tests.support.fakes import InMemoryConnector
from tests.support.relays import RunningRelay, eventually, install_outbox, relay_config

pytestmark = pytest.mark.integration


def write(dsn, count, keys=10, topic="orders", schema="outbox"):
    with psycopg.connect(dsn) as conn:
        return [
            enqueue(conn, topic=topic, key=f"k{i % keys}", payload={"n": i}, schema=schema)
            for i in range(count)
        ]


def positions_by_key(messages):
    seen = defaultdict(list)
    for message in messages:
        seen[message.key].append(message.position)
    return seen


def first_occurrences_in_order(messages):
    """Per key, the first time each message shows up must follow the outbox order."""
    for positions in positions_by_key(messages).values():
        firsts = list(dict.fromkeys(positions))
        assert firsts == sorted(firsts)


def pending(dsn, schema="outbox"):
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            f"SELECT count(*) FROM {schema}.messages WHERE sent_at IS NULL"  # noqa: S608
        ).fetchone()[0]


def test_relay_publishes_everything_in_key_order(db_dsn):
    install_outbox(db_dsn)
    ids = write(db_dsn, 1200)

    async def scenario():
        config = relay_config(db_dsn, batch_size=100, claim_lanes=1)
        async with RunningRelay(config) as relay:
            await eventually(lambda: len(relay.connector.published) >= 1200, 20, "the backlog")
            return relay.connector.published

    published = asyncio.run(scenario())
    assert [m.id for m in published] == ids  # one relay, one lane: global order kept
    assert published[0].payload == b'{"n":0}'  # as relay.enqueue wrote it
    assert published[0].created_at.tzinfo is UTC  # the cheap latency arithmetic (poller.py)
    assert pending(db_dsn) == 0


def store_out_of_seq_order(dsn):
    """Rewrite the outbox in a scrambled order (a fixed one: by a hash of seq), as updates
    and vacuums leave a busy table. Once rows are not stored in seq order, the planner
    may read them with a bitmap scan, in storage order: only the claim's ORDER BY keeps
    them in seq order (a fresh table hides its absence)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE INDEX scrambled ON outbox.messages (md5(seq::text))")
        conn.execute("CLUSTER outbox.messages USING scrambled")
        conn.execute("DROP INDEX outbox.scrambled")
        conn.execute("ANALYZE outbox.messages")
        stored = [r[0] for r in conn.execute("SELECT seq FROM outbox.messages ORDER BY ctid")]
    assert stored != sorted(stored)


@pytest.mark.parametrize(("rows", "batch_size"), [(300, 100), (3000, 2048)])
def test_rows_stored_out_of_seq_order_are_published_in_seq_order(db_dsn, rows, batch_size):
    install_outbox(db_dsn)
    ids = write(db_dsn, rows, keys=4)
    store_out_of_seq_order(db_dsn)

    async def scenario():
        config = relay_config(db_dsn, batch_size=batch_size, claim_lanes=1)
        async with RunningRelay(config) as relay:
            await eventually(lambda: len(relay.connector.published) >= rows, 20, "the rows")
            return relay.connector.published

    assert [m.id for m in asyncio.run(scenario())] == ids


def test_claim_lanes_publish_at_once_and_keep_each_keys_order(db_dsn):
    install_outbox(db_dsn)
    ids = write(db_dsn, 3000, keys=40)
    connector = InMemoryConnector(delay=0.02)  # a batch stays in flight while others claim
    in_flight = {"now": 0, "most": 0}
    publish = connector.publish

    async def counting(batch, *, timeout):
        in_flight["now"] += 1
        in_flight["most"] = max(in_flight["most"], in_flight["now"])
        try:
            return await publish(batch, timeout=timeout)
        finally:
            in_flight["now"] -= 1

    connector.publish = counting

    async def scenario():
        config = relay_config(db_dsn, batch_size=50, claim_lanes=3)
        async with RunningRelay(config, connector) as relay:
            await eventually(lambda: len(connector.published) >= 3000, 30, "the backlog")
            return relay.connector.published

    published = asyncio.run(scenario())
    assert in_flight["most"] == 3
    assert sorted(m.id for m in published) == sorted(ids)  # each exactly once
    for key, positions in positions_by_key(published).items():
        assert positions == sorted(positions), key
    assert [m.id for m in published] != ids  # the lanes did interleave
    assert pending(db_dsn) == 0


def test_a_trickle_is_claimed_by_one_lane_and_a_backlog_by_every_lane(db_dsn):
    """Every lane woken by a lone NOTIFY ran a claim, and all but one found nothing:
    until a claim comes back full, lane 0 claims every bucket (relay.poll.spread)."""
    install_outbox(db_dsn)

    def claim_connects(relay):
        return {s.duty: s.connects for s in relay.service.sessions if s.duty.startswith("claim")}

    def write_one(key):
        with psycopg.connect(db_dsn) as conn:
            enqueue(conn, topic="orders", key=key, payload={"n": key})

    async def scenario():
        config = relay_config(db_dsn, batch_size=50, claim_lanes=2, poll_interval=30.0)
        async with RunningRelay(config) as relay:
            await eventually(lambda: relay.service.source.leases.owned, 10, "leases")
            for n in range(6):  # keys of both lanes' buckets, one commit at a time
                await asyncio.to_thread(write_one, f"trickle-{n}")
                await eventually(lambda n=n: len(relay.connector.published) > n, 5, "one")
            trickle = claim_connects(relay)
            await asyncio.to_thread(write, db_dsn, 1000, 40)
            await eventually(lambda: len(relay.connector.published) >= 1006, 20, "the backlog")
            return trickle, claim_connects(relay), relay.connector.published

    trickle, backlog, published = asyncio.run(scenario())
    assert trickle == {"claim-0": 1, "claim-1": 0}
    assert backlog == {"claim-0": 1, "claim-1": 1}
    for key, positions in positions_by_key(published).items():
        assert positions == sorted(positions), key


@pytest.mark.parametrize(("linger", "one_batch"), [(1.0, True), (0.0, False)])
def test_the_poll_linger_lets_the_commits_right_behind_share_a_batch(db_dsn, linger, one_batch):
    install_outbox(db_dsn)
    connector = InMemoryConnector()

    async def scenario():
        config = relay_config(db_dsn, poll_linger=linger, poll_interval=30.0)
        async with RunningRelay(config, connector) as relay:
            await eventually(lambda: relay.service.source.leases.owned, 10, "leases")
            await asyncio.sleep(0.3)  # every lane idle, waiting for a NOTIFY
            before = connector.batches
            for _ in range(4):  # one key: one lane; 4 commits within ~0.2 s
                await asyncio.to_thread(write, db_dsn, 1, 1)
                await asyncio.sleep(0.05)
            await eventually(lambda: len(connector.published) == 4, 10, "the 4 messages")
            return connector.batches - before

    batches = asyncio.run(scenario())
    assert (batches == 1) if one_batch else (batches > 1)


def test_a_lone_commit_after_a_long_idle_wait_is_claimed_without_the_linger(db_dsn):
    """The linger lets a burst share a batch; a commit that ends a wait of more than two
    lingers is taken as alone (a service's trickle) and claimed at once."""
    install_outbox(db_dsn)
    connector = InMemoryConnector()

    async def scenario():
        config = relay_config(db_dsn, poll_linger=0.3, poll_interval=30.0)
        async with RunningRelay(config, connector) as relay:
            await eventually(lambda: relay.service.source.leases.owned, 10, "leases")
            await asyncio.sleep(1.0)  # idle for more than two lingers
            written = time.monotonic()
            await asyncio.to_thread(write, db_dsn, 1, 1)
            await eventually(lambda: connector.published, 10, "the message")
            return time.monotonic() - written

    assert asyncio.run(scenario()) < 0.3


def notifications_after_one_insert(dsn, channel="outbox.messages"):
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute(f'LISTEN "{channel}"')
        write(dsn, 1)
        return list(listener.notifies(timeout=0.5, stop_after=1))


def test_writers_notify_only_while_a_live_polling_relay_listens(db_dsn):
    install_outbox(db_dsn)
    assert notifications_after_one_insert(db_dsn) == []  # no relay at all: nobody to wake
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO outbox.relays (relay_id, name, mode, expires_at) "
            "VALUES (gen_random_uuid(), 'r', 'poll', now() + interval '1 minute')"
        )
        assert len(notifications_after_one_insert(db_dsn)) == 1
        conn.execute("UPDATE outbox.relays SET listening = false")
        assert notifications_after_one_insert(db_dsn) == []
        conn.execute("UPDATE outbox.relays SET listening = true, mode = 'cdc'")
        assert notifications_after_one_insert(db_dsn) == []
        conn.execute("UPDATE outbox.relays SET mode = 'poll', expires_at = now()")
        assert notifications_after_one_insert(db_dsn) == []  # a dead relay's row


def listening(dsn):
    with psycopg.connect(dsn) as conn:
        return [row[0] for row in conn.execute("SELECT listening FROM outbox.relays")]


def test_a_busy_relay_quiets_the_writers_and_a_dry_lane_wakes_them(db_dsn):
    """Full batches on every lane clear the flag; the first lane to run dry sets it again
    and still finds the rows written while nobody was notified."""
    install_outbox(db_dsn)
    write(db_dsn, 6000, keys=64)
    connector = InMemoryConnector(delay=0.01)

    async def scenario():
        config = relay_config(db_dsn, batch_size=50, claim_lanes=2, poll_interval=30.0)
        async with RunningRelay(config, connector) as relay:
            switch = relay.service.source.wakeup_switch
            await eventually(lambda: not switch.listening, 20, "writers told to be quiet")
            assert await asyncio.to_thread(listening, db_dsn) == [False]
            await eventually(lambda: len(connector.published) >= 6000, 30, "the backlog")
            await eventually(lambda: switch.listening, 10, "writers told to notify again")
            assert await asyncio.to_thread(listening, db_dsn) == [True]
            await asyncio.sleep(0.3)
            await asyncio.to_thread(write, db_dsn, 1)  # woken by NOTIFY, not the 30 s poll
            return await eventually(lambda: len(connector.published) >= 6001, 5, "one more")

    assert asyncio.run(scenario()) < 2.0


# The poller claims a large batch in a pipeline, a small one in one simple query.
@pytest.mark.parametrize("claim", [lock_and_claim, lock_and_claim_simply])
def test_each_lane_locks_only_its_share_of_the_leased_buckets_until_it_commits(db_dsn, claim):
    install_outbox(db_dsn)
    relay_id = lease_bucket(db_dsn, 0)
    with psycopg.connect(db_dsn, autocommit=True) as admin:
        admin.execute(
            "UPDATE outbox.bucket_leases SET relay_id = %s, expires_at = now() + interval "
            "'1 minute' WHERE bucket < 40",
            (relay_id,),
        )
        # The claim needs a snapshot of its own after the lock, whatever the default.
        admin.execute(
            sql.SQL(
                "ALTER DATABASE {} SET default_transaction_isolation = 'repeatable read'"
            ).format(sql.Identifier(admin.info.dbname))
        )

    async def lock_one_lane(lane: int, other: psycopg.Connection) -> tuple[list[int], bool]:
        # As the poller does: BEGIN, the lock and the claim in one round trip, on an
        # autocommit session.
        async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
            params = {
                "relay_id": relay_id, "lock_space": 1, "lane": lane, "lanes": 3,
                "buckets": None, "limit": 10,
            }  # fmt: skip
            await claim(conn, "outbox", params)
            locked = await conn.execute(
                "SELECT current_setting('outbox_relay.locked_buckets')::smallint[]"
            )
            buckets = (await locked.fetchone())[0]
            isolation = await (await conn.execute("SHOW transaction_isolation")).fetchone()
            assert isolation == ("read committed",)
            taken_elsewhere = [
                other.execute("SELECT pg_try_advisory_lock(1, %s)", (b,)).fetchone()[0]
                for b in buckets
            ]
            await conn.execute("COMMIT")
            freed = other.execute("SELECT pg_try_advisory_lock(1, %s)", (buckets[0],))
            held_until_commit = not any(taken_elsewhere) and freed.fetchone()[0]
            other.execute("SELECT pg_advisory_unlock_all()")
            return sorted(buckets), held_until_commit

    with psycopg.connect(db_dsn, autocommit=True) as other:
        shares = [asyncio.run(lock_one_lane(lane, other)) for lane in range(3)]
    assert shares == [(list(range(lane, 40, 3)), True) for lane in range(3)]


def test_notify_wakes_the_relay_well_before_the_poll_interval(db_dsn):
    install_outbox(db_dsn)

    async def scenario():
        config = relay_config(db_dsn, poll_interval=30.0)
        async with RunningRelay(config) as relay:
            await eventually(lambda: relay.service.source.leases.owned, 10, "leases")
            await asyncio.sleep(0.3)  # let the first idle poll begin its 30 s wait
            await asyncio.to_thread(write, db_dsn, 1)
            return await eventually(lambda: relay.connector.published, 5, "the message")

    assert asyncio.run(scenario()) < 2.0


def test_a_failing_key_waits_and_does_not_stop_other_keys(db_dsn):
    install_outbox(db_dsn)
    failures = {"left": 3}

    def flaky_first_of_k0(message):
        if message.key == "k0" and failures["left"] > 0:
            failures["left"] -= 1
            return retryable("broker said not now")
        return None

    connector = InMemoryConnector(rules=[flaky_first_of_k0])
    write(db_dsn, 50, keys=5)

    async def scenario():
        config = relay_config(db_dsn, batch_size=7, retention=3600)  # keeps attempts readable
        async with RunningRelay(config, connector) as relay:
            await eventually(
                lambda: len({m.id for m in relay.connector.published}) >= 50,
                20,
                "every message despite the flaky key",
            )
            return relay.connector.published

    published = asyncio.run(scenario())
    first_occurrences_in_order(published)
    assert pending(db_dsn) == 0
    with psycopg.connect(db_dsn) as conn:
        retried = conn.execute("SELECT max(attempts) FROM outbox.messages").fetchone()[0]
        holds = conn.execute("SELECT count(*) FROM outbox.key_holds").fetchone()[0]
    assert retried >= 2
    assert holds == 0


def test_a_permanent_failure_becomes_a_dead_letter_and_holds_only_its_key(db_dsn):
    install_outbox(db_dsn)
    poisoned = write(db_dsn, 1, keys=1, topic="poison")[0]
    write(db_dsn, 20, keys=4, topic="orders")  # keys k0..k3, k0 shared with the poison

    connector = InMemoryConnector(
        rules=[lambda m: permanent("unroutable") if m.topic == "poison" else None]
    )

    async def scenario():
        async with RunningRelay(relay_config(db_dsn), connector) as relay:
            await eventually(lambda: len(relay.connector.published) >= 15, 10, "other keys")
            await asyncio.sleep(0.5)
            return relay.connector.published

    published = asyncio.run(scenario())
    assert {m.key for m in published} == {"k1", "k2", "k3"}
    with psycopg.connect(db_dsn) as conn:
        parked = conn.execute("SELECT id, last_error FROM outbox.dead_letters").fetchall()
        hold = conn.execute("SELECT key, held_until = 'infinity' FROM outbox.key_holds").fetchall()
    assert parked == [(poisoned, "unroutable")]
    assert hold == [("k0", True)]


def test_two_relays_split_the_buckets_and_one_takes_over_when_the_other_leaves(db_dsn):
    install_outbox(db_dsn)

    async def scenario():
        config = relay_config(db_dsn)
        async with RunningRelay(config) as first, RunningRelay(config) as second:
            await eventually(
                lambda: (
                    len(first.service.source.leases.owned) == 128
                    and len(second.service.source.leases.owned) == 128
                ),
                15,
                "an even split",
            )
            assert not first.service.source.leases.owned & second.service.source.leases.owned
            await asyncio.to_thread(write, db_dsn, 400, 40)
            await eventually(
                lambda: len(first.connector.published) + len(second.connector.published) >= 400,
                15,
                "both relays draining",
            )
            assert first.connector.published and second.connector.published
            await first.stop()
            took = await eventually(
                lambda: len(second.service.source.leases.owned) == 256, 10, "the takeover"
            )
            await asyncio.to_thread(write, db_dsn, 100, 40)
            await eventually(lambda: len(second.connector.published) >= 200, 10, "the survivor")
            return took

    assert asyncio.run(scenario()) < 3.0


def claim_like_the_poller(conn, relay_id, limit=10):
    """The poller's claim (relay.poll.claims.lock_and_claim) on an autocommit connection:
    BEGIN, the lock and (a new statement) the claim in one pipeline. The transaction stays
    open for the caller to end."""
    params = {
        "relay_id": relay_id,
        "lock_space": lock_space("outbox"),
        "limit": limit,
        "lane": 0,
        "lanes": 1,
        "buckets": None,
    }
    with conn.pipeline():
        conn.execute(BEGIN_READ_COMMITTED)
        conn.execute(query("lock_leased_buckets", "outbox"), params)
        claim = conn.execute(query("claim_batch", "outbox"), params)
    return claim.fetchall()


def connect_autocommit(dsn):
    """As the relay's sessions are: transactions only where a statement begins one."""
    return psycopg.connect(dsn, autocommit=True)


def lease_bucket(dsn, bucket):
    """Give ``bucket`` to a new relay id (a rebalance, or an expired lease taken over)."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        return admin.execute(
            "UPDATE outbox.bucket_leases SET relay_id = gen_random_uuid(), "
            "expires_at = now() + interval '1 minute' WHERE bucket = %s RETURNING relay_id",
            (bucket,),
        ).fetchone()[0]


def bucket_of(dsn, key):
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT bucket FROM outbox.messages WHERE key = %s LIMIT 1", (key,)
        ).fetchone()[0]


def test_the_new_owner_of_a_bucket_waits_for_the_old_owners_batch(db_dsn):
    """Scripted interleaving: relay A has a batch in flight when its bucket moves to B."""
    install_outbox(db_dsn)
    write(db_dsn, 3, keys=1)
    bucket = bucket_of(db_dsn, "k0")
    owner_a = lease_bucket(db_dsn, bucket)
    with connect_autocommit(db_dsn) as a, connect_autocommit(db_dsn) as b:
        assert len(claim_like_the_poller(a, owner_a)) == 3  # A's batch stays in flight
        owner_b = lease_bucket(db_dsn, bucket)
        assert claim_like_the_poller(b, owner_b) == []
        b.rollback()
        a.rollback()  # A's transaction ends (crash, timeout or rollback)
        assert len(claim_like_the_poller(b, owner_b)) == 3


def test_a_hand_over_mid_commit_cannot_skip_the_old_owners_key_hold(db_dsn):
    """A dead-letters K's first message and holds K; B's claim starts just before A
    commits. B must not publish K's second message past the dead letter."""
    install_outbox(db_dsn)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        # not-yet-due rows make the claim statement slow, widening the race window
        conn.execute(
            "INSERT INTO outbox.messages (topic, key, payload, available_at) "
            "SELECT 't', NULL, '{}', now() + interval '1 hour' FROM generate_series(1, 300000)"
        )
        conn.execute(
            "INSERT INTO outbox.messages (topic, key, payload) "
            "VALUES ('t', 'K', '{\"n\": 10}'), ('t', 'K', '{\"n\": 11}')"
        )
        conn.execute("VACUUM ANALYZE outbox.messages")
    bucket = bucket_of(db_dsn, "K")
    owner_a = lease_bucket(db_dsn, bucket)
    with connect_autocommit(db_dsn) as a, connect_autocommit(db_dsn) as b:
        first, second = [r[0] for r in claim_like_the_poller(a, owner_a, 500) if r[3] == "K"]
        a.execute("DELETE FROM outbox.messages WHERE seq = %s", (first,))
        a.execute(
            "INSERT INTO outbox.key_holds (key, held_until, seq, reason) "
            "VALUES ('K', 'infinity', %s, 'refused')",
            (first,),
        )
        owner_b = lease_bucket(db_dsn, bucket)
        claimed_by_b: list = []
        racer = threading.Thread(
            target=lambda: claimed_by_b.extend(claim_like_the_poller(b, owner_b, 500))
        )
        racer.start()
        time.sleep(0.01)  # B's statement has started
        a.commit()
        racer.join(30)
        b.rollback()
    assert second not in [row[0] for row in claimed_by_b]


def test_a_poller_whose_leases_ran_out_by_its_own_clock_publishes_nothing(db_dsn):
    """PostgreSQL still lists the leases as this relay's, but its own clock says they ran
    out (it was frozen, say): it may claim, but must not publish."""
    install_outbox(db_dsn)
    write(db_dsn, 5, keys=1)
    config = relay_config(db_dsn, claim_lanes=1)
    clock = {"now": 1000.0}
    connector = InMemoryConnector()

    async def scenario():
        relay_id = uuid.uuid4()
        leases = LeaseKeeper(
            duty_session(config, "leases"), schema="outbox", relay_id=relay_id,
            relay_name="frozen", mode="poll", ttl=config.lease_ttl, on_change=lambda: None,
            published=lambda: 0, clock=lambda: clock["now"],
        )  # fmt: skip
        poller = Poller(config, claim_session(config), connector, leases, relay_id,
                        asyncio.Event())  # fmt: skip
        try:
            await leases.tick()
            assert len(leases.owned) == 256 and leases.holds_valid_leases()
            clock["now"] += config.lease_ttl  # by its own clock the leases ran out
            with pytest.raises(LeaseLostError):
                await poller.drain_once()
        finally:
            await poller.close()
            await leases.stop()

    asyncio.run(scenario())
    assert connector.batches == 0
    assert pending(db_dsn) == 5


def test_retention_zero_deletes_on_acknowledgement(db_dsn):
    install_outbox(db_dsn)
    write(db_dsn, 30)

    async def scenario():
        async with RunningRelay(relay_config(db_dsn, retention=0)) as relay:
            await eventually(lambda: len(relay.connector.published) >= 30, 10, "the backlog")

    asyncio.run(scenario())
    with psycopg.connect(db_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM outbox.messages").fetchone()[0] == 0


REFUSE_WRITES = """
CREATE FUNCTION outbox.refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'refused'; END $$;
CREATE TRIGGER refuse BEFORE UPDATE OR DELETE ON outbox.messages
FOR EACH ROW EXECUTE FUNCTION outbox.refuse();
"""


@pytest.mark.parametrize("name", ["delete_sent", "mark_sent"])
def test_the_acknowledgement_and_its_commit_go_as_one_query(db_dsn, name):
    install_outbox(db_dsn)
    write(db_dsn, 5)
    with psycopg.connect(db_dsn) as conn:
        seqs = [r[0] for r in conn.execute("SELECT seq FROM outbox.messages ORDER BY seq")]

    async def acknowledge(seqs: list[int]) -> str:
        async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
            await conn.execute("BEGIN")
            statement = sent_and_commit_statement(conn, query(name, "outbox"), seqs)
            with contextlib.suppress(psycopg.errors.RaiseException):
                await conn.execute(statement)
            return conn.info.transaction_status.name

    assert asyncio.run(acknowledge(seqs[:3])) == "IDLE"  # written and committed
    assert pending(db_dsn) == 2
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute(REFUSE_WRITES)
    assert asyncio.run(acknowledge(seqs[3:])) == "INERROR"  # the write failed: no COMMIT
    assert pending(db_dsn) == 2


@pytest.mark.parametrize("name", ["delete_sent", "mark_sent"])
def test_the_acknowledgement_is_what_a_cursor_would_have_bound(db_dsn, name):
    """SentAndCommit renders the statement once and puts each batch's seqs in itself."""

    async def both(seqs: list[int]) -> tuple[bytes, bytes]:
        async with await psycopg.AsyncConnection.connect(db_dsn) as conn:
            bound = psycopg.AsyncClientCursor(conn).mogrify(
                query(name, "outbox"), {"seqs": bigint_array(seqs)}
            )
            statement = SentAndCommit(query(name, "outbox"))
            statement.statement(conn, [0])  # the rendering is kept from the first batch
            return statement.statement(conn, seqs), bound.encode() + b";\nCOMMIT"

    for seqs in ([1], [3, -2, 9_223_372_036_854_775_807], list(range(500))):
        ours, cursors = asyncio.run(both(seqs))
        assert ours == cursors


def test_an_acknowledgement_with_a_percent_sign_is_refused():
    with pytest.raises(ValueError, match="one"):
        SentAndCommit(sql.SQL("DELETE FROM t WHERE a LIKE 'x%%' AND seq = ANY(%(seqs)s)"))._split(
            b"DELETE FROM t WHERE a LIKE 'x%%' AND seq = ANY(%(seqs)s)"
        )


def test_retention_purges_old_sent_rows_in_batches(db_dsn):
    install_outbox(db_dsn)
    write(db_dsn, 2500)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE outbox.messages SET sent_at = now() - interval '2 hours' WHERE seq <= 2400"
        )
    from relay.db import DbSession
    from relay.outbox_rows import purge_sent

    async def scenario():
        session = DbSession(db_dsn, "housekeeping", connect_timeout=5)
        try:
            return await purge_sent(session, "outbox", 3600)
        finally:
            await session.close()

    assert asyncio.run(scenario()) == 2400
    assert pending(db_dsn) == 100


def test_preflight_says_to_run_migrate(db_dsn):
    with pytest.raises(SchemaMissingError, match="run `outbox-relay migrate`"):
        preflight(relay_config(db_dsn))


def test_the_claim_returns_the_columns_message_from_claim_unpacks(db_dsn):
    install_outbox(db_dsn)
    write(db_dsn, 1)
    with psycopg.connect(db_dsn) as conn:
        with conn.transaction():
            ids = [
                enqueue(conn, topic="t", key="b", payload=b"\x00\xff", headers={"h": "v"}),
                enqueue(conn, topic="t", key="j", payload={"é": [1, 2.50]}),
            ]
        with conn.cursor(binary=True) as cursor:  # as the relay claims
            register_claim_loaders(cursor.adapters)
            cursor.execute(
                query("claim_batch", "outbox"),
                {"buckets": list(range(256)), "limit": 10, "relay_id": None, "lock_space": 0},
            )
            assert tuple(column.name for column in cursor.description or []) == CLAIM_COLUMNS
            first, binary, unicode = map(message_from_claim, cursor.fetchall())
    assert first.payload == b'{"n":0}' and first.headers == {}
    assert (first.topic, first.key, first.attempts) == ("orders", "k0", 0)
    assert first.created_at is not None and first.created_at.utcoffset() is not None
    assert (binary.id, binary.payload, binary.headers) == (ids[0], b"\x00\xff", {"h": "v"})
    assert unicode.id == ids[1] and unicode.content_type == "application/json"
    assert unicode.payload == '{"é":[1,2.5]}'.encode()  # the text as written, not re-encoded


def test_a_simple_claim_loads_the_same_messages_as_a_binary_one(db_dsn):
    install_outbox(db_dsn)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        with conn.transaction():
            enqueue(conn, topic="t", key="b", payload=b"\x00\xff", headers={"h": "v"})
            enqueue(conn, topic="t", key="j", payload={"é": [1, 2.50]})
            enqueue(conn, topic="t", key=None, payload={"n": 1}, headers={"x": 1})
        relay_id = lease_bucket(db_dsn, 0)
        conn.execute(
            "UPDATE outbox.bucket_leases SET relay_id = %s, expires_at = now() + interval "
            "'1 minute'",
            (relay_id,),
        )

    async def claim_with(claim):
        async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
            await conn.execute("SET TimeZone = 'UTC'")  # as the claim sessions are
            params = {
                "relay_id": relay_id, "lock_space": 1, "lane": 0, "lanes": 1,
                "buckets": None, "limit": 10,
            }  # fmt: skip
            messages = await claim(conn, "outbox", params)
            await conn.execute("ROLLBACK")
            return messages

    binary = asyncio.run(claim_with(lock_and_claim))
    simple = asyncio.run(claim_with(lock_and_claim_simply))
    assert len(binary) == 3
    assert simple == binary
    assert [type(m.payload) for m in simple] == [bytes] * 3
    assert simple[1].payload == '{"é":[1,2.5]}'.encode()  # the text as written
    assert simple[2].headers == {"x": "1"}


# (duty, query, params, SQL making the rows candidates, the plan the planner picks alone)
PLAN_CASES = [
    ("claim-0", "claim_batch", {"buckets": list(range(0, 256, 2)), "limit": 500}, "", "Sort"),
    (
        "housekeeping",
        "purge_sent",
        {"retention": 60, "limit": 500},
        "UPDATE outbox.messages SET sent_at = now() - interval '1 day'",
        "Sort",
    ),
    ("claim-0", "delete_sent", {"seqs": [1, 2, 3]}, "", "Seq Scan"),
]


def explain(rows):
    return "\n".join(line for (line,) in rows)


@pytest.mark.parametrize(
    ("duty", "name", "params", "setup", "alone"), PLAN_CASES, ids=[c[1] for c in PLAN_CASES]
)
def test_the_relays_queue_statements_use_their_index_even_where_a_scan_looks_cheaper(
    db_dsn, duty, name, params, setup, alone
):
    """On a small table the planner likes a sequential scan (plus a sort) for the claim,
    the retention purge and the acknowledgement: the plans that stale statistics also
    picked on a large, busy table in the benchmarks (a full sort per claim, a scan of the
    whole heap per acknowledgement). The sessions the relay runs them in rule those out."""
    statement = sql.SQL("EXPLAIN ") + query(name, "outbox")
    install_outbox(db_dsn)
    write(db_dsn, 50)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        if setup:
            conn.execute(setup)
        conn.execute("ANALYZE outbox.messages")
        assert alone in explain(conn.execute(statement, params))  # the planner left alone

    async def relay_plan():
        service = RelayService(relay_config(db_dsn), connector=InMemoryConnector())
        (session,) = [s for s in service.sessions if s.duty == duty]
        try:
            conn = await session.connection()
            return explain(await (await conn.execute(statement, params)).fetchall())
        finally:
            await session.close()

    plan = asyncio.run(relay_plan())
    assert "Sort" not in plan and "Seq Scan" not in plan and "JIT" not in plan
    assert "Index Scan using messages_" in plan or "Bitmap Index Scan on messages_" in plan


def test_the_relay_looks_for_work_once_whenever_its_heartbeat_comes_back_to_life(db_dsn):
    """Writers skip the NOTIFY while no polling relay's row is live: the first renewal,
    and the first after the leases lapsed, tell the relay to look once; others do not."""
    install_outbox(db_dsn)
    config = relay_config(db_dsn)
    clock = {"now": 1000.0}
    lives: list[float] = []

    async def scenario() -> None:
        leases = LeaseKeeper(
            duty_session(config, "leases"), schema="outbox", relay_id=uuid.uuid4(),
            relay_name="lively", mode="poll", ttl=config.lease_ttl, on_change=lambda: None,
            published=lambda: 0, clock=lambda: clock["now"],
            on_live=lambda: lives.append(clock["now"]),
        )  # fmt: skip
        try:
            await leases.tick()
            clock["now"] += config.lease_ttl / 4
            await leases.tick()  # on time: still live
            clock["now"] += config.lease_ttl  # frozen past its lease
            await leases.tick()
        finally:
            await leases.stop()

    asyncio.run(scenario())
    assert lives == [1000.0, 1000.0 + config.lease_ttl * 1.25]
