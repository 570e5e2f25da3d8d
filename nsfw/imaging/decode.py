"""Image bytes -> decoded frames, each as the resizers read it. No Flask, no TensorFlow.

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

import functools
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Generic, NamedTuple, Protocol, TypeVar

import numpy as np
from PIL import Image, ImageFile, ImageOps, PngImagePlugin, _webp

from nsfw.errors import ImageTooComplex, ImageTooManyPixels, InvalidImage, NsfwError, UnsupportedImageFormat
from nsfw.imaging import budget
from nsfw.imaging.budget import Limits

log = logging.getLogger(__name__)

# --- Sniffing and opening ------------------------------------------------------------------------

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


# --- EXIF orientation ----------------------------------------------------------------------------

_ORIENTATION = 0x0112


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


# --- Modes ---------------------------------------------------------------------------------------

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


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


# --- Frames and deadlines ------------------------------------------------------------------------


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


class Deadline:
    """A decode's deadline that work done beside the decode can stand aside from: time spent inside
    `aside()` (the review's pictures, made from the frames as they are decoded) moves it later, so
    only the decode and the model's input count against NSFW_DECODE_TIMEOUT, as they always did."""

    def __init__(self, at: float) -> None:
        self.at = at

    @contextmanager
    def aside(self) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.at += time.monotonic() - started


def _check_deadline(deadline: float | Deadline | None) -> None:
    at = deadline.at if isinstance(deadline, Deadline) else deadline
    if at is not None and time.monotonic() > at:
        raise ImageTooComplex("decoding passed the request's deadline")


class _Deadlined:
    """A file whose every read first checks the decode's deadline. Pillow's decoders pull their
    input in blocks of `decodermaxblock` bytes from Python, so a C decoder that would run for
    minutes (each block of a hostile JPEG may hold thousands of scans) stops at the next block."""

    def __init__(self, fp: IO[bytes], deadline: float | Deadline) -> None:
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


# --- Per-format frame readers --------------------------------------------------------------------


class _Container(Protocol):
    """An image opened, none of its pixels decoded: what budget.plan prices (the mode its frames
    decode to, its frame count, the EXIF orientation its headers gave), and a reader of its frames."""

    mode: str
    total: int
    orientation: int

    def frames(self, indices: list[int], deadline: float | Deadline | None) -> Iterator[Image.Image]: ...

    def close(self) -> None: ...


class _PillowContainer:
    """Every format but WebP: Pillow's image, its frames read by seeking."""

    def __init__(self, img: Image.Image, fmt: str, max_frames: int) -> None:
        self._img = img
        img.decodermaxblock = _DECODER_BLOCK  # type: ignore[attr-defined]
        # An MPO's other images are views of the same scene (a stereo pair, a preview), each a
        # JPEG of any size: only the first is an image of ours.
        self.mode, self.total = img.mode, getattr(img, "n_frames", 1) if max_frames > 1 and fmt != "JPEG" else 1
        self.orientation = _orientation(img.info.get("exif"))

    def frames(self, indices: list[int], deadline: float | Deadline | None) -> Iterator[Image.Image]:
        return _pillow_frames(self._img, indices, deadline)

    def close(self) -> None:
        self._img.close()


def _open_pillow(
    fp: IO[bytes], fmt: str, *, max_pixels: int, max_frames: int, deadline: float | Deadline | None
) -> _Container:
    source: IO[bytes] = _Deadlined(fp, deadline) if deadline is not None else fp  # type: ignore[assignment]
    img = open_image(source, max_pixels=max_pixels)
    try:
        return _PillowContainer(img, fmt, max_frames)
    except BaseException:
        img.close()  # the caller closes only a container it was given
        raise


def _pillow_frames(img: Image.Image, indices: list[int], deadline: float | Deadline | None) -> Iterator[Image.Image]:
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


class _WebpContainer:
    """WebP, read by libwebp's decoder directly. Pillow's WebP plugin is not used (_webp_frames says
    why): the headers' canvas and frame count price the decode before libwebp's decoder exists."""

    def __init__(self, data: bytes, layout: budget.Layout, max_frames: int) -> None:
        self._data: bytes | None = data
        self.mode, self.total = ("RGBA" if layout.webp_alpha else "RGB"), layout.frame_count if max_frames > 1 else 1
        self.orientation = 1

    def frames(self, indices: list[int], deadline: float | Deadline | None) -> Iterator[Image.Image]:
        data, self._data = self._data, None  # the reader's alone, to let go once its decoder is made
        return _webp_frames(data, indices, deadline)

    def close(self) -> None:
        self._data = None


def _webp_frames(data: bytes | None, indices: list[int], deadline: float | Deadline | None) -> Iterator[Image.Image]:
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


# --- Decoding ------------------------------------------------------------------------------------


def decode_frames(
    fp: IO[bytes],
    *,
    limits: Limits | None = None,
    max_pixels: int | None = None,
    max_frames: int = 1,
    apply_exif: bool = True,
    deadline: float | Deadline | None = None,
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
    container: _Container | None = None
    try:
        if fmt == "WEBP":
            container = _WebpContainer(data, layout, max_frames)
        else:
            data = None  # decoded from fp, by Pillow
            container = _open_pillow(fp, fmt, max_pixels=limits.max_pixels, max_frames=max_frames, deadline=deadline)
        del data
        price = functools.partial(
            budget.plan,
            layout,
            container.mode,
            total=container.total,
            wanted_frames=max_frames,
            file_size=file_size,
            limits=limits,
        )
        rotated = apply_exif and container.orientation != 1
        plan = price(rotated=rotated)
        indices = frame_indices(plan.reachable, max_frames)
        results = _convert_each(
            container.frames(indices, deadline),
            convert or _rgb_copy,
            apply_exif=apply_exif,
            rotated=rotated,
            reprice=lambda: price(rotated=True),
        )
    except _ConvertFailed as failed:
        raise failed.__cause__ from None  # type: ignore[misc]
    except NsfwError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooManyPixels(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types on hostile input; all are 422
        raise InvalidImage(f"{type(exc).__name__}: {exc}") from None
    finally:
        if container is not None:
            container.close()
    if container.total > plan.reachable:
        log.info(
            "animation of %d frames: sampled the first %d within the decode budget", container.total, plan.reachable
        )
    return Frames(results, indices, container.total)


def _convert_each(
    frames: Iterator[Image.Image],
    make: Callable[[Image.Image], T],
    *,
    apply_exif: bool,
    rotated: bool,
    reprice: Callable[[], object],
) -> list[T]:
    """Each decoded frame made upright and the model's image, then passed to `make`, one at a time."""
    results = []
    for decoded in frames:
        orientation = _frame_orientation(decoded) if apply_exif else 1
        if orientation != 1 and not rotated:
            rotated = True  # an orientation found past the pixels (a late PNG eXIf): priced again
            reprice()
        frame = to_model_image(_exif_upright(decoded, orientation))
        del decoded
        try:
            results.append(make(frame))
        except Exception as exc:
            raise _ConvertFailed from exc
        del frame
    return results


class _ConvertFailed(Exception):
    """A failure of `convert` itself (a bug, a bad resize mode): not a sign of a bad image, so it is
    raised as it was, not as a 422."""


def _rgb_copy(frame: Image.Image) -> Image.Image:
    rgb = to_rgb(frame)
    return rgb.copy() if rgb is frame else rgb  # frame may be the file's image, redrawn by the next seek


def decode(
    fp: IO[bytes], *, limits: Limits | None = None, max_pixels: int | None = None, apply_exif: bool = True
) -> Image.Image:
    """Bytes -> RGB image of the first frame, or raise an InvalidImage subclass."""
    return decode_frames(fp, limits=limits, max_pixels=max_pixels, apply_exif=apply_exif).images[0]
