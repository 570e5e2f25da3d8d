"""LiteRT (ai-edge-litert) runtime for the .tflite artifact: the default serving path, no TensorFlow.

Chosen by measurement (`taskset -c 0 python -m bench.runtimes`): 5.3 ms per image and 72 MB peak RSS,
against 6.1 ms and 97 MB for ONNX Runtime (14.8 ms, 583 MB for TensorFlow); outputs within 3.6e-7 of nsfwjs.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

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
        self._output = self._interpreter.get_output_details()[0]["index"]
        self._lock = threading.Lock()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        out = np.empty((batch.shape[0], len(self.spec.classes)), np.float32)
        with self._lock:
            # One image per invoke keeps the tensors allocated once; on one core a bigger batch
            # gains nothing and would reallocate on every size change.
            for i in range(batch.shape[0]):
                self._interpreter.set_tensor(self._input, batch[i : i + 1])
                self._interpreter.invoke()
                out[i] = self._interpreter.get_tensor(self._output)[0]
        return out
