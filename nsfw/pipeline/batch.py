"""POST /predict/batch's scheduler: a batch's items, each classified exactly as a single request would
be, their downloads overlapped on threads of the batch's own under one deadline."""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import IO

from nsfw.errors import DeadlineExceeded, NsfwError, UpstreamTimeout
from nsfw.pipeline.service import Ask, Prediction, PredictionService

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchItem:
    """One item of a batch: a url, an image, or the error that reading the item already met."""

    url: str | None = None
    image: IO[bytes] | None = None
    error: NsfwError | None = None
    ref: str | None = None  # the review queue's client reference for this item (else the request's)


def predict_batch(service: PredictionService, items: Sequence[BatchItem], ask: Ask) -> list[Prediction | NsfwError]:
    """Every item's prediction or its own error, in order. Items overlap their downloads
    (NSFW_BATCH_CONCURRENCY at most, on threads of this batch's own) under one deadline
    (NSFW_BATCH_TIMEOUT) that covers fetching, decoding and inference of every item, base64 ones
    too, and wait for their caller's download share rather than being refused: a batch of slow
    URLs holds that share, never other callers' slots or batches.

    No amplification: a URL named several times is fetched and classified once (every item
    naming it gets that answer), the batch holds at most NSFW_MAX_HOST_CONNECTIONS connections to
    one host at once, and its downloads together stop at NSFW_MAX_REQUEST_DOWNLOAD_BYTES."""
    settings = service.settings
    classifier = service.models.named(ask.model)
    deadline = time.monotonic() + settings.batch_timeout
    share = service.flow.request_share(single=False)
    review = ask.review

    def one(item: BatchItem) -> Prediction | NsfwError:
        try:
            if item.error is not None:
                raise item.error
            if deadline - time.monotonic() <= 0:
                raise (UpstreamTimeout if item.url else DeadlineExceeded)("batch deadline passed before this item")
            context = None if review is None else replace(review, ref=item.ref or review.ref, source_url=item.url)
            asked = replace(ask, review=context)
            if item.image is not None:
                return service.classify_upload(classifier, item.image, asked, deadline)
            assert item.url is not None
            left = deadline - time.monotonic()
            with service.fetch(item.url, ask.caller, share, timeout=left, wait=left) as body:
                return service.classify(classifier, body, asked, deadline)
        except NsfwError as exc:
            log.info("batch item -> %d %s: %s", exc.status, exc.code, exc.detail)
            return exc
        except Exception as exc:  # noqa: BLE001 - one item's bug must not sink the batch
            log.exception("batch item failed unexpectedly")
            return NsfwError(repr(exc))

    # One task per distinct URL; images and malformed items are each their own.
    first_of: dict[tuple[str, str | None], int] = {}
    tasks: list[BatchItem] = []
    task_of: list[int] = []
    for item in items:
        if item.url is not None and item.error is None and item.image is None:
            # The same URL with another review ref is its own task, so that its ref joins the item.
            if (item.url, item.ref) not in first_of:
                first_of[item.url, item.ref] = len(tasks)
                tasks.append(item)
            task_of.append(first_of[item.url, item.ref])
        else:
            task_of.append(len(tasks))
            tasks.append(item)
    if len(tasks) < len(items):
        log.info("batch of %d items: %d distinct tasks", len(items), len(tasks))
    lanes = max(1, min(settings.batch_concurrency, settings.max_in_flight, len(tasks)))
    with ThreadPoolExecutor(lanes, thread_name_prefix="batch") as pool:
        # Each item in a copy of this request's context: its log lines name the request's id.
        futures = [pool.submit(contextvars.copy_context().run, one, task) for task in tasks]
        results = [future.result() for future in futures]
    return [results[task] for task in task_of]
