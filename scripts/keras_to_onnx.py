"""A Keras 2.2.4 layers model with tfjs uint8 weights -> a lean ONNX artifact that keeps them uint8.

Used by scripts/build_models.py for InceptionV3: its float32 weights are ~90 MB, but the nsfwjs
package stores them as ~22 MB of uint8 (value = min + scale * q per tensor). The artifact holds the
ONNX graph without its weight initializers, plus each weight's uint8 tensor (already in ONNX layout)
and its (scale, min); nsfw/model/onnx.py expands them at load, exactly as tfjs does, and hands ONNX
Runtime the complete model. Measured with ONNX Runtime 1.31 on one core: expanding in the graph
instead (Cast/Mul/Add nodes that the session constant-folds) costs 560 MB resident, against
225 MB for plain float32 initializers, for the same 75 ms per image.

Only the layer types and options the nsfwjs models use are translated; anything else is a
TranslationError, not a silent approximation. The graph works in NCHW (ONNX's layout) between a
transpose of the NHWC input and one back before Flatten, so the Dense weights keep Keras's order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from nsfw.model.onnx import dequantize

OPSET = 17
IR_VERSION = 8  # what onnxruntime >= 1.14 reads; newer IR versions add nothing this graph uses


class TranslationError(Exception):
    """The Keras config uses a layer or option this translator does not handle."""


@dataclass(frozen=True)
class QuantizedWeight:
    """One tfjs weight as stored: uint8 values, and the affine map back to float."""

    q: np.ndarray  # uint8, in the Keras variable's shape
    min: float
    scale: float

    def dequantize(self) -> np.ndarray:
        """tfjs-core's decodeWeights: q * scale + min in doubles, stored as float32."""
        return dequantize(self.q, self.scale, self.min)


@dataclass(frozen=True)
class LeanModel:
    """The ONNX ModelProto without its weights, and the weights it needs, uint8, in ONNX layout."""

    skeleton: bytes
    weights: dict[str, QuantizedWeight]


class _Graph:
    """Accumulates nodes, small initializers and the weights left out of the graph."""

    def __init__(self, weights: Mapping[str, QuantizedWeight]) -> None:
        from onnx import helper

        self.helper = helper
        self.weights = weights
        self.used: set[str] = set()
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.lean: dict[str, QuantizedWeight] = {}

    def node(self, op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        self.nodes.append(self.helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def constant(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def weight(self, key: str, perm: list[int] | None = None) -> str:
        """The float32 weight `key`: an initializer left out of the graph, expanded at load."""
        if key not in self.weights:
            raise TranslationError(f"no weights for {key}")
        self.used.add(key)
        w = self.weights[key]
        # Transposing the integers is exact: dequantization is elementwise.
        q = w.q if perm is None else np.ascontiguousarray(w.q.transpose(perm))
        name = key.replace("/", "_")
        self.lean[name] = QuantizedWeight(q=q, min=w.min, scale=w.scale)
        return name


def _same_pads(kernel: list[int], strides: list[int]) -> list[int]:
    """TensorFlow's SAME padding for stride 1: (k - 1) split with the smaller half first."""
    if any(s != 1 for s in strides):
        raise TranslationError(f"SAME padding with strides {strides} is not translated")
    before = [(k - 1) // 2 for k in kernel]
    after = [k - 1 - b for k, b in zip(kernel, before, strict=True)]
    return before + after


def _pads(config: Mapping[str, Any], kernel: list[int], strides: list[int]) -> list[int]:
    if config["padding"] == "valid":
        return [0, 0, 0, 0]
    if config["padding"] == "same":
        return _same_pads(kernel, strides)
    raise TranslationError(f"padding {config['padding']!r}")


def _activation(g: _Graph, name: str, x: str, activation: str) -> str:
    if activation == "linear":
        return x
    if activation == "relu":
        return g.node("Relu", [x], f"{name}_relu")
    if activation == "softmax":
        return g.node("Softmax", [x], f"{name}_softmax", axis=-1)
    raise TranslationError(f"{name}: activation {activation!r}")


def _layer(g: _Graph, layer: Mapping[str, Any], inputs: list[str]) -> str:
    """One Keras layer -> nodes; returns the name of its output (NCHW for 4-D tensors)."""
    kind, config, name = layer["class_name"], layer["config"], layer["name"]
    x = inputs[0]
    if kind == "Conv2D":
        if config["dilation_rate"] != [1, 1] or config["data_format"] != "channels_last":
            raise TranslationError(f"{name}: dilation or data format")
        kernel, strides = config["kernel_size"], config["strides"]
        args = [x, g.weight(f"{name}/kernel", perm=[3, 2, 0, 1])]  # HWIO -> OIHW
        if config["use_bias"]:
            args.append(g.weight(f"{name}/bias"))
        y = g.node("Conv", args, name, kernel_shape=kernel, strides=strides, pads=_pads(config, kernel, strides))
        return _activation(g, name, y, config["activation"])
    if kind == "BatchNormalization":
        if config["axis"] not in (3, -1):
            raise TranslationError(f"{name}: axis {config['axis']}")
        mean = g.weight(f"{name}/moving_mean")
        channels = g.weights[f"{name}/moving_mean"].q.shape
        gamma = (
            g.weight(f"{name}/gamma") if config["scale"] else g.constant(f"{name}_ones", np.ones(channels, np.float32))
        )
        beta = (
            g.weight(f"{name}/beta")
            if config["center"]
            else g.constant(f"{name}_zeros", np.zeros(channels, np.float32))
        )
        variance = g.weight(f"{name}/moving_variance")
        return g.node("BatchNormalization", [x, gamma, beta, mean, variance], name, epsilon=float(config["epsilon"]))
    if kind == "Activation":
        return _activation(g, name, x, config["activation"])
    if kind in ("MaxPooling2D", "AveragePooling2D"):
        kernel, strides = config["pool_size"], config["strides"]
        op = "MaxPool" if kind == "MaxPooling2D" else "AveragePool"
        # AveragePool's count_include_pad=0 (the default) divides by the pixels inside the image, as TF does.
        return g.node(op, [x], name, kernel_shape=kernel, strides=strides, pads=_pads(config, kernel, strides))
    if kind == "Concatenate":
        if config["axis"] not in (3, -1):
            raise TranslationError(f"{name}: axis {config['axis']}")
        return g.node("Concat", inputs, name, axis=1)
    if kind == "Flatten":
        nhwc = g.node("Transpose", [x], f"{name}_nhwc", perm=[0, 2, 3, 1])
        return g.node("Flatten", [nhwc], name, axis=1)
    if kind == "Dense":
        y = g.node("MatMul", [x, g.weight(f"{name}/kernel")], f"{name}_matmul")
        if config["use_bias"]:
            y = g.node("Add", [y, g.weight(f"{name}/bias")], name)
        return _activation(g, name, y, config["activation"])
    if kind == "Dropout":
        return x  # inference
    raise TranslationError(f"{name}: layer type {kind}")


def translate(model_config: Mapping[str, Any], weights: Mapping[str, QuantizedWeight], *, graph_name: str) -> LeanModel:
    """The Keras functional config (`model_config["config"]`) and its weights -> LeanModel.

    Input `input`: float32 [N, S, S, 3] NHWC in [0, 1], as the Keras model takes it; outputs
    `probabilities`: float32 [N, classes], and `features`: float32 [N, D], what the output layer reads
    (for GantMan's heads the Dense-128 relu output; Dropout is the identity at inference).
    """
    config = model_config["config"]
    (input_name, _, _), *more_inputs = config["input_layers"]
    (output_name, _, _), *more_outputs = config["output_layers"]
    if more_inputs or more_outputs:
        raise TranslationError("only single-input, single-output models are translated")
    g = _Graph(weights)
    tensors: dict[str, str] = {}
    input_shape: list[Any] = []
    for layer in config["layers"]:
        if layer["class_name"] == "InputLayer":
            input_shape = ["N", *layer["config"]["batch_input_shape"][1:]]
            tensors[layer["name"]] = g.node("Transpose", ["input"], "input_nchw", perm=[0, 3, 1, 2])
            continue
        (inbound,) = layer["inbound_nodes"]  # each layer is called once in these models
        tensors[layer["name"]] = _layer(g, layer, [tensors[source] for source, _, _, _ in inbound])
    g.node("Identity", [tensors[output_name]], "probabilities")
    head = next(layer for layer in config["layers"] if layer["name"] == output_name)
    ((features, _, _, _),) = head["inbound_nodes"][0]
    g.node("Identity", [tensors[features]], "features")
    width = g.weights[f"{output_name}/kernel"].q.shape[0] if head["class_name"] == "Dense" else None
    return finish(g, graph_name, input_shape, None, width, "nsfw-service scripts/keras_to_onnx.py")


def finish(
    g: _Graph, graph_name: str, input_shape: list[Any], classes: int | None, width: int | None, producer: str
) -> LeanModel:
    """The translated graph as a LeanModel: input `input`, outputs `probabilities` [N, classes] and
    `features` [N, width] (None: left unnamed in the skeleton); every weight must have been used."""
    from onnx import TensorProto, helper

    unused = set(g.weights) - g.used
    if unused:
        raise TranslationError(f"weights not used by the graph: {sorted(unused)}")
    graph = helper.make_graph(
        g.nodes,
        graph_name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, input_shape)],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes]),
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", width]),
        ],
        initializer=g.initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=producer, ir_version=IR_VERSION
    )
    return LeanModel(skeleton=model.SerializeToString(), weights=g.lean)
