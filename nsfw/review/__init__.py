"""The review queue (NSFW_REVIEW=true): unknown verdicts wait for a human, decisions reach the client
app as signed webhooks, and are remembered as verdicts for the same bytes.

- store.py: tables, engine, migrations (the only SQL); queue.py: the rules; webhooks.py: the
  outbox's delivery; views.py: the API (the review scope).
- `Reviewer` is the one function the prediction path calls (service.ReviewHook), for detailed
  answers only: a remembered decision becomes the verdict (tier "human"), an unknown (or an audit
  sample) is queued, and a failing store changes nothing but the answer's `review`, which says so.
- `install` wires it into the app in each worker: one engine per process, made after the fork; the
  schema must be at the migrations' head (gunicorn.conf.py runs `python -m nsfw db upgrade` once per
  start, before any worker), and a maintenance thread sends the webhooks, refreshes the queue's
  gauges and drops old thumbnails.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import IO

from flask import Flask
from sqlalchemy.exc import SQLAlchemyError

from nsfw import metrics
from nsfw.cache import sha256_of
from nsfw.config import ConfigError, Settings
from nsfw.fetch import Fetcher
from nsfw.policy import Verdict
from nsfw.review.queue import Candidate, ReviewQueue
from nsfw.review.store import make_engine, revisions
from nsfw.review.webhooks import Sender
from nsfw.service import Prediction, PredictionService, ReviewContext

log = logging.getLogger(__name__)

STORE_ERROR = "the review store is not answering: this image was not queued (the log says why)"


class Reviewer:
    """service.ReviewHook: what the queue makes of a decided, detailed prediction."""

    def __init__(self, queue: ReviewQueue, audit_rate: float, sample: Callable[[], float] = random.random) -> None:
        self.queue = queue
        self.audit_rate = audit_rate
        self.sample = sample

    def __call__(
        self, prediction: Prediction, body: IO[bytes], context: ReviewContext, thumbnail: Callable[[], bytes | None]
    ) -> Prediction:
        assert prediction.verdict is not None
        try:
            sha256 = sha256_of(body)
            decision = self.queue.remembered(sha256)
            if decision is not None:
                metrics.REVIEW_REMEMBERED.inc()
                return replace(
                    prediction,
                    verdict=Verdict(decision.label, decision.reason),
                    tier="human",
                    review={"id": decision.review_id, "status": "decided"},
                )
            if prediction.verdict.label == "unknown":
                kind = "unknown"
            elif self.audit_rate and self.sample() < self.audit_rate:
                kind = "audit"
            else:
                return prediction
            candidate = Candidate(
                sha256=sha256,
                kind=kind,
                ref=context.ref,
                key_name=context.key_name,
                source_url=context.source_url,
                model=prediction.model.name,
                model_version=prediction.model.version,
                scores=prediction.scores,
                verdict=prediction.verdict.label,
                reason=prediction.verdict.reason,
            )
            review_id = self.queue.enqueue(candidate, thumbnail)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("review store failed while queueing: %s: %s", type(exc).__name__, str(exc)[:300])
            metrics.REVIEW_STORE_ERRORS.labels("enqueue").inc()
            return replace(prediction, review={"error": STORE_ERROR})
        metrics.REVIEW_QUEUED.labels(kind).inc()
        review = {"id": review_id, "status": "pending"} | ({"kind": "audit"} if kind == "audit" else {})
        return replace(prediction, review=review)


class Maintenance:
    """The worker's background duties: webhooks every second (at once when woken), the queue's
    gauges every 15 s, old thumbnails every hour."""

    GAUGES_EVERY = 15.0
    PRUNE_EVERY = 3600.0

    def __init__(self, queue: ReviewQueue, sender: Sender | None, retention_days: int) -> None:
        self.queue = queue
        self.sender = sender
        self.retention_days = retention_days
        self.stop = threading.Event()
        self.wake = sender.wake if sender is not None else threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name="review-maintenance", daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop the thread and close the store's connections (a worker's exit, or a test's end)."""
        self.stop.set()
        self.wake.set()
        if self.thread is not None:
            self.thread.join(5)
        self.queue.engine.dispose()

    def refresh_gauges(self) -> None:
        try:
            depth, oldest = self.queue.depth()
        except SQLAlchemyError as exc:
            log.warning("review store failed while counting: %s", str(exc)[:300])
            metrics.REVIEW_STORE_ERRORS.labels("depth").inc()
            return
        metrics.REVIEW_PENDING.set(depth)
        metrics.REVIEW_OLDEST_SECONDS.set(oldest or 0)

    def run(self) -> None:
        gauges_at = prune_at = 0.0
        while not self.stop.is_set():
            now = time.monotonic()
            try:
                if self.sender is not None:
                    self.sender.deliver_due()
                if now >= gauges_at:
                    self.refresh_gauges()
                    gauges_at = now + self.GAUGES_EVERY
                if now >= prune_at:
                    pruned = self.queue.prune(self.retention_days)
                    if pruned:
                        log.info("dropped %d thumbnails decided over %d days ago", pruned, self.retention_days)
                    prune_at = now + self.PRUNE_EVERY
            except Exception:  # noqa: BLE001 - a store that is down for a while must not end the thread
                log.exception("review maintenance pass failed")
                metrics.REVIEW_STORE_ERRORS.labels("maintenance").inc()
            self.wake.wait(1.0)
            self.wake.clear()


def install(app: Flask, settings: Settings, service: PredictionService, *, background: bool = True) -> ReviewQueue:
    """The review queue in this worker: engine, schema check, hook, API, maintenance thread."""
    from nsfw.review import pages, views

    engine = make_engine(settings.database)
    try:
        current, head = revisions(engine)
    except SQLAlchemyError as exc:
        engine.dispose()
        raise ConfigError(f"NSFW_DATABASE_URL: the review store does not answer ({type(exc).__name__})") from None
    if current != head:
        engine.dispose()
        raise ConfigError(
            f"the review store is at revision {current}, not {head}: run `python -m nsfw db upgrade` "
            "(gunicorn.conf.py runs it at each start)"
        )
    queue = ReviewQueue(engine, lease=settings.review_lease, webhooks=bool(settings.review_webhook_url))
    service.review_hook = Reviewer(queue, settings.review_audit_rate)
    sender = None
    if settings.review_webhook_url:
        sender = Sender(engine, settings.review_webhook_url, settings.review_webhook_secret, _poster(service.fetcher))
    maintenance = Maintenance(queue, sender, settings.review_retention_days)
    app.extensions["nsfw.review"] = maintenance
    app.register_blueprint(views.bp)
    pages.install(app, settings)
    if background:
        maintenance.start()
    return queue


def _poster(fetcher: Fetcher) -> Callable[[str, bytes, dict[str, str], float], int]:
    def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
        return fetcher.deliver(url, body, headers=headers, timeout=timeout)

    return post
