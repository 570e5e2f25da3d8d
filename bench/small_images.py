"""What small inputs (avatars) do to the scores: every reference image shrunk to N x N (Lanczos),
then through the service's own decode-and-resize (which upscales it to 224 x 224), against the same
image's nsfwjs scores at full size.

    .venv/bin/python -m bench.small_images
"""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from bench.imageserver import CORPUS
from nsfw.config import RESIZE_MODES, Settings
from nsfw.imaging.decode import decode
from nsfw.imaging.recipes import preprocess
from nsfw.model import load_classifier

SIDES = (80, 128, 160)


def main() -> None:
    classifier = load_classifier(Settings())
    reference = json.loads((CORPUS.parent / "nsfwjs_mobilenet_v2.json").read_text())["images"]
    print("| size | resize | images | median max abs diff | p90 | max | top class changed |")
    print("|---|---|---|---|---|---|---|")
    for side in SIDES:
        for mode in RESIZE_MODES:
            diffs, changed = [], 0
            for name, info in reference.items():
                if info.get("format") == "TIFF":
                    continue
                full = np.array(info["variants"]["main"]["probs_array"])
                image = decode(io.BytesIO((CORPUS / name).read_bytes()), max_pixels=10**8)
                small = image.resize((side, side), Image.Resampling.LANCZOS)
                out = io.BytesIO()
                small.save(out, "PNG")
                tensor = preprocess(out, size=224, mode=mode, max_pixels=10**8)
                probabilities = classifier.predict(tensor[None])[0]
                diffs.append(float(np.abs(probabilities - full).max()))
                changed += int(np.argmax(probabilities) != np.argmax(full))
            print(
                f"| {side}×{side} | {mode} | {len(diffs)} | {np.median(diffs):.3f} | "
                f"{np.percentile(diffs, 90):.3f} | {max(diffs):.3f} | {changed}/{len(diffs)} |"
            )


if __name__ == "__main__":
    main()
