"""Delivering the review decisions' webhooks from the outbox: Standard Webhooks signatures, retries
with backoff, one sender per message.

Each decision writes its message to `webhook_outbox` in the decision's own transaction (queue.py).
Every worker runs a Sender thread; a sender takes a due row by a conditional UPDATE of its lease,
so exactly one worker sends it, POSTs it through the same guarded client as image downloads (the
URL is checked like any other), and marks it delivered, or due again after the next backoff step,
or `failed` after the last. A restart loses nothing: rows wait in the store, and a lease that a
dead worker held runs out. A crash after the receiver's 2xx but before the row is marked can send
that message again: with the same `webhook-id`, as the specification expects receivers to dedupe.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from sqlalchemy import Engine, or_, select, update
from standardwebhooks.webhooks import Webhook

from nsfw import metrics
from nsfw.errors import NsfwError
from nsfw.review.store import outbox

log = logging.getLogger(__name__)

# Seconds before attempt n + 1 after attempt n failed: the first retry within 10 s, then growing;
# 11 attempts over about 23.5 hours, then `failed` (kept, visible in GET /reviews/webhooks).
BACKOFF = (5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800, 28800)
LEASE_SECONDS = 60.0
BATCH = 20

Post = Callable[[str, bytes, Mapping[str, str], float], int]


class Sender:
    def __init__(
        self,
        engine: Engine,
        url: str,
        secret: str,
        post: Post,
        *,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.url = url
        self.signer = Webhook(secret)
        self.post = post
        self.timeout = timeout
        self.clock = clock
        self.wake = threading.Event()

    def headers(self, message_id: str, payload: str, at: float) -> dict[str, str]:
        """The three Standard Webhooks headers for this attempt (signed at its own time)."""
        timestamp = datetime.fromtimestamp(int(at), tz=UTC)
        return {
            "webhook-id": message_id,
            "webhook-timestamp": str(int(at)),
            "webhook-signature": self.signer.sign(message_id, timestamp, payload),
        }

    def deliver_due(self) -> int:
        """One pass over the due messages; how many this sender attempted."""
        now = self.clock()
        due = (
            select(outbox.c.id)
            .where(
                outbox.c.status == "pending",
                outbox.c.next_at <= now,
                or_(outbox.c.lease_until.is_(None), outbox.c.lease_until < now),
            )
            .order_by(outbox.c.next_at)
            .limit(BATCH)
        )
        with self.engine.connect() as connection:
            ids = [row.id for row in connection.execute(due)]
        attempted = 0
        for message_id in ids:
            if self._take(message_id, now):
                self._attempt(message_id)
                attempted += 1
        return attempted

    def _take(self, message_id: str, now: float) -> bool:
        with self.engine.begin() as connection:
            return bool(
                connection.execute(
                    update(outbox)
                    .where(
                        outbox.c.id == message_id,
                        outbox.c.status == "pending",
                        or_(outbox.c.lease_until.is_(None), outbox.c.lease_until < now),
                    )
                    .values(lease_until=now + LEASE_SECONDS)
                ).rowcount
            )

    def _attempt(self, message_id: str) -> None:
        with self.engine.connect() as connection:
            row = connection.execute(select(outbox).where(outbox.c.id == message_id)).one()
        at = self.clock()
        error = None
        try:
            self.post(self.url, row.payload.encode(), self.headers(row.id, row.payload, at), self.timeout)
        except NsfwError as exc:
            error = f"{exc.code}: {exc.detail}"[:500]
        attempts = row.attempts + 1
        if error is None:
            values: dict[str, object] = {"status": "delivered", "delivered": self.clock()}
            outcome = "delivered"
        elif attempts > len(BACKOFF):
            values, outcome = {"status": "failed"}, "failed"
        else:
            values, outcome = {"next_at": self.clock() + BACKOFF[attempts - 1]}, "retried"
        with self.engine.begin() as connection:
            connection.execute(
                update(outbox)
                .where(outbox.c.id == message_id)
                .values(attempts=attempts, lease_until=None, last_error=error, **values)
            )
        metrics.WEBHOOK_DELIVERIES.labels(outcome).inc()
        if error is None:
            log.info("webhook %s (%s) delivered on attempt %d", row.id, row.event, attempts)
        else:
            log.warning("webhook %s (%s) attempt %d -> %s: %s", row.id, row.event, attempts, outcome, error)

    def run(self, stop: threading.Event, every: float = 1.0) -> None:
        """Deliver until stop is set: a pass every `every` seconds, or at once when woken (a decision
        in this worker). A failing store is logged and tried again at the next pass."""
        while not stop.is_set():
            try:
                self.deliver_due()
            except Exception:  # noqa: BLE001 - the sender outlives a store that is down for a while
                log.exception("webhook pass failed")
                metrics.REVIEW_STORE_ERRORS.labels("webhooks").inc()
            self.wake.wait(every)
            self.wake.clear()
