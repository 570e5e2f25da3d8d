"""What decoding an image will cost, from its container headers alone, before any pixel is decoded.

Pillow checks the first frame's size when a file is opened. What it decodes after that can be far
more: a GIF's canvas grows when a later frame reaches past the logical screen, every frame of an
animation is drawn on the whole canvas, a progressive JPEG walks every coefficient again at each of
its scans (a file of repeated scans held a core for minutes), and a decoder's sample size is not
the file's (a 16-bit sample is 2 bytes, an RGB pixel 4 in Pillow, and libwebp, Pillow and its image
each hold a WebP once). This module reads what the headers say (`read_layout`: frames, the real
canvas, scans, sample layout), and `plan` turns it into the frames that may be decoded and the
memory they need at the peak, or refuses:

- more pixels on the canvas than NSFW_MAX_PIXELS: 422 `image_too_many_pixels`;
- a JPEG with more than NSFW_MAX_JPEG_SCANS scans (libjpeg-turbo's scan limit, for the same
  reason): 422 `image_too_complex`;
- an RLE BMP of more than MAX_BMP_RLE_BYTES (Pillow decodes RLE in Python): 422 `image_too_complex`;
- a peak over NSFW_MAX_DECODE_BYTES: 422 `image_too_large_to_decode`.

Animations are sampled over the leading frames whose decoding (each seek draws every frame before
it) stays within NSFW_MAX_PIXELS of canvas area and NSFW_MAX_DECODED_FRAMES frames.

The bytes per pixel below are Pillow 13's (and this package's conversions'), measured as the peak
RSS of a fresh process decoding 6 MP to 16 MP images of each kind; tests/test_budget.py checks, the
same way, that the estimate is not below what a decode takes (measured/estimate was 0.72 to 0.97),
and bench/hostile.py measures the workers of the deployed service.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

from nsfw.errors import ImageTooComplex, ImageTooLargeToDecode, ImageTooManyPixels

# --- What the headers say ------------------------------------------------------------------------


@dataclass
class Layout:
    """An image's container facts: enough to price its decoding, read without decoding."""

    format: str
    width: int = 0  # the first frame's canvas
    height: int = 0
    # Per frame: the canvas area it is drawn on (GIF: grows with the frames; else the canvas).
    frame_areas: list[int] = field(default_factory=list)
    jpeg_scans: int = 0
    # JPEG: samples per pixel over all components (4:2:0 YCbCr: 1.5), for the coefficient buffer.
    jpeg_samples: float = 0.0
    jpeg_components: int = 0
    png_bit_depth: int = 8
    png_colour_type: int = 2
    png_interlaced: bool = False
    bmp_rle: bool = False
    webp_alpha: bool = False

    @property
    def frame_count(self) -> int:
        return max(1, len(self.frame_areas))

    @property
    def canvas_area(self) -> int:
        """The largest canvas any frame is drawn on."""
        return max(self.frame_areas, default=self.width * self.height)

    def area_of(self, index: int) -> int:
        """The canvas area frame `index` is drawn on (the largest, past the frames the headers list)."""
        return self.frame_areas[index] if index < len(self.frame_areas) else self.canvas_area

    def canvas_up_to(self, frames: int) -> int:
        """The largest canvas of the first `frames` frames: what decoding them grows the canvas to."""
        return max((self.area_of(i) for i in range(min(frames, len(self.frame_areas) or 1))), default=0)


def read_layout(data: bytes, fmt: str) -> Layout:
    """The layout of an image whose format is already sniffed; what cannot be read stays at its
    default (Pillow then refuses the file as malformed)."""
    reader = _READERS.get(fmt)
    layout = Layout(fmt)
    if reader is not None:
        try:
            reader(data, layout)
        except (IndexError, struct.error, ValueError):
            pass  # truncated or malformed headers: Pillow says so when it opens or decodes
    if not layout.frame_areas and layout.width and layout.height:
        layout.frame_areas = [layout.width * layout.height]
    return layout


def _read_gif(data: bytes, layout: Layout) -> None:
    screen_w, screen_h, flags = struct.unpack_from("<HHB", data, 6)
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    canvas_w, canvas_h = screen_w, screen_h
    while pos < len(data):
        block = data[pos]
        if block == 0x3B:  # trailer
            break
        if block == 0x21:  # extension: label, then sub-blocks
            pos = _skip_sub_blocks(data, pos + 2)
        elif block == 0x2C:  # image descriptor
            left, top, width, height, local = struct.unpack_from("<HHHHB", data, pos + 1)
            # Pillow grows the canvas to hold a frame that reaches past it (GifImagePlugin._seek).
            canvas_w, canvas_h = max(canvas_w, left + width), max(canvas_h, top + height)
            if not layout.frame_areas:
                layout.width, layout.height = canvas_w, canvas_h
            layout.frame_areas.append(canvas_w * canvas_h)
            pos += 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0)
            pos = _skip_sub_blocks(data, pos + 1)  # after the LZW minimum code size
        else:
            break


def _skip_sub_blocks(data: bytes, pos: int) -> int:
    while data[pos]:
        pos += data[pos] + 1
    return pos + 1


def _read_png(data: bytes, layout: Layout) -> None:
    pos = 8
    extents: list[tuple[int, int]] = []
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        payload = pos + 8
        if kind == b"IHDR":
            layout.width, layout.height, depth, colour, _, _, interlace = struct.unpack_from(">IIBBBBB", data, payload)
            layout.png_bit_depth, layout.png_colour_type, layout.png_interlaced = depth, colour, bool(interlace)
        elif kind == b"fcTL":
            width, height, x, y = struct.unpack_from(">IIII", data, payload + 4)
            extents.append((x + width, y + height))
        elif kind == b"IEND":
            break
        pos = payload + length + 4
    if extents:
        width = max([layout.width, *(w for w, _ in extents)])
        height = max([layout.height, *(h for _, h in extents)])
        layout.frame_areas = [width * height] * len(extents)


def _read_webp(data: bytes, layout: Layout) -> None:
    pos = 12
    frames = 0
    while pos + 8 <= len(data):
        kind, size = struct.unpack_from("<4sI", data, pos)
        payload = pos + 8
        if kind == b"VP8X":
            layout.webp_alpha = bool(data[payload] & 0x10)
            layout.width = 1 + int.from_bytes(data[payload + 4 : payload + 7], "little")
            layout.height = 1 + int.from_bytes(data[payload + 7 : payload + 10], "little")
        elif kind == b"ANMF":
            frames += 1
        elif kind in (b"VP8 ", b"VP8L") and not layout.width:
            layout.width, layout.height = _vp8_size(kind, data, payload)
            layout.webp_alpha = kind == b"VP8L" and bool(data[payload + 4] & 0x10)  # alpha_is_used
        pos = payload + size + (size & 1)
    if frames:
        layout.frame_areas = [layout.width * layout.height] * frames


def _vp8_size(kind: bytes, data: bytes, payload: int) -> tuple[int, int]:
    if kind == b"VP8 ":  # frame tag (3), start code (3), then 14-bit width and height
        width, height = struct.unpack_from("<HH", data, payload + 6)
        return width & 0x3FFF, height & 0x3FFF
    bits = int.from_bytes(data[payload + 1 : payload + 5], "little")  # after the 0x2f signature
    return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)


# A marker in entropy-coded data: 0xFF followed by neither a stuffed 0x00, a restart marker, nor
# another 0xFF (fill bytes before a marker).
_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
# Scans counted at most: past the largest NSFW_MAX_JPEG_SCANS allowed, the count only has to say "more",
# and counting the 650,000 scans of a 10 MiB file took 0.3 s.
SCAN_COUNT_CAP = 10_001
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def _read_jpeg(data: bytes, layout: Layout) -> None:
    """Segments from SOI to the first image's EOI: its frame header and its scans. An MPO's later
    images (after that EOI) are never decoded here; an EXIF thumbnail sits inside APP1 and is skipped."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            match = _MARKER.search(data, pos)  # entropy-coded data after a scan header
            if match is None:
                return
            pos = match.start()
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:  # EOI
            return
        if 0xD0 <= marker <= 0xD7 or marker in (0x01, 0xD8):
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if marker in _SOF and not layout.jpeg_components:
            _, height, width, components = struct.unpack_from(">BHHB", data, pos + 4)
            factors = [data[pos + 11 + 3 * i] for i in range(components)]  # after each id
            h_max = max(f >> 4 for f in factors) or 1
            v_max = max(f & 15 for f in factors) or 1
            layout.width, layout.height, layout.jpeg_components = width, height, components
            layout.jpeg_samples = sum((f >> 4) * (f & 15) for f in factors) / (h_max * v_max)
        elif marker == 0xDA:
            layout.jpeg_scans += 1
            if layout.jpeg_scans >= SCAN_COUNT_CAP:
                return
        pos += 2 + length


def _read_bmp(data: bytes, layout: Layout) -> None:
    header_size, width, height = struct.unpack_from("<Iii", data, 14)
    if header_size == 12:  # OS/2 1.x: 16-bit sizes, no compression
        width, height = struct.unpack_from("<HH", data, 18)
        compression = 0
    else:
        (compression,) = struct.unpack_from("<I", data, 30)
    layout.width, layout.height = abs(width), abs(height)
    layout.bmp_rle = compression in (1, 2)


_READERS = {"GIF": _read_gif, "PNG": _read_png, "WEBP": _read_webp, "JPEG": _read_jpeg, "BMP": _read_bmp}


# --- What decoding them costs --------------------------------------------------------------------

# Bytes per canvas pixel that Pillow's image of each mode holds (it pads RGB to 4 bytes).
MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2, "I": 4, "F": 4}
_FOUR_BYTES = 4
# What this package's conversion to the model's image adds (imaging.to_model_image), by mode:
# grey stays grey (1 byte), RGBA is sampled as is; palette, CMYK and LA are converted once.
CONVERSION_BYTES = {"1": 1, "P": 4, "PA": 4, "LA": 1, "La": 1, "CMYK": 4, "YCbCr": 4, "I;16": 2, "I": 2, "F": 2}
for _mode in ("I;16B", "I;16L", "I;16N"):
    CONVERSION_BYTES[_mode] = 2
# Pillow's GIF and APNG decoders keep the previous canvas, a disposal copy and the frame's own
# decoded rectangle next to the canvas of every frame after the first (measured: 13 bytes a pixel
# on top of the first frame's).
LATER_FRAME_BYTES = 13
# libwebp's animation decoder keeps two RGBA canvases (the frame and the previous one), 8 bytes a
# pixel, and a lossy file its YUV planes (about 1 more), beside the frame it returns, which is the
# image (imaging._webp_frames).
WEBP_DECODER_BYTES = 9
# libwebp's demuxer keeps a record of every frame in the file (measured: 27.5 MB for 200,000 frames).
WEBP_FRAME_BYTES = 160
# libjpeg keeps every DCT coefficient (2 bytes a sample) of a JPEG with more than one scan.
JPEG_COEFFICIENT_BYTES = 2
# Pillow's Python RLE decoder for BMP builds the pixels in a bytearray, then copies them.
BMP_RLE_BYTES = 2
# ...and decodes one run at a time in Python, about 0.7 s per 2 MiB of runs (bench/hostile.py: 1.7 s
# for 5 MB on one core): RLE data past this is 422 image_too_complex. A BMP's runs are its bytes.
MAX_BMP_RLE_BYTES = 2 * 1024 * 1024
# Allocator slack and small buffers (row buffers, palettes, the decoder objects).
FIXED_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """The NSFW_* limits of one decode (the defaults are Settings' own)."""

    max_pixels: int = 40_000_000
    max_decode_bytes: int = 224 * 1024 * 1024
    max_jpeg_scans: int = 64
    max_decoded_frames: int = 1000


@dataclass(frozen=True)
class Plan:
    """The frames that may be decoded (the first `reachable` of `total`) and the peak memory."""

    reachable: int
    total: int
    peak_bytes: int


def mode_bytes(mode: str) -> int:
    return MODE_BYTES.get(mode, _FOUR_BYTES)


def peak_bytes(layout: Layout, mode: str, *, rotated: bool, frames: int, file_size: int) -> int:
    """The most memory decoding the first `frames` frames takes at once, with the conversions that follow."""
    canvas = layout.canvas_up_to(frames)
    image = canvas * mode_bytes(mode)
    # After decoding: an upright copy when EXIF says so, then the model's image.
    converted = (image if rotated else 0) + canvas * CONVERSION_BYTES.get(mode, 0)
    decoder = 0
    if layout.format == "JPEG" and layout.jpeg_scans > 1:
        decoder = int(canvas * layout.jpeg_samples * JPEG_COEFFICIENT_BYTES)
    elif layout.format == "WEBP":
        decoder = canvas * WEBP_DECODER_BYTES + layout.frame_count * WEBP_FRAME_BYTES
    elif layout.format == "BMP" and layout.bmp_rle:
        decoder = canvas * BMP_RLE_BYTES
    if frames > 1 and layout.format in ("GIF", "PNG"):
        # Later frames are RGB(A) on the whole canvas, whatever the first frame's mode was.
        image = canvas * _FOUR_BYTES
        decoder = canvas * LATER_FRAME_BYTES
        converted = 0
    # The file's bytes are in memory beside it all: read whole to price it (and WebP is decoded
    # from them), and a PNG chunk or a GIF block is read whole by Pillow.
    return FIXED_BYTES + file_size + image + max(decoder, converted)


def plan(
    layout: Layout, mode: str, *, rotated: bool, total: int, wanted_frames: int, file_size: int, limits: Limits
) -> Plan:
    """The frames to decode and what they cost, or the refusal (module docstring)."""
    if layout.canvas_area > limits.max_pixels:
        raise ImageTooManyPixels(f"{layout.format} canvas of {layout.canvas_area} pixels > {limits.max_pixels}")
    if layout.format == "JPEG" and layout.jpeg_scans > limits.max_jpeg_scans:
        raise ImageTooComplex(f"JPEG of {layout.jpeg_scans} scans > {limits.max_jpeg_scans}")
    if layout.format == "BMP" and layout.bmp_rle and file_size > MAX_BMP_RLE_BYTES:
        raise ImageTooComplex(f"RLE BMP of {file_size} bytes > {MAX_BMP_RLE_BYTES}")
    reachable = 1
    if wanted_frames > 1 and total > 1:
        # Each seek decodes every frame before it: the frames within reach are a prefix, whose
        # canvases add up to at most max_pixels (the first frame always counts).
        spent = reachable = 0
        for index in range(min(total, limits.max_decoded_frames)):
            area = layout.area_of(index)
            if reachable and spent + area > limits.max_pixels:
                break
            spent += area
            reachable += 1
    peak = peak_bytes(layout, mode, rotated=rotated, frames=reachable, file_size=file_size)
    if peak > limits.max_decode_bytes:
        raise ImageTooLargeToDecode(
            f"{layout.format} {mode} of {layout.canvas_area} pixels, {reachable} frames: "
            f"{peak >> 20} MiB > {limits.max_decode_bytes >> 20} MiB"
        )
    return Plan(reachable, total, peak)
