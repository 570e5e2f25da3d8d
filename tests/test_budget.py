"""Pricing a decode from the container headers (nsfw/imaging/budget.py), and the bomb classes it refuses.

The bombs come from scripts/hostile_images.py, made here; none is committed.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image, ImageDraw

from nsfw import errors
from nsfw.imaging import budget
from nsfw.imaging.budget import Limits, read_layout
from nsfw.imaging.decode import Frames, decode_frames, frame_indices, open_image, sniff_format
from nsfw.imaging.recipes import preprocess_frames
from nsfw.model.specs import MOBILENET_V2
from scripts import hostile_images as bombs
from tests.support import REPO, encode

MiB = 1024 * 1024


def _decode(data: bytes, limits: Limits | None = None, max_frames: int = 8) -> Frames[np.ndarray]:
    limits = limits or Limits()
    _, frames = preprocess_frames(
        io.BytesIO(data), spec=MOBILENET_V2, resize="nsfwjs", limits=limits, max_frames=max_frames
    )
    return frames


# --- What the headers say --------------------------------------------------------------------------


def test_a_gif_canvas_grows_with_its_frames() -> None:
    layout = read_layout(bombs.gif_growing_canvas(600, 400, frames=3), "GIF")
    assert (layout.width, layout.height) == (8, 8)
    assert layout.frame_areas == [64, 600 * 400, 600 * 400]


@pytest.mark.parametrize(
    ("options", "mode", "samples", "scans"),
    [
        ({}, "RGB", 1.5, 1),  # baseline 4:2:0
        ({"progressive": True}, "RGB", 1.5, 10),
        ({"progressive": True, "subsampling": 0}, "RGB", 3.0, 10),
        ({"progressive": True}, "L", 1.0, 5),
        ({}, "CMYK", 4.0, 1),
    ],
)
def test_jpeg_frame_and_scans(options: dict[str, object], mode: str, samples: float, scans: int) -> None:
    data = encode(Image.new("RGB", (300, 200), (30, 90, 150)).convert(mode), "JPEG", **options)
    layout = read_layout(data, "JPEG")
    assert (layout.width, layout.height, layout.jpeg_samples, layout.jpeg_scans) == (300, 200, samples, scans)


def test_jpeg_scans_are_counted_to_the_first_image_only() -> None:
    """An EXIF thumbnail (a JPEG inside APP1) and an MPO's later images are not the first image's scans."""
    thumb = encode(Image.new("RGB", (64, 64)), "JPEG", progressive=True)
    exif = Image.Exif()
    exif[0x0112] = 1
    app1 = b"Exif\0\0" + exif.tobytes() + thumb
    plain = encode(Image.new("RGB", (300, 200)), "JPEG")
    with_thumb = plain[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + plain[2:]
    assert read_layout(with_thumb, "JPEG").jpeg_scans == 1
    mpo = bombs.mpo_big_entries((640, 480))
    layout = read_layout(mpo, "JPEG")
    assert (layout.width, layout.height, layout.jpeg_scans) == (8, 8, 1)


def test_a_repeated_scan_is_counted_each_time() -> None:
    data = bombs.jpeg_repeated_scans(100_000, (256, 256))
    assert read_layout(data, "JPEG").jpeg_scans == bombs.jpeg_scan_count(data) > 1000
    many = bombs.jpeg_repeated_scans(2_000_000, (256, 256))
    assert read_layout(many, "JPEG").jpeg_scans == budget.SCAN_COUNT_CAP  # enough to say "more"


def test_png_and_apng_headers() -> None:
    layout = read_layout(bombs.png16_grey(300, 200), "PNG")
    assert (layout.width, layout.height, layout.png_bit_depth, layout.png_colour_type) == (300, 200, 16, 0)
    apng = read_layout(bombs.apng_many_frames(30, (120, 80)), "PNG")
    assert apng.frame_count == 30 and apng.canvas_area == 120 * 80


@pytest.mark.parametrize("options", [{"lossless": True}, {"quality": 60}, {"lossless": True, "exif": b"Exif\0\0"}])
def test_webp_sizes_and_frames(options: dict[str, object]) -> None:
    layout = read_layout(encode(Image.new("RGBA", (321, 123), (1, 2, 3, 4)), "WEBP", **options), "WEBP")
    assert (layout.width, layout.height, layout.frame_count) == (321, 123, 1)
    animated = read_layout(bombs.webp_many_frames(500, (40, 30)), "WEBP")
    assert (animated.width, animated.height, animated.frame_count) == (40, 30, 500)


def test_bmp_rle_is_seen_and_its_runs_bounded() -> None:
    layout = read_layout(bombs.bmp_rle8(100, 10), "BMP")
    assert (layout.width, layout.height, layout.bmp_rle) == (100, 10, True)
    assert not read_layout(encode(Image.new("RGB", (5, 5)), "BMP"), "BMP").bmp_rle
    assert _decode(bombs.bmp_rle8(400, 300)).total == 1  # 120 KB of runs: decoded
    with pytest.raises(errors.ImageTooComplex):
        _decode(bombs.bmp_rle8())  # 5 MB of runs: 1.7 s of Python


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP", "JPEG", "BMP"])
def test_truncated_headers_price_nothing_and_raise_nothing(fmt: str) -> None:
    data = encode(Image.new("RGB", (50, 40)), fmt)
    for cut in (0, 5, 11, 20, 30):
        read_layout(data[:cut], fmt)  # Pillow refuses such files; pricing them must not fail first


# --- The bomb classes, refused before decoding or decoded within bounds -----------------------------


@pytest.mark.parametrize(
    ("name", "make", "code"),
    [
        (
            "GIF whose canvas grows to 36 MP after the first frame",
            bombs.gif_growing_canvas,
            "image_too_large_to_decode",
        ),
        ("WebP of 40 MP", bombs.webp_big, "image_too_large_to_decode"),
        ("progressive JPEG of repeated scans", bombs.jpeg_repeated_scans, "image_too_complex"),
    ],
)
def test_bombs_are_refused_before_any_pixel_is_decoded(
    name: str, make: object, code: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make()  # type: ignore[operator]
    loads: list[str] = []
    monkeypatch.setattr(Image.Image, "load", lambda self: loads.append(self.format) or None)
    with pytest.raises(errors.InvalidImage) as info:
        _decode(data)
    assert info.value.code == code, info.value.detail
    assert loads == [], "a pixel was decoded before the refusal"


def test_an_mpo_is_its_first_image_only() -> None:
    frames = _decode(bombs.mpo_big_entries())
    assert (frames.indices, frames.total) == ([0], 1)


def test_a_16_bit_grey_png_of_40_mp_is_priced_at_4_bytes_a_pixel() -> None:
    layout = read_layout(bombs.png16_grey(), "PNG")
    peak = budget.peak_bytes(layout, "I;16", rotated=False, frames=1, file_size=90_000)
    assert peak < 170 * MiB  # was 723 MB measured: int64 copies of every sample


@pytest.mark.parametrize(
    ("make", "reachable"),
    [
        (lambda: bombs.webp_many_frames(5000, (8, 8)), 1000),  # tiny frames: NSFW_MAX_DECODED_FRAMES
        (lambda: bombs.apng_many_frames(300, (2000, 2000)), 10),  # 4 MP canvases: 40 MP of canvas
        (lambda: bombs.gif_growing_canvas(2000, 2000, frames=30, screen=2000), 10),
    ],
    ids=["webp-5000-tiny", "apng-300-large", "gif-30-large"],
)
def test_animations_are_sampled_within_the_frames_the_budget_reaches(make: object, reachable: int) -> None:
    frames = _decode(make())  # type: ignore[operator]
    assert frames.indices == frame_indices(reachable, 8)


def test_limits_are_the_settings() -> None:
    from nsfw.config import Settings
    from nsfw.pipeline.service import decode_limits

    assert decode_limits(Settings()) == Limits()
    custom = decode_limits(replace(Settings(), max_decode_bytes=2 * MiB, max_jpeg_scans=3))
    assert (custom.max_decode_bytes, custom.max_jpeg_scans) == (2 * MiB, 3)


def test_the_scan_limit_is_a_setting() -> None:
    data = encode(Image.new("RGB", (64, 64)), "JPEG", progressive=True)
    assert _decode(data).total == 1
    with pytest.raises(errors.ImageTooComplex):
        _decode(data, Limits(max_jpeg_scans=9))


def test_a_late_exif_orientation_is_priced_before_the_upright_copy() -> None:
    """A PNG whose eXIf comes after its pixels: the rotation is only known once they are decoded,
    and the upright copy it needs must fit the budget too."""
    img = Image.new("RGB", (1000, 1000), (9, 9, 9))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(img, "PNG")
    iend = data.rindex(b"IEND") - 4
    chunk = bombs._chunk(b"eXIf", exif.tobytes())
    late = data[:iend] + chunk + data[iend:]
    layout = read_layout(late, "PNG")
    unrotated = budget.peak_bytes(layout, "RGB", rotated=False, frames=1, file_size=len(late))
    rotated = budget.peak_bytes(layout, "RGB", rotated=True, frames=1, file_size=len(late))
    assert _decode(late, Limits(max_decode_bytes=rotated + MiB)).total == 1
    with pytest.raises(errors.ImageTooLargeToDecode):  # the first price fits; the upright copy does not
        _decode(late, Limits(max_decode_bytes=(unrotated + rotated) // 2))


# --- Python work: the codes of an RLE BMP, the chunks of a PNG ---------------------------------------


def _noise_png_idat_split(size: int) -> bytes:
    """A 300x300 noise PNG, stored (270 KB of image data), in IDAT chunks of `size` bytes."""
    return bombs.png_idat_split(encode(_noise((300, 300)), "PNG", compress_level=0), size)


@pytest.mark.parametrize(
    "make",
    [
        bombs.bmp_rle8_eol,
        bombs.bmp_rle4_runs,
        bombs.png_many_chunks,
        lambda: bombs.png_many_chunks(after_idat=True),
        lambda: _noise_png_idat_split(1),
    ],
    ids=["rle8-end-of-lines", "rle4-runs", "png-chunks-before-idat", "png-chunks-after-idat", "png-1-byte-idats"],
)
def test_python_work_bombs_are_refused_before_any_pixel_is_decoded(
    make: Callable[[], bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small files that keep Pillow's Python busy for seconds on one core (bmp_rle8_eol.bmp: 5 KB,
    4.4 s; bmp_rle4_runs.bmp: 330 KB, 2 s; png_many_chunks.png: 10 MiB, 2.8 s) are refused, and a
    PNG before Image.open reads its chunks. Fails on the code before this change, which decoded
    each of them (it capped RLE BMPs at 2 MiB and never counted chunks)."""
    data = make()
    opened: list[str] = []
    loads: list[str] = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda fp, *args, **kw: opened.append("open") or real_open(fp, *args, **kw))
    monkeypatch.setattr(Image.Image, "load", lambda self: loads.append(self.format) or None)
    with pytest.raises(errors.InvalidImage) as info:
        _decode(data)
    assert info.value.code == "image_too_complex", info.value.detail
    assert loads == [], "a pixel was decoded before the refusal"
    if data.startswith(b"\x89PNG"):
        assert opened == [], "Image.open read the chunks before the refusal"


def test_the_rle_price_is_what_pillows_decoder_does() -> None:
    """Each row of bmp_rle8_eol is a 1-pixel run and an end of line that pads the rest of it, and
    the price says so; where the codes are priced at their bound, the bound is not below it. Fails
    on the code before this change, which had no price for the codes (it capped the file's size)."""
    data = bombs.bmp_rle8_eol(400, 10)
    row = 2 * budget.BMP_RLE_CODE_NS + 399 * budget.BMP_RLE_PAD_NS
    assert read_layout(data, "BMP").bmp_rle_ns == 10 * row  # the last end of line fills the canvas
    for scanned in (0, 5):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(budget, "BMP_RLE_SCAN_CODES", scanned)
            assert read_layout(data, "BMP").bmp_rle_ns >= 10 * row
    # Rows of 200 runs filled: the end of lines pad nothing, and the last is not read (the canvas is full).
    runs = read_layout(bombs.bmp_rle8(400, 300), "BMP")
    assert runs.bmp_rle_ns == (200 * 300 + 299) * budget.BMP_RLE_CODE_NS


def _drawing(size: tuple[int, int]) -> Image.Image:
    """A 256-colour drawing: ellipses on a background of colour 0, which ends most rows."""
    rng = np.random.default_rng(3)
    width, height = size
    img = Image.new("P", size, 0)
    img.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tobytes())
    draw = ImageDraw.Draw(img)
    for _ in range(60):
        x, y = int(rng.integers(0, width * 2 // 3)), int(rng.integers(0, height))
        w, h = int(rng.integers(10, width // 3)), int(rng.integers(10, height // 3))
        draw.ellipse([x, y, x + w, y + h], fill=int(rng.integers(1, 256)))
    return img


@pytest.mark.parametrize(
    "make",
    [lambda: _drawing((2000, 1500)), lambda: _noise((2400, 1250)).convert("L")],
    ids=["drawing-2000x1500", "noise-3mp-3mb"],
)
def test_ordinary_rle_bmps_decode(make: Callable[[], Image.Image]) -> None:
    """RLE8 BMPs as an encoder writes them decode, priced by what their codes cost: a drawing whose
    rows end early on its background (each end of line pads the rest: 94 ms), and 3 MP of noise in
    absolute runs (13 ms). The noise fails on the code before this change, which refused it for its
    3 MB (the drawing decoded then too)."""
    img = make()
    data = bombs.bmp_rle8_of(img)
    frames = decode_frames(io.BytesIO(data), limits=Limits())
    assert np.array_equal(np.asarray(frames.images[0]), np.asarray(img.convert("RGB")))


def test_png_chunks_are_counted_to_the_limit() -> None:
    """A PNG of 32,768 chunks (MAX_PNG_CHUNKS) decodes and one of a chunk more is refused; a large
    PNG in libpng's 8 KiB IDAT chunks decodes. Fails on the code before this change, which decoded
    the second (it counted no chunks)."""
    limit = 32_768
    at_limit = bombs.png_many_chunks(limit - 3)  # IHDR, IDAT and IEND make up the rest
    assert _decode(at_limit).total == 1
    with pytest.raises(errors.ImageTooComplex):
        _decode(bombs.png_many_chunks(limit - 2))
    assert budget.MAX_PNG_CHUNKS == read_layout(at_limit, "PNG").png_chunks == limit
    img = _noise((1500, 1000))
    data = bombs.png_idat_split(encode(img, "PNG", compress_level=1), 8192)
    assert 500 < read_layout(data, "PNG").png_chunks < 1000
    frames = decode_frames(io.BytesIO(data), limits=Limits())
    assert np.array_equal(np.asarray(frames.images[0]), np.asarray(img))


def test_an_apng_is_sampled_over_the_frames_within_the_chunk_limit() -> None:
    """An APNG of 100 frames of 1,001 chunks each reaches the 33 frames whose chunks fit in
    MAX_PNG_CHUNKS, and is sampled over them. Fails on the code before this change, which reached
    all 100 (100,000 chunks read in Python)."""
    data = bombs.apng_many_frames(100, (64, 64), chunks_per_frame=1000)
    frames = _decode(data)
    assert (frames.total, frames.indices) == (100, frame_indices(33, 8))
    # IHDR, acTL, fcTL and IDAT, then 1,001 a frame: the first 33 are read through frame 33's fcTL,
    # chunk 5 + 1,001 x 32.
    layout = read_layout(data, "PNG")
    assert layout.png_chunks_up_to(33) == 5 + 1001 * 32 <= budget.MAX_PNG_CHUNKS < layout.png_chunks_up_to(34)


# --- The deadline ----------------------------------------------------------------------------------


def test_a_decode_that_runs_past_its_deadline_stops() -> None:
    """A repeated-scan JPEG let through the scan limit would take minutes; it stops at its deadline."""
    data = bombs.jpeg_repeated_scans(400_000, (1024, 1024))
    with pytest.raises(errors.ImageTooComplex):
        preprocess_frames(
            io.BytesIO(data),
            spec=MOBILENET_V2,
            resize="nsfwjs",
            limits=Limits(max_jpeg_scans=10**6),
            max_frames=1,
            deadline=time.monotonic() + 0.2,
        )


def test_an_animation_stops_between_frames_at_its_deadline() -> None:
    with pytest.raises(errors.ImageTooComplex):
        preprocess_frames(
            io.BytesIO(bombs.webp_many_frames(50, (8, 8))),
            spec=MOBILENET_V2,
            resize="nsfwjs",
            limits=Limits(),
            max_frames=8,
            deadline=time.monotonic() - 1,
        )


# --- The estimate is not below what a decode takes ---------------------------------------------------

_MEASURE = """
import ctypes, io, sys, tempfile, time
ctypes.CDLL("libc.so.6").mallopt(-3, 4 * 1024 * 1024)  # gunicorn.conf.py's post_fork
sys.path.insert(0, sys.argv[1])
from nsfw.imaging.budget import Limits
from nsfw.imaging.recipes import preprocess_frames
from nsfw.model.specs import MOBILENET_V2
spool = tempfile.SpooledTemporaryFile(max_size=1 << 20)
spool.write(sys.stdin.buffer.read())
def status(field):
    line = next(line for line in open("/proc/self/status") if line.startswith(field))
    return int(line.split()[1]) * 1024
base = status("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) starts again from here
preprocess_frames(spool, spec=MOBILENET_V2, resize="nsfwjs", limits=Limits(max_decode_bytes=1 << 34),
                  max_frames=8, deadline=time.monotonic() + 60)
print(status("VmHWM:") - base)
"""


def _noise(size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(7)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.mark.parametrize(
    "make",
    [
        lambda: encode(_noise((3000, 2000)), "JPEG", progressive=True, quality=80),
        lambda: encode(_noise((3000, 2000)).convert("CMYK"), "JPEG"),
        lambda: encode(_noise((3000, 2000)).convert("RGBA"), "PNG", compress_level=1),
        lambda: encode(_noise((3000, 2000)), "WEBP", quality=50),
        lambda: bombs.png16_grey(3000, 2000),
        lambda: bombs.gif_growing_canvas(3000, 2000, frames=3),
        lambda: bombs.webp_many_frames(130_000, (8, 8)),
    ],
    ids=["progressive-jpeg", "cmyk-jpeg", "rgba-png", "lossy-webp", "16-bit-png", "growing-gif", "webp-130000-frames"],
)
def test_the_estimate_covers_the_measured_peak(make: object) -> None:
    """Measured in a fresh process (the serving virtualenv's when there is one), as a worker decodes."""
    import os

    data = make()  # type: ignore[operator]
    python = os.environ.get("TEST_SERVING_PYTHON", sys.executable)
    measured = json.loads(
        subprocess.run(
            [python, "-c", _MEASURE, str(REPO)], input=data, capture_output=True, check=True, timeout=120
        ).stdout
    )
    fmt = sniff_format(data[:16])
    img = open_image(io.BytesIO(data), max_pixels=10**9)
    total = getattr(img, "n_frames", 1) if fmt != "JPEG" else 1
    plan = budget.plan(
        read_layout(data, fmt),
        img.mode,
        rotated=False,
        total=total,
        wanted_frames=8,
        file_size=len(data),
        limits=Limits(max_decode_bytes=1 << 34),
    )
    assert measured <= plan.peak_bytes * 1.1, (
        f"measured {measured / MiB:.1f} MiB > estimate {plan.peak_bytes / MiB:.1f}"
    )
