"""Rebuild every artifact under models/ from the npm package nsfwjs@4.4.0, deterministically.

    python -m scripts.build_models [--tarball nsfwjs-4.4.0.tgz] [--out models]

Without --tarball the package is fetched with `npm pack` (a package registry, at build time only)
and its checksum is checked. The steps:

1. read `dist/models/<model>/model.min.js` and its weight shards out of the tarball; each is a
   browserify bundle, so Node evaluates it (the same way nsfwjs loads it) and hands us JSON;
2. dequantize each uint8 weight as tfjs does: value = min + scale * q, in manifest order;
3. `keras.Model.from_config` on the Keras 2.2.4 topology, then assign the weights by layer and
   variable name (the manifest's `depthwise_kernel` is Keras 3's `kernel`);
4. save `model.keras` with its zip timestamps and save date fixed, and convert to `model.tflite`
   with TensorFlow's own converter (the serving artifact, run by LiteRT);
5. write models/MODELS.md with every checksum; tests compare the committed files with it.

TensorFlow is imported only inside the functions that need it (requirements-tf.txt).
"""

from __future__ import annotations

import argparse
import base64
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
from nsfw.model.specs import MODELS, ModelSpec

PACKAGE = "nsfwjs"
PACKAGE_VERSION = "4.4.0"
# sha256 of `npm pack nsfwjs@4.4.0` (npm's own integrity line is sha512; its sha1 is
# 706017d11e44de0803b73a568819f800a50ae470).
PACKAGE_SHA256 = "585cd178f3b994337c4d10a87b080d342fc52f8b9bf0085c4d1f345a3a1c5382"
# Where each served model sits inside the tarball.
PACKAGE_PATHS = {"mobilenet_v2": "package/dist/models/mobilenet_v2"}
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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def dequantize(spec: dict[str, Any], raw: bytes) -> np.ndarray:
    """One manifest entry's bytes -> float32 values, as tfjs-core's io.decodeWeights does."""
    shape = spec["shape"]
    quant = spec.get("quantization")
    if quant is None:
        if spec["dtype"] != "float32":
            raise BuildError(f"{spec['name']}: unsupported dtype {spec['dtype']}")
        return np.frombuffer(raw, "<f4").reshape(shape).copy()
    if quant["dtype"] not in ("uint8", "uint16"):
        raise BuildError(f"{spec['name']}: unsupported quantization {quant['dtype']}")
    q = np.frombuffer(raw, "<u1" if quant["dtype"] == "uint8" else "<u2")
    # tfjs computes q * scale + min in JavaScript doubles and stores the result as float32.
    values = q.astype(np.float64) * quant["scale"] + quant["min"]
    return values.astype(np.float32).reshape(shape)


def read_tfjs_model(model_dir: Path) -> TfjsModel:
    """Evaluate model.min.js and its shards; return topology and dequantized weights."""
    exported = node_exports(model_dir / "model.min.js")
    topology = exported["modelTopology"]
    weights: dict[str, np.ndarray] = {}
    for group in exported["weightsManifest"]:
        blob = b"".join(base64.b64decode(node_exports(model_dir / f"{path}.min.js")) for path in group["paths"])
        offset = 0
        for spec in group["weights"]:
            count = int(np.prod(spec["shape"], dtype=np.int64))
            width = 4 if "quantization" not in spec else np.dtype(spec["quantization"]["dtype"]).itemsize
            size = count * width
            if offset + size > len(blob):
                raise BuildError(f"{spec['name']}: weights end before the manifest does")
            weights[spec["name"]] = dequantize(spec, blob[offset : offset + size])
            offset += size
        if offset != len(blob):
            raise BuildError(f"{len(blob) - offset} trailing bytes after the manifest's weights")
    return TfjsModel(
        model_config=topology["model_config"],
        keras_version=topology.get("keras_version", ""),
        weights=weights,
    )


def manifest_key(layer_name: str, variable_name: str, layer_class: str) -> str:
    """The tfjs manifest name of a Keras 3 variable."""
    if layer_class == "DepthwiseConv2D" and variable_name == "kernel":
        # Keras 2 called the depthwise kernel `depthwise_kernel`; Keras 3 calls it `kernel`.
        variable_name = "depthwise_kernel"
    return f"{layer_name}/{variable_name}"


def build_keras_model(tfjs: TfjsModel) -> Any:
    """Instantiate the topology with Keras 3 and load every weight; all must be used exactly once."""
    import keras

    model = keras.Model.from_config(tfjs.model_config["config"])
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


def convert_tflite(keras_path: Path, tflite_path: Path) -> None:
    """The serving artifact: TensorFlow's converter on the saved Keras model, float32, no quantization."""
    import keras
    import tensorflow as tf

    model = keras.models.load_model(keras_path)
    tflite_path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())


def build_model(tarball: Path, spec: ModelSpec, out_dir: Path, work: Path) -> None:
    model_dir = extract_dir(tarball, PACKAGE_PATHS[spec.name], work / spec.name)
    tfjs = read_tfjs_model(model_dir)
    model = build_keras_model(tfjs)
    if tuple(model.input_shape[1:]) != (spec.input_size, spec.input_size, 3):
        raise BuildError(f"{spec.name}: input {model.input_shape}, spec says {spec.input_size}")
    if model.output_shape[-1] != len(spec.classes):
        raise BuildError(f"{spec.name}: {model.output_shape[-1]} outputs, spec has {len(spec.classes)}")
    save_keras(model, spec.keras_path(out_dir))
    convert_tflite(spec.keras_path(out_dir), spec.tflite_path(out_dir))


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
    for spec in MODELS.values():
        for rel in (spec.keras_file, spec.tflite_file):
            path = out_dir / rel
            rows.append(f"| `{rel}` | {path.stat().st_size} | `{sha256_file(path)}` |")
    template = (Path(__file__).with_name("MODELS.md.in")).read_text()
    return template.format(
        package=PACKAGE,
        version=PACKAGE_VERSION,
        package_sha256=PACKAGE_SHA256,
        checksum_rows="\n".join(rows),
        tool_versions=", ".join(f"{k} {v}" for k, v in versions.items()),
    )


def build_all(tarball: Path, out_dir: Path) -> None:
    check_tarball(tarball)
    with tempfile.TemporaryDirectory() as tmp:
        for spec in MODELS.values():
            build_model(tarball, spec, out_dir, Path(tmp))
    (out_dir / "MODELS.md").write_text(render_models_md(out_dir, tool_versions()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tarball", type=Path, help="nsfwjs-4.4.0.tgz (default: npm pack it)")
    parser.add_argument("--out", type=Path, default=DEFAULT_MODELS_DIR, help="output folder (default: models/)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tarball = args.tarball
        if tarball is None:
            tarball = fetch_package(Path(tmp))
        elif not tarball.is_file():
            parser.error(f"{tarball}: no such file")
        build_all(tarball, args.out)
    print(f"rebuilt {', '.join(MODELS)} into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
