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
- a PNG of hundreds of thousands of empty chunks (Pillow reads each chunk in Python);
- a BMP compressed with RLE (Pillow decodes RLE in Python, one run at a time), and two of 5 KB and
  330 KB whose codes make its Python write a 40 MP canvas one byte at a time (the end-of-line codes
  of RLE8, the runs of RLE4).
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


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(kind, payload) of each chunk of a PNG."""
    found, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        found.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return found


# An empty chunk is 12 bytes: about the most a 10 MiB PNG (NSFW_MAX_BYTES) holds beside IHDR, IDAT and IEND.
PNG_MOST_CHUNKS = 873_790


def png_many_chunks(chunks: int = PNG_MOST_CHUNKS, *, kind: bytes = b"prVt", after_idat: bool = False) -> bytes:
    """A 1x1 grey PNG with `chunks` empty ancillary chunks of `kind` before its IDAT (Image.open reads
    them) or after it (load does). A private one (lower-case second letter) is the dearest: Pillow
    also keeps each in a list."""
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
    idat = _chunk(b"IDAT", zlib.compress(b"\0\x80"))
    extra = _chunk(kind, b"") * chunks
    body = idat + extra if after_idat else extra + idat
    return b"\x89PNG\r\n\x1a\n" + ihdr + body + _chunk(b"IEND", b"")


def png_idat_split(data: bytes, size: int) -> bytes:
    """The PNG `data` with its image data cut into IDAT chunks of `size` bytes: libpng writes 8 KiB,
    Pillow 64 KiB; 1 byte is a hostile file of as many chunks as bytes."""
    chunks = _chunks(data)
    stream = b"".join(payload for kind, payload in chunks if kind == b"IDAT")
    first = next(i for i, (kind, _) in enumerate(chunks) if kind == b"IDAT")
    head = b"".join(_chunk(kind, payload) for kind, payload in chunks[:first])
    tail = b"".join(_chunk(kind, payload) for kind, payload in chunks[first:] if kind != b"IDAT")
    idats = b"".join(_chunk(b"IDAT", stream[i : i + size]) for i in range(0, len(stream), size))
    return data[:8] + head + idats + tail


def apng_many_frames(frames: int = 3000, canvas: tuple[int, int] = (2000, 2000), *, chunks_per_frame: int = 1) -> bytes:
    """An APNG: a canvas-sized first frame, then `frames - 1` frames of 1x1 (each composited on the
    canvas), each frame's data in `chunks_per_frame` fdAT chunks (the data, then empty ones)."""
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
        for part in range(chunks_per_frame):
            out.append(_chunk(b"fdAT", struct.pack(">I", seq) + (tiny if part == 0 else b"")))
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


def _bmp_rle(width: int, height: int, codes: bytes, *, rle4: bool = False, palette: bytes | None = None) -> bytes:
    """A BMP of these RLE8 (or RLE4) codes, grey palette unless given (BGRX entries)."""
    bits = 4 if rle4 else 8
    if palette is None:
        palette = b"".join(bytes([i, i, i, 0]) for i in range(0, 256, 256 >> bits))
    colours = len(palette) // 4
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bits, 2 if rle4 else 1, len(codes), 2835, 2835, colours, 0)
    offset = 14 + len(info) + len(palette)
    header = b"BM" + struct.pack("<IHHI", offset + len(codes), 0, 0, offset)
    return header + info + palette + codes


def bmp_rle8(width: int = 4000, height: int = 1250, run: int = 2) -> bytes:
    """An 8-bit RLE BMP whose every run is `run` pixels long: many runs for Pillow's Python decoder."""
    row = b"".join(bytes([run, i % 256]) for i in range(width // run)) + b"\x00\x00"
    return _bmp_rle(width, height, row * height + b"\x00\x01")


def bmp_rle8_eol(width: int = 40_000, height: int = 1_000) -> bytes:
    """An 8-bit RLE BMP whose every row is one pixel, then an end of line: Pillow pads the rest of
    each row with zeros one byte at a time, in Python (a 40 MP canvas from 5 KB)."""
    return _bmp_rle(width, height, b"\x01\x07\x00\x00" * height + b"\x00\x01")


def bmp_rle4_runs(width: int = 8000, height: int = 5000) -> bytes:
    """A 4-bit RLE BMP of 255-pixel runs: Pillow writes each pixel of an RLE4 run on its own, in
    Python (a 40 MP canvas from 330 KB)."""
    runs = width // 255
    row = b"\xff\x12" * runs + bytes([width - runs * 255, 0x34]) + b"\x00\x00"
    return _bmp_rle(width, height, row * height + b"\x00\x01", rle4=True)


def bmp_rle8_of(img: Image.Image) -> bytes:
    """A legitimate RLE8 BMP of a palette (or grey) image, as an encoder writes one: runs of
    equal pixels, absolute runs between them, and each row ended early by an end of line where the
    rest of it is colour 0."""
    img = img if img.mode == "P" else img.convert("L")
    width, height = img.size
    raw = img.tobytes()
    codes = bytearray()
    for top in range(height - 1, -1, -1):  # bottom-up
        row = raw[top * width : (top + 1) * width]
        # Pillow's end of line pads to the next row only from inside a row: one pixel at least.
        end = max(1, len(row.rstrip(b"\x00")))
        x = 0
        while x < end:
            run = 1
            while x + run < end and run < 255 and row[x + run] == row[x]:
                run += 1
            if run >= 3 or end - x < 3:
                codes += bytes([run, row[x]])
                x += run
                continue
            stop = x + 1  # an absolute run: up to the next run of 3, at most 255 pixels
            while (
                stop < end and stop - x < 255 and not (stop + 2 < end and row[stop] == row[stop + 1] == row[stop + 2])
            ):
                stop += 1
            if stop - x < 3:  # too short to be absolute (its counts 0 to 2 are escapes): runs of 1
                codes += b"".join(bytes([1, pixel]) for pixel in row[x:stop])
            else:  # word-aligned
                codes += bytes([0, stop - x]) + row[x:stop] + (b"\x00" if (stop - x) % 2 else b"")
            x = stop
        codes += b"\x00\x00"
    codes += b"\x00\x01"
    palette = img.getpalette() if img.mode == "P" else None
    bgrx = None
    if palette is not None:
        entries = [palette[i : i + 3] for i in range(0, len(palette), 3)]
        bgrx = b"".join(bytes([b, g, r, 0]) for r, g, b in entries)
    return _bmp_rle(width, height, bytes(codes), palette=bgrx)


MAKERS: dict[str, tuple[Callable[[], bytes], str]] = {
    "gif_growing_canvas.gif": (gif_growing_canvas, "image/gif"),
    "mpo_big_entries.jpg": (mpo_big_entries, "image/jpeg"),
    "png16_grey_40mp.png": (png16_grey, "image/png"),
    "webp_40mp.webp": (webp_big, "image/webp"),
    "jpeg_repeated_scans.jpg": (jpeg_repeated_scans, "image/jpeg"),
    "webp_130000_frames.webp": (webp_many_frames, "image/webp"),
    "apng_3000_frames.png": (apng_many_frames, "image/png"),
    "bmp_rle8.bmp": (bmp_rle8, "image/bmp"),
    "bmp_rle8_eol.bmp": (bmp_rle8_eol, "image/bmp"),
    "bmp_rle4_runs.bmp": (bmp_rle4_runs, "image/bmp"),
    "png_many_chunks.png": (png_many_chunks, "image/png"),
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
