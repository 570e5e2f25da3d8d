"""The pipeline: fetch -> decode -> preprocess -> predict -> scores. No Flask."""

from __future__ import annotations

import threading

import numpy as np

from nsfw.config import Settings
from nsfw.errors import Overloaded, Unavailable
from nsfw.fetch import Fetcher, FetchPolicy
from nsfw.imaging import preprocess
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

    def predict_url(self, url: str, *, resize: str | None = None) -> dict[str, float]:
        """Fetch url and classify the image; raises NsfwError subclasses on every failure."""
        classifier = self.classifier  # 503 before the model is ready, before any fetch
        if not self._slots.acquire(blocking=False):
            raise Overloaded(f"{self.settings.max_in_flight} predictions in flight")
        try:
            with self.fetcher.fetch(url) as body, self._compute:
                tensor = preprocess(
                    body,
                    size=classifier.spec.input_size,
                    mode=resize or self.settings.resize,
                    max_pixels=self.settings.max_pixels,
                )
                probabilities = classifier.predict(tensor[None])[0]
        finally:
            self._slots.release()
        return self.scores(probabilities)
