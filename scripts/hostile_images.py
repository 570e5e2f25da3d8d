"""Small files that cost a decoder far more than their size: the bomb classes of issue 13, made here.

Each maker returns the file's bytes; none is committed (they are made in a second or two, from
nothing but Pillow). The tests refuse each one, and `bench/hostile.py` sends each to a real gunicorn
to measure what it costs. `python -m scripts.hostile_images DIR` writes them all to DIR.

The classes, and what each defeats:
- a GIF whose canvas grows after the open-time pixel check (a later frame extends past the logical
  screen, and Pillow grows the canvas to hold it);
- an MPO whose first image is 8x8 and whose other entries are one 40 MP JPEG;
- a 16-bit grey PNG of 40 MP (Pillow keeps 2 bytes a sample; the conversion took 8);
- a WebP of 40 MP (libwebp's buffer, Pillow's copy and its image: 12 bytes a pixel);
- a progressive JPEG whose last scan is repeated until the file is large (each scan walks every
  coefficient of the image again);
- an animated WebP of many tiny lossy frames (each is decoded, and drawn over the whole canvas);
- an APNG of many frames over a large canvas;
- a BMP compressed with RLE (Pillow decodes RLE in Python, one run at a time).
"""

from __future__ import annotations

import io
import struct
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

from PIL import Image

MiB = 1024 * 1024


def _save(img: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **options)
    return out.getvalue()


# --- GIF -----------------------------------------------------------------------------------------


def _gif_image_data(width: int, height: int) -> bytes:
    """The LZW data (minimum code size byte, sub-blocks, terminator) of a width x height frame of one
    colour, as Pillow's encoder writes it."""
    data = _save(Image.new("P", (width, height), 0), "GIF")
    # Header (6) + logical screen (7) + the global table Pillow writes for a one-colour palette.
    flags = data[10]
    offset = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    while data[offset] != 0x2C:  # skip extensions up to the image descriptor
        assert data[offset] == 0x21
        offset += 2
        while data[offset]:
            offset += data[offset] + 1
        offset += 1
    local = data[offset + 9]
    offset += 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0)
    end = offset + 1
    while data[end]:
        end += data[end] + 1
    return data[offset : end + 1]


def gif_growing_canvas(width: int = 6000, height: int = 6000, frames: int = 2, screen: int = 8) -> bytes:
    """A GIF with an 8x8 logical screen and first frame, then frames of width x height."""
    header = b"GIF89a" + struct.pack("<HHBBB", screen, screen, 0x80, 0, 0) + bytes([0, 0, 0, 255, 255, 255])
    small = _gif_image_data(screen, screen)
    big = _gif_image_data(width, height)
    body = b""
    for index in range(frames):
        w, h, lzw = (screen, screen, small) if index == 0 else (width, height, big)
        control = b"\x21\xf9\x04\x00\x02\x00\x00\x00"  # 20 ms, no transparency
        body += control + b"\x2c" + struct.pack("<HHHHB", 0, 0, w, h, 0) + lzw
    return header + body + b"\x3b"


# --- JPEG ----------------------------------------------------------------------------------------


def mpo_big_entries(size: tuple[int, int] = (8000, 5000), entries: int = 2) -> bytes:
    """An MPO: an 8x8 first image, then `entries` more images of `size` (40 MP by default)."""
    first = Image.new("RGB", (8, 8), (120, 120, 120))
    big = Image.new("RGB", size, (128, 128, 128))
    return _save(first, "MPO", save_all=True, append_images=[big] * entries, quality=50)


def _segments(data: bytes) -> list[tuple[int, int]]:
    """(offset of the marker, offset past the segment and its entropy-coded data) of each segment."""
    found, pos = [], 2
    while pos < len(data):
        marker = data[pos + 1]
        if marker == 0xD9:
            found.append((pos, pos + 2))
            break
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        end = pos + 2 + length
        if marker == 0xDA:  # the scan's data runs to the next marker that is not a restart
            while True:
                end = data.index(b"\xff", end)
                if data[end + 1] != 0 and not 0xD0 <= data[end + 1] <= 0xD7:
                    break
                end += 2
        found.append((pos, end))
        pos = end
    return found


def jpeg_repeated_scans(target_bytes: int = 10 * MiB, size: tuple[int, int] = (2048, 2048)) -> bytes:
    """A progressive JPEG of one flat colour whose last scan (an AC refinement: a few bytes of data,
    every block visited) is repeated until the file reaches target_bytes."""
    data = _save(Image.new("RGB", size, (90, 140, 200)), "JPEG", progressive=True, quality=90)
    segments = _segments(data)
    last_scan = max(i for i, (pos, _) in enumerate(segments) if data[pos + 1] == 0xDA)
    start, end = segments[last_scan]
    scan = data[start:end]
    head, tail = data[:end], data[end:]
    copies = max(0, (target_bytes - len(data)) // len(scan))
    return head + scan * copies + tail


def jpeg_flat(width: int, height: int, *, progressive: bool = False) -> bytes:
    """A legitimate JPEG of one colour at any size (for what the largest accepted images cost)."""
    return _save(Image.new("RGB", (width, height), (90, 140, 200)), "JPEG", progressive=progressive)


def jpeg_scan_count(data: bytes) -> int:
    """Start-of-scan markers in a JPEG made above (for the tests' own checks)."""
    return sum(1 for pos, _ in _segments(data) if data[pos + 1] == 0xDA)


# --- PNG -----------------------------------------------------------------------------------------


def png16_grey(width: int = 8000, height: int = 5000) -> bytes:
    """A 16-bit grey PNG of one level (compresses about 1000:1)."""
    return _save(Image.new("I;16", (width, height), 40000), "PNG", compress_level=9)


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def apng_many_frames(frames: int = 3000, canvas: tuple[int, int] = (2000, 2000)) -> bytes:
    """An APNG: a canvas-sized first frame, then `frames - 1` frames of 1x1 (each composited on the canvas)."""
    width, height = canvas
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0))
    actl = _chunk(b"acTL", struct.pack(">II", frames, 0))
    seq = 0

    def fctl(w: int, h: int) -> bytes:
        nonlocal seq
        chunk = _chunk(b"fcTL", struct.pack(">IIIIIHHBB", seq, w, h, 0, 0, 1, 50, 0, 0))
        seq += 1
        return chunk

    big_rows = zlib.compress(b"".join(b"\0" + b"\x40\x80\xc0\xff" * width for _ in range(height)), 9)
    out = [b"\x89PNG\r\n\x1a\n", ihdr, actl, fctl(width, height), _chunk(b"IDAT", big_rows)]
    tiny = zlib.compress(b"\0\x10\x20\x30\xff")
    for _ in range(frames - 1):
        out.append(fctl(1, 1))
        out.append(_chunk(b"fdAT", struct.pack(">I", seq) + tiny))
        seq += 1
    out.append(_chunk(b"IEND", b""))
    return b"".join(out)


# --- WebP ----------------------------------------------------------------------------------------


def webp_big(width: int = 8000, height: int = 5000) -> bytes:
    """A lossless WebP of one colour at 40 MP: about 1.6 KB."""
    return _save(Image.new("RGB", (width, height), (10, 200, 30)), "WEBP", lossless=True)


def webp_many_frames(frames: int = 130_000, canvas: tuple[int, int] = (1, 1)) -> bytes:
    """An animated WebP of `frames` lossy 1x1 frames on a canvas (76 bytes each: 10 MB holds 130,000;
    a lossy frame costs libwebp 25 us to decode, a lossless one 2), RIFF chunks written directly
    (Pillow's writer would take minutes for so many frames)."""
    pixel = _save(Image.new("RGB", (1, 1), (200, 10, 10)), "WEBP", quality=50)
    frame_data = pixel[12:]  # the VP8 chunk
    width, height = canvas
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes([0x12, 0, 0, 0]) + _u24(width - 1) + _u24(height - 1)
    anim = b"ANIM" + struct.pack("<I", 6) + bytes(4) + struct.pack("<H", 0)
    payload = _u24(0) + _u24(0) + _u24(0) + _u24(0) + _u24(20) + b"\x00" + frame_data
    anmf = b"ANMF" + struct.pack("<I", len(payload)) + payload + (b"\0" if len(payload) % 2 else b"")
    first_payload = _u24(0) + _u24(0) + _u24(width - 1) + _u24(height - 1) + _u24(20) + b"\x00"
    first_frame = _save(Image.new("RGBA", canvas, (0, 0, 200, 255)), "WEBP", lossless=True)[12:]
    first_payload += first_frame
    first = b"ANMF" + struct.pack("<I", len(first_payload)) + first_payload + (b"\0" if len(first_payload) % 2 else b"")
    body = b"WEBP" + vp8x + anim + first + anmf * (frames - 1)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _u24(value: int) -> bytes:
    return struct.pack("<I", value)[:3]


# --- BMP -----------------------------------------------------------------------------------------


def bmp_rle8(width: int = 4000, height: int = 1250, run: int = 2) -> bytes:
    """An 8-bit RLE BMP whose every run is `run` pixels long: many runs for Pillow's Python decoder."""
    row = b"".join(bytes([run, i % 256]) for i in range(width // run)) + b"\x00\x00"
    pixels = row * height + b"\x00\x01"
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(pixels), 2835, 2835, 256, 0)
    offset = 14 + len(info) + len(palette)
    header = b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset)
    return header + info + palette + pixels


MAKERS: dict[str, tuple[Callable[[], bytes], str]] = {
    "gif_growing_canvas.gif": (gif_growing_canvas, "image/gif"),
    "mpo_big_entries.jpg": (mpo_big_entries, "image/jpeg"),
    "png16_grey_40mp.png": (png16_grey, "image/png"),
    "webp_40mp.webp": (webp_big, "image/webp"),
    "jpeg_repeated_scans.jpg": (jpeg_repeated_scans, "image/jpeg"),
    "webp_130000_frames.webp": (webp_many_frames, "image/webp"),
    "apng_3000_frames.png": (apng_many_frames, "image/png"),
    "bmp_rle8.bmp": (bmp_rle8, "image/bmp"),
}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m scripts.hostile_images DIR", file=sys.stderr)
        return 2
    folder = Path(argv[0])
    folder.mkdir(parents=True, exist_ok=True)
    for name, (make, _) in MAKERS.items():
        data = make()
        (folder / name).write_bytes(data)
        print(f"{name}\t{len(data)} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
