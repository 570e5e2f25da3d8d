"""Model-exact resizes: a decoded frame (RGB, RGBA read as its RGB, or L read as grey RGB: what
decode.to_model_image gives) -> float32 pixels, sampled as each model's own preprocessing samples them:
nsfwjs's `tf.image.resizeBilinear(alignCorners=true)`, Keras's nearest `load_img`, and TensorFlow 2's
half-pixel bilinear `tf.image.resize`. Only the pixels a resize samples are widened to float, never the
whole image. Nothing here knows a model: recipes.py picks the resize for each.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

Axis = tuple[np.ndarray, np.ndarray, np.ndarray]


def _as_rgb(samples: np.ndarray) -> np.ndarray:
    """Sampled pixels of an RGB, RGBA or L image as RGB (few: after sampling, never the whole image)."""
    if samples.ndim == 2:
        return np.repeat(samples[..., None], 3, axis=2)
    return samples[..., :3] if samples.shape[2] == 4 else samples


def resize_by_mode(img: Image.Image, size: int, mode: str) -> np.ndarray:
    """A frame -> float32 size x size x 3 in [0, 1], by the named resize mode (config.RESIZE_MODES)."""
    if mode == "nsfwjs":
        return resize_nsfwjs_image(img, size)
    if mode == "gantman":
        return resize_gantman(img, size)
    raise ValueError(f"unknown resize mode {mode!r}")


def resize_nsfwjs(rgb: np.ndarray, size: int) -> np.ndarray:
    """uint8 HxWx3 -> float32 size x size x 3 in [0, 1], as nsfwjs builds its input.

    `x / 255` then `tf.image.resizeBilinear(x, [size, size], alignCorners=true)`: output pixel i
    samples input coordinate i * (H - 1) / (size - 1), interpolating its four neighbours, with no
    antialiasing. Only the 4 x size x size samples are gathered, never the whole image as float.
    """
    height, width = rgb.shape[:2]
    if height == size and width == size:
        return _as_rgb(rgb).astype(np.float32) / np.float32(255)
    return _bilinear(rgb, _sample_axis(height, size), _sample_axis(width, size))


def resize_nsfwjs_image(img: Image.Image, size: int) -> np.ndarray:
    """resize_nsfwjs of an RGB image, reading only the rows it samples when they are few."""
    width, height = img.size
    if (width, height) == (size, size):
        return resize_nsfwjs(np.asarray(img), size)
    return _sampled_bilinear(img, _sample_axis(height, size), _sample_axis(width, size))


def resize_gantman(img: Image.Image, size: int) -> np.ndarray:
    """RGB image -> float32 size x size x 3, as Keras `load_img(target_size=...)` then `/ 255`."""
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.NEAREST)
    return _as_rgb(np.asarray(img)).astype(np.float32) / np.float32(255)


def resize_tf_bilinear(img: Image.Image, height: int, width: int) -> np.ndarray:
    """RGB image -> float32 height x width x 3 in [0, 255], as TensorFlow 2's bilinear `tf.image.resize`
    (half-pixel centres, no antialiasing), reading only the rows it samples when they are few."""
    in_width, in_height = img.size
    return _sampled_bilinear(
        img, _half_pixel_axis(in_height, height), _half_pixel_axis(in_width, width), normalise=False
    )


def _sampled_bilinear(img: Image.Image, y_axis: Axis, x_axis: Axis, *, normalise: bool = True) -> np.ndarray:
    """Bilinear resize of an RGB image by per-axis samples, reading only the rows it samples.

    A 6000x4000 photo would otherwise be copied whole into a 72 MB array (and Pillow's tobytes
    doubles that for a moment) to sample 448 of its rows and columns; the result is identical.
    """
    width, height = img.size
    fy, y0, y1 = y_axis
    rows = np.unique(np.concatenate([y0, y1]))
    if 2 * len(rows) > height:
        return _bilinear(np.asarray(img), y_axis, x_axis, normalise=normalise)
    fx, x0, x1 = x_axis
    cols = np.unique(np.concatenate([x0, x1]))
    # Only the sampled pixels of each sampled row are kept: (rows x cols x 3) bytes, under 1 MB.
    samples = np.empty((len(rows), len(cols), 3), np.uint8)
    # Neighbouring rows come in runs (y1 is y0 + 1): one crop per run, not per row.
    starts = np.flatnonzero(np.diff(rows, prepend=-2) != 1)
    for start, end in zip(starts.tolist(), [*starts[1:].tolist(), len(rows)], strict=True):
        top = int(rows[start])
        band = np.asarray(img.crop((0, top, width, top + end - start)))
        samples[start:end] = _as_rgb(band.take(cols, axis=1, mode="clip"))
    y_axis = (fy, np.searchsorted(rows, y0), np.searchsorted(rows, y1))
    x_axis = (fx, np.searchsorted(cols, x0), np.searchsorted(cols, x1))
    return _bilinear(samples, y_axis, x_axis, normalise=normalise)


def _bilinear(rgb: np.ndarray, y_axis: Axis, x_axis: Axis, *, normalise: bool = True) -> np.ndarray:
    fy, y0, y1 = y_axis
    fx, x0, x1 = x_axis
    n_rows, n_cols = len(y0), len(x0)
    # The four neighbours of every output pixel in one (2 x rows, 2 x cols) gather, rows first (whole
    # rows are contiguous), converted to float once: tl | tr over bl | br.
    # mode="clip": the indices are in range by construction, and numpy skips its bounds check.
    rows = rgb.take(np.concatenate([y0, y1]), axis=0, mode="clip")
    quad = _as_rgb(rows.take(np.concatenate([x0, x1]), axis=1, mode="clip")).astype(np.float32)
    if normalise:
        quad /= np.float32(255)
    top_left, top_right = quad[:n_rows, :n_cols], quad[:n_rows, n_cols:]
    bottom_left, bottom_right = quad[n_rows:, :n_cols], quad[n_rows:, n_cols:]
    # TF's order of operations, in place: top = tl + (tr - tl) * dx, and the same below, then
    # out = top + (bottom - top) * dy.
    dx = fx[None, :, None]
    top = top_right - top_left
    top *= dx
    top += top_left
    out = bottom_right - bottom_left
    out *= dx
    out += bottom_left
    out -= top
    out *= fy[:, None, None]
    out += top
    return out


def _sample_axis(length: int, size: int) -> Axis:
    """Per output index: the float32 fraction past the lower neighbour, and both neighbours."""
    scale = np.float32((length - 1) / (size - 1)) if size > 1 else np.float32(0)
    coords = np.arange(size, dtype=np.float32) * scale
    low = np.floor(coords)
    high = np.minimum(np.ceil(coords), np.float32(length - 1))
    return coords - low, low.astype(np.intp), high.astype(np.intp)


def _half_pixel_axis(length: int, size: int) -> Axis:
    """TensorFlow 2's bilinear sampling (half-pixel centres): output i samples input coordinate
    (i + 0.5) * length / size - 0.5, its neighbours clamped into the image."""
    scale = np.float32(length) / np.float32(size)
    coords = (np.arange(size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(coords)
    low = np.maximum(floor, 0).astype(np.intp)
    high = np.minimum(np.ceil(coords), np.float32(length - 1)).astype(np.intp)
    return coords - floor, low, high
