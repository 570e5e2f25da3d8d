"""The pipeline: fetch -> decode -> preprocess -> predict -> scores. No Flask."""

from __future__ import annotations

import contextvars
import io
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import numpy as np

from nsfw import metrics
from nsfw.cache import Entry as CacheEntry
from nsfw.cache import ResultCache, sha256_of
from nsfw.cache import key as result_key
from nsfw.config import Settings
from nsfw.errors import (
    DeadlineExceeded,
    ImageTooLarge,
    InvalidImage,
    ModelNotServed,
    NsfwError,
    Overloaded,
    Unavailable,
    UnknownModel,
    UpstreamTimeout,
)
from nsfw.fetch import Fetcher, FetchPolicy, RequestShare, Resolver, system_resolver
from nsfw.imaging import frame_thumbnails, harden_pillow, preprocess_frames
from nsfw.imaging.budget import Limits
from nsfw.model import Classifier, sha256_file
from nsfw.model.specs import MODELS, NSFWJS, ModelSpec
from nsfw.policy import Policy, Verdict
from nsfw.slots import FairSlots, ModelLock
from nsfw.tiers import HttpSecondTier, SecondTierPolicy


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
        max_lookups=settings.max_downloads,
        max_lookups_per_caller=settings.max_in_flight,
    )


def decode_limits(settings: Settings) -> Limits:
    """The limits every decode runs under (nsfw/imaging/budget.py)."""
    return Limits(settings.max_pixels, settings.max_decode_bytes, settings.max_jpeg_scans, settings.max_decoded_frames)


log = logging.getLogger(__name__)

# Whose request this is (the API key's name; "-" without keys): results and downloads in progress are
# shared within one tenant only, since a result found in the cache (it answers at once) or a download
# someone else has in flight would tell one key what another sent. Set by the API for each request
# (api._tenant), read where they are shared; a batch's threads run in a copy of the request's context.
TENANT: contextvars.ContextVar[str] = contextvars.ContextVar("nsfw_tenant", default="-")


def build_service(settings: Settings, resolver: Resolver = system_resolver) -> PredictionService:
    """The service for one process (a gunicorn worker, or the command line): Pillow's process-wide
    limits set, fetcher built; the caller sets the classifier."""
    harden_pillow(max_pixels=settings.max_pixels, max_metadata_bytes=settings.max_metadata_bytes)
    service = PredictionService(settings, Fetcher(fetch_policy(settings), resolver))
    if settings.cache_size or settings.redis_url:
        service.cache = ResultCache(settings.cache_size, settings.redis_url, settings.cache_ttl)
    return service


@dataclass(frozen=True)
class BatchItem:
    """One item of a batch: a url, an image, or the error that reading the item already met."""

    url: str | None = None
    image: IO[bytes] | None = None
    error: NsfwError | None = None
    ref: str | None = None  # the review queue's client reference for this item (else the request's)


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
    # the second tier said ({"nsfw": p}, with "model" for a model tier, or {"error": ...}) when asked.
    verdict: Verdict | None = None
    tier: int | str = 1  # 1, 2, or "human" (a remembered review decision)
    second_tier: dict[str, Any] | None = None
    # With the result cache on: "hit" (no decoding, no inference) or "miss".
    cache: str | None = None
    # With the review queue on (detailed answers only): {"id", "status"} of the image's item, or
    # {"error": ...} when the store failed (the prediction stands).
    review: dict[str, Any] | None = None


@dataclass(frozen=True)
class ReviewContext:
    """What a detailed request tells the review queue about its image."""

    key_name: str
    ref: str | None = None
    source_url: str | None = None


# The review queue's one entry point, wired in by create_app (nsfw/review/): the decided prediction,
# its image's bytes, the request's context and a way to make the pictures of the classified frames
# (by frame index) -> the prediction as answered (a remembered human verdict, or the item it joined,
# or why it was not queued). Called off the model's lock. The service knows nothing else of it.
ReviewHook = Callable[[Prediction, IO[bytes], ReviewContext, Callable[[], Mapping[int, bytes] | None]], Prediction]


def worst_frame(adult_classes: tuple[str, ...], classes: tuple[str, ...], probabilities: np.ndarray) -> int:
    """Index of the row with the highest sum of the model's adult classes (hentai + porn + sexy for
    GantMan's), the verdict's adult sum (the first, on a tie): an animation scores as its least safe
    frame, so a harmless first frame cannot hide the rest."""
    unsafe = [classes.index(name) for name in adult_classes]
    return int(np.argmax(probabilities[:, unsafe].sum(axis=1)))


class _Flight:
    """One download that other requests for the same URL wait for (PredictionService._fetch)."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.followers = 0
        self.data: bytes | None = None
        self.error: NsfwError | None = None

    def land(self, body: IO[bytes]) -> None:
        if self.followers:  # a copy of the bytes only when someone waits for them
            body.seek(0)
            self.data = body.read()
            body.seek(0)
        self.done.set()

    def fail(self, error: NsfwError) -> None:
        self.error = error
        self.done.set()

    def join(self, timeout: float) -> IO[bytes]:
        if not self.done.wait(timeout):
            raise UpstreamTimeout("waited for the same URL's download in progress")
        if self.error is not None:
            raise type(self.error)(self.error.detail)
        assert self.data is not None
        return io.BytesIO(self.data)


def host_of(url: str) -> str:
    """The host a URL names (lower case; "" when it names none): what a caller's downloads are shared by."""
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


@contextmanager
def _holding(lock: ModelLock | threading.BoundedSemaphore, timeout: float, refuse: NsfwError) -> Iterator[None]:
    """Hold lock for the block, waiting at most timeout seconds for it; raise `refuse` otherwise."""
    if not lock.acquire(timeout=timeout):
        raise refuse
    try:
        yield
    finally:
        lock.release()


class PredictionService:
    """Everything a request needs, set up once per worker by create_app."""

    def __init__(self, settings: Settings, fetcher: Fetcher) -> None:
        self.settings = settings
        self.fetcher = fetcher
        self._limits = decode_limits(settings)
        # Served models by name, the default first; empty until loaded.
        self._classifiers: dict[str, Classifier] = {}
        self._sha256: dict[Path, str] = {}
        # Downloads: NSFW_MAX_DOWNLOADS per worker, NSFW_MAX_IN_FLIGHT of them per caller; past either,
        # a spare slot (one per caller, a quarter of the worker's) for an image host that holds none,
        # so that a caller's slow upstream host leaves its other hosts room. Waiting on an upstream
        # never holds the model: a slow one costs its caller a download slot, nothing more.
        self._downloads = FairSlots(
            settings.max_downloads,
            settings.max_in_flight,
            spare_per_caller=1,
            spare=max(1, settings.max_downloads // 4),
        )
        # Decoding and inference run one at a time per worker: on one vCPU more would only
        # interleave, and it bounds memory to one decoded image per worker. A request waits for it
        # (NSFW_COMPUTE_WAIT) rather than failing, so a burst costs latency, not errors. Nothing that
        # may wait for it, and no network call, runs while holding it (slots.off_model).
        self._compute = ModelLock()
        # Request bodies parsed at once (JSON with base64 takes ~3x its size while parsed).
        self._body_decodes = threading.BoundedSemaphore(settings.max_body_decodes)
        self.second_tier_policy = SecondTierPolicy(
            settings.second_tier_adult_threshold, settings.second_tier_safe_threshold
        )
        self.second_tier_http = (
            HttpSecondTier(settings.second_tier_url, settings.second_tier_timeout) if settings.second_tier_url else None
        )
        # The review queue's entry point, when NSFW_REVIEW is on (create_app wires it).
        self.review_hook: ReviewHook | None = None
        # The result cache (NSFW_CACHE_SIZE, NSFW_REDIS_URL); None when off.
        self.cache: ResultCache | None = None
        # Downloads in progress by tenant and URL, for the requests of that tenant for the URL meanwhile.
        self._flights: dict[tuple[str, str], _Flight] = {}
        self._flights_lock = threading.Lock()

    def set_classifiers(self, classifiers: Mapping[str, Classifier]) -> None:
        """Called once, when the models are loaded and warmed (maybe from the loader thread)."""
        self._classifiers = dict(classifiers)
        for classifier in self._classifiers.values():
            spec = classifier.spec
            metrics.MODEL_INFO.labels(spec.name, spec.version, self.artifact_sha256(classifier)).set(1)

    def set_classifier(self, classifier: Classifier) -> None:
        self.set_classifiers({classifier.spec.name: classifier})

    @property
    def ready(self) -> bool:
        return bool(self._classifiers)

    @property
    def classifiers(self) -> dict[str, Classifier]:
        if not self._classifiers:
            raise Unavailable("model still loading")
        return self._classifiers

    @property
    def classifier(self) -> Classifier:
        """The default model's."""
        return next(iter(self.classifiers.values()))

    def classifier_for(self, name: str | None) -> Classifier:
        """The served model called name (the default for None); 400 for any other name."""
        if name is None:
            return self.classifier
        if name not in MODELS:
            raise UnknownModel(f"model={name!r}")
        classifier = self.classifiers.get(name)
        if classifier is None:
            raise ModelNotServed(f"model={name!r}; served: {', '.join(self.classifiers)}")
        return classifier

    def artifact_sha256(self, classifier: Classifier) -> str:
        """sha256 of the file the runtime loaded (.tflite, .keras, .onnx, lean .npz, saved_model.pb)."""
        return self._sha256_of(classifier.path)

    def bundled_sha256(self, spec: ModelSpec) -> str | None:
        """sha256 of a model's default artifact in NSFW_MODELS_DIR (None when it brings none, or it is missing)."""
        if not spec.artifacts:
            return None
        path = spec.artifact(next(iter(spec.artifacts)), self.settings.models_dir)
        return self._sha256_of(path) if path.is_file() else None

    def _sha256_of(self, path: Path) -> str:
        if path not in self._sha256:
            self._sha256[path] = sha256_file(path)
        return self._sha256[path]

    @contextmanager
    def _downloading(self, caller: str, host: str, wait: float = 0.0) -> Iterator[None]:
        """One of this caller's download slots for host, waiting up to `wait` seconds, or a fast 503."""
        self.classifiers  # noqa: B018 - raises Unavailable while loading
        refuse = Overloaded(f"{caller}'s downloads (or its downloads from {host}) all in flight")
        with self._downloads.holding(caller, wait, refuse, group=host):
            yield

    def decoding_body(self) -> AbstractContextManager[None]:
        """Held while a request body is parsed (api.py), so that few are in memory at once."""
        refuse = Overloaded(f"{self.settings.max_body_decodes} bodies being parsed")
        return _holding(self._body_decodes, self.settings.compute_wait, refuse)

    def _computing(self, deadline: float | None) -> AbstractContextManager[None]:
        """The worker's model, after at most NSFW_COMPUTE_WAIT seconds in line (a 503); a batch's item
        waits up to the batch's deadline instead (that item's 504), its items taking turns."""
        self.classifiers  # noqa: B018 - raises Unavailable while loading
        if deadline is not None:
            left = max(0.0, deadline - time.monotonic())
            return _holding(self._compute, left, DeadlineExceeded("the deadline passed waiting for the model"))
        wait = self.settings.compute_wait
        return _holding(self._compute, wait, Overloaded(f"model busy for {wait} s"))

    def _fetch(
        self,
        url: str,
        caller: str,
        share: RequestShare,
        *,
        timeout: float | None = None,
        wait: float | None = None,
    ) -> IO[bytes]:
        """url's bytes, downloaded under one of caller's download slots (released once they are here),
        waiting for one up to `wait` seconds (NSFW_DOWNLOAD_WAIT by default), within the request's share.

        Single flight: a request for a URL this worker is downloading already waits for that download
        (under a download slot of its caller's, like a download of its own) and gets its bytes (or its
        error) instead of fetching again; with the result cache on, the model then runs once for them
        too (the lookup under the model's lock)."""
        shared = (TENANT.get(), url)
        with self._flights_lock:
            flight = self._flights.get(shared)
            leading = flight is None
            if flight is None:
                flight = self._flights[shared] = _Flight()
            else:
                flight.followers += 1
        if not leading:
            # Waiting takes one of the caller's download slots, as a download would: a flood of one
            # slow URL still meets its caller's share (fast 503s), it just fetches once.
            with self._downloading(caller, host_of(url), self.settings.download_wait if wait is None else wait):
                return flight.join(self.settings.download_timeout if timeout is None else timeout)
        try:
            body = self._download(url, caller, share, timeout=timeout, wait=wait)
        except NsfwError as exc:
            flight.fail(exc)
            raise
        finally:
            with self._flights_lock:
                del self._flights[shared]
        flight.land(body)
        return body

    def _download(
        self, url: str, caller: str, share: RequestShare, *, timeout: float | None, wait: float | None
    ) -> IO[bytes]:
        with self._downloading(caller, host_of(url), self.settings.download_wait if wait is None else wait):
            started = time.perf_counter()
            try:
                return self.fetcher.fetch(url, timeout=timeout, caller=caller, share=share)
            except NsfwError as exc:
                if exc.status in (502, 504):
                    metrics.UPSTREAM_ERRORS.labels(exc.code).inc()
                raise
            finally:
                metrics.STAGE_DURATION.labels("fetch", "-").observe(time.perf_counter() - started)

    def _request_share(self) -> RequestShare:
        """What one client request may take from image hosts, all its fetches together."""
        return RequestShare(self.settings.max_request_download_bytes, self.settings.max_host_connections)

    def _classify(
        self,
        classifier: Classifier,
        body: IO[bytes],
        resize: str | None,
        policy: Policy | None = None,
        deadline: float | None = None,
        review: ReviewContext | None = None,
    ) -> Prediction:
        """The image's scores (from the result cache, or decoded and predicted under the worker's
        model lock), then its verdict and review (`_finish`), after the lock is released: those may
        wait for the model themselves (a thumbnail, a second-tier model) or call out (a second-tier
        endpoint), and the lock is not re-entrant."""
        started = time.perf_counter()
        spec = classifier.spec
        cache_key = None
        prediction = None
        if self.cache is not None:
            mode = (resize or self.settings.resize) if spec.preprocessing == NSFWJS else "-"
            cache_key = result_key(TENANT.get(), sha256_of(body), spec.name, spec.version, mode)
            entry = self.cache.get(cache_key)
            if entry is not None:
                prediction = self._from_entry(classifier, entry, started)
        if prediction is None:
            prediction, fresh = self._infer(classifier, body, resize, deadline, cache_key, started)
            if fresh is not None and cache_key is not None and self.cache is not None:
                self.cache.share(cache_key, fresh)  # Redis, off the model's lock
        return self._finish(prediction, body, policy, review, deadline)

    def _infer(
        self,
        classifier: Classifier,
        body: IO[bytes],
        resize: str | None,
        deadline: float | None,
        cache_key: str | None,
        started: float,
    ) -> tuple[Prediction, CacheEntry | None]:
        """Decode, preprocess and predict under the worker's model lock; decoding ends by
        NSFW_DECODE_TIMEOUT, or by `deadline` (a batch's) when that comes first. Returns the
        prediction and, when it was computed here (not found meanwhile), its cache entry."""
        spec = classifier.spec
        with self._computing(deadline):
            if cache_key is not None and self.cache is not None:
                # Single flight: the same bytes may have been classified while this one waited for the model.
                entry = self.cache.get_local(cache_key)
                if entry is not None:
                    return self._from_entry(classifier, entry, started), None
            begun = time.perf_counter()  # the wait for the model is not the decode's
            decode_deadline = time.monotonic() + self.settings.decode_timeout
            body.seek(0)
            try:
                inputs, frames = preprocess_frames(
                    body,
                    spec=spec,
                    resize=resize or self.settings.resize,
                    limits=self._limits,
                    max_frames=self.settings.max_frames,
                    deadline=decode_deadline if deadline is None else min(deadline, decode_deadline),
                )
            except InvalidImage as exc:
                metrics.REFUSED_IMAGES.labels(exc.code).inc()
                raise
            decoded = time.perf_counter()
            metrics.STAGE_DURATION.labels("decode", spec.name).observe(decoded - begun)
            probabilities = classifier.predict(inputs)
            metrics.STAGE_DURATION.labels("inference", spec.name).observe(time.perf_counter() - decoded)
            per_frame = [{name: float(p) for name, p in zip(spec.classes, row, strict=True)} for row in probabilities]
            chosen = worst_frame(spec.adult_classes, spec.classes, probabilities)
            entry = CacheEntry(list(frames.indices), per_frame, chosen, frames.total)
            if cache_key is not None and self.cache is not None:
                # This worker's layer, before the model is free: the next request for these bytes finds it.
                self.cache.remember(cache_key, entry)
        prediction = Prediction(
            scores=per_frame[chosen],
            model=spec,
            backend=classifier.backend,
            frame_indices=frames.indices,
            frame_scores=per_frame,
            chosen=chosen,
            frame_count=frames.total,
            seconds=time.perf_counter() - started,
            cache=None if cache_key is None else "miss",
        )
        return prediction, entry

    @staticmethod
    def _from_entry(classifier: Classifier, entry: CacheEntry, started: float) -> Prediction:
        return Prediction(
            scores=entry.frame_scores[entry.chosen],
            model=classifier.spec,
            backend=classifier.backend,
            frame_indices=entry.frame_indices,
            frame_scores=entry.frame_scores,
            chosen=entry.chosen,
            frame_count=entry.frame_count,
            seconds=time.perf_counter() - started,
            cache="hit",
        )

    def _finish(
        self,
        prediction: Prediction,
        body: IO[bytes],
        policy: Policy | None,
        review: ReviewContext | None,
        deadline: float | None,
    ) -> Prediction:
        """The verdict when one is asked for (tiers, then the review queue), and the count."""
        spec = prediction.model
        if policy is None:
            metrics.PREDICTIONS.labels(spec.name, "none").inc()
            return prediction
        decided = self._decide(prediction, body, policy)
        if review is not None and self.review_hook is not None:
            decided = self.review_hook(decided, body, review, lambda: self._pictures(body, deadline))
        assert decided.verdict is not None
        metrics.PREDICTIONS.labels(spec.name, decided.verdict.label).inc()
        return decided

    def _pictures(self, body: IO[bytes], deadline: float | None) -> dict[int, bytes] | None:
        """The review item's pictures: each classified frame as a JPEG (longest side 256) by its
        index, decoded again under the model lock and the decode limits like any decode; None when
        they cannot be made (an NsfwError when the model stays busy or the deadline passes)."""
        with self._computing(deadline):
            decode_deadline = time.monotonic() + self.settings.decode_timeout
            try:
                made = frame_thumbnails(
                    body,
                    limits=self._limits,
                    max_frames=self.settings.max_frames,
                    deadline=decode_deadline if deadline is None else min(deadline, decode_deadline),
                )
            except InvalidImage as exc:
                log.warning("no thumbnail: %s %s", exc.code, exc.detail)
                return None
        return dict(zip(made.indices, made.images, strict=True))

    def _decide(self, prediction: Prediction, body: IO[bytes], policy: Policy) -> Prediction:
        """The first tier's verdict; when it is unknown and a second tier is set, the second's."""
        spec = prediction.model
        verdict = policy.decide(prediction.scores, spec.adult_classes, spec.safe_classes)
        second_model = self.settings.second_tier_model
        if verdict.label != "unknown" or not (second_model or self.second_tier_http):
            return replace(prediction, verdict=verdict)
        try:
            if second_model:
                classifier = self.classifier_for(second_model)
                scores = self._classify(classifier, body, None).scores
                p, source = sum(scores[name] for name in classifier.spec.adult_classes), second_model
            else:
                assert self.second_tier_http is not None
                body.seek(0)
                p, source = self.second_tier_http.ask(self.fetcher, body.read()), "endpoint"
        except NsfwError as exc:
            # The second opinion failed: the first tier's unknown stands (human review), and says why.
            log.info("second tier -> %s: %s", exc.code, exc.detail)
            return replace(prediction, verdict=verdict, second_tier=exc.to_dict())
        second = self.second_tier_policy.decide(source, p)
        answer = {"model": second_model, "nsfw": p} if second_model else {"nsfw": p}
        return replace(prediction, verdict=second, tier=2, second_tier=answer)

    def predict_url(
        self,
        url: str,
        *,
        model: str | None = None,
        resize: str | None = None,
        policy: Policy | None = None,
        caller: str = "-",
        review: ReviewContext | None = None,
    ) -> Prediction:
        """Fetch url and classify the image (with a verdict when a policy is given); raises NsfwError
        subclasses on every failure. `caller` (the client's address) draws on its own download share;
        with `review`, the review queue sees the decided image (ReviewHook)."""
        classifier = self.classifier_for(model)
        with self._fetch(url, caller, self._request_share()) as body:
            return self._classify(classifier, body, resize, policy, review=review)

    def predict_image(
        self,
        body: IO[bytes],
        *,
        model: str | None = None,
        resize: str | None = None,
        policy: Policy | None = None,
        review: ReviewContext | None = None,
    ) -> Prediction:
        """Classify image bytes the client sent (upload, raw body, base64) under the same limits."""
        classifier = self.classifier_for(model)
        return self._classify_upload(classifier, body, resize, policy, review=review)

    def predict_all(self, url: str | None, image: IO[bytes] | None, caller: str = "-") -> dict[str, Prediction]:
        """Every served model on one image, fetched once (NSFW-FLASK's /models/all/predict fetched
        it once per model)."""
        if image is not None:
            return {name: self._classify_upload(c, image, None) for name, c in self.classifiers.items()}
        assert url is not None
        with self._fetch(url, caller, self._request_share()) as body:
            return {name: self._classify(c, body, None) for name, c in self.classifiers.items()}

    def _classify_upload(
        self,
        classifier: Classifier,
        body: IO[bytes],
        resize: str | None,
        policy: Policy | None = None,
        deadline: float | None = None,
        review: ReviewContext | None = None,
    ) -> Prediction:
        body.seek(0, 2)
        size = body.tell()
        if size > self.settings.max_bytes:
            raise ImageTooLarge(f"upload of {size} bytes")
        if size == 0:
            raise InvalidImage("empty upload")
        return self._classify(classifier, body, resize, policy, deadline, review)

    def predict_batch(
        self,
        items: Sequence[BatchItem],
        *,
        model: str | None = None,
        resize: str | None = None,
        policy: Policy | None = None,
        caller: str = "-",
        review: ReviewContext | None = None,
    ) -> list[Prediction | NsfwError]:
        """Every item's prediction or its own error, in order. Items overlap their downloads
        (NSFW_BATCH_CONCURRENCY at most, on threads of this batch's own) under one deadline
        (NSFW_BATCH_TIMEOUT) that covers fetching, decoding and inference of every item, base64 ones
        too, and wait for their caller's download share rather than being refused: a batch of slow
        URLs holds that share, never other callers' slots or batches.

        No amplification: a URL named several times is fetched and classified once (every item
        naming it gets that answer), the batch holds at most NSFW_MAX_HOST_CONNECTIONS connections to
        one host at once, and its downloads together stop at NSFW_MAX_REQUEST_DOWNLOAD_BYTES."""
        classifier = self.classifier_for(model)
        deadline = time.monotonic() + self.settings.batch_timeout
        share = self._request_share()

        def one(item: BatchItem) -> Prediction | NsfwError:
            try:
                if item.error is not None:
                    raise item.error
                if deadline - time.monotonic() <= 0:
                    raise (UpstreamTimeout if item.url else DeadlineExceeded)("batch deadline passed before this item")
                context = None if review is None else replace(review, ref=item.ref or review.ref, source_url=item.url)
                if item.image is not None:
                    return self._classify_upload(classifier, item.image, resize, policy, deadline, context)
                assert item.url is not None
                left = deadline - time.monotonic()
                with self._fetch(item.url, caller, share, timeout=left, wait=left) as body:
                    return self._classify(classifier, body, resize, policy, deadline, context)
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
        lanes = max(1, min(self.settings.batch_concurrency, self.settings.max_in_flight, len(tasks)))
        with ThreadPoolExecutor(lanes, thread_name_prefix="batch") as pool:
            # Each item in a copy of this request's context: its log lines name the request's id.
            futures = [pool.submit(contextvars.copy_context().run, one, task) for task in tasks]
            results = [future.result() for future in futures]
        return [results[task] for task in task_of]
