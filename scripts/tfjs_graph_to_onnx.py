"""A tfjs graph model (TF.js converter 1.x, GraphDef nodes) with uint8 weights -> a lean ONNX artifact.

Used by scripts/build_models.py for nsfwjs's MobileNetV2Mid (`dist/models/mobilenet_v2_mid/`): a
frozen TF-Hub MobileNetV2 (alpha 1.4) with batch normalisation already folded into `_bn_offset`
constants, plus a dense head. Like scripts/keras_to_onnx.py it keeps the package's uint8 weights as
they are (nsfw/model/onnx.py expands them at load, exactly as tfjs does), and translates only the ops
and options this graph uses; anything else is a TranslationError:

- `Mul` / `Sub` by scalar constants (the graph's own [0, 1] -> [-1, 1] scaling, read from its weights);
- `_FusedConv2D` (BiasAdd, or BiasAdd + Relu6) -> Conv with bias (+ Clip 0..6);
- `FusedDepthwiseConv2dNative` -> Conv with group = channels;
- `AddV2` -> Add; `AvgPool` -> AveragePool; `Squeeze` of a 1x1 map -> Flatten;
- `_FusedMatMul` (BiasAdd) -> MatMul + Add; `Softmax`; `Identity`.

TensorFlow's SAME padding is asymmetric for stride 2 (the extra row and column go after), so every
pad is computed explicitly from the tracked spatial size. The graph works in NCHW between a transpose
of the NHWC input and the 1x1 feature map. Outputs: `probabilities` and `features` (the tensor the
final MatMul reads, the embedding).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import numpy as np

from scripts.keras_to_onnx import LeanModel, QuantizedWeight, TranslationError, _Graph, finish


def _attr_ints(node: Mapping[str, Any], key: str) -> list[int]:
    return [int(i) for i in node["attr"][key]["list"].get("i", [])]


def _attr_str(node: Mapping[str, Any], key: str) -> str:
    return base64.b64decode(node["attr"][key]["s"]).decode()


def _fused_ops(node: Mapping[str, Any]) -> list[str]:
    return [base64.b64decode(s).decode() for s in node["attr"]["fused_ops"]["list"].get("s", [])]


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """TensorFlow's SAME padding along one axis: (before, after, output size); the odd pixel goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2, out


def _conv_geometry(
    node: Mapping[str, Any], hw: tuple[int, int], kernel: tuple[int, int]
) -> tuple[list[int], list[int], tuple[int, int]]:
    """ONNX strides and pads of a TF NHWC convolution or pool, and its output size."""
    if _attr_str(node, "data_format") != "NHWC":
        raise TranslationError(f"{node['name']}: data format {_attr_str(node, 'data_format')}")
    if "dilations" in node["attr"] and _attr_ints(node, "dilations") != [1, 1, 1, 1]:
        raise TranslationError(f"{node['name']}: dilations")
    n, sh, sw, c = _attr_ints(node, "strides")
    if (n, c) != (1, 1):
        raise TranslationError(f"{node['name']}: strides {[n, sh, sw, c]}")
    padding = _attr_str(node, "padding")
    if padding == "SAME":
        top, bottom, oh = same_pads(hw[0], kernel[0], sh)
        left, right, ow = same_pads(hw[1], kernel[1], sw)
        return [sh, sw], [top, left, bottom, right], (oh, ow)
    if padding == "VALID":
        return [sh, sw], [0, 0, 0, 0], ((hw[0] - kernel[0]) // sh + 1, (hw[1] - kernel[1]) // sw + 1)
    raise TranslationError(f"{node['name']}: padding {padding}")


def translate_graph(
    nodes: list[Mapping[str, Any]], weights: Mapping[str, QuantizedWeight], *, graph_name: str, prefix: str = ""
) -> LeanModel:
    """The graph's nodes (in order) and its quantized weights -> LeanModel; `prefix` is cut from names."""

    def short(name: str) -> str:
        return name[len(prefix) :] if prefix and name.startswith(prefix) else name

    g = _Graph({short(k): v for k, v in weights.items()})
    consts = {short(n["name"]) for n in nodes if n["op"] == "Const"}
    tensors: dict[str, str] = {}
    spatial: dict[str, tuple[int, int]] = {}  # NCHW tensors: (H, W)
    channels: dict[str, int] = {}
    input_shape: list[Any] = []
    relu6: tuple[str, str] | None = None
    features = probabilities = None
    width = classes = 0

    def source(name: str) -> str:
        if name.startswith("^") or (":" in name and not name.endswith(":0")):
            raise TranslationError(f"input {name}")
        key = short(name.removesuffix(":0"))
        if key not in tensors:
            raise TranslationError(f"{key} is used before it is made")
        return key

    def weight_shape(name: str) -> tuple[int, ...]:
        key = short(name)
        if key not in consts or key not in g.weights:
            raise TranslationError(f"{key}: not a constant with weights")
        return tuple(g.weights[key].q.shape)

    for node in nodes:
        op, name = node["op"], short(node["name"])
        inputs = node.get("input", [])
        if op == "Const":
            continue
        if op == "Placeholder":
            dims = [int(d["size"]) for d in node["attr"]["shape"]["shape"]["dim"]]
            if len(dims) != 4 or dims[3] != 3 or input_shape:
                raise TranslationError(f"{name}: input {dims}")
            input_shape = ["N", *dims[1:]]
            # To NCHW at once: the scalar Mul and Sub that follow are elementwise, the same either way.
            tensors[name] = g.node("Transpose", ["input"], "input_nchw", perm=[0, 3, 1, 2])
            spatial[name], channels[name] = (dims[1], dims[2]), 3
            continue
        if op in ("Mul", "Sub"):
            x, y = inputs
            if short(x) in consts:
                x, y = y, x
                if op == "Sub":
                    raise TranslationError(f"{name}: constant minus tensor")
            if weight_shape(y) != ():
                raise TranslationError(f"{name}: {op} by a non-scalar")
            x = source(x)
            tensors[name] = g.node(op, [tensors[x], g.weight(short(y))], name)
            spatial[name], channels[name] = spatial[x], channels[x]
            continue
        if op in ("_FusedConv2D", "FusedDepthwiseConv2dNative"):
            x, kernel, bias = inputs
            x = source(x)
            fused = _fused_ops(node)
            if fused not in (["BiasAdd"], ["BiasAdd", "Relu6"]) or int(node["attr"]["num_args"]["i"]) != 1:
                raise TranslationError(f"{name}: fused ops {fused}")
            kh, kw, cin, cout = weight_shape(kernel)
            if cin != channels[x] and op == "_FusedConv2D":
                raise TranslationError(f"{name}: {cin} input channels, {channels[x]} arrive")
            strides, pads, out = _conv_geometry(node, spatial[x], (kh, kw))
            if op == "_FusedConv2D":
                w, group, out_channels = g.weight(short(kernel), perm=[3, 2, 0, 1]), 1, cout  # HWIO -> OIHW
            else:
                if cout != 1 or cin != channels[x]:
                    raise TranslationError(f"{name}: depthwise kernel {(kh, kw, cin, cout)}")
                w, group, out_channels = g.weight(short(kernel), perm=[2, 3, 0, 1]), cin, cin  # HWC1 -> C1HW
            if weight_shape(bias) != (out_channels,):
                raise TranslationError(f"{name}: bias {weight_shape(bias)}")
            args = [tensors[x], w, g.weight(short(bias))]
            y = g.node("Conv", args, name, kernel_shape=[kh, kw], strides=strides, pads=pads, group=group)
            if fused[-1] == "Relu6":
                if relu6 is None:
                    low, high = np.array(0, np.float32), np.array(6, np.float32)
                    relu6 = (g.constant("relu6_min", low), g.constant("relu6_max", high))
                y = g.node("Clip", [y, *relu6], f"{name}_relu6")
            tensors[name], spatial[name], channels[name] = y, out, out_channels
            continue
        if op == "AddV2":
            a, b = (source(i) for i in inputs)
            if (spatial[a], channels[a]) != (spatial[b], channels[b]):
                raise TranslationError(f"{name}: adds {spatial[a], channels[a]} and {spatial[b], channels[b]}")
            tensors[name] = g.node("Add", [tensors[a], tensors[b]], name)
            spatial[name], channels[name] = spatial[a], channels[a]
            continue
        if op == "AvgPool":
            (x,) = (source(i) for i in inputs)
            n, kh, kw, c = _attr_ints(node, "ksize")
            if (n, c) != (1, 1):
                raise TranslationError(f"{name}: ksize {[n, kh, kw, c]}")
            strides, pads, out = _conv_geometry(node, spatial[x], (kh, kw))
            if pads != [0, 0, 0, 0]:
                raise TranslationError(f"{name}: padded average pool")
            tensors[name] = g.node("AveragePool", [tensors[x]], name, kernel_shape=[kh, kw], strides=strides)
            spatial[name], channels[name] = out, channels[x]
            continue
        if op == "Squeeze":
            (x,) = (source(i) for i in inputs)
            if _attr_ints(node, "squeeze_dims") != [1, 2] or spatial[x] != (1, 1):
                raise TranslationError(f"{name}: squeezes {_attr_ints(node, 'squeeze_dims')} of {spatial[x]}")
            tensors[name] = g.node("Flatten", [tensors[x]], name, axis=1)  # [N, C, 1, 1] -> [N, C]
            channels[name] = channels[x]
            continue
        if op == "_FusedMatMul":
            x, kernel, bias = inputs
            x = source(x)
            attr = node["attr"]
            if _fused_ops(node) != ["BiasAdd"] or attr["transpose_a"]["b"] or attr["transpose_b"]["b"]:
                raise TranslationError(f"{name}: fused ops {_fused_ops(node)} or transposes")
            units_in, units = weight_shape(kernel)
            if units_in != channels[x] or weight_shape(bias) != (units,) or features is not None:
                raise TranslationError(f"{name}: {units_in} -> {units} on {channels[x]} features")
            features, width = tensors[x], channels[x]
            y = g.node("MatMul", [features, g.weight(short(kernel))], f"{name}_matmul")
            tensors[name] = g.node("Add", [y, g.weight(short(bias))], name)
            channels[name] = units
            continue
        if op == "Softmax":
            (x,) = (source(i) for i in inputs)
            tensors[name] = g.node("Softmax", [tensors[x]], name, axis=-1)
            channels[name] = channels[x]
            continue
        if op == "Identity":
            (x,) = (source(i) for i in inputs)
            if probabilities is not None:
                raise TranslationError(f"{name}: a second output")
            probabilities = g.node("Identity", [tensors[x]], "probabilities")
            tensors[name], channels[name] = probabilities, channels[x]
            classes = channels[x]
            continue
        raise TranslationError(f"{name}: op {op}")
    if probabilities is None or features is None:
        raise TranslationError("the graph has no Identity output after a dense head")
    g.node("Identity", [features], "features")
    return finish(g, graph_name, input_shape, classes, width, "nsfw-service scripts/tfjs_graph_to_onnx.py")
