"""Realistic ~1 KB JSON events: an order with a customer, an address and line items.

Values vary per event (seeded, so runs are reproducible); nothing is a run of repeated
characters, so compression (lz4 in the Kafka connector) sees what it would in production.
A pool of bodies is built once; each event adds its own sequence number and write time in
front, so writers spend almost nothing per message on JSON.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import orjson

TARGET_BYTES = 1024
POOL_SIZE = 2048
KEYS = 100  # "several keys": 100 customers, so ~83 of the 256 buckets

_FIRST = ["Ada", "Grace", "Linus", "Barbara", "Edsger", "Margaret", "Ken", "Radia", "Donald"]
_LAST = ["Lovelace", "Hopper", "Torvalds", "Liskov", "Dijkstra", "Hamilton", "Thompson"]
_CITIES = ["Lyon", "Porto", "Gdansk", "Tallinn", "Bologna", "Ghent", "Aarhus", "Graz"]
_STREETS = ["Rue de la Paix", "Avenida da Liberdade", "Long Lane", "Via Roma", "Hauptstrasse"]
_PRODUCTS = [
    ("KB-104", "Mechanical keyboard, brown switches"),
    ("MS-220", "Wireless mouse"),
    ("MN-270", "27-inch monitor, IPS panel"),
    ("CB-010", "USB-C cable, 2 m"),
    ("HD-550", "Noise-cancelling headphones"),
    ("DK-300", "Standing desk frame"),
    ("LP-140", "Laptop stand, aluminium"),
    ("WC-080", "Webcam 1080p"),
]
_WORDS = [
    "please",
    "deliver",
    "after",
    "five",
    "ring",
    "twice",
    "leave",
    "with",
    "the",
    "neighbour",
    "gift",
    "wrap",
    "fragile",
    "handle",
    "with",
    "care",
    "invoice",
    "to",
    "company",
    "address",
    "call",
    "before",
    "arrival",
    "back",
    "entrance",
]


def customer_key(index: int) -> str:
    return f"customer-{index % KEYS:03d}"


def _body(rng: random.Random, index: int) -> dict[str, object]:
    placed = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(10**7))
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    items, total = [], 0.0
    for _ in range(rng.randint(2, 4)):
        sku, name = rng.choice(_PRODUCTS)
        quantity, price = rng.randint(1, 5), round(rng.uniform(3, 900), 2)
        total += quantity * price
        items.append(
            {
                "sku": f"{sku}-{rng.randrange(1000):03d}",
                "name": name,
                "quantity": quantity,
                "unit_price": price,
                "warehouse": rng.choice(["FR-LYS-1", "PT-OPO-2", "PL-GDN-1"]),
            }
        )
    return {
        "event_type": "OrderPlaced",
        "event_version": 3,
        "order_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "customer": {
            "id": customer_key(index),
            "name": f"{first} {last}",
            "email": f"{first.lower()}.{last.lower()}{rng.randrange(100)}@example.org",
            "tier": rng.choice(["standard", "silver", "gold"]),
        },
        "shipping_address": {
            "street": f"{rng.randint(1, 200)} {rng.choice(_STREETS)}",
            "city": rng.choice(_CITIES),
            "postcode": f"{rng.randrange(10000, 99999)}",
            "country": rng.choice(["FR", "PT", "PL", "EE", "IT", "BE", "DK", "AT"]),
        },
        "items": items,
        "total": round(total, 2),
        "currency": "EUR",
        "placed_at": placed.isoformat(),
        "channel": rng.choice(["web", "ios", "android", "partner-api"]),
    }


def _padded(rng: random.Random, index: int) -> bytes:
    """One body of about TARGET_BYTES (with room for the per-event prefix)."""
    body = _body(rng, index)
    words: list[str] = []
    while True:
        body["delivery_note"] = " ".join(words)
        text = orjson.dumps(body)
        if len(text) >= TARGET_BYTES - 48:
            return text
        words.append(rng.choice(_WORDS))


def body_pool(seed: int = 20261121, size: int = POOL_SIZE) -> list[str]:
    """``size`` distinct JSON object texts without their opening brace."""
    rng = random.Random(seed)
    return [_padded(rng, i).decode()[1:] for i in range(size)]


def event_key(pool: list[str], n: int) -> str:
    """The key of event ``n``: its customer, so a key's events share one bucket."""
    return customer_key(n % len(pool))


def event_text(pool: list[str], n: int, written_at: float) -> str:
    """Event ``n``: its number and write time (epoch seconds), then a pooled body."""
    return f'{{"n":{n},"written_at":{written_at:.6f},{pool[n % len(pool)]}'
