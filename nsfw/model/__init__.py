"""The classifier contract and the factory that picks a runtime.

Only `nsfw.model.tensorflow` imports TensorFlow, and only when NSFW_BACKEND=tensorflow asks for it.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from nsfw.config import ConfigError, Settings
from nsfw.model.specs import MODELS, ModelSpec


class Classifier(Protocol):
    """Set up once per worker, then called many times; `predict` must be safe to call from threads."""

    spec: ModelSpec
    backend: str

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """float32 [N, S, S, 3] in [0, 1] -> float32 [N, len(classes)] probabilities."""
        ...


def warm_up(classifier: Classifier) -> None:
    """One dummy batch, so a broken artifact or runtime fails at boot rather than on a request."""
    size = classifier.spec.input_size
    probs = classifier.predict(np.zeros((1, size, size, 3), np.float32))
    if probs.shape != (1, len(classifier.spec.classes)) or not np.isfinite(probs).all():
        raise RuntimeError(f"{classifier.spec.name}: warm-up gave {probs!r}")


def load_classifier(settings: Settings) -> Classifier:
    """Build and warm the classifier the settings ask for."""
    spec = MODELS.get(settings.model)
    if spec is None:
        raise ConfigError(f"NSFW_MODEL={settings.model!r}: must be one of {', '.join(MODELS)}")
    classifier: Classifier
    if settings.backend == "tensorflow":
        from nsfw.model.tensorflow import KerasClassifier

        classifier = KerasClassifier(spec, settings.models_dir, threads=settings.inference_threads)
    else:
        from nsfw.model.litert import LiteRTClassifier

        classifier = LiteRTClassifier(spec, settings.models_dir, threads=settings.inference_threads)
    warm_up(classifier)
    return classifier
