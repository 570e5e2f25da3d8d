"""The parity corpora the tests check against, behind one interface.

- `repo`: tests/data/reference, which travels with the repository (scripts/reference_corpus.py made
  its images, scripts/nsfwjs_reference.py its nsfwjs scores). What is too big to commit is made here:
  the 4096x4096 variants, whose nsfwjs scores are computed live, and the exact tensors nsfwjs builds
  (its resize), also live; both are cached under .cache/nsfwjs-live, keyed by their inputs.
- `shared`: ../shared/reference, a second, larger corpus that exists on the team's machines only.
  When it is there the same tests run over it too; when it is not, it is simply not a parameter.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from scripts import nsfwjs_reference as nr
from scripts import reference_corpus as rc

REPO = Path(__file__).resolve().parents[1]
REPO_REFERENCE = REPO / "tests" / "data" / "reference"
SHARED_REFERENCE = REPO.parent / "shared" / "reference"
LIVE_CACHE = REPO / ".cache" / "nsfwjs-live"
CORPORA = ("repo", "shared") if SHARED_REFERENCE.is_dir() else ("repo",)
# Images whose exact nsfwjs tensors are made live for the repo corpus: a photo, CMYK, an extreme
# aspect ratio, a single pixel, an exact-size image and a 4096x4096 one.
RESIZE_SOURCES = (
    "grace_hopper.jpg",
    "v_astronaut_cmyk.jpg",
    "v_rocket_strip_12x1500.png",
    "v_coffee_1x1.png",
    "v_chelsea_crop224.png",
    "big_astronaut_4096.jpg",
)


@dataclass(frozen=True)
class Tensor:
    """An exact model input as nsfwjs built it, and nsfwjs's output on it."""

    source: str
    x: np.ndarray  # (1, S, S, 3) float32
    expected: np.ndarray  # (5,)


@functools.cache
def big_variants() -> dict[str, bytes]:
    return rc.big_variants(REPO_REFERENCE / "corpus")


def _live(model: str, jobs: list[nr.Job]) -> dict[str, object]:
    """nsfwjs's answers to these jobs, from the cache when the same inputs were run before."""
    key = hashlib.sha256(nr.script_digest().encode() + model.encode())
    for job in jobs:
        key.update(f"{job.name}|{job.op}|{job.array.shape}|{job.array.dtype}".encode())
        key.update(hashlib.sha256(np.ascontiguousarray(job.array).tobytes()).digest())
    folder = LIVE_CACHE / key.hexdigest()[:32]
    if not (folder / "out.json").is_file():
        try:
            found = nr.run(model, jobs)
        except nr.NsfwjsError as error:
            if os.environ.get("CI"):
                pytest.fail(str(error))
            pytest.skip(str(error))
        tmp = folder.with_suffix(".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        plain = {}
        for name, value in found.items():
            if isinstance(value, tuple):  # a resize job: keep the tensor beside the scores
                np.save(tmp / f"{hashlib.sha256(name.encode()).hexdigest()[:16]}.npy", value[0])
                plain[name] = {"tensor": True, "outputs": value[1]}
            else:
                plain[name] = value
        (tmp / "out.json").write_text(json.dumps(plain))
        tmp.replace(folder)
    plain = json.loads((folder / "out.json").read_text())
    out: dict[str, object] = {}
    for name, value in plain.items():
        if isinstance(value, dict) and value.get("tensor"):
            tensor = np.load(folder / f"{hashlib.sha256(name.encode()).hexdigest()[:16]}.npy")
            out[name] = (tensor, value["outputs"])
        else:
            out[name] = value
    return out


@dataclass
class Corpus:
    """One reference folder in ../shared/reference's layout, plus what the repo makes live."""

    name: str
    root: Path
    _json: dict[str, dict] = field(default_factory=dict, repr=False)

    def _read(self, file: str) -> dict:
        if file not in self._json:
            self._json[file] = json.loads((self.root / file).read_text())
        return self._json[file]

    def image_bytes(self, name: str) -> bytes:
        if name in big_variants() and self.name == "repo":
            return big_variants()[name]
        return (self.root / "corpus" / name).read_bytes()

    def images(self, model: str = "mobilenet_v2") -> dict[str, dict]:
        """Per image: format, mode, n_frames, exif_orientation and variants (h, w, rgb_sha256, probs_array)."""
        key = f"images:{model}"
        if key not in self._json:
            if (self.root / f"nsfwjs_{model}.json").is_file():
                images = dict(self._read(f"nsfwjs_{model}.json")["images"])
            else:  # a model this corpus has no scores of (../shared and mobilenet_v2_mid): nsfwjs, live
                names = self._read("nsfwjs_mobilenet_v2.json")["images"]
                images = self._live_images(model, {name: self.image_bytes(name) for name in names})
            if self.name == "repo":
                images.update(self._live_images(model, big_variants()))
            self._json[key] = images
        return self._json[key]

    def _live_images(self, model: str, files: dict[str, bytes]) -> dict[str, dict]:
        jobs, facts = nr.image_jobs(files)
        found = _live(model, jobs)
        for name, info in facts.items():
            for variant, entry in info["variants"].items():
                entry["probs_array"] = found[f"{name}|{variant}"]
        return facts

    def gantman(self) -> dict[str, list[float]]:
        """MobileNetV2 on GantMan's nsfw_detector tensors (Keras load_img, NEAREST), per image."""
        return self._read("nsfwjs_mobilenet_v2_pipelines.json")["pipelines"]["gantman_keras"]

    def synthetic(self, size: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Fixed tensors and nsfwjs's outputs on them (no preprocessing), where this corpus has them."""
        path = self.root / f"nsfwjs_synthetic_{size}.json"
        if not path.is_file():
            return None
        meta = self._read(path.name)
        expected = np.asarray(meta["outputs_batch1"], np.float32)
        if self.name == "repo":
            x = nr.synthetic(size)
            assert hashlib.sha256(x.tobytes()).hexdigest() == meta["meta"]["input_sha256"]
        else:
            x = np.fromfile(self.root / meta["meta"]["input_file"], "<f4").reshape(meta["meta"]["shape"])
        return x, expected

    def synthetic_of(self, model: str) -> tuple[np.ndarray, np.ndarray]:
        """The fixed 224 tensors and nsfwjs `model`'s outputs on them: committed, or made live."""
        fixed = self.synthetic(224)
        assert fixed is not None, "every corpus has the 224x224 fixed tensors"
        x = fixed[0]
        path = self.root / f"nsfwjs_{model}_synthetic_224.json"
        if path.is_file():
            meta = self._read(path.name)
            assert meta["meta"]["input_sha256"] == hashlib.sha256(x.tobytes()).hexdigest()
            return x, np.asarray(meta["outputs_batch1"], np.float32)
        found = _live(model, [nr.Job(f"x{i}", "predict", x[i : i + 1]) for i in range(len(x))])
        return x, np.asarray([found[f"x{i}"][0] for i in range(len(x))], np.float32)  # type: ignore[index]

    def resize_tensors(self, size: int) -> list[Tensor]:
        """The exact tensors nsfwjs built from some images (its decode, /255, resize), with its outputs."""
        if self.name == "shared":
            index = self._read(f"tensors/index_{size}.json")
            return [
                Tensor(
                    e["source_image"],
                    np.fromfile(self.root / "tensors" / e["tensor_file"], "<f4").reshape(e["shape"]),
                    np.asarray(e["predict_on_this_tensor"], np.float32),
                )
                for e in index["tensors"]
            ]
        model = {224: "mobilenet_v2", 299: "inception_v3"}[size]
        jobs = [nr.Job(name, "resize", rc.reference_rgb(self.image_bytes(name))) for name in RESIZE_SOURCES]
        found = _live(model, jobs)
        return [Tensor(name, found[name][0], np.asarray(found[name][1], np.float32)) for name in RESIZE_SOURCES]


@functools.cache
def corpus(name: str) -> Corpus:
    return Corpus(name, REPO_REFERENCE if name == "repo" else SHARED_REFERENCE)
