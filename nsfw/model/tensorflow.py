"""TensorFlow runtime (requirements-tf.txt): mobilenet_v2's .keras artifact (NSFW_BACKEND=tensorflow)
and the operator's private_detector SavedModel.

The only module that imports TensorFlow. It costs ~500 MB RSS and seconds of start-up per process,
so it is the reference and fallback path, not the default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from nsfw.config import ConfigError
from nsfw.model import Inference
from nsfw.model.specs import ModelSpec


class KerasClassifier:
    """The Keras model called directly (not `model.predict`, which builds a tf.data pipeline per call)."""

    backend = "tensorflow"

    def __init__(self, spec: ModelSpec, models_dir: Path, *, threads: int = 1) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import keras
        import tensorflow as tf

        _set_threads(tf, threads)
        self.spec = spec
        self.path = spec.artifact(self.backend, models_dir)
        self._model = keras.models.load_model(self.path, compile=False)
        # The same layers answering the probabilities and the Dense-128 features (what the final
        # Dense reads through its Dropout, the identity at inference): one pass for both.
        features = [layer for layer in self._model.layers if isinstance(layer, keras.layers.Dense)][-2]
        self.embedding_size: int = int(features.units)
        both = keras.Model(self._model.inputs[0], [self._model.outputs[0], features.output])
        self._call = tf.function(
            lambda x: both(x, training=False),
            input_signature=[tf.TensorSpec([None, spec.input_size, spec.input_size, 3], tf.float32)],
        )

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.infer(batch).probabilities

    def infer(self, batch: np.ndarray) -> Inference:
        probs, features = self._call(np.asarray(batch, dtype=np.float32))
        return Inference(np.asarray(probs, dtype=np.float32), np.asarray(features, dtype=np.float32))


def _set_threads(tf: Any, threads: int) -> None:
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        pass  # process-wide and fixed once TensorFlow has run; a worker sets it first


class SavedModelClassifier:
    """Bumble's private detector: a TF2 SavedModel the operator provides (NSFW_PRIVATE_DETECTOR_PATH).

    Called as Bumble's inference.py calls it, `model(batch)` on float16 [N, 480 * 480 * 3]; row i of
    the answer is softmax [lewd, not_lewd].
    """

    backend = "tensorflow"

    def __init__(self, spec: ModelSpec, path: Path, *, threads: int = 1) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        try:
            import tensorflow as tf
        except ImportError:
            raise ConfigError("private_detector needs TensorFlow: install requirements-tf.txt") from None

        _set_threads(tf, threads)
        if not path.is_dir():
            raise ConfigError(f"NSFW_PRIVATE_DETECTOR_PATH={str(path)!r}: not a SavedModel folder")
        self.spec = spec
        self.path = path / "saved_model.pb"
        self._tf = tf
        self._model = tf.saved_model.load(str(path))

    def predict(self, batch: np.ndarray) -> np.ndarray:
        out = self._model(self._tf.constant(np.asarray(batch, dtype=np.float16)))
        return np.asarray(out, dtype=np.float32).reshape(len(batch), len(self.spec.classes))
