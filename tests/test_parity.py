"""Bytes -> our decode and resize -> model, against nsfwjs 4.4.0 on every reference image (<= 1e-3).

Each test runs once per corpus (tests/reference.py): the repository's own, and ../shared/reference
where it exists.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

from nsfw import errors
from nsfw.config import Settings
from nsfw.imaging.recipes import preprocess
from nsfw.model import Classifier, load_classifier
from tests.reference import Corpus

TOLERANCE = 1e-3
MAX_PIXELS = 40_000_000
# The repository's corpus has 66 images the service reads and 2 made at test time; ../shared's 61.
MIN_IMAGES = 60


def _scores(classifier: Classifier, data: bytes, mode: str, apply_exif: bool = True) -> np.ndarray:
    x = preprocess(io.BytesIO(data), size=224, mode=mode, max_pixels=MAX_PIXELS, apply_exif=apply_exif)
    return classifier.predict(x[None])[0]


def _check_all(classifier: Classifier, reference: Corpus) -> float:
    worst, checked = 0.0, 0
    for name, info in reference.images().items():
        data = reference.image_bytes(name)
        if info["format"] == "TIFF":  # outside the allow-list: refused, by design
            with pytest.raises(errors.UnsupportedImageFormat):
                _scores(classifier, data, "nsfwjs")
            continue
        diff = np.abs(_scores(classifier, data, "nsfwjs") - info["variants"]["main"]["probs_array"]).max()
        assert diff <= TOLERANCE, name
        worst = max(worst, float(diff))
        checked += 1
    assert checked >= MIN_IMAGES
    return worst


def test_nsfwjs_mode_matches_nsfwjs_on_every_reference_image(litert: Classifier, reference: Corpus) -> None:
    assert _check_all(litert, reference) <= TOLERANCE


def test_gantman_mode_matches_gantman_pipeline_on_every_reference_image(litert: Classifier, reference: Corpus) -> None:
    images = reference.images()
    expected = reference.gantman()
    assert len(expected) >= MIN_IMAGES - 5
    for name, probs in expected.items():
        info = images[name]
        if info["format"] == "TIFF":
            continue
        # GantMan's pipeline never applied EXIF orientation; ours does in every mode, so for rotated
        # files the reference is reproduced with rotation off, and the default rotates.
        rotated = info["exif_orientation"] not in (None, 1)
        diff = np.abs(_scores(litert, reference.image_bytes(name), "gantman", apply_exif=not rotated) - probs).max()
        assert diff <= TOLERANCE, name


def test_rotated_images_score_as_their_upright_version(litert: Classifier, reference: Corpus) -> None:
    rotated = 0
    for name, info in reference.images().items():
        if info["exif_orientation"] in (None, 1):
            continue
        data = reference.image_bytes(name)
        upright = _scores(litert, data, "nsfwjs")
        assert np.abs(upright - info["variants"]["main"]["probs_array"]).max() <= TOLERANCE
        sideways = _scores(litert, data, "nsfwjs", apply_exif=False)
        assert np.abs(sideways - info["variants"]["exif_ignored"]["probs_array"]).max() <= TOLERANCE
        rotated += 1
    assert rotated >= 1


@pytest.mark.tensorflow
@pytest.mark.slow
def test_tensorflow_backend_matches_nsfwjs_on_every_reference_image(reference: Corpus) -> None:
    classifier = load_classifier(Settings(backend="tensorflow", load_in_background=False))
    assert _check_all(classifier, reference) <= TOLERANCE
