"""The models one worker serves: by name, the default first, with the checksums of what was loaded.
Empty until the loader has set them (/health answers 503 meanwhile)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from nsfw import metrics
from nsfw.errors import ModelNotServed, Unavailable, UnknownModel
from nsfw.model import Classifier, sha256_file
from nsfw.model.specs import MODELS, ModelSpec


class Registry:
    def __init__(self, models_dir: Path) -> None:
        self.models_dir = models_dir
        # Served models by name, the default first; empty until loaded.
        self._classifiers: dict[str, Classifier] = {}
        self._sha256: dict[Path, str] = {}

    def set(self, classifiers: Mapping[str, Classifier]) -> None:
        """Called once, when the models are loaded and warmed (maybe from the loader thread)."""
        self._classifiers = dict(classifiers)
        for classifier in self._classifiers.values():
            spec = classifier.spec
            metrics.MODEL_INFO.labels(spec.name, spec.version, self.artifact_sha256(classifier)).set(1)

    def set_one(self, classifier: Classifier) -> None:
        self.set({classifier.spec.name: classifier})

    @property
    def ready(self) -> bool:
        return bool(self._classifiers)

    @property
    def served(self) -> dict[str, Classifier]:
        """Every served model by name, the default first; 503 `unavailable` while they load."""
        if not self._classifiers:
            raise Unavailable("model still loading")
        return self._classifiers

    @property
    def default(self) -> Classifier:
        return next(iter(self.served.values()))

    def named(self, name: str | None) -> Classifier:
        """The served model called name (the default for None); 400 for any other name."""
        if name is None:
            return self.default
        if name not in MODELS:
            raise UnknownModel(f"model={name!r}")
        classifier = self.served.get(name)
        if classifier is None:
            raise ModelNotServed(f"model={name!r}; served: {', '.join(self.served)}")
        return classifier

    def artifact_sha256(self, classifier: Classifier) -> str:
        """sha256 of the file the runtime loaded (.tflite, .keras, .onnx, lean .npz, saved_model.pb)."""
        return self._sha256_of(classifier.path)

    def bundled_sha256(self, spec: ModelSpec) -> str | None:
        """sha256 of a model's default artifact in NSFW_MODELS_DIR (None when it brings none, or it is missing)."""
        if not spec.artifacts:
            return None
        path = spec.artifact(next(iter(spec.artifacts)), self.models_dir)
        return self._sha256_of(path) if path.is_file() else None

    def _sha256_of(self, path: Path) -> str:
        if path not in self._sha256:
            self._sha256[path] = sha256_file(path)
        return self._sha256[path]
