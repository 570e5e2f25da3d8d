"""LiteRT (ai-edge-litert) runtime for the .tflite artifact: the default serving path, no TensorFlow.

Chosen by measurement (`taskset -c 0 python -m bench.runtimes`): 5.3 ms per image and 72 MB peak RSS,
against 6.1 ms and 97 MB for ONNX Runtime (14.8 ms, 583 MB for TensorFlow); outputs within 3.6e-7 of nsfwjs.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from nsfw.model import Inference
from nsfw.model.specs import ModelSpec


class LiteRTClassifier:
    """One interpreter per worker; a lock serialises invocations (the interpreter is not re-entrant)."""

    backend = "litert"

    def __init__(self, spec: ModelSpec, models_dir: Path, *, threads: int = 1) -> None:
        self.spec = spec
        self.path = spec.artifact(self.backend, models_dir)
        self._interpreter = Interpreter(model_path=str(self.path), num_threads=threads)
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]["index"]
        # Two outputs (scripts/build_models.py): the softmax and the Dense-128 features. Told apart
        # by their width, not by their position, which the converter does not promise.
        outputs = {int(d["shape"][-1]): d["index"] for d in self._interpreter.get_output_details()}
        classes = len(spec.classes)
        features = [width for width in outputs if width != classes]
        if classes not in outputs or len(features) != 1 or len(outputs) != 2:
            raise RuntimeError(f"{self.path}: outputs of widths {sorted(outputs)}, expected {classes} and the features")
        self._output, self._features = outputs[classes], outputs[features[0]]
        self.embedding_size: int = features[0]
        self._lock = threading.Lock()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.infer(batch).probabilities

    def infer(self, batch: np.ndarray) -> Inference:
        """Probabilities and the Dense-128 features (the embedding), from the same invocation."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        probs = np.empty((batch.shape[0], len(self.spec.classes)), np.float32)
        embeddings = np.empty((batch.shape[0], self.embedding_size), np.float32)
        with self._lock:
            # One image per invoke keeps the tensors allocated once; on one core a bigger batch
            # gains nothing and would reallocate on every size change.
            for i in range(batch.shape[0]):
                self._interpreter.set_tensor(self._input, batch[i : i + 1])
                self._interpreter.invoke()
                probs[i] = self._interpreter.get_tensor(self._output)[0]
                embeddings[i] = self._interpreter.get_tensor(self._features)[0]
        return Inference(probs, embeddings)
