"""TensorFlow/Keras runtime for the .keras artifact (NSFW_BACKEND=tensorflow; requirements-tf.txt).

The only module that imports TensorFlow. It costs ~500 MB RSS and seconds of start-up per process,
so it is the reference and fallback path, not the default.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from nsfw.model.specs import ModelSpec


class KerasClassifier:
    """The Keras model called directly (not `model.predict`, which builds a tf.data pipeline per call)."""

    backend = "tensorflow"

    def __init__(self, spec: ModelSpec, models_dir: Path, *, threads: int = 1) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import keras
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:
            pass  # process-wide and fixed once TensorFlow has run; a worker sets it first
        self.spec = spec
        self._model = keras.models.load_model(spec.keras_path(models_dir), compile=False)
        self._call = tf.function(
            lambda x: self._model(x, training=False),
            input_signature=[tf.TensorSpec([None, spec.input_size, spec.input_size, 3], tf.float32)],
        )

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._call(np.asarray(batch, dtype=np.float32)), dtype=np.float32)
