"""nsfwjs's own outputs on images that are not in ../shared: the reference of tests/test_deploy.py's
`?model=inception_v3` check. Writes tests/data/unseen/ (images and nsfwjs_inception_v3.json).

    mkdir /tmp/nsfwjs && (cd /tmp/nsfwjs && npm install @tensorflow/tfjs@4.22.0 nsfwjs@4.4.0)
    python -m scripts.nsfwjs_reference --node-modules /tmp/nsfwjs/node_modules

The images are made here, deterministically: four drawn with numpy (gradients, skin-toned blobs,
noise, odd sizes) and four derived from ../shared/reference/corpus photos (mirrored, cropped,
resized, re-encoded), so none is a file of ../shared. Each is decoded with Pillow the way the service
decodes it (nsfw.imaging.decode), and the RGB pixels go to nsfwjs 4.4.0's InceptionV3 in Node
(tfjs 4.22.0, CPU backend) as an int32 tensor through `model.classify`, as ../shared/reference/README.md describes.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from nsfw.imaging import decode

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "data" / "unseen"
CORPUS = REPO.parent / "shared" / "reference" / "corpus"
NSFWJS_CLASSES = ("Drawing", "Hentai", "Neutral", "Porn", "Sexy")

_NODE = r"""
const fs = require("fs");
const tf = require("@tensorflow/tfjs");
const nsfwjs = require("nsfwjs");
(async () => {
  await tf.setBackend("cpu");
  const model = await nsfwjs.load("InceptionV3", { size: 299 });
  const jobs = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
  const out = {};
  for (const job of jobs) {
    const image = tf.tensor3d(Int32Array.from(fs.readFileSync(job.rgb)), [job.height, job.width, 3], "int32");
    const found = await model.classify(image, 5);
    image.dispose();
    out[job.name] = Object.fromEntries(found.map((p) => [p.className, p.probability]));
  }
  fs.writeFileSync(process.argv[3], JSON.stringify(out));  // stdout carries tfjs's banner
})();
"""


def _drawn(seed: int, width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * rng.uniform(80, 255, 3)
    for _ in range(6):  # skin-toned and coloured blobs
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(20, min(width, height) / 2)
        tone = rng.choice([np.array([224, 172, 140]), np.array([141, 85, 36]), rng.uniform(0, 255, 3)])
        mask = ((y - cy) ** 2 + (x - cx) ** 2 < r**2)[..., None]
        rgb = np.where(mask, tone, rgb)
    rgb = rgb + rng.normal(0, 8, rgb.shape)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def _derived(name: str, box: tuple[float, float, float, float], size: tuple[int, int]) -> Image.Image:
    img = Image.open(CORPUS / name).convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    w, h = img.size
    crop = img.crop((int(box[0] * w), int(box[1] * h), int(box[2] * w), int(box[3] * h)))
    return crop.resize(size, Image.Resampling.LANCZOS)


def make_images() -> dict[str, bytes]:
    images = {
        "drawn_640x480.jpg": _drawn(1, 640, 480),
        "drawn_300x500.jpg": _drawn(2, 300, 500),
        "drawn_299x299.png": _drawn(3, 299, 299),
        "drawn_1200x800.jpg": _drawn(4, 1200, 800),
        "lighthouse_mirrored.jpg": _derived("068_lighthouse.jpg", (0.1, 0.05, 0.9, 0.8), (512, 384)),
        "hopper_crop.jpg": _derived("018_grace_hopper.jpg", (0.15, 0.0, 0.85, 0.7), (350, 420)),
        "coffee_wide.jpg": _derived("004_coffee.png", (0.0, 0.2, 1.0, 0.8), (700, 260)),
        "horse_small.jpg": _derived("008_horse.png", (0.05, 0.05, 0.95, 0.95), (180, 150)),
    }
    out = {}
    for name, img in images.items():
        buffer = io.BytesIO()
        img.save(buffer, format="PNG" if name.endswith(".png") else "JPEG", quality=88)
        out[name] = buffer.getvalue()
    return out


def nsfwjs_scores(images: dict[str, bytes], node_modules: Path) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        jobs = []
        for i, (name, data) in enumerate(images.items()):
            rgb = np.asarray(decode(io.BytesIO(data), max_pixels=50_000_000), dtype=np.uint8)
            path = Path(tmp) / f"{i}.rgb"
            path.write_bytes(rgb.tobytes())
            jobs.append({"name": name, "rgb": str(path), "height": rgb.shape[0], "width": rgb.shape[1]})
        (Path(tmp) / "jobs.json").write_text(json.dumps(jobs))
        script = Path(tmp) / "run.js"
        script.write_text(_NODE)
        done = subprocess.run(
            ["node", str(script), str(Path(tmp) / "jobs.json"), str(Path(tmp) / "out.json")],
            capture_output=True,
            env={"NODE_PATH": str(node_modules), "PATH": os.environ["PATH"]},
        )
        if done.returncode:
            raise SystemExit(f"node failed: {done.stderr.decode()[-2000:]}")
        found = json.loads((Path(tmp) / "out.json").read_text())
    return {name: [found[name][c] for c in NSFWJS_CLASSES] for name in images}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--node-modules", type=Path, required=True)
    args = parser.parse_args(argv)
    images = make_images()
    scores = nsfwjs_scores(images, args.node_modules)
    OUT.mkdir(parents=True, exist_ok=True)
    for name, data in images.items():
        (OUT / name).write_bytes(data)
    meta = {
        "what": "nsfwjs 4.4.0 InceptionV3 (tfjs 4.22.0, cpu backend, Node) on images not in ../shared",
        "made_by": "python -m scripts.nsfwjs_reference",
        "decoder": "nsfw.imaging.decode (Pillow), int32 RGB to model.classify",
        "classes_in_index_order": list(NSFWJS_CLASSES),
    }
    (OUT / "nsfwjs_inception_v3.json").write_text(json.dumps({"meta": meta, "probs": scores}, indent=1) + "\n")
    print(f"wrote {len(images)} images and their nsfwjs scores to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
