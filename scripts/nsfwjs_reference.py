"""nsfwjs 4.4.0's own outputs, made in Node: the reference scores of the parity tests.

    (cd .cache/nsfwjs && cp ../../scripts/nsfwjs/package*.json . && npm ci)    # scripts/test does this
    python -m scripts.nsfwjs_reference --corpus     # tests/data/reference/*.json from its corpus/
    python -m scripts.nsfwjs_reference --mid        # only the MobileNetV2Mid (graph model) files
    python -m scripts.nsfwjs_reference --unseen     # tests/data/unseen/ (the ?model=inception_v3 check)

nsfwjs runs on TensorFlow.js 4.22.0's wasm backend, single-threaded, with the models bundled in its npm
package, all pinned by scripts/nsfwjs/package-lock.json. WebAssembly's float arithmetic (SIMD128
included) is specified bit for bit, so the outputs do not depend on the CPU. The wasm backend, not
the CPU one: ../shared/reference was made on it, and the CPU backend's resizeBilinear differs from it
by up to 3.5e-5 (measured on grace_hopper.jpg), which is more than the 1e-6 the resize check allows. Three operations:
- `infer`: RGB pixels (decoded on plain Pillow by scripts.reference_corpus.reference_rgb, not by the
  service) as an int32 tensor through `model.infer`, nsfwjs's own preprocessing (/255, bilinear
  align-corners resize unless already S×S) and model;
- `predict`: a float32 tensor straight into the model (no preprocessing; for MobileNetV2Mid, a tfjs
  graph model, `GraphModel.predict`, whose graph scales [0, 1] to [-1, 1] itself);
- `resize`: nsfwjs's preprocessing alone; the float32 tensor it builds comes back, and the model's
  output on exactly that tensor.
The test run uses the same functions live, for the images too big to commit (tests/reference.py).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from scripts import reference_corpus as rc

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIR = REPO / "scripts" / "nsfwjs"
DEFAULT_NODE_MODULES = REPO / ".cache" / "nsfwjs" / "node_modules"
UNSEEN_DIR = REPO / "tests" / "data" / "unseen"
NSFWJS_CLASSES = ("Drawing", "Hentai", "Neutral", "Porn", "Sexy")
MODELS = {"mobilenet_v2": ("MobileNetV2", 224), "inception_v3": ("InceptionV3", 299)}
# nsfwjs's third bundled model, a graph model (nsfwjs loads it with {type: "graph"} itself); its
# reference files carry the model's name, so the mobilenet_v2 ones keep theirs.
MID_MODELS = {"mobilenet_v2_mid": ("MobileNetV2Mid", 224)}
# The fixed tensors: uniform in [0, 1), numpy default_rng(seed).random(shape) as float32 (the same on
# every machine: PCG64 and its float conversion are integer arithmetic).
SYNTHETIC = {224: (0, (8, 224, 224, 3)), 299: (1, (4, 299, 299, 3))}

_NODE = r"""
const fs = require("fs");
const path = require("path");
const tf = require("@tensorflow/tfjs");
require("@tensorflow/tfjs-backend-wasm");
const nsfwjs = require("nsfwjs");
(async () => {
  if (!(await tf.setBackend("wasm"))) throw new Error("the wasm backend did not start");
  await tf.ready();
  const [name, size, jobsFile, outDir] = process.argv.slice(2);
  const S = Number(size);
  const model = await nsfwjs.load(name, { size: S });
  const jobs = JSON.parse(fs.readFileSync(jobsFile, "utf8"));
  const out = {};
  const pixels = (job) => tf.tensor3d(Int32Array.from(fs.readFileSync(job.input)), job.shape, "int32");
  for (const job of jobs) {
    if (job.op === "infer") {
      const image = pixels(job);
      const probs = model.infer(image);
      out[job.name] = Array.from(await probs.data());
      tf.dispose([image, probs]);
    } else if (job.op === "predict") {
      const raw = fs.readFileSync(job.input);
      const floats = new Float32Array(raw.buffer, raw.byteOffset, raw.length / 4);
      const x = tf.tensor(floats, job.shape, "float32");
      const y = model.model.predict(x);
      out[job.name] = await y.array();
      tf.dispose([x, y]);
    } else if (job.op === "resize") {
      // nsfwjs's infer(), step by step (dist/cjs/core.js), so the tensor itself can be kept.
      const image = pixels(job);
      const batched = tf.tidy(() => {
        const normalized = image.toFloat().div(model.normalizationOffset);
        const same = image.shape[0] === S && image.shape[1] === S;
        const resized = same ? normalized : tf.image.resizeBilinear(normalized, [S, S], true);
        return resized.reshape([1, S, S, 3]);
      });
      const y = model.model.predict(batched);
      const data = await batched.data();
      const bytes = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
      fs.writeFileSync(path.join(outDir, job.name + ".f32"), bytes);
      out[job.name] = (await y.array())[0];
      tf.dispose([image, batched, y]);
    } else {
      throw new Error("unknown op " + job.op);
    }
  }
  fs.writeFileSync(path.join(outDir, "out.json"), JSON.stringify(out));  // stdout carries tfjs's banner
})().catch((e) => { console.error(e); process.exit(1); });
"""


class NsfwjsError(RuntimeError):
    """Node or nsfwjs is missing, or the script failed."""


@dataclass(frozen=True)
class Job:
    """One input for nsfwjs: `rgb` is uint8 (H, W, 3) for infer/resize; `tensor` float32 for predict."""

    name: str
    op: str
    array: np.ndarray


def node_modules() -> Path:
    found = Path(os.environ.get("NSFWJS_NODE_MODULES", DEFAULT_NODE_MODULES))
    if not (found / "nsfwjs" / "package.json").is_file():
        raise NsfwjsError(f"nsfwjs is not installed in {found}: ./scripts/test installs it (npm ci)")
    return found


def script_digest() -> str:
    """What a cached result depends on besides its inputs: the Node script and the pinned packages."""
    digest = hashlib.sha256(_NODE.encode())
    digest.update((PACKAGE_DIR / "package-lock.json").read_bytes())
    return digest.hexdigest()


def run(model: str, jobs: Iterable[Job], modules: Path | None = None) -> dict[str, object]:
    """nsfwjs's outputs per job name; a `resize` job answers (tensor, outputs)."""
    name, size = {**MODELS, **MID_MODELS}[model]
    jobs = list(jobs)
    modules = modules or node_modules()
    with tempfile.TemporaryDirectory() as tmp:
        listed = []
        for i, job in enumerate(jobs):
            path = Path(tmp) / f"{i}.bin"
            if job.op == "predict":
                path.write_bytes(np.ascontiguousarray(job.array, "<f4").tobytes())
            else:
                path.write_bytes(np.ascontiguousarray(job.array, np.uint8).tobytes())
            listed.append({"name": job.name, "op": job.op, "input": str(path), "shape": list(job.array.shape)})
        (Path(tmp) / "jobs.json").write_text(json.dumps(listed))
        (Path(tmp) / "run.js").write_text(_NODE)
        done = subprocess.run(
            ["node", str(Path(tmp) / "run.js"), name, str(size), str(Path(tmp) / "jobs.json"), tmp],
            capture_output=True,
            env={"NODE_PATH": str(modules), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
        if done.returncode:
            raise NsfwjsError(f"node failed: {done.stderr.decode(errors='replace')[-2000:]}")
        found: dict[str, object] = json.loads((Path(tmp) / "out.json").read_text())
        for job in jobs:
            if job.op == "resize":
                tensor = np.fromfile(Path(tmp) / f"{job.name}.f32", "<f4").reshape(1, size, size, 3)
                found[job.name] = (tensor, found[job.name])
    return found


def synthetic(size: int) -> np.ndarray:
    seed, shape = SYNTHETIC[size]
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def node_version() -> str:
    return subprocess.run(["node", "--version"], capture_output=True, text=True, check=True).stdout.strip()


def _meta(model: str, what: str) -> dict[str, object]:
    name, size = {**MODELS, **MID_MODELS}[model]
    return {
        "peer": "nsfwjs 4.4.0 (npm, scripts/nsfwjs/package-lock.json)",
        "tfjs": "4.22.0",
        "backend": "wasm (single-threaded, SIMD)",
        "node": node_version(),
        "model": name,
        "input_size": size,
        "what": what,
        "decoder": f"Pillow {rc.PILLOW}, scripts.reference_corpus.reference_rgb",
        "classes_in_index_order": list(NSFWJS_CLASSES),
        "made_by": "python -m scripts.nsfwjs_reference --corpus",
    }


def image_jobs(files: dict[str, bytes]) -> tuple[list[Job], dict[str, dict[str, object]]]:
    """The infer jobs for images (variant main, plus exif_ignored for rotated files) and their facts."""
    jobs, facts = [], {}
    for name, data in files.items():
        info = rc.describe(data)
        variants = {"main": rc.reference_rgb(data)}
        if info["exif_orientation"] not in (None, 1):
            variants["exif_ignored"] = rc.reference_rgb(data, exif=False)
        facts[name] = {
            "format": info["format"],
            "mode": info["mode"],
            "n_frames": info["n_frames"],
            "exif_orientation": info["exif_orientation"],
            "variants": {
                variant: {
                    "h": rgb.shape[0],
                    "w": rgb.shape[1],
                    "rgb_sha256": hashlib.sha256(rgb.tobytes()).hexdigest(),
                }
                for variant, rgb in variants.items()
            },
        }
        jobs += [Job(f"{name}|{variant}", "infer", rgb) for variant, rgb in variants.items()]
    return jobs, facts


def image_reference(model: str, files: dict[str, bytes], modules: Path | None = None) -> dict[str, dict]:
    """Per image, per variant: h, w, rgb_sha256 and nsfwjs's probs_array (the shared/ layout)."""
    jobs, facts = image_jobs(files)
    found = run(model, jobs, modules)
    for name, info in facts.items():
        for variant, entry in info["variants"].items():  # type: ignore[union-attr]
            entry["probs_array"] = found[f"{name}|{variant}"]
    return facts


def gantman_skipped(data: bytes) -> str | None:
    """Why GantMan's pipeline is not a reference for our `gantman` mode on this file, if it is not."""
    if Image.open(io.BytesIO(data)).mode.startswith("I"):
        return "16-bit grey: Keras's convert('RGB') clips it to white; our decode keeps the high byte"
    if rc.describe(data)["format"] == "TIFF":
        return "TIFF is refused by the service"
    return None


def write_corpus_reference(modules: Path | None = None, reference_dir: Path = rc.REFERENCE_DIR) -> None:
    corpus = reference_dir / "corpus"
    files = {p.name: p.read_bytes() for p in sorted(corpus.iterdir()) if p.name != "MANIFEST.tsv"}
    for model in MODELS:
        images = image_reference(model, files, modules)
        meta = _meta(model, "nsfwjs infer() on every corpus image (RGB from reference_rgb)")
        write_json(reference_dir / f"nsfwjs_{model}.json", {"meta": meta, "images": images})
    gantman = {name: rc.gantman_tensor(data) for name, data in files.items() if gantman_skipped(data) is None}
    found = run("mobilenet_v2", [Job(name, "predict", x[None]) for name, x in gantman.items()], modules)
    pipelines = {
        "meta": _meta("mobilenet_v2", "model.predict on GantMan's nsfw_detector tensors (Keras load_img, NEAREST)"),
        "pipelines": {"gantman_keras": {name: found[name][0] for name in gantman}},  # type: ignore[index]
        "skipped": {name: why for name, data in files.items() if (why := gantman_skipped(data))},
    }
    write_json(reference_dir / "nsfwjs_mobilenet_v2_pipelines.json", pipelines)
    for model, (_, size) in MODELS.items():
        seed, shape = SYNTHETIC[size]
        x = synthetic(size)
        found = run(model, [Job(f"x{i}", "predict", x[i : i + 1]) for i in range(len(x))], modules)
        outputs = [found[f"x{i}"][0] for i in range(len(x))]  # type: ignore[index]
        meta = {
            **_meta(model, "model.predict on the exact tensors, one at a time, no preprocessing"),
            "generator": f"numpy default_rng({seed}).random({shape}).astype(float32)",
            "shape": list(shape),
            "input_sha256": hashlib.sha256(x.tobytes()).hexdigest(),
        }
        write_json(reference_dir / f"nsfwjs_synthetic_{size}.json", {"meta": meta, "outputs_batch1": outputs})


def synthetic_reference(model: str, modules: Path | None = None) -> list[list[float]]:
    """nsfwjs `model`'s outputs on the fixed tensors of its input size, one at a time."""
    _, size = {**MODELS, **MID_MODELS}[model]
    x = synthetic(size)
    found = run(model, [Job(f"x{i}", "predict", x[i : i + 1]) for i in range(len(x))], modules)
    return [found[f"x{i}"][0] for i in range(len(x))]  # type: ignore[index]


def write_mid_reference(modules: Path | None = None, reference_dir: Path = rc.REFERENCE_DIR) -> None:
    """nsfwjs_mobilenet_v2_mid.json (every corpus image) and its fixed-tensor outputs."""
    corpus = reference_dir / "corpus"
    files = {p.name: p.read_bytes() for p in sorted(corpus.iterdir()) if p.name != "MANIFEST.tsv"}
    for model, (_, size) in MID_MODELS.items():
        images = image_reference(model, files, modules)
        meta = _meta(model, "nsfwjs infer() on every corpus image (RGB from reference_rgb)")
        write_json(reference_dir / f"nsfwjs_{model}.json", {"meta": meta, "images": images})
        seed, shape = SYNTHETIC[size]
        meta = {
            **_meta(model, "model.predict on the exact tensors, one at a time, no preprocessing"),
            "generator": f"numpy default_rng({seed}).random({shape}).astype(float32)",
            "shape": list(shape),
            "input_sha256": hashlib.sha256(synthetic(size).tobytes()).hexdigest(),
        }
        outputs = synthetic_reference(model, modules)
        write_json(reference_dir / f"nsfwjs_{model}_synthetic_{size}.json", {"meta": meta, "outputs_batch1": outputs})


def write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")


# --- tests/data/unseen: eight images for the deployed ?model=inception_v3 check, not in the corpus.


def _derived(name: str, box: tuple[float, float, float, float], size: tuple[int, int]) -> Image.Image:
    img = Image.open(rc.CORPUS_DIR / name).convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    w, h = img.size
    crop = img.crop((int(box[0] * w), int(box[1] * h), int(box[2] * w), int(box[3] * h)))
    return crop.resize(size, Image.Resampling.LANCZOS)


def unseen_images() -> dict[str, bytes]:
    images = {
        "drawn_640x480.jpg": rc.drawn(1, 640, 480),
        "drawn_300x500.jpg": rc.drawn(2, 300, 500),
        "drawn_299x299.png": rc.drawn(3, 299, 299),
        "drawn_1200x800.jpg": rc.drawn(4, 1200, 800),
        "rocket_mirrored.jpg": _derived("rocket.jpg", (0.1, 0.05, 0.9, 0.8), (512, 384)),
        "hopper_crop.jpg": _derived("grace_hopper.jpg", (0.15, 0.0, 0.85, 0.7), (350, 420)),
        "coffee_wide.jpg": _derived("coffee.png", (0.0, 0.2, 1.0, 0.8), (700, 260)),
        "astronaut_small.jpg": _derived("astronaut.png", (0.05, 0.05, 0.95, 0.95), (180, 150)),
    }
    return {
        name: rc.encode(img, "PNG" if name.endswith(".png") else "JPEG", quality=88) for name, img in images.items()
    }


def write_unseen(modules: Path | None = None) -> None:
    images = unseen_images()
    found = run("inception_v3", [Job(name, "infer", rc.reference_rgb(data)) for name, data in images.items()], modules)
    UNSEEN_DIR.mkdir(parents=True, exist_ok=True)
    for stale in UNSEEN_DIR.iterdir():
        stale.unlink()
    for name, data in images.items():
        (UNSEEN_DIR / name).write_bytes(data)
    meta = {
        "what": "nsfwjs 4.4.0 InceptionV3 (tfjs 4.22.0, wasm backend, Node) on images not in the corpora",
        "made_by": "python -m scripts.nsfwjs_reference --unseen",
        "decoder": "scripts.reference_corpus.reference_rgb (Pillow), int32 RGB to model.infer",
        "classes_in_index_order": list(NSFWJS_CLASSES),
    }
    write_json(UNSEEN_DIR / "nsfwjs_inception_v3.json", {"meta": meta, "probs": {n: found[n] for n in images}})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--node-modules", type=Path, help=f"default {DEFAULT_NODE_MODULES}")
    parser.add_argument("--corpus", action="store_true", help="write tests/data/reference/*.json")
    parser.add_argument("--unseen", action="store_true", help="write tests/data/unseen/")
    parser.add_argument("--mid", action="store_true", help="write tests/data/reference/nsfwjs_mobilenet_v2_mid*.json")
    args = parser.parse_args(argv)
    if not (args.corpus or args.unseen or args.mid):
        parser.error("say --corpus, --mid, --unseen or several")
    if args.corpus:
        write_corpus_reference(args.node_modules)
        print(f"wrote the nsfwjs reference of {rc.CORPUS_DIR}")
    if args.corpus or args.mid:
        write_mid_reference(args.node_modules)
        print(f"wrote the nsfwjs MobileNetV2Mid reference of {rc.CORPUS_DIR}")
    if args.unseen:
        write_unseen(args.node_modules)
        print(f"wrote {UNSEEN_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
