"""The pipeline: fetch -> decode -> preprocess -> predict -> scores. No Flask."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

import numpy as np

from nsfw.config import Settings
from nsfw.errors import ImageTooLarge, InvalidImage, Overloaded, Unavailable
from nsfw.fetch import Fetcher, FetchPolicy
from nsfw.imaging import preprocess_frames
from nsfw.model import Classifier


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


# The classes whose sum ranks frames: an animation scores as its least safe frame, so a harmless
# first frame cannot hide the rest.
UNSAFE_CLASSES = ("hentai", "porn", "sexy")


def worst_frame(classes: tuple[str, ...], probabilities: np.ndarray) -> int:
    """Index of the row with the highest hentai + porn + sexy (the first, on a tie)."""
    unsafe = [classes.index(name) for name in UNSAFE_CLASSES if name in classes]
    return int(np.argmax(probabilities[:, unsafe].sum(axis=1)))


class PredictionService:
    """Everything a request needs, set up once per worker by create_app."""

    def __init__(self, settings: Settings, fetcher: Fetcher) -> None:
        self.settings = settings
        self.fetcher = fetcher
        self._classifier: Classifier | None = None
        # Admission: at most max_in_flight predictions per worker; the rest are refused at once.
        self._slots = threading.BoundedSemaphore(settings.max_in_flight)
        # Decoding and inference run one at a time per worker: on one vCPU more would only
        # interleave, and it bounds memory to one decoded image per worker. Downloads overlap.
        self._compute = threading.Lock()

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

    def _classify(self, classifier: Classifier, body: IO[bytes], resize: str | None) -> dict[str, float]:
        with self._compute:
            frames = preprocess_frames(
                body,
                size=classifier.spec.input_size,
                mode=resize or self.settings.resize,
                max_pixels=self.settings.max_pixels,
                max_frames=self.settings.max_frames,
            )
            probabilities = classifier.predict(frames)
        return self.scores(probabilities[worst_frame(classifier.spec.classes, probabilities)])

    def predict_url(self, url: str, *, resize: str | None = None) -> dict[str, float]:
        """Fetch url and classify the image; raises NsfwError subclasses on every failure."""
        with self._admitted() as classifier, self.fetcher.fetch(url) as body:
            return self._classify(classifier, body, resize)

    def predict_image(self, body: IO[bytes], *, resize: str | None = None) -> dict[str, float]:
        """Classify image bytes the client sent (upload, raw body, base64) under the same limits."""
        with self._admitted() as classifier:
            body.seek(0, 2)
            size = body.tell()
            if size > self.settings.max_bytes:
                raise ImageTooLarge(f"upload of {size} bytes")
            if size == 0:
                raise InvalidImage("empty upload")
            body.seek(0)
            return self._classify(classifier, body, resize)
