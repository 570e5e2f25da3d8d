"""The review queue (NSFW_REVIEW=true): unknown verdicts wait for a human, decisions reach the client
app as signed webhooks, and are remembered as verdicts for the same bytes.

- tables.py: the tables (the engine, migrations and maintenance thread are the store's, nsfw/store/);
  queue.py: the rules; webhooks.py: the outbox's delivery; views.py: the API (the review scope).
- `Reviewer` is the one function the prediction path calls (pipeline.service.ReviewHook), for detailed
  answers only: a remembered decision becomes the verdict (tier "human"), an unknown (or an audit
  sample) is queued, and a failure of its own (the store, a full queue, the pictures) changes nothing
  but the answer's `review`, which says so.
- `install` wires it into the app in each worker: one engine per process, made after the fork; the
  schema must be at the migrations' head (gunicorn.conf.py runs `python -m nsfw db upgrade` once per
  start, before any worker), and the store's maintenance thread runs the review's duties
  (ReviewDuties): it sends the webhooks, refreshes the queue's gauges, checkpoints SQLite's WAL and
  applies retention.
"""

from __future__ import annotations

import contextvars
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from flask import Flask
from sqlalchemy.exc import SQLAlchemyError

from nsfw import metrics
from nsfw.breaker import Breaker
from nsfw.config import Settings
from nsfw.errors import NsfwError, ReviewProblem, ReviewRefsFull, ReviewStoreFailed
from nsfw.fetch import Fetcher
from nsfw.matching.banks import Banks, Matcher
from nsfw.matching.index import Found, Index
from nsfw.matching.store import FOLLOW_EVERY, Follower
from nsfw.model import embedding_bytes
from nsfw.model.adapter import Promoted
from nsfw.pipeline.service import ImageBytes, Prediction, PredictionService, ReviewContext
from nsfw.pipeline.verdict import Verdict
from nsfw.review.adapters import REFRESH_EVERY as ADAPTER_REFRESH_EVERY
from nsfw.review.adapters import Adapters, Trainer
from nsfw.review.adapters import Follower as AdapterFollower
from nsfw.review.queue import Candidate, Pictures, ReviewQueue
from nsfw.review.webhooks import Sender
from nsfw.store.engine import checkpoint
from nsfw.store.shared import Store
from nsfw.web import state

log = logging.getLogger(__name__)
T = TypeVar("T")


class StoreGate:
    """The prediction path's bound on the store: each call runs on one of `threads` threads of its own
    and is waited for `timeout` seconds at most, the wait for a free thread included; past it (a store
    that hangs: PostgreSQL frozen, a lock never granted), ReviewStoreFailed. A call is not started
    when its time is up before a thread is free. Threads stuck on a hung store stay stuck, so a hung
    store costs at most `threads` threads; and after BREAKER_FAILURES timeouts in a row the store is
    not asked for BREAKER_SECONDS (then once), so a detailed prediction is answered at once meanwhile
    instead of holding its admission slot for the timeout. A call given up on may still finish
    later (an item queued after its answer said it was not: it is then reviewed as any other)."""

    BREAKER_FAILURES = 3
    BREAKER_SECONDS = 5.0

    def __init__(self, timeout: float, threads: int = 8) -> None:
        self.timeout = timeout
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="review-store")
        self._free = threading.BoundedSemaphore(threads)
        self.breaker = Breaker(self.BREAKER_FAILURES, self.BREAKER_SECONDS)

    def run(self, call: Callable[[], T]) -> T:
        if not self.breaker.allow():
            raise ReviewStoreFailed("the store timed out repeatedly; not asked for a few seconds")
        ends = time.monotonic() + self.timeout
        if not self._free.acquire(timeout=self.timeout):
            self._timed_out()
            raise ReviewStoreFailed("every store call of this worker is still waiting for the store")
        left = ends - time.monotonic()
        if left <= 0:
            self._free.release()
            self._timed_out()
            raise ReviewStoreFailed("no time left for the store")
        try:
            future = self._pool.submit(contextvars.copy_context().run, call)
        except BaseException:
            self._free.release()
            raise
        future.add_done_callback(lambda _: self._free.release())
        try:
            result = future.result(left)
        except FutureTimeout:
            self._timed_out()
            raise ReviewStoreFailed(f"the store did not answer in {self.timeout} s") from None
        self.breaker.succeeded()
        return result

    def _timed_out(self) -> None:
        metrics.REVIEW_STORE_ERRORS.labels("timeout").inc()
        self.breaker.failed()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class Reviewer:
    """pipeline.service.ReviewHook: what the queue makes of a decided, detailed prediction. Every failure of
    its own (the store, a full queue, the pictures: the model busy, the deadline) becomes the answer's
    `review.error`; the prediction stands and answers 200, within NSFW_REVIEW_STORE_TIMEOUT of the
    store's time whatever the store does (StoreGate)."""

    def __init__(
        self,
        queue: ReviewQueue,
        audit_rate: float,
        gate: StoreGate,
        sample: Callable[[], float] = random.random,
        index: Index | None = None,
    ) -> None:
        self.queue = queue
        self.audit_rate = audit_rate
        self.gate = gate
        self.sample = sample
        self.index = index  # the near-duplicate matcher's (None: exact bytes only)

    def __call__(
        self, prediction: Prediction, image: ImageBytes, context: ReviewContext, pictures: Pictures
    ) -> Prediction:
        assert prediction.verdict is not None
        try:
            return self._review(prediction, image, context, pictures)
        except ReviewProblem as problem:
            error: ReviewProblem = problem
        except NsfwError as exc:  # the pictures could not be made in time (the model busy, the deadline)
            error = ReviewProblem(exc.detail, code=exc.code, message=f"The image was not queued: {exc.message}")
        except (SQLAlchemyError, OSError) as exc:
            metrics.REVIEW_STORE_ERRORS.labels("enqueue").inc()
            error = ReviewStoreFailed(f"{type(exc).__name__}: {str(exc)[:300]}")
        except Exception as exc:  # noqa: BLE001 - a bug here must not fail a prediction either
            log.exception("review hook failed")
            error = ReviewProblem(repr(exc))
        log.warning("review: %s: %s", error.code, error.detail)
        metrics.REVIEW_NOT_QUEUED.labels(error.code).inc()
        return replace(prediction, review={"error": error.to_dict()})

    def _review(
        self, prediction: Prediction, image: ImageBytes, context: ReviewContext, pictures: Pictures
    ) -> Prediction:
        assert prediction.verdict is not None
        sha256 = image.sha256  # the pipeline's, computed once
        decision = self.gate.run(lambda: self.queue.remembered(sha256, context.key_name))
        if decision is not None:
            metrics.REVIEW_REMEMBERED.inc()
            review: dict[str, Any] = {"status": "decided"}
            if decision.review_id is not None:  # only to a key that had a part in the item
                review = {"id": decision.review_id} | review
            return replace(prediction, verdict=Verdict(decision.label, decision.reason), tier="human", review=review)
        found = Found()
        if self.index is not None and prediction.hashes:
            found = self.index.lookup(prediction.hashes)  # in memory: no store call, no lock but the index's
        if found.human is not None:
            near = found.human
            decision = self.gate.run(lambda: self.queue.decision_of(near.owner, context.key_name))
            if decision is not None:  # (None: undone a moment ago, and the index not yet told)
                metrics.MATCHES.labels("human", decision.label).inc()
                reason = f"near-duplicate of a human decision, PDQ distance {near.distance}"
                match: dict[str, Any] = {"distance": near.distance}
                review = {"status": "decided"}
                if decision.review_id is not None:  # only to a key that had a part in the item
                    match["review"] = review["id"] = decision.review_id
                return replace(
                    prediction, verdict=Verdict(decision.label, reason), tier="human", review=review, match=match
                )
        if found.bank_adult is not None:
            banked = found.bank_adult
            metrics.MATCHES.labels("bank", "adult").inc()
            reason = f"matches bank {banked.bank}, PDQ distance {banked.distance}"
            return replace(
                prediction,
                verdict=Verdict("adult", reason),
                tier="bank",
                match={"distance": banked.distance, "bank": banked.bank},
            )
        if found.bank_safe is not None and prediction.verdict.label == "adult":
            # A negative bank never makes anything safe: an automatic adult verdict goes to a human.
            banked = found.bank_safe
            metrics.MATCHES.labels("bank", "unknown").inc()
            reason = (
                f"{prediction.verdict.reason}, but it matches safe bank {banked.bank} "
                f"(PDQ distance {banked.distance}): for human review"
            )
            prediction = replace(
                prediction,
                verdict=Verdict("unknown", reason),
                match={"distance": banked.distance, "bank": banked.bank},
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
            frame_count=prediction.frame_count,
            frames=prediction.classified(),
            chosen_frame=prediction.frame_indices[prediction.chosen],
            hashes=prediction.hashes or (),
            embedding=embedding_bytes(prediction.embedding),
        )
        queued = self.queue.enqueue(candidate, pictures, self.gate.run)
        metrics.REVIEW_QUEUED.labels(kind).inc()
        review = {"id": queued.review_id, "status": "pending"} | ({"kind": "audit"} if kind == "audit" else {})
        if not queued.ref_kept:
            metrics.REVIEW_NOT_QUEUED.labels(ReviewRefsFull.code).inc()
            review["error"] = ReviewRefsFull().to_dict()
        return replace(prediction, review=review)


@dataclass(frozen=True)
class Retention:
    """How long what the store keeps is kept (NSFW_REVIEW_*_DAYS; queue.ReviewQueue.retain)."""

    days: int = 30
    pending_days: int = 30
    audit_days: int = 365


class ReviewDuties:
    """The review feature in a worker (app.extensions["nsfw.review"]): its queue, its webhook sender,
    and its duties on the store's maintenance thread, each on its own schedule and each failing alone
    (nsfw/store/maintenance.py): webhooks at every pass (at once when woken), the queue's gauges every
    15 s, SQLite's WAL checkpoint every minute, retention every hour."""

    GAUGES_EVERY = 15.0
    CHECKPOINT_EVERY = 60.0
    RETAIN_EVERY = 3600.0

    def __init__(
        self, queue: ReviewQueue, sender: Sender | None, retention: Retention, gate: StoreGate, store: Store
    ) -> None:
        self.queue = queue
        self.gate = gate
        self.sender = sender
        self.retention = retention
        self.store = store
        self.maintenance = maintenance = store.maintenance
        if sender is not None:
            maintenance.register("webhooks", 0.0, sender.deliver_due)
        maintenance.register("gauges", self.GAUGES_EVERY, self.refresh_gauges)
        maintenance.register("checkpoint", self.CHECKPOINT_EVERY, self.checkpoint)
        maintenance.register("retention", self.RETAIN_EVERY, self.retain)
        if sender is not None:
            maintenance.on_close(sender.flush)
        maintenance.on_close(gate.close)

    @property
    def wake(self) -> threading.Event:
        """Set: the maintenance thread's next pass now (a decision's webhook goes out at once)."""
        return self.maintenance.wake

    @property
    def thread(self) -> threading.Thread | None:
        return self.maintenance.thread

    def close(self) -> None:
        """Close the store this feature is on (a test's end; a worker's exit closes the store): the
        thread joined, then the sender's owed marks, the gate, then the engine."""
        self.store.close()

    def refresh_gauges(self) -> None:
        depth, oldest = self.queue.depth()
        metrics.REVIEW_PENDING.set(depth)
        metrics.REVIEW_OLDEST_SECONDS.set(oldest or 0)

    def retain(self) -> None:
        done = self.queue.retain(
            retention_days=self.retention.days,
            pending_days=self.retention.pending_days,
            audit_days=self.retention.audit_days,
        )
        for kind, count in done.items():
            if count:
                metrics.REVIEW_RETAINED.labels(kind).inc(count)
        if any(done.values()):
            log.info("review retention: %s", ", ".join(f"{count} {kind}" for kind, count in done.items() if count))

    def checkpoint(self) -> None:
        checkpoint(self.queue.engine)


def install(app: Flask, settings: Settings, service: PredictionService, store: Store) -> ReviewQueue:
    """The review queue in this worker, on the worker's store (nsfw/store/shared.py): the hook, the
    API and the pages, and its duties on the store's maintenance thread (started by create_app)."""
    from nsfw.review import pages, views

    engine = store.engine
    queue = ReviewQueue(
        engine,
        lease=settings.review_lease,
        webhooks=bool(settings.review_webhook_url),
        max_pending_per_key=settings.review_max_pending_per_key,
        max_refs=settings.review_max_refs,
        match_distance=settings.match_distance,
        match_min_quality=settings.match_min_quality,
        match=settings.match,
        reasons=settings.review_reasons,
    )
    gate = StoreGate(settings.review_store_timeout)
    index = None
    if settings.match:
        from nsfw.matching import views as bank_views

        index = Index(settings.match_min_quality)
        follower = Follower(engine, index, settings.match_distance)
        follower.load()  # at boot: a worker serves with every decision and bank it will match
        store.maintenance.register("match-index", FOLLOW_EVERY, _counting(follower.follow, "follow"))
        store.maintenance.register("match-log", ReviewDuties.RETAIN_EVERY, _counting(follower.prune, "prune"))
        service.hashing = True
        app.extensions[state.MATCHER] = Matcher(
            index, follower, Banks(engine, settings.match_distance), queue.decided_near
        )
        app.register_blueprint(bank_views.bp)
    service.review_hook = Reviewer(queue, settings.review_audit_rate, gate=gate, index=index)
    adapters = Adapters.of(engine, settings)
    promoted = Promoted()
    adapter_follower = AdapterFollower(adapters, promoted)
    try:
        adapter_follower.refresh()  # at boot: a worker serves the promoted adapters from its first request
    except Exception as exc:  # noqa: BLE001 - a store down (or a bug) costs the tier, never the worker's boot
        log.warning("adapters not read at boot (the maintenance thread tries again): %r", exc)
    store.maintenance.register("adapters", ADAPTER_REFRESH_EVERY, adapter_follower.refresh)
    service.adapters = promoted
    app.extensions[state.ADAPTERS] = adapters
    app.extensions[state.ADAPTER_TRAINER] = Trainer(adapters)
    sender = None
    if settings.review_webhook_url:
        sender = Sender(
            engine,
            settings.review_webhook_url,
            settings.review_webhook_secret,
            _poster(service.fetcher),
            timeout=settings.review_webhook_timeout,
        )
    retention = Retention(settings.review_retention_days, settings.review_pending_days, settings.review_audit_days)
    app.extensions[state.REVIEW] = ReviewDuties(queue, sender, retention, gate, store)
    app.register_blueprint(views.bp)
    pages.install(app, settings)
    return queue


def _counting(duty: Callable[[], object], operation: str) -> Callable[[], None]:
    """A matcher's duty whose failure is counted (the maintenance thread logs it and goes on)."""

    def run() -> None:
        try:
            duty()
        except Exception:
            metrics.MATCH_ERRORS.labels(operation).inc()
            raise

    return run


def _poster(fetcher: Fetcher) -> Callable[[str, bytes, dict[str, str], float], int]:
    def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
        return fetcher.deliver(url, body, headers=headers, timeout=timeout)

    return post
