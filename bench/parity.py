"""How close every runtime is to nsfwjs 4.4.0, per corpus: the figures behind the parity tests.

    NSFWJS_NODE_MODULES=.cache/nsfwjs/node_modules .venv/bin/python -m bench.parity

For each corpus (tests/data/reference, and ../shared/reference where it exists) it prints the largest
|difference| and the count checked: fixed tensors (LiteRT, TensorFlow, inception_v3), the exact
tensors nsfwjs built (our resize, and inception_v3 on them), every reference image through our decode
and resize (mobilenet_v2 on LiteRT, both resize modes, and inception_v3). The tests assert the bounds
(tests/test_model.py, tests/test_models.py, tests/test_parity.py, tests/test_imaging.py); this only
reports. Needs requirements-tf.txt for the TensorFlow row, and nsfwjs in Node for the live parts.
"""

from __future__ import annotations

import io
import sys

import numpy as np

from nsfw.config import Settings
from nsfw.imaging.decode import decode
from nsfw.imaging.recipes import preprocess
from nsfw.imaging.resize import resize_nsfwjs
from nsfw.model import load_classifier
from tests.reference import CORPORA, Corpus, corpus

MAX_PIXELS = 40_000_000


def _worst(rows: list[float]) -> str:
    return f"{max(rows):.1e} ({len(rows)})" if rows else "-"


def _per_row(got: np.ndarray, expected: np.ndarray) -> list[float]:
    return [float(d) for d in np.abs(got - expected).max(axis=1)]


def report(reference: Corpus) -> list[tuple[str, str]]:
    litert = load_classifier(Settings(load_in_background=False))
    inception = load_classifier(Settings(), "inception_v3")
    rows: list[tuple[str, str]] = []
    fixed = reference.synthetic(224)
    if fixed is not None:
        x, expected = fixed
        rows.append(("mobilenet_v2 LiteRT, fixed 224 tensors", _worst(_per_row(litert.predict(x), expected))))
        try:
            tf = load_classifier(Settings(backend="tensorflow", load_in_background=False))
            rows.append(("mobilenet_v2 TensorFlow, fixed 224 tensors", _worst(_per_row(tf.predict(x), expected))))
        except Exception as error:  # noqa: BLE001 - TensorFlow is optional here
            rows.append(("mobilenet_v2 TensorFlow, fixed 224 tensors", f"not run ({type(error).__name__})"))
    fixed = reference.synthetic(299)
    if fixed is not None:
        x, expected = fixed
        rows.append(("inception_v3, fixed 299 tensors", _worst(_per_row(inception.predict(x), expected))))
    resized = []
    for t in reference.resize_tensors(224):
        rgb = np.asarray(decode(io.BytesIO(reference.image_bytes(t.source)), max_pixels=MAX_PIXELS))
        resized.append(float(np.abs(resize_nsfwjs(rgb, 224) - t.x.reshape(224, 224, 3)).max()))
    rows.append(("our resize vs nsfwjs's 224 tensors", _worst(resized)))
    rows.append(
        (
            "inception_v3 on nsfwjs's 299 tensors",
            _worst(
                [float(np.abs(inception.predict(t.x)[0] - t.expected).max()) for t in reference.resize_tensors(299)]
            ),
        )
    )
    for label, model, classifier, size in (
        ("mobilenet_v2 LiteRT, every image (nsfwjs resize)", "mobilenet_v2", litert, 224),
        ("inception_v3, every image", "inception_v3", inception, 299),
    ):
        diffs = []
        for name, info in reference.images(model).items():
            if info["format"] == "TIFF":
                continue
            x = preprocess(io.BytesIO(reference.image_bytes(name)), size=size, mode="nsfwjs", max_pixels=MAX_PIXELS)
            diffs.append(float(np.abs(classifier.predict(x[None])[0] - info["variants"]["main"]["probs_array"]).max()))
        rows.append((label, _worst(diffs)))
    images = reference.images()
    gantman = []
    for name, probs in reference.gantman().items():
        if images[name]["format"] == "TIFF":
            continue
        rotated = images[name]["exif_orientation"] not in (None, 1)
        x = preprocess(
            io.BytesIO(reference.image_bytes(name)),
            size=224,
            mode="gantman",
            max_pixels=MAX_PIXELS,
            apply_exif=not rotated,
        )
        gantman.append(float(np.abs(litert.predict(x[None])[0] - probs).max()))
    rows.append(("mobilenet_v2 LiteRT, every image (gantman resize)", _worst(gantman)))
    return rows


def main() -> int:
    for name in CORPORA:
        print(f"\n## corpus `{name}`\n\n| check | max \\|diff\\| (count) |\n|---|---|")
        for label, value in report(corpus(name)):
            print(f"| {label} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
