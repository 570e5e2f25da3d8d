"""The classifier contract and the factory that picks a runtime.

Only `nsfw.model.tensorflow` imports TensorFlow, and only when NSFW_BACKEND=tensorflow asks for it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np

from nsfw.config import ConfigError, Settings
from nsfw.model.specs import MODELS, PRIVATE_DETECTOR, PRIVATE_DETECTOR_SPEC, ModelSpec


class Classifier(Protocol):
    """Set up once per worker, then called many times; `predict` must be safe to call from threads."""

    spec: ModelSpec
    backend: str
    path: Path  # the artifact it loaded (GET /models gives its sha256)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """The model's inputs [N, ...] (nsfw.imaging.recipes.model_input) -> float32 [N, len(classes)] probabilities."""
        ...


class Inference(NamedTuple):
    """One inference's outputs: the probabilities, and the features the model's dense head read."""

    probabilities: np.ndarray  # float32 [N, len(classes)]
    # float32 [N, D]: the penultimate layer (the embedding the learned adapters read), from the same
    # run as the probabilities; None for a runtime or model that does not expose it.
    embeddings: np.ndarray | None


def embedding_bytes(vector: np.ndarray | None) -> bytes | None:
    """One frame's embedding as the cache and the review store keep it: float32, little-endian."""
    return None if vector is None else np.asarray(vector, "<f4").tobytes()


def embedding_of(raw: bytes | None) -> np.ndarray | None:
    """The embedding `embedding_bytes` stored (None stays None)."""
    return None if raw is None else np.frombuffer(raw, "<f4")


def infer(classifier: Classifier, batch: np.ndarray) -> Inference:
    """Probabilities and embeddings in one pass when the classifier offers `infer`; else probabilities alone.

    `infer` is optional in the contract, so a classifier that only predicts (a test's fake, an
    operator's model) still serves; it just gives the adapters nothing to learn from.
    """
    method = getattr(classifier, "infer", None)
    if method is None:
        return Inference(classifier.predict(batch), None)
    result: Inference = method(batch)
    return result


def sha256_file(path: Path) -> str:
    """An artifact's checksum, as models/MODELS.md records it; read in blocks, never whole."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def warm_up(classifier: Classifier) -> None:
    """One dummy batch, so a broken artifact or runtime fails at boot rather than on a request."""
    size = classifier.spec.input_size
    if classifier.spec.preprocessing == PRIVATE_DETECTOR:
        dummy = np.zeros((1, size * size * 3), np.float16)
    else:
        dummy = np.zeros((1, size, size, 3), np.float32)
    probs = classifier.predict(dummy)
    if probs.shape != (1, len(classifier.spec.classes)) or not np.isfinite(probs).all():
        raise RuntimeError(f"{classifier.spec.name}: warm-up gave {probs!r}")


def load_classifier(settings: Settings, name: str | None = None) -> Classifier:
    """Build and warm one model of the catalogue (the default model when name is None)."""
    spec = MODELS.get(name or settings.model)
    if spec is None:
        raise ConfigError(
            f"NSFW_MODEL / NSFW_MODELS: unknown model {name or settings.model!r}; one of {', '.join(MODELS)}"
        )
    classifier: Classifier
    if spec is PRIVATE_DETECTOR_SPEC:
        if settings.private_detector_path is None:
            raise ConfigError("NSFW_MODELS has private_detector: set NSFW_PRIVATE_DETECTOR_PATH to its SavedModel")
        from nsfw.model.tensorflow import SavedModelClassifier

        classifier = SavedModelClassifier(spec, settings.private_detector_path, threads=settings.inference_threads)
    elif "onnxruntime" in spec.artifacts:
        from nsfw.model.onnx import OnnxClassifier

        classifier = OnnxClassifier(spec, settings.models_dir, threads=settings.inference_threads)
    elif settings.backend == "tensorflow":
        from nsfw.model.tensorflow import KerasClassifier

        classifier = KerasClassifier(spec, settings.models_dir, threads=settings.inference_threads)
    else:
        from nsfw.model.litert import LiteRTClassifier

        classifier = LiteRTClassifier(spec, settings.models_dir, threads=settings.inference_threads)
    warm_up(classifier)
    return classifier


def load_classifiers(settings: Settings) -> dict[str, Classifier]:
    """Every served model (NSFW_MODEL, then NSFW_MODELS), loaded and warmed."""
    unknown = [name for name in settings.served_models if name not in MODELS]
    if unknown:
        raise ConfigError(
            f"NSFW_MODELS / NSFW_MODEL: unknown {', '.join(unknown)}; the catalogue is {', '.join(MODELS)}"
        )
    return {name: load_classifier(settings, name) for name in settings.served_models}
