"""The repository's parity corpus: every file accounted for in MANIFEST.tsv, from a permissive source,
and the variants reproduced by scripts/reference_corpus.py from the committed originals."""

from __future__ import annotations

import csv
import hashlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from scripts import nsfwjs_reference as nr
from scripts import reference_corpus as rc
from tests.reference import REPO_REFERENCE, big_variants

CORPUS = REPO_REFERENCE / "corpus"
PERMISSIVE = ("CC0", "public domain", "BSD", "no known copyright restrictions", "matplotlib")
LOSSLESS = (".png", ".gif", ".bmp", ".tif")


def _manifest() -> dict[str, dict[str, str]]:
    with (CORPUS / "MANIFEST.tsv").open() as f:
        return {row["file"]: row for row in csv.DictReader(f, delimiter="\t")}


def test_every_file_is_in_the_manifest_with_its_checksum_and_a_permissive_licence() -> None:
    manifest = _manifest()
    files = {p.name for p in CORPUS.iterdir()} - {"MANIFEST.tsv"}
    assert files == set(manifest) and len(files) >= 60
    for name, row in manifest.items():
        data = (CORPUS / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["sha256"] and len(data) == int(row["bytes"]), name
        assert any(word in row["licence"] for word in PERMISSIVE), (name, row["licence"])
        assert row["source"].startswith(("PyPI scikit-image 0.26.0 ", "PyPI matplotlib 3.11.2 ", "drawn")), name


def test_originals_are_the_pinned_files_of_the_wheels() -> None:
    manifest = _manifest()
    for original in rc.ORIGINALS:
        row = manifest[original.name]
        assert row["kind"] == "original (byte-identical copy)" and row["sha256"] == original.sha256
        assert row["source"] == f"PyPI {original.wheel.package} {original.wheel.version} {original.member}"


def test_the_script_reproduces_every_variant_from_the_committed_originals() -> None:
    """Lossless files byte for byte; lossy ones (JPEG, WebP) by their pixels, since an encoder built for
    another vector unit may round differently (the reference scores belong to the committed bytes)."""
    originals = {o.name: (CORPUS / o.name).read_bytes() for o in rc.ORIGINALS}
    made = rc.variants(originals)
    assert len(made) + len(originals) == len(_manifest())
    for name, data, *_ in made:
        committed = (CORPUS / name).read_bytes()
        if name.endswith(LOSSLESS):
            assert data == committed, name
            continue
        ours, theirs = rc.reference_rgb(data).astype(int), rc.reference_rgb(committed).astype(int)
        assert ours.shape == theirs.shape, name
        assert np.abs(ours - theirs).max() <= 8 and np.abs(ours - theirs).mean() <= 0.5, name


def test_the_corpus_covers_the_cases_the_service_must_read_like_nsfwjs() -> None:
    facts = {name: rc.describe((CORPUS / name).read_bytes()) for name in _manifest()}
    facts.update({name: rc.describe(data) for name, data in big_variants().items()})
    formats = {f["format"] for f in facts.values()}
    assert {"JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"} <= formats
    assert {f["exif_orientation"] for f in facts.values()} >= set(range(1, 9))
    modes = {(f["format"], f["mode"]) for f in facts.values()}
    expected_modes = {("JPEG", "CMYK"), ("JPEG", "L"), ("PNG", "I;16"), ("PNG", "P"), ("PNG", "RGBA")}
    assert expected_modes | {("PNG", "LA"), ("PNG", "1"), ("WEBP", "RGBA"), ("BMP", "P")} <= modes
    animated = {f["format"] for f in facts.values() if f["n_frames"] > 1}
    assert {"GIF", "PNG", "WEBP"} <= animated
    sizes = [f["size"] for f in facts.values()]
    assert min(w * h for w, h in sizes) == 1 and max(w * h for w, h in sizes) == 4096 * 4096
    assert max(max(w / h, h / w) for w, h in sizes) >= 100
    assert {(224, 224), (299, 299)} <= {tuple(s) for s in sizes}
    assert 3_000_000 < len(big_variants()["big_gravel_4096.webp"]) < 6_000_000


@pytest.mark.parametrize("model", ["mobilenet_v2", "inception_v3"])
def test_the_committed_scores_name_every_file_and_the_decode_they_were_fed(model: str) -> None:
    images = json.loads((REPO_REFERENCE / f"nsfwjs_{model}.json").read_text())["images"]
    assert set(images) == set(_manifest())
    for name, info in images.items():
        rgb = rc.reference_rgb((CORPUS / name).read_bytes())
        assert hashlib.sha256(rgb.tobytes()).hexdigest() == info["variants"]["main"]["rgb_sha256"], name
        assert len(info["variants"]["main"]["probs_array"]) == 5
        assert abs(sum(info["variants"]["main"]["probs_array"]) - 1) < 1e-5
        assert ("exif_ignored" in info["variants"]) == (info["exif_orientation"] not in (None, 1)), name


def test_the_fixed_tensors_are_made_from_their_seed() -> None:
    for size in (224, 299):
        meta = json.loads((REPO_REFERENCE / f"nsfwjs_synthetic_{size}.json").read_text())["meta"]
        x = nr.synthetic(size)
        assert list(x.shape) == meta["shape"] and hashlib.sha256(x.tobytes()).hexdigest() == meta["input_sha256"]


def test_reference_rgb_drops_alpha_keeps_stored_colours_and_reads_16_bit_by_the_high_byte() -> None:
    rgba = Image.new("RGBA", (2, 1), (10, 20, 30, 0))
    out = io.BytesIO()
    rgba.save(out, "PNG")
    assert rc.reference_rgb(out.getvalue()).tolist() == [[[10, 20, 30], [10, 20, 30]]]
    grey = rc.png16(np.array([[0x1234, 0xFF01]], np.uint16))
    assert rc.reference_rgb(grey)[..., 0].tolist() == [[0x12, 0xFF]]
