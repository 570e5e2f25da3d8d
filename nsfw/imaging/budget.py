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
- an RLE BMP whose codes would keep Pillow's Python decoder busy for more than MAX_BMP_RLE_NS
  (`_bmp_rle_ns` follows the codes as it will): 422 `image_too_complex`;
- a PNG whose first frame takes more than MAX_PNG_CHUNKS chunks to read (Pillow reads each in
  Python): 422 `image_too_complex`, from read_layout itself, since Image.open reads every chunk
  before the first IDAT and decode_frames opens the file before it asks `plan`;
- a peak over NSFW_MAX_DECODE_BYTES: 422 `image_too_large_to_decode`.

Animations are sampled over the leading frames whose decoding (each seek draws every frame before
it) stays within NSFW_MAX_PIXELS of canvas area, NSFW_MAX_DECODED_FRAMES frames and, for APNG,
MAX_PNG_CHUNKS chunks.

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
    # PNG: the chunks from IHDR to IEND (counted up to PNG_CHUNK_COUNT_CAP), and how many are read
    # through each frame's fcTL: Pillow reads every chunk it passes one at a time in Python.
    png_chunks: int = 0
    png_frame_chunks: list[int] = field(default_factory=list)
    bmp_rle: bool = False
    # RLE BMP: what Pillow's Python decoder will spend on the codes, estimated (_bmp_rle_ns).
    bmp_rle_ns: int = 0
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

    def png_chunks_up_to(self, frames: int) -> int:
        """The chunks Pillow reads to decode the first `frames` frames of a PNG: through the next
        frame's fcTL (one frame more where the IDAT is a default image outside the animation), else
        through IEND."""
        starts = self.png_frame_chunks
        return starts[frames] if frames < len(starts) else self.png_chunks


def read_layout(data: bytes, fmt: str) -> Layout:
    """The layout of an image whose format is already sniffed; what cannot be read stays at its
    default (Pillow then refuses the file as malformed). Raises ImageTooComplex for a PNG of more
    chunks than MAX_PNG_CHUNKS before its second frame: Image.open reads the chunks up to the first
    IDAT, and decode_frames opens the file before `plan` is asked."""
    reader = _READERS.get(fmt)
    layout = Layout(fmt)
    if reader is not None:
        try:
            reader(data, layout)
        except (IndexError, struct.error, ValueError):
            pass  # truncated or malformed headers: Pillow says so when it opens or decodes
    if not layout.frame_areas and layout.width and layout.height:
        layout.frame_areas = [layout.width * layout.height]
    if fmt == "PNG" and layout.png_chunks_up_to(1) > MAX_PNG_CHUNKS:
        raise ImageTooComplex(f"PNG of more than {MAX_PNG_CHUNKS} chunks to read before its second frame")
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


# Pillow reads a PNG's chunks one at a time in Python, about 3.3 us each for an unknown private
# chunk, the dearest kind (Image.open also keeps each; a 1-byte IDAT, one decoder call each, is 2 us):
# 873,790 empty ones, 10 MiB, took 2.8 s on one core as decode_frames decodes (AMD EPYC, taskset -c 0;
# scripts/hostile_images.py png_many_chunks). 32,768 are 0.1 s at most, and ordinary files stay far
# below: libpng writes IDAT in 8 KiB chunks (1,280 for 10 MiB), Pillow in 64 KiB, and an APNG is
# read only up to its sampled frames (plan). Past it, 422 image_too_complex.
MAX_PNG_CHUNKS = 32_768
# Chunks counted at most: past MAX_PNG_CHUNKS the count only has to say "more" (walking all 873,793
# chunks of that file took 0.35 to 0.44 s; these take 13 ms).
PNG_CHUNK_COUNT_CAP = MAX_PNG_CHUNKS + 1


def _read_png(data: bytes, layout: Layout) -> None:
    pos = 8
    extents: list[tuple[int, int]] = []
    while pos + 8 <= len(data) and layout.png_chunks < PNG_CHUNK_COUNT_CAP:
        length, kind = struct.unpack_from(">I4s", data, pos)
        payload = pos + 8
        layout.png_chunks += 1
        if kind == b"IHDR":
            layout.width, layout.height, depth, colour, _, _, interlace = struct.unpack_from(">IIBBBBB", data, payload)
            layout.png_bit_depth, layout.png_colour_type, layout.png_interlaced = depth, colour, bool(interlace)
        elif kind == b"fcTL":
            layout.png_frame_chunks.append(layout.png_chunks)  # read up to this fcTL
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
    (offset,) = struct.unpack_from("<I", data, 10)
    header_size, width, height = struct.unpack_from("<Iii", data, 14)
    if header_size == 12:  # OS/2 1.x: 16-bit sizes, no compression
        width, height = struct.unpack_from("<HH", data, 18)
        bits = compression = colours = 0
    else:
        bits, compression, colours = struct.unpack_from("<HI12xI", data, 28)
    layout.width, layout.height = abs(width), abs(height)
    layout.bmp_rle = compression in (1, 2)
    if layout.bmp_rle:
        # Where Pillow starts the codes (BmpImagePlugin._bitmap): an offset of 0, or one that points
        # at the palette, means right after the palette.
        if offset in (0, 14 + header_size):
            offset = 14 + header_size + (4 * (colours or 1 << bits) if bits <= 8 else 0)
        layout.bmp_rle_ns = _bmp_rle_ns(data, offset, layout.width, layout.height, rle4=compression == 2)


# Pillow decodes RLE BMP in Python (BmpImagePlugin.BmpRleDecoder), and three of its paths write one
# byte at a time: an end of line pads the rest of the row with zeros, an RLE4 run and an RLE4 absolute
# run write each pixel on its own. Measured on one core (AMD EPYC, taskset -c 0) as decode_frames
# decodes, where each read also checks the deadline (the slower of repeated runs; the machine varied
# by up to 1.7 times): a code 0.55 us (1M 2-pixel runs: 0.56 s), an RLE8 absolute run 1 us (1M of 3
# pixels: 0.94 s), a padded byte 0.11 us (a 5 KB file of 1,000 end-of-line codes on a 40,000-wide
# canvas: 4.4 s), an RLE4 absolute pixel 0.1 us (4 MP: 0.40 s), an RLE4 run pixel 0.05 us (4 MP: 0.20 s).
BMP_RLE_CODE_NS = 550
BMP_RLE_ABSOLUTE_NS = 1_000
BMP_RLE_PAD_NS = 110
BMP_RLE4_ABSOLUTE_PIXEL_NS = 100
BMP_RLE4_RUN_PIXEL_NS = 50
# The Python an RLE BMP may cost, a twentieth of NSFW_DECODE_TIMEOUT: 0.25 s is 450,000 codes
# (0.9 MB of the shortest runs), 2.3 M padded bytes, or an RLE4 image of 2.5 MP (5 MP of runs). An
# ordinary RLE8 image, whose runs and absolute runs fill its rows, costs little more than its codes:
# a 3 MP one of noise in absolute runs (3 MB, refused for its size before) is 13 ms, a 2000x1500
# drawing whose rows end early on a background of colour 0 is 94 ms. Past it, 422 image_too_complex.
MAX_BMP_RLE_NS = 250_000_000
# Codes followed one by one at most (0.2 to 0.3 us each here, 38 ms for the 2.5 M runs of
# scripts/hostile_images.py bmp_rle8): the rest of a file is priced at its bound (_bmp_rle_bound).
BMP_RLE_SCAN_CODES = 131_072


def _bmp_rle_ns(data: bytes, pos: int, width: int, height: int, *, rle4: bool) -> int:
    """What Pillow's RLE decoder will spend on the codes from `pos`, in nanoseconds: the first
    BMP_RLE_SCAN_CODES codes followed as it follows them (each run cut at the row's end, each end of
    line padding to the next row, each absolute run aligned to an even file offset), the rest at
    their bound; the count stops once it is past MAX_BMP_RLE_NS.

    A bound alone (the canvas area for the padding) would refuse ordinary RLE8 images, which end
    every row with an end of line that pads nothing."""
    if width < 1 or height < 1:
        return 0  # Pillow refuses an empty image when it opens it
    end, area = len(data), width * height
    written = x = ns = codes = 0
    while written < area and pos + 2 <= end:
        if codes == BMP_RLE_SCAN_CODES or ns > MAX_BMP_RLE_NS:
            return ns + _bmp_rle_bound(data, pos, width, area - written, rle4=rle4)
        count = data[pos]
        value = data[pos + 1]
        pos += 2
        codes += 1
        ns += BMP_RLE_CODE_NS
        if count:  # a run of `count` pixels of one value, cut at the row's end
            room = width - x
            if count > room:
                count = room if room > 0 else 0
            written += count
            x += count
            if rle4:
                ns += count * BMP_RLE4_RUN_PIXEL_NS
        elif value == 0:  # end of line
            pad = -written % width
            written += pad
            x = 0
            ns += pad * BMP_RLE_PAD_NS
        elif value == 1:  # end of bitmap
            break
        elif value == 2:  # delta: right, up (the skipped pixels are written as one block)
            if pos + 2 > end:
                break
            written += min(area - written, data[pos] + data[pos + 1] * width)
            x = written % width
            pos += 2
        else:  # an absolute run of `value` pixels, 2 to a byte in RLE4
            count = min(area - written, value)
            size = (count + 1) // 2 if rle4 else count
            read = min(size, end - pos)
            pixels = min(2 * read, count) if rle4 else read
            written += pixels
            pos += read
            # Its code costs more than a run's: it reads its pixels, then aligns the file offset.
            ns += BMP_RLE_ABSOLUTE_NS - BMP_RLE_CODE_NS + (pixels * BMP_RLE4_ABSOLUTE_PIXEL_NS if rle4 else 0)
            if read < size or written == area:
                break
            x += value
            pos += pos & 1
    return ns


def _bmp_rle_bound(data: bytes, pos: int, width: int, pixels: int, *, rle4: bool) -> int:
    """The most Pillow can spend on the codes from `pos` with `pixels` left to write: at most a code
    for every 2 bytes (an absolute run or a delta costs less for its bytes), and at most a padded
    byte's time for each pixel left, or in RLE8 for the rest of a row at each end of line (00 00,
    counted where it may start)."""
    codes = (len(data) - pos) // 2
    one_at_a_time = pixels if rle4 else min(pixels, data.count(b"\0\0", pos) * (width - 1))
    return codes * BMP_RLE_CODE_NS + one_at_a_time * max(BMP_RLE_PAD_NS, BMP_RLE4_ABSOLUTE_PIXEL_NS)


_READERS = {"GIF": _read_gif, "PNG": _read_png, "WEBP": _read_webp, "JPEG": _read_jpeg, "BMP": _read_bmp}


# --- What decoding them costs --------------------------------------------------------------------

# Bytes per canvas pixel that Pillow's image of each mode holds (it pads RGB to 4 bytes).
MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2, "I": 4, "F": 4}
_FOUR_BYTES = 4
# What this package's conversion to the model's image adds (decode.to_model_image), by mode:
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
# image (decode._webp_frames).
WEBP_DECODER_BYTES = 9
# libwebp's demuxer keeps a record of every frame in the file (measured: 27.5 MB for 200,000 frames).
WEBP_FRAME_BYTES = 160
# libjpeg keeps every DCT coefficient (2 bytes a sample) of a JPEG with more than one scan.
JPEG_COEFFICIENT_BYTES = 2
# Pillow's Python RLE decoder for BMP builds the pixels in a bytearray, then copies them (its time is
# priced by MAX_BMP_RLE_NS).
BMP_RLE_BYTES = 2
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
    if layout.format == "BMP" and layout.bmp_rle_ns > MAX_BMP_RLE_NS:
        raise ImageTooComplex(f"RLE BMP of {layout.bmp_rle_ns // 10**6} ms of Python > {MAX_BMP_RLE_NS // 10**6} ms")
    reachable = 1
    if wanted_frames > 1 and total > 1:
        # Each seek decodes every frame before it: the frames within reach are a prefix, whose
        # canvases add up to at most max_pixels and whose chunks (APNG) to MAX_PNG_CHUNKS (the first
        # frame always counts: read_layout refused it if it reads more).
        spent = reachable = 0
        for index in range(min(total, limits.max_decoded_frames)):
            area = layout.area_of(index)
            if reachable and (
                spent + area > limits.max_pixels or layout.png_chunks_up_to(reachable + 1) > MAX_PNG_CHUNKS
            ):
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
