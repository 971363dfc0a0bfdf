"""Per-key order within a batch when a connector refuses a message itself.

Some messages never leave the relay: a field the broker's protocol cannot carry (an
AMQP short string over 255 bytes), a client library that will not queue the message
(librdkafka's ``produce()`` refusing an oversized record), or the relay's own size
limit. The refused message is retried or dead-lettered later, so a later message of its
key in the same batch must not be sent now: it would reach the broker first, and the
key's order would be broken for good (docs/failures.md).

``BatchRefusals`` is that rule, written once for every connector and wrapper: walk the
batch with ``sendable()``, report each message you will not send with ``refuse()``, and
the later messages of its key are no longer yielded; they get the RETRYABLE
``HELD_BACK`` outcome, which the relay does not count as an attempt.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import islice

from relay.model import OutboxMessage, Outcome, retryable

HELD_BACK = retryable("behind a refused message of the same key")


class BatchRefusals:
    """The messages of one batch settled before they left the relay, by batch index.

    ``outcomes`` holds the refused messages' outcomes and ``HELD_BACK`` for the later
    messages of their keys. Messages without a key are never held back (no order is
    promised for them).
    """

    __slots__ = ("_batch", "_keys", "outcomes")

    def __init__(self, batch: Sequence[OutboxMessage]) -> None:
        self._batch = batch
        self._keys: set[str] = set()
        self.outcomes: dict[int, Outcome] = {}

    def sendable(self) -> Iterator[tuple[int, OutboxMessage]]:
        """``(index, message)`` in batch order, leaving out every message whose key had
        a message refused earlier in the batch (it is settled as ``HELD_BACK``)."""
        keys, outcomes = self._keys, self.outcomes
        for index, message in enumerate(self._batch):
            if keys and message.key in keys:
                outcomes[index] = HELD_BACK
            else:
                yield index, message

    def refuse(self, index: int, outcome: Outcome) -> None:
        """Settle message ``index`` as not sent, with ``outcome``; its key's later
        messages are held back from now on."""
        self.outcomes[index] = outcome
        key = self._batch[index].key
        if key is not None:
            self._keys.add(key)

    def unsettled(self) -> list[OutboxMessage]:
        """The messages not settled here, in batch order (after a full ``sendable()``)."""
        if not self.outcomes:
            return list(self._batch)
        return [m for i, m in enumerate(self._batch) if i not in self.outcomes]

    def merge(self, sent: Iterable[Outcome]) -> list[Outcome]:
        """Every outcome in batch order: the ones settled here, and ``sent`` (one per
        unsettled message, in order; only as many are taken) for the others."""
        if not self.outcomes:
            return list(islice(sent, len(self._batch)))  # ``sent`` may be endless
        rest = iter(sent)
        settled = self.outcomes
        return [settled[i] if i in settled else next(rest) for i in range(len(self._batch))]
