"""The advisory lock that makes one relay a slot's leader, and the connection that holds it.

A slot's lock key is derived from its name, so every relay (and ``doctor``) names the
same lock without agreeing on anything else. The leader connection holds that lock for
as long as it lives: its keepalives and timeouts decide how soon a vanished leader's
lock is dropped (relay.cdc.leader has the rest of the lead).
"""

from __future__ import annotations

import hashlib
from typing import Any

from psycopg.conninfo import make_conninfo

from relay.config import RelayConfig
from relay.db import DbSession


def lock_key(slot: str) -> int:
    """The advisory lock of a slot: a signed 64-bit key (its own space: objsubid 1)."""
    digest = hashlib.blake2b(f"outbox-relay-cdc:{slot}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def slot_params(slot: str) -> dict[str, Any]:
    """The slot and its lock, as the queries of cdc.sql take them."""
    key = lock_key(slot)
    return {
        "slot": slot,
        "lock_key": key,
        "lock_hi": (key >> 32) & 0xFFFF_FFFF,
        "lock_lo": key & 0xFFFF_FFFF,
    }


def leader_session(config: RelayConfig, ttl: float) -> DbSession:
    """The leader connection: TCP keepalives both ways so a vanished peer is noticed
    within about the TTL, and synchronous commit so saved progress survives a crash."""
    probe = max(1, int(ttl // 4))
    dsn = make_conninfo(
        config.dsn,
        keepalives=1,
        keepalives_idle=probe,
        keepalives_interval=probe,
        keepalives_count=3,
        tcp_user_timeout=int(ttl * 1000),
    )
    return DbSession(
        dsn,
        "cdc-leader",
        connect_timeout=config.connect_timeout,
        settings={
            "statement_timeout": str(int(ttl * 500)),
            "synchronous_commit": "on",
            "tcp_keepalives_idle": str(probe),
            "tcp_keepalives_interval": str(probe),
            "tcp_keepalives_count": "3",
        },
    )
