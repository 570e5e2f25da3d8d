"""One image -> its prediction: the result cache, or decode -> preprocess -> predict under the model's
lock; then, off the lock, the verdict (nsfw/pipeline/verdict.py) and the hooks after it (the review
queue). No Flask: the web layer (nsfw/web/api.py) parses requests into these calls."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import IO, Any

import numpy as np
from PIL import Image

from nsfw import metrics
from nsfw.cache import Entry as CacheEntry
from nsfw.cache import ResultCache, sha256_of
from nsfw.cache import key as result_key
from nsfw.config import DecodeSettings, FetchSettings, FlowSettings, Settings, VideoSettings
from nsfw.errors import ImageTooLarge, InvalidImage, InvalidVideo, NsfwError, UnsupportedMediaType
from nsfw.fetch import Fetcher, FetchPolicy, RequestShare, Resolver, system_resolver
from nsfw.imaging.budget import Limits
from nsfw.imaging.decode import Deadline, decode_frames, harden_pillow
from nsfw.imaging.recipes import model_input
from nsfw.imaging.thumbnail import Picture, frame_thumbnails, pictures
from nsfw.imaging.video import VideoLimits, is_video, open_video, sniff
from nsfw.matching.pdq import FrameHashes, frame_hashes
from nsfw.model import Classifier, embedding_bytes, embedding_of, infer
from nsfw.model.adapter import Promoted
from nsfw.model.registry import Registry
from nsfw.model.specs import NSFWJS, ModelSpec
from nsfw.pipeline.flow import TENANT, Flow
from nsfw.pipeline.verdict import Policy, Tiers, Verdict

log = logging.getLogger(__name__)


def fetch_policy(fetching: FetchSettings, flow: FlowSettings, video: VideoSettings | None = None) -> FetchPolicy:
    return FetchPolicy(
        max_video_bytes=0 if video is None else video.max_video_bytes,
        is_video=lambda head: sniff(head) is not None,
        connect_timeout=fetching.connect_timeout,
        read_timeout=fetching.read_timeout,
        download_timeout=fetching.download_timeout,
        max_bytes=fetching.max_bytes,
        max_redirects=fetching.max_redirects,
        max_url_length=fetching.max_url_length,
        allowed_ports=fetching.allowed_ports,
        allowed_networks=fetching.allowed_networks,
        max_lookups=flow.max_downloads,
        max_lookups_per_caller=flow.max_in_flight,
    )


def decode_limits(decoding: DecodeSettings) -> Limits:
    """The limits every decode runs under (nsfw/imaging/budget.py)."""
    return Limits(decoding.max_pixels, decoding.max_decode_bytes, decoding.max_jpeg_scans, decoding.max_decoded_frames)


def build_service(settings: Settings, resolver: Resolver = system_resolver) -> PredictionService:
    """The service for one process (a gunicorn worker, or the command line): Pillow's process-wide
    limits set, fetcher built; the caller sets the classifiers (`service.models.set`)."""
    harden_pillow(max_pixels=settings.max_pixels, max_metadata_bytes=settings.max_metadata_bytes)
    fetcher = Fetcher(fetch_policy(settings.fetch, settings.flow, settings.video), resolver)
    service = PredictionService(settings, fetcher)
    if settings.cache_size or settings.redis_url:
        service.cache = ResultCache(settings.cache_size, settings.redis_url, settings.cache_ttl)
    return service


@dataclass(frozen=True)
class ReviewContext:
    """What a detailed request tells the review queue about its image."""

    key_name: str
    ref: str | None = None
    source_url: str | None = None


@dataclass(frozen=True)
class Ask:
    """What a request asks of the pipeline besides its image: which model and resize (None: the
    settings'), a verdict (only with a policy), whose download share it draws on (the client's
    address), and what the review queue is told (detailed answers with the queue on)."""

    model: str | None = None
    resize: str | None = None
    policy: Policy | None = None
    caller: str = "-"
    review: ReviewContext | None = None


PLAIN = Ask()  # the scores alone, by the default model and resize


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
    # A video's: each classified frame's time in seconds, and {"duration_s", "width", "height", "codec"}.
    frame_times: list[float | None] | None = None
    video: dict[str, Any] | None = None
    # Each classified frame's PDQ hashes, when the service matches near-duplicates (service.hashing).
    hashes: list[FrameHashes] | None = None
    # What a near-duplicate match decided ({"distance", "review"} or {"distance", "bank"}), for the
    # detailed answer.
    match: dict[str, Any] | None = None
    # The deciding frame's embedding (float32 [D]), when the model gives one: what the learned adapter
    # reads, and what a queued item keeps for the next adapter's training.
    embedding: np.ndarray | None = None
    # What the promoted adapter said, when one was asked ({"version", "probability"}).
    adapter: dict[str, Any] | None = None

    def classified(self) -> list[dict[str, Any]]:
        """Each classified frame: its index and scores, and a video's its time (seconds from the start),
        as the detailed answer and the review item show them."""
        times = self.frame_times or [None] * len(self.frame_indices)
        frames: list[dict[str, Any]] = []
        for index, scores, time_s in zip(self.frame_indices, self.frame_scores, times, strict=True):
            if self.video is None:
                frames.append({"index": index, "scores": scores})
            else:
                frames.append({"index": index, "time_s": time_s, "scores": scores})
        return frames


class ImageBytes:
    """One image's bytes as the pipeline holds them, with what it learnt of them once, for whoever
    comes after: their sha256 (the result cache's key, the review queue's memory), the demuxer of a
    video (sniffed once) and, when a review may follow, the picture of each classified frame, made
    from the frames the model saw."""

    def __init__(self, body: IO[bytes]) -> None:
        self.body = body
        self._sha256: str | None = None
        self._demuxer: str | None = None
        self._sniffed = False
        # {frame index: its pictures}, made while the frames were decoded for the model (None: not made).
        self.pictures: dict[int, Picture] | None = None

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = sha256_of(self.body)
        return self._sha256

    @property
    def demuxer(self) -> str | None:
        """The demuxer of a video these bytes are (None for an image); a 415 for a video not read."""
        if not self._sniffed:
            self._demuxer, self._sniffed = is_video(self.body), True
        return self._demuxer


# The review queue's one entry point, wired in by create_app (nsfw/review/): the decided prediction,
# its image (bytes, sha256), the request's context and a way to get the pictures of the classified
# frames (by frame index; made during the decode, else decoded again) -> the prediction as answered
# (a remembered human verdict, or the item it joined, or why it was not queued). Called off the
# model's lock. The service knows nothing else of it.
ReviewHook = Callable[[Prediction, ImageBytes, ReviewContext, Callable[[], Mapping[int, bytes] | None]], Prediction]


def worst_frame(adult_classes: tuple[str, ...], classes: tuple[str, ...], probabilities: np.ndarray) -> int:
    """Index of the row with the highest sum of the model's adult classes (hentai + porn + sexy for
    GantMan's), the verdict's adult sum (the first, on a tie): an animation scores as its least safe
    frame, so a harmless first frame cannot hide the rest."""
    unsafe = [classes.index(name) for name in adult_classes]
    return int(np.argmax(probabilities[:, unsafe].sum(axis=1)))


def _hashes(entry: CacheEntry) -> list[FrameHashes] | None:
    """An entry's hashes, None when it has none or they cannot be read (an entry from Redis written
    by another version: the image is then not matched, never failed)."""
    if entry.hashes is None:
        return None
    try:
        return [FrameHashes.from_json(raw) for raw in entry.hashes]
    except (TypeError, ValueError) as exc:
        log.warning("cache entry with unreadable hashes: %s", exc)
        return None


def _picture_or_none(frame: Image.Image, preview_side: int) -> Picture | None:
    try:
        return pictures(frame, preview_side)
    except Exception as exc:  # noqa: BLE001 - a picture that cannot be made costs the review its picture only
        log.warning("no thumbnail: %s: %s", type(exc).__name__, exc)
        return None


class PredictionService:
    """Everything a request needs, set up once per worker by create_app."""

    def __init__(self, settings: Settings, fetcher: Fetcher) -> None:
        self.settings = settings
        self.fetcher = fetcher
        self.models = Registry(settings.models_dir)
        self.flow = Flow(settings.fetch, settings.flow, fetcher)
        self.tiers = Tiers(settings.verdicts)
        self._limits = decode_limits(settings.decode)
        # The review queue's entry point, when NSFW_REVIEW is on (create_app wires it).
        self.review_hook: ReviewHook | None = None
        # The result cache (NSFW_CACHE_SIZE, NSFW_REDIS_URL); None when off.
        self.cache: ResultCache | None = None
        # Whether each classified frame is hashed (PDQ) for the near-duplicate matcher: on with the
        # review queue (nsfw/review install), whose hook looks the hashes up.
        self.hashing = False
        # The promoted adapters, as this worker last read them from the review store (nsfw/review
        # install keeps them fresh); None without the review queue.
        self.adapters: Promoted | None = None

    def fetch(
        self, url: str, caller: str, share: RequestShare, *, timeout: float | None = None, wait: float | None = None
    ) -> IO[bytes]:
        """url's bytes (Flow.fetch); 503 `unavailable` first while the models load."""
        self.models.served  # noqa: B018 - raises Unavailable while loading
        return self.flow.fetch(url, caller, share, timeout=timeout, wait=wait)

    def classify(
        self, classifier: Classifier, body: IO[bytes], ask: Ask = PLAIN, deadline: float | None = None
    ) -> Prediction:
        """The image's scores by ask.resize (from the result cache, or decoded and predicted under the
        worker's model lock), then, with ask.policy, its verdict and, with ask.review, its review
        (`_finish`), after the lock is released: those may wait for the model themselves (a picture,
        a second-tier model) or call out (a second-tier endpoint), and the lock is not re-entrant.
        A batch's `deadline` bounds the waits and the decode."""
        started = time.perf_counter()
        resize, policy, review = ask.resize, ask.policy, ask.review
        image = ImageBytes(body)
        spec = classifier.spec
        cache_key = None
        prediction = None
        demuxer = image.demuxer
        # The pictures (and every hash a decision remembers) are made from the decoded frames only when
        # a review may follow.
        pictures = review is not None and policy is not None and self.review_hook is not None
        if self.cache is not None:
            mode = (resize or self.settings.resize) if spec.preprocessing == NSFWJS else "-"
            if demuxer is not None:
                # A video's result is its samples': a key of its own (an instance sampling otherwise,
                # or one from before videos, never reads it as an image's).
                mode = f"{mode}:video{self.settings.video_frames}"
            cache_key = result_key(TENANT.get(), image.sha256, spec.name, spec.version, mode)
            entry = self.cache.get(cache_key)
            if entry is not None and self._usable(entry, pictures, classifier):
                prediction = self._from_entry(classifier, entry, started)
        if prediction is None:
            if demuxer is not None:
                prediction, fresh = self._infer_video(
                    classifier, image, demuxer, resize, deadline, cache_key, started, pictures, policy
                )
            else:
                prediction, fresh = self._infer(classifier, image, resize, deadline, cache_key, started, pictures)
            if fresh is not None and cache_key is not None and self.cache is not None:
                self.cache.share(cache_key, fresh)  # Redis, off the model's lock
        return self._finish(prediction, image, policy, review, deadline)

    def _usable(self, entry: CacheEntry, review: bool, classifier: Classifier) -> bool:
        """Whether a cached result answers this request: with the adapters on, it has its embedding
        when the model gives one (an entry from before they were has none); with matching on, it has
        its frames' hashes (an entry from an instance that does not match has none), and every hash a
        decision would remember when a review may follow (an entry a flat answer left has the
        originals alone); otherwise the image is classified again."""
        if self.adapters is not None and entry.embedding is None and hasattr(classifier, "infer"):
            return False
        if not self.hashing:
            return True
        hashes = _hashes(entry)
        return hashes is not None and (not review or all(frame.full for frame in hashes))

    def classify_upload(
        self, classifier: Classifier, body: IO[bytes], ask: Ask = PLAIN, deadline: float | None = None
    ) -> Prediction:
        """classify, for bytes a client sent: refused when empty or over NSFW_MAX_BYTES (a video's
        over NSFW_MAX_VIDEO_BYTES)."""
        body.seek(0, 2)
        size = body.tell()
        cap = self.settings.max_video_bytes if is_video(body) else self.settings.max_bytes
        if size > cap:
            raise ImageTooLarge(f"upload of {size} bytes")
        if size == 0:
            raise InvalidImage("empty upload")
        return self.classify(classifier, body, ask, deadline)

    def _infer(
        self,
        classifier: Classifier,
        image: ImageBytes,
        resize: str | None,
        deadline: float | None,
        cache_key: str | None,
        started: float,
        pictures: bool,
    ) -> tuple[Prediction, CacheEntry | None]:
        """Decode, preprocess and predict under the worker's model lock; decoding ends by
        NSFW_DECODE_TIMEOUT, or by `deadline` (a batch's) when that comes first. With `pictures`, each
        decoded frame also becomes its review picture (image.pictures). Returns the prediction and,
        when it was computed here (not found meanwhile), its cache entry."""
        spec = classifier.spec
        mode = resize or self.settings.resize
        with self.flow.computing(deadline):
            if cache_key is not None and self.cache is not None:
                # Single flight: the same bytes may have been classified while this one waited for the model.
                entry = self.cache.get_local(cache_key)
                if entry is not None and self._usable(entry, pictures, classifier):
                    return self._from_entry(classifier, entry, started), None
            begun = time.perf_counter()  # the wait for the model is not the decode's
            decode_deadline = time.monotonic() + self.settings.decode_timeout
            # The pictures stand aside from the decode's deadline: they are not the decode's work, and
            # an image that decodes in time must not fail because a review may follow (a batch's own
            # deadline still bounds the batch: every wait after this checks it again).
            limit = Deadline(decode_deadline if deadline is None else min(deadline, decode_deadline))

            preview = self.settings.review_preview_px

            def convert(frame: Image.Image) -> tuple[np.ndarray, Picture | None, FrameHashes | None]:
                made = model_input(frame, spec, mode)
                with limit.aside():  # not the decode's work either
                    hashed = frame_hashes(frame, full=pictures) if self.hashing else None
                    return made, _picture_or_none(frame, preview) if pictures else None, hashed

            image.body.seek(0)
            try:
                frames = decode_frames(
                    image.body,
                    limits=self._limits,
                    max_frames=self.settings.max_frames,
                    deadline=limit,
                    convert=convert,
                )
            except InvalidImage as exc:
                metrics.REFUSED_IMAGES.labels(exc.code).inc()
                raise
            inputs = np.stack([made[0] for made in frames.images])
            if pictures and all(made[1] is not None for made in frames.images):
                image.pictures = {index: made[1] for index, made in zip(frames.indices, frames.images, strict=True)}
            decoded = time.perf_counter()
            metrics.STAGE_DURATION.labels("decode", spec.name).observe(decoded - begun)
            probabilities, embeddings = infer(classifier, inputs)
            metrics.STAGE_DURATION.labels("inference", spec.name).observe(time.perf_counter() - decoded)
            per_frame = [{name: float(p) for name, p in zip(spec.classes, row, strict=True)} for row in probabilities]
            chosen = worst_frame(spec.adult_classes, spec.classes, probabilities)
            hashes = [made[2].to_json() for made in frames.images if made[2] is not None] if self.hashing else None
            embedding = embedding_bytes(None if embeddings is None else embeddings[chosen])
            indices = list(frames.indices)
            entry = CacheEntry(indices, per_frame, chosen, frames.total, hashes=hashes, embedding=embedding)
            if cache_key is not None and self.cache is not None:
                # This worker's layer, before the model is free: the next request for these bytes finds it.
                self.cache.remember(cache_key, entry)
        return self._from_entry(classifier, entry, started, None if cache_key is None else "miss"), entry

    def _video_limits(self, deadline: float | None) -> VideoLimits:
        """One video's limits; a batch's deadline cuts its time shorter."""
        video = self.settings.video
        timeout = video.video_timeout
        if deadline is not None:
            timeout = max(0.001, min(timeout, deadline - time.monotonic()))
        return VideoLimits(
            frames=video.video_frames,
            max_pixels=video.max_video_pixels,
            max_seconds=video.max_video_seconds,
            timeout=timeout,
            memory_bytes=video.video_memory_bytes,
        )

    def _infer_video(
        self,
        classifier: Classifier,
        image: ImageBytes,
        demuxer: str,
        resize: str | None,
        deadline: float | None,
        cache_key: str | None,
        started: float,
        pictures: bool,
        policy: Policy | None,
    ) -> tuple[Prediction, CacheEntry | None]:
        """A video's sampled frames (nsfw/imaging/video.py: decoded by a child process, read one at a
        time, never under the model's lock), each preprocessed and predicted under the lock, in time
        order; with NSFW_VIDEO_EARLY_STOP the first frame judged adult ends the decode. The answer is
        the worst frame, as for an animation."""
        spec = classifier.spec
        mode = resize or self.settings.resize
        # The service's threshold, never a request's own: what is decoded must not depend on who asked.
        early = Policy.of(self.settings.verdicts) if self.settings.video_early_stop else None
        stopped = complete = False
        rows: list[dict[str, float]] = []
        hashed: list[FrameHashes] = []
        embedded: list[np.ndarray | None] = []
        times: list[float | None] = []
        made: dict[int, Picture | None] = {}
        begun = time.perf_counter()
        inferring = 0.0
        try:
            with (
                self.flow.decoding_video(deadline),
                open_video(image.body, demuxer, self._video_limits(deadline)) as decoding,
            ):
                facts = decoding.info.to_dict()
                for frame in decoding.frames():
                    with self.flow.computing(deadline):
                        ready = time.perf_counter()
                        inferred = infer(classifier, model_input(frame.image, spec, mode)[None])
                        inferring += time.perf_counter() - ready
                    row = inferred.probabilities[0]
                    embedded.append(None if inferred.embeddings is None else inferred.embeddings[0])
                    rows.append({name: float(p) for name, p in zip(spec.classes, row, strict=True)})
                    times.append(frame.time_s)
                    if self.hashing:
                        hashed.append(frame_hashes(frame.image, full=pictures))
                    if pictures:
                        made[len(rows) - 1] = _picture_or_none(frame.image, self.settings.review_preview_px)
                    if early is not None and sum(rows[-1][n] for n in spec.adult_classes) >= early.adult_threshold:
                        stopped = True
                        break  # the with block ends the decode
                complete = decoding.complete
        except InvalidImage as exc:
            metrics.REFUSED_IMAGES.labels(exc.code).inc()
            raise
        if not rows:
            metrics.REFUSED_IMAGES.labels(InvalidVideo.code).inc()
            raise InvalidVideo("no frame could be decoded")
        if not complete and not stopped:
            facts["cut_short"] = True  # samples left unjudged (a deadline, a failing decoder): said
        metrics.STAGE_DURATION.labels("decode", spec.name).observe(time.perf_counter() - begun - inferring)
        metrics.STAGE_DURATION.labels("inference", spec.name).observe(inferring)
        # In time order (the decoder's second pass sends frames between its keyframes after them).
        order = sorted(range(len(rows)), key=lambda n: (times[n] is None, times[n] or 0.0, n))
        rows, times, embedded = [rows[n] for n in order], [times[n] for n in order], [embedded[n] for n in order]
        hashes = [hashed[n].to_json() for n in order] if self.hashing else None
        made = {position: made[n] for position, n in enumerate(order) if n in made}
        if pictures and all(picture is not None for picture in made.values()):
            image.pictures = {index: picture for index, picture in made.items() if picture is not None}
        probabilities = np.array([[row[name] for name in spec.classes] for row in rows])
        chosen = worst_frame(spec.adult_classes, spec.classes, probabilities)
        embedding = embedding_bytes(embedded[chosen])
        entry = CacheEntry(list(range(len(rows))), rows, chosen, len(rows), times, facts, hashes, embedding)
        # Only a decode that sampled the whole video is remembered: one cut short (a deadline, a
        # crashed or lying decoder) or stopped at an adult frame is not the answer for these bytes
        # on another day (another load, another threshold), and must not be served as one.
        if not complete or stopped:
            return self._from_entry(classifier, entry, started, None), None
        if cache_key is not None and self.cache is not None:
            self.cache.remember(cache_key, entry)
        return self._from_entry(classifier, entry, started, None if cache_key is None else "miss"), entry

    @staticmethod
    def _from_entry(classifier: Classifier, entry: CacheEntry, started: float, cache: str | None = "hit") -> Prediction:
        """The prediction of a result (the cache's, or one just computed: `cache` says which)."""
        return Prediction(
            scores=entry.frame_scores[entry.chosen],
            model=classifier.spec,
            backend=classifier.backend,
            frame_indices=entry.frame_indices,
            frame_scores=entry.frame_scores,
            chosen=entry.chosen,
            frame_count=entry.frame_count,
            seconds=time.perf_counter() - started,
            cache=cache,
            frame_times=entry.frame_times,
            video=entry.video,
            hashes=_hashes(entry),
            embedding=embedding_of(entry.embedding),
        )

    def _finish(
        self,
        prediction: Prediction,
        image: ImageBytes,
        policy: Policy | None,
        review: ReviewContext | None,
        deadline: float | None,
    ) -> Prediction:
        """The verdict when one is asked for (tiers, then the review queue), and the count."""
        spec = prediction.model
        if policy is None:
            metrics.PREDICTIONS.labels(spec.name, "none").inc()
            return prediction
        decided = self._decide(prediction, image.body, policy)
        if review is not None and self.review_hook is not None:
            count = decided.frame_count
            decided = self.review_hook(decided, image, review, lambda: self._pictures(image, deadline, count))
        assert decided.verdict is not None
        metrics.PREDICTIONS.labels(spec.name, decided.verdict.label).inc()
        return decided

    def _pictures(self, image: ImageBytes, deadline: float | None, count: int = 0) -> dict[int, Picture] | None:
        """The review item's pictures: each classified frame's thumbnail and preview by its index:
        made during the decode, or (a result from the cache) decoded again under the model lock and
        the decode limits like any decode; None when they cannot be made (an NsfwError
        when the model stays busy or the deadline passes)."""
        if image.pictures is not None:
            return image.pictures
        if image.demuxer is not None:
            return self._video_pictures(image, image.demuxer, deadline, count)
        with self.flow.computing(deadline):
            decode_deadline = time.monotonic() + self.settings.decode_timeout
            try:
                made = frame_thumbnails(
                    image.body,
                    limits=self._limits,
                    max_frames=self.settings.max_frames,
                    deadline=decode_deadline if deadline is None else min(deadline, decode_deadline),
                    preview_side=self.settings.review_preview_px,
                )
            except InvalidImage as exc:
                log.warning("no thumbnail: %s %s", exc.code, exc.detail)
                return None
        return dict(zip(made.indices, made.images, strict=True))

    def _video_pictures(
        self, image: ImageBytes, demuxer: str, deadline: float | None, count: int
    ) -> dict[int, Picture] | None:
        """A video's pictures when its result came from the cache (which holds only decodes that
        sampled the whole video): its samples decoded again, the same frames, put in time order like
        the judged ones; None unless there are exactly `count` of them."""
        try:
            with (
                self.flow.decoding_video(deadline),
                open_video(image.body, demuxer, self._video_limits(deadline)) as decoding,
            ):
                frames = list(decoding.frames())
                complete = decoding.complete
        except NsfwError as exc:
            log.warning("no thumbnail: %s %s", exc.code, exc.detail)
            return None
        frames.sort(key=lambda frame: (frame.time_s is None, frame.time_s or 0.0))
        made = [_picture_or_none(frame.image, self.settings.review_preview_px) for frame in frames]
        if not complete or len(made) != count or any(picture is None for picture in made):
            return None
        return {index: picture for index, picture in enumerate(made) if picture is not None}

    def _decide(self, prediction: Prediction, body: IO[bytes], policy: Policy) -> Prediction:
        """The tiers' verdict; the second tier's probability from a second model on the same bytes, or
        the operator's endpoint."""
        spec = prediction.model

        def ask(tiers: Tiers) -> float:
            if prediction.video is not None:
                raise UnsupportedMediaType("the second tier reads images, and this is a video")
            if tiers.second_model:
                classifier = self.models.named(tiers.second_model)
                scores = self.classify(classifier, body).scores
                return sum(scores[name] for name in classifier.spec.adult_classes)
            assert tiers.http is not None
            body.seek(0)
            return tiers.http.ask(self.fetcher, body.read())

        def failed(exc: NsfwError) -> None:
            log.info("second tier -> %s: %s", exc.code, exc.detail)

        learned = None
        if self.adapters is not None and prediction.embedding is not None:
            learned = self.adapters.ask(spec.name, spec.version, prediction.embedding)
        decided = self.tiers.decide(
            policy, prediction.scores, spec.adult_classes, spec.safe_classes, ask, failed, learned=learned
        )
        if decided.tier == "adapter":
            metrics.ADAPTER_VERDICTS.labels(spec.name, decided.verdict.label).inc()
        verdict = decided.verdict
        if prediction.video and prediction.video.get("cut_short") and verdict.label == "safe":
            # What was not judged may be what matters: a human looks (a hostile file can make the
            # decoder run out of time on purpose, after safe frames).
            verdict = Verdict(
                "unknown",
                f"{verdict.reason}, but the video was cut short after {len(prediction.frame_scores)} sampled "
                "frames: for human review",
            )
            return replace(
                prediction, verdict=verdict, tier=decided.tier, second_tier=decided.second_tier, adapter=decided.adapter
            )
        return replace(
            prediction,
            verdict=decided.verdict,
            tier=decided.tier,
            second_tier=decided.second_tier,
            adapter=decided.adapter,
        )

    def predict_url(self, url: str, ask: Ask) -> Prediction:
        """Fetch url and classify the image (with a verdict when ask has a policy); raises NsfwError
        subclasses on every failure. The download draws on ask.caller's share; with ask.review, the
        review queue sees the decided image (ReviewHook)."""
        classifier = self.models.named(ask.model)
        with self.fetch(url, ask.caller, self.flow.request_share()) as body:
            return self.classify(classifier, body, ask)

    def predict_image(self, body: IO[bytes], ask: Ask) -> Prediction:
        """Classify image bytes the client sent (upload, raw body, base64) under the same limits."""
        classifier = self.models.named(ask.model)
        return self.classify_upload(classifier, body, ask)

    def predict_all(self, url: str | None, image: IO[bytes] | None, caller: str = "-") -> dict[str, Prediction]:
        """Every served model on one image, fetched once (NSFW-FLASK's /models/all/predict fetched
        it once per model)."""
        if image is not None:
            return {name: self.classify_upload(c, image) for name, c in self.models.served.items()}
        assert url is not None
        with self.fetch(url, caller, self.flow.request_share()) as body:
            return {name: self.classify(c, body) for name, c in self.models.served.items()}
