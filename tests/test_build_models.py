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


def _tarball() -> Path | None:
    path = os.environ.get("TEST_NSFWJS_TARBALL")
    return Path(path) if path and Path(path).is_file() else None


@needs_node
@pytest.mark.tensorflow
@pytest.mark.slow
def test_rebuild_from_the_tarball_reproduces_the_committed_artifacts(tmp_path: Path) -> None:
    tarball = _tarball()
    if tarball is None:
        if os.environ.get("CI"):
            pytest.fail("TEST_NSFWJS_TARBALL is not set; scripts/test fetches it")
        pytest.skip("set TEST_NSFWJS_TARBALL to nsfwjs-4.4.0.tgz (scripts/test fetches it)")
    bm.build_all(tarball, tmp_path)
    for rel in ("mobilenet_v2/model.keras", "mobilenet_v2/model.tflite"):
        rebuilt = hashlib.sha256((tmp_path / rel).read_bytes()).hexdigest()
        committed = hashlib.sha256((REPO / "models" / rel).read_bytes()).hexdigest()
        assert rebuilt == committed, rel
    assert (tmp_path / "MODELS.md").read_text() == (REPO / "models" / "MODELS.md").read_text()


def test_a_wrong_tarball_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "nsfwjs-4.4.0.tgz"
    fake.write_bytes(b"not the package")
    with pytest.raises(bm.BuildError, match="sha256"):
        bm.check_tarball(fake)
