"""The catalogue of models this service can serve: names, files, input sizes and class order."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# GantMan's class names, in the order of the model's softmax output. nsfwjs calls them
# Drawing, Hentai, Neutral, Porn, Sexy; NSFW-FLASK's clients expect these spellings.
GANTMAN_CLASSES: tuple[str, ...] = ("drawings", "hentai", "neutral", "porn", "sexy")


@dataclass(frozen=True)
class ModelSpec:
    """Where a model's artifacts live and what it expects and returns."""

    name: str
    version: str
    input_size: int
    classes: tuple[str, ...]
    # Paths relative to the models directory.
    keras_file: str
    tflite_file: str
    # Provenance, as models/MODELS.md states it.
    source: str = ""
    licence: str = ""

    def keras_path(self, models_dir: Path) -> Path:
        return models_dir / self.keras_file

    def tflite_path(self, models_dir: Path) -> Path:
        return models_dir / self.tflite_file


MOBILENET_V2 = ModelSpec(
    name="mobilenet_v2",
    version="nsfwjs-4.4.0",
    input_size=224,
    classes=GANTMAN_CLASSES,
    keras_file="mobilenet_v2/model.keras",
    tflite_file="mobilenet_v2/model.tflite",
    source="GantMan's NSFW MobileNetV2, rebuilt from npm nsfwjs@4.4.0 (models/MODELS.md)",
    licence="MIT (nsfwjs: Infinite Red; weights: GantMan nsfw_model)",
)

MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (MOBILENET_V2,)}
