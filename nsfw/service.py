"""The pipeline: fetch -> decode -> preprocess -> predict -> scores. No Flask."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import IO, Any

import numpy as np

from nsfw.config import Settings
from nsfw.errors import ImageTooLarge, InvalidImage, NsfwError, Overloaded, Unavailable, UpstreamTimeout
from nsfw.fetch import Fetcher, FetchPolicy, Resolver, system_resolver
from nsfw.imaging import harden_pillow, preprocess_frames
from nsfw.model import Classifier
from nsfw.model.specs import ModelSpec
from nsfw.policy import ADULT_CLASSES, Policy, Verdict
from nsfw.tiers import SecondTier


def fetch_policy(settings: Settings) -> FetchPolicy:
    return FetchPolicy(
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        download_timeout=settings.download_timeout,
        max_bytes=settings.max_bytes,
        max_redirects=settings.max_redirects,
        max_url_length=settings.max_url_length,
        allowed_ports=settings.allowed_ports,
        allowed_networks=settings.allowed_networks,
    )


log = logging.getLogger(__name__)


def build_service(settings: Settings, resolver: Resolver = system_resolver) -> PredictionService:
    """The service for one process (a gunicorn worker, or the command line): Pillow's process-wide
    limits set, fetcher built; the caller sets the classifier."""
    harden_pillow(max_pixels=settings.max_pixels, max_metadata_bytes=settings.max_metadata_bytes)
    return PredictionService(settings, Fetcher(fetch_policy(settings), resolver))


@dataclass(frozen=True)
class BatchItem:
    """One item of a batch: a url, an image, or the error that reading the item already met."""

    url: str | None = None
    image: IO[bytes] | None = None
    error: NsfwError | None = None


@dataclass(frozen=True)
class Prediction:
    """One image's answer: the flat scores (of its least safe frame), and what led to them."""

    scores: dict[str, float]
    model: ModelSpec
    backend: str
    # Per classified frame: its index in the animation and its scores; `chosen` is the answer's.
    frame_indices: list[int]
    frame_scores: list[dict[str, float]]
    chosen: int
    frame_count: int
    seconds: float
    # Filled when a verdict was asked for: the verdict, the tier that decided it (1 or 2), and what
    # the second tier said ({"nsfw": p} or {"error": ...}) when it was asked.
    verdict: Verdict | None = None
    tier: int = 1
    second_tier: dict[str, Any] | None = None


def worst_frame(classes: tuple[str, ...], probabilities: np.ndarray) -> int:
    """Index of the row with the highest hentai + porn + sexy, the verdict's adult sum (the first, on
    a tie): an animation scores as its least safe frame, so a harmless first frame cannot hide the rest."""
    unsafe = [classes.index(name) for name in ADULT_CLASSES if name in classes]
    return int(np.argmax(probabilities[:, unsafe].sum(axis=1)))


class PredictionService:
    """Everything a request needs, set up once per worker by create_app."""

    def __init__(self, settings: Settings, fetcher: Fetcher) -> None:
        self.settings = settings
        self.fetcher = fetcher
        self._classifier: Classifier | None = None
        self._sha256: str | None = None
        # Admission: at most max_in_flight predictions per worker; the rest are refused at once.
        self._slots = threading.BoundedSemaphore(settings.max_in_flight)
        # Decoding and inference run one at a time per worker: on one vCPU more would only
        # interleave, and it bounds memory to one decoded image per worker. Downloads overlap.
        self._compute = threading.Lock()
        # Batch items overlap their downloads here, a bounded pool per worker (not per request).
        self._batch_pool = ThreadPoolExecutor(settings.batch_concurrency, thread_name_prefix="batch")
        self.second_tier = (
            SecondTier(
                settings.second_tier_url,
                settings.second_tier_timeout,
                settings.second_tier_adult_threshold,
                settings.second_tier_safe_threshold,
            )
            if settings.second_tier_url
            else None
        )

    def set_classifier(self, classifier: Classifier) -> None:
        """Called once, when the model is loaded and warmed (maybe from the loader thread)."""
        self._classifier = classifier

    @property
    def ready(self) -> bool:
        return self._classifier is not None

    @property
    def classifier(self) -> Classifier:
        if self._classifier is None:
            raise Unavailable("model still loading")
        return self._classifier

    def artifact_sha256(self) -> str:
        """sha256 of the file the runtime loaded (the .tflite for LiteRT, the .keras for TensorFlow)."""
        if self._sha256 is None:
            spec = self.classifier.spec
            path = spec.keras_path(self.settings.models_dir)
            if self.classifier.backend == "litert":
                path = spec.tflite_path(self.settings.models_dir)
            self._sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        return self._sha256

    def scores(self, probabilities: np.ndarray) -> dict[str, float]:
        """One row of model output -> the flat {class: probability} dict of NSFW-FLASK."""
        return {name: float(p) for name, p in zip(self.classifier.spec.classes, probabilities, strict=True)}

    @contextmanager
    def _admitted(self) -> Iterator[Classifier]:
        """A prediction slot of this worker, or a fast 503; 503 too before the model is ready."""
        classifier = self.classifier
        if not self._slots.acquire(blocking=False):
            raise Overloaded(f"{self.settings.max_in_flight} predictions in flight")
        try:
            yield classifier
        finally:
            self._slots.release()

    def _classify(
        self, classifier: Classifier, body: IO[bytes], resize: str | None, policy: Policy | None = None
    ) -> Prediction:
        started = time.perf_counter()
        with self._compute:
            tensors, frames = preprocess_frames(
                body,
                size=classifier.spec.input_size,
                mode=resize or self.settings.resize,
                max_pixels=self.settings.max_pixels,
                max_frames=self.settings.max_frames,
            )
            probabilities = classifier.predict(tensors)
        per_frame = [self.scores(row) for row in probabilities]
        chosen = worst_frame(classifier.spec.classes, probabilities)
        prediction = Prediction(
            scores=per_frame[chosen],
            model=classifier.spec,
            backend=classifier.backend,
            frame_indices=frames.indices,
            frame_scores=per_frame,
            chosen=chosen,
            frame_count=frames.total,
            seconds=time.perf_counter() - started,
        )
        return self._decide(prediction, body, policy) if policy is not None else prediction

    def _decide(self, prediction: Prediction, body: IO[bytes], policy: Policy) -> Prediction:
        """The first tier's verdict; when it is unknown and a second tier is set, the second's."""
        verdict = policy.decide(prediction.scores)
        if verdict.label != "unknown" or self.second_tier is None:
            return replace(prediction, verdict=verdict)
        body.seek(0)
        try:
            p, second = self.second_tier.ask(self.fetcher, body.read())
        except NsfwError as exc:
            # The second opinion failed: the first tier's unknown stands (human review), and says why.
            log.info("second tier -> %s: %s", exc.code, exc.detail)
            return replace(prediction, verdict=verdict, second_tier=exc.to_dict())
        return replace(prediction, verdict=second, tier=2, second_tier={"nsfw": p})

    def predict_url(self, url: str, *, resize: str | None = None, policy: Policy | None = None) -> Prediction:
        """Fetch url and classify the image (with a verdict when a policy is given); raises NsfwError
        subclasses on every failure."""
        with self._admitted() as classifier, self.fetcher.fetch(url) as body:
            return self._classify(classifier, body, resize, policy)

    def predict_image(self, body: IO[bytes], *, resize: str | None = None, policy: Policy | None = None) -> Prediction:
        """Classify image bytes the client sent (upload, raw body, base64) under the same limits."""
        with self._admitted() as classifier:
            return self._classify_upload(classifier, body, resize, policy)

    def _classify_upload(
        self, classifier: Classifier, body: IO[bytes], resize: str | None, policy: Policy | None = None
    ) -> Prediction:
        body.seek(0, 2)
        size = body.tell()
        if size > self.settings.max_bytes:
            raise ImageTooLarge(f"upload of {size} bytes")
        if size == 0:
            raise InvalidImage("empty upload")
        body.seek(0)
        return self._classify(classifier, body, resize, policy)

    def predict_batch(
        self, items: Sequence[BatchItem], *, resize: str | None = None, policy: Policy | None = None
    ) -> list[Prediction | NsfwError]:
        """Every item's prediction or its own error, in order. One admission slot for the batch;
        downloads overlap (NSFW_BATCH_CONCURRENCY) under one deadline (NSFW_BATCH_TIMEOUT)."""
        with self._admitted() as classifier:
            deadline = time.monotonic() + self.settings.batch_timeout

            def one(item: BatchItem) -> Prediction | NsfwError:
                try:
                    if item.error is not None:
                        raise item.error
                    if item.image is not None:
                        return self._classify_upload(classifier, item.image, resize, policy)
                    left = deadline - time.monotonic()
                    if left <= 0 or item.url is None:
                        raise UpstreamTimeout("batch deadline passed before this item started")
                    with self.fetcher.fetch(item.url, timeout=left) as body:
                        return self._classify(classifier, body, resize, policy)
                except NsfwError as exc:
                    log.info("batch item -> %d %s: %s", exc.status, exc.code, exc.detail)
                    return exc
                except Exception as exc:  # noqa: BLE001 - one item's bug must not sink the batch
                    log.exception("batch item failed unexpectedly")
                    return NsfwError(repr(exc))

            return list(self._batch_pool.map(one, items))
