"""The wake-up listener's retries (relay.poll.listener): a connection that breaks right
after LISTEN succeeds is retried with a growing backoff, not at the base delay forever."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

import relay.backoff
from relay.poll.listener import SharedListener


class BreaksAfterListen:
    """A connection whose LISTEN succeeds and whose wait for notifications fails."""

    async def execute(self, _statement):
        return None

    def notifies(self, **_kwargs):
        raise psycopg.OperationalError("server closed the connection unexpectedly")


class Session:
    def __init__(self) -> None:
        self.connects = 0

    async def connection(self):
        self.connects += 1
        return BreaksAfterListen()

    async def discard(self) -> None:
        return None

    async def close(self) -> None:
        return None


def test_a_connection_that_breaks_right_after_listen_backs_off_further_each_time(monkeypatch):
    attempts: list[int] = []

    def no_wait(attempt: int, **_kwargs) -> float:
        attempts.append(attempt)
        return 0.0

    monkeypatch.setattr(relay.backoff, "full_jitter", no_wait)

    async def scenario() -> None:
        session = Session()
        listener = SharedListener(session, coalesce=0.0)  # type: ignore[arg-type]
        listener.add("outbox", lambda: None)
        while session.connects < 6:
            await asyncio.sleep(0.001)
        await listener.stop()

    asyncio.run(asyncio.wait_for(scenario(), timeout=10))
    assert attempts[:5] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("ran_for, expected", [(0.0, 1), (11.0, 0)])
def test_the_backoff_starts_small_again_only_after_a_session_that_lasted(
    monkeypatch, ran_for, expected
):
    now = [100.0]
    monkeypatch.setattr(relay.backoff.time, "monotonic", lambda: now[0])
    backoff = relay.backoff.SessionBackoff(base=0.5, cap=15.0)
    backoff.started()
    backoff.next_delay()  # the first failure: attempt 0
    backoff.started()
    now[0] += ran_for
    attempts: list[int] = []
    monkeypatch.setattr(
        relay.backoff, "full_jitter", lambda attempt, **_k: attempts.append(attempt) or 0.0
    )
    backoff.next_delay()
    assert attempts == [expected]
