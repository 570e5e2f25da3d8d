"""ONNX Runtime for the .onnx artifacts (open_nsfw) and the lean .npz ones (inception_v3).

A lean artifact is a zip of .npy arrays (written by scripts/build_models.py):
- `skeleton`: the bytes of an ONNX ModelProto whose weight initializers were left out;
- `names`, `affine`: each left-out initializer's name and its (scale, min);
- `w0`, `w1`, ...: its uint8 values, already in ONNX layout.
At load each weight is expanded as tfjs-core expands it (q * scale + min in doubles, then float32)
and appended to the ModelProto as an initializer (the artifact is 23 MB; the float32 model, 90 MB).
Protobuf merges a repeated occurrence of a singular message field (`ModelProto.graph`) into the
first, so each appended piece adds one initializer to the one graph; no onnx package is needed to
serve.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from nsfw.model import Inference
from nsfw.model.specs import ModelSpec

# Protobuf field tags (field number << 3 | wire type) of onnx.proto3.
_MODEL_GRAPH = 7 << 3 | 2
_GRAPH_INITIALIZER = 5 << 3 | 2
_TENSOR_DIMS = 1 << 3 | 0
_TENSOR_DATA_TYPE = 2 << 3 | 0
_TENSOR_NAME = 8 << 3 | 2
_TENSOR_RAW_DATA = 9 << 3 | 2
_FLOAT = 1  # TensorProto.DataType.FLOAT
# The graph outputs of the lean artifacts (scripts/keras_to_onnx.py, scripts/tfjs_graph_to_onnx.py).
PROBABILITIES = "probabilities"
FEATURES = "features"


def dequantize(q: np.ndarray, scale: float, low: float) -> np.ndarray:
    """tfjs-core's decodeWeights: q * scale + min computed in doubles, stored as float32."""
    return (q.astype(np.float64) * scale + low).astype(np.float32)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    return _varint(tag) + _varint(len(payload)) + payload


def initializer_piece(name: str, value: np.ndarray) -> bytes:
    """A serialized ModelProto fragment that adds one float32 initializer to the graph."""
    tensor = b"".join(_varint(_TENSOR_DIMS) + _varint(dim) for dim in value.shape)
    tensor += _varint(_TENSOR_DATA_TYPE) + _varint(_FLOAT)
    tensor += _field(_TENSOR_NAME, name.encode())
    tensor += _field(_TENSOR_RAW_DATA, np.ascontiguousarray(value, "<f4").tobytes())
    return _field(_MODEL_GRAPH, _field(_GRAPH_INITIALIZER, tensor))


def expand_lean(path: Path) -> bytes:
    """The complete ONNX model bytes of a lean artifact."""
    with np.load(path, allow_pickle=False) as lean:
        names, affine = lean["names"], lean["affine"]
        pieces = [lean["skeleton"].tobytes()]
        for i, name in enumerate(names.tolist()):
            scale, low = affine[i]
            pieces.append(initializer_piece(name, dequantize(lean[f"w{i}"], float(scale), float(low))))
    return b"".join(pieces)


def _session_of_lean(path: Path, options: ort.SessionOptions) -> ort.InferenceSession:
    """A session on the expanded model, loaded from a temporary file that is deleted at once.

    Measured for inception_v3 on ONNX Runtime 1.31: a session made from the bytes keeps 85 MB more
    resident than one made from a file (+297 against +212 MB), so the bytes go through TMPDIR.
    """
    with tempfile.TemporaryDirectory(prefix="nsfw-model-") as tmp:
        expanded = Path(tmp) / "model.onnx"
        expanded.write_bytes(expand_lean(path))
        return ort.InferenceSession(str(expanded), options, providers=["CPUExecutionProvider"])


class OnnxClassifier:
    """One session per worker; ONNX Runtime's run is thread-safe, and the service serialises it anyway."""

    backend = "onnxruntime"

    def __init__(self, spec: ModelSpec, models_dir: Path, *, threads: int = 1) -> None:
        self.spec = spec
        self.path = spec.artifact(self.backend, models_dir)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: its warnings are about graph rewrites
        if self.path.suffix == ".npz":
            self._session = _session_of_lean(self.path, options)
        else:
            self._session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        outputs = {o.name: o.shape for o in self._session.get_outputs()}
        width = outputs.get(FEATURES, [None])[-1]
        if isinstance(width, int):
            # The lean GantMan graphs answer `probabilities` and `features` (the embedding the dense
            # head reads); only those classifiers offer `infer` (nsfw.model.infer looks for it).
            self._outputs = [PROBABILITIES, FEATURES]
            self.embedding_size: int = width
            self.infer = self._infer
        else:
            self._outputs = list(outputs)[:1]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        out = self._session.run(self._outputs[:1], {self._input: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.asarray(out[0], dtype=np.float32)

    def _infer(self, batch: np.ndarray) -> Inference:
        """Probabilities and features from one run of the session."""
        probs, features = self._session.run(self._outputs, {self._input: np.ascontiguousarray(batch, dtype=np.float32)})
        return Inference(np.asarray(probs, dtype=np.float32), np.asarray(features, dtype=np.float32))
