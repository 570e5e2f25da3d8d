"""Delivering the review decisions' webhooks from the outbox: Standard Webhooks signatures, retries
with backoff, one sender per message.

Each decision writes its message to `webhook_outbox` in the decision's own transaction (queue.py).
Every worker runs a Sender (in its maintenance thread). A sender takes one due message at a time:
in one transaction it finds the oldest due row and leases it by a conditional UPDATE that checks
again that the row is pending, due (`next_at`) and unleased, at the time of the take itself, and
sets a lease that covers the whole attempt (the delivery timeout and LEASE_SECONDS more) with a
token of its own. So exactly one worker sends a message at a time, however slow the receiver, and a
message just rescheduled is not sent again at once. It POSTs through the same guarded client as image
downloads (the URL is checked like any other; the delivery timeout bounds the whole attempt, reads
included), then:

- one item's messages go out in the order they were written: a message waits while an earlier one
  of its item is pending (retried), so a receiver never hears an undo before the decision;
- on a 2xx, marks the row delivered; if the store fails at that moment, the mark is kept in memory
  and tried again at every pass, well within the lease, so a store outage shorter than the lease
  sends nothing twice;
- on a failure, reschedules it after the next backoff step (or marks it `failed` after the last),
  only while it still holds the lease (its token), so a sender that lost the lease changes nothing.

A restart loses nothing: rows wait in the store, and a lease that a dead worker held runs out. A
worker killed after the receiver's 2xx but before the mark, or a store that stays down longer than
the lease, can send that message again: with the same `webhook-id`, as the specification expects
receivers to dedupe. `last_error` (shown by GET /reviews/webhooks) never holds the URL's path or
query, where a receiver's secret may be.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Engine, and_, exists, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from standardwebhooks.webhooks import Webhook

from nsfw import metrics
from nsfw.errors import NsfwError
from nsfw.review.tables import outbox

log = logging.getLogger(__name__)

# Seconds before attempt n + 1 after attempt n failed: the first retry within 10 s, then growing;
# 11 attempts over about 23.5 hours, then `failed` (kept, visible in GET /reviews/webhooks).
BACKOFF = (5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800, 28800)
# A lease lasts the delivery timeout and this much more: time to mark the row, and for a store that
# failed at that moment to come back.
LEASE_SECONDS = 60.0
BATCH = 20
# A pass takes no new message after this long, so that the maintenance thread's other duties (the
# gauges, the WAL checkpoint, retention) are not held up by a slow receiver.
PASS_SECONDS = 5.0

Post = Callable[[str, bytes, Mapping[str, str], float], int]


def redact(text: str, url: str) -> str:
    """text without url's path and query (a receiver's token may be either), nor the URL itself."""
    split = urlsplit(url)
    for secret in sorted({url, split.path, split.query, split.path + "?" + split.query}, key=len, reverse=True):
        if len(secret) > 1:  # "/" alone says nothing
            text = text.replace(secret, "…")
    return text


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
        # Messages the receiver took (2xx) whose mark the store refused: id -> when; marked at every pass.
        self._unmarked: dict[str, float] = {}

    @property
    def lease(self) -> float:
        return self.timeout + LEASE_SECONDS

    def headers(self, message_id: str, payload: str, at: float) -> dict[str, str]:
        """The three Standard Webhooks headers for this attempt (signed at its own time)."""
        timestamp = datetime.fromtimestamp(int(at), tz=UTC)
        return {
            "webhook-id": message_id,
            "webhook-timestamp": str(int(at)),
            "webhook-signature": self.signer.sign(message_id, timestamp, payload),
        }

    def deliver_due(self) -> int:
        """One pass: the marks owed from earlier passes, then the due messages, one at a time (at most
        BATCH, for PASS_SECONDS at most); how many this sender attempted. A store failure ends the pass
        (it is tried again at the next one)."""
        self._mark_owed()
        attempted = 0
        ends = time.monotonic() + PASS_SECONDS
        while attempted < BATCH and not self._unmarked and time.monotonic() < ends:
            taken = self._take()
            if taken is None:
                break
            self._attempt(*taken)
            attempted += 1
        return attempted

    def _due(self, now: float) -> Any:
        """Pending, due, unleased, and the first of its item's pending messages: an item's messages
        go out in the order they were written (a review.reverted never before its review.decided)."""
        earlier = outbox.alias("earlier")
        return (
            (outbox.c.status == "pending")
            & (outbox.c.next_at <= now)
            & or_(outbox.c.lease_until.is_(None), outbox.c.lease_until < now)
            & ~exists().where(
                earlier.c.review_id == outbox.c.review_id,
                earlier.c.status == "pending",
                or_(
                    earlier.c.created < outbox.c.created,
                    and_(earlier.c.created == outbox.c.created, earlier.c.id < outbox.c.id),
                ),
            )
        )

    def _take(self) -> tuple[Any, str] | None:
        """The oldest due message, leased to this sender from now (its row and the lease's token)."""
        for _ in range(BATCH):  # another sender may take the row between the read and the lease
            now = self.clock()
            token = secrets.token_hex(8)
            with self.engine.begin() as connection:
                query = select(outbox).where(self._due(now)).order_by(outbox.c.next_at).limit(1)
                if self.engine.dialect.name == "postgresql":
                    query = query.with_for_update(skip_locked=True)  # senders pass each other's rows by
                row = connection.execute(query).first()
                if row is None:
                    return None
                leased = connection.execute(
                    update(outbox)
                    .where(outbox.c.id == row.id, self._due(now))
                    .values(lease_until=now + self.lease, lease_token=token)
                ).rowcount
            if leased:
                return row, token
        return None

    def _attempt(self, row: Any, token: str) -> None:
        at = self.clock()
        error = None
        try:
            self.post(self.url, row.payload.encode(), self.headers(row.id, row.payload, at), self.timeout)
        except NsfwError as exc:
            error = redact(f"{exc.code}: {exc.detail}", self.url)[:500]
        attempts = row.attempts + 1
        if error is None:
            log.info("webhook %s (%s) delivered on attempt %d", row.id, row.event, attempts)
            metrics.WEBHOOK_DELIVERIES.labels("delivered").inc()
            self._unmarked[row.id] = self.clock()
            self._mark_owed()
            return
        if attempts > len(BACKOFF):
            values: dict[str, object] = {"status": "failed"}
            outcome = "failed"
        else:
            values, outcome = {"next_at": self.clock() + BACKOFF[attempts - 1]}, "retried"
        with self.engine.begin() as connection:
            kept = connection.execute(
                update(outbox)
                .where(outbox.c.id == row.id, outbox.c.lease_token == token, outbox.c.status == "pending")
                .values(attempts=attempts, lease_until=None, lease_token=None, last_error=error, **values)
            ).rowcount
        if not kept:
            log.warning("webhook %s: the lease ran out during the attempt; another sender has it", row.id)
        metrics.WEBHOOK_DELIVERIES.labels(outcome).inc()
        log.warning("webhook %s (%s) attempt %d -> %s: %s", row.id, row.event, attempts, outcome, error)

    def flush(self) -> None:
        """At a worker's exit: make the owed marks if the store answers (else they are lost with the
        worker, and those messages are sent again once their leases run out)."""
        try:
            self._mark_owed()
        except SQLAlchemyError:
            log.warning("webhooks: %d delivered marks could not be made before exit", len(self._unmarked))

    def _mark_owed(self) -> None:
        """Mark delivered what the receivers took; what the store refuses stays owed (raised after)."""
        for message_id, delivered in list(self._unmarked.items()):
            try:
                with self.engine.begin() as connection:
                    connection.execute(
                        update(outbox)
                        .where(outbox.c.id == message_id, outbox.c.status == "pending")
                        .values(
                            status="delivered",
                            delivered=delivered,
                            attempts=outbox.c.attempts + 1,
                            lease_until=None,
                            lease_token=None,
                            last_error=None,
                        )
                    )
            except SQLAlchemyError:
                log.warning("webhook %s was delivered; the store refused the mark, tried again next pass", message_id)
                raise
            del self._unmarked[message_id]
